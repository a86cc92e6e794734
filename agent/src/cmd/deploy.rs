//! `fleet-agent apply`, `resume` and `status`: the lifecycle driver from the
//! command line, on the same entry points the MQTT link uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use fleet_agent::config::Config;
use fleet_agent::daemon::socket::{self, AskError};
use fleet_agent::deploy::content::unpack_oci_archive;
use fleet_agent::deploy::{AppOutcome, ApplyOutcome, ContentSource, DeployError, Deployer};
use fleet_protocol::{DeviceId, StatusReport};

/// Exit codes of `apply` and `resume`.
pub const EXIT_ROLLED_BACK: u8 = 1;
pub const EXIT_REJECTED: u8 = 2;
pub const EXIT_ERROR: u8 = 3;

#[derive(clap::Args)]
pub struct Common {
    /// Configuration file (TOML); FLEET_AGENT_* variables override it.
    #[arg(long, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The agent's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The device's trust root (trust.json).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// This device's id.
    #[arg(long)]
    device: Option<DeviceId>,
}

impl Common {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(d) = &self.state_dir {
            config.state_dir = d.clone();
        }
        if let Some(t) = &self.trust {
            config.trust = t.clone();
        }
        if let Some(d) = &self.device {
            config.device_id = Some(d.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

/// Apply a signed desired state: verify it like one from MQTT, run every
/// app's update to its end. Exit status: 0 committed, 1 rolled back or
/// failed, 2 rejected, 3 error.
#[derive(clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    common: Common,
    /// Content for offline apply: an OCI image layout directory or an
    /// oci-archive tarball holding the releases' images.
    #[arg(long)]
    content: Option<PathBuf>,
    /// The signed desired state (DSSE envelope JSON).
    desired: PathBuf,
}

/// Finish an update interrupted by a crash or power cut, from the stored phase.
#[derive(clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    common: Common,
    /// Content for offline apply (as for `apply`).
    #[arg(long)]
    content: Option<PathBuf>,
}

/// Per app: phase, running and previous release, health, restarts, last error.
#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "text")]
    output: String,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The content source and, for an archive, the directory to remove after.
fn content_source(
    content: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<(ContentSource, Option<PathBuf>)> {
    let Some(path) = content else {
        return Ok((ContentSource::Store, None));
    };
    if path.is_dir() {
        return Ok((ContentSource::Layout(path.to_owned()), None));
    }
    let dir = state_dir
        .join("tmp")
        .join(format!("oci-archive-{}", std::process::id()));
    unpack_oci_archive(path, &dir)
        .with_context(|| format!("unpacking the oci-archive {}", path.display()))?;
    Ok((ContentSource::Layout(dir.clone()), Some(dir)))
}

fn print_apps(apps: &[AppOutcome]) {
    for a in apps {
        let running = a.running.as_deref().unwrap_or("nothing");
        match &a.error {
            Some(e) => println!(
                "  app {}: {} (running {running}): {}: {}",
                a.app,
                a.phase.name(),
                e.code,
                e.message
            ),
            None => println!("  app {}: {} (running {running})", a.app, a.phase.name()),
        }
    }
}

fn exit_for(apps: &[AppOutcome]) -> ExitCode {
    if apps
        .iter()
        .all(|a| a.phase == fleet_protocol::Phase::Committed)
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ROLLED_BACK)
    }
}

fn report_error(e: &anyhow::Error) -> ExitCode {
    if let Some(DeployError::Rejected(info)) = e.downcast_ref::<DeployError>() {
        eprintln!("rejected: {}: {}", info.code, info.message);
        eprintln!("the running releases are untouched");
        return ExitCode::from(EXIT_REJECTED);
    }
    eprintln!("fleet-agent: {e:#}");
    ExitCode::from(EXIT_ERROR)
}

pub fn apply(args: ApplyArgs) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let config = args.common.config()?;
            let bytes = std::fs::read(&args.desired)
                .with_context(|| format!("reading {}", args.desired.display()))?;
            let deployer = Deployer::open(config.clone()).await?;
            let (source, cleanup) = content_source(args.content.as_deref(), &config.state_dir)?;
            let outcome = deployer.apply_desired(&bytes, &source).await;
            deployer.detach().await;
            if let Some(dir) = cleanup {
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok::<ApplyOutcome, anyhow::Error>(outcome?)
        })
    });
    match result {
        Ok(outcome) => {
            println!("applied generation {}", outcome.generation);
            print_apps(&outcome.apps);
            for app in &outcome.removed {
                println!("  app {app}: removed");
            }
            exit_for(&outcome.apps)
        }
        Err(e) => report_error(&e),
    }
}

pub fn resume(args: ResumeArgs) -> ExitCode {
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let config = args.common.config()?;
            let deployer = Deployer::open(config.clone()).await?;
            let (source, cleanup) = content_source(args.content.as_deref(), &config.state_dir)?;
            let outcome = deployer.recover(&source).await;
            deployer.detach().await;
            if let Some(dir) = cleanup {
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok::<_, anyhow::Error>(outcome?)
        })
    });
    match result {
        Ok(apps) => {
            println!("resumed");
            print_apps(&apps);
            exit_for(&apps)
        }
        Err(e) => report_error(&e),
    }
}

/// How long `status` waits for a running daemon's answer.
const DAEMON_ANSWER: Duration = Duration::from_secs(5);

/// Where a status report came from.
enum StatusSource {
    /// This process opened the state and asked the runtime.
    Direct,
    /// The running daemon answered on its socket.
    Daemon(PathBuf),
}

/// A running daemon holds the state database, and its socket does not help.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    #[error(
        "a running agent holds the state in {state_dir} but does not answer on its socket: {source}"
    )]
    Unanswered {
        state_dir: PathBuf,
        #[source]
        source: AskError,
    },
}

/// The running daemon's report over its socket, else the state read here
/// (no daemon, or a stale socket left by one that died).
async fn local_status(common: &Common) -> anyhow::Result<(StatusReport, StatusSource)> {
    let config = common.config()?;
    let state_dir = config.state_dir.clone();
    let unanswered = match socket::status(&state_dir, DAEMON_ANSWER).await {
        Ok(report) => return Ok((report, StatusSource::Daemon(socket::path(&state_dir)))),
        Err(e @ AskError::NoSocket { .. }) => e,
        Err(e) => {
            eprintln!("fleet-agent: {e}; reading the state directly");
            e
        }
    };
    match Deployer::open(config).await {
        Ok(deployer) => {
            let report = deployer.status_report().await;
            deployer.detach().await;
            Ok((report?, StatusSource::Direct))
        }
        Err(e) if e.is_locked() => Err(StatusError::Unanswered {
            state_dir,
            source: unanswered,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

pub fn status(args: StatusArgs) -> ExitCode {
    let result = runtime().and_then(|rt| rt.block_on(local_status(&args.common)));
    let (report, source) = match result {
        Ok(r) => r,
        Err(e) => return report_error(&e),
    };
    if args.output == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return report_error(&e.into()),
        }
        return ExitCode::SUCCESS;
    }
    if let StatusSource::Daemon(path) = &source {
        println!("(from the running agent, {})", path.display());
    }
    println!(
        "device {} generation {}",
        report.device,
        report
            .generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string())
    );
    if let Some(r) = &report.rejected {
        println!("last desired state rejected: {}: {}", r.code, r.message);
    }
    for a in &report.apps {
        let rel = |r: &Option<fleet_protocol::message::ReleaseRef>| {
            r.as_ref().map_or_else(
                || "none".to_owned(),
                |r| format!("{} ({})", r.version, r.release_digest),
            )
        };
        println!(
            "app {}: {} running {} previous {} health {:?} restarts {}",
            a.app,
            a.phase.name(),
            rel(&a.running),
            rel(&a.previous),
            a.health,
            a.restarts
        );
        if let Some(e) = &a.error {
            println!("  last error: {}: {}", e.code, e.message);
        }
    }
    ExitCode::SUCCESS
}
