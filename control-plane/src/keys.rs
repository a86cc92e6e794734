//! Signing key files and the trust root they make (`fleetctl keys ...`).
//!
//! A key file is JSON, mode 0600 (see `KEYS.md`):
//! `{"keytype":"ed25519","role":"release","keyid":"<hex sha256 of public>","public":"<b64>","private":"<b64 32-byte seed>"}`.
//! Loading refuses a file readable by group or others, a key id or public key
//! that does not match the private seed, and a key of another role than the one
//! asked for. Nothing here prints or logs a private key; [`KeyFile`]'s `Debug`
//! shows only the role and key id.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleet_protocol::dsse::{self, Envelope, KeyId, ROOT_PAYLOAD_TYPE, SigningKey, VerifyingKey};
use fleet_protocol::trust::{
    KeyType, MAX_ROOT_BYTES, PublicKey, ROOT_SCHEMA_VERSION, Role, RoleKeys, Roles, Root,
    TrustedRoot,
};
use fleet_protocol::verify::VerifyError;
use serde::{Deserialize, Serialize};

/// File names inside a keys directory.
pub const ROOT_KEY_FILE: &str = "root.key";
pub const RELEASE_KEY_FILE: &str = "release.key";
pub const DIRECTOR_KEY_FILE: &str = "director.key";
pub const TRUST_FILE: &str = "trust.json";

const SECS_PER_DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it (move it away, or use another --dir)")]
    Exists { path: PathBuf },
    #[error("{path} is not a key file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: private key is not base64 of a 32-byte ed25519 seed")]
    BadPrivate { path: PathBuf },
    #[error("{path}: keyid/public do not match the private key; the file was edited or mixed up")]
    Mismatch { path: PathBuf },
    #[error(
        "{path} has mode {mode:o}: a private key must not be readable by others (run: chmod 600 {path})"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("{path} is a {got} key, a {expected} key is needed here (see `fleetctl keys init`)")]
    WrongRole {
        path: PathBuf,
        expected: Role,
        got: Role,
    },
    #[error("{path} is not a usable trust root: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error(
        "{path}: key {keyid} is not a root key of the current trust root; use the root.key that signed it"
    )]
    NotARootKey { path: PathBuf, keyid: KeyId },
    #[error("the new trust root does not verify against the current one: {source}")]
    RotationCheck {
        #[source]
        source: VerifyError,
    },
}

/// A signing key with its role. `Debug` never shows the private key.
pub struct KeyFile {
    role: Role,
    key: SigningKey,
}

/// The JSON form of a key file.
#[derive(Serialize, Deserialize)]
struct KeyFileJson {
    keytype: KeyType,
    role: Role,
    keyid: KeyId,
    public: String,
    private: String,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("role", &self.role)
            .field("keyid", &self.keyid())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl KeyFile {
    /// A new random key for `role`, from the operating system's RNG.
    pub fn generate(role: Role) -> Self {
        Self {
            role,
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// A key from a fixed seed (tests and reproducible fixtures only).
    pub fn from_seed(role: Role, seed: [u8; 32]) -> Self {
        Self {
            role,
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn keyid(&self) -> KeyId {
        KeyId::of(&self.key.verifying_key())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Loads a key file of any role, checking permissions and consistency.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let json: KeyFileJson =
            serde_json::from_slice(&bytes).map_err(|source| KeyError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let seed: [u8; 32] = STANDARD
            .decode(json.private.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::BadPrivate {
                path: path.to_owned(),
            })?;
        let key = KeyFile {
            role: json.role,
            key: SigningKey::from_bytes(&seed),
        };
        if key.keyid() != json.keyid || dsse::encode_public_key(&key.verifying_key()) != json.public
        {
            return Err(KeyError::Mismatch {
                path: path.to_owned(),
            });
        }
        Ok(key)
    }

    /// Loads a key file that must be of `role`.
    pub fn load_for(path: &Path, role: Role) -> Result<Self, KeyError> {
        let key = Self::load(path)?;
        if key.role != role {
            return Err(KeyError::WrongRole {
                path: path.to_owned(),
                expected: role,
                got: key.role,
            });
        }
        Ok(key)
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let json = KeyFileJson {
            keytype: KeyType::Ed25519,
            role: self.role,
            keyid: self.keyid(),
            public: dsse::encode_public_key(&self.verifying_key()),
            private: STANDARD.encode(self.key.to_bytes()),
        };
        let mut bytes = serde_json::to_vec_pretty(&json).map_err(|source| KeyError::Parse {
            path: path.to_owned(),
            source,
        })?;
        bytes.push(b'\n');
        write_new(path, &bytes, 0o600)
    }
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                KeyError::Write {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    // The umask may have narrowed the mode; make it exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })
}

fn refuse_existing(paths: &[&Path]) -> Result<(), KeyError> {
    for path in paths {
        if path.exists() {
            return Err(KeyError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// What `keys init` made.
#[derive(Debug)]
pub struct InitOutcome {
    pub trust: PathBuf,
    /// (role, key file, key id)
    pub keys: Vec<(Role, PathBuf, KeyId)>,
    pub expires_at: u64,
}

fn role_of(key: &KeyFile) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.keyid()],
        threshold: 1,
    }
}

fn sign_root(root: &Root, keys: &[&KeyFile]) -> Envelope {
    let signers: Vec<&SigningKey> = keys.iter().map(|k| k.signing_key()).collect();
    dsse::sign(ROOT_PAYLOAD_TYPE, &root.to_payload(), &signers)
}

fn envelope_file(envelope: &Envelope) -> Vec<u8> {
    let mut bytes = envelope.to_json_pretty();
    bytes.push(b'\n');
    bytes
}

/// Creates root, release and director keys and a version 1 trust root in
/// `dir`, valid for `expires_days` from `now`. Refuses if any file exists.
pub fn init(
    dir: &Path,
    expires_days: u64,
    allow_privileged: bool,
    now: u64,
) -> Result<InitOutcome, KeyError> {
    let trust_path = dir.join(TRUST_FILE);
    let files = [
        (Role::Root, dir.join(ROOT_KEY_FILE)),
        (Role::Release, dir.join(RELEASE_KEY_FILE)),
        (Role::Director, dir.join(DIRECTOR_KEY_FILE)),
    ];
    refuse_existing(&[&trust_path, &files[0].1, &files[1].1, &files[2].1])?;
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let keys: Vec<KeyFile> = files.iter().map(|(r, _)| KeyFile::generate(*r)).collect();
    let expires_at = now.saturating_add(expires_days.saturating_mul(SECS_PER_DAY));
    let root = Root {
        schema: ROOT_SCHEMA_VERSION,
        version: 1,
        expires_at,
        keys: keys
            .iter()
            .map(|k| (k.keyid(), PublicKey::ed25519(&k.verifying_key())))
            .collect(),
        roles: Roles {
            root: role_of(&keys[0]),
            release: role_of(&keys[1]),
            director: role_of(&keys[2]),
        },
        allow_privileged,
    };
    let envelope = envelope_file(&sign_root(&root, &[&keys[0]]));
    // Self-check with the verifier the devices use.
    TrustedRoot::bootstrap(&envelope, now).map_err(|source| KeyError::Trust {
        path: trust_path.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (key, (role, path)) in keys.iter().zip(&files) {
        key.save_new(path)?;
        out.push((*role, path.clone(), key.keyid()));
    }
    write_new(&trust_path, &envelope, 0o644)?;
    Ok(InitOutcome {
        trust: trust_path,
        keys: out,
        expires_at,
    })
}

/// Reads `trust.json` as the operator's own root (signatures are checked by
/// the caller where they matter; an expired root can still be rotated).
pub fn read_root(path: &Path) -> Result<(Vec<u8>, Root), KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let trust_err = |source| KeyError::Trust {
        path: path.to_owned(),
        source,
    };
    let envelope = Envelope::from_json(&bytes, MAX_ROOT_BYTES)
        .map_err(|source| trust_err(VerifyError::MalformedEnvelope { source }))?;
    if envelope.payload_type != ROOT_PAYLOAD_TYPE {
        return Err(trust_err(VerifyError::WrongPayloadType {
            expected: ROOT_PAYLOAD_TYPE,
            got: envelope.payload_type,
        }));
    }
    let payload = envelope
        .payload_bytes()
        .map_err(|source| trust_err(VerifyError::MalformedEnvelope { source }))?;
    let root: Root = serde_json::from_slice(&payload).map_err(|source| {
        trust_err(VerifyError::MalformedPayload {
            payload_type: ROOT_PAYLOAD_TYPE,
            source,
        })
    })?;
    Ok((bytes, root))
}

/// What `keys rotate` made.
#[derive(Debug)]
pub struct RotateOutcome {
    pub version: u64,
    pub trust: PathBuf,
    pub root_key: PathBuf,
    pub keyid: KeyId,
    /// Where the previous trust root and root key were moved.
    pub archived_trust: PathBuf,
    pub archived_root_key: PathBuf,
    pub expires_at: u64,
}

/// Replaces the root key in `dir`: writes trust root version N+1 whose root
/// role is a new key, signed by the old and the new root key. The previous
/// `trust.json` and `root.key` are kept as `trust.vN.json` and `root.vN.key`.
pub fn rotate(dir: &Path, expires_days: u64, now: u64) -> Result<RotateOutcome, KeyError> {
    let trust_path = dir.join(TRUST_FILE);
    let key_path = dir.join(ROOT_KEY_FILE);
    let (old_bytes, old) = read_root(&trust_path)?;
    let old_key = KeyFile::load_for(&key_path, Role::Root)?;
    if !old.roles.root.keyids.contains(&old_key.keyid()) {
        return Err(KeyError::NotARootKey {
            path: key_path,
            keyid: old_key.keyid(),
        });
    }
    let archived_trust = dir.join(format!("trust.v{}.json", old.version));
    let archived_key = dir.join(format!("root.v{}.key", old.version));
    refuse_existing(&[&archived_trust, &archived_key])?;

    let new_key = KeyFile::generate(Role::Root);
    let expires_at = now.saturating_add(expires_days.saturating_mul(SECS_PER_DAY));
    let mut keys: BTreeMap<KeyId, PublicKey> = old.keys.clone();
    for keyid in &old.roles.root.keyids {
        let still_used = [&old.roles.release, &old.roles.director]
            .iter()
            .any(|r| r.keyids.contains(keyid));
        if !still_used {
            keys.remove(keyid);
        }
    }
    keys.insert(
        new_key.keyid(),
        PublicKey::ed25519(&new_key.verifying_key()),
    );
    let new = Root {
        schema: ROOT_SCHEMA_VERSION,
        version: old.version + 1,
        expires_at,
        keys,
        roles: Roles {
            root: role_of(&new_key),
            release: old.roles.release.clone(),
            director: old.roles.director.clone(),
        },
        allow_privileged: old.allow_privileged,
    };
    let new_bytes = envelope_file(&sign_root(&new, &[&old_key, &new_key]));

    // Check the result the way a device will: the old root must accept it.
    // (An expired old root is still a valid starting point for rotation.)
    let check_at = now.min(old.expires_at.saturating_sub(1));
    let trusted =
        TrustedRoot::bootstrap(&old_bytes, check_at).map_err(|source| KeyError::Trust {
            path: trust_path.clone(),
            source,
        })?;
    trusted
        .rotate(&new_bytes, now)
        .map_err(|source| KeyError::RotationCheck { source })?;

    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to).map_err(|source| KeyError::Write {
            path: to.to_owned(),
            source,
        })
    };
    rename(&key_path, &archived_key)?;
    rename(&trust_path, &archived_trust)?;
    new_key.save_new(&key_path)?;
    write_new(&trust_path, &new_bytes, 0o644)?;
    Ok(RotateOutcome {
        version: new.version,
        trust: trust_path,
        root_key: key_path,
        keyid: new_key.keyid(),
        archived_trust,
        archived_root_key: archived_key,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600;

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = KeyFile::from_seed(Role::Release, [42; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&STANDARD.encode([42u8; 32])), "{shown}");
        assert!(!shown.contains(&hex::encode([42u8; 32])), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn key_files_round_trip_with_mode_0600_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = KeyFile::from_seed(Role::Director, [3; 32]);
        key.save_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = KeyFile::load_for(&path, Role::Director).unwrap();
        assert_eq!(loaded.keyid(), key.keyid());
        assert!(matches!(
            KeyFile::load_for(&path, Role::Release),
            Err(KeyError::WrongRole { .. })
        ));
        assert!(matches!(key.save_new(&path), Err(KeyError::Exists { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyFile::load(&path),
            Err(KeyError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn edited_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        KeyFile::from_seed(Role::Release, [3; 32])
            .save_new(&path)
            .unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        json["public"] =
            dsse::encode_public_key(&SigningKey::from_bytes(&[4; 32]).verifying_key()).into();
        fs::remove_file(&path).unwrap();
        write_new(&path, &serde_json::to_vec(&json).unwrap(), 0o600).unwrap();
        assert!(matches!(
            KeyFile::load(&path),
            Err(KeyError::Mismatch { .. })
        ));
    }

    #[test]
    fn init_then_rotate_twice_keeps_a_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let made = init(dir.path(), 365, false, NOW).unwrap();
        assert_eq!(made.expires_at, NOW + 365 * SECS_PER_DAY);
        assert!(matches!(
            init(dir.path(), 365, false, NOW),
            Err(KeyError::Exists { .. })
        ));
        let v1 = fs::read(dir.path().join(TRUST_FILE)).unwrap();
        let r2 = rotate(dir.path(), 30, NOW).unwrap();
        assert_eq!(r2.version, 2);
        let r3 = rotate(dir.path(), 30, NOW).unwrap();
        assert_eq!(r3.version, 3);
        let v2 = fs::read(dir.path().join("trust.v2.json")).unwrap();
        let v3 = fs::read(dir.path().join(TRUST_FILE)).unwrap();
        let trusted = TrustedRoot::bootstrap(&v1, NOW).unwrap();
        // v3 is signed by the v2 and v3 root keys, which v1 does not know.
        assert!(matches!(
            trusted.rotate(&v3, NOW),
            Err(VerifyError::UnknownKey { .. })
        ));
        let latest = trusted.rotate_chain(&[&v2, &v3], NOW).unwrap();
        assert_eq!(latest.version(), 3);
        assert_eq!(latest.role(Role::Root).keyids, vec![r3.keyid]);
        // The archived first root key no longer counts.
        assert!(latest.key(&made.keys[0].2).is_none());
    }
}
