//! PromQL gates against a real Prometheus that the test starts (the
//! `prometheus` binary, Debian's package), scraping a small HTTP endpoint of
//! the test that serves each release's error ratio. One rollout passes its
//! gate and is promoted, one halts at it and rolls its canary back, one
//! whose query returns no data pauses for a human, who resumes it; and one
//! whose server restarts without a Prometheus pauses too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fleet_control_plane::api::types::CreateRollout;
use fleet_control_plane::client::Client;
use fleet_control_plane::fleet::RolloutView;
use fleet_control_plane::fleet::rollout::Action;
use fleet_control_plane::store::{
    EventKind, GateName, PromGate, RolloutState, Safety, Threshold, WaveSize, WaveState,
};
use fleet_protocol::dsse::Envelope;
use fleet_protocol::{AppName, Digest, GroupName};

/// Error ratio per release, as the test's endpoint serves it.
type Ratios = Arc<Mutex<BTreeMap<String, f64>>>;

/// Serves `model_error_ratio{release=...}` at `/metrics` on loopback.
async fn serve_ratios(ratios: Ratios) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let ratios = ratios.clone();
            async move {
                let mut text = String::from("# TYPE model_error_ratio gauge\n");
                for (release, ratio) in ratios.lock().unwrap().iter() {
                    text.push_str(&format!(
                        "model_error_ratio{{release=\"{release}\"}} {ratio}\n"
                    ));
                }
                text
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A Prometheus scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// `None` (said loudly) when the binary is not installed.
    async fn start(target: SocketAddr) -> Option<Prometheus> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: model\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot run `prometheus` ({e}); install it (apt-get install prometheus) \
                     to test PromQL gates against a real Prometheus"
                );
                return None;
            }
        };
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", p.url);
        eventually("Prometheus ready", || async {
            reqwest::get(&ready)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        Some(p)
    }

    /// Waits until Prometheus has scraped a sample of `query`.
    async fn has(&self, query: &str) {
        let url = format!("{}/api/v1/query", self.url);
        eventually(&format!("Prometheus has {query}"), || async {
            let v: serde_json::Value = reqwest::Client::new()
                .get(&url)
                .query(&[("query", query)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let found = v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            found.then_some(())
        })
        .await;
    }
}

/// `model` of the device's desired state.
async fn desired(client: &Client, id: &str) -> Option<(u64, Digest)> {
    let d = client.device(&dev(id)).await.ok()?.desired?;
    Some((
        d.generation,
        d.apps.get(&AppName::new("model").unwrap())?.clone(),
    ))
}

fn gated(version: &str) -> Safety {
    Safety {
        wave_failures: Some(Threshold::Count(0)),
        bake_secs: Some(2),
        promql: Some(PromGate {
            query: format!("max(model_error_ratio{{release=\"{version}\"}})"),
            success: "result < 0.05".parse().unwrap(),
            interval_secs: 1,
            failure_limit: 0,
        }),
        ..Safety::default()
    }
}

async fn start_rollout(client: &Client, site: &Site, version: &str, safety: Safety) -> RolloutView {
    let envelope = Envelope::from_json(&site.release("model", version), 1 << 20).unwrap();
    client
        .start_rollout(&CreateRollout {
            release_digest: None,
            release: Some(envelope),
            group: GroupName::new("cameras").unwrap(),
            waves: vec![WaveSize::Count(1)],
            safety,
        })
        .await
        .unwrap()
}

/// Each camera given `digest` reports it committed, until `done` holds.
async fn drive(
    run: &Running,
    client: &Client,
    id: u64,
    digest: &Digest,
    done: impl Fn(&RolloutView) -> bool,
) -> RolloutView {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = BTreeMap::new();
    loop {
        for cam in ["cam-1", "cam-2"] {
            if let Some((g, to)) = desired(client, cam).await
                && &to == digest
                && sent.get(cam) != Some(&g)
            {
                run.send(committed(cam, g, "model", digest)).await;
                sent.insert(cam, g);
            }
        }
        let r = client.rollout(id).await.unwrap();
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout {id} stuck: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promql_gate_promotes_a_good_release_halts_a_bad_one_and_pauses_without_data() {
    let ratios: Ratios = Arc::default();
    let target = serve_ratios(ratios.clone()).await;
    let Some(prometheus) = Prometheus::start(target).await else {
        return;
    };
    let site = Site::new();
    let mut config = site.config();
    config.desired.renew_check_secs = 1;
    config.prometheus.url = Some(prometheus.url.clone());
    let run = start(config, recording()).await;
    let client = run.client(run.token.as_deref().unwrap());
    for cam in ["cam-1", "cam-2"] {
        run.send(hello(cam, &[("role", "camera")])).await;
    }
    eventually("cameras registered", || async {
        (client.devices().await.unwrap().len() == 2).then_some(())
    })
    .await;
    cameras_group(&client).await;

    // v1 everywhere, ungated.
    let r = start_rollout(&client, &site, "v1", Safety::default()).await;
    drive(&run, &client, r.id, &r.release_digest, |r| {
        r.state == RolloutState::Completed
    })
    .await;

    // v2 errs 1% of the time: the gate passes, the second wave goes out.
    ratios.lock().unwrap().insert("v2".into(), 0.01);
    prometheus.has(r#"model_error_ratio{release="v2"}"#).await;
    let r = start_rollout(&client, &site, "v2", gated("v2")).await;
    let (id, v2) = (r.id, r.release_digest.clone());
    let r = drive(&run, &client, id, &v2, |r| r.state != RolloutState::Running).await;
    assert_eq!(
        r.state,
        RolloutState::Completed,
        "{:?} {:?}",
        r.halt_reason,
        r.pause_reason
    );
    let events = client.events(200).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::RolloutGate
            && e.subject == format!("rollout/{id}")
            && e.message == "wave 1: gates promql held"),
        "{events:?}"
    );

    // v3 errs 20% of the time: halted at the gate, the canary gets v2 back.
    ratios.lock().unwrap().insert("v3".into(), 0.2);
    prometheus.has(r#"model_error_ratio{release="v3"}"#).await;
    let r = start_rollout(&client, &site, "v3", gated("v3")).await;
    let (id, v3) = (r.id, r.release_digest.clone());
    let canary = r
        .devices
        .iter()
        .find(|p| p.wave == 0)
        .unwrap()
        .device
        .to_string();
    let r = drive(&run, &client, id, &v3, |r| r.state != RolloutState::Running).await;
    assert_eq!(r.state, RolloutState::Halted);
    let g = r.gate_failure.clone().unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::Promql, 0.2, 0.05)
    );
    assert_eq!(
        r.halt_reason.as_deref(),
        Some(
            "gate promql failed in wave 1: `max(model_error_ratio{release=\"v3\"})` = 0.2, \
             not result < 0.05 (1 failed measurement(s), tolerated: 0)"
        )
    );
    assert_eq!(r.waves[1].state, WaveState::Pending);
    let text = fleet_control_plane::cli::render::rollout(&r);
    assert!(
        text.contains(
            "  promql: 0 passed, 1 failed, 0 inconclusive; last: 0.2 (failed result < 0.05)"
        ),
        "{text}"
    );
    eventually("the canary back on v2", || async {
        (desired(&client, &canary).await.map(|(_, d)| d) == Some(v2.clone())).then_some(())
    })
    .await;
    let other = if canary == "cam-1" { "cam-2" } else { "cam-1" };
    assert_eq!(desired(&client, other).await.unwrap().1, v2);
    let (g, _) = desired(&client, &canary).await.unwrap();
    run.send(committed(&canary, g, "model", &v2)).await;

    // v4 has no series in Prometheus: inconclusive, paused for a human.
    let r = start_rollout(&client, &site, "v4", gated("v4")).await;
    let (id, v4) = (r.id, r.release_digest.clone());
    let r = drive(&run, &client, id, &v4, |r| r.state != RolloutState::Running).await;
    assert_eq!(r.state, RolloutState::Paused);
    assert_eq!(
        r.pause_reason.as_deref(),
        Some(
            "wave 1: gates could not decide: promql: `max(model_error_ratio{release=\"v4\"})`: \
             no data: the query returned no series (1 inconclusive measurement(s), tolerated: 0)"
        )
    );
    assert_eq!(desired(&client, other).await.unwrap().1, v2, "held back");
    // The operator looks and resumes: the wave is promoted after its bake.
    client.rollout_action(id, Action::Resume).await.unwrap();
    let r = drive(&run, &client, id, &v4, |r| r.state != RolloutState::Running).await;
    assert_eq!(r.state, RolloutState::Completed, "{:?}", r.pause_reason);
    assert_eq!(desired(&client, other).await.unwrap().1, v4);

    // v5 starts gated, then the server restarts without a Prometheus: the
    // gate cannot measure, so the rollout pauses saying why.
    let r = start_rollout(&client, &site, "v5", gated("v5")).await;
    let (id, v5) = (r.id, r.release_digest.clone());
    let token = run.token.clone().unwrap();
    run.stop().await;
    let mut config = site.config();
    config.desired.renew_check_secs = 1;
    let run = start(config, recording()).await;
    let client = run.client(&token);
    let r = drive(&run, &client, id, &v5, |r| r.state != RolloutState::Running).await;
    assert_eq!(r.state, RolloutState::Paused);
    let reason = r.pause_reason.unwrap();
    assert!(reason.contains("no prometheus.url configured"), "{reason}");
    run.stop().await;
    drop(prometheus);
}
