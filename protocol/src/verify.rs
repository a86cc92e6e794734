//! The verifier: turns envelope bytes into [`Verified`] values.
//!
//! Every check on signatures runs on the exact bytes received (the PAE of the
//! raw payload bytes) before the payload is parsed; only then is it decoded and
//! handed out as a [`Verified<T>`], which nothing outside this module can
//! construct. Each rejection is a distinct [`VerifyError`] variant with a
//! stable [`VerifyError::code`].

use std::collections::BTreeSet;
use std::ops::Deref;

use serde::de::DeserializeOwned;

use crate::dsse::{
    COMMAND_PAYLOAD_TYPE, DESIRED_STATE_PAYLOAD_TYPE, DsseError, Envelope, KeyId,
    RELEASE_PAYLOAD_TYPE, pae,
};
use crate::id::{AppName, DeviceId, Digest};
use crate::lifecycle::ErrorCode;
use crate::message::{Command, DesiredState, ErrorInfo, Release};
use crate::trust::{Role, TrustError, TrustedRoot};

/// Largest release envelope accepted, in bytes.
pub const MAX_RELEASE_BYTES: usize = 256 * 1024;
/// Largest desired-state envelope accepted, in bytes (it embeds its releases).
pub const MAX_DESIRED_STATE_BYTES: usize = 4 * 1024 * 1024;
/// Largest command envelope accepted, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Largest envelope [`verify_bytes`] accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = MAX_DESIRED_STATE_BYTES;
/// Most apps one desired state may list.
pub const MAX_APPS: usize = 64;

/// Why signed bytes were rejected.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("not a valid DSSE envelope: {source}")]
    MalformedEnvelope {
        #[source]
        source: DsseError,
    },
    #[error("payload type is {got:?}, expected {expected:?}")]
    WrongPayloadType { expected: &'static str, got: String },
    #[error(
        "signature by {role} key {keyid} does not verify: the payload or the signature was altered"
    )]
    BadSignature { role: Role, keyid: KeyId },
    #[error("signed by key {keyid:?}, which the trust root does not list")]
    UnknownKey { keyid: String },
    #[error("signed by key {keyid}, which may not sign for the {role} role")]
    WrongRole { keyid: KeyId, role: Role },
    #[error("{have} valid {role} signature(s), {need} needed")]
    BelowThreshold {
        role: Role,
        have: usize,
        need: usize,
    },
    #[error("signed payload is not a valid {payload_type}: {source}")]
    MalformedPayload {
        payload_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("addressed to device {got}, this is {expected}")]
    WrongDevice { expected: DeviceId, got: DeviceId },
    #[error("expired at {expires_at}, now is {now}")]
    Expired { expires_at: u64, now: u64 },
    #[error("generation {got} is not greater than the last applied generation {last}")]
    StaleGeneration { got: u64, last: u64 },
    #[error("desired state lists {count} apps, more than the limit of {max}")]
    TooManyApps { count: usize, max: usize },
    #[error("desired state lists app {app} twice")]
    DuplicateApp { app: AppName },
    #[error("app {app}: release digest is {actual}, the desired state says {expected}")]
    ReleaseDigestMismatch {
        app: AppName,
        expected: Digest,
        actual: Digest,
    },
    #[error("desired state entry {expected} carries a release of app {got}")]
    ReleaseAppMismatch { expected: AppName, got: AppName },
    #[error(
        "release of app {app} asks for a privileged container and the trust root does not allow it"
    )]
    PrivilegedNotAllowed { app: AppName },
    #[error("trust root version {version} expired at {expires_at}, now is {now}")]
    RootExpired {
        version: u64,
        expires_at: u64,
        now: u64,
    },
    #[error(
        "trust root version {got} does not follow version {have}: the intermediate versions are needed"
    )]
    RootMissingLink { have: u64, got: u64 },
    #[error("trust root version {got} is not newer than the trusted version {have}")]
    RootRollback { have: u64, got: u64 },
    #[error("trust root is invalid: {source}")]
    InvalidRoot {
        #[source]
        source: TrustError,
    },
}

impl VerifyError {
    /// A stable, machine-readable code (reported in status messages).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::MalformedEnvelope { .. } => "malformed_envelope",
            VerifyError::WrongPayloadType { .. } => "wrong_payload_type",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::WrongRole { .. } => "wrong_role",
            VerifyError::BelowThreshold { .. } => "below_threshold",
            VerifyError::MalformedPayload { .. } => "malformed_payload",
            VerifyError::WrongDevice { .. } => "wrong_device",
            VerifyError::Expired { .. } => "expired",
            VerifyError::StaleGeneration { .. } => "replayed_generation",
            VerifyError::TooManyApps { .. } => "too_many_apps",
            VerifyError::DuplicateApp { .. } => "duplicate_app",
            VerifyError::ReleaseDigestMismatch { .. } => "release_digest_mismatch",
            VerifyError::ReleaseAppMismatch { .. } => "release_app_mismatch",
            VerifyError::PrivilegedNotAllowed { .. } => "privileged_not_allowed",
            VerifyError::RootExpired { .. } => "root_expired",
            VerifyError::RootMissingLink { .. } => "root_missing_link",
            VerifyError::RootRollback { .. } => "root_rollback",
            VerifyError::InvalidRoot { .. } => "invalid_root",
        }
    }

    /// The stable wire code of this rejection (coarser than [`Self::code`]).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            VerifyError::BadSignature { .. }
            | VerifyError::UnknownKey { .. }
            | VerifyError::WrongRole { .. }
            | VerifyError::BelowThreshold { .. } => ErrorCode::BadSignature,
            VerifyError::Expired { .. } | VerifyError::RootExpired { .. } => ErrorCode::Expired,
            VerifyError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            VerifyError::WrongDevice { .. } => ErrorCode::WrongDevice,
            VerifyError::TooLarge { .. }
            | VerifyError::MalformedEnvelope { .. }
            | VerifyError::WrongPayloadType { .. }
            | VerifyError::MalformedPayload { .. } => ErrorCode::Malformed,
            VerifyError::PrivilegedNotAllowed { .. } => ErrorCode::NotAllowed,
            VerifyError::TooManyApps { .. }
            | VerifyError::DuplicateApp { .. }
            | VerifyError::ReleaseDigestMismatch { .. }
            | VerifyError::ReleaseAppMismatch { .. }
            | VerifyError::RootMissingLink { .. }
            | VerifyError::RootRollback { .. }
            | VerifyError::InvalidRoot { .. } => ErrorCode::Rejected,
        }
    }

    /// The wire code and a message that starts with the precise reason
    /// ([`Self::code`]), as reported in a status.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.error_code(),
            message: format!("{}: {self}", self.code()),
        }
    }
}

/// A value parsed from a payload whose signatures were verified first.
/// Only this crate's verifier makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
    payload_digest: Digest,
    signed_by: Vec<KeyId>,
}

impl<T> Verified<T> {
    /// The verified value.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// sha256 of the exact payload bytes that were signed (for a release,
    /// what a desired state's `release_digest` names).
    pub fn payload_digest(&self) -> &Digest {
        &self.payload_digest
    }

    /// The keys whose valid signatures met the threshold.
    pub fn signed_by(&self) -> &[KeyId] {
        &self.signed_by
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A verified desired state together with its verified releases (same order
/// as `apps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDesiredState {
    state: Verified<DesiredState>,
    releases: Vec<Verified<Release>>,
}

impl VerifiedDesiredState {
    pub fn state(&self) -> &Verified<DesiredState> {
        &self.state
    }

    /// One verified release per entry of `apps`, in the same order.
    pub fn releases(&self) -> &[Verified<Release>] {
        &self.releases
    }

    pub fn into_parts(self) -> (Verified<DesiredState>, Vec<Verified<Release>>) {
        (self.state, self.releases)
    }
}

impl Deref for VerifiedDesiredState {
    type Target = DesiredState;
    fn deref(&self) -> &DesiredState {
        &self.state
    }
}

/// An envelope whose type was checked and whose payload was decoded, not yet
/// verified.
pub(crate) struct Opened {
    payload_type: &'static str,
    pub(crate) payload: Vec<u8>,
    signatures: Vec<crate::dsse::Signature>,
}

/// Size-checks and decodes envelope JSON, checks its payload type.
pub(crate) fn parse_envelope(
    bytes: &[u8],
    payload_type: &'static str,
    max: usize,
) -> Result<Opened, VerifyError> {
    if bytes.len() > max {
        return Err(VerifyError::TooLarge {
            what: payload_type,
            len: bytes.len(),
            max,
        });
    }
    let envelope = Envelope::from_json(bytes, max)
        .map_err(|source| VerifyError::MalformedEnvelope { source })?;
    open(envelope, payload_type)
}

fn open(envelope: Envelope, payload_type: &'static str) -> Result<Opened, VerifyError> {
    if envelope.signatures.len() > Envelope::MAX_SIGNATURES {
        return Err(VerifyError::MalformedEnvelope {
            source: DsseError::TooManySignatures {
                count: envelope.signatures.len(),
                max: Envelope::MAX_SIGNATURES,
            },
        });
    }
    if envelope.payload_type != payload_type {
        return Err(VerifyError::WrongPayloadType {
            expected: payload_type,
            got: envelope.payload_type,
        });
    }
    let payload = envelope
        .payload_bytes()
        .map_err(|source| VerifyError::MalformedEnvelope { source })?;
    Ok(Opened {
        payload_type,
        payload,
        signatures: envelope.signatures,
    })
}

/// Checks `opened`'s signatures against `role` of `root`.
///
/// A signature by a key of the role that does not verify is always an error
/// ([`VerifyError::BadSignature`]). Signatures by keys the role does not list
/// are ignored when the role's threshold is met by others; when it is not, the
/// error says why: a key of another role, an unknown key, or too few valid
/// signatures. Signatures by the same key count once.
pub(crate) fn check_signatures(
    root: &TrustedRoot,
    role: Role,
    opened: &Opened,
) -> Result<Vec<KeyId>, VerifyError> {
    let role_keys = root.role(role);
    let message = pae(opened.payload_type, &opened.payload);
    let mut valid = BTreeSet::new();
    let mut wrong_role: Option<KeyId> = None;
    let mut unknown: Option<String> = None;
    for signature in &opened.signatures {
        let sig = signature
            .sig_bytes()
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
        let Ok(keyid) = KeyId::new(signature.keyid.as_str()) else {
            // No (or no usable) key id: DSSE makes it optional, so try the role's keys.
            let found = sig.as_ref().and_then(|sig| {
                role_keys.keyids.iter().find(|id| {
                    root.key(id)
                        .is_some_and(|k| k.verify_strict(&message, sig).is_ok())
                })
            });
            match found {
                Some(id) => {
                    valid.insert(id.clone());
                }
                None => {
                    unknown.get_or_insert_with(|| signature.keyid.clone());
                }
            }
            continue;
        };
        let Some(key) = root.key(&keyid) else {
            unknown.get_or_insert_with(|| keyid.to_string());
            continue;
        };
        if !role_keys.keyids.contains(&keyid) {
            wrong_role.get_or_insert(keyid);
            continue;
        }
        match sig {
            Some(sig) if key.verify_strict(&message, &sig).is_ok() => {
                valid.insert(keyid);
            }
            _ => return Err(VerifyError::BadSignature { role, keyid }),
        }
    }
    let need = role_keys.threshold as usize;
    if valid.len() >= need {
        return Ok(valid.into_iter().collect());
    }
    if let Some(keyid) = wrong_role {
        return Err(VerifyError::WrongRole { keyid, role });
    }
    if let Some(keyid) = unknown {
        return Err(VerifyError::UnknownKey { keyid });
    }
    Err(VerifyError::BelowThreshold {
        role,
        have: valid.len(),
        need,
    })
}

fn verify_opened<T: DeserializeOwned>(
    root: &TrustedRoot,
    role: Role,
    opened: Opened,
) -> Result<Verified<T>, VerifyError> {
    let signed_by = check_signatures(root, role, &opened)?;
    // Only now, with the signatures checked, is the payload parsed.
    let value = serde_json::from_slice(&opened.payload).map_err(|source| {
        VerifyError::MalformedPayload {
            payload_type: opened.payload_type,
            source,
        }
    })?;
    Ok(Verified {
        value,
        payload_digest: Digest::of(&opened.payload),
        signed_by,
    })
}

/// Verifies an envelope of any `payload_type` signed for `role` and returns
/// its raw payload bytes (for tools; the typed functions below are what the
/// agent uses).
pub fn verify_bytes(
    root: &TrustedRoot,
    role: Role,
    payload_type: &'static str,
    envelope_bytes: &[u8],
    now: u64,
) -> Result<Verified<Vec<u8>>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, payload_type, MAX_ENVELOPE_BYTES)?;
    let signed_by = check_signatures(root, role, &opened)?;
    Ok(Verified {
        payload_digest: Digest::of(&opened.payload),
        value: opened.payload,
        signed_by,
    })
}

/// Verifies a release envelope (JSON bytes) signed by the release role.
pub fn verify_release(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    now: u64,
) -> Result<Verified<Release>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, RELEASE_PAYLOAD_TYPE, MAX_RELEASE_BYTES)?;
    release_from_opened(root, opened)
}

/// Verifies a release envelope already decoded as an [`Envelope`] (as embedded
/// in a desired state). The payload bytes are exactly the base64-decoded
/// `payload`, so this is the same check as [`verify_release`].
pub fn verify_release_envelope(
    root: &TrustedRoot,
    envelope: &Envelope,
    now: u64,
) -> Result<Verified<Release>, VerifyError> {
    root.check_not_expired(now)?;
    // The same bound as a release envelope on its own (base64 included).
    if envelope.payload.len() > MAX_RELEASE_BYTES {
        return Err(VerifyError::TooLarge {
            what: RELEASE_PAYLOAD_TYPE,
            len: envelope.payload.len(),
            max: MAX_RELEASE_BYTES,
        });
    }
    let opened = open(envelope.clone(), RELEASE_PAYLOAD_TYPE)?;
    release_from_opened(root, opened)
}

fn release_from_opened(
    root: &TrustedRoot,
    opened: Opened,
) -> Result<Verified<Release>, VerifyError> {
    let release: Verified<Release> = verify_opened(root, Role::Release, opened)?;
    if release.runtime.privileged && !root.allow_privileged() {
        return Err(VerifyError::PrivilegedNotAllowed {
            app: release.app.clone(),
        });
    }
    Ok(release)
}

/// Verifies a device's desired state: signed by the director role, addressed
/// to `expected_device`, not expired, newer than `last_generation`, and every
/// release in it signed by the release role, of the app it is listed under and
/// with the payload digest the desired state names.
pub fn verify_desired_state(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    expected_device: &DeviceId,
    last_generation: Option<u64>,
    now: u64,
) -> Result<VerifiedDesiredState, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(
        envelope_bytes,
        DESIRED_STATE_PAYLOAD_TYPE,
        MAX_DESIRED_STATE_BYTES,
    )?;
    let state: Verified<DesiredState> = verify_opened(root, Role::Director, opened)?;
    if &state.device != expected_device {
        return Err(VerifyError::WrongDevice {
            expected: expected_device.clone(),
            got: state.device.clone(),
        });
    }
    if now >= state.expires_at {
        return Err(VerifyError::Expired {
            expires_at: state.expires_at,
            now,
        });
    }
    if let Some(last) = last_generation
        && state.generation <= last
    {
        return Err(VerifyError::StaleGeneration {
            got: state.generation,
            last,
        });
    }
    if state.apps.len() > MAX_APPS {
        return Err(VerifyError::TooManyApps {
            count: state.apps.len(),
            max: MAX_APPS,
        });
    }
    let mut seen = BTreeSet::new();
    let mut releases = Vec::with_capacity(state.apps.len());
    for entry in &state.apps {
        if !seen.insert(&entry.app) {
            return Err(VerifyError::DuplicateApp {
                app: entry.app.clone(),
            });
        }
        let release = verify_release_envelope(root, &entry.release, now)?;
        if release.payload_digest() != &entry.release_digest {
            return Err(VerifyError::ReleaseDigestMismatch {
                app: entry.app.clone(),
                expected: entry.release_digest.clone(),
                actual: release.payload_digest().clone(),
            });
        }
        if release.app != entry.app {
            return Err(VerifyError::ReleaseAppMismatch {
                expected: entry.app.clone(),
                got: release.app.clone(),
            });
        }
        releases.push(release);
    }
    Ok(VerifiedDesiredState { state, releases })
}

/// Verifies a command: signed by the director role, addressed to
/// `expected_device`, not expired. Replay of command ids is the caller's to track.
pub fn verify_command(
    root: &TrustedRoot,
    envelope_bytes: &[u8],
    expected_device: &DeviceId,
    now: u64,
) -> Result<Verified<Command>, VerifyError> {
    root.check_not_expired(now)?;
    let opened = parse_envelope(envelope_bytes, COMMAND_PAYLOAD_TYPE, MAX_COMMAND_BYTES)?;
    let command: Verified<Command> = verify_opened(root, Role::Director, opened)?;
    if &command.device != expected_device {
        return Err(VerifyError::WrongDevice {
            expected: expected_device.clone(),
            got: command.device.clone(),
        });
    }
    if now >= command.expires_at {
        return Err(VerifyError::Expired {
            expires_at: command.expires_at,
            now,
        });
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsse::{SigningKey, sign};
    use crate::trust::{PublicKey, RoleKeys, Roles, Root};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// Root key 1, release keys 2 and 3 (threshold `release_threshold`), director key 4.
    fn trusted(release_threshold: u32) -> TrustedRoot {
        let ids = |ks: &[u8]| {
            ks.iter()
                .map(|n| KeyId::of(&key(*n).verifying_key()))
                .collect()
        };
        let root = Root {
            schema: 1,
            version: 1,
            expires_at: 100,
            keys: (1..=4)
                .map(|n| {
                    let k = key(n).verifying_key();
                    (KeyId::of(&k), PublicKey::ed25519(&k))
                })
                .collect(),
            roles: Roles {
                root: RoleKeys {
                    keyids: ids(&[1]),
                    threshold: 1,
                },
                release: RoleKeys {
                    keyids: ids(&[2, 3]),
                    threshold: release_threshold,
                },
                director: RoleKeys {
                    keyids: ids(&[4]),
                    threshold: 1,
                },
            },
            allow_privileged: false,
        };
        let env = sign(
            crate::dsse::ROOT_PAYLOAD_TYPE,
            &root.to_payload(),
            &[&key(1)],
        );
        TrustedRoot::bootstrap(&env.to_json(), 10).unwrap()
    }

    #[test]
    fn threshold_counts_distinct_valid_role_keys_and_ignores_others() {
        let root = trusted(2);
        let both = sign(
            RELEASE_PAYLOAD_TYPE,
            b"x",
            &[&key(2), &key(9), &key(4), &key(3)],
        );
        let v = verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &both.to_json(),
            10,
        )
        .unwrap();
        assert_eq!(v.signed_by().len(), 2);
        let one = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(2), &key(2)]);
        assert!(matches!(
            verify_bytes(
                &root,
                Role::Release,
                RELEASE_PAYLOAD_TYPE,
                &one.to_json(),
                10
            ),
            Err(VerifyError::BelowThreshold {
                have: 1,
                need: 2,
                ..
            })
        ));
    }

    #[test]
    fn an_invalid_signature_by_a_role_key_is_refused_even_above_threshold() {
        let root = trusted(1);
        let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(2), &key(3)]);
        // Key 3's entry now carries a signature over other bytes.
        env.signatures[1].sig = sign(RELEASE_PAYLOAD_TYPE, b"y", &[&key(3)]).signatures[0]
            .sig
            .clone();
        let err = verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &env.to_json(),
            10,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::BadSignature {
                    role: Role::Release,
                    ..
                }
            ),
            "{err:?}"
        );
        // A signature that is not even base64 is as bad.
        env.signatures[1].sig = "!!".into();
        let err = verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &env.to_json(),
            10,
        )
        .unwrap_err();
        assert_eq!(err.code(), "bad_signature");
    }

    #[test]
    fn signatures_without_key_id_are_matched_against_the_role_keys() {
        let root = trusted(1);
        let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(3)]);
        env.signatures[0].keyid.clear();
        verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &env.to_json(),
            10,
        )
        .unwrap();
        let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(9)]);
        env.signatures[0].keyid.clear();
        assert!(matches!(
            verify_bytes(
                &root,
                Role::Release,
                RELEASE_PAYLOAD_TYPE,
                &env.to_json(),
                10
            ),
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn every_error_has_a_distinct_code() {
        let a = AppName::new("a").unwrap();
        let d = DeviceId::new("d").unwrap();
        let k = KeyId::of(&key(1).verifying_key());
        let json_err = || serde_json::from_slice::<u8>(b"x").unwrap_err();
        let errors = [
            VerifyError::TooLarge {
                what: "x",
                len: 2,
                max: 1,
            },
            VerifyError::MalformedEnvelope {
                source: DsseError::Json { source: json_err() },
            },
            VerifyError::WrongPayloadType {
                expected: "a",
                got: "b".into(),
            },
            VerifyError::BadSignature {
                role: Role::Root,
                keyid: k.clone(),
            },
            VerifyError::UnknownKey { keyid: "x".into() },
            VerifyError::WrongRole {
                keyid: k,
                role: Role::Root,
            },
            VerifyError::BelowThreshold {
                role: Role::Root,
                have: 0,
                need: 1,
            },
            VerifyError::MalformedPayload {
                payload_type: "x",
                source: json_err(),
            },
            VerifyError::WrongDevice {
                expected: d.clone(),
                got: d,
            },
            VerifyError::Expired {
                expires_at: 1,
                now: 2,
            },
            VerifyError::StaleGeneration { got: 1, last: 1 },
            VerifyError::TooManyApps { count: 65, max: 64 },
            VerifyError::DuplicateApp { app: a.clone() },
            VerifyError::ReleaseDigestMismatch {
                app: a.clone(),
                expected: Digest::of(b"1"),
                actual: Digest::of(b"2"),
            },
            VerifyError::ReleaseAppMismatch {
                expected: a.clone(),
                got: a.clone(),
            },
            VerifyError::PrivilegedNotAllowed { app: a },
            VerifyError::RootExpired {
                version: 1,
                expires_at: 1,
                now: 2,
            },
            VerifyError::RootMissingLink { have: 1, got: 3 },
            VerifyError::RootRollback { have: 2, got: 1 },
            VerifyError::InvalidRoot {
                source: TrustError::ZeroVersion,
            },
        ];
        let codes: BTreeSet<&str> = errors.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), errors.len());
        for e in &errors {
            let info = e.to_error_info();
            assert_eq!(info.code, e.error_code());
            assert_ne!(info.code, ErrorCode::Unknown);
            assert!(info.message.starts_with(e.code()), "{}", info.message);
        }
    }
}
