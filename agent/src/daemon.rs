//! `fleet-agent run`: the device daemon that ties the pieces together.
//!
//! [`run`] opens the lifecycle driver ([`Deployer`]), starts the MQTT link
//! ([`AgentLink`]) and publishes a first status carrying the device info (so
//! the server registers the device), finishes whatever a crash interrupted
//! ([`Deployer::recover`]), then loops until `shutdown` fires:
//!
//! - a desired state from the link → [`Deployer::apply_desired`], which runs
//!   every app to a terminal phase; a status is reported at every phase
//!   change while it runs, and once it ends (a refused desired state shows
//!   in the report's `rejected`). The same bytes delivered again (the
//!   retained message on every reconnection) are not applied again.
//! - a command → verified with the trust root ([`verify_command`]);
//!   `restart_app` restarts the app's running release; others are logged as
//!   unsupported.
//! - every `status_interval_secs`: a status report;
//! - every `supervise_interval_secs`: [`Deployer::supervise`], so a committed
//!   app whose container is gone runs again;
//! - every `telemetry_interval_secs`, while connected: a
//!   [`Telemetry`](fleet_protocol::message::Telemetry)
//!   sample (host sensors under `host_root`, Tegra GPU/EMC/rails, per-app
//!   cgroup CPU and memory, store figures), QoS 0, not retained; while the
//!   broker is away nothing is sampled or kept.
//!
//! With a device certificate (`<state_dir>/identity/`, made on a first
//! start with `enroll_token`), the link to an `mqtts://` broker and the
//! HTTP client present it, and [`identity`] renews it in the background.
//!
//! Beside the loop, [`socket`] answers `fleet-agent status` on
//! `<state_dir>/agent.sock` with a report built when asked.
//!
//! On shutdown the supervisors are detached (containers keep running), a
//! last status is queued, and the link says `offline` and disconnects.

mod identity;
pub mod socket;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::message::CommandKind;
use fleet_protocol::{Digest, StatusReport, verify_command};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::config::{Config, ConfigError};
use crate::deploy::{ContentSource, DeployError, Deployer, unix_now};
use crate::fetch::{Client, ClientConfig, FetchError, Platform};
use crate::link::{AgentLink, AgentLinkConfig, Downlink, LinkError};
use crate::pull::Puller;
use crate::telemetry::{AppSource, CgroupFs, HostRoot, Sampler, Sources, sample_blocking};
use socket::{Refusal, RefusalCode, Request, Response};

/// How long shutdown waits for the link to say `offline`.
const LINK_GRACE: Duration = Duration::from_secs(5);
/// Command ids remembered to drop duplicate deliveries (QoS 1).
const SEEN_COMMANDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the agent state: {0}")]
    Deploy(#[source] DeployError),
    #[error("cannot set up the registry client: {0}")]
    Fetch(#[from] FetchError),
    #[error("MQTT link: {0}")]
    Link(#[from] LinkError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("device identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("enrollment: {0}")]
    Enroll(#[from] crate::identity::EnrollError),
    #[error(
        "the device certificate in {dir} is for device {identity}, but the configuration says {configured}"
    )]
    IdentityDevice {
        dir: std::path::PathBuf,
        identity: fleet_protocol::DeviceId,
        configured: fleet_protocol::DeviceId,
    },
    #[error("the device certificate does not make a TLS configuration: {0}")]
    Tls(#[from] crate::link::tls::TlsError),
}

impl DaemonError {
    /// The process exit code: 2 for a bad configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Link(LinkError::Address(_)) => 2,
            DaemonError::Deploy(DeployError::Config(_)) | DaemonError::IdentityDevice { .. } => 2,
            _ => 1,
        }
    }
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    config.validate()?;
    let identity = identity::at_start(&config, &shutdown).await?;
    if let Some(id) = &identity {
        match &config.device_id {
            Some(configured) if configured != &id.device => {
                return Err(DaemonError::IdentityDevice {
                    dir: crate::identity::dir(&config.state_dir),
                    identity: id.device.clone(),
                    configured: configured.clone(),
                });
            }
            _ => config.device_id = Some(id.device.clone()),
        }
    }
    let device = config.device_id()?;
    let deployer = Deployer::open(config.clone())
        .await
        .map_err(DaemonError::Deploy)?;
    let (source, http) = content_source(&config, &deployer, identity.as_ref())?;
    let renewal = identity
        .as_ref()
        .and_then(|id| identity::Renewal::start(&config, id, http));

    let mut link_config = AgentLinkConfig::new(
        config.broker.clone(),
        device.clone(),
        config.token.expose(),
        config.state_dir.clone(),
    );
    link_config.labels = config.labels.clone();
    link_config.host_root = config.host_root.clone();
    if let Some(id) = &identity {
        link_config.tls = Some(id.tls_config(false)?);
        link_config.tls_updates = renewal.as_ref().map(|r| r.link_updates.clone());
    }
    let link_cancel = CancellationToken::new();
    let (link, downlink, link_task) = AgentLink::start(link_config, link_cancel.clone()).await?;

    let sources = Sources {
        host: HostRoot::new(&config.host_root),
        cgroups: CgroupFs::default(),
        state_dir: Some(config.state_dir.clone()),
        store: Some(deployer.store().clone()),
    };
    let sampler = tokio::task::spawn_blocking(move || Sampler::new(sources))
        .await
        .map_err(|e| DaemonError::Telemetry(e.into()))?;
    if let Some(tegra) = sampler.tegra() {
        info!(l4t = ?tegra.l4t_version, soc = ?tegra.soc, "Tegra host: GPU, EMC and power rails in telemetry");
    }
    let daemon = Daemon {
        deployer: deployer.clone(),
        link: link.clone(),
        source,
        last_desired: None,
        seen_commands: VecDeque::new(),
        sampler: Arc::new(Mutex::new(sampler)),
        cgroup_parent: config.runtime_config().cgroup_parent,
    };
    let span = info_span!("agent", device = %device);
    let local = LocalSocket::start(&config, &deployer)
        .instrument(span.clone())
        .await;
    let result = daemon
        .main_loop(&config, downlink, &shutdown)
        .instrument(span)
        .await;
    local.stop().await;

    info!(device = %device, "shutting down: containers keep running");
    deployer.detach().await;
    // The last word: what runs as the agent leaves.
    if let Ok(report) = deployer.status_report().await {
        let _ = tokio::time::timeout(LINK_GRACE, link.report_status(report)).await;
    }
    link_cancel.cancel();
    if tokio::time::timeout(LINK_GRACE, link_task).await.is_err() {
        warn!("the MQTT link did not stop in time");
    }
    if let Some(renewal) = renewal {
        renewal.stop().await;
    }
    result
}

/// Where release content comes from: registries through the fetch client
/// (the server's content endpoint is one: releases name it as their
/// registry). With an identity, the client trusts the fleet CA besides the
/// web roots and presents the device certificate; the client is returned
/// too, for renewals to update.
fn content_source(
    config: &Config,
    deployer: &Deployer,
    identity: Option<&crate::identity::Identity>,
) -> Result<(ContentSource, Client), DaemonError> {
    let mut client = ClientConfig::default();
    if let Some(host) = config.plain_http_server() {
        client.plain_http.push(host);
    }
    if let Some(host) = config.https_server() {
        client.https.push(host);
    }
    if let Some(id) = identity {
        client.tls = Some(id.tls_config(true)?);
    }
    let client = Client::new(client)?;
    let puller = Puller::new(client.clone(), deployer.store().clone(), Platform::host());
    let source = ContentSource::Registry(if config.store.deltas {
        puller.with_deltas(deployer.snapshots().clone())
    } else {
        puller
    });
    Ok((source, client))
}

struct Daemon {
    deployer: Deployer,
    link: AgentLink,
    source: ContentSource,
    /// The digest of the last desired state handled by this process.
    last_desired: Option<Digest>,
    seen_commands: VecDeque<u64>,
    sampler: Arc<Mutex<Sampler>>,
    /// Where the runtime puts the containers' cgroups.
    cgroup_parent: String,
}

/// The daemon's side of [`socket`]: answers from the deployer, fresh.
struct Answers {
    deployer: Deployer,
}

impl socket::Responder for Answers {
    async fn respond(&self, request: Request) -> Response {
        match request {
            Request::Status => match self.deployer.status_report().await {
                Ok(report) => Response::Status(report),
                Err(e) => Response::Error(Refusal::new(RefusalCode::Unavailable, e.to_string())),
            },
        }
    }
}

/// The socket task, if the socket could be bound (the daemon runs without
/// it otherwise: `fleet-agent status` then says nobody answers).
struct LocalSocket {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl LocalSocket {
    async fn start(config: &Config, deployer: &Deployer) -> Self {
        let stop = CancellationToken::new();
        let task = match socket::Listener::bind(&config.state_dir).await {
            Ok(listener) => {
                info!(path = %listener.path().display(), "local status socket");
                let answers = Arc::new(Answers {
                    deployer: deployer.clone(),
                });
                Some(tokio::spawn(listener.serve(answers, stop.clone())))
            }
            Err(e) => {
                warn!(error = %e, "no local status socket: `fleet-agent status` cannot ask this daemon");
                None
            }
        };
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task
            && tokio::time::timeout(LINK_GRACE, task).await.is_err()
        {
            warn!("the local status socket did not stop in time");
        }
    }
}

/// What the downlink brought while a desired state was being applied.
#[derive(Default)]
struct Arrived {
    /// The newest desired state (applied next).
    desired: Option<Vec<u8>>,
    commands: Vec<Vec<u8>>,
    link_closed: bool,
}

impl Daemon {
    async fn main_loop(
        mut self,
        config: &Config,
        mut downlink: tokio::sync::mpsc::Receiver<Downlink>,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        // Register with the server first: the device info goes with it.
        self.report(true).await;
        info!("resuming from the stored state");
        let recovered = self
            .with_progress(self.deployer.recover(&self.source), shutdown, None)
            .await;
        match recovered {
            Some(Ok(apps)) => info!(apps = apps.len(), "recovered"),
            Some(Err(e)) => error!(error = %e, "recovery failed"),
            None => return Ok(()),
        }
        self.report(false).await;

        let mut status_tick =
            tokio::time::interval(Duration::from_secs(config.status_interval_secs));
        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        status_tick.reset();
        let mut supervise_tick =
            tokio::time::interval(Duration::from_secs(config.supervise_interval_secs));
        supervise_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        supervise_tick.reset();
        let mut telemetry_tick =
            tokio::time::interval(Duration::from_secs(config.telemetry_interval_secs));
        telemetry_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        telemetry_tick.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = downlink.recv() => match msg {
                    Some(Downlink::Desired(bytes)) => {
                        if !self.on_desired(bytes, &mut downlink, shutdown).await {
                            return Ok(());
                        }
                    }
                    Some(Downlink::Command(bytes)) => self.on_command(&bytes).await,
                    None => {
                        error!("the MQTT link stopped");
                        return Ok(());
                    }
                },
                _ = status_tick.tick() => self.report(false).await,
                _ = telemetry_tick.tick() => self.telemetry().await,
                _ = supervise_tick.tick() => {
                    if let Err(e) = self.deployer.supervise(&self.source).await {
                        warn!(error = %e, "supervision check failed");
                    }
                }
            }
        }
    }

    /// Applies a desired state, and each newer one that arrives meanwhile:
    /// one that supersedes the state being applied preempts it (see
    /// `Deployer::supersedes`), commands wait for the apply to end. Returns
    /// false if shutdown interrupted it or the link stopped.
    async fn on_desired(
        &mut self,
        bytes: Vec<u8>,
        downlink: &mut tokio::sync::mpsc::Receiver<Downlink>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut next = Some(bytes);
        while let Some(bytes) = next.take() {
            let mut arrived = Arrived::default();
            if !self
                .apply_one(bytes, downlink, &mut arrived, shutdown)
                .await
            {
                return false;
            }
            for command in std::mem::take(&mut arrived.commands) {
                self.on_command(&command).await;
            }
            if arrived.link_closed {
                error!("the MQTT link stopped");
                return false;
            }
            next = arrived.desired;
        }
        true
    }

    /// Applies one desired state; what arrives meanwhile goes to `arrived`.
    async fn apply_one(
        &mut self,
        bytes: Vec<u8>,
        downlink: &mut tokio::sync::mpsc::Receiver<Downlink>,
        arrived: &mut Arrived,
        shutdown: &CancellationToken,
    ) -> bool {
        let digest = Digest::of(&bytes);
        if self.last_desired.as_ref() == Some(&digest) {
            debug!(%digest, "desired state seen again; already handled");
            return true;
        }
        info!(%digest, "desired state received");
        let span = info_span!("apply", desired = %digest);
        let apply = self.deployer.apply_desired(&bytes, &self.source);
        let Some(result) = self
            .with_progress(apply, shutdown, Some((downlink, arrived)))
            .instrument(span)
            .await
        else {
            return false;
        };
        match result {
            Ok(outcome) => {
                info!(
                    generation = outcome.generation,
                    committed = outcome.committed(),
                    changed = outcome.apps.iter().filter(|a| a.changed).count(),
                    removed = outcome.removed.len(),
                    "desired state applied"
                );
                self.last_desired = Some(digest);
            }
            Err(DeployError::Rejected(e)) => {
                // Recorded by the deployer: the report's `rejected` says why.
                warn!(code = %e.code, message = %e.message, "desired state refused");
                self.last_desired = Some(digest);
            }
            Err(e) => error!(error = %e, "applying the desired state failed"),
        }
        self.report(false).await;
        true
    }

    /// Runs `work` (an apply or a recovery) while reporting status at every
    /// phase change, and, given a downlink, taking what arrives meanwhile
    /// (a superseding desired state preempts `work`). `None` if shutdown
    /// came first.
    async fn with_progress<T>(
        &self,
        work: impl Future<Output = T>,
        shutdown: &CancellationToken,
        mut downlink: Option<(&mut tokio::sync::mpsc::Receiver<Downlink>, &mut Arrived)>,
    ) -> Option<T> {
        let mut phases = self.deployer.phase_changes();
        phases.mark_unchanged();
        tokio::pin!(work);
        loop {
            let listening = downlink.as_ref().is_some_and(|(_, a)| !a.link_closed);
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                out = &mut work => return Some(out),
                changed = phases.changed() => {
                    if changed.is_err() {
                        return Some(work.await);
                    }
                    phases.mark_unchanged();
                    self.report(false).await;
                }
                msg = async {
                    match downlink.as_mut() {
                        Some((rx, _)) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                }, if listening => {
                    if let Some((_, arrived)) = downlink.as_mut() {
                        self.take_arrival(msg, arrived);
                    }
                }
            }
        }
    }

    /// A message that arrived during an apply: a desired state is kept as
    /// the next to apply (the newest wins) and preempts the apply if it
    /// supersedes it; commands wait.
    fn take_arrival(&self, msg: Option<Downlink>, arrived: &mut Arrived) {
        match msg {
            Some(Downlink::Desired(bytes)) => {
                if self.deployer.supersedes(&bytes) {
                    info!(desired = %Digest::of(&bytes), "a newer desired state arrived: interrupting the update in progress");
                    self.deployer.preempt();
                }
                arrived.desired = Some(bytes);
            }
            Some(Downlink::Command(bytes)) => {
                if arrived.commands.len() >= SEEN_COMMANDS {
                    warn!("too many commands during an update; the oldest is dropped");
                    arrived.commands.remove(0);
                }
                arrived.commands.push(bytes);
            }
            None => arrived.link_closed = true,
        }
    }

    async fn on_command(&mut self, bytes: &[u8]) {
        let root = self.deployer.trust_root();
        let command = match verify_command(&root, bytes, self.deployer.device(), unix_now()) {
            Ok(c) => c,
            Err(e) => {
                let info = e.to_error_info();
                warn!(code = %info.code, message = %info.message, "command refused");
                return;
            }
        };
        if self.seen_commands.contains(&command.id) {
            debug!(id = command.id, "command seen again; ignored");
            return;
        }
        if self.seen_commands.len() >= SEEN_COMMANDS {
            self.seen_commands.pop_front();
        }
        self.seen_commands.push_back(command.id);
        match &command.kind {
            CommandKind::RestartApp { app } => {
                info!(id = command.id, app = %app, "command: restart app");
                match self.deployer.restart_app(app).await {
                    Ok(true) => {}
                    Ok(false) => warn!(app = %app, "restart_app: the app runs no release"),
                    Err(e) => error!(app = %app, error = %e, "restart_app failed"),
                }
                self.report(false).await;
            }
            other => warn!(id = command.id, command = ?other, "unsupported command ignored"),
        }
    }

    /// Samples and sends telemetry if the link is up (QoS 0: a message the
    /// broker cannot take now is dropped, never stored).
    async fn telemetry(&self) {
        if !*self.link.connected().borrow() {
            debug!("offline: no telemetry");
            return;
        }
        let apps = match self.deployer.status_report().await {
            Ok(r) => AppSource::from_status(&r, &self.cgroup_parent),
            Err(e) => {
                warn!(error = %e, "telemetry without apps: no status");
                Vec::new()
            }
        };
        let device = Some(self.deployer.device().clone());
        match sample_blocking(self.sampler.clone(), unix_now(), device, apps).await {
            Ok(t) => {
                if !self.link.send_telemetry(t) {
                    debug!("telemetry dropped");
                }
            }
            Err(e) => warn!(error = %e, "telemetry sampling failed"),
        }
    }

    /// Queues the current status (with the device info on request).
    async fn report(&self, with_info: bool) {
        let report = match self.deployer.status_report().await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot build a status report");
                return;
            }
        };
        let report = StatusReport {
            info: with_info.then(|| self.link.device_info().clone()),
            ..report
        };
        if let Err(e) = self.link.report_status(report).await {
            error!(error = %e, "cannot queue a status report");
        }
    }
}
