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
//! - [`Deployer::supersedes`] / [`Deployer::preempt`]: a newer desired
//!   state interrupts the apply in progress (its downloads stop, keeping
//!   what arrived; a target on probation is rolled back), see `preempt.rs`.
//!
//! Desired states are applied one at a time; a newer one preempts the one in
//! progress (the daemon calls `preempt` and applies it next).

mod apply;
pub mod content;
pub mod crash;
mod drive;
mod gc;
mod preempt;
mod probation;
mod progress;
mod reconcile;
mod report;
mod trust;

use std::path::PathBuf;
use std::sync::Arc;

use fleet_protocol::lifecycle::LifecycleError;
use fleet_protocol::{AppName, DeviceId, Digest, ErrorInfo, Phase, StatusReport, TrustedRoot};
use tokio::sync::Mutex;

pub use content::{ContentError, ContentSource};

use crate::config::{Config, ConfigError};
use crate::image::ImageError;
use crate::runtime::{ContainerRuntime, Containers, RuntimeError};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::state::{State, StateError};
use crate::store::{Store, StoreError};

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
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("trust root {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: fleet_protocol::VerifyError,
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
    #[error("app {app}: the desired state lists it but carries no release envelope for it")]
    MissingEnvelope { app: AppName },
    #[error("app {app} in phase {phase:?}: the lifecycle refuses the event")]
    Lifecycle {
        app: AppName,
        phase: Phase,
        #[source]
        source: LifecycleError,
    },
    #[error("the lifecycle task of an app ended abnormally")]
    AppTask(#[source] tokio::task::JoinError),
    #[error("a blocking task ({what}) ended abnormally")]
    Blocking {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
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
    containers: Containers,
    trust: std::sync::Mutex<TrustedRoot>,
    apply_lock: Mutex<()>,
    /// The token of the apply in progress (see `preempt.rs`).
    interrupt: std::sync::Mutex<tokio_util::sync::CancellationToken>,
    phases: tokio::sync::watch::Sender<u64>,
    progress: progress::Downloads,
}

impl Deployer {
    /// Opens the agent's state under `config.state_dir` and loads the trust root.
    pub async fn open(config: Config) -> Result<Self, DeployError> {
        let device = config.device_id()?;
        crate::state_dir::create_private(&config.state_dir).map_err(|source| {
            DeployError::Read {
                path: config.state_dir.clone(),
                source,
            }
        })?;
        let store = Arc::new(Store::open(&config.state_dir, config.store_config())?);
        let state = State::open(store.db().clone(), config.state_dir.join("meta"))?;
        let snapshots = Arc::new(SnapshotStore::open(&config.state_dir)?);
        let runtime = ContainerRuntime::new(config.runtime_config())?;
        let trust = trust::load(&config, &state, unix_now())?;
        Ok(Deployer {
            inner: Arc::new(Inner {
                config,
                device,
                state,
                store,
                snapshots,
                containers: Containers::new(runtime),
                trust: std::sync::Mutex::new(trust),
                apply_lock: Mutex::new(()),
                interrupt: std::sync::Mutex::new(tokio_util::sync::CancellationToken::new()),
                phases: tokio::sync::watch::Sender::new(0),
                progress: progress::Downloads::default(),
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

    /// The read-only layer snapshots (where deltas are applied).
    pub fn snapshots(&self) -> &Arc<SnapshotStore> {
        &self.inner.snapshots
    }

    /// The agent's containers (supervisors, stop, adoption).
    pub fn containers(&self) -> &Containers {
        &self.inner.containers
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
        self.inner.rotate_trust(bytes)
    }

    /// After an agent start: adopts running containers, resumes every app
    /// from its stored phase to a terminal one, and reconciles what runs.
    pub async fn recover(&self, source: &ContentSource) -> Result<Vec<AppOutcome>, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        let source = source.interrupted_by(self.inner.begin_apply());
        self.inner.recover(&source, &|_| false).await
    }

    /// Verifies and applies a signed desired state (the exact bytes received).
    pub async fn apply_desired(
        &self,
        bytes: &[u8],
        source: &ContentSource,
    ) -> Result<ApplyOutcome, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        let source = source.interrupted_by(self.inner.begin_apply());
        self.inner.apply(bytes, &source).await
    }

    /// Whether `bytes` is a desired state that would be accepted now and is
    /// not the one accepted last: verified against the trust root, newer than
    /// the accepted generation, not expired. Only such a state may
    /// [`Deployer::preempt`] an apply in progress (a replayed or forged one
    /// must not stall an update).
    pub fn supersedes(&self, bytes: &[u8]) -> bool {
        let state = &self.inner.state;
        let digest = Digest::of(bytes);
        if state.desired_digest().ok().flatten().as_ref() == Some(&digest) {
            return false;
        }
        let Ok(last) = state.generation() else {
            return false;
        };
        fleet_protocol::verify_desired_state(
            &self.inner.trust(),
            bytes,
            &self.inner.device,
            last,
            unix_now(),
        )
        .is_ok()
    }

    /// Interrupts the apply in progress, if any: its downloads stop (keeping
    /// what arrived) and its lifecycles stop at the next phase that may be
    /// left. [`Deployer::apply_desired`] then returns and the newer desired
    /// state can be applied.
    pub fn preempt(&self) {
        self.inner.preempt();
    }

    /// The device's status, checked against the runtime.
    pub async fn status_report(&self) -> Result<StatusReport, DeployError> {
        self.inner.status_report().await
    }

    /// A counter bumped after every persisted phase change of any app, and
    /// (throttled) as downloads progress.
    pub fn phase_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.phases.subscribe()
    }

    /// Makes sure exactly the release each app's phase expects runs: one
    /// whose container died (and whose supervisor gave up or is gone) is
    /// started again, containers no phase expects are stopped. Waits for a
    /// running apply to end first.
    pub async fn supervise(&self, _source: &ContentSource) -> Result<(), DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        self.inner.reconcile().await
    }

    /// Stops the running release of `app` and starts it again. Returns false
    /// if the app has no release that should run.
    pub async fn restart_app(&self, app: &AppName) -> Result<bool, DeployError> {
        let _guard = self.inner.apply_lock.lock().await;
        self.inner.restart_app(app).await
    }

    /// Stops supervising (the containers keep running).
    pub async fn detach(&self) {
        self.inner.containers.detach_all().await;
    }
}
