//! `nvidia-ctk cdi generate` as a spec source: a host with CSV files but no
//! CDI spec, and a stand-in `nvidia-ctk` on `PATH`
//! (`fixtures/nvidia-ctk/bin`, a shell script writing a real spec file).
//! The agent runs it once, caches the spec in its state dir, and resolves
//! `nvidia.com/gpu=all` from it instead of from the CSV files.
//!
//! The test re-runs this test binary with the stand-in first on `PATH`
//! (the agent finds `nvidia-ctk` on `PATH`; changing the process's own
//! environment would need `unsafe`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use fleet_agent::gpu::{self, Tools};
use fleet_agent::telemetry::HostRoot;
use fleet_protocol::message::RuntimeSettings;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn nvidia_ctk_spec_is_generated_once_cached_and_used() {
    let bin = fixtures().join("nvidia-ctk/bin");
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "with_nvidia_ctk_on_path",
            "--ignored",
            "--nocapture",
        ])
        .env("PATH", path)
        .env("FLEET_TEST_CTK_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed"),
        "the inner test did not run:\n{text}"
    );
}

/// Run by the test above, with the stand-in on `PATH`.
#[test]
#[ignore = "run by nvidia_ctk_spec_is_generated_once_cached_and_used with PATH set"]
fn with_nvidia_ctk_on_path() {
    assert_eq!(std::env::var("FLEET_TEST_CTK_CHILD").as_deref(), Ok("1"));
    let host = HostRoot::new(fixtures().join("tegra/nano-r32"));
    let settings = RuntimeSettings {
        devices: vec!["nvidia.com/gpu=all".to_owned()],
        ..Default::default()
    };
    // No cache dir (as for device info): the tool is not run, the CSV
    // fallback's spec is used (no env line from the ctk spec).
    let state = tempfile::tempdir().unwrap();
    let cache = state.path().join("cdi");
    let csv = gpu::resolve(&host, Tools::NONE, &settings)
        .unwrap()
        .unwrap();
    assert!(
        !csv.env
            .iter()
            .any(|e| e.starts_with("FLEET_TEST_SPEC_SOURCE"))
    );
    assert!(!csv.device_nodes.is_empty());
    assert!(!cache.exists());

    let tool = gpu::ctk::find_tool().unwrap();
    assert!(
        tool.ends_with("fixtures/nvidia-ctk/bin/nvidia-ctk"),
        "{tool:?}"
    );

    for _ in 0..3 {
        let edits = gpu::resolve(&host, Tools::cache(&cache), &settings)
            .unwrap()
            .unwrap();
        assert!(
            edits
                .env
                .contains(&"FLEET_TEST_SPEC_SOURCE=nvidia-ctk".to_owned())
        );
        let nodes: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            nodes,
            [
                "/dev/nvhost-ctrl",
                "/dev/nvhost-ctrl-gpu",
                "/dev/nvhost-gpu",
                "/dev/nvmap"
            ]
        );
        assert_eq!(edits.hooks.len(), 2);
        gpu::check(&host, Tools::cache(&cache), &settings).unwrap();
    }
    let cached = std::fs::read_to_string(cache.join("nvidia.yaml")).unwrap();
    assert!(cached.contains("kind: nvidia.com/gpu"));
    let runs = std::fs::read_to_string(cache.join("nvidia.yaml.runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "nvidia-ctk ran more than once");

    // A cached spec that is broken is refused by name, not replaced.
    std::fs::write(
        cache.join("nvidia.yaml"),
        "cdiVersion: 9.9.9\nkind: nvidia.com/gpu\ndevices: []\n",
    )
    .unwrap();
    let err = gpu::resolve(&host, Tools::cache(&cache), &settings)
        .unwrap_err()
        .to_string();
    assert!(err.contains("9.9.9"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cache.join("nvidia.yaml.runs"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}
