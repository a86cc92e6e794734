//! Device credentials for MQTT: each device's token is
//! HMAC-SHA256(server secret, device id), so the server keeps one secret
//! (`<data>/device-token.key`, 0600, made at first start) instead of a table,
//! and an operator hands a device its token with `fleet-server device-token ID`.
//!
//! This is the bootstrap credential until device certificates (TLS client
//! auth) land; the per-device topic ACL holds either way.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use fleet_protocol::DeviceId;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::broker::DeviceAuthenticator;

const FILE: &str = "device-token.key";

#[derive(Debug, thiserror::Error)]
#[error("device token secret {path}: {source}")]
pub struct DeviceTokenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The server's device-token secret.
#[derive(Clone)]
pub struct DeviceTokens {
    secret: [u8; 32],
}

impl std::fmt::Debug for DeviceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceTokens(<redacted>)")
    }
}

impl DeviceTokens {
    /// Loads the secret from `data_dir`, creating it (0600) on first use.
    pub fn open(data_dir: &Path) -> Result<Self, DeviceTokenError> {
        let path = data_dir.join(FILE);
        let err = |source| DeviceTokenError {
            path: path.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] = hex::decode(bytes.trim_ascii())
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        err(std::io::Error::other(
                            "not 64 hex digits; remove it to make a new one (every device token changes)",
                        ))
                    })?;
                let mode = fs::metadata(&path).map_err(err)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(err(std::io::Error::other(format!(
                        "mode {:o} lets other users read it; chmod 600 it",
                        mode & 0o777
                    ))));
                }
                Ok(Self { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
                fs::create_dir_all(data_dir).map_err(err)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(err)?;
                f.write_all(hex::encode(secret).as_bytes()).map_err(err)?;
                f.sync_all().map_err(err)?;
                Ok(Self { secret })
            }
            Err(e) => Err(err(e)),
        }
    }

    /// The MQTT password of `device`.
    pub fn token(&self, device: &DeviceId) -> String {
        hex::encode(hmac_sha256(&self.secret, device.as_str().as_bytes()))
    }
}

impl DeviceAuthenticator for DeviceTokens {
    fn authenticate(&self, device: &DeviceId, token: &[u8]) -> bool {
        let want = self.token(device);
        let want = want.as_bytes();
        want.len() == token.len()
            && want
                .iter()
                .zip(token)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail here.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_known_answer() {
        // Key of 32 bytes 0x00..0x1f, message "abc"; computed with Python's
        // hmac module: hmac.new(bytes(range(32)), b"abc", "sha256").hexdigest()
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"abc")),
            "f0133729c4163dede81e21cd47839256da58171238c8a0d874397c73b14e1e47"
        );
    }

    #[test]
    fn tokens_persist_and_authenticate_only_their_device() {
        let dir = tempfile::tempdir().unwrap();
        let t = DeviceTokens::open(dir.path()).unwrap();
        let again = DeviceTokens::open(dir.path()).unwrap();
        let cam = DeviceId::new("cam-01").unwrap();
        let other = DeviceId::new("cam-02").unwrap();
        assert_eq!(t.token(&cam), again.token(&cam));
        assert!(t.authenticate(&cam, t.token(&cam).as_bytes()));
        assert!(!t.authenticate(&other, t.token(&cam).as_bytes()));
        assert!(!t.authenticate(&cam, b"guess"));
        let mode = fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
