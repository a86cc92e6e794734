//! The agent link against a real Mosquitto: status reports stored while the
//! broker is away survive an agent restart and are delivered, in order, once
//! the broker is back. (ACL, last will and the embedded broker are covered by
//! the control plane's `mqtt_*` tests, which drive this link too.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_agent::link::{AgentLink, AgentLinkConfig, Backoff, BrokerAddr};
use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{StatusReport, decode};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: std::path::PathBuf,
}

impl Mosquitto {
    fn start(dir: &std::path::Path) -> Option<Self> {
        if !std::path::Path::new("/usr/sbin/mosquitto").exists()
            && Command::new("mosquitto").arg("-h").output().is_err()
        {
            eprintln!("SKIPPED: mosquitto is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut m = Self {
            child: None,
            port,
            conf,
        };
        m.run();
        Some(m)
    }

    fn run(&mut self) {
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn report(generation: u64) -> StatusReport {
    StatusReport {
        schema: 1,
        device: DeviceId::new("gw-1").unwrap(),
        reported_at: generation,
        generation: Some(generation),
        apps: vec![],
        rejected: None,
        info: None,
    }
}

fn config(port: u16, state: &std::path::Path) -> AgentLinkConfig {
    let mut c = AgentLinkConfig::new(
        BrokerAddr::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap(),
        DeviceId::new("gw-1").unwrap(),
        "unused-with-anonymous",
        state.to_owned(),
    );
    c.host_root = state.to_owned();
    c.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_outbox_survives_an_agent_restart_and_is_sent_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let state = dir.path().join("state");
    broker.stop();

    // First agent run: the broker is down; two reports go to disk.
    let cancel = CancellationToken::new();
    let (agent, _down, task) = AgentLink::start(config(broker.port, &state), cancel.clone())
        .await
        .unwrap();
    agent.report_status(report(1)).await.unwrap();
    agent.report_status(report(2)).await.unwrap();
    cancel.cancel();
    task.await.unwrap();
    let outbox = state.join("link/outbox");
    assert_eq!(std::fs::read_dir(&outbox).unwrap().count(), 2);

    // The broker returns; a subscriber stands in for the server.
    broker.run();
    let mut o = MqttOptions::new("observer", "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 16);
    client
        .subscribe("fleet/v1/d/gw-1/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(WAIT, events.poll())
            .await
            .unwrap()
            .unwrap();
        if matches!(ev, Event::Incoming(Packet::SubAck(_))) {
            break;
        }
    }

    // Second agent run on the same state directory delivers them.
    let cancel = CancellationToken::new();
    let (_agent, _down, _task) = AgentLink::start(config(broker.port, &state), cancel.clone())
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                let s: StatusReport = decode(&p.payload).unwrap();
                seen.push((s.generation, s.info.is_some()));
                if s.generation == Some(2) {
                    break;
                }
            }
        }
    })
    .await
    .expect("the stored status never arrived");
    assert_eq!(
        seen[0],
        (Some(1), true),
        "oldest first, with device info: {seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.0), Some(Some(2)), "{seen:?}");
    tokio::time::timeout(WAIT, async {
        while std::fs::read_dir(&outbox).unwrap().count() != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the outbox did not empty after acknowledgement");
    cancel.cancel();
}
