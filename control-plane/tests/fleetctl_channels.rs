//! `fleetctl groups follow` and `fleetctl release publish` against the real
//! server: publishing to a channel starts the following group's rollout with
//! the policy given to `follow`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use fleet_control_plane::store::{HaltRollback, Supersede, Threshold};
use fleet_protocol::{Digest, GroupName};

/// Runs fleetctl off the runtime's threads; returns (exit code, stdout, stderr).
async fn fleetctl(
    config_dir: &std::path::Path,
    args: Vec<String>,
) -> (Option<i32>, String, String) {
    let cfg = config_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(&args)
            .env("FLEET_CONFIG_DIR", &cfg)
            .env_remove("FLEET_SERVER")
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_RELEASE_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_follow_then_publish_starts_the_groups_rollout_with_its_policy() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    for id in ["cam-1", "cam-2", "cam-3"] {
        run.send(hello(id, &[("role", "camera")])).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 3).then_some(())
    })
    .await;
    let remote = run.remote_args(&token);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(remote.iter().cloned())
            .collect()
    };
    let (code, _, err) = fleetctl(
        cfg.path(),
        with(&["groups", "add", "cameras", "-s", "role=camera"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let follow = [
        "groups",
        "follow",
        "cameras",
        "--app",
        "model",
        "--channel",
        "stable",
        "--wave",
        "1",
        "--wave",
        "50%",
        "--supersede",
        "replace",
        "--max-failed-per-wave",
        "0",
        "--max-failed",
        "10%",
        "--on-halt",
        "updated",
    ];
    let (code, out, err) = fleetctl(cfg.path(), with(&follow)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("follows stable for model: waves 1, 50%"),
        "{out}"
    );
    let g = client
        .group(&GroupName::new("cameras").unwrap())
        .await
        .unwrap();
    let f = &g.group.follows.values().next().unwrap();
    {
        use fleet_control_plane::store::WaveSize;
        assert_eq!(f.waves, [WaveSize::Count(1), WaveSize::Percent(50)]);
    }
    assert_eq!(f.supersede, Supersede::Replace);
    assert_eq!(f.safety.wave_failures, Some(Threshold::Count(0)));
    assert_eq!(f.safety.total_failures, Some(Threshold::Percent(10)));
    assert_eq!(f.safety.on_halt, HaltRollback::Updated);

    let image = format!("registry.local:5000/edge/model:v3@{}", Digest::of(b"m"));
    let key = site.keys().join("release.key");
    let publish = [
        "release",
        "publish",
        &image,
        "--channel",
        "stable",
        "--release-key",
        key.to_str().unwrap(),
        "-o",
        "json",
    ];
    let (code, out, err) = fleetctl(cfg.path(), with(&publish)).await;
    assert_eq!(code, Some(0), "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["channel"], "stable");
    assert_eq!(view["rollouts"].as_array().unwrap().len(), 1);
    let rollouts = client.rollouts().await.unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].version, "v3");
    assert_eq!(
        rollouts[0]
            .waves
            .iter()
            .map(|w| w.devices)
            .collect::<Vec<_>>(),
        [1, 2],
        "canary of one, then 50% of three (rounded up)"
    );
    let (code, out, err) = fleetctl(
        cfg.path(),
        with(&["rollout", "history", "--group", "cameras", "--app", "model"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("  ID STATE"), "{out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].contains("running") && lines[1].contains("v3"),
        "{out}"
    );
    let (code, out, _) = fleetctl(
        cfg.path(),
        with(&["rollout", "history", "--group", "other", "-o", "json"]),
    )
    .await;
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "[]");

    // GPU, devices and requirements are signed into a published release
    // too; no device here meets them, so nothing is rolled out.
    let gpu_image = format!("registry.local:5000/edge/model:v4@{}", Digest::of(b"g"));
    let mut gpu_publish = publish.to_vec();
    gpu_publish[2] = &gpu_image;
    gpu_publish.extend([
        "--gpu",
        "all",
        "--device",
        "example.com/dev=a",
        "--requires-soc",
        "t234",
        "--requires-l4t",
        ">=36.3, <37",
    ]);
    let (code, out, err) = fleetctl(cfg.path(), with(&gpu_publish)).await;
    assert_eq!(code, Some(0), "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runtime = &view["release"]["runtime"];
    assert_eq!(runtime["gpu"], "all", "{view}");
    assert_eq!(runtime["devices"][0], "example.com/dev=a", "{view}");
    assert_eq!(runtime["requires"]["soc"], "t234", "{view}");
    assert_eq!(runtime["requires"]["l4t"], ">=36.3, <37", "{view}");
    assert_eq!(view["rollouts"].as_array().unwrap().len(), 0, "{view}");

    // A channel name outside the rules is refused by name, before any request.
    let bad = [
        "release",
        "publish",
        &image,
        "--channel",
        "Stable!",
        "--release-key",
        key.to_str().unwrap(),
    ];
    let (code, _, err) = fleetctl(cfg.path(), with(&bad)).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no channel name"), "{err}");

    // The canary commits v3, the operator pauses the rollout; `rollout
    // watch` (no terminal here: one line per change) shows each wave's
    // progress and returns at the pause.
    let r = &rollouts[0];
    let canary = r
        .devices
        .iter()
        .find(|p| p.wave == 0)
        .unwrap()
        .device
        .clone();
    let generation = client
        .device(&canary)
        .await
        .unwrap()
        .desired
        .unwrap()
        .generation;
    run.send(committed(
        canary.as_str(),
        generation,
        "model",
        &r.release_digest,
    ))
    .await;
    eventually("wave 2 out", || async {
        let v = client.rollout(r.id).await.unwrap();
        (v.waves[1].state == fleet_control_plane::store::WaveState::Active).then_some(())
    })
    .await;
    let id = r.id.to_string();
    let (code, _, err) = fleetctl(cfg.path(), with(&["rollout", "pause", &id])).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = fleetctl(cfg.path(), with(&["rollout", "watch", &id])).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("paused") && out.contains("w1 done 1/1, w2 active 0/2"),
        "{out}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_rollout_plan_prints_waves_excluded_and_offline_devices_and_sends_nothing() {
    use fleet_control_plane::fleet::ports::Inbound;
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    for (id, soc) in [
        ("orin-1", "t234"),
        ("orin-2", "t234"),
        ("orin-3", "t234"),
        ("xavier", "t194"),
    ] {
        let mut r = hello(id, &[("role", "camera")]);
        if let Some(info) = r.info.as_mut() {
            info.soc = Some(soc.into());
        }
        run.send(r).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 4).then_some(())
    })
    .await;
    run.inbound
        .send(Inbound::Presence {
            device: dev("orin-3"),
            online: false,
        })
        .await
        .unwrap();
    eventually("orin-3 offline", || async {
        (!client.device(&dev("orin-3")).await.unwrap().device.online).then_some(())
    })
    .await;
    let remote = run.remote_args(&token);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(remote.iter().cloned())
            .collect()
    };
    let (code, _, err) = fleetctl(
        cfg.path(),
        with(&["groups", "add", "cameras", "-s", "role=camera"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let image = format!("registry.local:5000/edge/model:v3@{}", Digest::of(b"m"));
    let key = site.keys().join("release.key");
    let plan = [
        "rollout",
        &image,
        "--group",
        "cameras",
        "--canary",
        "1",
        "--requires-soc",
        "t234",
        "--plan",
        "--release-key",
        key.to_str().unwrap(),
    ];
    let (code, out, err) = fleetctl(cfg.path(), with(&plan)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 wave(s)"), "{out}");
    assert!(out.contains("wave 1: 1 device(s): orin-1\n"), "{out}");
    assert!(
        out.contains("wave 2: 2 device(s): orin-2,orin-3\n"),
        "{out}"
    );
    assert!(
        out.contains("excluded xavier: incompatible: requires soc t234, device has t194\n"),
        "{out}"
    );
    assert!(
        out.contains("offline now (they get it when they return): orin-3\n"),
        "{out}"
    );
    // Nothing kept, started or sent.
    assert!(client.rollouts().await.unwrap().is_empty());
    assert!(client.releases().await.unwrap().is_empty());
    assert!(publisher.sent().is_empty());
    run.stop().await;
}
