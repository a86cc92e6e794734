//! `fleetctl groups`: groups of devices (label selectors, explicit members)
//! and device labels.

use clap::{Args, Subcommand};
use fleet_protocol::{AppName, DeviceId, GroupName};

use super::{CliError, Output, Remote, print_json, render};
use crate::api::types::{AddMembers, CreateGroup, DeviceView, FollowChannel, GroupView, SetLabels};
use crate::client::{Client, ClientError};
use crate::store::{Channel, HaltRollback, Safety, Supersede, Threshold, WaveSize};

#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    pub command: GroupsCommand,
    #[command(flatten)]
    pub remote: Remote,
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
    /// Follow a release channel for an app: every release published to it
    /// rolls out to the group by this policy; devices joining get the
    /// group's current release.
    Follow {
        name: GroupName,
        #[arg(long)]
        app: AppName,
        #[arg(long)]
        channel: Channel,
        /// Size of a wave, a count or a percentage of the rollout's devices
        /// (repeatable: canary first, then growing, e.g. --wave 1 --wave
        /// 10% --wave 50%); the last wave takes the rest.
        #[arg(long = "wave")]
        waves: Vec<WaveSize>,
        /// What a newer release does to a running rollout: queue or replace.
        #[arg(long, value_parser = parse_supersede, default_value = "queue")]
        supersede: Supersede,
        /// Failed devices tolerated per wave (2 or 10%); more halt.
        #[arg(long)]
        max_failed_per_wave: Option<Threshold>,
        /// Failed devices tolerated in a rollout (2 or 10%).
        #[arg(long)]
        max_failed: Option<Threshold>,
        /// What a halt rolls back: failed, updated or nothing.
        #[arg(long, value_parser = super::rollout::parse_on_halt, default_value = "failed")]
        on_halt: HaltRollback,
        /// Seconds a wave may stay open; then its unsettled devices count
        /// as pending and the next wave goes out.
        #[arg(long)]
        wave_deadline: Option<u64>,
        /// Seconds a settled wave is watched before the next goes out.
        #[arg(long)]
        bake: Option<u64>,
        /// Gate: an updated device whose app restarts more than this many
        /// times counts as failed.
        #[arg(long)]
        max_restarts: Option<u32>,
        /// Devices given the release at once, at most (N or P% of the
        /// rollout's devices); a larger wave is fed as devices settle.
        #[arg(long, value_name = "N|P%")]
        max_unavailable: Option<WaveSize>,
        #[command(flatten)]
        gates: Box<super::gates::GateArgs>,
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

fn parse_supersede(s: &str) -> Result<Supersede, String> {
    match s {
        "queue" => Ok(Supersede::Queue),
        "replace" => Ok(Supersede::Replace),
        other => Err(format!("{other:?}: use queue or replace")),
    }
}

fn failed(doing: String) -> impl FnOnce(ClientError) -> CliError {
    move |source| CliError::Server { doing, source }
}

pub async fn run(args: GroupsArgs) -> Result<(), CliError> {
    let output = args.remote.output;
    let client = args.remote.client()?;
    match args.command {
        GroupsCommand::Ls => list(&client, output).await,
        GroupsCommand::Add {
            name,
            selector,
            devices,
        } => {
            let req = CreateGroup {
                name: name.clone(),
                selector: selector.into_iter().collect(),
                members: devices,
            };
            let group = client
                .create_group(&req)
                .await
                .map_err(failed(format!("cannot create group {name}")))?;
            show_group(&group, output)
        }
        GroupsCommand::AddMembers { name, devices } => {
            let group = client
                .add_members(&name, &AddMembers { devices })
                .await
                .map_err(failed(format!("cannot add members to group {name}")))?;
            show_group(&group, output)
        }
        GroupsCommand::Follow {
            name,
            app,
            channel,
            waves,
            supersede,
            max_failed_per_wave,
            max_failed,
            on_halt,
            wave_deadline,
            bake,
            max_restarts,
            max_unavailable,
            gates,
        } => {
            let req = FollowChannel {
                app,
                channel,
                waves,
                supersede,
                safety: Safety {
                    wave_failures: max_failed_per_wave,
                    total_failures: max_failed,
                    on_halt,
                    wave_deadline_secs: wave_deadline,
                    bake_secs: bake,
                    max_restarts,
                    max_unavailable,
                    gates: gates.gates(),
                    promql: gates.promql(),
                },
            };
            req.safety
                .check_with_waves(&req.waves)
                .map_err(CliError::Safety)?;
            let group = client.follow(&name, &req).await.map_err(failed(format!(
                "cannot make group {name} follow {}",
                req.channel
            )))?;
            show_group(&group, output)
        }
        GroupsCommand::Label {
            device,
            labels,
            remove,
        } => {
            let req = SetLabels {
                set: labels.into_iter().collect(),
                remove,
            };
            let d = client
                .set_labels(&device, &req)
                .await
                .map_err(failed(format!("cannot label device {device}")))?;
            show_labels(&d, output)
        }
    }
}

async fn list(client: &Client, output: Output) -> Result<(), CliError> {
    let all = client
        .groups()
        .await
        .map_err(failed("cannot list groups".into()))?;
    match output {
        Output::Json => print_json(&all),
        Output::Text => {
            print!("{}", render::groups(&all));
            Ok(())
        }
    }
}

fn show_group(group: &GroupView, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(group),
        Output::Text => {
            println!(
                "group {}: selector {}, {} device(s): {}",
                group.group.name,
                render::labels(&group.group.selector),
                group.devices.len(),
                render::list(&group.devices)
            );
            for (app, f) in &group.group.follows {
                let current = f
                    .current
                    .as_ref()
                    .map_or("none".into(), ToString::to_string);
                println!(
                    "  follows {} for {app}: waves {}, supersede {:?}, current {current}",
                    f.channel,
                    crate::store::wave_sizes(&f.waves),
                    f.supersede
                );
            }
            Ok(())
        }
    }
}

fn show_labels(d: &DeviceView, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(d),
        Output::Text => {
            println!(
                "{}: labels {}; groups {}",
                d.device.id,
                render::labels(&d.effective_labels),
                render::list(&d.groups)
            );
            Ok(())
        }
    }
}
