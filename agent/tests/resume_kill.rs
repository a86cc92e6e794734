//! The real `fleet-agent pull` killed with SIGKILL mid-blob resumes on the
//! next run from its partial file and journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_protocol::Digest;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_mid_blob_resumes_and_refetches_little() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let size = 48 << 20;
    let blob = random_bytes(size, 99);
    let digest = Digest::of(&blob);
    let pushed = push_image(&reg.base(), "edge/big", "1", &[raw_layer(blob)], "amd64").await;
    // The proxy paces at the agent's cap so little sits in socket buffers.
    let rate = 8 << 20;
    let proxy = Proxy::start(
        &reg.addr,
        ProxyOpts {
            rate: Some(rate),
            ..ProxyOpts::default()
        },
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let reference = format!("{}/edge/big:1", proxy.addr);
    let args = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.args([
            "pull",
            &reference,
            "--reserve",
            "0",
            "-o",
            "json",
            "--state-dir",
        ])
        .arg(state.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };

    let mut first = args(&["--max-bandwidth", "8M"]).spawn().unwrap();
    let partial = state
        .path()
        .join("tmp")
        .join(format!("{}.partial", digest.hex()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len >= (size as u64) * 2 / 5 {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first pull ended before it was killed"
        );
        assert!(Instant::now() < deadline, "the download did not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size as u64, "{kept}");
    assert!(
        state
            .path()
            .join("tmp")
            .join(format!("{}.journal", digest.hex()))
            .exists()
    );

    let mut cmd = args(&[]);
    let second = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "second pull failed: {}\n{stdout}",
        String::from_utf8_lossy(&second.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done = events
        .iter()
        .find(|e| e["event"] == "blob_done" && e["digest"] == digest.as_str())
        .unwrap();
    assert_eq!(
        done["resumed_from"].as_u64(),
        Some(kept),
        "resumed exactly from the partial"
    );
    assert_eq!(done["fetched"].as_u64(), Some(size as u64 - kept));
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "done");
    assert!(summary["bytes_fetched"].as_u64().unwrap() < size as u64);

    let stored = std::fs::read(state.path().join("blobs/sha256").join(digest.hex())).unwrap();
    assert_eq!(Digest::of(&stored), digest);
    assert!(tmp_files(state.path()).is_empty());

    // Over both runs the wire carried the blob plus at most 5% again
    // (what was in flight or buffered when the process died).
    let overhead = 2 * (pushed.manifest_len + pushed.config.1) + 64 * 1024;
    let down = proxy.down_bytes();
    let refetched = down.saturating_sub(size as u64 + overhead);
    eprintln!("killed at {kept} bytes; {down} bytes through the proxy, {refetched} refetched");
    assert!(down >= size as u64);
    assert!(
        refetched <= size as u64 / 20,
        "{down} bytes through the proxy for a {size}-byte blob ({refetched} refetched)"
    );
}
