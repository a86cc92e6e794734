//! The real `fleetctl` binary against a real server on loopback, and the
//! real `fleet-server` binary's configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use fleet_protocol::{Digest, verify_desired_state};

fn fleetctl(config_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEET_CONFIG_DIR", config_dir)
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_RELEASE_KEY")
        .output()
        .unwrap()
}

fn ok(config_dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(config_dir, args);
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(config_dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(config_dir, args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_logs_in_groups_devices_and_rolls_an_image_out() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let cfg = cfg.path().to_owned();
    let url = run.url();

    // Without credentials, the error says what to do.
    let err = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || fails(&cfg, &["devices", "ls"])
    })
    .await
    .unwrap();
    assert!(err.contains("fleetctl login"), "{err}");

    // A bad token is refused at login and nothing is saved.
    let err = fails(&cfg, &["login", "--server", &url, "--token", "fleet_bad"]);
    assert!(
        err.contains("log in again") || err.contains("refused"),
        "{err}"
    );
    assert!(!cfg.join("credentials").exists());

    let out = ok(&cfg, &["login", "--server", &url, "--token", &token]);
    assert!(out.contains("logged in"), "{out}");
    let mode = std::fs::metadata(cfg.join("credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    for (id, role) in [
        ("cam-1", "camera"),
        ("cam-2", "camera"),
        ("gw-1", "gateway"),
    ] {
        run.send(hello(id, &[("role", role)])).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 3).then_some(())
    })
    .await;

    let devices = json(&ok(&cfg, &["devices", "ls", "-o", "json"]));
    assert_eq!(devices.as_array().unwrap().len(), 3);
    let shown = json(&ok(&cfg, &["devices", "show", "cam-1", "--output", "json"]));
    assert_eq!(shown["id"], "cam-1");
    assert_eq!(shown["l4t_version"], "36.3.0");
    let text = ok(&cfg, &["devices", "ls"]);
    assert!(text.contains("gw-1") && text.contains("36.3.0"), "{text}");

    let group = json(&ok(
        &cfg,
        &[
            "groups",
            "add",
            "cameras",
            "--selector",
            "role=camera",
            "-o",
            "json",
        ],
    ));
    assert_eq!(group["devices"], serde_json::json!(["cam-1", "cam-2"]));
    // Labelling gw-1 as a camera puts it in the group.
    ok(&cfg, &["groups", "label", "gw-1", "role=camera"]);
    let groups = json(&ok(&cfg, &["groups", "ls", "-o", "json"]));
    assert_eq!(groups[0]["devices"].as_array().unwrap().len(), 3);

    // Roll out an image given by digest (no image store is attached here).
    let manifest = Digest::of(b"model v2 manifest");
    let image = format!("registry.local:5000/edge/model:v2@{manifest}");
    let release_key = site.keys().join("release.key");
    let started = json(&ok(
        &cfg,
        &[
            "rollout",
            &image,
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
            "--canary",
            "1",
            "-o",
            "json",
        ],
    ));
    assert_eq!(started["app"], "model");
    assert_eq!(started["version"], "v2");
    assert_eq!(started["state"], "running");
    assert_eq!(started["counts"]["total"], 3);
    assert_eq!(started["counts"]["sent"], 1);
    let id = started["id"].as_u64().unwrap().to_string();

    // The published state verifies on the device and names the image digest.
    let trust = site.trust();
    let sent = publisher.sent();
    assert_eq!(sent.len(), 1);
    let state = verify_desired_state(&trust, &sent[0].1, &sent[0].0, None, now()).unwrap();
    let releases = state.releases();
    assert_eq!(releases[0].manifest_digest, manifest);
    assert_eq!(releases[0].repository, "registry.local:5000/edge/model");

    let status = json(&ok(&cfg, &["rollout", "status", &id, "-o", "json"]));
    assert_eq!(status["devices"].as_array().unwrap().len(), 3);
    let list = ok(&cfg, &["rollout", "status"]);
    assert!(list.contains("model") && list.contains("running"), "{list}");

    let paused = ok(&cfg, &["rollout", "pause", &id]);
    assert!(paused.contains("paused"), "{paused}");
    // Not a terminal: --watch prints plain lines and stops on a paused rollout.
    let watched = ok(&cfg, &["rollout", "status", &id, "--watch"]);
    assert!(watched.contains("paused"), "{watched}");
    let err = fails(&cfg, &["rollout", "pause", &id]);
    assert!(err.contains("cannot pause"), "{err}");
    ok(&cfg, &["rollout", "resume", &id]);
    let undone = json(&ok(&cfg, &["rollout", "undo", &id, "-o", "json"]));
    assert_eq!(undone["state"], "rolled_back");

    // A tag without an image store: the error says how to proceed.
    let err = fails(
        &cfg,
        &[
            "rollout",
            "registry.local:5000/edge/model:v3",
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
        ],
    );
    assert!(err.contains("by digest"), "{err}");

    let completions = ok(&cfg, &["completions", "bash"]);
    assert!(completions.contains("fleetctl"));
    run.stop().await;
}

#[test]
fn fleet_server_refuses_a_bad_config_with_a_distinct_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("server.toml");
    std::fs::write(&bad, "[http]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.toml"), "{err}");

    // A valid config whose director key is missing: exit code 3, with a hint.
    let good = dir.path().join("ok.toml");
    std::fs::write(
        &good,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[director]\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("missing.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleetctl keys init"), "{err}");
}
