//! `fleet-agent enroll`: gets the device its certificate with a bootstrap
//! token (protocol/SECURITY.md), then exits; `fleet-agent run` uses it.

use std::path::PathBuf;
use std::process::ExitCode;

use fleet_agent::config::Config;
use fleet_agent::identity::{self, EnrollOptions};
use fleet_protocol::DeviceId;
use fleet_protocol::enroll::EnrollToken;
use tokio_util::sync::CancellationToken;

use super::run::{EXIT_CONFIG, LogFormat, init_logs};

#[derive(clap::Args)]
pub struct EnrollArgs {
    /// Configuration file (TOML); FLEET_AGENT_* variables override it.
    #[arg(long, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The server, https://HOST:PORT (overrides the config's `server`).
    #[arg(long)]
    server: Option<String>,
    /// The bootstrap token `fleetctl enroll create` printed.
    #[arg(long, env = "FLEET_AGENT_ENROLL_TOKEN", hide_env_values = true)]
    token: String,
    /// This device's id (overrides the config's `device_id`; default: the
    /// host name).
    #[arg(long)]
    device: Option<DeviceId>,
    /// The agent's state directory (overrides the config's `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

fn options(args: &EnrollArgs) -> anyhow::Result<EnrollOptions> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = &args.state_dir {
        config.state_dir = d.clone();
    }
    if let Some(d) = &args.device {
        config.device_id = Some(d.clone());
    }
    let server = args
        .server
        .clone()
        .or(config.server.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("give --server https://HOST:PORT (or `server` in the config)")
        })?;
    let token = EnrollToken::parse(&args.token)?;
    Ok(EnrollOptions::new(
        &server,
        token,
        config.device_id()?,
        config.state_dir,
    ))
}

/// Exit status: 0 enrolled, 1 refused or failed, 2 bad arguments or configuration.
pub fn run(args: EnrollArgs) -> ExitCode {
    init_logs(args.log_format, "info");
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fleet-agent enroll: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-agent enroll: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        identity::enroll::enroll(&opts, &cancel).await
    });
    match result {
        Ok(id) => {
            println!(
                "enrolled {} (certificate {}, valid until {}) in {}",
                id.device,
                id.serial,
                id.not_after,
                identity::dir(&opts.state_dir).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-agent enroll: {e}");
            ExitCode::FAILURE
        }
    }
}
