//! One app's lifecycle: runs effects, feeds their events to
//! [`fleet_protocol::lifecycle::step`], persists each new phase (flushed)
//! before running its effects.
//!
//! A release is staged once: [`Effect::Stage`] writes its snapshots,
//! rootfs and bundle; the start that follows runs that bundle. Only a start
//! that finds no ready bundle (a reboot unmounted the overlay, or the
//! container was removed) stages again. A crash between staging and the
//! persisted `Staged` phase resumes in `Verifying`, whose effects stage
//! again, idempotently.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fleet_protocol::lifecycle::{Effect, Event};
use fleet_protocol::message::Health;
use fleet_protocol::{ErrorCode, ErrorInfo, Phase};

use super::content::{self, ContentSource};
use super::{DeployError, Inner, crash, unix_now};
use crate::gpu;
use crate::host_root::HostRoot;
use crate::image::{self, StoredImage};
use crate::runtime::{StageRequest, Staged};
use crate::state::{AppRecord, ReleaseRecord};

impl Inner {
    /// Persists `next` as the app's phase (flushed), with crash points
    /// before and after.
    pub(super) fn transition(&self, rec: &mut AppRecord, next: Phase) -> Result<(), DeployError> {
        crash::point(&format!("before-{}", next.name()));
        tracing::info!(app = %rec.app, from = rec.phase.name(), to = next.name(), "phase");
        if let Some(code) = next.error_code()
            && rec.last_error.as_ref().is_none_or(|e| e.code != code)
        {
            rec.last_error = Some(ErrorInfo::new(code, code.as_str()));
        }
        rec.phase = next;
        rec.updated_at = unix_now();
        self.state.put_app(rec)?;
        self.bump();
        crash::point(&format!("after-{}", rec.phase.name()));
        Ok(())
    }

    /// Tells status reporters that something changed.
    pub(super) fn bump(&self) {
        self.phases.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `effects` and everything they lead to until no effect is left
    /// (a terminal phase, normally).
    pub(super) fn drive<'a>(
        self: &'a Arc<Self>,
        rec: &'a mut AppRecord,
        effects: Vec<Effect>,
        source: &'a ContentSource,
    ) -> Pin<Box<dyn Future<Output = Result<(), DeployError>> + Send + 'a>> {
        // Boxed as `dyn Send` here, where the lifetimes are concrete.
        Box::pin(async move {
            let mut queue: VecDeque<Effect> = effects.into();
            while let Some(effect) = queue.pop_front() {
                if self.stop_for_newer(rec)? {
                    return Ok(());
                }
                let Some(event) = self.execute(rec, effect, source).await? else {
                    continue;
                };
                let t = self.step(rec, &event, unix_now())?;
                self.transition(rec, t.next)?;
                queue = t.effects.into();
            }
            // An effect that stopped for a newer desired state (a download
            // or a probation) ends the queue: record why.
            self.stop_for_newer(rec)?;
            Ok(())
        })
    }

    pub(super) fn fail(rec: &mut AppRecord, code: ErrorCode, message: String) {
        tracing::warn!(app = %rec.app, %code, %message, "update step failed");
        rec.last_error = Some(ErrorInfo::new(code, message));
    }

    /// Runs one effect; the event it produced, if any.
    async fn execute(
        self: &Arc<Self>,
        rec: &mut AppRecord,
        effect: Effect,
        source: &ContentSource,
    ) -> Result<Option<Event>, DeployError> {
        let target = rec.target.clone();
        Ok(match effect {
            Effect::Fetch => match target {
                None => Some(Event::DownloadFailed {
                    code: ErrorCode::Internal,
                }),
                Some(target) => self.fetch(rec, &target, source).await?,
            },
            Effect::AbandonTarget => None,
            Effect::Verify => match target {
                None => Some(Event::VerifyFailed {
                    code: ErrorCode::Internal,
                }),
                Some(target) => Some(self.verify(rec, target).await?),
            },
            Effect::Stage => match target {
                None => Some(Event::StageFailed {
                    code: ErrorCode::Internal,
                }),
                Some(target) => match self.stage(&target).await {
                    Ok(_) => Some(Event::StageComplete),
                    Err(e) => {
                        Self::fail(rec, ErrorCode::StageFailed, fleet_protocol::report(&e));
                        Some(Event::StageFailed {
                            code: ErrorCode::StageFailed,
                        })
                    }
                },
            },
            Effect::StopOld => {
                let old = rec
                    .current
                    .clone()
                    .filter(|c| !target.as_ref().is_some_and(|t| t.same_release(c)));
                if let Some(old) = old {
                    self.stop_container(&old).await?;
                }
                crash::point("after-stop-old");
                None
            }
            Effect::StartNew => match target {
                None => Some(Event::StartFailed),
                Some(target) => self.start_new(rec, &target).await,
            },
            Effect::StartProbation { deadline } => match target {
                None => Some(Event::HealthFailed),
                Some(target) => self.probation(rec, &target, deadline).await,
            },
            Effect::Commit => {
                self.commit(rec)?;
                None
            }
            Effect::GcOld => {
                self.gc().await?;
                if rec.gc_pending {
                    rec.gc_pending = false;
                    self.state.put_app(rec)?;
                }
                None
            }
            Effect::StopNew => {
                let new = target
                    .clone()
                    .filter(|t| !rec.current.as_ref().is_some_and(|c| c.same_release(t)));
                if let Some(new) = new {
                    self.stop_container(&new).await?;
                }
                crash::point("mid-rollback");
                None
            }
            Effect::StartPrevious => Some(self.start_previous(rec).await),
        })
    }

    /// Gets the target's content into the store, reporting progress. No
    /// event if a newer desired state interrupted the download.
    async fn fetch(
        &self,
        rec: &mut AppRecord,
        target: &ReleaseRecord,
        source: &ContentSource,
    ) -> Result<Option<Event>, DeployError> {
        // Requirements and devices are checked before any byte moves; an
        // incompatible release fails here and the running one keeps running.
        // Off the async threads: it reads host files and may run nvidia-ctk.
        let runtime = self.containers.runtime().clone();
        let settings = target.release.runtime.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let config = runtime.config();
            gpu::check(
                &HostRoot::new(&config.host_root),
                config.gpu_tools(),
                &settings,
            )
        })
        .await
        .map_err(|source| DeployError::Blocking {
            what: "gpu check",
            source,
        })?;
        if let Err(e) = checked {
            Self::fail(
                rec,
                ErrorCode::Incompatible,
                format!("incompatible: {}", fleet_protocol::report(&e)),
            );
            return Ok(Some(Event::DownloadFailed {
                code: ErrorCode::Incompatible,
            }));
        }
        if rec.phase == Phase::Pending {
            let t = self.step(rec, &Event::DownloadStarted, unix_now())?;
            self.transition(rec, t.next)?;
        }
        self.state.add_image(&target.image)?;
        let phases = self.phases.clone();
        let events = self.progress.sink(rec.app.clone(), move || {
            phases.send_modify(|n| *n = n.wrapping_add(1));
        });
        // Deltas are asked for against the layers of the release running now.
        let bases: Vec<_> = rec
            .current
            .iter()
            .flat_map(|c| c.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let fetched = content::fetch(&self.store, source, target, &bases, events).await;
        self.progress.clear(&rec.app);
        Ok(match fetched {
            Ok(()) => {
                crash::point("fetched");
                Some(Event::DownloadComplete)
            }
            // The driver records it and stops (see preempt.rs).
            Err(e) if e.is_interruption() => None,
            Err(e) => {
                let code = e.fetch_code();
                Self::fail(rec, code, fleet_protocol::report(&e));
                Some(Event::DownloadFailed { code })
            }
        })
    }

    /// Checks the target's digest chain in the store and records its
    /// config and layers (see [`crate::image`]).
    async fn verify(
        &self,
        rec: &mut AppRecord,
        target: ReleaseRecord,
    ) -> Result<Event, DeployError> {
        let (store, snapshots) = (self.store.clone(), self.snapshots.clone());
        let verified = tokio::task::spawn_blocking(move || {
            StoredImage::verify_with_snapshots(
                &store,
                Some(&snapshots),
                &target.image,
                &target.release.manifest_digest,
            )
        })
        .await
        .map_err(|source| DeployError::Blocking {
            what: "verify",
            source,
        })?;
        Ok(match verified {
            Ok(image) => {
                if let Some(t) = rec.target.as_mut() {
                    t.config = Some(image.config_digest);
                    t.layers = image.layers;
                }
                Event::Verified
            }
            Err(e) => {
                Self::fail(rec, ErrorCode::VerifyFailed, fleet_protocol::report(&e));
                Event::VerifyFailed {
                    code: ErrorCode::VerifyFailed,
                }
            }
        })
    }

    async fn start_new(&self, rec: &mut AppRecord, target: &ReleaseRecord) -> Option<Event> {
        match self.start_release(target).await {
            // Resumed in probation: it runs again, the deadline stands.
            Ok(()) if rec.phase != Phase::Starting => None,
            Ok(()) => {
                crash::point("after-start-new");
                let probation = target
                    .release
                    .runtime
                    .probation_secs
                    .unwrap_or(self.config.deploy.probation_secs);
                Some(Event::Started {
                    probation_secs: probation,
                })
            }
            Err(e) => {
                Self::fail(rec, ErrorCode::StartFailed, fleet_protocol::report(&e));
                Some(Event::StartFailed)
            }
        }
    }

    /// The target becomes current, current becomes previous (persisted).
    fn commit(&self, rec: &mut AppRecord) -> Result<(), DeployError> {
        if let Some(target) = rec.target.take() {
            if rec
                .current
                .as_ref()
                .is_none_or(|c| !c.same_release(&target))
            {
                rec.previous = rec.current.take();
                rec.current = Some(target);
            }
            rec.last_error = None;
            rec.health = Health::Healthy;
            rec.gc_pending = true;
            self.state.put_app(rec)?;
        }
        crash::point("after-commit-record");
        Ok(())
    }

    async fn start_previous(&self, rec: &mut AppRecord) -> Event {
        let Some(current) = rec.current.clone() else {
            return Event::RollbackDone;
        };
        match self.start_release(&current).await {
            Ok(()) => {
                crash::point("after-rollback-start");
                Event::RollbackDone
            }
            Err(e) => {
                Self::fail(rec, ErrorCode::RollbackFailed, fleet_protocol::report(&e));
                Event::RollbackFailed
            }
        }
    }

    /// Snapshots, rootfs and bundle of a verified release. Idempotent.
    pub(super) async fn stage(&self, release: &ReleaseRecord) -> Result<Staged, DeployError> {
        let config = release
            .config
            .clone()
            .ok_or_else(|| DeployError::NotVerified(release.release_digest.clone()))?;
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        let layers = release.layers.clone();
        let manifest = release.release.manifest_digest.clone();
        let (image, dirs) = tokio::task::spawn_blocking(move || {
            let image = image::config(&store, &manifest, &config)?;
            let dirs = image::ensure_snapshots(&store, &snapshots, &manifest, &layers)?;
            Ok::<_, image::ImageError>((image, dirs))
        })
        .await
        .map_err(|source| DeployError::Blocking {
            what: "snapshots",
            source,
        })??;
        let allow_privileged = self.trust_allows_privileged();
        let staged = self
            .containers
            .runtime()
            .stage(StageRequest {
                app: &release.release.app,
                release_digest: &release.release_digest,
                image: &image,
                settings: &release.release.runtime,
                snapshots: &dirs,
                allow_privileged,
            })
            .await?;
        Ok(staged)
    }

    /// Makes the release's container run: the bundle staged for it when it
    /// is still ready, else staged now; a running one is adopted, a
    /// supervised one left alone, never started twice.
    pub(super) async fn start_release(&self, release: &ReleaseRecord) -> Result<(), DeployError> {
        if self.containers.is_supervised(&release.container).await {
            return Ok(());
        }
        let staged = match self.containers.staged(&release.container) {
            Some(staged) => staged,
            None => self.stage(release).await?,
        };
        self.containers.start(&staged).await?;
        Ok(())
    }
}
