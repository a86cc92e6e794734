use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "fleet-agent", version = fleet_agent::VERSION, about = "The Fleet device agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device daemon: MQTT link, desired state in, containers out.
    /// Exit status: 0 after SIGTERM/ctrl-c, 2 bad configuration, 1 error.
    Run(cmd::run::RunArgs),
    /// Get this device's certificate with a bootstrap token (`fleetctl enroll create`).
    /// Exit status: 0 enrolled, 1 refused or failed, 2 bad arguments or configuration.
    Enroll(cmd::enroll::EnrollArgs),
    /// Verify a signed desired state against a trust root, as the agent does on receipt.
    /// Exit status: 0 verified, 1 rejected, 2 unreadable input or unusable trust root.
    Verify(cmd::verify::Args),
    /// Pull an image (manifest, config, layers) into the content store.
    Pull(cmd::pull::PullArgs),
    /// Remove blobs no kept image references, and stale downloads.
    Gc(cmd::pull::GcArgs),
    /// Check a stopped agent's blobs and snapshots against their digests,
    /// its downloads and references; --repair sets damaged content aside.
    /// Exit status: 0 clean, 1 problems found, 2 could not check (e.g. the
    /// agent is running).
    Fsck(cmd::fsck::FsckArgs),
    /// Apply a signed desired state (offline: --content), like one from MQTT.
    /// Exit status: 0 committed, 1 rolled back or failed, 2 rejected, 3 error.
    Apply(cmd::deploy::ApplyArgs),
    /// Finish an update interrupted by a crash, from the stored phase.
    Resume(cmd::deploy::ResumeArgs),
    /// Per app: phase, running and previous release, health, restarts, last error.
    Status(cmd::deploy::StatusArgs),
    /// Print one telemetry sample (host sensors, Tegra GPU/EMC/power rails).
    Telemetry(cmd::telemetry::TelemetryArgs),
    /// Run as an OCI runtime hook (the runtime calls this, not a person).
    #[command(hide = true)]
    OciHook(cmd::oci_hook::HookArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon sets up its own logs (--log-format); every other command
    // shows warnings (e.g. a state directory whose modes were repaired).
    if !matches!(
        cli.command,
        Some(Command::Run(_)) | Some(Command::OciHook(_))
    ) {
        cmd::run::init_logs(cmd::run::LogFormat::Human, "warn");
    }
    let result = match cli.command {
        None => return ExitCode::SUCCESS,
        Some(Command::Run(args)) => return cmd::run::run(args),
        Some(Command::Enroll(args)) => return cmd::enroll::run(args),
        Some(Command::Verify(args)) => return cmd::verify::run(args),
        Some(Command::Apply(args)) => return cmd::deploy::apply(args),
        Some(Command::Resume(args)) => return cmd::deploy::resume(args),
        Some(Command::Status(args)) => return cmd::deploy::status(args),
        Some(Command::Pull(args)) => match tokio_runtime() {
            Ok(rt) => rt.block_on(cmd::pull::pull(args)),
            Err(e) => Err(e),
        },
        Some(Command::Gc(args)) => cmd::pull::gc(args),
        Some(Command::Fsck(args)) => return cmd::fsck::run(args),
        Some(Command::Telemetry(args)) => cmd::telemetry::run(args),
        Some(Command::OciHook(args)) => cmd::oci_hook::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-agent: {e:#}");
            let disk_full = e
                .downcast_ref::<fleet_agent::pull::PullError>()
                .is_some_and(|p| p.is_disk_full());
            ExitCode::from(if disk_full {
                cmd::pull::EXIT_DISK_FULL
            } else {
                1
            })
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}
