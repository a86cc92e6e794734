//! Running one release's container with an OCI runtime (crun or runc).
//!
//! What a lifecycle driver calls:
//!
//! - [`ContainerRuntime::stage`]: rootfs (overlayfs of the layer snapshots, or
//!   a copy) + bundle (`config.json`) for a release. Idempotent.
//! - [`ContainerRuntime::start`]: runs the staged container under a
//!   [`Supervisor`] (restart policy, logs); if the runtime already runs it,
//!   it is adopted instead of started twice.
//! - [`Supervisor::stop`]: SIGTERM, grace, SIGKILL, delete.
//! - [`ContainerRuntime::adopt_all`]: after an agent restart, supervisors for
//!   every container of ours the runtime still holds.
//! - [`ContainerRuntime::remove`]: deletes the container and its rootfs.
//! - [`ProbeTarget`]: what `crate::health::HealthMonitor` probes (health
//!   checks sit above the runtime and import it, never the other way).
//!
//! Layout: `<state_dir>/<container id>/{config.json, rootfs/, upper/, work/,
//! release.json, stdout.pipe, stderr.pipe, logs/, runtime.log}`.

pub mod bundle;
pub mod containers;
pub mod driver;
pub mod logs;
pub mod rootfs;
pub mod supervise;
mod target;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::id::{AppName, Digest};
use fleet_protocol::message::{NetworkMode, RestartPolicy, RuntimeSettings};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

pub use bundle::BundleError;
pub use containers::Containers;
pub use driver::{
    ContainerState, Driver, DriverConfig, DriverError, KillSignal, RuntimeKind, Status,
};
pub use logs::LogConfig;
pub use rootfs::{Rootfs, RootfsError, RootfsKind, RootfsMode};
pub use supervise::{BackoffConfig, ContainerStatus, RunState, Supervisor};
pub use target::{NetNs, ProbeTarget};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("pid file {path:?} holds {content:?}, not a pid")]
    BadPidFile { path: PathBuf, content: String },
    #[error("the supervisor of {0} has ended")]
    SupervisorGone(ContainerId),
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] nix::Error),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A runtime container id: `fleet-<app>-<first 12 hex digits of the release
/// digest>`. Deterministic, so a restarted agent finds its containers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerId(String);

impl ContainerId {
    pub const PREFIX: &'static str = "fleet-";
    const DIGEST_CHARS: usize = 12;

    pub fn for_release(app: &AppName, release_digest: &Digest) -> Self {
        let hex = release_digest.hex();
        ContainerId(format!(
            "{}{}-{}",
            Self::PREFIX,
            app.as_str(),
            &hex[..Self::DIGEST_CHARS.min(hex.len())]
        ))
    }

    /// Recognises ids of our naming scheme (anything else under the
    /// runtime's root is not ours).
    pub fn parse(id: &str) -> Option<Self> {
        let rest = id.strip_prefix(Self::PREFIX)?;
        let (app, digest) = rest.rsplit_once('-')?;
        let digest_ok = digest.len() == Self::DIGEST_CHARS
            && digest
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        (digest_ok && AppName::new(app).is_ok()).then(|| ContainerId(id.to_owned()))
    }

    /// The app part of the id.
    pub fn app(&self) -> Option<AppName> {
        let rest = self.0.strip_prefix(Self::PREFIX)?;
        AppName::new(rest.rsplit_once('-')?.0).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where containers live and how they are run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub driver: DriverConfig,
    /// `<state>/containers`: one directory per container.
    pub containers_dir: PathBuf,
    pub rootfs_mode: RootfsMode,
    pub logs: LogConfig,
    pub backoff: BackoffConfig,
    /// Parent of the containers' cgroups. Container ids are the same on every
    /// device that runs a release, so two agents on one host (a test rig, a
    /// local fleet) need different parents, or a cgroup-wide kill by one
    /// would hit the other's container: the agent config sets
    /// `/fleet/<device id>`.
    pub cgroup_parent: String,
    /// Where host files (CDI specs, CSV files, device nodes, driver
    /// libraries) are read: `/` on a device, a fixture tree in tests.
    pub host_root: PathBuf,
    /// Where a CDI spec generated by `nvidia-ctk` is cached
    /// (`<state_dir>/cdi`); `None`: never run the tool.
    pub cdi_cache_dir: Option<PathBuf>,
    /// The agent binary under `host_root`, the CSV fallback's own
    /// `createContainer` hook ([`crate::gpu::hook`]); `None`: none.
    pub gpu_hook: Option<PathBuf>,
}

impl RuntimeConfig {
    pub fn new(driver: DriverConfig, state_dir: &Path) -> Self {
        RuntimeConfig {
            driver,
            containers_dir: state_dir.join("containers"),
            rootfs_mode: RootfsMode::Auto,
            logs: LogConfig::default(),
            backoff: BackoffConfig::default(),
            cgroup_parent: "/fleet".to_owned(),
            host_root: PathBuf::from("/"),
            cdi_cache_dir: Some(state_dir.join("cdi")),
            gpu_hook: None,
        }
    }
}

impl RuntimeConfig {
    /// The GPU module's [`crate::gpu::Tools`] from this configuration.
    pub fn gpu_tools(&self) -> crate::gpu::Tools<'_> {
        crate::gpu::Tools {
            cdi_cache: self.cdi_cache_dir.as_deref(),
            agent: self.gpu_hook.as_deref(),
        }
    }
}

/// One release to stage.
#[derive(Debug, Clone)]
pub struct StageRequest<'a> {
    pub app: &'a AppName,
    pub release_digest: &'a Digest,
    pub image: &'a ImageConfiguration,
    pub settings: &'a RuntimeSettings,
    /// Read-only layer snapshot directories, bottom → top.
    pub snapshots: &'a [PathBuf],
    /// From the device's trust metadata.
    pub allow_privileged: bool,
}

/// What is kept next to a staged bundle so that a restarted agent can
/// supervise the container again (`release.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRelease {
    pub app: AppName,
    pub release_digest: Digest,
    pub restart: RestartPolicy,
    pub network: NetworkMode,
    pub stop_grace_secs: Option<u64>,
}

/// A container ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub id: ContainerId,
    /// The bundle directory (holds `config.json`).
    pub dir: PathBuf,
    pub rootfs: Rootfs,
    pub release: StagedRelease,
}

impl Staged {
    /// The stop grace period the release asks for (10 s by default).
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.release.stop_grace_secs.unwrap_or(10))
    }
}

/// Stages, starts, adopts and removes containers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    config: Arc<RuntimeConfig>,
    driver: Driver,
}

const RELEASE_FILE: &str = "release.json";

impl ContainerRuntime {
    /// Also marks this process a child subreaper (see [`supervise`]). Where
    /// the kernel (or an emulator such as qemu-user) refuses that, containers
    /// are supervised as if adopted: their exit is noticed through `/proc`
    /// and its code is unknown, which restart policies tolerate.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        if let Err(e) = supervise::become_subreaper() {
            tracing::warn!(
                error = %e,
                "cannot become a child subreaper; container exits are watched through /proc and their exit codes are unknown"
            );
        }
        let driver = Driver::new(config.driver.clone());
        Ok(ContainerRuntime {
            config: Arc::new(config),
            driver,
        })
    }

    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.config.containers_dir.join(id.as_str())
    }

    /// Prepares rootfs and bundle for a release. Idempotent: staging again
    /// reuses a mounted overlay or finished copy and rewrites `config.json`.
    pub async fn stage(&self, req: StageRequest<'_>) -> Result<Staged, RuntimeError> {
        let id = ContainerId::for_release(req.app, req.release_digest);
        let dir = self.container_dir(&id);
        let snapshots = req.snapshots.to_vec();
        let mode = self.config.rootfs_mode;
        let rootfs_dir = dir.clone();
        let rootfs =
            tokio::task::spawn_blocking(move || rootfs::prepare(&rootfs_dir, &snapshots, mode))
                .await??;
        let annotations = BTreeMap::from([
            ("org.fleet.app".to_owned(), req.app.to_string()),
            (
                "org.fleet.release".to_owned(),
                req.release_digest.to_string(),
            ),
        ]);
        let spec = bundle::build_spec(&bundle::BundleParams {
            id: id.as_str(),
            cgroup_parent: &self.config.cgroup_parent,
            hostname: req.app.as_str(),
            image: req.image,
            settings: req.settings,
            rootfs: &rootfs.path,
            allow_privileged: req.allow_privileged,
            annotations,
        });
        let host = crate::host_root::HostRoot::new(&self.config.host_root);
        let spec = spec.map_err(RuntimeError::from).and_then(|mut spec| {
            crate::gpu::inject(&host, self.config.gpu_tools(), req.settings, &mut spec)?;
            Ok(spec)
        });
        let spec = match spec {
            Ok(spec) => spec,
            Err(err) => {
                // Nothing half-staged stays behind.
                let _ = rootfs::remove(&dir);
                return Err(err);
            }
        };
        bundle::write_config(&dir, &spec)?;
        let release = StagedRelease {
            app: req.app.clone(),
            release_digest: req.release_digest.clone(),
            restart: req.settings.restart,
            network: req.settings.network,
            stop_grace_secs: req.settings.stop_grace_secs,
        };
        let path = dir.join(RELEASE_FILE);
        let json = serde_json::to_vec_pretty(&release).map_err(|source| RuntimeError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, json).map_err(|source| RuntimeError::Io { path, source })?;
        Ok(Staged {
            id,
            dir,
            rootfs,
            release,
        })
    }

    fn supervise_spec(&self, id: &ContainerId, restart: RestartPolicy) -> supervise::SuperviseSpec {
        let dir = self.container_dir(id);
        supervise::SuperviseSpec {
            id: id.clone(),
            bundle: dir.clone(),
            container_dir: dir,
            restart,
            backoff: self.config.backoff,
            logs: self.config.logs,
        }
    }

    /// Starts a staged container under a supervisor. A container the runtime
    /// already runs under this id is adopted, never started twice.
    pub async fn start(&self, staged: &Staged) -> Result<Supervisor, RuntimeError> {
        let spec = self.supervise_spec(&staged.id, staged.release.restart);
        match self.driver.state(staged.id.as_str()).await? {
            Some(state) if state.status == Status::Running => {
                Supervisor::adopt(self.driver.clone(), spec, Some(state.pid)).await
            }
            _ => Supervisor::start(self.driver.clone(), spec).await,
        }
    }

    /// Our containers the runtime holds (ids of our naming scheme).
    pub async fn list(&self) -> Result<Vec<(ContainerId, ContainerState)>, RuntimeError> {
        Ok(self
            .driver
            .list()
            .await?
            .into_iter()
            .filter_map(|state| ContainerId::parse(&state.id).map(|id| (id, state)))
            .collect())
    }

    /// The release a container was staged from (`release.json`).
    pub fn staged_release(&self, id: &ContainerId) -> Result<StagedRelease, RuntimeError> {
        let path = self.container_dir(id).join(RELEASE_FILE);
        let bytes = std::fs::read(&path).map_err(|source| RuntimeError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RuntimeError::Json { path, source })
    }

    /// The staged bundle of `id` when it can start as it is: `release.json`
    /// readable, `config.json` written, rootfs ready ([`rootfs::ready`]).
    pub fn staged(&self, id: &ContainerId) -> Option<Staged> {
        let dir = self.container_dir(id);
        if !dir.join(bundle::CONFIG_FILE).is_file() {
            return None;
        }
        let release = self.staged_release(id).ok()?;
        let rootfs = rootfs::ready(&dir)?;
        Some(Staged {
            id: id.clone(),
            dir,
            rootfs,
            release,
        })
    }

    /// Supervises one container the runtime already holds. `None` when the
    /// runtime does not know it.
    pub async fn adopt(&self, id: &ContainerId) -> Result<Option<Supervisor>, RuntimeError> {
        let Some(state) = self.driver.state(id.as_str()).await? else {
            return Ok(None);
        };
        let release = self.staged_release(id)?;
        let pid = (state.status == Status::Running).then_some(state.pid);
        let spec = self.supervise_spec(id, release.restart);
        Supervisor::adopt(self.driver.clone(), spec, pid)
            .await
            .map(Some)
    }

    /// After an agent restart: a supervisor for each container of ours the
    /// runtime holds and that has a staged bundle. Others are reported with
    /// the error that kept them from being adopted.
    pub async fn adopt_all(
        &self,
    ) -> Result<Vec<(ContainerId, Result<Supervisor, RuntimeError>)>, RuntimeError> {
        let mut out = Vec::new();
        for (id, _) in self.list().await? {
            match self.adopt(&id).await {
                Ok(Some(supervisor)) => out.push((id, Ok(supervisor))),
                Ok(None) => {}
                Err(err) => out.push((id, Err(err))),
            }
        }
        Ok(out)
    }

    /// Removes a container: deleted from the runtime (forcibly), rootfs
    /// unmounted, its directory removed. Idempotent.
    pub async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        if self.driver.state(id.as_str()).await?.is_some() {
            self.driver
                .delete(id.as_str(), &driver::DeleteOpts { force: true })
                .await?;
        }
        let dir = self.container_dir(id);
        let rootfs_dir = dir.clone();
        tokio::task::spawn_blocking(move || rootfs::remove(&rootfs_dir)).await??;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RuntimeError::Io { path: dir, source }),
        }
    }

    /// Benchmark hook: starts a staged container and measures "bundle ready
    /// → container process running" (the runtime's `create` + `start` until the
    /// runtime reports the process running).
    pub async fn timed_start(
        &self,
        staged: &Staged,
    ) -> Result<(Supervisor, Duration), RuntimeError> {
        let begin = Instant::now();
        let supervisor = self.start(staged).await?;
        loop {
            let state = self.driver.state(staged.id.as_str()).await?;
            if state.is_some_and(|s| s.status == Status::Running && s.pid > 0) {
                return Ok((supervisor, begin.elapsed()));
            }
            if begin.elapsed() > Duration::from_secs(60) {
                return Ok((supervisor, begin.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_deterministic_and_parse_back() {
        let app = AppName::new("model-server").unwrap();
        let digest = Digest::of(b"release");
        let id = ContainerId::for_release(&app, &digest);
        assert_eq!(id, ContainerId::for_release(&app, &digest));
        assert_eq!(
            id.as_str(),
            format!("fleet-model-server-{}", &digest.hex()[..12])
        );
        assert_eq!(ContainerId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id.app(), Some(app));
        for foreign in [
            "other",
            "fleet-",
            "fleet-app",
            "fleet-app-xyz",
            "fleet-App-0123456789ab",
            "fleet-app-0123456789abc",
        ] {
            assert_eq!(ContainerId::parse(foreign), None, "{foreign}");
        }
        assert_ne!(
            ContainerId::for_release(&AppName::new("a").unwrap(), &Digest::of(b"other")),
            ContainerId::for_release(&AppName::new("a").unwrap(), &digest)
        );
    }
}
