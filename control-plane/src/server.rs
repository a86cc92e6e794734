//! `fleet-server`: config → store, director, trust → API + engine tasks.
//!
//! [`Server::bind`] opens everything and binds the HTTP listener (so tests
//! can bind `127.0.0.1:0` and read [`Server::local_addr`]); [`Server::run`]
//! serves until `shutdown` is cancelled, then drains with a grace timeout.
//! The MQTT link and the content endpoint plug in through [`Plugins`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use fleet_protocol::TrustedRoot;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::config::{Config, ConfigError};
use crate::director::{Director, DirectorError};
use crate::fleet::ports::{
    DesiredPublisher, DigestOnlyResolver, ImageResolver, Inbound, RecordingPublisher,
};
use crate::fleet::{self, Fleet};
use crate::store::{SledStore, Store, StoreError};

/// How long shutdown waits for requests and tasks to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Capacity of the inbound device-message channel.
pub const INBOUND_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} (create keys with `fleetctl keys init`, or set director.key)")]
    Director(Box<DirectorError>),
    #[error("trust root {path}: {message} (set director.trust to the trust.json the devices use)")]
    Trust { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {source}")]
    Serve {
        #[source]
        source: std::io::Error,
    },
}

impl ServerError {
    /// The process exit code for this error (distinct per kind).
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Config(_) => 2,
            ServerError::Director(_) | ServerError::Trust { .. } => 3,
            ServerError::DataDir { .. } | ServerError::Store(_) => 4,
            ServerError::Bind { .. } => 5,
            ServerError::Serve { .. } => 1,
        }
    }
}

/// What other parts of the control plane plug into the server.
pub struct Plugins {
    /// Sends desired states to devices (the MQTT link).
    pub publisher: Arc<dyn DesiredPublisher>,
    /// Resolves image tags (the content store).
    pub resolver: Arc<dyn ImageResolver>,
    /// Extra routes merged at the root (e.g. the OCI pull API under `/v2`).
    pub routes: Router,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            publisher: Arc::new(RecordingPublisher::new()),
            resolver: Arc::new(DigestOnlyResolver),
            routes: Router::new(),
        }
    }
}

pub struct Server {
    config: Config,
    listener: TcpListener,
    fleet: Fleet,
    resolver: Arc<dyn ImageResolver>,
    routes: Router,
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: mpsc::Receiver<Inbound>,
    admin_token: Option<String>,
}

fn load_trust(path: &std::path::Path, now: u64) -> Result<TrustedRoot, ServerError> {
    let bytes = std::fs::read(path).map_err(|e| ServerError::Trust {
        path: path.to_owned(),
        message: format!("cannot read it: {e}"),
    })?;
    TrustedRoot::bootstrap(&bytes, now).map_err(|e| ServerError::Trust {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl Server {
    /// Validates `config`, opens the store, loads the director key and the
    /// trust root, creates the admin token on first start, binds HTTP.
    pub async fn bind(config: Config, plugins: Plugins) -> Result<Server, ServerError> {
        config.validate()?;
        let now = fleet::now();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let director = Director::load(
            &config.director.key,
            config.desired.lifetime_secs,
            config.desired.renew_margin_secs,
        )
        .map_err(|e| ServerError::Director(Box::new(e)))?;
        let trust = load_trust(&config.director.trust, now)?;
        let role = trust.role(fleet_protocol::trust::Role::Director);
        if !role.keyids.contains(&director.keyid()) {
            return Err(ServerError::Trust {
                path: config.director.trust.clone(),
                message: format!(
                    "the director key {} is not a director key of this trust root; devices would refuse its desired states",
                    director.keyid()
                ),
            });
        }
        let store_dir = config.store_dir();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SledStore::open(&store_dir))
                .await
                .map_err(|e| ServerError::Serve {
                    source: std::io::Error::other(e),
                })??,
        );
        let admin_token = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || api::auth::ensure_admin_token(store.as_ref(), now))
                .await
                .map_err(|e| ServerError::Serve {
                    source: std::io::Error::other(e),
                })??
        };
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let fleet = Fleet::new(store, director, trust, plugins.publisher);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        Ok(Server {
            config,
            listener,
            fleet,
            resolver: plugins.resolver,
            routes: plugins.routes,
            inbound_tx,
            inbound_rx,
            admin_token,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|source| ServerError::Serve { source })
    }

    /// The admin token, only on the first start (it is stored hashed).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Where the link sends device messages.
    pub fn inbound(&self) -> mpsc::Sender<Inbound> {
        self.inbound_tx.clone()
    }

    pub fn fleet(&self) -> Fleet {
        self.fleet.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Server {
            config,
            listener,
            fleet,
            resolver,
            routes,
            inbound_tx,
            mut inbound_rx,
            admin_token: _,
        } = self;
        drop(inbound_tx);
        let tasks = TaskTracker::new();
        let stop = shutdown.child_token();

        // Device messages.
        {
            let fleet = fleet.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        msg = inbound_rx.recv() => match msg {
                            Some(m) => {
                                if let Err(e) = fleet.inbound(m).await {
                                    tracing::warn!(error = %e, "handling a device message failed");
                                }
                            }
                            None => break,
                        }
                    }
                }
            });
        }

        // Outbox at start, then renewal + outbox sweeps.
        {
            let fleet = fleet.clone();
            let stop = stop.clone();
            let every = Duration::from_secs(config.desired.renew_check_secs);
            tasks.spawn(async move {
                match fleet.publish_pending().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "published desired states left unpublished"),
                    Err(e) => {
                        tracing::warn!(error = %e, "publishing pending desired states failed")
                    }
                }
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    if let Err(e) = fleet.renew_due().await {
                        tracing::warn!(error = %e, "renewing desired states failed");
                    }
                    if let Err(e) = fleet.publish_pending().await {
                        tracing::warn!(error = %e, "publishing pending desired states failed");
                    }
                }
            });
        }

        let app = api::router(ApiState {
            fleet: fleet.clone(),
            resolver,
        })
        .merge(routes);
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Serve { source })?;
        tracing::info!(%addr, "API listening");
        let graceful = {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
            .map_err(|source| ServerError::Serve { source });
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks did not stop within the grace period");
        }
        tracing::info!("server stopped");
        served
    }
}

/// Runs a server with `config` and no link or content plug-ins until
/// `shutdown` is cancelled. The admin token of a first start goes to stdout.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let server = Server::bind(config, Plugins::default()).await?;
    if let Some(token) = server.admin_token() {
        println!("admin token (shown once, stored hashed): {token}");
        println!(
            "next: fleetctl login --server http://{} --token {token}",
            server.local_addr()?
        );
    }
    server.run(shutdown).await
}
