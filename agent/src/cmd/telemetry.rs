//! `fleet-agent telemetry`: one telemetry sample, as the daemon would send
//! it (handy on a Jetson, and for checking a fixture tree).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use fleet_agent::store::{Store, StoreConfig};
use fleet_agent::telemetry::{HostRoot, Sampler, Sources};
use fleet_protocol::message::Telemetry;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct TelemetryArgs {
    /// Where the host's `/` is for sensor reads (a fixture tree in tests).
    #[arg(long, env = "FLEET_AGENT_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// The agent's state directory: free disk space, and the store's figures
    /// when no running agent holds its lock.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Milliseconds between the two samples CPU % is computed from.
    #[arg(long, default_value_t = 500)]
    cpu_window_ms: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

pub fn run(args: TelemetryArgs) -> anyhow::Result<()> {
    // Only an existing store is opened (never created by looking at it).
    let store = args.state_dir.as_deref().and_then(|dir| {
        if !dir.join("meta").is_dir() {
            return None;
        }
        match Store::open(dir, StoreConfig::default()) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("fleet-agent: store figures left out: {e}");
                None
            }
        }
    });
    let mut sampler = Sampler::new(Sources {
        host: HostRoot::new(&args.host_root),
        state_dir: args.state_dir.clone(),
        store,
        ..Sources::default()
    });
    sampler.sample(super::unix_now(), None, &[]);
    std::thread::sleep(Duration::from_millis(args.cpu_window_ms));
    let t = sampler.sample(super::unix_now(), None, &[]);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
        Output::Text => {
            match sampler.tegra() {
                Some(tegra) => println!(
                    "tegra: L4T {} SoC {} ({})",
                    tegra.l4t_version.as_deref().unwrap_or("?"),
                    tegra.soc.as_deref().unwrap_or("?"),
                    tegra.model.as_deref().unwrap_or("unknown model"),
                ),
                None => println!("tegra: no"),
            }
            print_text(&t);
        }
    }
    Ok(())
}

fn print_text(t: &Telemetry) {
    let line = |name: &str, v: Option<String>| {
        println!("{name}: {}", v.unwrap_or_else(|| "-".to_owned()));
    };
    line("uptime_secs", t.uptime_secs.map(|v| v.to_string()));
    line("cpu_percent", t.cpu_percent.map(|v| format!("{v:.1}")));
    line(
        "memory",
        t.memory_used_bytes
            .zip(t.memory_total_bytes)
            .map(|(u, tot)| format!("{u} / {tot} bytes")),
    );
    line("disk_free_bytes", t.disk_free_bytes.map(|v| v.to_string()));
    line(
        "store_used_bytes",
        t.store_used_bytes.map(|v| v.to_string()),
    );
    line(
        "net_rx_tx_bytes",
        t.net_rx_bytes
            .zip(t.net_tx_bytes)
            .map(|(r, x)| format!("{r} / {x}")),
    );
    line(
        "gpu_load_percent",
        t.gpu_load_percent.map(|v| format!("{v:.1}")),
    );
    line("gpu_freq_hz", t.gpu_freq_hz.map(|v| v.to_string()));
    line(
        "emc_load_percent",
        t.emc_load_percent.map(|v| format!("{v:.1}")),
    );
    line(
        "fetched_reused_bytes_total",
        t.fetched_bytes_total
            .zip(t.reused_bytes_total)
            .map(|(f, r)| format!("{f} / {r}")),
    );
    line(
        "delta_fetched_replaced_bytes_total",
        t.delta_fetched_bytes_total
            .zip(t.delta_replaced_bytes_total)
            .map(|(f, r)| format!("{f} / {r}")),
    );
    line(
        "delta_fallbacks_total",
        t.delta_fallbacks_total.map(|v| v.to_string()),
    );
    for (zone, c) in &t.temperatures {
        println!("temperature {zone}: {c:.1} °C");
    }
    for (rail, mw) in &t.power_mw {
        println!("power {rail}: {mw} mW");
    }
}
