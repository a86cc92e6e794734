//! What runs matches what the phases expect: recovery at start (adopt,
//! resume every unfinished lifecycle), the periodic reconcile, removal of
//! apps the desired state no longer lists, restarts on request.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::{AppName, Phase};
use tokio::task::JoinSet;

use super::{AppOutcome, ContentSource, DeployError, Inner};
use crate::runtime::containers::DEFAULT_GRACE;
use crate::state::{AppRecord, ReleaseRecord};

impl Inner {
    /// Adopts running containers, resumes every unfinished lifecycle from its
    /// stored phase, then reconciles.
    /// Apps for which `superseded` holds are left in their phase: the
    /// desired state being applied takes them from there.
    pub(super) async fn recover(
        self: &Arc<Self>,
        source: &ContentSource,
        superseded: &(dyn Fn(&AppRecord) -> bool + Sync),
    ) -> Result<Vec<AppOutcome>, DeployError> {
        self.containers.adopt().await?;
        let mut tasks = JoinSet::new();
        for mut rec in self.state.apps()? {
            if superseded(&rec) {
                tracing::info!(app = %rec.app, phase = rec.phase.name(), "not resumed: a newer desired state supersedes its target");
                continue;
            }
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
            joined.map_err(DeployError::AppTask)??;
        }
        self.reconcile().await?;
        self.outcomes().await
    }

    /// Exactly the release each app's phase expects runs: others of ours
    /// are stopped, the expected one is started if it does not run.
    pub(super) async fn reconcile(&self) -> Result<(), DeployError> {
        let apps: HashMap<AppName, AppRecord> = self
            .state
            .apps()?
            .into_iter()
            .map(|r| (r.app.clone(), r))
            .collect();
        for id in self.containers.ids().await? {
            let expected = id
                .app()
                .and_then(|a| apps.get(&a))
                .and_then(|r| r.expected_running())
                .map(|r| r.container.clone());
            if expected.as_ref() != Some(&id) {
                tracing::info!(container = %id, "stopping a container no phase expects");
                self.containers.stop(&id, DEFAULT_GRACE).await?;
            }
        }
        let expected: Vec<ReleaseRecord> = apps
            .values()
            .filter_map(|r| r.expected_running().cloned())
            .collect();
        for release in expected {
            if self.containers.is_running(&release.container).await {
                continue;
            }
            // A supervisor that lost the container would make the start a
            // no-op, and an agent that exits now would leave nothing
            // running: it is replaced by a fresh start.
            if self.containers.forget(&release.container).await {
                tracing::info!(container = %release.container, "the expected release is not running: starting it again");
            }
            if let Err(e) = self.start_release(&release).await {
                tracing::warn!(app = %release.release.app, error = %e, "cannot start the expected release");
            }
        }
        Ok(())
    }

    /// Stops a release's container (its bundle stays for a later start).
    pub(super) async fn stop_container(&self, release: &ReleaseRecord) -> Result<(), DeployError> {
        let grace = stop_grace(release);
        Ok(self.containers.stop(&release.container, grace).await?)
    }

    /// Removes the apps `wanted` does not list (containers and records),
    /// then collects what no app keeps.
    pub(super) async fn remove_unlisted(
        &self,
        wanted: &BTreeSet<AppName>,
    ) -> Result<Vec<AppName>, DeployError> {
        let mut removed = Vec::new();
        for rec in self.state.apps()? {
            if !wanted.contains(&rec.app) {
                tracing::info!(app = %rec.app, "removed from the desired state: stopping");
                for release in rec.kept() {
                    self.containers
                        .remove(&release.container, stop_grace(release))
                        .await?;
                }
                self.state.remove_app(&rec.app)?;
                removed.push(rec.app);
            }
        }
        if !removed.is_empty() {
            self.gc().await?;
        }
        Ok(removed)
    }

    pub(super) async fn restart_app(&self, app: &AppName) -> Result<bool, DeployError> {
        let Some(rec) = self.state.app(app)? else {
            return Ok(false);
        };
        let Some(release) = rec.expected_running().cloned() else {
            return Ok(false);
        };
        tracing::info!(app = %app, container = %release.container, "restarting on request");
        self.stop_container(&release).await?;
        self.start_release(&release).await?;
        Ok(true)
    }
}

/// The stop grace period a release asks for (10 s by default).
fn stop_grace(release: &ReleaseRecord) -> Duration {
    release
        .release
        .runtime
        .stop_grace_secs
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}
