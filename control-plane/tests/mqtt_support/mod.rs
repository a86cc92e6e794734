//! Real brokers for the MQTT tests: the embedded broker, or a Mosquitto
//! process on a free loopback port, each either over TLS with device
//! certificates from a fleet CA (Mosquitto set up by `pki::mosquitto`, as
//! `fleet-server mosquitto-config` does) or in plain TCP with device tokens
//! (a password file and an ACL generated from the topic scheme for
//! Mosquitto). Scenarios run against every kind.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::link::tls::{ClientIdentity, client_config};
use fleet_agent::link::{AgentLink, AgentLinkConfig, Downlink};
use fleet_control_plane::broker::{
    BrokerConfig, BrokerTls, EmbeddedBroker, ServerAccount, StaticDeviceTokens,
};
use fleet_control_plane::link::{Backoff, BrokerAddr, Inbound, ServerLink, ServerLinkConfig};
use fleet_control_plane::pki::{FleetCa, Revoked, mosquitto, tls as pki_tls};
use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{StatusReport, Telemetry, encode};
use fleet_protocol::topic::{Topic, TopicScheme};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const SERVER_ID: &str = "fleet-server";
pub const SERVER_PASSWORD: &str = "server-secret";
/// Generous: the machine is small and shared.
pub const WAIT: Duration = Duration::from_secs(60);
pub const DEVICES: [(&str, &str); 4] = [
    ("cam-a", "token-a"),
    ("cam-b", "token-b"),
    ("cam-c", "token-c"),
    ("cam-d", "token-d"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Mosquitto,
    EmbeddedTls,
    MosquittoTls,
}

impl Kind {
    pub fn tls(self) -> bool {
        matches!(self, Kind::EmbeddedTls | Kind::MosquittoTls)
    }

    pub fn mosquitto(self) -> bool {
        matches!(self, Kind::Mosquitto | Kind::MosquittoTls)
    }
}

/// The fleet CA of a TLS broker, and what it revoked.
pub struct Pki {
    pub ca: FleetCa,
    pub revoked: Revoked,
    pub revoked_serials: Vec<String>,
}

enum Running {
    Embedded(CancellationToken, EmbeddedBroker),
    Mosquitto(Child),
    Stopped,
}

pub struct TestBroker {
    kind: Kind,
    port: u16,
    dir: tempfile::TempDir,
    running: Running,
    pub pki: Option<Pki>,
}

impl TestBroker {
    /// `None` when the broker cannot run here (the reason is printed).
    pub async fn start(kind: Kind) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        if kind.mosquitto() && (which("mosquitto").is_none() || which("mosquitto_passwd").is_none())
        {
            eprintln!("SKIPPED: mosquitto or mosquitto_passwd is not installed");
            return None;
        }
        if kind == Kind::Mosquitto {
            write_mosquitto_config(dir.path());
        }
        let pki = kind.tls().then(|| Pki {
            ca: FleetCa::open_or_create(&dir.path().join("ca"), now()).unwrap(),
            revoked: Revoked::default(),
            revoked_serials: Vec::new(),
        });
        let mut b = Self {
            kind,
            port: 0,
            dir,
            running: Running::Stopped,
            pki,
        };
        b.run().await;
        Some(b)
    }

    async fn run(&mut self) {
        match self.kind {
            Kind::Embedded | Kind::EmbeddedTls => {
                let mut tokens = StaticDeviceTokens::new();
                for (d, t) in DEVICES {
                    tokens.insert(DeviceId::new(d).unwrap(), t);
                }
                let mut config = BrokerConfig::new(
                    ServerAccount {
                        client_id: SERVER_ID.into(),
                        password: SERVER_PASSWORD.into(),
                    },
                    Arc::new(tokens),
                );
                config.listen = SocketAddr::from(([127, 0, 0, 1], self.port));
                if let Some(pki) = &self.pki {
                    let id = pki.ca.issue_server(&["127.0.0.1".into()], now()).unwrap();
                    config.tls = Some(BrokerTls {
                        config: pki_tls::server_config(&pki.ca, &id, &[]).unwrap(),
                        revoked: pki.revoked.clone(),
                    });
                }
                let cancel = CancellationToken::new();
                let broker = EmbeddedBroker::start(config, cancel.clone()).await.unwrap();
                self.port = broker.local_addr().port();
                self.running = Running::Embedded(cancel, broker);
            }
            Kind::Mosquitto | Kind::MosquittoTls => {
                if self.port == 0 {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    self.port = l.local_addr().unwrap().port();
                }
                let conf = match &self.pki {
                    None => {
                        let conf = self.dir.path().join("mosquitto.conf");
                        let base =
                            std::fs::read_to_string(self.dir.path().join("base.conf")).unwrap();
                        let listener = format!("listener {} 127.0.0.1\n{base}", self.port);
                        std::fs::write(&conf, listener).unwrap();
                        conf
                    }
                    Some(_) => {
                        let conf = self.write_mosquitto_tls();
                        let main = self.dir.path().join("mosquitto.conf");
                        std::fs::write(
                            &main,
                            format!(
                                "persistence false\ninclude_dir {}\n",
                                conf.parent().unwrap().display()
                            ),
                        )
                        .unwrap();
                        main
                    }
                };
                let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
                let child = Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                self.running = Running::Mosquitto(child);
                let deadline = tokio::time::Instant::now() + WAIT;
                while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_err()
                {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "mosquitto did not start: {}",
                        std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
                            .unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn stop(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Embedded(cancel, broker) => {
                cancel.cancel();
                broker.stopped().await;
            }
            Running::Mosquitto(mut child) => {
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Running::Stopped => {}
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    pub fn url(&self) -> String {
        match self.kind.tls() {
            true => format!("mqtts://127.0.0.1:{}", self.port),
            false => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn write_mosquitto_tls(&self) -> std::path::PathBuf {
        let pki = self.pki.as_ref().unwrap();
        let names = ["127.0.0.1".to_owned()];
        let setup = mosquitto::MosquittoSetup {
            names: &names,
            port: self.port,
            address: Some("127.0.0.1"),
            scheme: &TopicScheme::default(),
            revoked_serials: &pki.revoked_serials,
        };
        let dir = self.dir.path().join("conf.d");
        let conf = mosquitto::write(&pki.ca, &setup, &dir, now()).unwrap();
        // As the docs say: the files belong to the user Mosquitto runs as.
        chown_to_mosquitto(&dir);
        conf
    }

    /// A certificate for `device` from this broker's CA, and its serial.
    pub fn identity(&self, device: &str, lifetime_secs: u64, now: u64) -> (ClientIdentity, String) {
        let ca = &self.pki.as_ref().expect("a TLS broker").ca;
        issue(ca, device, lifetime_secs, now)
    }

    /// Revokes `device` (its certificate `serial`): the embedded broker is
    /// told at once; Mosquitto gets a new CRL and a SIGHUP.
    pub fn revoke(&mut self, device: &str, serial: &str) {
        let pki = self.pki.as_mut().expect("a TLS broker");
        pki.revoked_serials.push(serial.to_owned());
        pki.revoked.insert(dev(device));
        if self.kind.mosquitto() {
            self.write_mosquitto_tls();
            if let Running::Mosquitto(child) = &self.running {
                nix_hup(child.id());
            }
        }
    }

    /// MQTT options for `client_id` logging in as `user`/`pass`, over TLS
    /// with `identity` when the broker is a TLS one.
    pub fn options(
        &self,
        client_id: &str,
        user: &str,
        pass: &str,
        identity: Option<&ClientIdentity>,
    ) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", self.port);
        o.set_credentials(user, pass)
            .set_keep_alive(Duration::from_secs(30));
        if let Some(pki) = &self.pki {
            let tls = client_config(pki.ca.cert_pem(), false, identity).unwrap();
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        o
    }

    /// How `device` logs in: its certificate over TLS, its token otherwise.
    pub fn device_options(&self, device: &str) -> MqttOptions {
        match &self.pki {
            Some(_) => {
                let (id, _) = self.identity(device, 3600, now());
                self.options(device, device, "", Some(&id))
            }
            None => self.options(device, device, token(device), None),
        }
    }

    /// The server's TLS client configuration: the CA, plus the server's own
    /// certificate for Mosquitto (the embedded broker takes its password).
    pub fn server_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        let pki = self.pki.as_ref()?;
        let own = self.kind.mosquitto().then(|| {
            let own = pki.ca.issue_server_client(now()).unwrap();
            ClientIdentity {
                cert_pem: own.chain_pem(),
                key_pem: own.key_pem(),
            }
        });
        Some(client_config(pki.ca.cert_pem(), false, own.as_ref()).unwrap())
    }

    /// The server's account as raw MQTT options.
    pub fn server_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(SERVER_ID, "127.0.0.1", self.port);
        o.set_credentials(SERVER_ID, SERVER_PASSWORD)
            .set_keep_alive(Duration::from_secs(30));
        if let Some(tls) = self.server_tls() {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        o
    }

    pub fn addr(&self) -> BrokerAddr {
        BrokerAddr::parse(&self.url()).unwrap()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Embedded(cancel, _) => cancel.cancel(),
            Running::Mosquitto(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Stopped => {}
        }
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Mosquitto 2.0: no anonymous clients, a password file, the client id forced
/// to the user name (so `%c` in the ACL patterns is the authenticated
/// device), and the ACL from `mosquitto_acl_patterns()` plus the server's own
/// full access.
fn write_mosquitto_config(dir: &Path) {
    let passwd = dir.join("passwd");
    let mut first = true;
    for (user, pass) in DEVICES
        .iter()
        .copied()
        .chain([(SERVER_ID, SERVER_PASSWORD)])
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if first {
            cmd.arg("-c");
            first = false;
        }
        let st = cmd
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(pass)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "mosquitto_passwd failed");
    }
    let scheme = TopicScheme::default();
    let acl = format!(
        "{}\nuser {SERVER_ID}\ntopic readwrite {}/#\n",
        scheme.mosquitto_acl_patterns(),
        scheme.prefix()
    );
    std::fs::write(dir.join("acl"), acl).unwrap();
    std::fs::write(
        dir.join("base.conf"),
        format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\nuse_username_as_clientid true\npersistence false\n",
            passwd.display(),
            dir.join("acl").display()
        ),
    )
    .unwrap();
}

pub fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A device key and its certificate from `ca` (valid from `now`), and the
/// certificate's serial.
pub fn issue(ca: &FleetCa, device: &str, lifetime_secs: u64, now: u64) -> (ClientIdentity, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let cert = ca
        .sign_device_csr(&csr, &dev(device), lifetime_secs, now)
        .unwrap();
    (
        ClientIdentity {
            cert_pem: cert.pem,
            key_pem: key.serialize_pem(),
        },
        cert.serial,
    )
}

/// `chown -R mosquitto: dir` when that user exists (Mosquitto started as
/// root drops to it).
fn chown_to_mosquitto(dir: &Path) {
    let Ok(out) = Command::new("id").args(["-u", "mosquitto"]).output() else {
        return;
    };
    if !out.status.success() {
        return;
    }
    let st = Command::new("chown")
        .args(["-R", "mosquitto:"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R mosquitto: {}", dir.display());
}

fn nix_hup(pid: u32) {
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -HUP mosquitto");
}

pub fn token(id: &str) -> &'static str {
    DEVICES.iter().find(|(d, _)| *d == id).unwrap().1
}

pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    }
}

pub fn server_link(
    broker: &TestBroker,
    cancel: &CancellationToken,
) -> (ServerLink, mpsc::Receiver<Inbound>) {
    let mut config = ServerLinkConfig::new(broker.addr(), SERVER_ID, SERVER_PASSWORD);
    config.backoff = fast_backoff();
    config.tls = broker.server_tls();
    let (link, rx, _task) = ServerLink::connect(config, cancel.clone());
    (link, rx)
}

pub async fn agent_link(
    broker: &TestBroker,
    device: &str,
    state_dir: &Path,
    host_root: &Path,
    cancel: &CancellationToken,
) -> (
    AgentLink,
    mpsc::Receiver<Downlink>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = AgentLinkConfig::new(
        fleet_agent::link::BrokerAddr::parse(&broker.url()).unwrap(),
        dev(device),
        token(device),
        state_dir.to_owned(),
    );
    config.backoff = fleet_agent::link::Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    };
    config.host_root = host_root.to_owned();
    config.labels = BTreeMap::from([("site".to_owned(), "lab".to_owned())]);
    if let Some(pki) = &broker.pki {
        let (id, _) = broker.identity(device, 3600, now());
        config.tls = Some(client_config(pki.ca.cert_pem(), false, Some(&id)).unwrap());
    }
    AgentLink::start(config, cancel.clone()).await.unwrap()
}

/// Receives until `pick` returns Some, for up to [`WAIT`].
pub async fn recv_until<T, U>(
    rx: &mut mpsc::Receiver<T>,
    mut pick: impl FnMut(T) -> Option<U>,
) -> U {
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = rx.recv().await.expect("channel closed");
            if let Some(u) = pick(msg) {
                return u;
            }
        }
    })
    .await
    .expect("nothing matching arrived in time")
}

pub async fn wait_connected(mut w: tokio::sync::watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(WAIT, w.wait_for(|c| *c == want))
        .await
        .expect("link state did not change in time")
        .unwrap();
}

pub fn status(device: &str, generation: u64) -> StatusReport {
    StatusReport {
        schema: 1,
        device: dev(device),
        reported_at: 1_700_000_000 + generation,
        generation: Some(generation),
        apps: vec![],
        rejected: None,
        info: None,
    }
}

/// A raw MQTT client logged in as `device`, and its event stream.
pub async fn raw_client(
    broker: &TestBroker,
    device: &str,
) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    let o = broker.device_options(device);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx
                        .send((p.topic.clone(), p.payload.to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, rx)
}

fn desired_bytes(device: &str, marker: &str) -> Vec<u8> {
    // Opaque to the link: the agent's deploy driver verifies it.
    format!(r#"{{"payloadType":"application/vnd.fleet.desired+json","payload":"{marker}","device":"{device}","signatures":[]}}"#).into_bytes()
}

// ----------------------------------------------------------------- scenarios

/// A device can neither read another device's desired state (by its topic
/// or by a wildcard over the prefix) nor publish its status; its own topics
/// work (positive controls).
pub async fn acl_keeps_devices_apart(kind: Kind) {
    let Some(broker) = TestBroker::start(kind).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let (server, mut inbound) = server_link(&broker, &cancel);
    wait_connected(server.connected(), true).await;
    let secret_b = desired_bytes("cam-b", "secret-for-b");
    let own_a = desired_bytes("cam-a", "for-a");
    server
        .publish_desired(&dev("cam-b"), secret_b.clone())
        .await
        .unwrap();
    server
        .publish_desired(&dev("cam-a"), own_a.clone())
        .await
        .unwrap();

    let (a, mut a_rx) = raw_client(&broker, "cam-a").await;
    let scheme = TopicScheme::default();
    let b_desired = scheme.render(&Topic::Desired(dev("cam-b")));
    let a_desired = scheme.render(&Topic::Desired(dev("cam-a")));
    a.subscribe(b_desired.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Everything under the prefix: refused (embedded), or filtered by the
    // ACL to A's own topics (Mosquitto).
    a.subscribe(format!("{}/#", scheme.prefix()), QoS::AtLeastOnce)
        .await
        .unwrap();
    a.subscribe(a_desired.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    // Positive control: A gets its own retained desired state.
    let got = recv_until(&mut a_rx, |(t, p)| (t == a_desired).then_some(p)).await;
    assert_eq!(got, own_a);

    // A forges B's status, then sends its own.
    let forged = encode(&status("cam-b", 666)).unwrap();
    a.publish(
        scheme.render(&Topic::Status(dev("cam-b"))),
        QoS::AtLeastOnce,
        true,
        forged,
    )
    .await
    .unwrap();
    a.publish(
        scheme.render(&Topic::Status(dev("cam-a"))),
        QoS::AtLeastOnce,
        true,
        encode(&status("cam-a", 7)).unwrap(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let own = recv_until(&mut inbound, |m| {
        seen.push(m.clone());
        match m {
            Inbound::Status(s) if s.device == dev("cam-a") && s.generation == Some(7) => Some(s),
            _ => None,
        }
    })
    .await;
    assert_eq!(own.device, dev("cam-a"));
    // Grace period for anything still on its way (not a timing assertion:
    // nothing may arrive at all).
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(m) = inbound.try_recv() {
        seen.push(m);
    }
    while let Ok((t, p)) = a_rx.try_recv() {
        assert!(
            t != b_desired && p != secret_b,
            "device A read B's desired state on {t}"
        );
    }
    for m in &seen {
        if let Inbound::Status(s) = m {
            assert_ne!(
                s.device,
                dev("cam-b"),
                "the server received a status forged by A: {s:?}"
            );
        }
    }
    // And a fresh server subscription sees no retained forged status either.
    let (_s2, mut inbound2) = server_link(&broker, &cancel);
    let a_status = recv_until(&mut inbound2, |m| match m {
        Inbound::Status(s) if s.device == dev("cam-a") => Some(s),
        Inbound::Status(s) => panic!("unexpected retained status {s:?}"),
        _ => None,
    })
    .await;
    assert_eq!(a_status.generation, Some(7));
    cancel.cancel();
}

/// A retained desired state published while the device is offline reaches
/// the agent when it connects; the server sees it online, its first status
/// (with device info) and its telemetry.
pub async fn offline_device_gets_desired_and_server_sees_it(kind: Kind) {
    let Some(broker) = TestBroker::start(kind).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let (server, mut inbound) = server_link(&broker, &cancel);
    wait_connected(server.connected(), true).await;
    let desired = desired_bytes("cam-c", "gen-3");
    server
        .publish_desired(&dev("cam-c"), desired.clone())
        .await
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("etc")).unwrap();
    std::fs::write(
        host.path().join("etc/nv_tegra_release"),
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n",
    )
    .unwrap();
    let (agent, mut downlink, _task) =
        agent_link(&broker, "cam-c", state.path(), host.path(), &cancel).await;
    let got = recv_until(&mut downlink, |d| match d {
        Downlink::Desired(b) => Some(b),
        Downlink::Command(_) => None,
    })
    .await;
    assert_eq!(got, desired);

    recv_until(&mut inbound, |m| match m {
        Inbound::Presence {
            device,
            online: true,
        } if device == dev("cam-c") => Some(()),
        _ => None,
    })
    .await;

    agent.report_status(status("cam-c", 3)).await.unwrap();
    let s = recv_until(&mut inbound, |m| match m {
        Inbound::Status(s) if s.device == dev("cam-c") => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(s.generation, Some(3));
    let info = s.info.expect("the first status carries device info");
    assert_eq!(info.l4t_version.as_deref(), Some("R36.4.0"));
    assert_eq!(info.labels.get("site").map(String::as_str), Some("lab"));
    assert_eq!(info.architecture, agent.device_info().architecture);

    // Commands arrive too.
    server
        .publish_cmd(&dev("cam-c"), b"{\"cmd\":1}".to_vec())
        .await
        .unwrap();
    let cmd = recv_until(&mut downlink, |d| match d {
        Downlink::Command(b) => Some(b),
        Downlink::Desired(_) => None,
    })
    .await;
    assert_eq!(cmd, b"{\"cmd\":1}".to_vec());

    // Telemetry is QoS 0: send until one arrives.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sender = agent.clone();
    tokio::spawn(async move {
        loop {
            sender.send_telemetry(Telemetry {
                at: 42,
                uptime_secs: Some(99),
                ..Telemetry::default()
            });
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    });
    let t = recv_until(&mut inbound, |m| match m {
        Inbound::Telemetry(t) => Some(t),
        _ => None,
    })
    .await;
    let _ = stop_tx.send(());
    assert_eq!(t.device, Some(dev("cam-c")));
    assert_eq!(t.uptime_secs, Some(99));
    cancel.cancel();
}

/// Killing the agent's connection (no DISCONNECT) makes the broker publish
/// its last will: the server sees the device offline.
pub async fn last_will_marks_a_killed_agent_offline(kind: Kind) {
    let Some(broker) = TestBroker::start(kind).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let (server, mut inbound) = server_link(&broker, &cancel);
    wait_connected(server.connected(), true).await;
    let state = tempfile::tempdir().unwrap();
    let agent_cancel = CancellationToken::new();
    let (_agent, _downlink, task) =
        agent_link(&broker, "cam-d", state.path(), state.path(), &agent_cancel).await;
    recv_until(&mut inbound, |m| match m {
        Inbound::Presence {
            device,
            online: true,
        } if device == dev("cam-d") => Some(()),
        _ => None,
    })
    .await;
    // Abort the task: its socket is dropped without a DISCONNECT.
    task.abort();
    let _ = task.await;
    recv_until(&mut inbound, |m| match m {
        Inbound::Presence {
            device,
            online: false,
        } if device == dev("cam-d") => Some(()),
        _ => None,
    })
    .await;
    cancel.cancel();
}

/// Status reported while the broker is down waits on disk and is delivered
/// once the broker is back.
pub async fn status_is_buffered_on_disk_while_the_broker_is_down(kind: Kind) {
    let Some(mut broker) = TestBroker::start(kind).await else {
        return;
    };
    let cancel = CancellationToken::new();
    let state = tempfile::tempdir().unwrap();
    let (agent, _downlink, _task) =
        agent_link(&broker, "cam-a", state.path(), state.path(), &cancel).await;
    wait_connected(agent.connected(), true).await;

    broker.stop().await;
    wait_connected(agent.connected(), false).await;
    agent.report_status(status("cam-a", 41)).await.unwrap();
    agent.report_status(status("cam-a", 42)).await.unwrap();
    let outbox = state.path().join("link/outbox");
    let queued = std::fs::read_dir(&outbox).unwrap().count();
    assert_eq!(
        queued,
        2,
        "both reports wait on disk in {}",
        outbox.display()
    );

    broker.restart().await;
    let (server, mut inbound) = server_link(&broker, &cancel);
    wait_connected(server.connected(), true).await;
    // Reports go out in order: 41 (if the server subscribed in time to see
    // it live) strictly before 42, which is the retained one.
    let mut generations = Vec::new();
    recv_until(&mut inbound, |m| match m {
        Inbound::Status(s) if s.device == dev("cam-a") => {
            generations.push(s.generation);
            (s.generation == Some(42)).then_some(())
        }
        _ => None,
    })
    .await;
    assert!(
        generations == [Some(42)] || generations == [Some(41), Some(42)],
        "{generations:?}"
    );
    // Once acknowledged, the outbox empties.
    tokio::time::timeout(WAIT, async {
        while std::fs::read_dir(&outbox).unwrap().count() != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the outbox did not empty");
    cancel.cancel();
}

/// Wrong tokens, a client id that is not the user name, and (on the
/// embedded broker) a last will on another device's topic are refused.
pub async fn bad_credentials_are_refused(kind: Kind) {
    assert!(!kind.tls(), "tokens are the plain-TCP credentials");
    let Some(broker) = TestBroker::start(kind).await else {
        return;
    };
    let scheme = TopicScheme::default();
    let attempt = |client_id: &str, user: &str, pass: &str, will: Option<String>| {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", broker.port);
        o.set_credentials(user, pass);
        if let Some(topic) = will {
            o.set_last_will(rumqttc::LastWill::new(topic, "x", QoS::AtLeastOnce, true));
        }
        async move {
            let (_c, mut ev) = AsyncClient::new(o, 4);
            tokio::time::timeout(WAIT, ev.poll())
                .await
                .expect("no answer")
        }
    };
    let refused = |r: Result<Event, rumqttc::ConnectionError>| {
        matches!(r, Err(rumqttc::ConnectionError::ConnectionRefused(_)))
    };
    assert!(refused(attempt("cam-a", "cam-a", "wrong", None).await));
    assert!(refused(attempt("cam-a", "cam-a", "", None).await));
    // Positive control.
    assert!(matches!(
        attempt("cam-a", "cam-a", token("cam-a"), None).await,
        Ok(Event::Incoming(Packet::ConnAck(_)))
    ));
    if kind == Kind::Embedded {
        // Mosquitto (use_username_as_clientid) silently replaces the client
        // id instead; the embedded broker refuses the mismatch.
        assert!(refused(
            attempt("cam-b", "cam-a", token("cam-a"), None).await
        ));
        let foreign_will = scheme.render(&Topic::Online(dev("cam-b")));
        assert!(refused(
            attempt("cam-a", "cam-a", token("cam-a"), Some(foreign_will)).await
        ));
        assert!(refused(attempt(SERVER_ID, SERVER_ID, "wrong", None).await));
    }
}

/// Both sides publish each topic kind with the QoS and retain flag of
/// [`TopicScheme::publication`]: a late subscriber finds exactly the retained
/// kinds (the server's desired state, the agent's status and presence), each
/// with its kind's QoS, and nothing of the others (command, telemetry); a
/// late server link sees the agent's retained status.
pub async fn both_sides_publish_each_kind_with_the_scheme_delivery(kind: Kind) {
    let Some(broker) = TestBroker::start(kind).await else {
        return;
    };
    let scheme = TopicScheme::default();
    let server_cancel = CancellationToken::new();
    let (server, mut inbound) = server_link(&broker, &server_cancel);
    wait_connected(server.connected(), true).await;
    // Nobody listens on cam-a's topics: only what is retained stays.
    server
        .publish_desired(&dev("cam-a"), desired_bytes("cam-a", "late"))
        .await
        .unwrap();
    server
        .publish_cmd(&dev("cam-a"), b"{\"cmd\":2}".to_vec())
        .await
        .unwrap();

    let cancel = CancellationToken::new();
    let state = tempfile::tempdir().unwrap();
    let (agent, _downlink, _task) =
        agent_link(&broker, "cam-b", state.path(), state.path(), &cancel).await;
    wait_connected(agent.connected(), true).await;
    agent.report_status(status("cam-b", 5)).await.unwrap();
    recv_until(&mut inbound, |m| match m {
        Inbound::Status(s) if s.device == dev("cam-b") => Some(()),
        _ => None,
    })
    .await;
    // Telemetry reached the server live, so it was published.
    let sender = agent.clone();
    let t = tokio::spawn(async move {
        loop {
            sender.send_telemetry(Telemetry::default());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    recv_until(&mut inbound, |m| match m {
        Inbound::Telemetry(_) => Some(()),
        _ => None,
    })
    .await;
    t.abort();
    // A moment for the last acknowledgements, then the server link stops
    // (cleanly: its client id is free for the observer).
    tokio::time::sleep(Duration::from_millis(500)).await;
    server_cancel.cancel();
    drop(inbound);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A late raw subscriber (the server's account) over everything.
    let o = broker.server_options();
    let (client, mut events) = AsyncClient::new(o, 16);
    client
        .subscribe(format!("{}/#", scheme.prefix()), QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = scheme.parse(&p.topic).unwrap();
                    let qos = match p.qos {
                        QoS::AtMostOnce => 0,
                        QoS::AtLeastOnce => 1,
                        QoS::ExactlyOnce => 2,
                    };
                    seen.insert(p.topic.clone(), (topic, qos, p.retain));
                }
                Ok(_) => {}
                Err(e) => panic!("observer: {e}"),
            }
        }
    })
    .await;
    drop(client);
    drop(events);
    let mut kinds = Vec::new();
    for (name, (topic, qos, retain)) in &seen {
        let want = scheme.publication(topic);
        assert!(*retain, "{name} was delivered live to a late subscriber");
        assert_eq!(want.retain, *retain, "{name}");
        assert_eq!(want.qos.level(), *qos, "{name}: QoS");
        kinds.push(topic.clone());
    }
    kinds.sort_by_key(|t| (t.device().clone(), t.kind()));
    assert_eq!(
        kinds,
        vec![
            Topic::Desired(dev("cam-a")),
            Topic::Status(dev("cam-b")),
            Topic::Online(dev("cam-b")),
        ],
        "exactly the retained kinds: {seen:?}"
    );

    // A late server link sees the agent's retained status.
    let late = CancellationToken::new();
    let (_server2, mut inbound2) = server_link(&broker, &late);
    let s = recv_until(&mut inbound2, |m| match m {
        Inbound::Status(s) if s.device == dev("cam-b") => Some(s),
        _ => None,
    })
    .await;
    assert_eq!(s.generation, Some(5));
    late.cancel();
    cancel.cancel();
}

/// Over TLS the certificate is the identity: no certificate (even with the
/// right token), another CA's, an expired one and, on the embedded broker, a
/// client id other than the certificate's are refused; a revoked device is
/// refused from then on, and the embedded broker cuts its live connection.
pub async fn certificates_decide_identity(kind: Kind) {
    assert!(kind.tls());
    let Some(mut broker) = TestBroker::start(kind).await else {
        return;
    };
    async fn connect(o: MqttOptions) -> Result<Event, rumqttc::ConnectionError> {
        let (_c, mut ev) = AsyncClient::new(o, 4);
        tokio::time::timeout(WAIT, ev.poll())
            .await
            .expect("no answer")
    }
    fn accepted(r: &Result<Event, rumqttc::ConnectionError>) -> bool {
        matches!(r, Ok(Event::Incoming(Packet::ConnAck(c)))
            if c.code == rumqttc::ConnectReturnCode::Success)
    }
    // Positive control.
    let r = connect(broker.device_options("cam-a")).await;
    assert!(accepted(&r), "{r:?}");
    // No certificate, with the token plain TCP would take.
    let r = connect(broker.options("cam-a", "cam-a", token("cam-a"), None)).await;
    assert!(!accepted(&r), "no certificate: {r:?}");
    // Another CA's certificate for the same device id.
    let other_dir = tempfile::tempdir().unwrap();
    let other = FleetCa::open_or_create(other_dir.path(), now()).unwrap();
    let (stranger, _) = issue(&other, "cam-a", 3600, now());
    let r = connect(broker.options("cam-a", "cam-a", "", Some(&stranger))).await;
    assert!(!accepted(&r), "foreign CA: {r:?}");
    // An expired certificate.
    let (expired, _) = broker.identity("cam-a", 60, now() - 3600);
    let r = connect(broker.options("cam-a", "cam-a", "", Some(&expired))).await;
    assert!(!accepted(&r), "expired: {r:?}");
    if !kind.mosquitto() {
        // Mosquitto (use_username_as_clientid) replaces the client id with
        // the certificate's name; the embedded broker refuses the mismatch.
        let (a, _) = broker.identity("cam-a", 3600, now());
        let r = connect(broker.options("cam-b", "cam-b", "", Some(&a))).await;
        assert!(!accepted(&r), "client id of another device: {r:?}");
    }

    // Revocation.
    let (c, serial) = broker.identity("cam-c", 3600, now());
    let (_client, mut live) = AsyncClient::new(broker.options("cam-c", "cam-c", "", Some(&c)), 4);
    let r = tokio::time::timeout(WAIT, live.poll()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    broker.revoke("cam-c", &serial);
    if !kind.mosquitto() {
        let cut = tokio::time::timeout(WAIT, async {
            loop {
                if let Err(e) = live.poll().await {
                    return e;
                }
            }
        })
        .await
        .expect("the revoked device stayed connected");
        eprintln!("revoked device cut off: {cut}");
    }
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            let r = connect(broker.options("cam-c", "cam-c", "", Some(&c))).await;
            if !accepted(&r) {
                return r;
            }
            // Mosquitto reads the new CRL when it handles the SIGHUP.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the revoked device can still connect");
    eprintln!("revoked device refused: {refused:?}");
    // Other devices are unaffected.
    let r = connect(broker.device_options("cam-a")).await;
    assert!(accepted(&r), "{r:?}");
}
