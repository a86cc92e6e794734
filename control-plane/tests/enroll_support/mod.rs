//! A real fleet-server (in-process, on loopback) serving its API and the
//! enrollment routes over TLS with the fleet CA it made, as devices and
//! fleetctl meet it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_control_plane::client::Client;
use fleet_control_plane::enroll::EnrollConfig;
use fleet_control_plane::pki::Revoked;
use fleet_control_plane::server::{Plugins, Server};
use fleet_control_plane::store::Store;
use tokio_util::sync::CancellationToken;

use crate::common::Site;

pub struct Bench {
    pub site: Site,
    pub store: Arc<dyn Store>,
    pub revoked: Revoked,
    pub admin: Client,
    pub admin_token: String,
    /// `https://127.0.0.1:PORT`: the API and the enrollment endpoints.
    pub https: String,
    /// `http://127.0.0.1:PORT`: the same address in plain HTTP (which the
    /// server does not speak).
    pub http: String,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub fingerprint: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bench {
    /// A server with `cameras`, device certificates of `cert_secs`, and
    /// the enrollment buckets of `limits`.
    pub async fn start(cert_secs: u64, limits: EnrollConfig) -> Bench {
        let site = Site::new();
        let mut config = site.config();
        config.tls.device_cert_secs = Some(cert_secs);
        config.enroll = limits;
        let ca_path = config.ca_cert_path();
        let server = Server::bind_with(config, Plugins::default()).await.unwrap();
        let security = server.security().expect("TLS is on by default");
        let store = server.fleet().store().clone();
        let addr = server.local_addr().unwrap();
        let admin_token = server.admin_token().unwrap().to_owned();
        let stop = CancellationToken::new();
        let tasks = vec![{
            let stop = stop.clone();
            tokio::spawn(async move { server.run(stop).await.unwrap() })
        }];
        let https = format!("https://{addr}");
        let ca_pem = security.ca.cert_pem().to_owned();
        let admin = Client::with_ca(&https, Some(admin_token.clone()), &ca_pem).unwrap();
        crate::common::cameras_group(&admin).await;
        Bench {
            site,
            store,
            revoked: security.revoked.clone(),
            admin,
            admin_token,
            https,
            http: format!("http://{addr}"),
            fingerprint: security.ca.fingerprint().to_owned(),
            ca_pem,
            ca_path,
            stop,
            tasks,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }

    /// Runs `fleetctl ARGS` against the server as admin.
    pub fn fleetctl(&self, config_dir: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(args)
            .env("FLEET_CONFIG_DIR", config_dir)
            .env("FLEET_SERVER", &self.https)
            .env("FLEET_TOKEN", &self.admin_token)
            .env("FLEET_CA", &self.ca_path)
            .output()
            .unwrap()
    }

    /// A reqwest client trusting the fleet CA, presenting no certificate.
    pub fn https_client(&self) -> reqwest::Client {
        let tls = fleet_agent::link::tls::client_config(&self.ca_pem, false, None).unwrap();
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }
}
