//! `fleet-agent run` (the real binary) against a real Mosquitto, with its
//! host root pointing at the Jetson Orin fixture: its telemetry topic
//! carries the fixture's GPU load, power rails and temperatures, QoS 0 and
//! not retained, and its first status carries the fixture's L4T release.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lifecycle_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_protocol::DeviceId;
use fleet_protocol::message::{StatusReport, Telemetry, decode};
use fleet_protocol::topic::{Topic, TopicScheme};
use lifecycle_support as ls;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::{Killed, free_port, start_mosquitto, tool};

const WAIT: Duration = Duration::from_secs(120);

fn start_broker(bin: &Path, dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    (start_mosquitto(bin, &conf, port), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_the_fixture_jetson_telemetry() {
    let Some(bin) = tool("mosquitto") else {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = start_broker(&bin, dir.path());
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tegra/orin-r36");
    let device = DeviceId::new("jetson-07").unwrap();
    std::fs::write(dir.path().join("trust.json"), ls::trust_json()).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "device_id = \"{device}\"\nstate_dir = \"{state}\"\ntrust = \"{trust}\"\n\
             broker = \"mqtt://127.0.0.1:{port}\"\ntelemetry_interval_secs = 1\n\
             host_root = \"{root}\"\n\
             [runtime]\nkind = \"crun\"\nroot = \"{rroot}\"\n",
            state = dir.path().join("state").display(),
            trust = dir.path().join("trust.json").display(),
            root = fixture.display(),
            rroot = dir.path().join("runtime-root").display(),
        ),
    )
    .unwrap();

    // The server's side: subscribed before the agent starts.
    let scheme = TopicScheme::default();
    let telemetry_topic = scheme.render(&Topic::Telemetry(device.clone()));
    let status_topic = scheme.render(&Topic::Status(device.clone()));
    let mut o = MqttOptions::new("observer", "127.0.0.1", port);
    o.set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    client
        .subscribe(telemetry_topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(status_topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }

    let log = dir.path().join("agent.log");
    let _agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
            .args(["run", "--config"])
            .arg(dir.path().join("config.toml"))
            .env_remove("FLEET_AGENT_CONFIG")
            .env_remove("FLEET_AGENT_HOST_ROOT")
            .env_remove("FLEET_AGENT_TELEMETRY_INTERVAL_SECS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut info = None;
    let mut telemetry = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while telemetry.len() < 2 || info.is_none() {
        let Ok(ev) = tokio::time::timeout_at(deadline, eventloop.poll()).await else {
            panic!(
                "no telemetry/status in time ({} telemetry, info {info:?}); agent log:\n{}",
                telemetry.len(),
                agent_log()
            );
        };
        let ev = ev.unwrap();
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        if p.topic == status_topic {
            let r: StatusReport = decode(&p.payload).unwrap();
            if let Some(i) = r.info {
                info = Some(i);
            }
            continue;
        }
        assert_eq!(p.topic, telemetry_topic);
        assert_eq!(
            scheme.parse(&p.topic).unwrap(),
            Topic::Telemetry(device.clone())
        );
        assert_eq!(p.qos, QoS::AtMostOnce, "telemetry is QoS 0");
        assert!(!p.retain, "telemetry is not retained");
        telemetry.push(decode::<Telemetry>(&p.payload).unwrap());
    }

    let info = info.unwrap();
    assert_eq!(info.l4t_version.as_deref(), Some("R36.4.3"));
    for t in &telemetry {
        assert_eq!(t.device.as_ref(), Some(&device));
        assert!(t.at > 0);
        assert_eq!(t.gpu_load_percent, Some(52.3), "{t:?}");
        assert_eq!(t.gpu_freq_hz, Some(918_000_000));
        assert_eq!(t.emc_load_percent, Some(20.0));
        assert_eq!(t.power_mw.get("VDD_IN"), Some(&6411));
        assert_eq!(t.power_mw.get("VDD_CPU_GPU_CV"), Some(&1579));
        assert_eq!(t.power_mw.get("VDD_SOC"), Some(&1866));
        assert_eq!(t.power_mw.len(), 3);
        assert_eq!(t.temperatures.get("tj-thermal"), Some(&49.062));
        assert_eq!(t.temperatures.get("cpu-thermal"), Some(&48.531));
        assert!(
            !t.temperatures.contains_key("cv0-thermal"),
            "offline sensor"
        );
        assert_eq!(t.uptime_secs, Some(8642));
        assert_eq!(t.memory_total_bytes, Some(7_802_592 * 1024));
        // The store is the agent's own (real) one: empty, counters at zero.
        assert_eq!(t.store_used_bytes, Some(0));
        assert_eq!(t.fetched_bytes_total, Some(0));
        assert_eq!(t.reused_bytes_total, Some(0));
        assert!(t.disk_free_bytes.is_some_and(|f| f > 0));
        assert!(t.apps.is_empty());
    }
}
