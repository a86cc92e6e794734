//! A real fleet-server started in-process on 127.0.0.1:0 with fresh keys.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_control_plane::client::Client;
use fleet_control_plane::config::Config;
use fleet_control_plane::fleet::ports::{DesiredPublisher, Inbound, PortError, RecordingPublisher};
use fleet_control_plane::keys::{self, KeyFile};
use fleet_control_plane::server::{Plugins, Server};
use fleet_control_plane::sign;
use fleet_protocol::lifecycle::Phase;
use fleet_protocol::message::{DeviceInfo, ReleaseRef};
use fleet_protocol::trust::Role;
use fleet_protocol::{
    AppName, AppStatus, DeviceId, Digest, Release, SCHEMA_VERSION, StatusReport, TrustedRoot,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Keys and a data directory that outlive server restarts.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        keys::init(&dir.path().join("keys"), 365, false, now()).unwrap();
        Site { dir }
    }

    pub fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn release_key(&self) -> KeyFile {
        KeyFile::load_for(&self.keys().join("release.key"), Role::Release).unwrap()
    }

    pub fn trust(&self) -> TrustedRoot {
        TrustedRoot::bootstrap(
            &std::fs::read(self.keys().join("trust.json")).unwrap(),
            now(),
        )
        .unwrap()
    }

    pub fn config(&self) -> Config {
        let mut c = Config {
            data_dir: self.dir.path().join("data"),
            ..Config::default()
        };
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.director.key = self.keys().join("director.key");
        c.director.trust = self.keys().join("trust.json");
        c
    }

    /// A signed release of `app` at `version` (JSON bytes of the envelope).
    pub fn release(&self, app: &str, version: &str) -> Vec<u8> {
        release_signed_by(&self.release_key(), app, version)
    }
}

pub fn release_signed_by(key: &KeyFile, app: &str, version: &str) -> Vec<u8> {
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new(app).unwrap(),
        version: version.into(),
        repository: format!("registry.local:5000/edge/{app}"),
        manifest_digest: Digest::of(format!("{app}:{version}").as_bytes()),
        runtime: Default::default(),
    };
    sign::sign_release("test", &serde_json::to_vec(&release).unwrap(), key)
        .unwrap()
        .to_json()
}

pub struct Running {
    pub addr: SocketAddr,
    /// The fleet CA (PEM), `None` with `[tls] insecure`.
    pub ca: Option<String>,
    /// Its file (for `fleetctl --ca`).
    pub ca_path: PathBuf,
    /// The server's CA and TLS state (`None` with `[tls] insecure`).
    pub security: Option<Arc<fleet_control_plane::pki::Security>>,
    pub token: Option<String>,
    pub inbound: mpsc::Sender<Inbound>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn client(&self, token: &str) -> Client {
        client_of(&self.url(), self.ca.as_deref(), Some(token.to_owned()))
    }

    /// `--server URL --token T [--ca FILE]`: what fleetctl needs to reach
    /// this server.
    pub fn remote_args(&self, token: &str) -> Vec<String> {
        let mut args = vec![
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

    /// A raw HTTP client trusting the server (its CA when TLS is on).
    pub fn http(&self) -> reqwest::Client {
        http_client(self.ca.as_deref())
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }

    pub async fn send(&self, report: StatusReport) {
        self.inbound.send(Inbound::Status(report)).await.unwrap();
    }
}

pub async fn start(config: Config, publisher: Arc<dyn DesiredPublisher>) -> Running {
    let plugins = Plugins {
        publisher,
        ..Plugins::default()
    };
    start_with(config, plugins).await
}

/// A server with the given plugins (e.g. an image resolver).
pub async fn start_with(config: Config, plugins: Plugins) -> Running {
    let ca_path = config.ca_cert_path();
    let server = Server::bind_with(config, plugins).await.unwrap();
    let addr = server.local_addr().unwrap();
    let security = server.security();
    let ca = security.as_ref().map(|s| s.ca.cert_pem().to_owned());
    let token = server.admin_token().map(str::to_owned);
    let inbound = server.inbound().expect("bind_with takes device messages");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { server.run(stop).await.unwrap() });
    Running {
        addr,
        ca,
        ca_path,
        security,
        token,
        inbound,
        shutdown,
        task,
    }
}

pub fn recording() -> Arc<RecordingPublisher> {
    Arc::new(RecordingPublisher::new())
}

/// A link that is down: every publication fails.
pub struct BrokerDown;

#[async_trait::async_trait]
impl DesiredPublisher for BrokerDown {
    async fn publish_desired(&self, device: &DeviceId, _: Vec<u8>) -> Result<(), PortError> {
        Err(PortError::Publish {
            device: device.clone(),
            source: "broker unreachable".into(),
        })
    }
}

pub fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// Creates group `cameras`: the devices labelled `role=camera`.
pub async fn cameras_group(client: &Client) {
    client
        .create_group(&fleet_control_plane::api::types::CreateGroup {
            name: fleet_protocol::GroupName::new("cameras").unwrap(),
            selector: [("role".to_owned(), "camera".to_owned())].into(),
            members: vec![],
        })
        .await
        .unwrap();
}

/// A device's first report: registers it with labels.
pub fn hello(id: &str, labels: &[(&str, &str)]) -> StatusReport {
    StatusReport {
        schema: SCHEMA_VERSION,
        device: dev(id),
        reported_at: now(),
        generation: None,
        apps: vec![],
        rejected: None,
        info: Some(DeviceInfo {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            l4t_version: Some("36.3.0".into()),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }),
    }
}

/// A report that `app` runs `digest`, committed.
pub fn committed(id: &str, generation: u64, app: &str, digest: &Digest) -> StatusReport {
    StatusReport {
        schema: SCHEMA_VERSION,
        device: dev(id),
        reported_at: now(),
        generation: Some(generation),
        apps: vec![AppStatus {
            app: AppName::new(app).unwrap(),
            phase: Phase::Committed,
            running: Some(ReleaseRef {
                version: "x".into(),
                release_digest: digest.clone(),
            }),
            target: None,
            previous: None,
            health: Default::default(),
            restarts: 0,
            progress: None,
            error: None,
            delta_fallbacks: vec![],
        }],
        rejected: None,
        info: None,
    }
}

/// Polls `check` until it returns Some, for up to 60 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn keys_dir(site: &Site) -> &Path {
    site.dir.path()
}

/// An API client of `url`, trusting `ca` (PEM) when given.
pub fn client_of(url: &str, ca: Option<&str>, token: Option<String>) -> Client {
    match ca {
        Some(ca) => Client::with_ca(url, token, ca).unwrap(),
        None => Client::new(url, token),
    }
}

/// A raw HTTP client trusting `ca` (PEM) alone when given.
pub fn http_client(ca: Option<&str>) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    let builder = match ca {
        Some(ca) => builder.use_preconfigured_tls(
            (*fleet_agent::link::tls::client_config(ca, false, None).unwrap()).clone(),
        ),
        None => builder,
    };
    builder.build().unwrap()
}

/// A device key made here and its certificate from `ca`: what enrollment
/// gives a device.
pub fn device_identity(
    ca: &fleet_control_plane::pki::FleetCa,
    id: &str,
    lifetime_secs: u64,
) -> fleet_agent::link::tls::ClientIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let cert = ca
        .sign_device_csr(&csr, &dev(id), lifetime_secs, now())
        .unwrap();
    fleet_agent::link::tls::ClientIdentity {
        cert_pem: cert.pem,
        key_pem: key.serialize_pem(),
    }
}
