//! Trust metadata: the device's `trust.json`.
//!
//! `trust.json` is a DSSE envelope (payload type [`ROOT_PAYLOAD_TYPE`]) whose
//! payload is a [`Root`]: which ed25519 keys exist, which of them may sign for
//! each role (`root`, `release`, `director`) and how many signatures each role
//! needs, plus a version and an expiry. A [`TrustedRoot`] is a root that has
//! been checked: it is only made by [`TrustedRoot::bootstrap`] (a root the
//! device was provisioned with, signed by its own root role) or by
//! [`TrustedRoot::rotate`] (the next version, signed by the root role of both
//! the current and the new root, TUF-style).

use std::collections::BTreeMap;

use crate::dsse::{KeyId, ROOT_PAYLOAD_TYPE, VerifyingKey};
use crate::rejection::VerifyError;
pub use crate::root::*;
use crate::signature::{self, Opened};

/// A root whose signatures, structure and (when it was made) expiry were checked.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    root: Root,
    keys: BTreeMap<KeyId, VerifyingKey>,
}

impl TrustedRoot {
    /// Trusts `trust.json` bytes the device was provisioned with: the root must
    /// be signed by the threshold of its own root role and not be expired.
    pub fn bootstrap(bytes: &[u8], now: u64) -> Result<TrustedRoot, VerifyError> {
        let envelope = signature::parse_envelope(bytes, ROOT_PAYLOAD_TYPE, MAX_ROOT_BYTES)?;
        // A first root can only vouch for itself: its keys come from the payload,
        // so the payload is parsed (size-limited) before its signatures are
        // checked. The file's authenticity comes from provisioning; rotations
        // below check signatures with already-trusted keys first.
        let (root, keys) = parse_root(&envelope.payload)?;
        let trusted = TrustedRoot { root, keys };
        // Self-signed to its own threshold.
        trusted.check_signatures(Role::Root, &envelope)?;
        trusted.check_not_expired(now)?;
        Ok(trusted)
    }

    /// Moves to the next root version (`new_bytes`), which must be exactly
    /// `version + 1`, signed by the threshold of this root's root role and by
    /// the threshold of its own root role, and not expired at `now`.
    pub fn rotate(&self, new_bytes: &[u8], now: u64) -> Result<TrustedRoot, VerifyError> {
        let next = self.rotate_step(new_bytes)?;
        next.check_not_expired(now)?;
        Ok(next)
    }

    /// Applies a chain of root versions in order (a device that was offline
    /// through several rotations). Intermediate roots may have expired; the
    /// final one must not have.
    pub fn rotate_chain(&self, chain: &[&[u8]], now: u64) -> Result<TrustedRoot, VerifyError> {
        let mut current = self.clone();
        for bytes in chain {
            current = current.rotate_step(bytes)?;
        }
        current.check_not_expired(now)?;
        Ok(current)
    }

    fn rotate_step(&self, new_bytes: &[u8]) -> Result<TrustedRoot, VerifyError> {
        let envelope = signature::parse_envelope(new_bytes, ROOT_PAYLOAD_TYPE, MAX_ROOT_BYTES)?;
        // The old root vouches for the new bytes before anything in them is parsed.
        self.check_signatures(Role::Root, &envelope)?;
        let (root, keys) = parse_root(&envelope.payload)?;
        let have = self.root.version;
        let got = root.version;
        if got <= have {
            return Err(VerifyError::RootRollback { have, got });
        }
        if got != have + 1 {
            return Err(VerifyError::RootMissingLink { have, got });
        }
        let next = TrustedRoot { root, keys };
        next.check_signatures(Role::Root, &envelope)?;
        Ok(next)
    }

    /// The checked root metadata.
    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn version(&self) -> u64 {
        self.root.version
    }

    pub fn expires_at(&self) -> u64 {
        self.root.expires_at
    }

    pub fn allow_privileged(&self) -> bool {
        self.root.allow_privileged
    }

    /// Fails with [`VerifyError::RootExpired`] once `now` reaches the root's expiry.
    pub fn check_not_expired(&self, now: u64) -> Result<(), VerifyError> {
        if now >= self.root.expires_at {
            return Err(VerifyError::RootExpired {
                version: self.root.version,
                expires_at: self.root.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// The public key with id `keyid`, if the root lists it.
    pub fn key(&self, keyid: &KeyId) -> Option<&VerifyingKey> {
        self.keys.get(keyid)
    }

    /// The key ids of `role` and its threshold.
    pub fn role(&self, role: Role) -> &RoleKeys {
        self.root.roles.get(role)
    }

    /// Checks `opened`'s signatures against `role` of this root; returns the
    /// ids of the keys whose signatures verified.
    pub(crate) fn check_signatures(
        &self,
        role: Role,
        opened: &Opened,
    ) -> Result<Vec<KeyId>, VerifyError> {
        signature::check_signatures(&self.keys, self.role(role), role, opened)
    }
}

fn parse_root(payload: &[u8]) -> Result<(Root, BTreeMap<KeyId, VerifyingKey>), VerifyError> {
    let root: Root =
        serde_json::from_slice(payload).map_err(|source| VerifyError::MalformedPayload {
            payload_type: ROOT_PAYLOAD_TYPE,
            source,
        })?;
    let keys = root
        .validate()
        .map_err(|source| VerifyError::InvalidRoot { source })?;
    Ok((root, keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsse::{SigningKey, sign};

    fn role(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
        RoleKeys {
            keyids: keys.iter().map(|k| KeyId::of(&k.verifying_key())).collect(),
            threshold,
        }
    }

    fn root(version: u64, root_keys: &[&SigningKey], threshold: u32) -> Root {
        let release = SigningKey::from_bytes(&[20; 32]);
        let director = SigningKey::from_bytes(&[30; 32]);
        let mut keys = BTreeMap::new();
        for k in root_keys.iter().copied().chain([&release, &director]) {
            keys.insert(
                KeyId::of(&k.verifying_key()),
                PublicKey::ed25519(&k.verifying_key()),
            );
        }
        Root {
            schema: ROOT_SCHEMA_VERSION,
            version,
            expires_at: 2_000,
            keys,
            roles: Roles {
                root: role(root_keys, threshold),
                release: role(&[&release], 1),
                director: role(&[&director], 1),
            },
            allow_privileged: false,
        }
    }

    fn signed(root: &Root, keys: &[&SigningKey]) -> Vec<u8> {
        sign(ROOT_PAYLOAD_TYPE, &root.to_payload(), keys).to_json()
    }

    #[test]
    fn bootstrap_needs_the_root_threshold_of_its_own_keys() {
        let (a, b) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let r = root(1, &[&a, &b], 2);
        let t = TrustedRoot::bootstrap(&signed(&r, &[&a, &b]), 1_000).unwrap();
        assert_eq!(t.version(), 1);
        assert!(!t.allow_privileged());
        assert!(matches!(
            TrustedRoot::bootstrap(&signed(&r, &[&a]), 1_000),
            Err(VerifyError::BelowThreshold {
                role: Role::Root,
                have: 1,
                need: 2
            })
        ));
        // The same signature twice counts once.
        let mut env = sign(ROOT_PAYLOAD_TYPE, &r.to_payload(), &[&a]);
        env.signatures.push(env.signatures[0].clone());
        assert!(matches!(
            TrustedRoot::bootstrap(&env.to_json(), 1_000),
            Err(VerifyError::BelowThreshold { have: 1, .. })
        ));
        assert!(matches!(
            TrustedRoot::bootstrap(&signed(&r, &[&a, &b]), 2_000),
            Err(VerifyError::RootExpired {
                expires_at: 2_000,
                now: 2_000,
                ..
            })
        ));
    }

    #[test]
    fn rotation_needs_old_and_new_root_keys_and_the_next_version() {
        let (a, b) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let v1 = TrustedRoot::bootstrap(&signed(&root(1, &[&a], 1), &[&a]), 10).unwrap();
        let r2 = root(2, &[&b], 1);
        let v2 = v1.rotate(&signed(&r2, &[&a, &b]), 10).unwrap();
        assert_eq!(v2.version(), 2);
        // Signed by the new key only: the old root does not know that key.
        assert!(matches!(
            v1.rotate(&signed(&r2, &[&b]), 10),
            Err(VerifyError::UnknownKey { .. })
        ));
        // Signed by the old key only: the new root's own threshold is not met.
        assert!(matches!(
            v1.rotate(&signed(&r2, &[&a]), 10),
            Err(VerifyError::UnknownKey { .. })
        ));
        let r3 = root(3, &[&b], 1);
        assert!(matches!(
            v1.rotate(&signed(&r3, &[&a, &b]), 10),
            Err(VerifyError::RootMissingLink { have: 1, got: 3 })
        ));
        assert!(matches!(
            v2.rotate(&signed(&root(2, &[&b], 1), &[&b]), 10),
            Err(VerifyError::RootRollback { have: 2, got: 2 })
        ));
        let v3 = v1
            .rotate_chain(&[&signed(&r2, &[&a, &b]), &signed(&r3, &[&b])], 10)
            .unwrap();
        assert_eq!(v3.version(), 3);
    }

    #[test]
    fn malformed_roots_are_refused_with_the_reason() {
        let a = SigningKey::from_bytes(&[1; 32]);
        let mut r = root(1, &[&a], 2);
        assert!(matches!(
            r.validate(),
            Err(TrustError::ThresholdTooHigh {
                role: Role::Root,
                ..
            })
        ));
        r.roles.root.threshold = 0;
        assert!(matches!(
            r.validate(),
            Err(TrustError::ZeroThreshold { role: Role::Root })
        ));
        r.roles.root.threshold = 1;
        r.roles.release.keyids.push(KeyId::of(&a.verifying_key()));
        r.roles.release.keyids.push(KeyId::of(&a.verifying_key()));
        assert!(matches!(
            r.validate(),
            Err(TrustError::DuplicateRoleKey { .. })
        ));
        let mut r = root(1, &[&a], 1);
        let other = SigningKey::from_bytes(&[9; 32]);
        let id = KeyId::of(&a.verifying_key());
        r.keys
            .insert(id.clone(), PublicKey::ed25519(&other.verifying_key()));
        assert!(matches!(
            r.validate(),
            Err(TrustError::KeyIdMismatch { .. })
        ));
        r.keys.get_mut(&id).unwrap().public = "AAAA".into();
        assert!(matches!(r.validate(), Err(TrustError::BadPublicKey { .. })));
        let mut r = root(1, &[&a], 1);
        r.roles
            .director
            .keyids
            .push(KeyId::of(&other.verifying_key()));
        assert!(matches!(
            r.validate(),
            Err(TrustError::UndefinedRoleKey { .. })
        ));
        assert!(matches!(
            TrustedRoot::bootstrap(&signed(&r, &[&a]), 10),
            Err(VerifyError::InvalidRoot { .. })
        ));
    }
}
