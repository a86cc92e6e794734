//! `fleetctl` commands that talk to a server: login, rollout, devices,
//! groups. (Offline key and signing commands live in the binary.)

pub mod credentials;
mod render;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use fleet_protocol::trust::Role;
use fleet_protocol::{AppName, DeviceId, GroupName, Release, SCHEMA_VERSION};

use crate::api::types::{AddMembers, CreateGroup, CreateRollout, SetLabels};
use crate::client::Client;
use crate::fleet::rollout::Action;
use crate::keys::KeyFile;
use crate::sign;
use crate::store::RolloutId;
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
    /// Output format of read commands.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: String,
    /// The API token (fleet-server prints the admin token on its first start).
    #[arg(long, env = "FLEET_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: Option<RolloutCommand>,
    #[command(flatten)]
    pub remote: Remote,
    /// The image to roll out, e.g. registry.local:5000/edge/model:v2.
    #[arg(required = true)]
    pub image: Option<String>,
    /// The target group.
    #[arg(long, required = true)]
    pub group: Option<GroupName>,
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
    /// Size of a first (canary) wave; the next wave starts when it settled.
    #[arg(long)]
    pub canary: Option<usize>,
    /// Follow the rollout's progress after starting it.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show rollouts, or one rollout with per-device progress.
    Status {
        id: Option<RolloutId>,
        /// Follow until the rollout completes, pauses or stops.
        #[arg(long)]
        watch: bool,
    },
    /// Hold the next waves back.
    Pause { id: RolloutId },
    /// Let a paused rollout continue.
    Resume { id: RolloutId },
    /// Stop the rollout where it is (devices keep what they got).
    Abort { id: RolloutId },
    /// Give every device the rollout reached its previous release back.
    Undo { id: RolloutId },
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub command: DevicesCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an OCI image layout directory, an OCI archive or a `docker save`
    /// tar into the server's content store (served at /v2 to devices).
    Import {
        /// The layout directory or the tar file.
        path: std::path::PathBuf,
        /// Repository to store it under, e.g. `edge/model`.
        #[arg(long)]
        repository: String,
        /// Tag (default: the tags the layout or archive names).
        #[arg(long)]
        tag: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    pub command: GroupsCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices.
    Ls,
    /// One device with its latest status.
    Show { id: DeviceId },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups and their devices.
    Ls,
    /// Create a group by label selector (role=camera) and/or explicit devices.
    Add {
        name: GroupName,
        /// Label selector KEY=VALUE (repeatable; all must match).
        #[arg(long = "selector", short = 's', value_parser = parse_label)]
        selector: Vec<(String, String)>,
        /// An explicit member (repeatable).
        #[arg(long = "device", short = 'd')]
        devices: Vec<DeviceId>,
    },
    /// Add explicit members to a group.
    AddMembers {
        name: GroupName,
        #[arg(required = true)]
        devices: Vec<DeviceId>,
    },
    /// Set (KEY=VALUE) or remove (--remove KEY) a device's labels.
    Label {
        device: DeviceId,
        #[arg(value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        remove: Vec<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn client(remote: &Remote) -> Result<Client> {
    let Credentials { server, token } =
        credentials::resolve(remote.server.clone(), remote.token.clone())?;
    Ok(Client::new(&server, Some(token)))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let client = Client::new(&args.server, Some(args.token.clone()));
    let devices = client
        .devices()
        .await
        .with_context(|| format!("cannot log in to {}", args.server))?;
    let path = credentials::credentials_path()?;
    credentials::save(
        &path,
        &Credentials {
            server: client.base().to_owned(),
            token: args.token,
        },
    )?;
    println!(
        "logged in to {} ({} devices); credentials saved in {}",
        client.base(),
        devices.len(),
        path.display()
    );
    Ok(())
}

/// An app name from the last part of a repository path: lowercase, other
/// characters become `-`.
pub fn app_name_from_repository(repository: &str) -> Option<AppName> {
    let last = repository.rsplit('/').next()?;
    let mut name: String = last
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_owned();
    name.truncate(63);
    AppName::new(name).ok()
}

pub async fn rollout(args: RolloutArgs) -> Result<()> {
    let remote = &args.remote;
    let client = client(remote)?;
    match args.command {
        Some(RolloutCommand::Status { id, watch }) => {
            status(&client, remote.output, id, watch).await
        }
        Some(RolloutCommand::Pause { id }) => act(&client, remote.output, id, Action::Pause).await,
        Some(RolloutCommand::Resume { id }) => {
            act(&client, remote.output, id, Action::Resume).await
        }
        Some(RolloutCommand::Abort { id }) => act(&client, remote.output, id, Action::Abort).await,
        Some(RolloutCommand::Undo { id }) => act(&client, remote.output, id, Action::Undo).await,
        None => {
            let (Some(image), Some(group)) = (args.image, args.group) else {
                bail!("give an IMAGE and --group, e.g. fleetctl rollout model:v2 --group cameras");
            };
            let key = KeyFile::load_for(&args.release_key, Role::Release).with_context(|| {
                "a release key is needed to sign the release (--release-key, or FLEET_RELEASE_KEY)"
            })?;
            let resolved = client
                .resolve(&image)
                .await
                .with_context(|| format!("cannot resolve {image} to a digest"))?;
            let app = match args.app {
                Some(a) => a,
                None => app_name_from_repository(&resolved.repository).with_context(|| {
                    format!(
                        "cannot make an app name from {}; pass --app",
                        resolved.repository
                    )
                })?,
            };
            let parsed = fleet_protocol::ImageRef::parse(&image)?;
            let version = args
                .version
                .or_else(|| parsed.tag().map(str::to_owned))
                .unwrap_or_else(|| resolved.digest.hex()[..12].to_owned());
            let release = Release {
                schema: SCHEMA_VERSION,
                app,
                version,
                repository: resolved.repository.clone(),
                manifest_digest: resolved.digest.clone(),
                runtime: Default::default(),
            };
            let envelope = sign::sign_release(&image, &serde_json::to_vec(&release)?, &key)?;
            let posted = client
                .add_release(envelope.to_json())
                .await
                .context("the server refused the release")?;
            let started = client
                .start_rollout(&CreateRollout {
                    release_digest: Some(posted.digest.clone()),
                    release: None,
                    group: group.clone(),
                    waves: args.canary.into_iter().collect(),
                })
                .await
                .context("cannot start the rollout")?;
            if remote.output == Output::Json && !args.watch {
                return print_json(&started);
            }
            println!(
                "rollout {} started: {} {} ({}) to group {}, {} devices in {} wave(s)",
                started.id,
                started.app,
                started.version,
                resolved.digest,
                group,
                started.counts.total,
                started.waves.len()
            );
            if args.watch {
                watch(&client, remote.output, started.id).await
            } else {
                println!("follow it: fleetctl rollout status {} --watch", started.id);
                Ok(())
            }
        }
    }
}

async fn act(client: &Client, output: Output, id: RolloutId, action: Action) -> Result<()> {
    let view = client.rollout_action(id, action).await?;
    match output {
        Output::Json => print_json(&view),
        Output::Text => {
            println!("rollout {id} is now {}", view.state);
            Ok(())
        }
    }
}

async fn status(
    client: &Client,
    output: Output,
    id: Option<RolloutId>,
    follow: bool,
) -> Result<()> {
    match (id, follow) {
        (Some(id), true) => watch(client, output, id).await,
        (None, true) => {
            let latest = client
                .rollouts()
                .await?
                .into_iter()
                .max_by_key(|r| r.id)
                .context("no rollouts yet: start one with fleetctl rollout IMAGE --group G")?;
            watch(client, output, latest.id).await
        }
        (Some(id), false) => {
            let view = client.rollout(id).await?;
            match output {
                Output::Json => print_json(&view),
                Output::Text => {
                    render::rollout(&view);
                    Ok(())
                }
            }
        }
        (None, false) => {
            let all = client.rollouts().await?;
            match output {
                Output::Json => print_json(&all),
                Output::Text => {
                    render::rollouts(&all);
                    Ok(())
                }
            }
        }
    }
}

/// Follows a rollout until it is paused or final: progress bars on a
/// terminal, a plain line per change otherwise (JSON lines with -o json).
async fn watch(client: &Client, output: Output, id: RolloutId) -> Result<()> {
    let tty = std::io::stdout().is_terminal() && output == Output::Text;
    let bar = tty.then(|| render::progress_bar(id));
    let mut last = String::new();
    loop {
        let view = client.rollout(id).await?;
        let line = render::summary(&view);
        if let Some(bar) = &bar {
            render::update_bar(bar, &view);
        } else if line != last {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&view)?),
                Output::Text => println!("{line}"),
            }
        }
        last = line;
        if view.state.is_final() || view.state == crate::store::RolloutState::Paused {
            if let Some(bar) = &bar {
                bar.finish_with_message(last.clone());
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub async fn devices(args: DevicesArgs) -> Result<()> {
    let remote = &args.remote;
    let client = client(remote)?;
    match args.command {
        DevicesCommand::Ls => {
            let all = client.devices().await?;
            match remote.output {
                Output::Json => print_json(&all),
                Output::Text => {
                    render::devices(&all);
                    Ok(())
                }
            }
        }
        DevicesCommand::Show { id } => {
            let d = client.device(&id).await?;
            match remote.output {
                Output::Json => print_json(&d),
                Output::Text => {
                    render::device(&d);
                    Ok(())
                }
            }
        }
    }
}

pub async fn groups(args: GroupsArgs) -> Result<()> {
    let remote = &args.remote;
    let client = client(remote)?;
    let group = match args.command {
        GroupsCommand::Ls => {
            let all = client.groups().await?;
            return match remote.output {
                Output::Json => print_json(&all),
                Output::Text => {
                    render::groups(&all);
                    Ok(())
                }
            };
        }
        GroupsCommand::Add {
            name,
            selector,
            devices,
        } => {
            client
                .create_group(&CreateGroup {
                    name,
                    selector: selector.into_iter().collect::<BTreeMap<_, _>>(),
                    members: devices,
                })
                .await?
        }
        GroupsCommand::AddMembers { name, devices } => {
            client.add_members(&name, &AddMembers { devices }).await?
        }
        GroupsCommand::Label {
            device,
            labels,
            remove,
        } => {
            let d = client
                .set_labels(
                    &device,
                    &SetLabels {
                        set: labels.into_iter().collect(),
                        remove,
                    },
                )
                .await?;
            return match remote.output {
                Output::Json => print_json(&d),
                Output::Text => {
                    println!(
                        "{}: labels {}; groups {}",
                        d.device.id,
                        render::labels(&d.effective_labels),
                        render::list(&d.groups)
                    );
                    Ok(())
                }
            };
        }
    };
    match remote.output {
        Output::Json => print_json(&group),
        Output::Text => {
            println!(
                "group {}: selector {}, {} device(s): {}",
                group.group.name,
                render::labels(&group.group.selector),
                group.devices.len(),
                render::list(&group.devices)
            );
            Ok(())
        }
    }
}

pub async fn image(args: ImageArgs) -> Result<()> {
    let Credentials { server, token } =
        credentials::resolve(args.remote.server.clone(), args.remote.token.clone())?;
    match args.command {
        ImageCommand::Import {
            path,
            repository,
            tag,
        } => {
            let summary = crate::content::cli::import_image(
                &server,
                Some(&token),
                &path,
                &repository,
                tag.as_deref(),
            )
            .await
            .with_context(|| format!("importing {}", path.display()))?;
            match args.remote.output {
                Output::Json => print_json(&summary),
                Output::Text => {
                    for image in &summary.images {
                        println!(
                            "imported {}:{} {}",
                            image.repository, image.tag, image.digest
                        );
                    }
                    println!(
                        "{} blobs added, {} already present",
                        summary.blobs_added, summary.blobs_present
                    );
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_come_from_the_repository_tail() {
        let name = |r| app_name_from_repository(r).map(|a| a.to_string());
        assert_eq!(name("docker.io/library/model").as_deref(), Some("model"));
        assert_eq!(
            name("reg:5000/edge/Model_Server").as_deref(),
            Some("model-server")
        );
        assert_eq!(name("reg/__"), None);
    }
}
