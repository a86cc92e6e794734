//! `fleet-server`: config → run until ctrl-c / SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use fleet_control_plane::config::Config;
use fleet_control_plane::server;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Parser)]
#[command(name = "fleet-server", version = fleet_control_plane::VERSION, about = "The Fleet control plane")]
struct Cli {
    /// The configuration file (TOML); FLEET_* environment variables override it.
    #[arg(long, short, env = "FLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

#[derive(clap::Subcommand)]
enum ServerCommand {
    /// Print a device's MQTT token (its broker password; put it in the
    /// device's agent.toml). Made from the server's secret in the data dir.
    DeviceToken { device: fleet_protocol::DeviceId },
    /// Print a Mosquitto `acl_file` for this configuration: each device may
    /// read only its own desired/cmd topics and write only its own
    /// status/telemetry/online; the server's account may do everything
    /// under the prefix. Use it with `use_username_as_clientid true`.
    MosquittoAcl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    // sled's trace level prints every key it reads, the hashes of API tokens
    // among them: it stays at debug whatever RUST_LOG says of all crates.
    if let Ok(cap) = "sled=debug".parse() {
        filter = filter.add_directive(cap);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-server: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    if let Some(ServerCommand::MosquittoAcl) = cli.command {
        let scheme = &config.broker.topic_prefix;
        print!(
            "{}\nuser {}\ntopic readwrite {}/#\n",
            scheme.mosquitto_acl_patterns(),
            config.broker.client_id,
            scheme.prefix()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(ServerCommand::DeviceToken { device }) = cli.command {
        return match fleet_control_plane::device_token::DeviceTokens::open(&config.data_dir) {
            Ok(tokens) => {
                println!("{}", tokens.token(&device));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleet-server: {e}");
                ExitCode::from(4)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            on_signal.cancel();
        });
        server::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-server: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
