//! The agent's containers: one handle that owns the runtime, the
//! supervisors of the containers it runs, stopping and killing, adoption
//! after an agent restart and container garbage collection. The lifecycle
//! driver (`deploy`) asks this handle; it never calls the runtime driver.
//!
//! - [`Containers::adopt`]: at agent start, supervises every container of
//!   ours that still runs and deletes the stopped ones.
//! - [`Containers::start`]: runs a staged container under a supervisor, at
//!   most once (a supervised or running container is left as it is).
//! - [`Containers::staged`]: the bundle a container was staged into, when it
//!   is still ready (so a start does not stage it again).
//! - [`Containers::stop`]: through its supervisor, or SIGTERM, grace, forced
//!   delete for a container nothing supervises.
//! - [`Containers::gc`]: stops and removes every container not kept.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use super::driver::{DeleteOpts, KillOpts, KillSignal};
use super::{
    ContainerId, ContainerRuntime, ContainerStatus, RunState, RuntimeError, Staged, Status,
    Supervisor,
};
use super::{NetNs, ProbeTarget};

/// The default time a container gets to exit after SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The containers of this agent. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Containers {
    runtime: ContainerRuntime,
    supervisors: Mutex<HashMap<ContainerId, Supervisor>>,
}

impl Containers {
    pub fn new(runtime: ContainerRuntime) -> Self {
        Containers {
            runtime,
            supervisors: Mutex::new(HashMap::new()),
        }
    }

    pub fn runtime(&self) -> &ContainerRuntime {
        &self.runtime
    }

    /// After an agent start: a supervisor for each running container of ours
    /// that has none yet; containers the runtime holds stopped are deleted
    /// (the lifecycle starts them again if their release should run).
    pub async fn adopt(&self) -> Result<(), RuntimeError> {
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
                let deleted = self
                    .runtime
                    .driver()
                    .delete(id.as_str(), &DeleteOpts { force: true })
                    .await;
                if let Err(e) = deleted {
                    tracing::warn!(container = %id, error = %e, "cannot delete a stopped container");
                }
            }
        }
        Ok(())
    }

    /// Our containers the runtime holds.
    pub async fn ids(&self) -> Result<Vec<ContainerId>, RuntimeError> {
        Ok(self
            .runtime
            .list()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Whether the runtime runs `id`.
    pub async fn is_running(&self, id: &ContainerId) -> bool {
        matches!(
            self.runtime.driver().state(id.as_str()).await,
            Ok(Some(s)) if s.status == Status::Running
        )
    }

    /// The staged bundle of `id` if it is ready to start as it is (its
    /// `release.json` and `config.json` written, its rootfs mounted or
    /// copied); `None` when it must be staged (again, e.g. after a reboot
    /// unmounted the overlay).
    pub fn staged(&self, id: &ContainerId) -> Option<Staged> {
        self.runtime.staged(id)
    }

    /// Runs a staged container under a supervisor. A container already
    /// supervised (and not stopped) is left alone; one the runtime already
    /// runs is adopted, never started twice.
    pub async fn start(&self, staged: &Staged) -> Result<(), RuntimeError> {
        let mut sups = self.supervisors.lock().await;
        if let Some(sup) = sups.get(&staged.id) {
            if !matches!(sup.status().state, RunState::Stopped) {
                return Ok(());
            }
            sups.remove(&staged.id);
        }
        let sup = self.runtime.start(staged).await?;
        sups.insert(staged.id.clone(), sup);
        Ok(())
    }

    /// Whether a supervisor that still tracks `id` (not stopped) exists.
    pub async fn is_supervised(&self, id: &ContainerId) -> bool {
        self.supervisors
            .lock()
            .await
            .get(id)
            .is_some_and(|s| !matches!(s.status().state, RunState::Stopped))
    }

    /// Drops the supervisor of `id` (the container, if any, keeps running).
    /// A supervisor that lost its container (waiting to restart it, or
    /// tracking a process that died) would make [`Containers::start`] a
    /// no-op; this makes room for a fresh start.
    pub async fn forget(&self, id: &ContainerId) -> bool {
        let stale = self.supervisors.lock().await.remove(id);
        match stale {
            Some(sup) => {
                sup.detach().await;
                true
            }
            None => false,
        }
    }

    /// Stops `id`: through its supervisor, or (nothing supervises it) with
    /// SIGTERM, up to `grace` to exit, and a forced delete. Its bundle stays
    /// for a later start. Idempotent.
    pub async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        let sup = self.supervisors.lock().await.remove(id);
        if let Some(sup) = sup
            && sup.stop(grace).await.is_ok()
        {
            return Ok(());
        }
        let driver = self.runtime.driver();
        if driver.state(id.as_str()).await?.is_none() {
            return Ok(());
        }
        if let Err(e) = driver
            .kill(id.as_str(), &KillOpts::new(KillSignal::Term))
            .await
        {
            tracing::debug!(container = %id, error = %e, "SIGTERM failed; deleting by force");
        }
        let until = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < until {
            match driver.state(id.as_str()).await? {
                Some(s) if s.status == Status::Running => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
        driver
            .delete(id.as_str(), &DeleteOpts { force: true })
            .await?;
        Ok(())
    }

    /// Stops `id` and removes it: runtime state, rootfs, directory.
    pub async fn remove(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        self.stop(id, grace).await?;
        self.runtime.remove(id).await
    }

    /// Stops and removes every container of ours (in the runtime or with a
    /// directory under the containers dir) that `keep` does not name.
    pub async fn gc(&self, keep: &HashSet<ContainerId>) -> Result<(), RuntimeError> {
        let mut ids: BTreeSet<ContainerId> = self.ids().await?.into_iter().collect();
        if let Ok(entries) = std::fs::read_dir(&self.runtime.config().containers_dir) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str().and_then(ContainerId::parse) {
                    ids.insert(id);
                }
            }
        }
        for id in ids.into_iter().filter(|id| !keep.contains(id)) {
            tracing::info!(container = %id, "removing an unused release");
            self.remove(&id, DEFAULT_GRACE).await?;
        }
        Ok(())
    }

    /// Restarts done by the supervisor of `id`, if it is supervised.
    pub async fn restarts(&self, id: &ContainerId) -> Option<u32> {
        self.supervisors
            .lock()
            .await
            .get(id)
            .map(|s| s.status().restarts)
    }

    /// The status channel of the supervisor of `id`.
    pub async fn subscribe(&self, id: &ContainerId) -> Option<watch::Receiver<ContainerStatus>> {
        self.supervisors.lock().await.get(id).map(|s| s.subscribe())
    }

    /// What a health monitor probes for `id`.
    pub fn probe_target(&self, id: &ContainerId, net: NetNs) -> ProbeTarget {
        ProbeTarget {
            driver: self.runtime.driver().clone(),
            container_id: id.clone(),
            net,
        }
    }

    /// Stops supervising every container (they keep running): agent shutdown.
    pub async fn detach_all(&self) {
        let sups: Vec<_> = self.supervisors.lock().await.drain().collect();
        for (_, sup) in sups {
            sup.detach().await;
        }
    }
}
