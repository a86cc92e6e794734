//! The real server on loopback, driven over HTTP with the typed client;
//! device messages enter through the same inbound channel the MQTT link uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use fleet_control_plane::api::types::{CreateRollout, SetLabels};
use fleet_control_plane::client::{Client, ClientError};
use fleet_control_plane::fleet::ports::RecordingPublisher;
use fleet_control_plane::fleet::rollout::{Action, ProgressState};
use fleet_control_plane::keys::KeyFile;
use fleet_control_plane::store::{EventKind, RolloutState, WaveState};
use fleet_protocol::dsse::Envelope;
use fleet_protocol::trust::Role;
use fleet_protocol::{DeviceId, Digest, GroupName, TrustedRoot, verify_desired_state};
use reqwest::StatusCode;

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// Verifies `envelope` as device `id` would and returns (generation, apps).
fn verify(
    trust: &TrustedRoot,
    id: &str,
    envelope: &[u8],
    last: Option<u64>,
) -> (u64, BTreeMap<String, Digest>) {
    let v = verify_desired_state(trust, envelope, &dev(id), last, now()).unwrap();
    let apps = v
        .apps
        .iter()
        .map(|a| (a.app.to_string(), a.release_digest.clone()))
        .collect();
    (v.generation, apps)
}

/// Registers devices and waits until the server lists them all.
async fn register(run: &Running, client: &Client, devices: &[(&str, &[(&str, &str)])]) {
    for (id, labels) in devices {
        run.send(hello(id, labels)).await;
    }
    let n = devices.len();
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == n).then_some(())
    })
    .await;
}

fn publications_for(p: &RecordingPublisher, id: &str) -> Vec<Vec<u8>> {
    p.sent()
        .into_iter()
        .filter(|(d, _)| d.as_str() == id)
        .map(|(_, e)| e)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_requests_without_a_valid_token() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let token = run
        .token
        .clone()
        .expect("first start creates an admin token");
    assert!(token.starts_with("fleet_"));

    let health = run
        .http()
        .get(format!("{}/healthz", run.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // TLS is on by default: plain HTTP gets no answer, and a client that
    // does not trust the fleet CA refuses the server.
    assert!(run.url().starts_with("https://"));
    let plain = reqwest::get(format!("http://{}/healthz", run.addr)).await;
    assert!(plain.is_err(), "{plain:?}");
    let untrusting = reqwest::get(format!("{}/healthz", run.url())).await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    let anonymous = common::client_of(&run.url(), run.ca.as_deref(), None);
    let err = anonymous.devices().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    assert!(err.to_string().contains("fleetctl login"), "{err}");

    let wrong = run.client("fleet_0000");
    assert!(matches!(
        wrong.rollouts().await.unwrap_err(),
        ClientError::Unauthorized { .. }
    ));
    let raw = run
        .http()
        .post(format!("{}/api/v1/releases", run.url()))
        .header("Authorization", format!("Basic {token}"))
        .body(site.release("model", "v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
    assert!(run.client(&token).releases().await.unwrap().is_empty());

    assert!(run.client(&token).devices().await.unwrap().is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_must_verify_against_the_release_role_of_the_trust_root() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let client = run.client(run.token.as_deref().unwrap());

    // Unsigned.
    let mut unsigned = Envelope::from_json(&site.release("model", "v1"), 1 << 20).unwrap();
    unsigned.signatures.clear();
    let err = client.add_release(unsigned.to_json()).await.unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        "{err}"
    );

    // Signed by a release key the trust root does not list.
    let stranger = KeyFile::generate(Role::Release);
    let err = client
        .add_release(release_signed_by(&stranger, "model", "v1"))
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        "{err}"
    );
    assert!(err.to_string().contains("unknown_key"), "{err}");

    // Tampered payload.
    let mut tampered = Envelope::from_json(&site.release("model", "v1"), 1 << 20).unwrap();
    let other = Envelope::from_json(&site.release("model", "v2"), 1 << 20).unwrap();
    tampered.payload = other.payload;
    let err = client.add_release(tampered.to_json()).await.unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        "{err}"
    );

    assert!(client.releases().await.unwrap().is_empty());
    let ok = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    assert_eq!(ok.version, "v1");
    // Posting the same release again is harmless.
    client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    let all = client.releases().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].digest, ok.digest);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gives_each_group_device_a_signed_desired_state_with_increasing_generations() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    let trust = site.trust();
    register(
        &run,
        &client,
        &[
            ("cam-1", &[("role", "camera")]),
            ("cam-2", &[("role", "camera")]),
            ("gw-1", &[("role", "gateway")]),
        ],
    )
    .await;
    cameras_group(&client).await;
    // Explicit labels put a device in a group too.
    client
        .set_labels(
            &dev("gw-1"),
            &SetLabels {
                set: [("role".to_owned(), "camera".to_owned())].into(),
                remove: vec![],
            },
        )
        .await
        .unwrap();
    client
        .set_labels(
            &dev("gw-1"),
            &SetLabels {
                set: BTreeMap::new(),
                remove: vec!["role".into()],
            },
        )
        .await
        .unwrap();
    let g = client.group(&group("cameras")).await.unwrap();
    assert_eq!(g.devices, vec![dev("cam-1"), dev("cam-2")]);

    let v1 = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    let r1 = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v1.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(r1.state, RolloutState::Running);
    assert_eq!(r1.counts.total, 2);
    assert_eq!(r1.counts.sent, 2);
    for id in ["cam-1", "cam-2"] {
        let sent = publications_for(&publisher, id);
        assert_eq!(sent.len(), 1, "{id}");
        let (generation, apps) = verify(&trust, id, &sent[0], None);
        assert_eq!(generation, 1);
        assert_eq!(apps["model"], v1.digest);
        // The API serves the same bytes.
        let served = client.device_desired(&dev(id)).await.unwrap();
        assert_eq!(served.to_json(), sent[0]);
    }
    assert!(publications_for(&publisher, "gw-1").is_empty());

    // A second app and then a new version: generations keep increasing and
    // every app stays in the state.
    let agent = client
        .add_release(site.release("telemetry", "1"))
        .await
        .unwrap();
    client
        .start_rollout(&CreateRollout {
            release_digest: Some(agent.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    let v2 = Envelope::from_json(&site.release("model", "v2"), 1 << 20).unwrap();
    let r3 = client
        .start_rollout(&CreateRollout {
            release_digest: None,
            release: Some(v2),
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    for id in ["cam-1", "cam-2"] {
        let sent = publications_for(&publisher, id);
        assert_eq!(sent.len(), 3, "{id}");
        let (g2, _) = verify(&trust, id, &sent[1], Some(1));
        let (g3, apps) = verify(&trust, id, &sent[2], Some(g2));
        assert_eq!((g2, g3), (2, 3));
        assert_eq!(apps["model"], r3.release_digest);
        assert_eq!(apps["telemetry"], agent.digest);
    }
    // The newer rollout of the same app superseded the first.
    assert_eq!(
        client.rollout(r1.id).await.unwrap().state,
        RolloutState::Aborted
    );

    // Progress comes from status reports.
    run.send(committed("cam-1", 3, "model", &r3.release_digest))
        .await;
    eventually("cam-1 committed", || async {
        let v = client.rollout(r3.id).await.unwrap();
        (v.counts.committed == 1).then_some(())
    })
    .await;
    run.send(committed("cam-2", 3, "model", &r3.release_digest))
        .await;
    let done = eventually("rollout completed", || async {
        let v = client.rollout(r3.id).await.unwrap();
        (v.state == RolloutState::Completed).then_some(v)
    })
    .await;
    assert!(
        done.devices
            .iter()
            .all(|p| p.state == ProgressState::Committed)
    );
    let d = client.device(&dev("cam-1")).await.unwrap();
    assert_eq!(d.desired.unwrap().generation, 3);
    assert_eq!(d.device.l4t_version.as_deref(), Some("36.3.0"));
    assert!(d.device.online);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_waves_back_resume_lets_them_go_and_undo_restores_the_previous_release() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    let trust = site.trust();
    let cams = [("role", "camera")];
    register(
        &run,
        &client,
        &[("cam-1", &cams), ("cam-2", &cams), ("cam-3", &cams)],
    )
    .await;
    cameras_group(&client).await;

    // v1 everywhere first.
    let v1 = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    let first = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v1.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    for id in ["cam-1", "cam-2", "cam-3"] {
        run.send(committed(id, 1, "model", &v1.digest)).await;
    }
    eventually("v1 completed", || async {
        (client.rollout(first.id).await.unwrap().state == RolloutState::Completed).then_some(())
    })
    .await;

    // v2 with a canary of one.
    let v2 = client
        .add_release(site.release("model", "v2"))
        .await
        .unwrap();
    let r = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v2.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![fleet_control_plane::store::WaveSize::Count(1)],
            safety: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(r.waves.len(), 2);
    assert_eq!(r.counts.sent, 1);
    assert_eq!(r.counts.waiting, 2);
    let canary = r
        .devices
        .iter()
        .find(|p| p.state == ProgressState::Sent)
        .unwrap()
        .device
        .clone();
    let rest: Vec<DeviceId> = ["cam-1", "cam-2", "cam-3"]
        .into_iter()
        .map(dev)
        .filter(|d| d != &canary)
        .collect();
    let generation = |id: DeviceId| {
        let client = client.clone();
        async move {
            client
                .device(&id)
                .await
                .unwrap()
                .desired
                .unwrap()
                .generation
        }
    };
    assert_eq!(generation(canary.clone()).await, 2);
    assert_eq!(generation(rest[0].clone()).await, 1);

    let paused = client.rollout_action(r.id, Action::Pause).await.unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    let err = client
        .rollout_action(r.id, Action::Pause)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));

    // The canary commits while paused: the next wave stays held back.
    run.send(committed(canary.as_str(), 2, "model", &v2.digest))
        .await;
    eventually("canary committed", || async {
        (client.rollout(r.id).await.unwrap().counts.committed == 1).then_some(())
    })
    .await;
    let held = client.rollout(r.id).await.unwrap();
    assert_eq!(held.state, RolloutState::Paused);
    assert_eq!(held.waves[1].state, WaveState::Pending);
    for d in &rest {
        assert_eq!(generation(d.clone()).await, 1, "{d}");
    }

    let resumed = client.rollout_action(r.id, Action::Resume).await.unwrap();
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.waves[0].state, WaveState::Done);
    assert_eq!(resumed.waves[1].state, WaveState::Active);
    for d in &rest {
        let sent = publications_for(&publisher, d.as_str());
        let (g, apps) = verify(&trust, d.as_str(), sent.last().unwrap(), Some(1));
        assert_eq!(g, 2);
        assert_eq!(apps["model"], v2.digest);
    }

    // Undo: every device the rollout reached gets v1 back, in a newer generation.
    let undone = client.rollout_action(r.id, Action::Undo).await.unwrap();
    assert_eq!(undone.state, RolloutState::RolledBack);
    for id in ["cam-1", "cam-2", "cam-3"] {
        let sent = publications_for(&publisher, id);
        let (g, apps) = verify(&trust, id, sent.last().unwrap(), Some(2));
        assert_eq!(g, 3, "{id}");
        assert_eq!(apps["model"], v1.digest, "{id}");
    }
    let err = client
        .rollout_action(r.id, Action::Resume)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));

    // Abort: the rollout stops where it is; later reports move nothing.
    let v3 = client
        .add_release(site.release("model", "v3"))
        .await
        .unwrap();
    let r3 = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v3.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![fleet_control_plane::store::WaveSize::Count(1)],
            safety: Default::default(),
        })
        .await
        .unwrap();
    let canary3 = r3
        .devices
        .iter()
        .find(|p| p.state == ProgressState::Sent)
        .unwrap()
        .device
        .clone();
    let aborted = client.rollout_action(r3.id, Action::Abort).await.unwrap();
    assert_eq!(aborted.state, RolloutState::Aborted);
    run.send(committed(canary3.as_str(), 4, "model", &v3.digest))
        .await;
    eventually("v3 canary committed", || async {
        (client.rollout(r3.id).await.unwrap().counts.committed == 1).then_some(())
    })
    .await;
    let after = client.rollout(r3.id).await.unwrap();
    assert_eq!(after.state, RolloutState::Aborted);
    assert_eq!(after.waves[1].state, WaveState::Pending);
    assert_eq!(generation(canary3.clone()).await, 4);
    for d in ["cam-1", "cam-2", "cam-3"].map(dev) {
        if d != canary3 {
            assert_eq!(generation(d).await, 3);
        }
    }
    let err = client
        .rollout_action(r3.id, Action::Resume)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    let events = client.events(100).await.unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::RolloutUndo));
    assert!(events.iter().any(|e| e.kind == EventKind::RolloutAbort));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_loses_nothing_and_duplicates_nothing() {
    let site = Site::new();
    let cams = [("role", "camera")];

    // First run: the broker is down, so nothing gets published.
    let run = start(site.config(), Arc::new(BrokerDown)).await;
    let token = run.token.clone().unwrap();
    let client = run.client(&token);
    register(
        &run,
        &client,
        &[("cam-1", &cams), ("cam-2", &cams), ("cam-3", &cams)],
    )
    .await;
    cameras_group(&client).await;
    let v1 = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    let r = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v1.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![fleet_control_plane::store::WaveSize::Count(1)],
            safety: Default::default(),
        })
        .await
        .unwrap();
    let canary = r
        .devices
        .iter()
        .find(|p| p.state == ProgressState::Sent)
        .unwrap()
        .device
        .clone();
    let d = client.device(&canary).await.unwrap().desired.unwrap();
    assert_eq!(d.generation, 1);
    assert!(!d.published);
    run.stop().await;

    // Second run on the same data directory, broker up.
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    assert!(run.token.is_none(), "the admin token is made once");
    let client = run.client(&token);
    let trust = site.trust();
    // The unpublished state goes out once, unchanged.
    let sent = eventually("pending state published", || async {
        let s = publications_for(&publisher, canary.as_str());
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(verify(&trust, canary.as_str(), &sent[0], None).0, 1);
    eventually("marked published", || async {
        client
            .device(&canary)
            .await
            .unwrap()
            .desired
            .unwrap()
            .published
            .then_some(())
    })
    .await;

    let same = client.rollout(r.id).await.unwrap();
    assert_eq!(same.state, RolloutState::Running);
    assert_eq!(same.waves[0].state, WaveState::Active);
    assert_eq!(same.waves[1].state, WaveState::Pending);
    assert_eq!(client.rollouts().await.unwrap().len(), 1);
    assert_eq!(client.releases().await.unwrap().len(), 1);
    assert_eq!(client.devices().await.unwrap().len(), 3);

    // The rollout carries on: the canary commits, the next wave starts.
    run.send(committed(canary.as_str(), 1, "model", &v1.digest))
        .await;
    eventually("second wave started", || async {
        let v = client.rollout(r.id).await.unwrap();
        (v.waves[1].state == WaveState::Active).then_some(())
    })
    .await;
    assert_eq!(publications_for(&publisher, canary.as_str()).len(), 1);
    run.stop().await;

    // Third run: everything was published, nothing is sent again; a new
    // change continues the generations.
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(&token);
    let v2 = client
        .add_release(site.release("model", "v2"))
        .await
        .unwrap();
    let r2 = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v2.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    assert!(r2.id > r.id, "rollout ids are never reused");
    for id in ["cam-1", "cam-2", "cam-3"] {
        let sent = publications_for(&publisher, id);
        assert_eq!(sent.len(), 1, "{id}: only the new state");
        let (g, apps) = verify(&trust, id, &sent[0], Some(1));
        assert_eq!(g, 2, "{id}");
        assert_eq!(apps["model"], v2.digest);
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_states_are_re_signed_with_a_new_generation_before_they_expire() {
    let site = Site::new();
    let mut config = site.config();
    config.desired.lifetime_secs = 3600;
    // Renew when less than 3599 s are left: about one second after signing.
    config.desired.renew_margin_secs = 3599;
    config.desired.renew_check_secs = 1;
    let publisher = recording();
    let run = start(config, publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    let trust = site.trust();
    register(&run, &client, &[("cam-1", &[("role", "camera")])]).await;
    cameras_group(&client).await;
    let v1 = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    client
        .start_rollout(&CreateRollout {
            release_digest: Some(v1.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();
    let first = publications_for(&publisher, "cam-1")[0].clone();
    let first_state = verify_desired_state(&trust, &first, &dev("cam-1"), None, now()).unwrap();
    let renewed = eventually("a renewed state", || async {
        let sent = publications_for(&publisher, "cam-1");
        (sent.len() >= 2).then(|| sent[1].clone())
    })
    .await;
    let state = verify_desired_state(&trust, &renewed, &dev("cam-1"), Some(1), now()).unwrap();
    assert_eq!(state.generation, 2);
    assert!(state.expires_at > first_state.expires_at);
    assert!(state.issued_at > first_state.issued_at);
    assert_eq!(state.apps.len(), 1);
    assert_eq!(state.apps[0].release_digest, v1.digest);
    run.stop().await;
}

/// A report that `app` is downloading `digest`, `done` of `total` bytes.
fn downloading(
    id: &str,
    generation: u64,
    app: &str,
    digest: &Digest,
    done: u64,
    total: u64,
) -> fleet_protocol::StatusReport {
    let mut report = committed(id, generation, app, digest);
    let status = &mut report.apps[0];
    status.phase = fleet_protocol::lifecycle::Phase::Downloading;
    status.running = None;
    status.target = Some(fleet_protocol::message::ReleaseRef {
        version: "v1".into(),
        release_digest: digest.clone(),
    });
    status.progress = Some(fleet_protocol::message::Progress {
        bytes_done: done,
        bytes_total: total,
        bytes_reused: 0,
    });
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_view_shows_each_devices_download_progress() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let client = run.client(run.token.as_deref().unwrap());
    register(
        &run,
        &client,
        &[
            ("cam-1", &[("role", "camera")]),
            ("cam-2", &[("role", "camera")]),
        ],
    )
    .await;
    cameras_group(&client).await;
    let v1 = client
        .add_release(site.release("model", "v1"))
        .await
        .unwrap();
    let r = client
        .start_rollout(&CreateRollout {
            release_digest: Some(v1.digest.clone()),
            release: None,
            group: group("cameras"),
            waves: vec![],
            safety: Default::default(),
        })
        .await
        .unwrap();

    // The agent reports progress at every change of its progress sink
    // (agent/tests/daemon.rs proves that side against a real registry);
    // the server keeps the latest per device.
    let total = 48 * 1024 * 1024;
    for done in [1024 * 1024, 20 * 1024 * 1024] {
        run.send(downloading("cam-1", 1, "model", &v1.digest, done, total))
            .await;
        let view = eventually("cam-1's progress in the rollout view", || async {
            let view = client.rollout(r.id).await.unwrap();
            let p = view.devices.iter().find(|p| p.device == dev("cam-1"))?;
            (p.bytes_done == Some(done)).then_some(view)
        })
        .await;
        let p = view
            .devices
            .iter()
            .find(|p| p.device == dev("cam-1"))
            .unwrap();
        assert_eq!(p.state, ProgressState::Updating);
        assert_eq!(p.phase, Some(fleet_protocol::lifecycle::Phase::Downloading));
        assert_eq!(p.bytes_total, Some(total));
        let text = fleet_control_plane::cli::render::rollout(&view);
        assert!(text.contains(&format!("{done}/{total} bytes")), "{text}");
        // A device that has said nothing yet shows no bytes.
        let other = view
            .devices
            .iter()
            .find(|p| p.device == dev("cam-2"))
            .unwrap();
        assert_eq!(other.state, ProgressState::Sent);
        assert_eq!(other.bytes_done, None);
    }

    // Committed: the bytes are no longer shown as in flight.
    run.send(committed("cam-1", 1, "model", &v1.digest)).await;
    let view = eventually("cam-1 committed", || async {
        let view = client.rollout(r.id).await.unwrap();
        let p = view.devices.iter().find(|p| p.device == dev("cam-1"))?;
        (p.state == ProgressState::Committed).then_some(view)
    })
    .await;
    let text = fleet_control_plane::cli::render::rollout(&view);
    assert!(!text.contains("bytes"), "{text}");
    run.stop().await;
}
