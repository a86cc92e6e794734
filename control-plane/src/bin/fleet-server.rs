//! `fleet-server`: config → run until ctrl-c / SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use fleet_control_plane::config::Config;
use fleet_control_plane::{logging, server};
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
    /// Write what Mosquitto needs to be this fleet's broker over TLS with
    /// device certificates (CA, server certificate for [tls] names, CRL of
    /// the revoked devices, ACL, fleet.conf): see `pki::mosquitto`. Run it
    /// with the server stopped (it reads the store); then `chown -R
    /// mosquitto: DIR` and `include_dir DIR` in mosquitto.conf.
    MosquittoConfig {
        /// Where the files go (made 0700).
        #[arg(long)]
        out: PathBuf,
        /// The TLS listener's port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// The listener's address (default: all).
        #[arg(long)]
        address: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(match cli.log_format {
        LogFormat::Human => logging::Format::Human,
        LogFormat::Json => logging::Format::Json,
    });
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
    if let Some(ServerCommand::MosquittoConfig { out, port, address }) = &cli.command {
        return mosquitto_config(&config, out, *port, address.as_deref());
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

fn mosquitto_config(
    config: &Config,
    out: &std::path::Path,
    port: u16,
    address: Option<&str>,
) -> ExitCode {
    use fleet_control_plane::pki::{FleetCa, mosquitto};
    use fleet_control_plane::store::Store as _;
    let now = fleet_control_plane::fleet::now();
    let ca = match (&config.tls.ca_cert, &config.tls.ca_key) {
        (Some(cert), Some(key)) => FleetCa::load(cert, key, now),
        _ => FleetCa::open_or_create(&config.data_dir.join("pki"), now),
    };
    let ca = match ca {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("fleet-server: {e}");
            return ExitCode::from(3);
        }
    };
    let revoked = match fleet_control_plane::store::SledStore::open(&config.store_dir())
        .and_then(|s| s.revoked_all())
    {
        Ok(all) => all.into_iter().flat_map(|r| r.serials).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!(
                "fleet-server: reading the revoked devices (is the server running? stop it first): {e}"
            );
            return ExitCode::from(4);
        }
    };
    let setup = mosquitto::MosquittoSetup {
        names: &config.tls.names,
        port,
        address,
        scheme: &config.broker.topic_prefix,
        revoked_serials: &revoked,
    };
    match mosquitto::write(&ca, &setup, out, now) {
        Ok(conf) => {
            println!("{}", conf.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-server: {e}");
            ExitCode::from(4)
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
