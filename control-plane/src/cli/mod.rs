//! `fleetctl`'s commands, one file per command group; the binary only
//! parses the command line and dispatches here. Offline: [`keys`],
//! [`release`], [`desired`]. Against a server: [`login`], [`rollout`],
//! [`devices`], [`groups`], [`image`], [`tokens`], [`audit`], [`enroll`]. Every command returns a
//! [`CliError`], whose [`ExitClass`] is the process's exit code.

pub mod audit;
pub mod credentials;
pub mod desired;
pub mod devices;
pub mod enroll;
mod error;
pub mod gates;
pub mod groups;
pub mod image;
pub mod keys;
pub mod labels;
pub mod login;
pub mod release;
pub mod render;
pub mod rollout;
pub mod tokens;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};

pub use error::{CliError, EXIT_CODES_HELP, ExitClass, UrlError};

use crate::client::Client;
use credentials::Credentials;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Where the server is and how to log in (flags win over the credentials file).
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Server URL (default: from `fleetctl login`).
    #[arg(long, global = true, env = "FLEET_SERVER")]
    pub server: Option<String>,
    /// API token (default: from `fleetctl login`).
    #[arg(long, global = true, env = "FLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The fleet CA certificate the server is checked against (default:
    /// from `fleetctl login`), e.g. fleet-data/pki/ca.crt.
    #[arg(long, global = true, env = "FLEET_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Output format of read commands.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl Remote {
    /// The server URL and token, from the flags or the credentials file.
    pub fn credentials(&self) -> Result<Credentials, CliError> {
        let creds = credentials::resolve(self.server.clone(), self.token.clone(), self.ca.clone())?;
        check_server_url(&creds.server)?;
        Ok(creds)
    }

    /// A client of the server these flags name.
    pub fn client(&self) -> Result<Client, CliError> {
        let Credentials { server, token, ca } = self.credentials()?;
        client_for(&server, token, ca.as_deref())
    }
}

/// A client of `server`, checking its certificate against `ca` when given.
pub fn client_for(server: &str, token: String, ca: Option<&str>) -> Result<Client, CliError> {
    match ca {
        None => Ok(Client::new(server, Some(token))),
        Some(ca) => Client::with_ca(server, Some(token), ca).map_err(|e| CliError::Ca {
            message: e.to_string(),
        }),
    }
}

/// A server URL must be an http(s) URL; anything else is a usage error
/// (found here, before any request is tried).
pub fn check_server_url(url: &str) -> Result<(), CliError> {
    let parsed = reqwest::Url::parse(url).map_err(|source| CliError::BadServerUrl {
        url: url.to_owned(),
        source,
    })?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        _ => Err(CliError::UnsupportedScheme {
            url: url.to_owned(),
        }),
    }
}

/// Runs a remote command on a current-thread runtime.
pub fn block_on<F: Future<Output = Result<(), CliError>>>(command: F) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Runtime { source })?
        .block_on(command)
}

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes a shell completion script for `command` to standard output.
pub fn completions(
    shell: clap_complete::Shell,
    command: &mut clap::Command,
) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, "fleetctl", &mut script);
    std::io::stdout()
        .write_all(&script)
        .map_err(|source| CliError::Stdout { source })
}

/// Seconds since the Unix epoch.
pub fn now() -> Result<u64, CliError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|source| CliError::Clock { source })?
        .as_secs())
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|source| CliError::Write {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| CliError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_must_be_http() {
        assert!(check_server_url("http://127.0.0.1:8080").is_ok());
        assert!(check_server_url("https://fleet.example").is_ok());
        for bad in ["127.0.0.1:8080", "not a url", "ftp://fleet.example"] {
            let e = check_server_url(bad).unwrap_err();
            assert_eq!(e.class(), ExitClass::Usage, "{bad}: {e}");
        }
    }
}
