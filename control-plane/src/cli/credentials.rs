//! `~/.config/fleet/credentials`: the server URL and API token of
//! `fleetctl login`, mode 0600.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no credentials: run `fleetctl login --server URL --token TOKEN` (or set FLEET_SERVER and FLEET_TOKEN)"
    )]
    Missing,
    #[error(
        "no configuration directory: set HOME, XDG_CONFIG_HOME or FLEET_CONFIG_DIR, or pass --server and --token"
    )]
    NoConfigDir,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a credentials file: {source} (run `fleetctl login` again)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub server: String,
    pub token: String,
    /// The fleet CA (PEM) the server's certificate is checked against;
    /// unset: the public web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// The configuration directory: `$FLEET_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/fleet`, else `$HOME/.config/fleet`.
pub fn config_dir() -> Result<PathBuf, CredentialsError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("FLEET_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("fleet"));
    }
    var("HOME")
        .map(|h| PathBuf::from(h).join(".config").join("fleet"))
        .ok_or(CredentialsError::NoConfigDir)
}

pub fn credentials_path() -> Result<PathBuf, CredentialsError> {
    Ok(config_dir()?.join("credentials"))
}

/// Reads the credentials file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Credentials>, CredentialsError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CredentialsError::Parse {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the credentials file with mode 0600 (through a temporary file).
pub fn save(path: &Path, creds: &Credentials) -> Result<(), CredentialsError> {
    let write_err = |source| CredentialsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    let mut bytes = serde_json::to_vec_pretty(creds).map_err(|e| write_err(e.into()))?;
    bytes.push(b'\n');
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(&bytes))
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

/// Flags/environment win over the file; server and token are needed.
/// `ca` is a path to the CA certificate.
pub fn resolve(
    server: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
) -> Result<Credentials, CredentialsError> {
    let file = match (&server, &token, &ca) {
        (Some(_), Some(_), Some(_)) => None,
        _ => load(&credentials_path()?)?,
    };
    let ca = match ca {
        Some(path) => Some(read_ca(&path)?),
        None => file.as_ref().and_then(|c| c.ca.clone()),
    };
    let server = server.or_else(|| file.as_ref().map(|c| c.server.clone()));
    let token = token.or_else(|| file.as_ref().map(|c| c.token.clone()));
    match (server, token) {
        (Some(server), Some(token)) => Ok(Credentials { server, token, ca }),
        _ => Err(CredentialsError::Missing),
    }
}

/// Reads a CA certificate file (PEM).
pub fn read_ca(path: &Path) -> Result<String, CredentialsError> {
    fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_credentials_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/credentials");
        let c = Credentials {
            server: "http://127.0.0.1:1".into(),
            token: "fleet_x".into(),
            ca: Some("-----BEGIN CERTIFICATE-----".into()),
        };
        save(&path, &c).unwrap();
        save(&path, &c).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap(), Some(c));
        assert_eq!(load(&dir.path().join("none")).unwrap(), None);
    }
}
