//! The device's transport identity (protocol/SECURITY.md): its key, its
//! certificate from the fleet CA and the CA itself, under
//! `<state_dir>/identity/` (directory 0700):
//!
//! | file | what |
//! |---|---|
//! | `device.key` | the private key, PKCS#8 PEM, 0600; made here, never sent |
//! | `device.crt` | the certificate, PEM |
//! | `ca.crt` | the fleet CA, PEM |
//! | `identity.json` | `{"device", "serial", "issued_at", "not_before", "not_after"}` |
//!
//! A new identity (enrollment, renewal) is written as a set: every file
//! to `*.new` and synced, `identity.json.new` last; then each renamed in
//! place, `identity.json` last, and the directory synced. The presence of
//! `identity.json.new` says every other `*.new` file is complete, so
//! [`load`] after a crash finishes the renames (or, without it, drops the
//! partial `*.new` files): a `kill -9` leaves the old set or the new one,
//! never a key with another key's certificate.
//!
//! - [`enroll`]: a bootstrap token and a CSR for the first certificate;
//! - [`renew`]: a new key and certificate at two thirds of the life, over
//!   TLS with the current certificate.

pub mod enroll;
mod http;
pub mod renew;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_protocol::DeviceId;
use fleet_protocol::enroll::Issued;
use serde::{Deserialize, Serialize};

use crate::link::tls::{ClientIdentity, TlsError, client_config};

pub use enroll::{EnrollError, EnrollOptions};
pub use renew::{RenewError, Renewer};

/// The identity directory under the state directory.
pub const DIR: &str = "identity";
const KEY: &str = "device.key";
const CERT: &str = "device.crt";
const CA: &str = "ca.crt";
const META: &str = "identity.json";
/// The key of an enrollment still waiting (kept across restarts, so the
/// device asks again with the same key the admin may have approved).
const PENDING_KEY: &str = "pending.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: mode {mode:o} lets other users read the device key; chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("the identity in {dir} does not hold together: {source}")]
    Tls {
        dir: PathBuf,
        #[source]
        source: TlsError,
    },
}

/// `identity.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    device: DeviceId,
    serial: String,
    /// Absent in a file from before it was added: `not_before` then.
    #[serde(default)]
    issued_at: Option<u64>,
    not_before: u64,
    not_after: u64,
}

/// The device's identity as stored. `Debug` leaves the key out.
#[derive(Clone)]
pub struct Identity {
    pub device: DeviceId,
    /// Hex of the certificate's serial number.
    pub serial: String,
    /// When the server issued it (its clock).
    pub issued_at: u64,
    pub not_before: u64,
    pub not_after: u64,
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device", &self.device)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from the server's answer and the key it certifies.
    pub(crate) fn issued(device: DeviceId, issued: Issued, key_pem: String) -> Self {
        Self {
            device,
            serial: issued.serial,
            issued_at: issued.issued_at,
            not_before: issued.not_before,
            not_after: issued.not_after,
            ca_pem: issued.ca,
            cert_pem: issued.certificate,
            key_pem,
        }
    }

    /// The certificate and key, for a TLS client configuration.
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// A TLS client configuration trusting the fleet CA (and, with
    /// `web_roots`, the public web roots) and presenting this identity;
    /// fails if the key is not the certificate's.
    pub fn tls_config(&self, web_roots: bool) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_config(&self.ca_pem, web_roots, Some(&self.client_identity()))
    }

    /// Unix seconds at which it is renewed: two thirds into its life.
    pub fn renew_at(&self) -> u64 {
        fleet_protocol::enroll::renew_at(self.issued_at, self.not_after)
    }

    pub fn expired(&self, now: u64) -> bool {
        now >= self.not_after
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The identity directory of `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// The stored identity, if the device has one (finishing or dropping a
/// replacement a crash interrupted).
pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let dir = dir(state_dir);
    if !dir.join(META).exists() && !dir.join(new_name(META)).exists() {
        return Ok(None);
    }
    recover(&dir)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(io(&path))
    };
    let meta_path = dir.join(META);
    let meta: Meta = serde_json::from_str(&read(META)?).map_err(|e| IdentityError::Corrupt {
        path: meta_path,
        what: e.to_string(),
    })?;
    let key_path = dir.join(KEY);
    let mode = fs::metadata(&key_path)
        .map_err(io(&key_path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyMode {
            path: key_path,
            mode: mode & 0o777,
        });
    }
    let identity = Identity {
        device: meta.device,
        serial: meta.serial,
        issued_at: meta.issued_at.unwrap_or(meta.not_before),
        not_before: meta.not_before,
        not_after: meta.not_after,
        ca_pem: read(CA)?,
        cert_pem: read(CERT)?,
        key_pem: read(KEY)?,
    };
    identity
        .tls_config(false)
        .map_err(|source| IdentityError::Tls { dir, source })?;
    Ok(Some(identity))
}

fn new_name(name: &str) -> String {
    format!("{name}.new")
}

/// After a crash mid-replacement: with `identity.json.new` every `*.new`
/// file is complete and the renames are finished; without it, the partial
/// `*.new` files are dropped.
fn recover(dir: &Path) -> Result<(), IdentityError> {
    let complete = dir.join(new_name(META)).exists();
    let mut changed = false;
    for name in [KEY, CERT, CA, META] {
        let new = dir.join(new_name(name));
        if !new.exists() {
            continue;
        }
        changed = true;
        if complete {
            fs::rename(&new, dir.join(name)).map_err(io(&new))?;
        } else {
            fs::remove_file(&new).map_err(io(&new))?;
        }
    }
    if changed {
        tracing::warn!(dir = %dir.display(), finished = complete,
            "an identity replacement was interrupted; {}", if complete { "finished it" } else { "kept the previous identity" });
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the identity directory (0700).
pub(crate) fn make_dir(state_dir: &Path) -> Result<PathBuf, IdentityError> {
    let dir = dir(state_dir);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    Ok(dir)
}

/// Writes `identity` in place of the stored one, as a set (see the module
/// documentation); drops the pending enrollment key.
pub fn store(state_dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let dir = make_dir(state_dir)?;
    let meta = Meta {
        device: identity.device.clone(),
        serial: identity.serial.clone(),
        issued_at: Some(identity.issued_at),
        not_before: identity.not_before,
        not_after: identity.not_after,
    };
    let meta = serde_json::to_vec_pretty(&meta).map_err(|e| IdentityError::Corrupt {
        path: dir.join(META),
        what: e.to_string(),
    })?;
    let files: [(&str, &[u8], u32); 4] = [
        (KEY, identity.key_pem.as_bytes(), 0o600),
        (CERT, identity.cert_pem.as_bytes(), 0o644),
        (CA, identity.ca_pem.as_bytes(), 0o644),
        (META, &meta, 0o644),
    ];
    for (name, bytes, mode) in files {
        write_synced(&dir.join(new_name(name)), bytes, mode)?;
    }
    sync_dir(&dir)?;
    for (name, _, _) in files {
        let new = dir.join(new_name(name));
        fs::rename(&new, dir.join(name)).map_err(io(&new))?;
    }
    let pending = dir.join(PENDING_KEY);
    if pending.exists() {
        fs::remove_file(&pending).map_err(io(&pending))?;
    }
    sync_dir(&dir)
}

/// Writes `bytes` to a fresh `path` with `mode`, synced.
pub(crate) fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(path)(e)),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The key of an enrollment that is waiting, if a previous run left one.
pub(crate) fn pending_key(state_dir: &Path) -> Result<Option<String>, IdentityError> {
    let path = dir(state_dir).join(PENDING_KEY);
    match fs::read_to_string(&path) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Keeps the key of an enrollment that may have to wait for approval.
pub(crate) fn keep_pending_key(state_dir: &Path, key_pem: &str) -> Result<(), IdentityError> {
    let dir = make_dir(state_dir)?;
    write_synced(&dir.join(PENDING_KEY), key_pem.as_bytes(), 0o600)?;
    sync_dir(&dir)
}

#[cfg(test)]
mod tests;
