//! Channels against the real server: a release published to a channel
//! reaches a following group in waves with no further command, devices that
//! join afterwards get the group's current release, and newer releases queue
//! or replace by the group's policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use fleet_control_plane::api::types::FollowChannel;
use fleet_control_plane::client::Client;
use fleet_control_plane::fleet::rollout::ProgressState;
use fleet_control_plane::store::{
    Channel, EventKind, HaltRollback, RolloutState, Safety, Supersede, Threshold, WaveSize,
    WaveState,
};
use fleet_protocol::message::ReleaseRef;
use fleet_protocol::{
    AppName, DeviceId, Digest, ErrorCode, GroupName, Phase, StatusReport, verify_desired_state,
};

fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

fn stable() -> Channel {
    Channel::new("stable").unwrap()
}

async fn register(run: &Running, client: &Client, ids: &[&str]) {
    let before = client.devices().await.unwrap().len();
    for id in ids {
        run.send(hello(id, &[("role", "camera")])).await;
    }
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == before + ids.len()).then_some(())
    })
    .await;
}

async fn cameras_following(client: &Client, waves: Vec<usize>, supersede: Supersede) {
    cameras_group(client).await;
    let g = client
        .follow(
            &group("cameras"),
            &FollowChannel {
                app: AppName::new("model").unwrap(),
                channel: stable(),
                waves: waves.into_iter().map(WaveSize::Count).collect(),
                supersede,
                safety: Safety::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(g.group.follows.len(), 1);
}

/// What the device's current desired state gives `model`, verified as the
/// device would (`None` also while the device's first report is on its way).
async fn desired_model(site: &Site, client: &Client, id: &str) -> Option<(u64, Digest)> {
    let d = match client.device(&dev(id)).await {
        Ok(view) => view.desired?,
        Err(e) if e.status() == Some(reqwest::StatusCode::NOT_FOUND) => return None,
        Err(e) => panic!("device {id}: {e}"),
    };
    let envelope = client.device_desired(&dev(id)).await.unwrap();
    let v =
        verify_desired_state(&site.trust(), &envelope.to_json(), &dev(id), None, now()).unwrap();
    assert_eq!(v.generation, d.generation);
    v.apps
        .iter()
        .find(|a| a.app.as_str() == "model")
        .map(|a| (v.generation, a.release_digest.clone()))
}

#[tokio::test]
async fn a_release_published_to_a_channel_reaches_the_following_group_in_waves_and_later_devices() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    register(&run, &client, &["cam-1", "cam-2", "cam-3", "cam-4"]).await;
    cameras_following(&client, vec![1, 2], Supersede::Queue).await;
    // Following a channel with no release yet starts nothing.
    assert!(client.rollouts().await.unwrap().is_empty());

    let published = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    assert_eq!(
        published.rollouts.len(),
        1,
        "one rollout, started by the server"
    );
    let id = published.rollouts[0];
    let v1 = published.release.digest.clone();
    let r = client.rollout(id).await.unwrap();
    assert_eq!(
        r.waves.iter().map(|w| w.devices).collect::<Vec<_>>(),
        [1, 2, 1]
    );
    assert_eq!(r.counts.sent, 1, "the canary only");

    // Devices commit what they were sent; waves follow with no command.
    let mut committed_ids = Vec::new();
    for wave in 0..3 {
        // The engine steps after the report is in memory: wait for the wave.
        let sent: Vec<_> = eventually("next wave out", || async {
            let r = client.rollout(id).await.unwrap();
            let sent: Vec<_> = r
                .devices
                .iter()
                .filter(|p| p.state == ProgressState::Sent)
                .map(|p| p.device.clone())
                .collect();
            (!sent.is_empty()).then_some(sent)
        })
        .await;
        assert_eq!(sent.len(), [1, 2, 1][wave]);
        for d in &sent {
            let (generation, digest) = desired_model(&site, &client, d.as_str()).await.unwrap();
            assert_eq!(digest, v1);
            run.send(committed(d.as_str(), generation, "model", &v1))
                .await;
            committed_ids.push(d.clone());
        }
        let n = committed_ids.len();
        eventually("wave settled", || async {
            (client.rollout(id).await.unwrap().counts.committed == n).then_some(())
        })
        .await;
    }
    eventually("rollout completed", || async {
        (client.rollout(id).await.unwrap().state == RolloutState::Completed).then_some(())
    })
    .await;
    let g = client.group(&group("cameras")).await.unwrap();
    assert_eq!(
        g.group.follows.values().next().unwrap().current,
        Some(v1.clone())
    );

    // A device that enrolls afterwards gets v1 with nobody acting.
    register(&run, &client, &["cam-5"]).await;
    let (_, digest) = eventually("late device given v1", || async {
        desired_model(&site, &client, "cam-5").await
    })
    .await;
    assert_eq!(digest, v1);
    // So does one relabelled into the group.
    run.send(hello("lab-1", &[("role", "lab")])).await;
    eventually("lab-1 registered", || async {
        client.device(&dev("lab-1")).await.ok().map(|_| ())
    })
    .await;
    assert_eq!(desired_model(&site, &client, "lab-1").await, None);
    client
        .set_labels(
            &dev("lab-1"),
            &fleet_control_plane::api::types::SetLabels {
                set: [("role".to_owned(), "camera".to_owned())].into(),
                remove: vec![],
            },
        )
        .await
        .unwrap();
    let (_, digest) = desired_model(&site, &client, "lab-1").await.unwrap();
    assert_eq!(digest, v1);
    // No device was sent two different states for one generation.
    let mut seen = std::collections::BTreeMap::new();
    for (device, envelope) in publisher.sent() {
        let v = verify_desired_state(&site.trust(), &envelope, &device, None, now()).unwrap();
        let previous = seen.insert((device.clone(), v.generation), envelope.clone());
        assert!(
            previous.is_none_or(|p| p == envelope),
            "{device} generation {}",
            v.generation
        );
    }
    assert_eq!(
        client.rollouts().await.unwrap().len(),
        1,
        "no rollout for late devices"
    );
    run.stop().await;
}

/// Commits every device rollout `id` sent `digest` to, wave after wave,
/// until the rollout completed.
async fn drive(run: &Running, client: &Client, site: &Site, id: u64, digest: &Digest) {
    loop {
        let r = client.rollout(id).await.unwrap();
        if r.state == RolloutState::Completed {
            return;
        }
        assert_eq!(r.state, RolloutState::Running);
        for p in r.devices.iter().filter(|p| p.state == ProgressState::Sent) {
            let (generation, got) = desired_model(site, client, p.device.as_str())
                .await
                .unwrap();
            assert_eq!(&got, digest);
            run.send(committed(p.device.as_str(), generation, "model", digest))
                .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_newer_release_queues_behind_the_running_rollout_or_replaces_it_by_policy() {
    for supersede in [Supersede::Queue, Supersede::Replace] {
        let site = Site::new();
        let run = start(site.config(), recording()).await;
        let client = run.client(run.token.as_deref().unwrap());
        register(&run, &client, &["cam-1", "cam-2"]).await;
        cameras_following(&client, vec![1], supersede).await;
        let first = client
            .publish_release(&stable(), site.release("model", "v1"))
            .await
            .unwrap();
        let v1 = first.release.digest.clone();
        let second = client
            .publish_release(&stable(), site.release("model", "v2"))
            .await
            .unwrap();
        let v2 = second.release.digest.clone();
        let r1 = first.rollouts[0];
        match supersede {
            Supersede::Queue => {
                assert!(second.rollouts.is_empty());
                assert_eq!(second.queued, vec![group("cameras")]);
                assert_eq!(
                    client.rollout(r1).await.unwrap().state,
                    RolloutState::Running
                );
                // The running rollout finishes; then v2 starts on its own.
                drive(&run, &client, &site, r1, &v1).await;
                let all = eventually("v2 rollout started", || async {
                    let all = client.rollouts().await.unwrap();
                    (all.len() == 2).then_some(all)
                })
                .await;
                assert_eq!(all[0].state, RolloutState::Completed);
                assert_eq!(all[1].release_digest, v2);
                assert_eq!(all[1].state, RolloutState::Running);
            }
            Supersede::Replace => {
                assert_eq!(second.rollouts.len(), 1);
                assert_eq!(
                    client.rollout(r1).await.unwrap().state,
                    RolloutState::Aborted
                );
                let r2 = client.rollout(second.rollouts[0]).await.unwrap();
                assert_eq!(r2.release_digest, v2);
                assert_eq!(r2.state, RolloutState::Running);
            }
        }
        run.stop().await;
    }
}

/// A report that `app` tried `target` and rolled back to `running`.
fn rolled_back(id: &str, generation: u64, running: &Digest, target: &Digest) -> StatusReport {
    let mut r = committed(id, generation, "model", running);
    let app = &mut r.apps[0];
    app.phase = Phase::RolledBack {
        reason: ErrorCode::CrashLoop,
    };
    app.target = Some(ReleaseRef {
        version: "v2".into(),
        release_digest: target.clone(),
    });
    r
}

fn guarded(waves: Vec<usize>) -> FollowChannel {
    FollowChannel {
        app: AppName::new("model").unwrap(),
        channel: stable(),
        waves: waves.into_iter().map(WaveSize::Count).collect(),
        supersede: Supersede::Queue,
        safety: Safety {
            wave_failures: Some(Threshold::Count(0)),
            total_failures: None,
            on_halt: HaltRollback::Failed,
            wave_deadline_secs: None,
            bake_secs: None,
            max_restarts: None,
            gates: Default::default(),
            promql: None,
            max_unavailable: None,
        },
    }
}

/// Every (device, generation) was published with one content only;
/// returns the release digests of `model` each device was ever sent.
fn sent_models(site: &Site, sent: &[(DeviceId, Vec<u8>)]) -> BTreeMap<DeviceId, Vec<Digest>> {
    let mut by_generation = BTreeMap::new();
    let mut models: BTreeMap<DeviceId, Vec<Digest>> = BTreeMap::new();
    for (device, envelope) in sent {
        let v = verify_desired_state(&site.trust(), envelope, device, None, now()).unwrap();
        let before = by_generation.insert((device.clone(), v.generation), envelope.clone());
        assert!(
            before.is_none_or(|b| &b == envelope),
            "{device} was sent two states for generation {}",
            v.generation
        );
        if let Some(a) = v.apps.iter().find(|a| a.app.as_str() == "model") {
            models
                .entry(device.clone())
                .or_default()
                .push(a.release_digest.clone());
        }
    }
    models
}

#[tokio::test]
async fn a_failing_canary_halts_the_rollout_is_rolled_back_and_no_other_device_receives_it() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    register(&run, &client, &["cam-1", "cam-2", "cam-3", "cam-4"]).await;
    cameras_group(&client).await;
    client
        .follow(&group("cameras"), &guarded(vec![1]))
        .await
        .unwrap();
    let first = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let v1 = first.release.digest.clone();
    drive(&run, &client, &site, first.rollouts[0], &v1).await;

    let second = client
        .publish_release(&stable(), site.release("model", "v2"))
        .await
        .unwrap();
    let v2 = second.release.digest.clone();
    let id = second.rollouts[0];
    let r = client.rollout(id).await.unwrap();
    let canary = r
        .devices
        .iter()
        .find(|p| p.state == ProgressState::Sent)
        .unwrap()
        .device
        .clone();
    let (generation, digest) = desired_model(&site, &client, canary.as_str())
        .await
        .unwrap();
    assert_eq!(digest, v2);
    run.send(rolled_back(canary.as_str(), generation, &v1, &v2))
        .await;
    let halted = eventually("rollout halted", || async {
        let r = client.rollout(id).await.unwrap();
        (r.state == RolloutState::Halted).then_some(r)
    })
    .await;
    assert_eq!(halted.counts.failed, 1);
    assert_eq!(halted.counts.waiting, 3);
    // The canary is given v1 back, in a newer generation.
    let (back, digest) = desired_model(&site, &client, canary.as_str())
        .await
        .unwrap();
    assert_eq!(digest, v1);
    assert!(back > generation);
    let events = client.events(50).await.unwrap();
    let halt = events
        .iter()
        .find(|e| e.kind == EventKind::RolloutHalted)
        .unwrap();
    assert!(
        halt.message.contains("wave 1: 1 of 1 devices failed"),
        "{}",
        halt.message
    );
    // Reports after the halt start nothing.
    run.send(committed(canary.as_str(), back, "model", &v1))
        .await;
    eventually("canary back on v1", || async {
        let d = client.device(&canary).await.unwrap();
        d.device
            .last_status
            .as_ref()?
            .generation
            .filter(|g| *g == back)
    })
    .await;
    let models = sent_models(&site, &publisher.sent());
    for (device, digests) in &models {
        if device == &canary {
            assert_eq!(digests, &[v1.clone(), v2.clone(), v1.clone()]);
        } else {
            assert_eq!(
                digests,
                std::slice::from_ref(&v1),
                "{device} never received v2"
            );
        }
    }
    assert_eq!(models.len(), 4);
    assert_eq!(
        client.rollout(id).await.unwrap().state,
        RolloutState::Halted
    );
    // The group's current release stays v1: a device joining gets v1.
    register(&run, &client, &["cam-5"]).await;
    let (_, digest) = eventually("late device given v1", || async {
        desired_model(&site, &client, "cam-5").await
    })
    .await;
    assert_eq!(digest, v1);
    run.stop().await;
}

#[tokio::test]
async fn a_server_restart_mid_wave_continues_the_channel_rollout_without_skips_or_duplicates() {
    let site = Site::new();
    let first_publisher = recording();
    let run = start(site.config(), first_publisher.clone()).await;
    let token = run.token.clone().unwrap();
    let client = run.client(&token);
    register(&run, &client, &["cam-1", "cam-2", "cam-3"]).await;
    cameras_group(&client).await;
    client
        .follow(&group("cameras"), &guarded(vec![1, 1]))
        .await
        .unwrap();
    let published = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let v1 = published.release.digest.clone();
    let id = published.rollouts[0];
    // The canary commits: wave 2 goes out; then the server stops mid-wave.
    let canary = client.rollout(id).await.unwrap().devices[0].device.clone();
    let (generation, _) = desired_model(&site, &client, canary.as_str())
        .await
        .unwrap();
    run.send(committed(canary.as_str(), generation, "model", &v1))
        .await;
    eventually("wave 2 out", || async {
        let r = client.rollout(id).await.unwrap();
        (r.waves[1].state == WaveState::Active).then_some(())
    })
    .await;
    run.stop().await;

    let second_publisher = recording();
    let run = start(site.config(), second_publisher.clone()).await;
    let client = run.client(&token);
    let r = client.rollout(id).await.unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.waves[1].state, WaveState::Active);
    assert_eq!(r.waves[2].state, WaveState::Pending);
    drive(&run, &client, &site, id, &v1).await;

    let mut all = first_publisher.sent();
    all.extend(second_publisher.sent());
    let models = sent_models(&site, &all);
    assert_eq!(models.len(), 3, "no device skipped");
    for (device, digests) in &models {
        assert!(digests.iter().all(|d| d == &v1), "{device}");
    }
    let g = client.group(&group("cameras")).await.unwrap();
    assert_eq!(g.group.follows.values().next().unwrap().current, Some(v1));
    assert_eq!(client.rollouts().await.unwrap().len(), 1);
    run.stop().await;
}

/// A device's first report as a Jetson with `soc` and L4T `l4t`.
fn jetson(id: &str, soc: &str, l4t: &str) -> StatusReport {
    let mut r = hello(id, &[("role", "camera")]);
    if let Some(info) = r.info.as_mut() {
        info.soc = Some(soc.into());
        info.l4t_version = Some(l4t.into());
        info.cdi_devices = vec!["nvidia.com/gpu=0".into(), "nvidia.com/gpu=all".into()];
    }
    r
}

#[tokio::test]
async fn incompatible_devices_are_left_out_of_the_waves_and_shown_with_the_reason() {
    use fleet_control_plane::sign;
    use fleet_protocol::requires::{Requirements, Soc, VersionRange};
    use fleet_protocol::{Release, SCHEMA_VERSION};
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    run.send(jetson("orin-1", "t234", "R36.4.0")).await;
    run.send(jetson("orin-old", "t234", "R35.4.1")).await;
    run.send(jetson("xavier", "t194", "R36.4.0")).await;
    // An Orin whose host describes no GPU (no CDI spec, no CSV files).
    let mut no_gpu = jetson("orin-nogpu", "t234", "R36.4.0");
    if let Some(info) = no_gpu.info.as_mut() {
        info.cdi_devices.clear();
    }
    run.send(no_gpu).await;
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 4).then_some(())
    })
    .await;
    cameras_following(&client, vec![], Supersede::Queue).await;
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new("model").unwrap(),
        version: "v1".into(),
        repository: "registry.local:5000/edge/model".into(),
        manifest_digest: Digest::of(b"model v1 cuda"),
        runtime: fleet_protocol::message::RuntimeSettings {
            requires: Requirements {
                l4t: Some(VersionRange::parse(">=36.3, <37").unwrap()),
                cuda: None,
                soc: Some(Soc::parse("t234").unwrap()),
            },
            gpu: Some(fleet_protocol::message::GpuRequest::All),
            ..Default::default()
        },
    };
    let envelope = sign::sign_release(
        "test",
        &serde_json::to_vec(&release).unwrap(),
        &site.release_key(),
    )
    .unwrap()
    .to_json();
    let published = client.publish_release(&stable(), envelope).await.unwrap();
    let r = client.rollout(published.rollouts[0]).await.unwrap();
    assert_eq!(r.counts.total, 1);
    assert_eq!(r.devices[0].device, dev("orin-1"));
    let mut excluded: Vec<(String, String)> = r
        .excluded
        .iter()
        .map(|e| (e.device.to_string(), e.reason.clone()))
        .collect();
    excluded.sort();
    assert_eq!(
        excluded,
        [
            (
                "orin-nogpu".to_owned(),
                "incompatible: requires device nvidia.com/gpu=all, device has none".to_owned()
            ),
            (
                "orin-old".to_owned(),
                "incompatible: requires l4t >=36.3, <37, device has R35.4.1".to_owned()
            ),
            (
                "xavier".to_owned(),
                "incompatible: requires soc t234, device has t194".to_owned()
            ),
        ]
    );
    let v1 = published.release.digest.clone();
    drive(&run, &client, &site, r.id, &v1).await;
    // Completed without them; a compatible device joining gets v1, an
    // incompatible one does not.
    run.send(jetson("orin-2", "t234", "R36.3.0")).await;
    run.send(jetson("nano", "t210", "R32.7.4")).await;
    let (_, got) = eventually("orin-2 given v1", || async {
        desired_model(&site, &client, "orin-2").await
    })
    .await;
    assert_eq!(got, v1);
    eventually("nano registered", || async {
        client.device(&dev("nano")).await.ok().map(|_| ())
    })
    .await;
    assert_eq!(desired_model(&site, &client, "nano").await, None);
    let sent = sent_models(&site, &publisher.sent());
    assert!(!sent.contains_key(&dev("orin-old")));
    assert!(!sent.contains_key(&dev("xavier")));
    assert!(!sent.contains_key(&dev("orin-nogpu")));
    run.stop().await;
}

#[tokio::test]
async fn an_offline_device_is_pending_at_the_wave_deadline_and_the_next_wave_goes_out() {
    let site = Site::new();
    let mut config = site.config();
    config.desired.renew_check_secs = 1;
    let run = start(config, recording()).await;
    let client = run.client(run.token.as_deref().unwrap());
    register(&run, &client, &["cam-1", "cam-2"]).await;
    cameras_group(&client).await;
    let mut follow = guarded(vec![1]);
    follow.safety.wave_deadline_secs = Some(0);
    client.follow(&group("cameras"), &follow).await.unwrap();
    let published = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let v1 = published.release.digest.clone();
    let id = published.rollouts[0];
    // cam-1 (the canary) never reports: the deadline closes its wave and
    // cam-2 is given v1 with nobody acting.
    let (generation, digest) = eventually("second wave out", || async {
        desired_model(&site, &client, "cam-2").await
    })
    .await;
    assert_eq!(digest, v1);
    run.send(committed("cam-2", generation, "model", &v1)).await;
    let r = eventually("rollout completed", || async {
        let r = client.rollout(id).await.unwrap();
        (r.state == RolloutState::Completed).then_some(r)
    })
    .await;
    assert_eq!(r.counts.committed, 1);
    assert_eq!(r.counts.sent, 1, "cam-1 is pending");
    assert_eq!(r.counts.failed, 0);
    // cam-1 returns and commits: counted, nothing else sent.
    let (g1, d1) = desired_model(&site, &client, "cam-1").await.unwrap();
    assert_eq!(d1, v1);
    run.send(committed("cam-1", g1, "model", &v1)).await;
    eventually("cam-1 counted", || async {
        (client.rollout(id).await.unwrap().counts.committed == 2).then_some(())
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn a_canary_that_fails_during_the_bake_halts_before_the_next_wave_and_a_quiet_one_promotes() {
    let site = Site::new();
    let mut config = site.config();
    config.desired.renew_check_secs = 1;
    let publisher = recording();
    let run = start(config, publisher.clone()).await;
    let client = run.client(run.token.as_deref().unwrap());
    register(&run, &client, &["cam-1", "cam-2"]).await;
    cameras_group(&client).await;
    let mut follow = guarded(vec![1]);
    follow.safety.bake_secs = Some(2);
    client.follow(&group("cameras"), &follow).await.unwrap();

    // v1: the canary commits and stays healthy through the bake; then the
    // second wave goes out on the server's own tick.
    let first = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let v1 = first.release.digest.clone();
    let id = first.rollouts[0];
    let canary = |r: &fleet_control_plane::fleet::RolloutView| {
        r.devices
            .iter()
            .find(|p| p.wave == 0)
            .unwrap()
            .device
            .to_string()
    };
    let r = client.rollout(id).await.unwrap();
    let (c, other) = if canary(&r) == "cam-1" {
        ("cam-1", "cam-2")
    } else {
        ("cam-2", "cam-1")
    };
    let (g, _) = desired_model(&site, &client, c).await.unwrap();
    run.send(committed(c, g, "model", &v1)).await;
    let r = eventually("canary wave baking", || async {
        let r = client.rollout(id).await.unwrap();
        r.waves[0].settled_at.map(|_| r)
    })
    .await;
    assert_eq!(r.waves[1].state, WaveState::Pending, "not before the bake");
    assert_eq!(desired_model(&site, &client, other).await, None);
    let (g2, d2) = eventually("second wave out after the bake", || async {
        desired_model(&site, &client, other).await
    })
    .await;
    assert_eq!(d2, v1);
    run.send(committed(other, g2, "model", &v1)).await;
    eventually("v1 completed", || async {
        (client.rollout(id).await.unwrap().state == RolloutState::Completed).then_some(())
    })
    .await;

    // v2: the canary commits, then crash-loops back to v1 during the bake.
    let second = client
        .publish_release(&stable(), site.release("model", "v2"))
        .await
        .unwrap();
    let v2 = second.release.digest.clone();
    let id = second.rollouts[0];
    let c = canary(&client.rollout(id).await.unwrap());
    let other = if c == "cam-1" { "cam-2" } else { "cam-1" };
    let (g, d) = desired_model(&site, &client, &c).await.unwrap();
    assert_eq!(d, v2);
    run.send(committed(&c, g, "model", &v2)).await;
    eventually("v2 canary baking", || async {
        client.rollout(id).await.unwrap().waves[0].settled_at
    })
    .await;
    run.send(rolled_back(&c, g, &v1, &v2)).await;
    let r = eventually("halted during the bake", || async {
        let r = client.rollout(id).await.unwrap();
        (r.state == RolloutState::Halted).then_some(r)
    })
    .await;
    assert_eq!(r.waves[1].state, WaveState::Pending);
    assert_eq!(
        r.halt_reason.as_deref(),
        Some("wave 1: 1 of 1 devices failed (tolerated: 0)")
    );
    let history = fleet_control_plane::cli::render::history(std::slice::from_ref(&r));
    assert!(
        history.contains("halted: wave 1: 1 of 1 devices failed (tolerated: 0)"),
        "{history}"
    );
    // Past the bake time: still nobody else was sent v2.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let sent = sent_models(&site, &publisher.sent());
    assert!(
        !sent[&dev(other)].contains(&v2),
        "{other} never received v2: {sent:?}"
    );
    run.stop().await;
}
