//! `fleetctl release`: sign a release with the release key (offline), or
//! sign one of an image and publish it to a channel (`release publish`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use fleet_protocol::trust::Role;
use fleet_protocol::{AppName, ImageRef};

use super::{CliError, Output, Remote, print_json, read, write_output};
use crate::keys::KeyFile;
use crate::sign;
use crate::store::Channel;

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
    /// Sign a release of an image and publish it to a channel: every group
    /// following the channel for the app starts rolling it out.
    Publish(Box<PublishArgs>),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The image, e.g. registry.local:5000/edge/model:v2 (a tag is
    /// resolved to its digest by the server).
    pub image: ImageRef,
    /// The channel, e.g. stable.
    #[arg(long)]
    pub channel: Channel,
    /// The release key that signs the release.
    #[arg(
        long,
        env = "FLEET_RELEASE_KEY",
        default_value = "fleet-keys/release.key"
    )]
    pub release_key: PathBuf,
    /// App name (default: the last part of the image repository).
    #[arg(long)]
    pub app: Option<AppName>,
    /// Release version (default: the image tag).
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub device: super::rollout::DeviceArgs,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn run(command: ReleaseCommand) -> Result<(), CliError> {
    match command {
        ReleaseCommand::Sign {
            release,
            key,
            output,
        } => sign_file(release, key, output),
        ReleaseCommand::Publish(args) => super::block_on(publish(*args)),
    }
}

async fn publish(args: PublishArgs) -> Result<(), CliError> {
    let client = args.remote.client()?;
    let (envelope, digest) = super::rollout::sign_image(
        &client,
        &args.image,
        &args.release_key,
        args.app,
        args.version,
        args.device.settings(),
    )
    .await?;
    let view = client
        .publish_release(&args.channel, envelope.to_json())
        .await
        .map_err(|source| CliError::Server {
            doing: format!("cannot publish {} to {}", args.image, args.channel),
            source,
        })?;
    if args.remote.output == Output::Json {
        return print_json(&view);
    }
    println!(
        "{} {} ({digest}) published to {}: rollouts started {:?}, queued in groups {:?}",
        view.release.app, view.release.version, view.channel, view.rollouts, view.queued
    );
    Ok(())
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
