//! Telemetry gates end to end: the whole fleet-server with its embedded
//! broker, four cameras as MQTT clients reporting status and telemetry like
//! agents. A release whose canary keeps its memory near the devices still
//! on the previous release is promoted after the bake; one whose canary's
//! memory jumps, and one whose canary keeps restarting, halt at their gate,
//! roll the canary back, reach nobody else, and show in the rollout view,
//! the event log and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod served;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Site, cameras_group, dev, eventually, hello, now};
use fleet_control_plane::api::types::CreateRollout;
use fleet_control_plane::client::Client;
use fleet_control_plane::device_token::DeviceTokens;
use fleet_control_plane::fleet::RolloutView;
use fleet_control_plane::store::{
    EventKind, GateName, PromGate, RolloutState, Safety, TelemetryGates, Threshold, WaveSize,
    WaveState,
};
use fleet_protocol::dsse::Envelope;
use fleet_protocol::message::{AppTelemetry, Health, ReleaseRef, encode};
use fleet_protocol::topic::Topic;
use fleet_protocol::{AppName, Digest, GroupName, Telemetry, TopicScheme};
use rumqttc::QoS;
use served::{Device, Fleet, admin_token, samples};

const CAMS: [&str; 4] = ["cam-1", "cam-2", "cam-3", "cam-4"];
const MIB: u64 = 1 << 20;

/// What each camera's app reports in its telemetry: memory in MiB and
/// restarts. Sent again and again (telemetry is QoS 0).
type Reported = Arc<Mutex<BTreeMap<String, (u64, u32)>>>;

fn telemetry(id: &str, mib: u64, restarts: u32) -> Telemetry {
    Telemetry {
        device: Some(dev(id)),
        at: now(),
        apps: vec![AppTelemetry {
            app: Some(AppName::new("model").unwrap()),
            running: true,
            restarts,
            health: Health::Healthy,
            cpu_percent: Some(5.0),
            memory_bytes: Some(mib * MIB),
        }],
        ..Telemetry::default()
    }
}

fn send_telemetry_forever(devices: &[Device], reported: Reported) -> tokio::task::JoinHandle<()> {
    let clients: Vec<_> = devices
        .iter()
        .map(|d| (d.id.clone(), d.client.clone()))
        .collect();
    tokio::spawn(async move {
        let scheme = TopicScheme::default();
        loop {
            for (id, client) in &clients {
                let Some((mib, restarts)) = reported.lock().unwrap().get(id).copied() else {
                    continue;
                };
                let t = telemetry(id, mib, restarts);
                let topic = scheme.render(&Topic::Telemetry(dev(id)));
                let _ = client
                    .publish(topic, QoS::AtMostOnce, false, encode(&t).unwrap())
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The generation and release of `model` in the device's desired state.
async fn desired(client: &Client, id: &str) -> Option<(u64, Digest)> {
    let d = client.device(&dev(id)).await.ok()?.desired?;
    Some((
        d.generation,
        d.apps.get(&AppName::new("model").unwrap())?.clone(),
    ))
}

/// The device reports `model` committed on `digest` after `restarts`.
async fn commit(device: &Device, generation: u64, digest: &Digest, restarts: u32) {
    let mut report = common::committed(&device.id, generation, "model", digest);
    report.apps[0].restarts = restarts;
    report.apps[0].health = Health::Healthy;
    report.apps[0].running = Some(ReleaseRef {
        version: "x".into(),
        release_digest: digest.clone(),
    });
    device.status(&report).await;
}

/// Every camera whose desired state gives it `digest` reports it committed
/// (with `restarts`), until `done` holds for the rollout.
async fn drive(
    client: &Client,
    devices: &[Device],
    id: u64,
    digest: &Digest,
    restarts: u32,
    done: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    let mut committed = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for d in devices {
            if let Some((g, to)) = desired(client, &d.id).await
                && &to == digest
                && committed.get(&d.id) != Some(&g)
            {
                commit(d, g, digest, restarts).await;
                committed.insert(d.id.clone(), g);
            }
        }
        let r = client.rollout(id).await.unwrap();
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out driving rollout {id}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gated() -> Safety {
    Safety {
        wave_failures: Some(Threshold::Count(0)),
        bake_secs: Some(3),
        gates: TelemetryGates {
            memory: Some("1.5".parse().unwrap()),
            restarts: Some(2),
            ..TelemetryGates::default()
        },
        ..Safety::default()
    }
}

async fn start(client: &Client, site: &Site, version: &str, safety: Safety) -> (u64, Digest) {
    let envelope = Envelope::from_json(&site.release("model", version), 1 << 20).unwrap();
    let r = client
        .start_rollout(&CreateRollout {
            release_digest: None,
            release: Some(envelope),
            group: GroupName::new("cameras").unwrap(),
            waves: vec![WaveSize::Count(1)],
            safety,
        })
        .await
        .unwrap();
    (r.id, r.release_digest)
}

fn canary(r: &RolloutView) -> String {
    r.devices
        .iter()
        .find(|p| p.wave == 0)
        .unwrap()
        .device
        .to_string()
}

/// The canary of rollout `id` commits `digest` (after `restarts`) and
/// reports `mib` of memory during the bake; the others stay at 100 MiB.
/// Returns the rollout once `done` holds.
#[allow(clippy::too_many_arguments)]
async fn canary_reports(
    client: &Client,
    devices: &[Device],
    reported: &Reported,
    id: u64,
    digest: &Digest,
    mib: u64,
    restarts: u32,
    done: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    let c = canary(&client.rollout(id).await.unwrap());
    let device = devices.iter().find(|d| d.id == c).unwrap();
    let (g, to) = eventually("the canary's desired state", || desired(client, &c)).await;
    assert_eq!(&to, digest);
    commit(device, g, digest, restarts).await;
    eventually("the canary wave baking", || async {
        client.rollout(id).await.unwrap().waves[0].settled_at
    })
    .await;
    // What the canary measures on the new release, from now on.
    reported.lock().unwrap().insert(c.clone(), (mib, restarts));
    eventually("the gates' verdict", || async {
        let r = client.rollout(id).await.unwrap();
        done(&r).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_canary_memory_or_restarts_jump_halts_at_the_gate_and_a_quiet_one_is_promoted()
 {
    let site = Site::new();
    let mut config = site.config();
    // The tick that steps baking rollouts.
    config.desired.renew_check_secs = 1;
    let token = admin_token(&config);
    let tokens = DeviceTokens::open(&config.data_dir).unwrap();
    let fleet = Fleet::start(config).await;
    let client = fleet.client(&token);
    let mut devices = Vec::new();
    for id in CAMS {
        let d = Device::connect(&fleet, &tokens, id).await;
        d.status(&hello(id, &[("role", "camera")])).await;
        devices.push(d);
    }
    eventually("four cameras registered", || async {
        (client.devices().await.unwrap().len() == 4).then_some(())
    })
    .await;
    cameras_group(&client).await;
    // Policies that cannot work here are refused by name.
    let mut no_bake = gated();
    no_bake.bake_secs = None;
    let mut promql = gated();
    promql.promql = Some(PromGate {
        query: "up".into(),
        success: "result == 1".parse().unwrap(),
        interval_secs: 10,
        failure_limit: 0,
    });
    let first_wave = vec![WaveSize::Count(1)];
    for (safety, waves, says) in [
        (
            no_bake,
            first_wave.clone(),
            "gates (memory, restarts) are checked while a wave bakes",
        ),
        (
            gated(),
            vec![],
            "the rollout has a single wave: give a canary",
        ),
        (
            promql,
            first_wave.clone(),
            "no Prometheus to run the PromQL gate: set prometheus.url",
        ),
    ] {
        let envelope = Envelope::from_json(&site.release("model", "v0"), 1 << 20).unwrap();
        let req = CreateRollout {
            release_digest: None,
            release: Some(envelope),
            group: GroupName::new("cameras").unwrap(),
            waves,
            safety,
        };
        let e = client.start_rollout(&req).await.unwrap_err();
        assert_eq!(e.status(), Some(reqwest::StatusCode::BAD_REQUEST), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    let reported: Reported = Arc::new(Mutex::new(
        CAMS.iter().map(|id| (id.to_string(), (100, 0))).collect(),
    ));
    let sender = send_telemetry_forever(&devices, reported.clone());

    // v1 everywhere, no gates: the previous release of what follows.
    let (id, v1) = start(&client, &site, "v1", Safety::default()).await;
    drive(&client, &devices, id, &v1, 0, |r| {
        r.state == RolloutState::Completed
    })
    .await;

    // v2: the canary's app uses 110 MiB against 100 MiB on v1: promoted.
    let (id, v2) = start(&client, &site, "v2", gated()).await;
    let r = canary_reports(&client, &devices, &reported, id, &v2, 110, 0, |r| {
        r.waves[0].state == WaveState::Done || r.state != RolloutState::Running
    })
    .await;
    assert_eq!(r.state, RolloutState::Running, "{:?}", r.halt_reason);
    assert_eq!(r.gate_failure, None);
    drive(&client, &devices, id, &v2, 0, |r| {
        r.state == RolloutState::Completed
    })
    .await;
    let events = client.events(200).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::RolloutGate
            && e.subject == format!("rollout/{id}")
            && e.message == "wave 1: gates memory, restarts held"),
        "{events:?}"
    );
    for id in CAMS {
        reported.lock().unwrap().insert(id.to_string(), (100, 0));
    }

    // v3: the canary's app uses 400 MiB: halted at the memory gate.
    let (id, v3) = start(&client, &site, "v3", gated()).await;
    let c = canary(&client.rollout(id).await.unwrap());
    let r = canary_reports(&client, &devices, &reported, id, &v3, 400, 0, |r| {
        r.state != RolloutState::Running
    })
    .await;
    assert_eq!(r.state, RolloutState::Halted);
    let g = r.gate_failure.clone().unwrap();
    assert_eq!(g.gate, GateName::Memory);
    assert_eq!(
        (g.measured, g.threshold),
        ((400 * MIB) as f64, (150 * MIB) as f64)
    );
    let reason = r.halt_reason.clone().unwrap();
    assert!(
        reason.starts_with("gate memory failed in wave 1: the wave's median app memory 400.0 MiB"),
        "{reason}"
    );
    assert_eq!(r.waves[1].state, WaveState::Pending);
    // The canary gets v2 back; nobody else was ever given v3.
    eventually("the canary rolled back to v2", || async {
        (desired(&client, &c).await.map(|(_, d)| d) == Some(v2.clone())).then_some(())
    })
    .await;
    for other in CAMS.iter().filter(|o| **o != c) {
        assert_eq!(desired(&client, other).await.unwrap().1, v2, "{other}");
    }
    let events = client.events(200).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::RolloutHalted
            && e.message == format!("halted: {reason}; 1 device(s) rolled back")),
        "{events:?}"
    );
    let text = fleet_control_plane::cli::render::rollout(&r);
    assert!(
        text.contains(&format!("halted: {reason}"))
            && text.contains("gate memory: measured 419430400 > threshold 157286400 (wave 1)"),
        "{text}"
    );
    commit(
        devices.iter().find(|d| d.id == c).unwrap(),
        desired(&client, &c).await.unwrap().0,
        &v2,
        0,
    )
    .await;
    reported.lock().unwrap().insert(c.clone(), (100, 0));

    // v4: the canary's app restarts 5 times: halted at the restart gate.
    let (id, v4) = start(&client, &site, "v4", gated()).await;
    let r = canary_reports(&client, &devices, &reported, id, &v4, 100, 5, |r| {
        r.state != RolloutState::Running
    })
    .await;
    assert_eq!(r.state, RolloutState::Halted);
    let g = r.gate_failure.clone().unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::Restarts, 5.0, 2.0)
    );

    let s = samples(&fleet.metrics().await);
    assert_eq!(
        s.get(r#"fleet_rollout_gate_failures_total{gate="memory"}"#),
        Some(&1.0)
    );
    assert_eq!(
        s.get(r#"fleet_rollout_gate_failures_total{gate="restarts"}"#),
        Some(&1.0)
    );
    assert_eq!(
        s.get(&format!(
            r#"fleet_rollout_gate_measured{{rollout="{id}",gate="restarts"}}"#
        )),
        Some(&5.0)
    );
    sender.abort();
    fleet.stop().await;
}
