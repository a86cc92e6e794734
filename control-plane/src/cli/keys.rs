//! `fleetctl keys`: the signing keys and the devices' trust root (offline).

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliError, now};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create root, release and director keys and a version 1 trust.json.
    Init {
        /// Directory for the key files and trust.json (created if missing).
        #[arg(long, default_value = "fleet-keys", env = "FLEET_KEYS_DIR")]
        dir: PathBuf,
        /// Days until the trust root expires (devices refuse everything after).
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
        /// Let releases ask for privileged containers.
        #[arg(long)]
        allow_privileged: bool,
    },
    /// Replace the root key: writes trust.json version N+1 signed by the old and the new root key.
    Rotate {
        #[arg(long, default_value = "fleet-keys", env = "FLEET_KEYS_DIR")]
        dir: PathBuf,
        /// Days until the new trust root expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u64,
    },
}

pub fn run(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Init {
            dir,
            expires_days,
            allow_privileged,
        } => init(dir, expires_days, allow_privileged),
        KeysCommand::Rotate { dir, expires_days } => rotate(dir, expires_days),
    }
}

fn init(dir: PathBuf, expires_days: u64, allow_privileged: bool) -> Result<(), CliError> {
    let made = crate::keys::init(&dir, expires_days, allow_privileged, now()?)?;
    for (role, path, keyid) in &made.keys {
        println!("{:<8} key {keyid}  {}", role.as_str(), path.display());
    }
    println!(
        "trust root v1 (expires at {})  {}",
        made.expires_at,
        made.trust.display()
    );
    println!(
        "next: copy {} to each device; keep root.key and release.key offline; \
         give director.key to fleet-server",
        made.trust.display()
    );
    Ok(())
}

fn rotate(dir: PathBuf, expires_days: u64) -> Result<(), CliError> {
    let r = crate::keys::rotate(&dir, expires_days, now()?)?;
    println!("root     key {}  {}", r.keyid, r.root_key.display());
    println!(
        "trust root v{} (expires at {})  {}",
        r.version,
        r.expires_at,
        r.trust.display()
    );
    println!(
        "previous root kept as {} and {}",
        r.archived_trust.display(),
        r.archived_root_key.display()
    );
    println!(
        "next: devices accept v{} only after v{}: deliver every version in order",
        r.version,
        r.version - 1
    );
    Ok(())
}
