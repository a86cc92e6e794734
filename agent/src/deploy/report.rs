//! What the device reports: each app's outcome after an apply, and the
//! [`StatusReport`] (persisted phases checked against the runtime, with
//! the download progress of apps fetching content).

use fleet_protocol::message::{AppStatus, Health, ReleaseRef};
use fleet_protocol::{AppName, ErrorCode, ErrorInfo, Phase, SCHEMA_VERSION, StatusReport};

use super::{AppOutcome, DeployError, Inner, unix_now};
use crate::state::{AppRecord, ReleaseRecord};

impl Inner {
    /// The release of `rec` the runtime runs, if any.
    async fn running_release(&self, rec: &AppRecord) -> Option<ReleaseRecord> {
        for r in rec.kept() {
            if self.containers.is_running(&r.container).await {
                return Some(r.clone());
            }
        }
        None
    }

    pub(super) async fn outcomes(&self) -> Result<Vec<AppOutcome>, DeployError> {
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

    pub(super) async fn status_report(&self) -> Result<StatusReport, DeployError> {
        let mut apps = Vec::new();
        for rec in self.state.apps()? {
            apps.push(self.app_status(&rec).await);
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

    async fn app_status(&self, rec: &AppRecord) -> AppStatus {
        let reference = |r: &ReleaseRecord| ReleaseRef {
            version: r.release.version.clone(),
            release_digest: r.release_digest.clone(),
        };
        let running = self.running_release(rec).await;
        let running = running.as_ref();
        let health = match running {
            None if rec.expected_running().is_some() => Health::Unhealthy,
            None => Health::Unknown,
            Some(_) => rec.health,
        };
        let restarts = match running {
            Some(r) => self.containers.restarts(&r.container).await,
            None => None,
        }
        .unwrap_or(rec.restarts);
        let progress = match rec.phase {
            Phase::Downloading => self.progress.get(&rec.app),
            _ => None,
        };
        AppStatus {
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
            progress,
            error: rec.last_error.clone(),
            delta_fallbacks: self.progress.fallbacks(&rec.app),
        }
    }
}

/// The outcome of an app as its phase says (before checking the runtime).
pub(super) fn outcome_of(app: &AppName, phase: Phase) -> AppOutcome {
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
