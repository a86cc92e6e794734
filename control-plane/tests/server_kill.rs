//! `kill -9` of the real `fleet-server` process (embedded broker, sled
//! store) in the middle of a channel rollout's wave. Devices are MQTT
//! clients with device certificates that record every desired state they
//! receive. After the restart the rollout goes on from where it was: no
//! device receives two contents for one generation, none is skipped, and a
//! device that was offline through the kill (the embedded broker's retained
//! messages died with the process) still receives its desired state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod served;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fleet_control_plane::api::types::FollowChannel;
use fleet_control_plane::client::Client;
use fleet_control_plane::config::Config;
use fleet_control_plane::pki::FleetCa;
use fleet_control_plane::store::{
    Channel, RolloutState, Safety, SledStore, Supersede, WaveSize, WaveState,
};
use fleet_protocol::message::encode;
use fleet_protocol::topic::Topic;
use fleet_protocol::{AppName, Digest, GroupName, TopicScheme, TrustedRoot, verify_desired_state};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use served::free_port;
use tokio::task::JoinHandle;

/// `fleet-server` as a child process.
struct ServerProcess {
    child: Child,
    config_file: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl ServerProcess {
    async fn start(config_file: &std::path::Path, url: &str, ca: &str, run: u32) -> Self {
        let log = config_file.with_file_name(format!("server-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
            .args(["--config", config_file.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let health = format!("{url}/healthz");
        let http = common::http_client(Some(ca));
        eventually("the server answers", || {
            let (health, http) = (health.clone(), http.clone());
            async move {
                http.get(&health)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        ServerProcess {
            child,
            config_file: config_file.to_owned(),
            log,
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.config_file;
    }
}

/// Every desired state a device received: generation → exact bytes (a
/// second, different content for a generation fails the test at once).
type Received = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// A device as an MQTT client: subscribes to its desired state at every
/// connection (clean session), records what arrives, and sends its last
/// status again at every connection (as the agent's link does).
struct Device {
    id: String,
    client: AsyncClient,
    task: JoinHandle<()>,
    received: Received,
    last_status: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Device {
    fn connect(broker: u16, ca: &FleetCa, trust: TrustedRoot, id: &str) -> Device {
        let scheme = TopicScheme::default();
        let desired_topic = scheme.render(&Topic::Desired(dev(id)));
        let mut o = MqttOptions::new(id, "127.0.0.1", broker);
        let identity = common::device_identity(ca, id, 3600);
        let tls =
            fleet_agent::link::tls::client_config(ca.cert_pem(), false, Some(&identity)).unwrap();
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ))
        .set_credentials(id, "")
        .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let received: Received = Arc::default();
        let last_status: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let (sub, rec, device) = (client.clone(), received.clone(), dev(id));
        let (status_topic, again) = (scheme.render(&Topic::Status(dev(id))), last_status.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe(desired_topic.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                        let last = again.lock().unwrap().clone();
                        if let Some(report) = last {
                            sub.publish(status_topic.clone(), QoS::AtLeastOnce, true, report)
                                .await
                                .unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let bytes = p.payload.to_vec();
                        let v = verify_desired_state(&trust, &bytes, &device, None, now())
                            .expect("a desired state the device would refuse");
                        let mut rec = rec.lock().unwrap();
                        if let Some(before) = rec.get(&v.generation) {
                            assert_eq!(
                                before, &bytes,
                                "{device}: generation {} received with two contents",
                                v.generation
                            );
                        }
                        rec.insert(v.generation, bytes);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Device {
            id: id.to_owned(),
            client,
            task,
            received,
            last_status,
        }
    }

    async fn status(&self, report: &fleet_protocol::StatusReport) {
        let topic = TopicScheme::default().render(&Topic::Status(dev(&self.id)));
        let payload = encode(report).unwrap();
        *self.last_status.lock().unwrap() = Some(payload.clone());
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }

    /// The newest desired state received: generation and `model` release.
    fn latest(&self, trust: &TrustedRoot) -> Option<(u64, Option<Digest>)> {
        let rec = self.received.lock().unwrap();
        let (g, bytes) = rec.iter().next_back()?;
        let v = verify_desired_state(trust, bytes, &dev(&self.id), None, now()).unwrap();
        let model = v
            .apps
            .iter()
            .find(|a| a.app.as_str() == "model")
            .map(|a| a.release_digest.clone());
        Some((*g, model))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `device` received a desired state giving it `release`, then
/// reports it committed.
async fn commit(device: &Device, trust: &TrustedRoot, release: &Digest, server: &ServerProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let generation = loop {
        if let Some((g, Some(m))) = device.latest(trust)
            && &m == release
        {
            break g;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never received the release; it has {:?}\nserver log:\n{}",
            device.id,
            device.latest(trust),
            server
                .log()
                .lines()
                .filter(|l| l.contains(&device.id) || l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    device
        .status(&committed(&device.id, generation, "model", release))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_wave_goes_on_after_restart_without_skips_or_double_content() {
    let site = Site::new();
    let mut config: Config = site.config();
    let (http, broker) = (free_port(), free_port());
    config.http.listen = ([127, 0, 0, 1], http).into();
    config.broker.embedded = true;
    config.broker.listen = ([127, 0, 0, 1], broker).into();
    config.desired.renew_check_secs = 1;
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let token = {
        let store = SledStore::open(&config.store_dir()).unwrap();
        fleet_control_plane::api::auth::ensure_admin_token(&store, now())
            .unwrap()
            .unwrap()
    };
    // The CA the server will load (made here so the test has it first).
    let ca = FleetCa::open_or_create(&config.data_dir.join("pki"), now()).unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let file = config.data_dir.join("server.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let url = format!("https://127.0.0.1:{http}");
    let mut server = ServerProcess::start(&file, &url, &ca_pem, 1).await;
    let client = Client::with_ca(&url, Some(token), &ca_pem).unwrap();
    let trust = site.trust();

    // Six cameras: a canary, a wave of two, a wave of three (by id). cam-3,
    // of wave 2, is offline from its registration until after the restart:
    // its desired state is published while it is away, retained by the
    // embedded broker, which dies with the server.
    let ids: Vec<String> = (1..=6).map(|i| format!("cam-{i}")).collect();
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|id| Device::connect(broker, &ca, trust.clone(), id))
        .collect();
    for d in &devices {
        d.status(&hello(&d.id, &[("role", "camera")])).await;
    }
    eventually("six devices registered", || async {
        (client.devices().await.ok()?.len() == 6).then_some(())
    })
    .await;
    let away = devices.remove(2);
    assert_eq!(away.id, "cam-3");
    drop(away);
    cameras_group(&client).await;
    client
        .follow(
            &GroupName::new("cameras").unwrap(),
            &FollowChannel {
                app: AppName::new("model").unwrap(),
                channel: Channel::new("stable").unwrap(),
                waves: vec![WaveSize::Count(1), WaveSize::Count(2)],
                supersede: Supersede::Queue,
                safety: Safety::default(),
            },
        )
        .await
        .unwrap();
    let published = client
        .publish_release(
            &Channel::new("stable").unwrap(),
            site.release("model", "v1"),
        )
        .await
        .unwrap();
    let (id, v1) = (published.rollouts[0], published.release.digest.clone());
    let r = client.rollout(id).await.unwrap();
    let wave = |i: usize| -> Vec<String> {
        r.devices
            .iter()
            .filter(|p| p.wave == i)
            .map(|p| p.device.to_string())
            .collect()
    };
    let by_id = |d: &str| devices.iter().find(|x| x.id == d);
    assert_eq!(wave(1), ["cam-2", "cam-3"], "{r:?}");

    // The canary and one device of wave 2 commit, then the server dies.
    commit(by_id(&wave(0)[0]).unwrap(), &trust, &v1, &server).await;
    let w2 = wave(1);
    commit(by_id(&w2[0]).unwrap(), &trust, &v1, &server).await;
    eventually("the first commit of wave 2 recorded", || async {
        let v = client.rollout(id).await.ok()?;
        (v.counts.committed == 2).then_some(())
    })
    .await;
    server.kill9();

    let mut server = ServerProcess::start(&file, &url, &ca_pem, 2).await;
    let v = client.rollout(id).await.unwrap();
    assert_eq!(v.state, RolloutState::Running);
    assert_eq!(v.waves[1].state, WaveState::Active, "{v:?}");
    // cam-3 comes back only now.
    devices.push(Device::connect(broker, &ca, trust.clone(), "cam-3"));
    let by_id = |d: &str| devices.iter().find(|x| x.id == d);
    commit(by_id(&w2[1]).unwrap(), &trust, &v1, &server).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = client.rollout(id).await.unwrap();
        if v.waves[2].state == WaveState::Active {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wave 3 never went out: {v:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in wave(2) {
        let device = devices.iter().find(|x| x.id == d).unwrap();
        commit(device, &trust, &v1, &server).await;
    }
    let done = eventually("the rollout completed", || async {
        let v = client.rollout(id).await.ok()?;
        (v.state == RolloutState::Completed).then_some(v)
    })
    .await;
    assert_eq!(done.counts.committed, 6, "{done:?}");
    for d in &devices {
        let rec = d.received.lock().unwrap();
        let models: Vec<_> = rec
            .iter()
            .filter_map(|(g, bytes)| {
                let v = verify_desired_state(&trust, bytes, &dev(&d.id), None, now()).unwrap();
                v.apps
                    .iter()
                    .find(|a| a.app.as_str() == "model")
                    .map(|a| (*g, a.release_digest.clone()))
            })
            .collect();
        assert!(
            models.iter().all(|(_, m)| m == &v1) && !models.is_empty(),
            "{}: {models:?}\nserver log:\n{}",
            d.id,
            server.log()
        );
    }
    server.kill9();
}
