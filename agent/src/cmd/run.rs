//! `fleet-agent run`: the device daemon (config → logs → run until SIGTERM
//! or ctrl-c).

use std::path::PathBuf;
use std::process::ExitCode;

use fleet_agent::config::Config;
use fleet_protocol::DeviceId;
use fleet_protocol::broker::BrokerAddr;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration that cannot work.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); FLEET_AGENT_* variables override it.
    #[arg(long, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The agent's state directory (overrides the config's `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This device's id (overrides the config's `device_id`).
    #[arg(long)]
    device: Option<DeviceId>,
    /// The MQTT broker, mqtt://host:port (overrides the config's `broker`).
    #[arg(long)]
    broker: Option<BrokerAddr>,
    /// Log format on stderr (RUST_LOG filters; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

pub fn init_logs(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = &args.state_dir {
        config.state_dir = d.clone();
    }
    if let Some(d) = &args.device {
        config.device_id = Some(d.clone());
    }
    if let Some(b) = &args.broker {
        config.broker = b.clone();
    }
    config.validate()?;
    config.device_id()?;
    Ok(config)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    init_logs(args.log_format);
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: bad configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            on_signal.cancel();
        });
        fleet_agent::daemon::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fleet-agent stopped");
            eprintln!("fleet-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
