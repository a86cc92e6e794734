//! One app's lifecycle: runs effects, feeds their events to
//! [`fleet_protocol::lifecycle::step`], persists each new phase (flushed)
//! before running its effects.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::lifecycle::{self, Effect, Event};
use fleet_protocol::message::{Health, NetworkMode, RestartPolicy};
use fleet_protocol::{ErrorCode, ErrorInfo, Phase};

use super::content::{self, ContentSource};
use super::{DeployError, Inner, crash, unix_now};
use crate::health::{HealthMonitor, NetNs, ProbeTarget};
use crate::runtime::{RunState, StageRequest, Staged};
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
        self.phases.send_modify(|n| *n = n.wrapping_add(1));
        crash::point(&format!("after-{}", rec.phase.name()));
        Ok(())
    }

    /// Runs `effects` and everything they lead to until no effect is left
    /// (a terminal phase, normally).
    pub(super) fn drive<'a>(
        self: &'a Arc<Self>,
        rec: &'a mut AppRecord,
        effects: Vec<Effect>,
        source: &'a ContentSource,
    ) -> Pin<Box<dyn Future<Output = Result<(), DeployError>> + Send + 'a>> {
        // Boxed as `dyn Send` here, where the lifetimes are concrete: spawning
        // the plain `async fn` trips the compiler's higher-ranked `Send` check.
        Box::pin(async move {
            let mut queue: VecDeque<Effect> = effects.into();
            while let Some(effect) = queue.pop_front() {
                let Some(event) = self.execute(rec, effect, source).await? else {
                    continue;
                };
                let t = lifecycle::step(&rec.phase, &event, unix_now())
                    .map_err(|e| DeployError::Lifecycle(e.to_string()))?;
                self.transition(rec, t.next)?;
                queue = t.effects.into();
            }
            Ok(())
        })
    }

    fn fail(rec: &mut AppRecord, code: ErrorCode, message: String) {
        tracing::warn!(app = %rec.app, %code, %message, "update step failed");
        rec.last_error = Some(ErrorInfo::new(code, message));
    }

    fn execute<'a>(
        self: &'a Arc<Self>,
        rec: &'a mut AppRecord,
        effect: Effect,
        source: &'a ContentSource,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Event>, DeployError>> + Send + 'a>> {
        Box::pin(async move {
            let target = rec.target.clone();
            Ok(match effect {
                Effect::Fetch => {
                    let Some(target) = target else {
                        return Ok(Some(Event::DownloadFailed {
                            code: ErrorCode::Internal,
                        }));
                    };
                    if rec.phase == Phase::Pending {
                        let t = lifecycle::step(&rec.phase, &Event::DownloadStarted, unix_now())
                            .map_err(|e| DeployError::Lifecycle(e.to_string()))?;
                        self.transition(rec, t.next)?;
                    }
                    self.state.add_image(&target.image)?;
                    match content::fetch(&self.store, source, &target).await {
                        Ok(()) => {
                            crash::point("fetched");
                            Some(Event::DownloadComplete)
                        }
                        Err(e) => {
                            let code = e.fetch_code();
                            Self::fail(rec, code, e.to_string());
                            Some(Event::DownloadFailed { code })
                        }
                    }
                }
                Effect::AbandonTarget => None,
                Effect::Verify => {
                    let Some(target) = target else {
                        return Ok(Some(Event::VerifyFailed {
                            code: ErrorCode::Internal,
                        }));
                    };
                    let store = self.store.clone();
                    let result =
                        tokio::task::spawn_blocking(move || content::verify(&store, &target))
                            .await
                            .map_err(|e| DeployError::Lifecycle(e.to_string()))?;
                    match result {
                        Ok(verified) => {
                            if let Some(t) = rec.target.as_mut() {
                                t.config = Some(verified.config);
                                t.layers = verified.layers;
                            }
                            Some(Event::Verified)
                        }
                        Err(e) => {
                            Self::fail(rec, ErrorCode::VerifyFailed, e.to_string());
                            Some(Event::VerifyFailed {
                                code: ErrorCode::VerifyFailed,
                            })
                        }
                    }
                }
                Effect::Stage => {
                    let Some(target) = target else {
                        return Ok(Some(Event::StageFailed {
                            code: ErrorCode::Internal,
                        }));
                    };
                    match self.stage(&target).await {
                        Ok(_) => Some(Event::StageComplete),
                        Err(e) => {
                            Self::fail(rec, ErrorCode::StageFailed, e.to_string());
                            Some(Event::StageFailed {
                                code: ErrorCode::StageFailed,
                            })
                        }
                    }
                }
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
                Effect::StartNew => {
                    let Some(target) = target else {
                        return Ok(Some(Event::StartFailed));
                    };
                    match self.start_release(&target).await {
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
                            Self::fail(rec, ErrorCode::StartFailed, e.to_string());
                            Some(Event::StartFailed)
                        }
                    }
                }
                Effect::StartProbation { deadline } => {
                    let Some(target) = target else {
                        return Ok(Some(Event::HealthFailed));
                    };
                    Some(self.probation(rec, &target, deadline).await)
                }
                Effect::Commit => {
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
                Effect::StartPrevious => match rec.current.clone() {
                    None => Some(Event::RollbackDone),
                    Some(current) => match self.start_release(&current).await {
                        Ok(()) => {
                            crash::point("after-rollback-start");
                            Some(Event::RollbackDone)
                        }
                        Err(e) => {
                            Self::fail(rec, ErrorCode::RollbackFailed, e.to_string());
                            Some(Event::RollbackFailed)
                        }
                    },
                },
            })
        })
    }

    /// Snapshots and bundle of a verified release. Idempotent.
    pub(super) async fn stage(&self, release: &ReleaseRecord) -> Result<Staged, DeployError> {
        let config = release
            .config
            .clone()
            .ok_or_else(|| DeployError::NotVerified(release.release_digest.clone()))?;
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        let layers = release.layers.clone();
        let (image, dirs) = tokio::task::spawn_blocking(move || {
            let image = content::image_config(&store, &config)?;
            let dirs = content::snapshots(&store, &snapshots, &layers)?;
            Ok::<_, content::ContentError>((image, dirs))
        })
        .await
        .map_err(|e| DeployError::Lifecycle(e.to_string()))??;
        let allow_privileged = self.trust_allows_privileged();
        let staged = self
            .runtime
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

    /// Makes the release's container run (staging it again if needed);
    /// a running one is adopted, never started twice.
    pub(super) async fn start_release(&self, release: &ReleaseRecord) -> Result<(), DeployError> {
        let mut sups = self.supervisors.lock().await;
        if let Some(sup) = sups.get(&release.container) {
            if !matches!(sup.status().state, RunState::Stopped) {
                return Ok(());
            }
            sups.remove(&release.container);
        }
        let staged = self.stage(release).await?;
        let sup = self.runtime.start(&staged).await?;
        sups.insert(release.container.clone(), sup);
        Ok(())
    }

    async fn probation(&self, rec: &mut AppRecord, target: &ReleaseRecord, deadline: u64) -> Event {
        let threshold = self.config.deploy.crash_loop_restarts;
        let status = {
            let sups = self.supervisors.lock().await;
            sups.get(&target.container).map(|s| s.subscribe())
        };
        let Some(status) = status else {
            Self::fail(
                rec,
                ErrorCode::StartFailed,
                format!("container {} is not supervised", target.container),
            );
            return Event::CrashLoop;
        };
        let settings = &target.release.runtime;
        let monitor = settings.health.clone().map(|check| {
            let net = match settings.network {
                NetworkMode::Host => NetNs::Host,
                NetworkMode::None => {
                    let rx = status.clone();
                    NetNs::Container(Arc::new(move || rx.borrow().pid()))
                }
            };
            HealthMonitor::spawn(
                check,
                ProbeTarget {
                    driver: self.runtime.driver().clone(),
                    container_id: target.container.to_string(),
                    net,
                },
            )
        });
        rec.health = Health::Starting;
        let verdict_by = unix_now().max(deadline)
            + settings.health.as_ref().map_or(0, |c| {
                (c.interval_secs.max(1) + c.timeout_secs.max(1)) * u64::from(c.retries.max(1))
                    + c.start_period_secs
            });
        let mut announced = false;
        let event = loop {
            let st = status.borrow().clone();
            rec.restarts = st.restarts;
            if st.restarts >= threshold || st.consecutive_failures >= threshold {
                Self::fail(
                    rec,
                    ErrorCode::CrashLoop,
                    format!(
                        "{} restarts ({} failures in a row) during probation; last exit {:?}{}",
                        st.restarts,
                        st.consecutive_failures,
                        st.last_exit.flatten(),
                        st.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                    ),
                );
                break Event::CrashLoop;
            }
            let gave_up = matches!(st.state, RunState::Stopped)
                || (matches!(st.state, RunState::Exited { .. })
                    && settings.restart == RestartPolicy::No);
            if gave_up {
                Self::fail(
                    rec,
                    ErrorCode::CrashLoop,
                    format!("the container exited during probation ({:?})", st.last_exit),
                );
                break Event::CrashLoop;
            }
            if let Some(m) = &monitor {
                let h = m.state();
                rec.health = h.health;
                if h.health == Health::Unhealthy {
                    Self::fail(
                        rec,
                        ErrorCode::HealthCheckFailed,
                        format!(
                            "health check failed: {}",
                            h.last_error.unwrap_or_else(|| "unhealthy".into())
                        ),
                    );
                    break Event::HealthFailed;
                }
            }
            let now = unix_now();
            // A check that has not concluded yet (e.g. resumed after the
            // deadline passed) gets its retries before the verdict.
            let undecided = monitor
                .as_ref()
                .is_some_and(|m| m.state().health == Health::Starting)
                && now < verdict_by;
            if now >= deadline && !undecided {
                if let Some(m) = &monitor {
                    let h = m.state();
                    if h.health != Health::Healthy {
                        Self::fail(
                            rec,
                            ErrorCode::HealthCheckFailed,
                            format!(
                                "not healthy by the end of probation: {}",
                                h.last_error.unwrap_or_else(|| "no passing check".into())
                            ),
                        );
                        break Event::HealthFailed;
                    }
                } else {
                    rec.health = Health::Healthy;
                }
                break Event::ProbationElapsed;
            }
            if !announced {
                announced = true;
            } else {
                crash::point("during-probation");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(m) = monitor {
            m.stop().await;
        }
        event
    }
}
