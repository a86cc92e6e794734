//! The whole fleet-server (`server::run`, with its embedded broker) on
//! fresh loopback ports, and devices as raw MQTT clients with device
//! certificates from the fleet CA (device tokens with `[tls] insecure`):
//! for tests that go through the broker like real agents.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{dev, device_identity, eventually, http_client, now};
use fleet_control_plane::config::Config;
use fleet_control_plane::device_token::DeviceTokens;
use fleet_control_plane::pki::FleetCa;
use fleet_control_plane::store::SledStore;
use fleet_protocol::message::{Presence, encode};
use fleet_protocol::topic::Topic;
use fleet_protocol::{StatusReport, Telemetry, TopicScheme};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The whole server (`server::run`) on fresh loopback ports.
pub struct Fleet {
    pub http: SocketAddr,
    pub broker: u16,
    /// The fleet's CA (loaded from its data directory), `None` when insecure.
    pub ca: Option<std::sync::Arc<FleetCa>>,
    /// Where its certificate is (for `fleetctl --ca`).
    pub ca_path: std::path::PathBuf,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Fleet {
    pub async fn start(mut config: Config) -> Fleet {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let broker = free_port();
        config.http.listen = http;
        config.broker.embedded = true;
        config.broker.listen = SocketAddr::from(([127, 0, 0, 1], broker));
        let insecure = config.tls.insecure;
        let ca_paths = (
            config.ca_cert_path(),
            config
                .tls
                .ca_key
                .clone()
                .unwrap_or_else(|| config.data_dir.join("pki").join("ca.key")),
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            fleet_control_plane::server::run(config, stop)
                .await
                .unwrap();
        });
        let ca = if insecure {
            None
        } else {
            let ca = eventually("the server made its CA", || {
                let (cert, key) = ca_paths.clone();
                let (cert, key) = (cert.clone(), key.clone());
                async move { FleetCa::load(&cert, &key, now()).ok() }
            })
            .await;
            Some(std::sync::Arc::new(ca))
        };
        let f = Fleet {
            http,
            broker,
            ca,
            ca_path: ca_paths.0,
            shutdown,
            task,
        };
        let url = format!("{}/healthz", f.url());
        let client = f.http_client();
        eventually("the server answers", || {
            let (url, client) = (url.clone(), client.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        f
    }

    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://{}", self.http),
            None => format!("http://{}", self.http),
        }
    }

    /// The fleet CA (PEM), when TLS is on.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_deref().map(FleetCa::cert_pem)
    }

    /// A raw HTTP client trusting the server.
    pub fn http_client(&self) -> reqwest::Client {
        http_client(self.ca_pem())
    }

    /// `fleetctl login` arguments for this server.
    pub fn login_args(&self, token: &str) -> Vec<String> {
        let mut args = vec![
            "login".to_owned(),
            "--server".to_owned(),
            self.url(),
            "--token".to_owned(),
            token.to_owned(),
        ];
        if self.ca.is_some() {
            args.extend(["--ca".to_owned(), self.ca_path.display().to_string()]);
        }
        args
    }

    /// An API client with `token`.
    pub fn client(&self, token: &str) -> fleet_control_plane::client::Client {
        crate::common::client_of(&self.url(), self.ca_pem(), Some(token.to_owned()))
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .http_client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        r.text().await.unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

/// An admin token made in the store before the server starts (the server
/// prints its own only to stdout).
pub fn admin_token(config: &Config) -> String {
    let store = SledStore::open(&config.store_dir()).unwrap();
    let token = fleet_control_plane::api::auth::ensure_admin_token(&store, now())
        .unwrap()
        .unwrap();
    drop(store);
    // sled releases its file lock shortly after the drop.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while SledStore::open(&config.store_dir()).is_err() {
        assert!(std::time::Instant::now() < deadline, "store stays locked");
        std::thread::sleep(Duration::from_millis(50));
    }
    token
}

/// A device as a raw MQTT client with its token, a last will like the
/// agent's, and its event loop in a task (abort it to drop the connection).
pub struct Device {
    pub id: String,
    pub client: AsyncClient,
    pub task: JoinHandle<()>,
    pub scheme: TopicScheme,
}

impl Device {
    pub async fn connect(fleet: &Fleet, tokens: &DeviceTokens, id: &str) -> Device {
        let scheme = TopicScheme::default();
        let online = scheme.render(&Topic::Online(dev(id)));
        let mut o = MqttOptions::new(id, "127.0.0.1", fleet.broker);
        match &fleet.ca {
            Some(ca) => {
                let identity = device_identity(ca, id, 3600);
                let tls =
                    fleet_agent::link::tls::client_config(ca.cert_pem(), false, Some(&identity))
                        .unwrap();
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls),
                ))
                .set_credentials(id, "");
            }
            None => {
                o.set_credentials(id, tokens.token(&dev(id)));
            }
        }
        o.set_keep_alive(Duration::from_secs(30))
            .set_last_will(LastWill::new(
                online,
                encode(&Presence::offline(dev(id))).unwrap(),
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("device did not connect")
            .unwrap();
        let d = Device {
            id: id.to_owned(),
            client,
            task,
            scheme,
        };
        d.publish(
            Topic::Online(dev(id)),
            encode(&Presence::online(dev(id))).unwrap(),
        )
        .await;
        d
    }

    pub async fn publish(&self, topic: Topic, payload: Vec<u8>) {
        let qos = if topic.qos() == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.client
            .publish(self.scheme.render(&topic), qos, topic.retained(), payload)
            .await
            .unwrap();
    }

    pub async fn status(&self, report: &StatusReport) {
        self.publish(Topic::Status(dev(&self.id)), encode(report).unwrap())
            .await;
    }

    pub async fn telemetry(&self, t: &Telemetry) {
        self.publish(Topic::Telemetry(dev(&self.id)), encode(t).unwrap())
            .await;
    }
}

/// Samples of an exposition: `name{labels}` → value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}
