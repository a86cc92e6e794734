//! Root metadata (the payload of `trust.json`): keys, roles with their
//! thresholds, version and expiry, and its structural checks. Signatures over
//! it are checked by [`crate::trust::TrustedRoot`].

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::dsse::{KeyId, VerifyingKey};

/// The version of the root metadata format.
pub const ROOT_SCHEMA_VERSION: u32 = 1;

/// Largest `trust.json` accepted, in bytes.
pub const MAX_ROOT_BYTES: usize = 256 * 1024;
/// Most keys a root may list.
pub const MAX_KEYS: usize = 64;
/// Most key ids one role may list.
pub const MAX_ROLE_KEYS: usize = 16;

fn root_schema_version() -> u32 {
    ROOT_SCHEMA_VERSION
}

/// A role keys sign for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Signs root metadata (new `trust.json` versions).
    Root,
    /// Signs releases (offline key: operator or CI).
    Release,
    /// Signs per-device desired state and commands (online key: the server).
    Director,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Root, Role::Release, Role::Director];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Director => "director",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The only key type supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Ed25519,
}

/// A public key in root metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: KeyType,
    /// Standard base64 of the raw 32-byte ed25519 public key.
    pub public: String,
}

impl PublicKey {
    pub fn ed25519(key: &VerifyingKey) -> Self {
        Self {
            keytype: KeyType::Ed25519,
            public: crate::dsse::encode_public_key(key),
        }
    }
}

/// Which keys may sign for a role and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<KeyId>,
    pub threshold: u32,
}

/// The keys of each role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub root: RoleKeys,
    pub release: RoleKeys,
    pub director: RoleKeys,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Release => &self.release,
            Role::Director => &self.director,
        }
    }
}

/// Root metadata: the payload of `trust.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(default = "root_schema_version")]
    pub schema: u32,
    /// Starts at 1; each rotation adds exactly 1.
    pub version: u64,
    /// Seconds since the Unix epoch after which the root is no longer trusted.
    pub expires_at: u64,
    pub keys: BTreeMap<KeyId, PublicKey>,
    pub roles: Roles,
    /// Whether releases may ask for privileged containers.
    #[serde(default)]
    pub allow_privileged: bool,
}

/// Why root metadata is not well formed (independent of signatures).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("root lists {count} keys, more than the limit of {max}")]
    TooManyKeys { count: usize, max: usize },
    #[error("key {keyid}: public key is not base64 of 32 bytes")]
    BadPublicKey { keyid: KeyId },
    #[error("key {keyid}: not a valid ed25519 public key")]
    InvalidPublicKey { keyid: KeyId },
    #[error("key {keyid}: key id is not the sha256 of its public key ({actual})")]
    KeyIdMismatch { keyid: KeyId, actual: KeyId },
    #[error("role {role}: threshold must be at least 1")]
    ZeroThreshold { role: Role },
    #[error("role {role}: threshold {threshold} is more than its {keys} keys")]
    ThresholdTooHigh {
        role: Role,
        threshold: u32,
        keys: usize,
    },
    #[error("role {role} lists {count} keys, more than the limit of {max}")]
    TooManyRoleKeys {
        role: Role,
        count: usize,
        max: usize,
    },
    #[error("role {role} lists key {keyid} twice")]
    DuplicateRoleKey { role: Role, keyid: KeyId },
    #[error("role {role} lists key {keyid}, which is not in the root's keys")]
    UndefinedRoleKey { role: Role, keyid: KeyId },
    #[error("root version must be at least 1")]
    ZeroVersion,
}

impl Root {
    /// Checks structure: key ids match keys, thresholds are reachable, limits hold.
    /// Returns the parsed keys.
    pub fn validate(&self) -> Result<BTreeMap<KeyId, VerifyingKey>, TrustError> {
        if self.version == 0 {
            return Err(TrustError::ZeroVersion);
        }
        if self.keys.len() > MAX_KEYS {
            return Err(TrustError::TooManyKeys {
                count: self.keys.len(),
                max: MAX_KEYS,
            });
        }
        let mut parsed = BTreeMap::new();
        for (keyid, key) in &self.keys {
            let KeyType::Ed25519 = key.keytype;
            let raw: [u8; 32] = STANDARD
                .decode(&key.public)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| TrustError::BadPublicKey {
                    keyid: keyid.clone(),
                })?;
            let vk = VerifyingKey::from_bytes(&raw).map_err(|_| TrustError::InvalidPublicKey {
                keyid: keyid.clone(),
            })?;
            let actual = KeyId::of(&vk);
            if &actual != keyid {
                return Err(TrustError::KeyIdMismatch {
                    keyid: keyid.clone(),
                    actual,
                });
            }
            parsed.insert(keyid.clone(), vk);
        }
        for role in Role::ALL {
            let rk = self.roles.get(role);
            if rk.keyids.len() > MAX_ROLE_KEYS {
                return Err(TrustError::TooManyRoleKeys {
                    role,
                    count: rk.keyids.len(),
                    max: MAX_ROLE_KEYS,
                });
            }
            if rk.threshold == 0 {
                return Err(TrustError::ZeroThreshold { role });
            }
            if rk.threshold as usize > rk.keyids.len() {
                return Err(TrustError::ThresholdTooHigh {
                    role,
                    threshold: rk.threshold,
                    keys: rk.keyids.len(),
                });
            }
            let mut seen = BTreeSet::new();
            for keyid in &rk.keyids {
                if !seen.insert(keyid) {
                    return Err(TrustError::DuplicateRoleKey {
                        role,
                        keyid: keyid.clone(),
                    });
                }
                if !self.keys.contains_key(keyid) {
                    return Err(TrustError::UndefinedRoleKey {
                        role,
                        keyid: keyid.clone(),
                    });
                }
            }
        }
        Ok(parsed)
    }

    /// The root as JSON bytes, ready to be signed.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
