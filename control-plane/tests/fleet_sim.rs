//! A simulated fleet (250 devices, `FLEET_SIM_DEVICES` for more;
//! `bench/rollout.sh` runs 1,000) against the real server: every
//! desired state the server publishes is verified as a device would and
//! answered with the device's report (committed, or rolled back for the
//! devices set to fail). A channel release goes out in five waves with 2% of
//! the devices failing; the rollout must complete or halt exactly where its
//! thresholds say, and no device of a later wave may ever receive it.
//!
//! `rollout_overhead` (ignored; `bench/rollout.sh` runs it in release mode)
//! measures the orchestration overhead of waves over the devices' own
//! apply time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use fleet_control_plane::api::types::FollowChannel;
use fleet_control_plane::client::Client;
use fleet_control_plane::fleet::ports::{DesiredPublisher, Inbound, PortError};
use fleet_control_plane::fleet::rollout::ProgressState;
use fleet_control_plane::fleet::rollouts::RolloutView;
use fleet_control_plane::store::{
    Channel, HaltRollback, RolloutState, Safety, Supersede, Threshold, WaveSize,
};
use fleet_protocol::message::ReleaseRef;
use fleet_protocol::{
    AppName, DeviceId, Digest, ErrorCode, GroupName, Phase, StatusReport, TrustedRoot,
    verify_desired_state,
};
use tokio::sync::mpsc;

/// Devices simulated: `FLEET_SIM_DEVICES`, else 250 (`bench/rollout.sh`
/// runs 1,000 in release mode; the test suite a quarter of that).
fn devices() -> usize {
    std::env::var("FLEET_SIM_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 100)
        .unwrap_or(250)
}

fn id(i: usize) -> String {
    format!("dev-{i:04}")
}

/// A desired state a device was sent: generation and `model` release.
type Sent = (u64, Option<Digest>);

/// Devices answering every desired state they are sent. Those in `failing`
/// roll back any release not in `good` (reporting a crash loop); everything
/// else commits, after `apply` (the simulated download and probation).
struct SimFleet {
    trust: TrustedRoot,
    inbound: OnceLock<mpsc::Sender<Inbound>>,
    failing: BTreeSet<DeviceId>,
    good: Mutex<BTreeSet<Digest>>,
    apply: Duration,
    /// Per device: the `model` release of each desired state, in order,
    /// and what each generation carried (one content per generation).
    sent: Mutex<BTreeMap<DeviceId, Vec<Sent>>>,
    /// Commits of `model` reported: when, per release.
    commits: Mutex<BTreeMap<Digest, Vec<Instant>>>,
    /// What each device runs (as it reports).
    running: Mutex<BTreeMap<DeviceId, Digest>>,
}

impl SimFleet {
    fn new(trust: TrustedRoot, failing: BTreeSet<DeviceId>, apply: Duration) -> Arc<Self> {
        Arc::new(SimFleet {
            trust,
            inbound: OnceLock::new(),
            failing,
            good: Mutex::new(BTreeSet::new()),
            apply,
            sent: Mutex::new(BTreeMap::new()),
            commits: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
        })
    }

    fn answer(&self, device: &DeviceId, generation: u64, model: Option<Digest>) -> StatusReport {
        let running = self.running.lock().unwrap().get(device).cloned();
        let mut report = StatusReport {
            generation: Some(generation),
            info: None,
            ..hello(device.as_str(), &[])
        };
        let Some(target) = model else {
            return report;
        };
        let fails = self.failing.contains(device) && !self.good.lock().unwrap().contains(&target);
        let mut app = committed(device.as_str(), generation, "model", &target).apps[0].clone();
        if fails {
            app.phase = Phase::RolledBack {
                reason: ErrorCode::CrashLoop,
            };
            app.running = running.map(|d| ReleaseRef {
                version: "before".into(),
                release_digest: d,
            });
            app.target = Some(ReleaseRef {
                version: "bad".into(),
                release_digest: target,
            });
        } else {
            self.running
                .lock()
                .unwrap()
                .insert(device.clone(), target.clone());
            self.commits
                .lock()
                .unwrap()
                .entry(target)
                .or_default()
                .push(Instant::now());
        }
        report.apps = vec![app];
        report
    }

    /// The `model` releases each device was sent, in order.
    fn models(&self) -> BTreeMap<DeviceId, Vec<Digest>> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(d, s)| (d.clone(), s.iter().filter_map(|(_, m)| m.clone()).collect()))
            .collect()
    }

    fn committed_count(&self, release: &Digest) -> usize {
        self.commits
            .lock()
            .unwrap()
            .get(release)
            .map_or(0, Vec::len)
    }
}

#[async_trait::async_trait]
impl DesiredPublisher for SimFleet {
    async fn publish_desired(&self, device: &DeviceId, bytes: Vec<u8>) -> Result<(), PortError> {
        let v = verify_desired_state(&self.trust, &bytes, device, None, now())
            .expect("the server sent a desired state a device would refuse");
        let model = v
            .apps
            .iter()
            .find(|a| a.app.as_str() == "model")
            .map(|a| a.release_digest.clone());
        {
            let mut sent = self.sent.lock().unwrap();
            let seen = sent.entry(device.clone()).or_default();
            if let Some((_, before)) = seen.iter().find(|(g, _)| *g == v.generation) {
                assert_eq!(
                    before, &model,
                    "{device}: generation {} sent with two contents",
                    v.generation
                );
                return Ok(());
            }
            seen.push((v.generation, model.clone()));
        }
        let report = self.answer(device, v.generation, model);
        let inbound = self.inbound.get().expect("inbound set at start").clone();
        let apply = self.apply;
        tokio::spawn(async move {
            if !apply.is_zero() {
                tokio::time::sleep(apply).await;
            }
            let _ = inbound.send(Inbound::Status(report)).await;
        });
        Ok(())
    }
}

struct Sim {
    site: Site,
    run: Running,
    client: Client,
    fleet: Arc<SimFleet>,
}

/// A server, the registered cameras (device `i` fails when `fails(i)`),
/// all on release v0 of `model` through a one-wave channel rollout.
async fn fleet_on_v0(fails: impl Fn(usize) -> bool, apply: Duration) -> Sim {
    let site = Site::new();
    let failing = (0..devices())
        .filter(|i| fails(*i))
        .map(|i| dev(&id(i)))
        .collect();
    let fleet = SimFleet::new(site.trust(), failing, apply);
    let run = start(site.config(), fleet.clone()).await;
    fleet.inbound.set(run.inbound.clone()).ok().unwrap();
    let client = run.client(run.token.as_deref().unwrap());
    for i in 0..devices() {
        run.send(hello(&id(i), &[("role", "camera")])).await;
    }
    eventually("the devices registered", || async {
        (client.devices().await.unwrap().len() == devices()).then_some(())
    })
    .await;
    cameras_group(&client).await;
    follow(&client, vec![], Safety::default()).await;
    // v0 is good everywhere; v0's digest is the one the devices are sent.
    let v0_bytes = site.release("model", "v0");
    let v0_digest = fleet_protocol::verify_release(&site.trust(), &v0_bytes, now())
        .unwrap()
        .payload_digest()
        .clone();
    fleet.good.lock().unwrap().insert(v0_digest.clone());
    let v0 = client.publish_release(&stable(), v0_bytes).await.unwrap();
    assert_eq!(v0.release.digest, v0_digest);
    let r = until_settled(&client, v0.rollouts[0]).await;
    assert_eq!(r.state, RolloutState::Completed, "v0 everywhere");
    assert_eq!(fleet.committed_count(&v0_digest), devices());
    Sim {
        site,
        run,
        client,
        fleet,
    }
}

fn stable() -> Channel {
    Channel::new("stable").unwrap()
}

async fn follow(client: &Client, waves: Vec<WaveSize>, safety: Safety) {
    client
        .follow(
            &GroupName::new("cameras").unwrap(),
            &FollowChannel {
                app: AppName::new("model").unwrap(),
                channel: stable(),
                waves,
                supersede: Supersede::Queue,
                safety,
            },
        )
        .await
        .unwrap();
}

/// The rollout once it is no longer running.
async fn until_settled(client: &Client, rollout: u64) -> RolloutView {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = client.rollout(rollout).await.unwrap();
        if r.state != RolloutState::Running {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {rollout} still running: {:?}",
            r.counts
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 10 devices, then 10%, 25%, 50% and the rest: five waves.
fn five_waves() -> Vec<WaveSize> {
    vec![
        WaveSize::Count(10),
        WaveSize::Percent(10),
        WaveSize::Percent(25),
        WaveSize::Percent(50),
    ]
}

/// Where the policy says the rollout stops: the first wave (index) whose
/// failures cross the wave threshold, or whose failures so far cross the
/// total threshold; `None`: it completes.
fn expected_halt(r: &RolloutView, failing: &BTreeSet<DeviceId>, safety: &Safety) -> Option<usize> {
    let mut so_far = 0;
    for wave in 0..r.waves.len() {
        let members: Vec<_> = r.devices.iter().filter(|p| p.wave == wave).collect();
        let failed = members
            .iter()
            .filter(|p| failing.contains(&p.device))
            .count();
        so_far += failed;
        let wave_crossed = safety
            .wave_failures
            .is_some_and(|t| t.crossed(failed, members.len()));
        let total_crossed = safety
            .total_failures
            .is_some_and(|t| t.crossed(so_far, r.devices.len()));
        if wave_crossed || total_crossed {
            return Some(wave);
        }
    }
    None
}

/// Publishes v1 to the channel with `safety` over five waves and checks
/// that the rollout ends exactly as `safety` says for 2% failing devices.
async fn five_waves_with_two_percent_failing(safety: Safety, expect_halt: bool) {
    // 2%: every 50th device, none of them among the first 17 (the canary
    // wave passes, so the later thresholds decide).
    let sim = fleet_on_v0(|i| i % 50 == 17, Duration::ZERO).await;
    let Sim {
        site,
        client,
        fleet,
        ..
    } = &sim;
    assert_eq!(fleet.failing.len(), devices() / 50);
    follow(client, five_waves(), safety.clone()).await;
    let published = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let v1_digest = published.release.digest.clone();
    let r = until_settled(client, published.rollouts[0]).await;
    assert_eq!(r.waves.len(), 5, "five waves: {:?}", r.waves);
    let halt_at = expected_halt(&r, &fleet.failing, &safety);
    assert_eq!(halt_at.is_some(), expect_halt, "the test's own expectation");
    let models = fleet.models();
    match halt_at {
        None => {
            assert_eq!(r.state, RolloutState::Completed, "{:?}", r.halt_reason);
            assert_eq!(
                fleet.committed_count(&v1_digest),
                devices() - devices() / 50
            );
            let failed: BTreeSet<_> = r
                .devices
                .iter()
                .filter(|p| p.state == ProgressState::Failed)
                .map(|p| p.device.clone())
                .collect();
            assert_eq!(
                &failed, &fleet.failing,
                "exactly the failing devices failed"
            );
        }
        Some(wave) => {
            assert_eq!(r.state, RolloutState::Halted, "halts at wave {wave}");
            assert!(r.halt_reason.is_some());
            for p in r.devices.iter().filter(|p| p.wave > wave) {
                assert!(
                    !models[&p.device].contains(&v1_digest),
                    "{} of wave {} received the release after the halt at wave {wave}",
                    p.device,
                    p.wave
                );
            }
            // Every failed device got its previous release back, also those
            // of the last wave that failed after the halt.
            let v0 = models[&dev(&id(0))][0].clone();
            for d in fleet
                .failing
                .iter()
                .filter(|d| r.devices.iter().any(|p| &p.device == *d && p.wave <= wave))
            {
                eventually("the failed device given v0 back", || async {
                    (fleet.models()[d].last() == Some(&v0)).then_some(())
                })
                .await;
            }
        }
    }
    sim.run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_in_five_waves_complete_when_two_percent_failing_is_tolerated() {
    five_waves_with_two_percent_failing(
        Safety {
            wave_failures: Some(Threshold::Percent(5)),
            on_halt: HaltRollback::Failed,
            ..Safety::default()
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_in_five_waves_halt_where_the_total_threshold_is_crossed() {
    five_waves_with_two_percent_failing(
        Safety {
            total_failures: Some(Threshold::Count(devices() / 100)),
            on_halt: HaltRollback::Failed,
            ..Safety::default()
        },
        true,
    )
    .await;
}

/// Orchestration overhead: the time from publishing a release to a channel
/// to the last device committed, in five waves with no bake time,
/// against five times the time the same devices take to apply a desired
/// state sent to all of them at once (each device takes `APPLY`). Prints
/// both; `bench/rollout.sh` writes the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: bench/rollout.sh"]
async fn rollout_overhead() {
    const APPLY: Duration = Duration::from_secs(2);
    let sim = fleet_on_v0(|_| false, APPLY).await;
    let Sim {
        site,
        client,
        fleet,
        ..
    } = &sim;

    // Baseline: one wave, every device at once.
    follow(client, vec![], Safety::default()).await;
    let start = Instant::now();
    let published = client
        .publish_release(&stable(), site.release("model", "v1"))
        .await
        .unwrap();
    let r = until_settled(client, published.rollouts[0]).await;
    assert_eq!(r.state, RolloutState::Completed);
    let one_wave = last_commit(fleet, &published.release.digest) - start;

    // Five waves, no bake time.
    follow(client, five_waves(), Safety::default()).await;
    let start = Instant::now();
    let published = client
        .publish_release(&stable(), site.release("model", "v2"))
        .await
        .unwrap();
    let r = until_settled(client, published.rollouts[0]).await;
    assert_eq!(r.state, RolloutState::Completed);
    assert_eq!(r.waves.len(), 5);
    let five = last_commit(fleet, &published.release.digest) - start;

    let floor = APPLY * 5;
    let overhead = five.as_secs_f64() / one_wave.as_secs_f64().max(f64::EPSILON) / 5.0 - 1.0;
    println!(
        "rollout_overhead devices={} apply_s={:.1} one_wave_s={:.3} five_waves_s={:.3} \
         five_x_one_wave_s={:.3} overhead_vs_five_x_one_wave={:.1}% overhead_vs_apply_floor={:.1}%",
        devices(),
        APPLY.as_secs_f64(),
        one_wave.as_secs_f64(),
        five.as_secs_f64(),
        one_wave.as_secs_f64() * 5.0,
        overhead * 100.0,
        (five.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0,
    );
    sim.run.stop().await;
}

fn last_commit(fleet: &SimFleet, release: &Digest) -> Instant {
    let commits = fleet.commits.lock().unwrap();
    let times = &commits[release];
    assert_eq!(times.len(), devices());
    *times.iter().max().unwrap()
}
