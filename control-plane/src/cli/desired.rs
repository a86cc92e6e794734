//! `fleetctl desired`: a device's desired state signed with the director key
//! (offline / USB use).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use fleet_protocol::DeviceId;
use fleet_protocol::trust::{Role, TrustedRoot};

use super::{CliError, now, read, write_output};
use crate::keys::KeyFile;
use crate::sign;

#[derive(Debug, Subcommand)]
pub enum DesiredCommand {
    /// Build and sign a device's desired state from signed releases.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The device id.
    #[arg(long)]
    device: DeviceId,
    /// Must be greater than the last generation the device applied.
    #[arg(long)]
    generation: u64,
    /// Seconds from now until the desired state expires.
    #[arg(long, default_value_t = 86_400)]
    expires_in: u64,
    /// The director key file.
    #[arg(long)]
    key: PathBuf,
    /// Check each release against this trust root first.
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Signed release files (from `fleetctl release sign`).
    #[arg(required = true)]
    releases: Vec<PathBuf>,
    /// Where to write the signed desired state.
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(command: DesiredCommand) -> Result<(), CliError> {
    match command {
        DesiredCommand::Sign(args) => sign_state(args),
    }
}

fn trust_root(path: &Path, now: u64) -> Result<TrustedRoot, CliError> {
    TrustedRoot::bootstrap(&read(path)?, now).map_err(|source| CliError::TrustRoot {
        path: path.to_owned(),
        source,
    })
}

fn sign_state(args: SignArgs) -> Result<(), CliError> {
    let now = now()?;
    let key = KeyFile::load_for(&args.key, Role::Director)?;
    let root = args
        .trust
        .as_deref()
        .map(|path| trust_root(path, now))
        .transpose()?;
    let mut signed = Vec::new();
    for path in &args.releases {
        signed.push(sign::read_signed_release(
            &path.display().to_string(),
            &read(path)?,
            root.as_ref(),
            now,
        )?);
    }
    let apps: Vec<String> = signed.iter().map(|r| r.app.to_string()).collect();
    let envelope = sign::sign_desired_state(
        args.device.clone(),
        args.generation,
        now,
        now.saturating_add(args.expires_in),
        signed,
        &key,
    )?;
    let mut bytes = envelope.to_json_pretty();
    bytes.push(b'\n');
    write_output(&args.output, &bytes)?;
    println!(
        "desired state for {}, generation {}, apps [{}], signed by director key {}  {}",
        args.device,
        args.generation,
        apps.join(", "),
        key.keyid(),
        args.output.display()
    );
    Ok(())
}
