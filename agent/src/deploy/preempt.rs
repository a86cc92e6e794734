//! Preemption: a newer desired state interrupts the apply in progress.
//!
//! Every apply (and recovery) runs under a fresh [`CancellationToken`]; the
//! daemon cancels it through [`super::Deployer::preempt`] when a desired
//! state arrives that [`super::Deployer::supersedes`] the one being applied.
//! Downloads stop at once and keep their partial files and journals (the
//! fetch client watches the token); the driver stops before its next effect
//! while the app is in a phase that may be left ([`preemptible`]), after
//! recording the interruption. The lifecycle then takes the newer desired
//! state from that phase (`DesiredReceived`): a target not yet started is
//! switched, one in probation is rolled back first.

use fleet_protocol::{ErrorCode, ErrorInfo, Phase};
use tokio_util::sync::CancellationToken;

use super::{DeployError, Inner};
use crate::state::AppRecord;

/// Phases an apply may stop in to make way for a newer desired state: the
/// previous release still runs (before `Starting`), or the target runs on
/// probation and the lifecycle can roll it back. Never mid-switch-over or
/// mid-rollback.
pub(super) fn preemptible(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::Pending
            | Phase::Downloading
            | Phase::Verifying
            | Phase::Staged
            | Phase::Probation { .. }
    )
}

impl Inner {
    /// A fresh token for the apply (or recovery) starting now.
    pub(super) fn begin_apply(&self) -> CancellationToken {
        let token = CancellationToken::new();
        match self.interrupt.lock() {
            Ok(mut t) => *t = token.clone(),
            Err(poisoned) => *poisoned.into_inner() = token.clone(),
        }
        token
    }

    /// Cancels the token of the apply in progress (if any).
    pub(super) fn preempt(&self) {
        match self.interrupt.lock() {
            Ok(t) => t.cancel(),
            Err(poisoned) => poisoned.into_inner().cancel(),
        }
    }

    pub(super) fn preempted(&self) -> bool {
        match self.interrupt.lock() {
            Ok(t) => t.is_cancelled(),
            Err(poisoned) => poisoned.into_inner().is_cancelled(),
        }
    }

    /// Whether the driver must stop now for a newer desired state; if so the
    /// interruption is recorded (persisted) on the app.
    pub(super) fn stop_for_newer(&self, rec: &mut AppRecord) -> Result<bool, DeployError> {
        if !self.preempted() || !preemptible(&rec.phase) {
            return Ok(false);
        }
        let message = format!(
            "interrupted in phase {} by a newer desired state",
            rec.phase.name()
        );
        tracing::info!(app = %rec.app, phase = rec.phase.name(), "update interrupted by a newer desired state");
        rec.last_error = Some(ErrorInfo::new(ErrorCode::Superseded, message));
        self.state.put_app(rec)?;
        self.bump();
        Ok(true)
    }
}
