//! `fleet-agent pull` and `fleet-agent gc`: the content store by hand.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::ValueEnum;
use fleet_agent::fetch::{Client, ClientConfig, ImageRef, Platform};
use fleet_agent::image::StoredImage;
use fleet_agent::pull::{PullEvent, Puller};
use fleet_agent::snapshot::SnapshotStore;
use fleet_agent::store::{GcOptions, Store, StoreConfig};

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The agent's state directory (content store under it).
    #[arg(long, env = "FLEET_STATE_DIR", default_value = "/var/lib/fleet-agent")]
    pub state_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// `registry/repo:tag` or `registry/repo@sha256:…`.
    image: ImageRef,
    #[command(flatten)]
    store: StoreArgs,
    /// Platform to pick from an index, e.g. linux/arm64/v8 (default: this machine's).
    #[arg(long)]
    platform: Option<Platform>,
    /// Bandwidth cap in bytes per second (suffixes K, M, G are powers of 1024).
    #[arg(long, value_parser = parse_bytes)]
    max_bandwidth: Option<u64>,
    /// Disk space to leave free, in bytes (suffixes K, M, G).
    #[arg(long, value_parser = parse_bytes, default_value = "256M")]
    reserve: u64,
    /// Blob downloads at once.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Also unpack the layers into read-only snapshots (what a release runs on).
    #[arg(long)]
    unpack: bool,
}

#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Remove downloads in progress untouched for this many seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    tmp_max_age: u64,
}

/// Exit code when the disk cannot hold the download.
pub const EXIT_DISK_FULL: u8 = 3;

fn open_store(args: &StoreArgs, reserve: u64) -> anyhow::Result<Arc<Store>> {
    let cfg = StoreConfig {
        reserve_bytes: reserve,
        ..StoreConfig::default()
    };
    let store = Store::open(&args.state_dir, cfg)
        .with_context(|| format!("opening the store in {}", args.state_dir.display()))?;
    Ok(Arc::new(store))
}

pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, args.reserve)?;
    let client = Client::new(ClientConfig {
        max_bandwidth: args.max_bandwidth,
        max_concurrent_blobs: args.concurrency,
        ..ClientConfig::default()
    })?;
    let platform = args.platform.unwrap_or_else(Platform::host);
    let puller = Puller::new(client, store.clone(), platform);
    let json = args.store.output == Output::Json;
    let sink = Arc::new(move |ev: PullEvent| print_event(&ev, json));
    let summary = puller.pull(&args.image, sink).await?;
    if args.unpack {
        let state_dir = args.store.state_dir.clone();
        let manifest = summary.manifest.clone();
        let dirs = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PathBuf>> {
            let snapshots = SnapshotStore::open(&state_dir)?;
            let image = StoredImage::load(&store, &manifest)?;
            Ok(image.ensure_snapshots(&store, &snapshots)?)
        })
        .await??;
        if json {
            let event = serde_json::json!({ "event": "unpacked", "snapshots": dirs });
            println!("{event}");
        } else {
            for d in &dirs {
                println!("  snapshot {}", d.display());
            }
        }
    }
    Ok(())
}

fn print_event(ev: &PullEvent, json: bool) {
    if json {
        if let Ok(line) = serde_json::to_string(ev) {
            println!("{line}");
        }
        return;
    }
    match ev {
        PullEvent::Resolved {
            reference,
            manifest,
            needed_bytes,
            reused_bytes,
            ..
        } => println!(
            "{reference}: {manifest}, {needed_bytes} bytes to fetch, {reused_bytes} reused"
        ),
        PullEvent::BlobDone { digest, size, .. } => println!("  {digest} ({size} bytes) done"),
        PullEvent::Done(s) => println!(
            "pulled {} ({} bytes fetched, {} reused)",
            s.reference, s.bytes_fetched, s.bytes_reused
        ),
        PullEvent::DeltaApplied {
            layer,
            delta_bytes,
            layer_bytes,
            ..
        } => println!(
            "  {layer}: rebuilt from a {delta_bytes}-byte delta instead of {layer_bytes} bytes"
        ),
        PullEvent::DeltaFallback { layer, reason } => {
            println!("  {layer}: delta unusable ({reason}); fetching the whole layer")
        }
        PullEvent::Progress { .. } => {}
    }
}

pub fn gc(args: GcArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store, 0)?;
    let report = store.gc(&GcOptions {
        tmp_max_age: std::time::Duration::from_secs(args.tmp_max_age),
    })?;
    if args.store.output == Output::Json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "removed {} blobs ({} bytes) and {} temp files; {} blobs kept",
            report.blobs_removed, report.bytes_freed, report.temp_files_removed, report.blobs_kept
        );
    }
    Ok(())
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a byte count like 1048576, 512K, 8M or 1G"))
}
