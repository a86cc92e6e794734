//! `fleetctl rollout`: start a rollout of an image to a group (one request
//! to the server), follow it, and steer it (pause, resume, abort, undo).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_protocol::dsse::Envelope;
use fleet_protocol::message::{GpuRequest, RuntimeSettings};
use fleet_protocol::requires::{Requirements, Soc, VersionRange};
use fleet_protocol::trust::Role;
use fleet_protocol::{AppName, Digest, GroupName, ImageRef, Release, SCHEMA_VERSION};

use super::gates::GateArgs;
use super::{CliError, Output, Remote, print_json, render};
use crate::api::types::CreateRollout;
use crate::client::{Client, ClientError};
use crate::fleet::rollout::Action;
use crate::keys::KeyFile;
use crate::sign;
use crate::store::{HaltRollback, RolloutId, RolloutState, Safety, Threshold, WaveSize};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: Option<RolloutCommand>,
    #[command(flatten)]
    pub remote: Remote,
    /// The image to roll out, e.g. registry.local:5000/edge/model:v2
    /// (a tag is resolved to its digest by the server first; with
    /// `@sha256:...` the rollout is one request).
    #[arg(required = true)]
    pub image: Option<ImageRef>,
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
    /// Size of a wave after the canary, a count or a percentage of the
    /// rollout's devices (repeatable, e.g. --wave 10% --wave 50%); the last
    /// wave takes the rest.
    #[arg(long = "wave")]
    pub waves: Vec<WaveSize>,
    /// Follow the rollout's progress after starting it.
    #[arg(long)]
    pub watch: bool,
    /// Print the waves, the devices in each, and the incompatible and
    /// offline ones, without starting anything.
    #[arg(long, conflicts_with = "watch")]
    pub plan: bool,
    /// Failed devices tolerated in one wave (2, or 10% of the wave); more
    /// halt the rollout.
    #[arg(long)]
    pub max_failed_per_wave: Option<Threshold>,
    /// Failed devices tolerated in the whole rollout (2, or 10%).
    #[arg(long)]
    pub max_failed: Option<Threshold>,
    /// What a halt rolls back: failed (default), updated (every device
    /// given the release) or nothing.
    #[arg(long, value_parser = parse_on_halt, default_value = "failed")]
    pub on_halt: HaltRollback,
    /// Seconds a wave may stay open; then its unsettled (e.g. offline)
    /// devices count as pending and the next wave goes out.
    #[arg(long)]
    pub wave_deadline: Option<u64>,
    /// Seconds a settled wave is watched before the next goes out; a
    /// device failing meanwhile counts against the thresholds.
    #[arg(long)]
    pub bake: Option<u64>,
    /// Gate: an updated device whose app restarts more than this many
    /// times counts as failed (against the thresholds).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Devices given the release at once, at most (a count, or a
    /// percentage of the rollout's devices): a larger wave is fed as its
    /// devices commit or fail.
    #[arg(long, value_name = "N|P%")]
    pub max_unavailable: Option<WaveSize>,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What the release needs of the device: GPU, CDI devices, requirements
/// (signed with the release; the agent checks them before downloading,
/// the server leaves devices that do not meet them out of the waves).
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Give the container the device's GPU (`all`: `nvidia.com/gpu=all`).
    #[arg(long, value_parser = parse_gpu)]
    pub gpu: Option<GpuRequest>,
    /// A CDI device for the container, e.g. `nvidia.com/gpu=0` (repeatable).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Jetson Linux range the device must run, e.g. ">=36.3, <37".
    #[arg(long, value_parser = VersionRange::parse)]
    pub requires_l4t: Option<VersionRange>,
    /// CUDA range the device must have, e.g. ">=12.2".
    #[arg(long, value_parser = VersionRange::parse)]
    pub requires_cuda: Option<VersionRange>,
    /// Tegra SoC the device must be, e.g. t234.
    #[arg(long, value_parser = Soc::parse)]
    pub requires_soc: Option<Soc>,
}

impl DeviceArgs {
    /// The release's runtime settings these flags give.
    pub fn settings(self) -> RuntimeSettings {
        RuntimeSettings {
            gpu: self.gpu,
            devices: self.devices,
            requires: Requirements {
                l4t: self.requires_l4t,
                cuda: self.requires_cuda,
                soc: self.requires_soc,
            },
            ..Default::default()
        }
    }
}

pub(super) fn parse_on_halt(text: &str) -> Result<HaltRollback, String> {
    match text {
        "failed" => Ok(HaltRollback::Failed),
        "updated" => Ok(HaltRollback::Updated),
        "nothing" => Ok(HaltRollback::Nothing),
        other => Err(format!("{other:?}: use failed, updated or nothing")),
    }
}

fn parse_gpu(text: &str) -> Result<GpuRequest, String> {
    match text {
        "all" => Ok(GpuRequest::All),
        other => Err(format!("{other:?}: the only GPU request is \"all\"")),
    }
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
    /// Follow a rollout (the latest without an id) until it completes,
    /// pauses or stops: a progress bar per wave on a terminal, a line per
    /// change otherwise, JSON lines with -o json.
    Watch { id: Option<RolloutId> },
    /// Hold the next waves back.
    Pause { id: RolloutId },
    /// Let a paused rollout continue.
    Resume { id: RolloutId },
    /// Stop the rollout where it is (devices keep what they got).
    Abort { id: RolloutId },
    /// Give every device the rollout reached its previous release back.
    Undo { id: RolloutId },
    /// Every rollout, newest first, with how it ended (and why it halted).
    History {
        /// Only rollouts to this group.
        #[arg(long)]
        group: Option<GroupName>,
        /// Only rollouts of this app.
        #[arg(long)]
        app: Option<AppName>,
    },
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

fn failed(doing: String) -> impl FnOnce(ClientError) -> CliError {
    move |source| CliError::Server { doing, source }
}

pub async fn run(args: RolloutArgs) -> Result<(), CliError> {
    let output = args.remote.output;
    let client = args.remote.client()?;
    match args.command {
        Some(RolloutCommand::Status { id, watch: true } | RolloutCommand::Watch { id }) => {
            follow(&client, output, id).await
        }
        Some(RolloutCommand::Status { id, watch: false }) => status(&client, output, id).await,
        Some(RolloutCommand::Pause { id }) => act(&client, output, id, Action::Pause).await,
        Some(RolloutCommand::Resume { id }) => act(&client, output, id, Action::Resume).await,
        Some(RolloutCommand::Abort { id }) => act(&client, output, id, Action::Abort).await,
        Some(RolloutCommand::Undo { id }) => act(&client, output, id, Action::Undo).await,
        Some(RolloutCommand::History { group, app }) => {
            history(&client, output, group.as_ref(), app.as_ref()).await
        }
        None => start(&client, args).await,
    }
}

/// The repository and manifest digest the release names: taken from the
/// reference when it carries a digest, else resolved by the server (a read
/// only: the release key, not the server, signs the digest).
async fn target(client: &Client, image: &ImageRef) -> Result<(String, Digest), CliError> {
    if let Some(digest) = image.digest() {
        return Ok((image.name(), digest.clone()));
    }
    let resolved = client
        .resolve(&image.to_string())
        .await
        .map_err(failed(format!("cannot resolve {image} to a digest")))?;
    Ok((resolved.repository, resolved.digest))
}

/// Signs a release of `image` (its tag resolved by the server) with the
/// release key at `key`; returns the envelope and the manifest digest.
pub(super) async fn sign_image(
    client: &Client,
    image: &ImageRef,
    key: &Path,
    app: Option<AppName>,
    version: Option<String>,
    runtime: RuntimeSettings,
) -> Result<(Envelope, Digest), CliError> {
    let key =
        KeyFile::load_for(key, Role::Release).map_err(|source| CliError::ReleaseKey { source })?;
    let (repository, digest) = target(client, image).await?;
    let runtime = super::labels::with_image_requirements(client, image, &digest, runtime)
        .await
        .map_err(|source| CliError::Labels {
            image: image.to_string(),
            source,
        })?;
    let app = match app {
        Some(a) => a,
        None => app_name_from_repository(&repository).ok_or_else(|| CliError::NoAppName {
            repository: repository.clone(),
        })?,
    };
    let version = version
        .or_else(|| image.tag().map(str::to_owned))
        .unwrap_or_else(|| digest.hex().chars().take(12).collect());
    let release = Release {
        schema: SCHEMA_VERSION,
        app,
        version,
        repository,
        manifest_digest: digest.clone(),
        runtime,
    };
    let envelope = sign::sign_release(&image.to_string(), &serde_json::to_vec(&release)?, &key)?;
    Ok((envelope, digest))
}

/// Signs a release of the image and starts its rollout in one request that
/// carries the signed release (the server keeps it and starts the rollout
/// in one commit).
async fn start(client: &Client, args: RolloutArgs) -> Result<(), CliError> {
    let (Some(image), Some(group)) = (args.image, args.group) else {
        return Err(CliError::MissingRolloutTarget);
    };
    // Refused before anything is signed or asked of the server.
    let safety = Safety {
        wave_failures: args.max_failed_per_wave,
        total_failures: args.max_failed,
        on_halt: args.on_halt,
        wave_deadline_secs: args.wave_deadline,
        bake_secs: args.bake,
        max_restarts: args.max_restarts,
        max_unavailable: args.max_unavailable,
        gates: args.gates.gates(),
        promql: args.gates.promql(),
    };
    let waves: Vec<WaveSize> = args
        .canary
        .map(WaveSize::Count)
        .into_iter()
        .chain(args.waves)
        .collect();
    safety.check_with_waves(&waves).map_err(CliError::Safety)?;
    let runtime = args.device.settings();
    let (envelope, digest) = sign_image(
        client,
        &image,
        &args.release_key,
        args.app,
        args.version,
        runtime,
    )
    .await?;
    let what = image.to_string();
    let req = CreateRollout {
        release_digest: None,
        release: Some(envelope),
        group: group.clone(),
        waves,
        safety,
    };
    if args.plan {
        let plan = client
            .plan_rollout(&req)
            .await
            .map_err(failed(format!("cannot plan the rollout of {what}")))?;
        if args.remote.output == Output::Json {
            return print_json(&plan);
        }
        print!("{}", render::plan(&plan));
        return Ok(());
    }
    let started = client
        .start_rollout(&req)
        .await
        .map_err(failed(format!("cannot start the rollout of {what}")))?;
    let output = args.remote.output;
    if output == Output::Json && !args.watch {
        return print_json(&started);
    }
    println!(
        "rollout {} started: {} {} ({}) to group {}, {} devices in {} wave(s)",
        started.id,
        started.app,
        started.version,
        digest,
        group,
        started.counts.total,
        started.waves.len()
    );
    if args.watch {
        watch(client, output, started.id).await
    } else {
        println!("follow it: fleetctl rollout status {} --watch", started.id);
        Ok(())
    }
}

async fn act(
    client: &Client,
    output: Output,
    id: RolloutId,
    action: Action,
) -> Result<(), CliError> {
    let view = client
        .rollout_action(id, action)
        .await
        .map_err(failed(format!("cannot {action} rollout {id}")))?;
    match output {
        Output::Json => print_json(&view),
        Output::Text => {
            println!("rollout {id} is now {}", view.state);
            Ok(())
        }
    }
}

/// `rollout status`: all rollouts, or one with per-device progress.
async fn status(client: &Client, output: Output, id: Option<RolloutId>) -> Result<(), CliError> {
    let text = match id {
        Some(id) => {
            let view = client
                .rollout(id)
                .await
                .map_err(failed(format!("cannot show rollout {id}")))?;
            if output == Output::Json {
                return print_json(&view);
            }
            render::rollout(&view)
        }
        None => {
            let all = client
                .rollouts()
                .await
                .map_err(failed("cannot list rollouts".into()))?;
            if output == Output::Json {
                return print_json(&all);
            }
            render::rollouts(&all)
        }
    };
    print!("{text}");
    Ok(())
}

/// `rollout history`: every rollout (of `group` / `app`), newest first.
async fn history(
    client: &Client,
    output: Output,
    group: Option<&GroupName>,
    app: Option<&AppName>,
) -> Result<(), CliError> {
    let mut all = client
        .rollouts()
        .await
        .map_err(failed("cannot list rollouts".into()))?;
    all.retain(|r| group.is_none_or(|g| &r.group == g) && app.is_none_or(|a| &r.app == a));
    all.sort_by_key(|r| std::cmp::Reverse(r.id));
    if output == Output::Json {
        return print_json(&all);
    }
    print!("{}", render::history(&all));
    Ok(())
}

/// `rollout status --watch`: the given rollout, or the latest one.
async fn follow(client: &Client, output: Output, id: Option<RolloutId>) -> Result<(), CliError> {
    let id = match id {
        Some(id) => id,
        None => client
            .rollouts()
            .await
            .map_err(failed("cannot list rollouts".into()))?
            .into_iter()
            .map(|r| r.id)
            .max()
            .ok_or(CliError::NoRollouts)?,
    };
    watch(client, output, id).await
}

/// Follows a rollout until it is paused or final: progress bars on a
/// terminal, a plain line per change otherwise (JSON lines with -o json).
async fn watch(client: &Client, output: Output, id: RolloutId) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal() && output == Output::Text;
    let mut bars = tty.then(|| render::WaveBars::new(id));
    let mut last = String::new();
    loop {
        let view = client
            .rollout(id)
            .await
            .map_err(failed(format!("cannot follow rollout {id}")))?;
        let line = format!("{} | {}", render::summary(&view), render::wave_line(&view));
        if let Some(bars) = &mut bars {
            bars.update(&view);
        } else if line != last {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&view)?),
                Output::Text => println!("{line}"),
            }
        }
        last = line;
        if view.state.is_final() || view.state == RolloutState::Paused {
            if let Some(bars) = &bars {
                bars.finish(&view);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
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
