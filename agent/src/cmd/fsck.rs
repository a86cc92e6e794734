//! `fleet-agent fsck [--repair]`: checks a stopped agent's blobs, snapshots,
//! downloads and references against their digests (see
//! [`fleet_agent::fsck`] for what is checked and what `--repair` does).

use std::process::ExitCode;

use fleet_agent::fsck::{Fsck, FsckReport};
use fleet_agent::snapshot::SnapshotStore;
use fleet_agent::state::State;
use fleet_agent::store::{Store, StoreConfig};

use super::pull::{Output, StoreArgs};

/// Exit codes: problems found (repaired or not), and fsck could not run.
pub const EXIT_PROBLEMS: u8 = 1;
pub const EXIT_CANNOT_CHECK: u8 = 2;

#[derive(clap::Args)]
pub struct FsckArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Move damaged blobs and snapshots to <state>/quarantine/ and delete
    /// unusable downloads, so that they are fetched or unpacked again.
    #[arg(long)]
    repair: bool,
}

pub fn run(args: FsckArgs) -> ExitCode {
    match check(&args) {
        Ok(report) => {
            print(&args, &report);
            if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEMS)
            }
        }
        Err(e) => {
            eprintln!("fleet-agent fsck: {e:#}");
            ExitCode::from(EXIT_CANNOT_CHECK)
        }
    }
}

fn check(args: &FsckArgs) -> anyhow::Result<FsckReport> {
    let dir = &args.store.state_dir;
    if !dir.is_dir() {
        anyhow::bail!("there is no state directory at {}", dir.display());
    }
    let cfg = StoreConfig {
        reserve_bytes: 0,
        ..StoreConfig::default()
    };
    let store = match Store::open(dir, cfg) {
        Ok(s) => s,
        Err(e) if e.is_locked() => anyhow::bail!(
            "the agent is running (it holds the lock on {}): stop it first, fsck checks a stopped agent",
            dir.join("meta").display()
        ),
        Err(e) => return Err(e.into()),
    };
    let state = State::open(store.db().clone(), dir.join("meta"))?;
    let snapshots = SnapshotStore::open(dir)?;
    let fsck = Fsck {
        store: &store,
        snapshots: &snapshots,
        state: &state,
        repair: args.repair,
        now: super::unix_now(),
    };
    Ok(fsck.run()?)
}

fn print(args: &FsckArgs, r: &FsckReport) {
    if args.store.output == Output::Json {
        match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("fleet-agent fsck: {e}"),
        }
        return;
    }
    println!("fsck of {}", args.store.state_dir.display());
    println!(
        "  blobs: {} checked ({} bytes hashed)",
        r.blobs_checked, r.blob_bytes_checked
    );
    println!(
        "  snapshots: {} re-verified against their diff_id, {} without a skeleton (metadata only)",
        r.snapshots_verified,
        r.snapshots_metadata_only.len()
    );
    println!(
        "  downloads in progress: {} resumable",
        r.downloads_resumable
    );
    println!(
        "  references: {} images, {} kept releases",
        r.images_checked, r.releases_checked
    );
    for p in &r.problems {
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!("problem: {kind} {}: {}", p.subject, p.detail);
        for who in &p.needed_by {
            println!("  needed by {who}");
        }
        if let Some(done) = &p.repair {
            println!("  repaired: {done}");
        }
    }
    match (r.problems.len(), args.repair) {
        (0, _) => println!("clean"),
        (n, true) => println!("{n} problems found; repaired what fsck can (see above)"),
        (n, false) => println!("{n} problems found; run with --repair to set them aside"),
    }
}
