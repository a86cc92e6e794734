//! Fleet telemetry end to end: the real `fleet-server` (`server::run`, with
//! its embedded broker) on loopback, devices as real MQTT clients with their
//! device tokens, `/metrics` scraped and checked with `promtool`, the batched
//! state surviving a restart, and `fleetctl devices show` printing telemetry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod served;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Site, dev, eventually, now};
use fleet_control_plane::device_token::DeviceTokens;
use fleet_protocol::message::{DeviceInfo, ReleaseRef, encode};
use fleet_protocol::topic::Topic;
use fleet_protocol::{AppName, AppStatus, Digest, Phase, StatusReport, Telemetry, TopicScheme};
use rumqttc::QoS;
use served::{Device, Fleet, admin_token, samples};

fn promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: promtool not found (apt-get install prometheus): /metrics not linted");
        return;
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}): {}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status(id: &str, l4t: Option<&str>, version: &str) -> StatusReport {
    StatusReport {
        schema: 1,
        device: dev(id),
        reported_at: now(),
        generation: Some(1),
        apps: vec![AppStatus {
            app: AppName::new("model").unwrap(),
            phase: Phase::Committed,
            running: Some(ReleaseRef {
                version: version.into(),
                release_digest: Digest::of(version.as_bytes()),
            }),
            target: None,
            previous: None,
            health: Default::default(),
            restarts: 2,
            progress: None,
            error: None,
            delta_fallbacks: vec![],
        }],
        rejected: None,
        info: Some(DeviceInfo {
            labels: BTreeMap::from([("role".to_owned(), "camera".to_owned())]),
            architecture: if l4t.is_some() { "arm64" } else { "amd64" }.into(),
            variant: None,
            l4t_version: l4t.map(str::to_owned),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }),
    }
}

fn jetson_telemetry() -> Telemetry {
    Telemetry {
        at: now(),
        uptime_secs: Some(3600),
        cpu_percent: Some(12.5),
        memory_used_bytes: Some(2_000_000_000),
        memory_total_bytes: Some(8_000_000_000),
        disk_free_bytes: Some(50_000_000_000),
        store_used_bytes: Some(700_000_000),
        net_rx_bytes: Some(123_456),
        net_tx_bytes: Some(654_321),
        temperatures: BTreeMap::from([("cpu-thermal".into(), 48.5), ("gpu-thermal".into(), 51.5)]),
        gpu_load_percent: Some(45.0),
        gpu_freq_hz: Some(1_300_500_000),
        emc_load_percent: Some(20.0),
        power_mw: BTreeMap::from([("VDD_IN".into(), 5200), ("VDD_CPU_GPU_CV".into(), 1800)]),
        fetched_bytes_total: Some(1_000),
        reused_bytes_total: Some(4_000),
        delta_fetched_bytes_total: Some(100),
        delta_replaced_bytes_total: Some(900),
        delta_fallbacks_total: Some(1),
        ..Telemetry::default()
    }
}

fn box_telemetry() -> Telemetry {
    Telemetry {
        at: now(),
        uptime_secs: Some(60),
        cpu_percent: Some(3.0),
        temperatures: BTreeMap::from([("x86_pkg_temp".into(), 40.0)]),
        fetched_bytes_total: Some(500),
        reused_bytes_total: Some(0),
        delta_fetched_bytes_total: Some(50),
        delta_replaced_bytes_total: Some(1_000),
        delta_fallbacks_total: Some(0),
        ..Telemetry::default()
    }
}

/// Scrapes until `ready` holds on the samples (telemetry is QoS 0: it is
/// sent again meanwhile by `resend`).
async fn scrape_until(
    fleet: &Fleet,
    what: &str,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> String {
    eventually(what, || async {
        let text = fleet.metrics().await;
        ready(&samples(&text)).then_some(text)
    })
    .await
}

fn fleetctl(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEET_CONFIG_DIR", cfg)
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_over_mqtt_show_up_in_metrics_that_promtool_accepts_and_in_fleetctl() {
    let site = Site::new();
    let mut config = site.config();
    config.telemetry.flush_secs = 1;
    let token = admin_token(&config);
    let tokens = DeviceTokens::open(&config.data_dir).unwrap();
    let fleet = Fleet::start(config).await;

    let jet = Device::connect(&fleet, &tokens, "jet-1").await;
    let pc = Device::connect(&fleet, &tokens, "box-1").await;
    let gone = Device::connect(&fleet, &tokens, "gone-1").await;
    jet.status(&status("jet-1", Some("R36.4.0"), "v2")).await;
    pc.status(&status("box-1", None, "v1")).await;
    gone.status(&status("gone-1", None, "v1")).await;
    // A malformed telemetry message is rejected and counted.
    pc.publish(Topic::Telemetry(dev("box-1")), b"{not json".to_vec())
        .await;

    // Telemetry is QoS 0: keep sending until it shows.
    let sender = {
        let (jc, pcc) = (jet.client.clone(), pc.client.clone());
        let scheme = TopicScheme::default();
        tokio::spawn(async move {
            loop {
                for (c, id, t) in [
                    (&jc, "jet-1", jetson_telemetry()),
                    (&pcc, "box-1", box_telemetry()),
                ] {
                    let _ = c
                        .publish(
                            scheme.render(&Topic::Telemetry(dev(id))),
                            QoS::AtMostOnce,
                            false,
                            encode(&t).unwrap(),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // gone-1 vanishes without a DISCONNECT: the broker sends its last will.
    scrape_until(&fleet, "three devices registered", |s| {
        s.get("fleet_devices_total") == Some(&3.0)
    })
    .await;
    gone.task.abort();

    let text = scrape_until(&fleet, "telemetry of both devices, gone-1 offline", |s| {
        s.get("fleet_devices_online") == Some(&2.0)
            && s.get(r#"fleet_device_online{device="gone-1"}"#) == Some(&0.0)
            && s.contains_key(r#"fleet_device_gpu_load_percent{device="jet-1"}"#)
            && s.contains_key(r#"fleet_device_cpu_percent{device="box-1"}"#)
    })
    .await;
    sender.abort();
    let s = samples(&text);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{text}"))
    };

    // Inventory.
    assert_eq!(get("fleet_devices_total"), 3.0);
    assert_eq!(get(r#"fleet_devices{group="",state="online"}"#), 2.0);
    assert_eq!(get(r#"fleet_devices{group="",state="offline"}"#), 1.0);
    assert_eq!(get(r#"fleet_device_online{device="jet-1"}"#), 1.0);
    assert_eq!(
        get(
            r#"fleet_device_info{device="jet-1",architecture="arm64",agent_version="0.1.0",l4t_version="R36.4.0"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            r#"fleet_device_info{device="box-1",architecture="amd64",agent_version="0.1.0",l4t_version=""}"#
        ),
        1.0
    );
    assert!(
        get(r#"fleet_device_last_seen_timestamp_seconds{device="jet-1"}"#) >= (now() - 600) as f64
    );

    // Versions running.
    assert_eq!(
        get(r#"fleet_app_version_devices{app="model",version="v2"}"#),
        1.0
    );
    assert_eq!(
        get(r#"fleet_app_version_devices{app="model",version="v1"}"#),
        2.0
    );
    assert_eq!(
        get(r#"fleet_app_phase_devices{app="model",phase="committed"}"#),
        3.0
    );
    assert_eq!(get(r#"fleet_app_restarts{app="model"}"#), 6.0);

    // Telemetry gauges.
    assert_eq!(get(r#"fleet_device_cpu_percent{device="jet-1"}"#), 12.5);
    assert_eq!(
        get(r#"fleet_device_memory_total_bytes{device="jet-1"}"#),
        8e9
    );
    assert_eq!(get(r#"fleet_device_uptime_seconds{device="box-1"}"#), 60.0);
    assert_eq!(
        get(r#"fleet_device_temperature_max_celsius{device="jet-1"}"#),
        51.5
    );
    assert_eq!(
        get(r#"fleet_device_temperature_max_celsius{device="box-1"}"#),
        40.0
    );
    assert_eq!(
        get(r#"fleet_device_gpu_load_percent{device="jet-1"}"#),
        45.0
    );
    assert_eq!(
        get(r#"fleet_device_gpu_freq_hz{device="jet-1"}"#),
        1_300_500_000.0
    );
    assert_eq!(
        get(r#"fleet_device_emc_load_percent{device="jet-1"}"#),
        20.0
    );
    assert_eq!(
        get(r#"fleet_device_power_mw{device="jet-1",rail="VDD_IN"}"#),
        5200.0
    );
    assert_eq!(
        get(r#"fleet_device_net_rx_bytes{device="jet-1"}"#),
        123_456.0
    );
    assert_eq!(get("fleet_telemetry_temperature_celsius_max"), 51.5);
    assert_eq!(get("fleet_telemetry_gpu_load_percent_avg"), 45.0);
    // GPU series only for the device that sent GPU fields.
    for line in text.lines().filter(|l| l.contains(r#"device="box-1""#)) {
        for tegra in ["gpu_", "emc_", "power_mw"] {
            assert!(!line.contains(tegra), "box-1 has a Tegra series: {line}");
        }
    }
    assert!(
        !text.contains(r#"device="gone-1"}"#)
            || !text.contains(r#"fleet_device_cpu_percent{device="gone-1"}"#)
    );

    // Content bytes: sums of the devices' counters.
    assert_eq!(get("fleet_content_fetched_bytes_total"), 1_500.0);
    assert_eq!(get("fleet_content_reused_bytes_total"), 4_000.0);
    assert_eq!(get("fleet_content_device_delta_fetched_bytes_total"), 150.0);
    assert_eq!(
        get("fleet_content_device_delta_replaced_bytes_total"),
        1_900.0
    );
    assert_eq!(get("fleet_content_device_delta_fallbacks_total"), 1.0);

    // The server's own counters.
    assert!(get(r#"fleet_ingest_messages_total{kind="telemetry"}"#) >= 2.0);
    assert!(get(r#"fleet_ingest_messages_total{kind="status"}"#) >= 3.0);
    assert!(get(r#"fleet_ingest_messages_total{kind="presence"}"#) >= 4.0);
    assert_eq!(get(r#"fleet_ingest_rejected_total{kind="telemetry"}"#), 1.0);
    assert_eq!(get(r#"fleet_ingest_rejected_total{kind="status"}"#), 0.0);

    promtool(&text);

    // The batched flusher wrote at least once (flush_secs = 1).
    scrape_until(&fleet, "a batched flush", |s| {
        s.get("fleet_store_batch_writes_total")
            .is_some_and(|n| *n >= 1.0)
    })
    .await;

    // fleetctl devices show prints the latest telemetry.
    let cfg = tempfile::tempdir().unwrap();
    let login = fleet.login_args(&token);
    let (human, json) = tokio::task::spawn_blocking({
        let cfg = cfg.path().to_owned();
        move || {
            let login: Vec<&str> = login.iter().map(String::as_str).collect();
            fleetctl(&cfg, &login);
            (
                fleetctl(&cfg, &["devices", "show", "jet-1"]),
                fleetctl(&cfg, &["devices", "show", "jet-1", "-o", "json"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(human.contains("telemetry"), "{human}");
    assert!(human.contains("load 45.0%"), "{human}");
    assert!(human.contains("VDD_IN 5200 mW"), "{human}");
    assert!(human.contains("gpu-thermal 51.5 °C"), "{human}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["telemetry"]["gpu_load_percent"], 45.0);
    assert_eq!(json["telemetry"]["power_mw"]["VDD_IN"], 5200);
    assert_eq!(json["telemetry"]["fetched_bytes_total"], 1000);
    assert!(json["telemetry"]["received_at"].as_u64().unwrap() > 0);
    assert_eq!(json["online"], true);

    drop((jet, pc));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_state_is_flushed_at_shutdown_and_served_after_a_restart() {
    let site = Site::new();
    let mut config = site.config();
    // No periodic flush during the test: only the one at shutdown.
    config.telemetry.flush_secs = 3600;
    let token = admin_token(&config);
    let tokens = DeviceTokens::open(&config.data_dir).unwrap();
    let fleet = Fleet::start(config.clone()).await;

    let jet = Device::connect(&fleet, &tokens, "jet-1").await;
    jet.status(&status("jet-1", Some("R36.4.0"), "v2")).await;
    // Telemetry is QoS 0: send until it shows.
    eventually("telemetry ingested", || async {
        jet.telemetry(&jetson_telemetry()).await;
        let s = samples(&fleet.metrics().await);
        s.contains_key(r#"fleet_device_gpu_load_percent{device="jet-1"}"#)
            .then_some(())
    })
    .await;
    let before = samples(&fleet.metrics().await);
    assert_eq!(before.get("fleet_store_batch_writes_total"), Some(&0.0));
    // A later status (not a registration): only the flush persists it.
    let mut later = status("jet-1", Some("R36.4.0"), "v3");
    later.reported_at += 1;
    jet.status(&later).await;
    scrape_until(&fleet, "v3 running", |s| {
        s.get(r#"fleet_app_version_devices{app="model",version="v3"}"#) == Some(&1.0)
    })
    .await;
    jet.task.abort();
    fleet.stop().await;

    // The embedded broker's retained messages are gone with it: what the
    // new server knows comes from the store.
    let fleet = Fleet::start(config).await;
    let s = samples(&fleet.metrics().await);
    assert_eq!(
        s.get(r#"fleet_device_gpu_load_percent{device="jet-1"}"#),
        Some(&45.0)
    );
    assert_eq!(s.get("fleet_content_reused_bytes_total"), Some(&4_000.0));
    assert_eq!(
        s.get(r#"fleet_app_version_devices{app="model",version="v3"}"#),
        Some(&1.0)
    );
    let client = fleet.client(&token);
    let d = client.device(&dev("jet-1")).await.unwrap();
    let t = d.telemetry.expect("telemetry persisted");
    assert_eq!(t.telemetry.gpu_load_percent, Some(45.0));
    assert_eq!(t.telemetry.power_mw["VDD_IN"], 5200);
    let st = d.device.last_status.unwrap();
    assert_eq!(st.apps[0].running.as_ref().unwrap().version, "v3");
    fleet.stop().await;
}
