//! `fleet-agent fsck` on state directories made by the agent's own pull
//! path (`fleet-agent pull --unpack` from a real `docker-registry`, and an
//! interrupted pull through a cutting proxy), damaged the way disks and
//! power cuts damage them: each damage is found, `--repair` sets it aside,
//! and the next pull brings the content back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::fetch::{Client, ClientConfig, ImageRef, Platform, RetryPolicy};
use fleet_agent::pull::Puller;
use fleet_agent::store::{Store, StoreConfig};
use fleet_protocol::Digest;
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

fn run(args: &[&str], state: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `fleet-agent fsck [extra]` as JSON, with its exit code.
fn fsck(state: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["fsck", "-o", "json"];
    args.extend_from_slice(extra);
    let out = run(&args, state);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck output is not JSON ({e}): {out:?}"));
    (out.status.code().unwrap(), report)
}

fn problems(report: &Value) -> Vec<Value> {
    report["problems"].as_array().cloned().unwrap_or_default()
}

struct Pulled {
    _reg: Registry,
    reference: String,
    layers: Vec<Layer>,
    state: tempfile::TempDir,
}

impl Pulled {
    fn state(&self) -> &Path {
        self.state.path()
    }

    fn pull(&self) -> Output {
        run(
            &["pull", &self.reference, "--reserve", "0", "--unpack"],
            self.state(),
        )
    }

    fn snapshot_fs(&self, layer: usize) -> PathBuf {
        self.state()
            .join("snapshots/sha256")
            .join(self.layers[layer].diff_id.hex())
            .join("fs")
    }

    fn blob(&self, layer: usize) -> PathBuf {
        let digest = Digest::of(&self.layers[layer].blob);
        self.state().join("blobs/sha256").join(digest.hex())
    }
}

/// A gzip layer whose tar headers are complete (owner, mtime), as a root
/// unpack needs them.
fn layer_of(files: &[(&str, &[u8])]) -> Layer {
    use std::io::Write as _;
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    Layer {
        media_type: LAYER_GZIP,
        blob: enc.finish().unwrap(),
        diff_id: Digest::of(&tar),
    }
}

/// An image of two layers pulled and unpacked by the real binary; `None`
/// (said loudly) without docker-registry.
async fn pulled() -> Option<Pulled> {
    let reg = Registry::start().await?;
    let layers = vec![
        layer_of(&[
            ("etc/motd", b"hello\n"),
            ("usr/bin/tool", &random_bytes(100 << 10, 1)),
        ]),
        layer_of(&[
            ("srv/model.bin", &random_bytes(300 << 10, 2)),
            ("srv/labels.txt", b"cat\ndog\n"),
        ]),
    ];
    push_image(&reg.base(), "edge/app", "1", &layers, "amd64").await;
    let p = Pulled {
        reference: format!("{}/edge/app:1", reg.addr),
        _reg: reg,
        layers,
        state: tempfile::tempdir().unwrap(),
    };
    let out = p.pull();
    assert!(out.status.success(), "pull: {out:?}");
    Some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_by_the_pull_path_is_clean() {
    let Some(p) = pulled().await else { return };
    let (code, report) = fsck(p.state(), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["blobs_checked"], 4, "manifest, config, two layers");
    assert_eq!(report["snapshots_verified"], 2, "{report:#}");
    assert_eq!(report["images_checked"], 1);
    assert!(problems(&report).is_empty());
    let text = run(&["fsck"], p.state());
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).ends_with("clean\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_blob_is_found_set_aside_and_fetched_again() {
    let Some(p) = pulled().await else { return };
    let blob = p.blob(1);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    let (code, report) = fsck(p.state(), &[]);
    assert_eq!(code, 1, "{report:#}");
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    let digest = Digest::of(&p.layers[1].blob);
    assert_eq!(found[0]["kind"], "blob");
    assert_eq!(found[0]["subject"], digest.to_string());
    assert!(
        found[0].get("repair").is_none(),
        "no repair without --repair"
    );
    assert!(blob.exists(), "fsck alone changes nothing");

    let (code, report) = fsck(p.state(), &["--repair"]);
    assert_eq!(code, 1, "problems were found: {report:#}");
    let moved = problems(&report)[0]["repair"].as_str().unwrap().to_owned();
    assert!(moved.starts_with("moved to "), "{moved}");
    assert!(!blob.exists());
    let quarantined = PathBuf::from(moved.trim_start_matches("moved to "));
    assert_eq!(
        std::fs::read(&quarantined).unwrap(),
        bytes,
        "kept for a look"
    );
    assert!(quarantined.starts_with(p.state().join("quarantine")));

    // The snapshot is intact, so the image is still usable: clean.
    let (code, report) = fsck(p.state(), &[]);
    assert_eq!(code, 0, "{report:#}");
    // The next pull fetches the blob again.
    assert!(p.pull().status.success());
    assert_eq!(std::fs::read(&blob).unwrap(), p.layers[1].blob);
    assert_eq!(fsck(p.state(), &[]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_from_a_snapshot_is_found_by_name_and_unpacked_again() {
    let Some(p) = pulled().await else { return };
    let model = p.snapshot_fs(1).join("srv/model.bin");
    std::fs::remove_file(&model).unwrap();

    let (code, report) = fsck(p.state(), &[]);
    assert_eq!(code, 1, "{report:#}");
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{report:#}");
    assert_eq!(found[0]["kind"], "snapshot");
    assert_eq!(found[0]["subject"], p.layers[1].diff_id.to_string());
    let detail = found[0]["detail"].as_str().unwrap();
    assert!(detail.contains("srv/model.bin"), "{detail}");
    assert_eq!(report["snapshots_verified"], 1, "the other one is fine");

    let (code, report) = fsck(p.state(), &["--repair"]);
    assert_eq!(code, 1);
    assert!(
        problems(&report)[0]["repair"]
            .as_str()
            .unwrap()
            .starts_with("moved to "),
        "{report:#}"
    );
    assert!(!p.snapshot_fs(1).exists());
    // The blob is there to unpack from: the image stays whole.
    assert_eq!(fsck(p.state(), &[]).0, 0);
    assert!(p.pull().status.success());
    assert!(model.is_file(), "unpacked again");
    let (code, report) = fsck(p.state(), &[]);
    assert_eq!((code, report["snapshots_verified"].clone()), (0, 2.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_a_snapshot_file_is_found() {
    let Some(p) = pulled().await else { return };
    let motd = p.snapshot_fs(0).join("etc/motd");
    std::fs::write(&motd, b"hellO\n").unwrap();
    let (code, report) = fsck(p.state(), &[]);
    assert_eq!(code, 1, "{report:#}");
    let detail = problems(&report)[0]["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("etc/motd"), "{detail}");
}

/// An interrupted pull: the blob's partial download and its journal stay
/// in `tmp/` for the next pull to resume.
async fn interrupted_pull(reg: &Registry, state: &Path) -> fleet_protocol::Digest {
    let blob = random_bytes(2 << 20, 7);
    let layer = raw_layer(blob);
    push_image(
        &reg.base(),
        "edge/big",
        "1",
        std::slice::from_ref(&layer),
        "amd64",
    )
    .await;
    let proxy = Proxy::start(
        &reg.addr,
        ProxyOpts {
            cut_after: Some(1 << 20),
            cuts: 1000,
            rate: None,
        },
    )
    .await;
    let store = Arc::new(Store::open(state, StoreConfig::default()).unwrap());
    // The config is already there, so that the layer is the one download
    // the proxy interrupts.
    let config = config_for(std::slice::from_ref(&layer), "amd64");
    store
        .put_blob(&Digest::of(&config), &config, OCI_CONFIG)
        .unwrap();
    let client = Client::new(ClientConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
        },
        ..ClientConfig::default()
    })
    .unwrap();
    let puller = Puller::new(client, store, Platform::parse("linux/amd64").unwrap());
    let reference = ImageRef::parse(&format!("{}/edge/big:1", proxy.addr)).unwrap();
    let result = puller.pull(&reference, Arc::new(|_| {})).await;
    assert!(result.is_err(), "the proxy cuts every connection");
    Digest::of(&layer.blob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_partial_download_is_found_and_removed() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let digest = interrupted_pull(&reg, state.path()).await;
    let partial = state.path().join(format!("tmp/{}.partial", digest.hex()));
    let journal = state.path().join(format!("tmp/{}.journal", digest.hex()));
    assert!(
        partial.is_file() && journal.is_file(),
        "{:?}",
        tmp_files(state.path())
    );

    // What a resume needs is there: nothing to report.
    let (code, report) = fsck(state.path(), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["downloads_resumable"],
        1,
        "{report:#} {:?}",
        tmp_files(state.path())
    );

    // Its journal cut short (a power cut, a full disk): no resume can use
    // the partial any more.
    let bytes = std::fs::read(&journal).unwrap();
    std::fs::write(&journal, &bytes[..bytes.len() / 2]).unwrap();
    let (code, report) = fsck(state.path(), &[]);
    assert_eq!(code, 1, "{report:#}");
    let found = problems(&report);
    let subjects: Vec<&str> = found
        .iter()
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [journal.to_str().unwrap(), partial.to_str().unwrap()],
        "{report:#}"
    );
    assert!(found.iter().all(|p| p["kind"] == "download"));

    let (code, _) = fsck(state.path(), &["--repair"]);
    assert_eq!(code, 1);
    assert!(!partial.exists() && !journal.exists());
    assert_eq!(fsck(state.path(), &[]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_longer_than_its_blob_is_found() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let digest = interrupted_pull(&reg, state.path()).await;
    let partial = state.path().join(format!("tmp/{}.partial", digest.hex()));
    std::fs::write(&partial, random_bytes((2 << 20) + 1, 3)).unwrap();
    let (code, report) = fsck(state.path(), &[]);
    assert_eq!(code, 1, "{report:#}");
    let found = problems(&report);
    let details: Vec<&str> = found
        .iter()
        .map(|p| p["detail"].as_str().unwrap())
        .collect();
    assert!(
        details.iter().any(|d| d.contains("longer than")),
        "{report:#}"
    );
}

#[test]
fn fsck_refuses_while_the_agent_holds_the_state() {
    let state = tempfile::tempdir().unwrap();
    let _held = Store::open(state.path(), StoreConfig::default()).unwrap();
    let out = run(&["fsck"], state.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the agent is running"), "{stderr}");
}

#[test]
fn fsck_of_a_missing_state_directory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run(&["fsck"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state directory"));
    assert!(!missing.exists(), "fsck creates nothing");
}
