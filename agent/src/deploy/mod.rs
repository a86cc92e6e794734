//! The lifecycle driver: applies verified desired states to the device, one
//! lifecycle per app ([`fleet_protocol::lifecycle`]), and reports status.
//!
//! What the MQTT link and the daemon call:
//!
//! - [`Deployer::open`] with the agent [`Config`]: opens the one sled
//!   database (content store + agent state), the snapshot store and the
//!   container runtime, and loads the trust root (the stored one, rotated
//!   to a newer `trust.json` on disk if there is one).
//! - [`Deployer::recover`] once at start: adopts running containers, resumes
//!   every app from its stored phase ([`fleet_protocol::Phase::resume_effects`]),
//!   then reconciles: exactly the release each app's phase expects runs.
//! - [`Deployer::apply_desired`] with the exact bytes of a signed desired
//!   state (from MQTT, or `fleet-agent apply`): verified against the trust
//!   root and the last accepted generation; a refusal is recorded (status
//!   `rejected`) and changes nothing. The bytes of the desired state already
//!   accepted are not a replay: they resume it. Runs every app's lifecycle
//!   to a terminal phase (apps in parallel) and returns the outcome.
//! - [`Deployer::status_report`]: the persisted state checked against the
//!   runtime, as a [`StatusReport`].
//! - [`Deployer::rotate_trust`]: installs the next trust root version.
//! - [`Deployer::phase_changes`]: a counter bumped at every persisted phase
//!   change, so a daemon can report status while an apply runs.
//! - [`Deployer::supervise`]: the periodic check that exactly the expected
//!   releases run (a committed app whose container is gone is started again).
//! - [`Deployer::restart_app`]: stops and starts an app's running release.
//! - [`Deployer::detach`]: at shutdown, stops supervising; containers keep
//!   running.
//!
//! Desired states are applied one at a time; a newer one waits for the
//! lifecycles of the previous one to end.

pub mod content;
pub mod crash;
mod drive;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::lifecycle::{self, Event};
use fleet_protocol::message::{AppStatus, Health, ReleaseRef};
use fleet_protocol::{
    AppName, DeviceId, Digest, ErrorCode, ErrorInfo, Phase, SCHEMA_VERSION, StatusReport,
    TrustedRoot, VerifyError, verify_desired_state,
};
use tokio::sync::Mutex;

pub use content::{ContentError, ContentSource};

use crate::config::{Config, ConfigError};
use crate::runtime::{
    ContainerId, ContainerRuntime, RuntimeError, Status, Supervisor,
    driver::{DeleteOpts, KillOpts},
};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::state::{AppRecord, ReleaseRecord, State, StateError};
use crate::store::{GcOptions, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("trust root {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: VerifyError,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("desired state rejected: {}: {}", .0.code, .0.message)]
    Rejected(ErrorInfo),
    #[error("release {0} has no verified content recorded")]
    NotVerified(Digest),
    #[error("lifecycle: {0}")]
    Lifecycle(String),
}

impl DeployError {
    /// The state database is held by another process (a running daemon).
    pub fn is_locked(&self) -> bool {
        matches!(self, DeployError::Store(e) if e.is_locked())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How one app ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppOutcome {
    pub app: AppName,
    pub phase: Phase,
    /// The release that runs (version), if any.
    pub running: Option<String>,
    pub error: Option<ErrorInfo>,
    /// Whether this desired state changed the app (false: already running it).
    pub changed: bool,
}

/// What applying a desired state did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub generation: u64,
    pub apps: Vec<AppOutcome>,
    /// Apps that were removed because the desired state no longer lists them.
    pub removed: Vec<AppName>,
}

impl ApplyOutcome {
    /// Every app runs its desired release, committed.
    pub fn committed(&self) -> bool {
        self.apps.iter().all(|a| a.phase == Phase::Committed)
    }
}

/// The lifecycle driver. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    device: DeviceId,
    state: State,
    store: Arc<Store>,
    snapshots: Arc<SnapshotStore>,
    runtime: ContainerRuntime,
    supervisors: Mutex<HashMap<ContainerId, Supervisor>>,
    trust: std::sync::Mutex<TrustedRoot>,
    apply_lock: Mutex<()>,
    phases: tokio::sync::watch::Sender<u64>,
}

impl Deployer {
    /// Opens the agent's state under `config.state_dir` and loads the trust root.
    pub async fn open(config: Config) -> Result<Self, DeployError> {
        let device = config.device_id()?;
        std::fs::create_dir_all(&config.state_dir).map_err(|source| DeployError::Read {
            path: config.state_dir.clone(),
            source,
        })?;
        let store = Arc::new(Store::open(&config.state_dir, config.store_config())?);
        let state = State::open(store.db().clone(), config.state_dir.join("meta"))?;
        let snapshots = Arc::new(SnapshotStore::open(&config.state_dir)?);
        let runtime = ContainerRuntime::new(config.runtime_config())?;
        let trust = load_trust(&config, &state, unix_now())?;
        Ok(Deployer {
            inner: Arc::new(Inner {
                config,
                device,
                state,
                store,
                snapshots,
                runtime,
                supervisors: Mutex::new(HashMap::new()),
                trust: std::sync::Mutex::new(trust),
                apply_lock: Mutex::new(()),
                phases: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    pub fn device(&self) -> &DeviceId {
        &self.inner.device
    }

    pub fn state(&self) -> &State {
        &self.inner.state
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn runtime(&self) -> &ContainerRuntime {
        &self.inner.runtime
    }

    /// The trust root in force (to verify commands with).
    pub fn trust_root(&self) -> TrustedRoot {
        self.inner.trust()
    }

    /// The version of the trust root in force.
    pub fn trust_version(&self) -> u64 {
        self.inner.trust().version()
    }

    /// Installs the next trust root (signed by the current root's threshold
    /// and its own) and persists it.
    pub fn rotate_trust(&self, bytes: &[u8]) -> Result<u64, DeployError> {
        let next = self
            .inner
            .trust()
            .rotate(bytes, unix_now())
            .map_err(|source| DeployError::Trust {
                path: PathBuf::from("(rotation)"),
                source,
            })?;
        self.inner.state.set_trust(bytes)?;
        let version = next.version();
        if let Ok(mut t) = self.inner.trust.lock() {
            *t = next;
        }
        Ok(version)
    }

    /// After an agent start: adopts running containers, resumes every app
    /// from its stored phase to a terminal one, and reconciles what runs.
    pub async fn recover(&self, source: &ContentSource) -> Result<Vec<AppOutcome>, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        self.inner.recover(source).await
    }

    /// Verifies and applies a signed desired state (the exact bytes received).
    pub async fn apply_desired(
        &self,
        bytes: &[u8],
        source: &ContentSource,
    ) -> Result<ApplyOutcome, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        self.inner.apply(bytes, source).await
    }

    /// The device's status, checked against the runtime.
    pub async fn status_report(&self) -> Result<StatusReport, DeployError> {
        self.inner.status_report().await
    }

    /// A counter bumped after every persisted phase change of any app.
    pub fn phase_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.phases.subscribe()
    }

    /// Makes sure exactly the release each app's phase expects runs: one
    /// whose container died (and whose supervisor gave up or is gone) is
    /// started again, containers no phase expects are stopped. Waits for a
    /// running apply to end first.
    pub async fn supervise(&self, source: &ContentSource) -> Result<(), DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        self.inner.reconcile(source).await
    }

    /// Stops the running release of `app` and starts it again. Returns false
    /// if the app has no release that should run.
    pub async fn restart_app(&self, app: &AppName) -> Result<bool, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        let Some(rec) = self.inner.state.app(app)? else {
            return Ok(false);
        };
        let Some(release) = rec.expected_running().cloned() else {
            return Ok(false);
        };
        tracing::info!(app = %app, container = %release.container, "restarting on request");
        self.inner.stop_container(&release).await?;
        self.inner.start_release(&release).await?;
        Ok(true)
    }

    /// Stops supervising (the containers keep running).
    pub async fn detach(&self) {
        let sups: Vec<_> = self.inner.supervisors.lock().await.drain().collect();
        for (_, sup) in sups {
            sup.detach().await;
        }
    }
}

fn load_trust(config: &Config, state: &State, now: u64) -> Result<TrustedRoot, DeployError> {
    let trust_err = |source| DeployError::Trust {
        path: config.trust.clone(),
        source,
    };
    let on_disk = std::fs::read(&config.trust).ok();
    match state.trust()? {
        Some(stored) => {
            let root = TrustedRoot::bootstrap(&stored, now).map_err(trust_err)?;
            // A newer trust.json provisioned on disk is a rotation.
            if let Some(bytes) = on_disk
                && bytes != stored
                && let Ok(next) = root.rotate(&bytes, now)
            {
                state.set_trust(&bytes)?;
                return Ok(next);
            }
            Ok(root)
        }
        None => {
            let bytes = on_disk.ok_or_else(|| DeployError::Read {
                path: config.trust.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no trust root"),
            })?;
            let root = TrustedRoot::bootstrap(&bytes, now).map_err(trust_err)?;
            state.set_trust(&bytes)?;
            Ok(root)
        }
    }
}

impl Inner {
    fn trust(&self) -> TrustedRoot {
        match self.trust.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn trust_allows_privileged(&self) -> bool {
        self.trust().allow_privileged()
    }

    async fn apply(
        self: &Arc<Self>,
        bytes: &[u8],
        source: &ContentSource,
    ) -> Result<ApplyOutcome, DeployError> {
        let now = unix_now();
        let digest = Digest::of(bytes);
        let last = self.state.generation()?;
        // The desired state already accepted (a retained message seen again,
        // or `apply` run again after a crash) is not a replay: it resumes,
        // and whatever of it was not started yet is started.
        let again = self.state.desired_digest()?.as_ref() == Some(&digest);
        let checked_generation = if again { None } else { last };
        let verified = match verify_desired_state(
            &self.trust(),
            bytes,
            &self.device,
            checked_generation,
            now,
        ) {
            Ok(v) => v,
            Err(_) if again => {
                let outcomes = self.recover(source).await?;
                return Ok(ApplyOutcome {
                    generation: last.unwrap_or(0),
                    apps: outcomes,
                    removed: Vec::new(),
                });
            }
            Err(e) => {
                let info = e.to_error_info();
                tracing::warn!(code = %info.code, message = %info.message, "desired state rejected");
                self.state.set_rejected(&info)?;
                return Err(DeployError::Rejected(info));
            }
        };
        // Finish whatever an earlier run left in progress first.
        self.recover(source).await?;
        let generation = verified.generation;
        self.state.accept(generation, &digest)?;
        tracing::info!(
            generation,
            apps = verified.releases().len(),
            "desired state accepted"
        );

        let mut wanted = BTreeSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        for release in verified.releases() {
            let app = release.app.clone();
            wanted.insert(app.clone());
            let record = ReleaseRecord {
                release: (**release).clone(),
                release_digest: release.payload_digest().clone(),
                envelope: verified
                    .apps
                    .iter()
                    .find(|a| a.app == app)
                    .map(|a| a.release.clone())
                    .ok_or_else(|| DeployError::Lifecycle(format!("app {app} vanished")))?,
                container: ContainerId::for_release(&app, release.payload_digest()),
                image: content::image_reference(&release.repository, &release.manifest_digest)?,
                config: None,
                layers: Vec::new(),
            };
            let mut rec = self
                .state
                .app(&app)?
                .unwrap_or_else(|| AppRecord::new(app.clone()));
            let same =
                |r: &Option<ReleaseRecord>| r.as_ref().is_some_and(|r| r.same_release(&record));
            if same(&rec.current) || same(&rec.target) {
                // Already running it, or it was tried and failed: nothing to do.
                let phase = rec.phase.clone();
                tasks.spawn(
                    async move { Ok::<_, DeployError>((rec_outcome_base(&app, phase), false)) },
                );
                continue;
            }
            let t = lifecycle::step(&rec.phase, &Event::DesiredReceived, now)
                .map_err(|e| DeployError::Lifecycle(e.to_string()))?;
            rec.target = Some(record);
            rec.last_error = None;
            rec.restarts = 0;
            self.transition(&mut rec, t.next)?;
            let me = self.clone();
            let source = source.clone();
            tasks.spawn(async move {
                me.drive(&mut rec, t.effects, &source).await?;
                Ok((rec_outcome_base(&rec.app, rec.phase.clone()), true))
            });
        }
        let mut changed = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (outcome, did) =
                joined.map_err(|e| DeployError::Lifecycle(format!("app task failed: {e}")))??;
            changed.insert(outcome.app.clone(), did);
        }
        let mut removed = Vec::new();
        for rec in self.state.apps()? {
            if !wanted.contains(&rec.app) {
                self.remove_app(&rec).await?;
                removed.push(rec.app);
            }
        }
        if !removed.is_empty() {
            self.gc().await?;
        }
        self.reconcile(source).await?;
        let mut apps = self.outcomes().await?;
        for a in &mut apps {
            a.changed = changed.get(&a.app).copied().unwrap_or(false);
        }
        Ok(ApplyOutcome {
            generation,
            apps,
            removed,
        })
    }

    async fn recover(
        self: &Arc<Self>,
        source: &ContentSource,
    ) -> Result<Vec<AppOutcome>, DeployError> {
        // Supervise what still runs; containers the runtime holds stopped
        // are deleted (restarted below if their release should run).
        for (id, state) in self.runtime.list().await? {
            let mut sups = self.supervisors.lock().await;
            if sups.contains_key(&id) {
                continue;
            }
            if state.status == Status::Running {
                match self.runtime.adopt(&id).await {
                    Ok(Some(sup)) => {
                        sups.insert(id, sup);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(container = %id, error = %e, "cannot adopt"),
                }
            } else {
                let _ = self
                    .runtime
                    .driver()
                    .delete(id.as_str(), &DeleteOpts { force: true })
                    .await;
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for mut rec in self.state.apps()? {
            // A committed app has work left only if its commit or its
            // garbage collection was interrupted.
            let finished = match rec.phase {
                Phase::Committed => rec.target.is_none() && !rec.gc_pending,
                ref p => p.is_terminal(),
            };
            if finished {
                continue;
            }
            let effects = rec.phase.resume_effects();
            if effects.is_empty() {
                continue;
            }
            tracing::info!(app = %rec.app, phase = rec.phase.name(), "resuming");
            let me = self.clone();
            let source = source.clone();
            tasks.spawn(async move { me.drive(&mut rec, effects, &source).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| DeployError::Lifecycle(format!("app task failed: {e}")))??;
        }
        self.reconcile(source).await?;
        self.outcomes().await
    }

    /// Exactly the release each app's phase expects runs: others of ours
    /// are stopped, the expected one is started if it does not run.
    async fn reconcile(self: &Arc<Self>, _source: &ContentSource) -> Result<(), DeployError> {
        let apps: HashMap<AppName, AppRecord> = self
            .state
            .apps()?
            .into_iter()
            .map(|r| (r.app.clone(), r))
            .collect();
        for (id, _) in self.runtime.list().await? {
            let expected = id
                .app()
                .and_then(|a| apps.get(&a))
                .and_then(|r| r.expected_running())
                .map(|r| r.container.clone());
            if expected.as_ref() != Some(&id) {
                tracing::info!(container = %id, "stopping a container no phase expects");
                self.stop_id(&id, Duration::from_secs(10)).await?;
            }
        }
        let expected: Vec<ReleaseRecord> = apps
            .values()
            .filter_map(|r| r.expected_running().cloned())
            .collect();
        for release in expected {
            if self.is_running(&release.container).await {
                continue;
            }
            // A supervisor that lost the container (waiting to restart it,
            // or tracking a process that died) would make `start_release` a
            // no-op, and an agent that exits now would leave nothing
            // running: it is replaced by a fresh start.
            let stale = self.supervisors.lock().await.remove(&release.container);
            if let Some(sup) = stale {
                tracing::info!(container = %release.container, "the expected release is not running: starting it again");
                sup.detach().await;
            }
            if let Err(e) = self.start_release(&release).await {
                tracing::warn!(app = %release.release.app, error = %e, "cannot start the expected release");
            }
        }
        Ok(())
    }

    async fn is_running(&self, id: &ContainerId) -> bool {
        matches!(
            self.runtime.driver().state(id.as_str()).await,
            Ok(Some(s)) if s.status == Status::Running
        )
    }

    /// Stops a release's container (its bundle stays for a later start).
    pub(crate) async fn stop_container(&self, release: &ReleaseRecord) -> Result<(), DeployError> {
        let grace = Duration::from_secs(release.release.runtime.stop_grace_secs.unwrap_or(10));
        self.stop_id(&release.container, grace).await
    }

    async fn stop_id(&self, id: &ContainerId, grace: Duration) -> Result<(), DeployError> {
        let sup = self.supervisors.lock().await.remove(id);
        if let Some(sup) = sup
            && sup.stop(grace).await.is_ok()
        {
            return Ok(());
        }
        let driver = self.runtime.driver();
        if driver
            .state(id.as_str())
            .await
            .map_err(RuntimeError::from)?
            .is_none()
        {
            return Ok(());
        }
        let _ = driver.kill(id.as_str(), &KillOpts::new("TERM")).await;
        let until = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < until {
            match driver
                .state(id.as_str())
                .await
                .map_err(RuntimeError::from)?
            {
                Some(s) if s.status == Status::Running => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
        driver
            .delete(id.as_str(), &DeleteOpts { force: true })
            .await
            .map_err(RuntimeError::from)?;
        Ok(())
    }

    async fn remove_app(&self, rec: &AppRecord) -> Result<(), DeployError> {
        tracing::info!(app = %rec.app, "removed from the desired state: stopping");
        for release in rec.kept() {
            self.stop_container(release).await?;
            self.runtime.remove(&release.container).await?;
        }
        self.state.remove_app(&rec.app)?;
        Ok(())
    }

    /// Removes containers, images and snapshots that no app keeps (target,
    /// current, previous of every app).
    async fn gc(&self) -> Result<(), DeployError> {
        let apps = self.state.apps()?;
        let kept: Vec<ReleaseRecord> = apps.iter().flat_map(|a| a.kept()).cloned().collect();
        let kept_ids: HashSet<ContainerId> = kept.iter().map(|r| r.container.clone()).collect();
        let mut ids: BTreeSet<ContainerId> = self
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.runtime.config().containers_dir) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(ContainerId::parse) {
                    ids.insert(id);
                }
            }
        }
        ids.retain(|id| !kept_ids.contains(id));
        for id in ids {
            tracing::info!(container = %id, "removing an unused release");
            self.stop_id(&id, Duration::from_secs(10)).await?;
            self.runtime.remove(&id).await?;
        }
        crash::point("during-gc");
        let kept_images: HashSet<String> = kept.iter().map(|r| r.image.clone()).collect();
        for image in self.state.images()? {
            if !kept_images.contains(&image) {
                self.store.remove_image(&image)?;
                self.state.remove_image(&image)?;
            }
        }
        match self.store.gc(&GcOptions::default()) {
            Ok(report) => tracing::info!(removed = report.blobs_removed, "content gc"),
            Err(StoreError::Busy) => tracing::info!("content gc skipped: a pull is running"),
            Err(e) => return Err(e.into()),
        }
        let keep: HashSet<Digest> = kept
            .iter()
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.gc(&keep))
            .await
            .map_err(|e| DeployError::Lifecycle(e.to_string()))??;
        Ok(())
    }

    async fn running_release(&self, rec: &AppRecord) -> Option<ReleaseRecord> {
        let candidates: Vec<ReleaseRecord> = rec.kept().cloned().collect();
        for r in candidates {
            if self.is_running(&r.container).await {
                return Some(r);
            }
        }
        None
    }

    async fn outcomes(&self) -> Result<Vec<AppOutcome>, DeployError> {
        let mut out = Vec::new();
        for rec in self.state.apps()? {
            let running = self
                .running_release(&rec)
                .await
                .map(|r| r.release.version.clone());
            out.push(AppOutcome {
                app: rec.app.clone(),
                phase: rec.phase.clone(),
                running,
                error: rec.last_error.clone(),
                changed: false,
            });
        }
        Ok(out)
    }

    async fn status_report(&self) -> Result<StatusReport, DeployError> {
        let reference = |r: &ReleaseRecord| ReleaseRef {
            version: r.release.version.clone(),
            release_digest: r.release_digest.clone(),
        };
        let mut apps = Vec::new();
        for rec in self.state.apps()? {
            let running = self.running_release(&rec).await;
            let running = running.as_ref();
            let health = match running {
                None if rec.expected_running().is_some() => Health::Unhealthy,
                None => Health::Unknown,
                Some(_) => rec.health,
            };
            let restarts = {
                let sups = self.supervisors.lock().await;
                running
                    .and_then(|r| sups.get(&r.container))
                    .map(|s| s.status().restarts)
                    .unwrap_or(rec.restarts)
            };
            apps.push(AppStatus {
                app: rec.app.clone(),
                phase: rec.phase.clone(),
                running: running.map(reference),
                target: rec
                    .target
                    .as_ref()
                    .filter(|_| !rec.phase.is_terminal())
                    .map(reference),
                previous: rec
                    .current
                    .as_ref()
                    .filter(|c| running.is_none_or(|r| !r.same_release(c)))
                    .or(rec.previous.as_ref())
                    .map(reference),
                health,
                restarts,
                progress: None,
                error: rec.last_error.clone(),
            });
        }
        Ok(StatusReport {
            schema: SCHEMA_VERSION,
            device: self.device.clone(),
            reported_at: unix_now(),
            generation: self.state.generation()?,
            apps,
            rejected: self.state.rejected()?,
            info: None,
        })
    }
}

fn rec_outcome_base(app: &AppName, phase: Phase) -> AppOutcome {
    AppOutcome {
        app: app.clone(),
        error: phase
            .error_code()
            .map(|c: ErrorCode| ErrorInfo::new(c, c.as_str())),
        phase,
        running: None,
        changed: false,
    }
}
