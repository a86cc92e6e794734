//! Probation of a started release: watched until its deadline (crash loop,
//! exit, health checks), then judged.

use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::message::{Health, NetworkMode, RestartPolicy, RuntimeSettings};
use fleet_protocol::{ErrorCode, Event};

use super::{Inner, crash, unix_now};
use crate::health::HealthMonitor;
use crate::runtime::NetNs;
use crate::runtime::{ContainerStatus, RunState};
use crate::state::{AppRecord, ReleaseRecord};

/// How long past its deadline a container still starting may take.
const START_GRACE_SECS: u64 = 30;

/// When a probation ends.
struct Deadlines {
    /// The probation deadline.
    deadline: u64,
    /// A health check that has not concluded by the deadline (e.g. resumed
    /// after the deadline passed) gets its retries until then.
    verdict_by: u64,
}

impl Inner {
    /// Watches `target` until its probation ends; the event says how. No
    /// event if a newer desired state interrupts it (the driver records that
    /// and stops; the lifecycle rolls the target back for the newer one).
    pub(super) async fn probation(
        &self,
        rec: &mut AppRecord,
        target: &ReleaseRecord,
        deadline: u64,
    ) -> Option<Event> {
        let Some(status) = self.containers.subscribe(&target.container).await else {
            Self::fail(
                rec,
                ErrorCode::StartFailed,
                format!("container {} is not supervised", target.container),
            );
            return Some(Event::CrashLoop);
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
            HealthMonitor::spawn(check, self.containers.probe_target(&target.container, net))
        });
        rec.health = Health::Starting;
        let verdict_by = unix_now().max(deadline)
            + settings.health.as_ref().map_or(0, |c| {
                (c.interval_secs.max(1) + c.timeout_secs.max(1)) * u64::from(c.retries.max(1))
                    + c.start_period_secs
            });
        let deadlines = Deadlines {
            deadline,
            verdict_by,
        };
        let mut announced = false;
        let event = loop {
            let st = status.borrow().clone();
            if let Some(event) = self.judge(rec, &st, settings, monitor.as_ref(), &deadlines) {
                break Some(event);
            }
            if self.preempted() {
                break None;
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

    /// The end of the probation, if `st` and the health checks decide it now.
    fn judge(
        &self,
        rec: &mut AppRecord,
        st: &ContainerStatus,
        settings: &RuntimeSettings,
        monitor: Option<&HealthMonitor>,
        deadlines: &Deadlines,
    ) -> Option<Event> {
        let threshold = self.config.deploy.crash_loop_restarts;
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
                    st.last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            );
            return Some(Event::CrashLoop);
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
            return Some(Event::CrashLoop);
        }
        if let Some(m) = monitor {
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
                return Some(Event::HealthFailed);
            }
        }
        let now = unix_now();
        let undecided = monitor.is_some_and(|m| m.state().health == Health::Starting)
            && now < deadlines.verdict_by;
        if now < deadlines.deadline || undecided {
            return None;
        }
        // A release is committed only while its container runs: one caught
        // between restarts at the deadline (a crash loop on a slow machine
        // that has not reached the restart threshold yet) is not.
        match &st.state {
            RunState::Running { .. } => {}
            RunState::Exited { code: Some(0) } if settings.restart == RestartPolicy::OnFailure => {}
            RunState::Starting if now < deadlines.deadline.saturating_add(START_GRACE_SECS) => {
                return None;
            }
            state => {
                Self::fail(
                    rec,
                    ErrorCode::CrashLoop,
                    format!(
                        "not running at the end of probation ({state:?}; {} restarts, {} failures in a row; last exit {:?})",
                        st.restarts,
                        st.consecutive_failures,
                        st.last_exit.flatten()
                    ),
                );
                return Some(Event::CrashLoop);
            }
        }
        match monitor.map(|m| m.state()) {
            Some(h) if h.health != Health::Healthy => {
                Self::fail(
                    rec,
                    ErrorCode::HealthCheckFailed,
                    format!(
                        "not healthy by the end of probation: {}",
                        h.last_error.unwrap_or_else(|| "no passing check".into())
                    ),
                );
                Some(Event::HealthFailed)
            }
            Some(_) => Some(Event::ProbationElapsed),
            None => {
                rec.health = Health::Healthy;
                Some(Event::ProbationElapsed)
            }
        }
    }
}
