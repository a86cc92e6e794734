//! `fleet-server`: config → store, director, trust → API + engine tasks.
//!
//! [`Server::bind`] opens everything and binds the HTTP listener (so tests
//! can bind `127.0.0.1:0` and read [`Server::local_addr`]); [`Server::run`]
//! serves until `shutdown` is cancelled, then drains with a grace timeout.
//! `bind` builds the content store, the broker and the MQTT link itself;
//! [`Server::bind_with`] takes [`Plugins`] in their place (tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use fleet_protocol::TrustedRoot;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::broker::{BrokerConfig, BrokerTls, EmbeddedBroker, ServerAccount};
use crate::config::{Config, ConfigError};
use crate::content::{ContentResolver, ContentStore};
use crate::device_token::DeviceTokens;
use crate::director::{Director, DirectorError};
use crate::fleet::ports::{
    DesiredPublisher, DigestOnlyResolver, GateQuery, ImageResolver, Inbound, NoPreparation,
    NoPrometheus, RecordingPublisher, UpdatePreparer,
};
use crate::fleet::promql;
use crate::fleet::{self, Fleet};
use crate::link::{BrokerAddr, LinkError, LinkPublisher, ServerLink, ServerLinkConfig};
use crate::pki::Security;
use crate::prometheus::Prometheus;
use crate::store::{SledStore, Store, StoreError};
use crate::telemetry::IngestCounters;

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
    #[error("content store: {0}")]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    DeviceToken(#[from] crate::device_token::DeviceTokenError),
    #[error("MQTT broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("MQTT link: {0}")]
    Link(#[from] crate::link::LinkError),
    #[error("Prometheus: {0}")]
    Prometheus(crate::prometheus::PrometheusError),
    #[error("TLS: {0}")]
    Pki(#[from] crate::pki::PkiError),
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
            ServerError::Config(_) | ServerError::Prometheus(_) => 2,
            ServerError::Pki(_) => 3,
            ServerError::Director(_) | ServerError::Trust { .. } => 3,
            ServerError::DataDir { .. }
            | ServerError::Store(_)
            | ServerError::Content(_)
            | ServerError::DeviceToken(_) => 4,
            ServerError::Bind { .. } | ServerError::Broker(_) => 5,
            ServerError::Link(_) => 6,
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
    /// Prepares what a rollout's devices will fetch (layer deltas).
    pub preparer: Arc<dyn UpdatePreparer>,
    /// Extra routes merged at the root (e.g. the OCI pull API under `/v2`).
    pub routes: Router,
    /// Extra routes merged at the root that need an operator token (e.g.
    /// image import).
    pub authed_routes: Option<Router>,
    /// The layer-delta cache, whose counters `/metrics` exposes.
    pub deltas: Option<crate::content::Deltas>,
    /// Ingest counters shared with the MQTT link (which counts rejects).
    pub counters: Arc<IngestCounters>,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            publisher: Arc::new(RecordingPublisher::new()),
            resolver: Arc::new(DigestOnlyResolver),
            preparer: Arc::new(NoPreparation),
            routes: Router::new(),
            authed_routes: None,
            deltas: None,
            counters: IngestCounters::new(),
        }
    }
}

pub struct Server {
    config: Config,
    listener: TcpListener,
    security: Option<Arc<Security>>,
    fleet: Fleet,
    resolver: Arc<dyn ImageResolver>,
    routes: Router,
    authed_routes: Option<Router>,
    deltas: Option<crate::content::Deltas>,
    /// Where tests send device messages when no link was built.
    inbound_tx: Option<mpsc::Sender<Inbound>>,
    /// Device messages for the engine: the link's own receiver, or the
    /// receiving end of `inbound_tx`.
    inbound_rx: mpsc::Receiver<Inbound>,
    attached: Attached,
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
    /// Validates `config`; builds the content store, the embedded broker (or
    /// the address of an external one) and the MQTT link, whose receiver of
    /// device messages goes straight to the engine; then as [`Self::bind_with`].
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let security = Security::from_config(&config.tls, &config.data_dir, fleet::now())?;
        let mut attached = Attached::default();
        let (plugins, from_devices) = attach(&config, security.as_deref(), &mut attached).await?;
        Self::open(config, security, plugins, from_devices, None, attached).await
    }

    /// Validates `config` and opens the server with `plugins` in place of the
    /// MQTT link and the content store: device messages come through
    /// [`Self::inbound`]. Opens the store, loads the director key and the
    /// trust root, creates the admin token on first start, binds HTTP.
    pub async fn bind_with(config: Config, plugins: Plugins) -> Result<Server, ServerError> {
        config.validate()?;
        let security = Security::from_config(&config.tls, &config.data_dir, fleet::now())?;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        Self::open(
            config,
            security,
            plugins,
            inbound_rx,
            Some(inbound_tx),
            Attached::default(),
        )
        .await
    }

    async fn open(
        config: Config,
        security: Option<Arc<Security>>,
        plugins: Plugins,
        inbound_rx: mpsc::Receiver<Inbound>,
        inbound_tx: Option<mpsc::Sender<Inbound>>,
        attached: Attached,
    ) -> Result<Server, ServerError> {
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
        if let Some(security) = &security {
            // The revoked devices, before the broker or the API lets any in.
            let (store, revoked) = (store.clone(), security.revoked.clone());
            let n = tokio::task::spawn_blocking(move || {
                let all = store.revoked_all()?;
                let n = all.len();
                all.into_iter().for_each(|r| revoked.insert(r.device));
                Ok::<_, StoreError>(n)
            })
            .await
            .map_err(|e| ServerError::Serve {
                source: std::io::Error::other(e),
            })??;
            tracing::debug!(devices = n, "revoked devices loaded");
        }
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.http.listen,
                source,
            })?;
        let fleet = Fleet::new(
            store,
            director,
            trust,
            plugins.publisher,
            plugins.preparer,
            plugins.counters,
        );
        {
            let fleet = fleet.clone();
            let n = tokio::task::spawn_blocking(move || fleet.load_live())
                .await
                .map_err(|e| ServerError::Serve {
                    source: std::io::Error::other(e),
                })?
                .map_err(|e| ServerError::Serve {
                    source: std::io::Error::other(e),
                })?;
            tracing::debug!(devices = n, "latest device state loaded");
        }
        Ok(Server {
            config,
            listener,
            security,
            fleet,
            resolver: plugins.resolver,
            routes: plugins.routes,
            authed_routes: plugins.authed_routes,
            deltas: plugins.deltas,
            inbound_tx,
            inbound_rx,
            attached,
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

    /// Where device messages are sent to the engine, for a server opened
    /// with [`Self::bind_with`] (one built by [`Self::bind`] hands the
    /// link's receiver to the engine and has none).
    pub fn inbound(&self) -> Option<mpsc::Sender<Inbound>> {
        self.inbound_tx.clone()
    }

    pub fn fleet(&self) -> Fleet {
        self.fleet.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The fleet CA and TLS configurations; `None` with `[tls] insecure`.
    pub fn security(&self) -> Option<Arc<Security>> {
        self.security.clone()
    }

    /// The API's base URL (`https://` unless insecure).
    pub fn url(&self) -> Result<String, ServerError> {
        let scheme = if self.security.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Server {
            config,
            listener,
            security,
            fleet,
            resolver,
            routes,
            authed_routes,
            deltas,
            inbound_tx,
            inbound_rx,
            attached,
            admin_token: _,
        } = self;
        drop(inbound_tx);
        let timeout = Duration::from_secs(config.prometheus.timeout_secs);
        let prometheus = config
            .prometheus
            .url
            .as_deref()
            .map(|url| Prometheus::new(url, timeout))
            .transpose()
            .map_err(ServerError::Prometheus)?;
        let tasks = TaskTracker::new();
        let stop = shutdown.child_token();

        tasks.spawn(inbound_loop(fleet.clone(), stop.clone(), inbound_rx));
        let every = Duration::from_secs(config.desired.renew_check_secs);
        // Only a broker of this process forgets its retained messages with it.
        let embedded = attached.broker.is_some();
        tasks.spawn(outbox_loop(fleet.clone(), stop.clone(), every, embedded));
        let every = Duration::from_secs(config.telemetry.flush_secs);
        tasks.spawn(flush_loop(fleet.clone(), stop.clone(), every));
        // Without a Prometheus, PromQL gates of existing rollouts are
        // inconclusive (they pause), and new ones are refused.
        let query: Arc<dyn GateQuery> = match prometheus {
            Some(prometheus) => {
                fleet.attach_prometheus();
                Arc::new(prometheus)
            }
            None => Arc::new(NoPrometheus),
        };
        tasks.spawn(gate_loop(fleet.clone(), stop.clone(), query));

        // Images: to devices (certificate) and operators (token), unless
        // anonymous pulls are configured or TLS is off.
        let routes = match security.is_some() && !config.content.anonymous_pull {
            true => api::access::restrict(routes, api::access::Access::Reader),
            false => routes,
        };
        let mut app = api::router(ApiState {
            fleet: fleet.clone(),
            resolver,
        })
        .merge(routes);
        if config.http.metrics {
            let ca_not_after = security.as_ref().map(|s| s.ca.not_after());
            app = app.merge(api::metrics_router(fleet.clone(), deltas, ca_not_after));
        }
        if let Some(authed) = authed_routes {
            app = app.merge(api::access::restrict(authed, api::access::OPERATOR));
        }
        if let Some(security) = &security {
            app = app.merge(crate::enroll::router(crate::enroll::EnrollState::new(
                fleet.clone(),
                security.ca.clone(),
                security.revoked.clone(),
                &config.enroll,
                security.device_cert_lifetime_secs,
            )));
        }
        let app = api::audit::guarded(app, fleet.store().clone());
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Serve { source })?;
        let tls = security
            .as_ref()
            .map(|s| (s.http.clone(), s.revoked.clone()));
        tracing::info!(%addr, tls = tls.is_some(), "API listening");
        let served = crate::serve::serve(listener, app, tls, stop.clone())
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
        // Every device message taken before the stop is in memory: write it.
        match fleet.flush().await {
            Ok(n) => tracing::info!(devices = n, "device state flushed at shutdown"),
            Err(e) => tracing::error!(error = %e, "flushing device state at shutdown failed"),
        }
        attached.stop().await;
        tracing::info!("server stopped");
        served
    }
}

/// Runs the whole control plane with `config` until `shutdown`: the content
/// store and its OCI pull API, the embedded MQTT broker (or a link to an
/// external one), the MQTT link, the API and the engine.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let server = Server::bind(config).await?;
    if let Some(token) = server.admin_token() {
        println!("admin token (shown once, stored hashed): {token}");
        match server.security() {
            Some(_) => println!(
                "next: fleetctl login --server {} --ca {} --token {token}",
                server.url()?,
                server.config().ca_cert_path().display()
            ),
            None => println!(
                "next: fleetctl login --server {} --token {token}",
                server.url()?
            ),
        }
    }
    server.run(shutdown).await
}

/// What [`Server::bind`] starts beside the API and the engine: the embedded
/// broker (if any) and the MQTT link's task, stopped by `stop` when the
/// server stops (or is dropped unstarted).
#[derive(Default)]
struct Attached {
    broker: Option<EmbeddedBroker>,
    link_task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Attached {
    /// Stops the link, waits for its task, then stops the broker.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.link_task.take() {
            let _ = task.await;
        }
        self.broker.take();
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Builds the content store, the embedded broker (or the address of an
/// external one) and the MQTT link from `config`, as the [`Plugins`] they
/// make, with the link's receiver of device messages.
async fn attach(
    config: &Config,
    security: Option<&Security>,
    attached: &mut Attached,
) -> Result<(Plugins, mpsc::Receiver<Inbound>), ServerError> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let content = ContentStore::open(data_dir)?;
    let deltas = crate::content::Deltas::new(
        content.clone(),
        crate::content::DeltaOptions {
            ratio: config.content.delta_ratio,
            max_concurrent: config.content.delta_max_concurrent(),
            retry_failed_after: Duration::from_secs(config.content.delta_retry_failed_secs),
            ..Default::default()
        },
    );
    let tokens = DeviceTokens::open(data_dir)?;
    let scheme = config.broker.topic_prefix.clone();
    let client_id = config.broker.client_id.clone();
    let (broker_addr, password) = if config.broker.embedded {
        let password = random_password();
        let mut broker_config = BrokerConfig::new(
            ServerAccount {
                client_id: client_id.clone(),
                password: password.clone(),
            },
            Arc::new(tokens.clone()),
        );
        broker_config.listen = config.broker.listen;
        broker_config.scheme = scheme.clone();
        broker_config.tls = security.map(|s| BrokerTls {
            config: s.broker.clone(),
            revoked: s.revoked.clone(),
        });
        let broker = EmbeddedBroker::start(broker_config, attached.stop.child_token()).await?;
        let addr = BrokerAddr::parse(&broker.url()).map_err(LinkError::from)?;
        attached.broker = Some(broker);
        (addr, password)
    } else {
        let url = config.broker.url.clone().ok_or(ConfigError::Invalid {
            field: "broker.url",
            reason: "must be set when broker.embedded = false",
        })?;
        let password = config.broker.password.clone().unwrap_or_default();
        (url, password)
    };
    let counters = IngestCounters::new();
    let mut link_config = ServerLinkConfig::new(broker_addr, client_id, password);
    link_config.scheme = scheme;
    link_config.counters = counters.clone();
    link_config.tls = security.map(|s| match config.broker.embedded {
        true => s.link.clone(),
        false => s.link_external.clone(),
    });
    let (link, from_devices, link_task) =
        ServerLink::connect(link_config, attached.stop.child_token());
    attached.link_task = Some(link_task);
    let plugins = Plugins {
        publisher: Arc::new(LinkPublisher::new(link)),
        resolver: Arc::new(ContentResolver::new(content.clone())),
        preparer: Arc::new(deltas.clone()),
        routes: crate::content::router_with_deltas(deltas.clone()),
        deltas: Some(deltas),
        authed_routes: Some(crate::content::import_router(content)),
        counters,
    };
    Ok((plugins, from_devices))
}

fn random_password() -> String {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

/// Device messages taken through the engine at once, at most.
const INBOUND_BATCH: usize = 1024;

/// Device messages, handed to the engine until `stop` (in batches of what
/// queued up while the previous batch was handled).
async fn inbound_loop(
    fleet: Fleet,
    stop: CancellationToken,
    mut inbound_rx: mpsc::Receiver<Inbound>,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            msg = inbound_rx.recv() => match msg {
                Some(m) => {
                    // What queued up meanwhile goes through the engine with it.
                    let mut batch = vec![m];
                    while batch.len() < INBOUND_BATCH {
                        match inbound_rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = fleet.inbound_batch(batch).await {
                        tracing::warn!(error = %e, "handling device messages failed");
                    }
                }
                None => break,
            }
        }
    }
}

/// The outbox at start (with the embedded broker, every latest desired
/// state: the broker's retained messages died with the previous process),
/// then every `every` desired-state renewals and outbox sweeps, until `stop`.
async fn outbox_loop(fleet: Fleet, stop: CancellationToken, every: Duration, embedded: bool) {
    let at_start = if embedded {
        fleet.republish_all().await
    } else {
        fleet.publish_pending().await
    };
    match at_start {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, embedded, "desired states published at start"),
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
        if let Err(e) = fleet.tick().await {
            tracing::warn!(error = %e, "stepping rollouts with wave deadlines failed");
        }
        if let Err(e) = fleet.publish_pending().await {
            tracing::warn!(error = %e, "publishing pending desired states failed");
        }
    }
}

/// Every second until `stop`: runs the PromQL gate measurements that are
/// due through `query` and feeds their judged results to the rollouts.
async fn gate_loop(fleet: Fleet, stop: CancellationToken, query: Arc<dyn GateQuery>) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match fleet.gates_due().await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "listing due gate measurements failed");
                continue;
            }
        };
        for d in due {
            let measured = query.query(&d.gate.query).await;
            let outcome = promql::judge(&d.gate, measured);
            tracing::debug!(
                rollout = d.rollout,
                wave = d.wave,
                ?outcome,
                "PromQL gate measured"
            );
            if let Err(e) = fleet.gate_result(d.rollout, d.wave, outcome).await {
                tracing::warn!(rollout = d.rollout, error = %e, "recording a gate measurement failed");
            }
        }
    }
}

/// Batched persistence of the devices' latest state every `every`, until `stop`.
async fn flush_loop(fleet: Fleet, stop: CancellationToken, every: Duration) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        match fleet.flush().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(devices = n, "device state flushed"),
            Err(e) => {
                tracing::warn!(error = %e, "flushing device state failed; will retry")
            }
        }
    }
}
