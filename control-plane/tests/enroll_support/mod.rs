//! The enrollment router served as the server will serve it: over TLS with
//! the fleet CA's server certificate, the peer's address and its verified
//! client certificate in each request's extensions; and the same router
//! over plain HTTP on another port for the admin client (fleetctl speaks
//! plain HTTP to a loopback server). The rest is a real fleet-server
//! started in-process (`common`), its API merged with the enrollment
//! routes on both listeners.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use fleet_control_plane::client::Client;
use fleet_control_plane::config::Config;
use fleet_control_plane::enroll::{self, EnrollConfig, EnrollState};
use fleet_control_plane::pki::{self, FleetCa, PeerCert, Revoked};
use fleet_control_plane::server::{Plugins, Server};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::common::{Site, now};

/// A TLS listener: the handshake runs in `accept` (fine for tests).
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What the accept loop knows of a connection.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    cert: Option<PeerCert>,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let cert =
            pki::tls::peer_of(stream.io().get_ref().1.peer_certificates()).and_then(Result::ok);
        Peer {
            addr: *stream.remote_addr(),
            cert,
        }
    }
}

/// What the server's accept loop will put in each request.
async fn extensions(mut request: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>().cloned() {
        request.extensions_mut().insert(ConnectInfo(peer.addr));
        if let Some(cert) = peer.cert {
            request.extensions_mut().insert(cert);
        }
    }
    next.run(request).await
}

pub struct Bench {
    pub site: Site,
    pub state: EnrollState,
    pub admin: Client,
    pub admin_token: String,
    /// `https://127.0.0.1:PORT`: the enrollment endpoints over TLS.
    pub https: String,
    /// `http://127.0.0.1:PORT`: the same router, plain (admin client).
    pub http: String,
    pub ca_pem: String,
    pub fingerprint: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bench {
    /// A server with `cameras`, device certificates of `cert_secs`, and
    /// the enrollment buckets of `limits`.
    pub async fn start(cert_secs: u64, limits: EnrollConfig) -> Bench {
        let site = Site::new();
        let config: Config = site.config();
        let server = Server::bind_with(config, Plugins::default()).await.unwrap();
        let fleet = server.fleet();
        let admin_token = server.admin_token().unwrap().to_owned();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                server.run(stop).await.unwrap();
            }));
        }
        let ca = Arc::new(FleetCa::open_or_create(&site.dir.path().join("pki"), now()).unwrap());
        let state = EnrollState::new(fleet, ca.clone(), Revoked::default(), &limits, cert_secs);
        // The server's API with the enrollment routes merged in, as the
        // server will serve them.
        let api = fleet_control_plane::api::ApiState {
            fleet: state.fleet.clone(),
            resolver: Arc::new(fleet_control_plane::fleet::ports::DigestOnlyResolver),
        };
        let app = || {
            fleet_control_plane::api::router(api.clone())
                .merge(enroll::router(state.clone()))
                .layer(axum::middleware::from_fn(extensions))
        };
        let identity = ca.issue_server(&["127.0.0.1".into()], now()).unwrap();
        let tls = pki::tls::server_config(&ca, &identity, &[b"http/1.1"]).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = format!("https://{}", tcp.local_addr().unwrap());
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let served: Router = app();
        let graceful = stop.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(
                listener,
                served.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(async move { graceful.cancelled().await })
            .await
            .unwrap();
        }));
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", plain.local_addr().unwrap());
        let served: Router = app();
        let graceful = stop.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(
                plain,
                served.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { graceful.cancelled().await })
            .await
            .unwrap();
        }));
        let admin = Client::new(&http, Some(admin_token.clone()));
        crate::common::cameras_group(&admin).await;
        Bench {
            site,
            admin,
            admin_token,
            https,
            http,
            ca_pem: ca.cert_pem().to_owned(),
            fingerprint: ca.fingerprint().to_owned(),
            state,
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

    /// Runs `fleetctl ARGS` against the plain listener as admin.
    pub fn fleetctl(&self, config_dir: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(args)
            .env("FLEET_CONFIG_DIR", config_dir)
            .env("FLEET_SERVER", &self.http)
            .env("FLEET_TOKEN", &self.admin_token)
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
