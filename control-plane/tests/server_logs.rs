//! The real `fleet-server` process logging to a file (stderr redirected):
//! plain text without colour escapes, and no ERROR line for a normal start,
//! MQTT connect and disconnect through the embedded broker, and stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod served;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fleet_control_plane::config::Config;
use fleet_control_plane::pki::FleetCa;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use served::free_port;

/// Connects as `id`, waits for the broker's CONNACK, disconnects cleanly
/// and waits until the connection is closed.
async fn connect_and_disconnect(broker: u16, ca: &FleetCa, id: &str) {
    let mut o = MqttOptions::new(id, "127.0.0.1", broker);
    let identity = device_identity(ca, id, 3600);
    let tls = fleet_agent::link::tls::client_config(ca.cert_pem(), false, Some(&identity)).unwrap();
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_credentials(id, "")
    .set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(o, 8);
    let run = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client.disconnect().await.unwrap(),
                Ok(_) => {}
                // The loop ends once the DISCONNECT is out and the socket closed.
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("connect and disconnect within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_has_no_colour_and_no_error_for_normal_mqtt_traffic() {
    let site = Site::new();
    let mut config: Config = site.config();
    let (http, broker) = (free_port(), free_port());
    config.http.listen = ([127, 0, 0, 1], http).into();
    config.broker.embedded = true;
    config.broker.listen = ([127, 0, 0, 1], broker).into();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    // The CA the server will load (made here so the test has it first).
    let ca = FleetCa::open_or_create(&config.data_dir.join("pki"), now()).unwrap();
    let file = config.data_dir.join("server.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let log = config.data_dir.join("server.log");
    // The broker's own info lines show when it has seen the disconnects;
    // its filtered ERROR events are the ones under test.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", file.to_str().unwrap()])
        .env("RUST_LOG", "info,rumqttd=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let health = format!("https://127.0.0.1:{http}/healthz");
    let client = http_client(Some(ca.cert_pem()));
    eventually("the server answers", || {
        let (health, client) = (health.clone(), client.clone());
        async move {
            client
                .get(&health)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;

    for id in ["cam-1", "cam-2"] {
        connect_and_disconnect(broker, &ca, id).await;
    }
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the broker saw both disconnects", || async {
        (read().matches("Disconnecting connection").count() >= 2).then_some(())
    })
    .await;
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "fleet-server exit: {status:?}\n{}",
        read()
    );

    let text = read();
    assert!(
        text.contains("Disconnecting connection"),
        "the broker's info lines are in the log:\n{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour escapes in a log file:\n{text}"
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines for normal traffic:\n{text}");
}
