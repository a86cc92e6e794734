//! `fleetctl release`: sign a release with the release key (offline).

use std::path::PathBuf;

use clap::Subcommand;
use fleet_protocol::trust::Role;

use super::{CliError, read, write_output};
use crate::keys::KeyFile;
use crate::sign;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Sign a release JSON file with the release key.
    Sign {
        /// The release (JSON: app, version, repository, manifest_digest, runtime).
        release: PathBuf,
        /// The release key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed release envelope.
        #[arg(short, long)]
        output: PathBuf,
    },
}

pub fn run(command: ReleaseCommand) -> Result<(), CliError> {
    match command {
        ReleaseCommand::Sign {
            release,
            key,
            output,
        } => sign_file(release, key, output),
    }
}

fn sign_file(release: PathBuf, key: PathBuf, output: PathBuf) -> Result<(), CliError> {
    let key = KeyFile::load_for(&key, Role::Release)?;
    let envelope = sign::sign_release(&release.display().to_string(), &read(&release)?, &key)?;
    let mut bytes = envelope.to_json_pretty();
    bytes.push(b'\n');
    write_output(&output, &bytes)?;
    println!(
        "signed by release key {}  {}",
        key.keyid(),
        output.display()
    );
    Ok(())
}
