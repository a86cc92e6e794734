//! The per-app update lifecycle on a device, as a pure state machine.
//!
//! ```text
//! Pending → Downloading → Verifying → Staged → Starting → Probation{deadline} → Committed
//!    │           │            │          │         │              │
//!    └───────────┴─ Failed{code} ────────┘         └── RollingBack{reason} → RolledBack{reason}
//!                                                                  └→ Failed{rollback_failed}
//! ```
//!
//! [`step`] maps `(phase, event, now)` to the next phase and the [`Effect`]s to
//! carry out. The agent's driver persists the next phase *before* executing the
//! effects; every effect is idempotent, and after a crash or power cut the
//! driver runs [`Phase::resume_effects`] of the stored phase. Every
//! `(phase, event)` pair not listed in [`step`] is an error and leaves the
//! phase unchanged (the function is pure, the caller keeps its phase).
//!
//! # Releases involved
//!
//! One lifecycle moves an app from its *previous* release (the last committed
//! one, absent on a first install) to a *target* release.
//!
//! - **Rollback target**: the previous release. It stays on disk, complete and
//!   startable, from the moment a target is accepted until the target is
//!   committed: no effect before [`Effect::Commit`] removes it, and
//!   [`Effect::GcOld`] is only ever emitted together with, and after, `Commit`.
//!   After the commit the target becomes the rollback target of the next
//!   update. On a first install there is no previous release:
//!   [`Effect::StopOld`] and [`Effect::StartPrevious`] are then no-ops and a
//!   rollback leaves the app stopped.
//! - **At most one active release**: effects never start one release while the
//!   other runs: `StopOld` precedes `StartNew`, `StopNew` precedes
//!   `StartPrevious`.
//! - Before `Starting` the previous release keeps running untouched, so any
//!   failure there (download, verification, staging) ends in `Failed` with
//!   nothing to roll back. From `Starting` on, failures roll back.
//!
//! The driver decides when a new lifecycle starts: it sends
//! [`Event::DesiredReceived`] only when the desired release of the app differs
//! from both the running release and the target in progress (so a release that
//! failed or was rolled back is not retried until a newer desired state asks
//! for a different one, and undoing to the running release is a no-op).

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Serialised in snake_case; codes this
/// version does not know decode as [`ErrorCode::Unknown`], so older agents and
/// servers tolerate codes added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Update lifecycle.
    DownloadFailed,
    DiskFull,
    VerifyFailed,
    StageFailed,
    StartFailed,
    HealthCheckFailed,
    CrashLoop,
    RollbackFailed,
    /// A newer desired state replaced the target before it was committed.
    Superseded,
    /// The release asks for something the device's trust metadata forbids
    /// (e.g. privileged).
    NotAllowed,
    /// The release requires an L4T/CUDA/SoC or a device this device does
    /// not have; refused before anything is downloaded.
    Incompatible,
    /// A rollout gate on what the device reports (e.g. its app restarting
    /// after commit) failed: judged by the server, not the device.
    GateFailed,
    // Desired state / command refused.
    Rejected,
    BadSignature,
    /// A generation not greater than the last applied (replay or rollback).
    StaleGeneration,
    Expired,
    WrongDevice,
    Malformed,
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::DownloadFailed,
        ErrorCode::DiskFull,
        ErrorCode::VerifyFailed,
        ErrorCode::StageFailed,
        ErrorCode::StartFailed,
        ErrorCode::HealthCheckFailed,
        ErrorCode::CrashLoop,
        ErrorCode::RollbackFailed,
        ErrorCode::Superseded,
        ErrorCode::NotAllowed,
        ErrorCode::Incompatible,
        ErrorCode::GateFailed,
        ErrorCode::Rejected,
        ErrorCode::BadSignature,
        ErrorCode::StaleGeneration,
        ErrorCode::Expired,
        ErrorCode::WrongDevice,
        ErrorCode::Malformed,
        ErrorCode::Internal,
        ErrorCode::Unknown,
    ];

    /// The wire form, e.g. `crash_loop`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DownloadFailed => "download_failed",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::VerifyFailed => "verify_failed",
            ErrorCode::StageFailed => "stage_failed",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::HealthCheckFailed => "health_check_failed",
            ErrorCode::CrashLoop => "crash_loop",
            ErrorCode::RollbackFailed => "rollback_failed",
            ErrorCode::Superseded => "superseded",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::Incompatible => "incompatible",
            ErrorCode::GateFailed => "gate_failed",
            ErrorCode::Rejected => "rejected",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::StaleGeneration => "stale_generation",
            ErrorCode::Expired => "expired",
            ErrorCode::WrongDevice => "wrong_device",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one app is in its update lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// A target release is accepted; its download is queued (e.g. waiting for
    /// the disk-space reserve check).
    Pending,
    /// Content of the target is being fetched.
    Downloading,
    /// The fetched content's digest chain is being checked.
    Verifying,
    /// Snapshots and the OCI bundle of the target are being prepared.
    Staged,
    /// The previous release is being stopped and the target started.
    Starting,
    /// The target runs and must stay healthy until `deadline` (unix seconds).
    Probation { deadline: u64 },
    /// The target is the app's release and the next update's rollback target.
    Committed,
    /// The target is being stopped and the previous release restarted.
    RollingBack { reason: ErrorCode },
    /// The previous release runs again (nothing runs on a first install).
    RolledBack { reason: ErrorCode },
    /// The update stopped; before `Starting` the previous release still runs.
    Failed { code: ErrorCode },
}

impl Phase {
    /// The snake_case name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Downloading => "downloading",
            Phase::Verifying => "verifying",
            Phase::Staged => "staged",
            Phase::Starting => "starting",
            Phase::Probation { .. } => "probation",
            Phase::Committed => "committed",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Failed { .. } => "failed",
        }
    }

    /// No update is in progress: `Committed`, `RolledBack` or `Failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Committed | Phase::RolledBack { .. } | Phase::Failed { .. }
        )
    }

    /// The error code of a failed or rolled-back update.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Phase::RollingBack { reason } | Phase::RolledBack { reason } => Some(*reason),
            Phase::Failed { code } => Some(*code),
            _ => None,
        }
    }

    /// What to (re-)execute after the agent restarts in this phase. All of it
    /// is idempotent. Keeping a committed or rolled-back release running after
    /// a reboot is supervision, not the lifecycle, so terminal phases only
    /// finish their own work. A probation deadline is absolute: if it passed
    /// while the device was down, the next [`Event::ProbationElapsed`] commits.
    pub fn resume_effects(&self) -> Vec<Effect> {
        match self {
            Phase::Pending | Phase::Downloading => vec![Effect::Fetch],
            Phase::Verifying => vec![Effect::Verify],
            Phase::Staged => vec![Effect::Stage],
            Phase::Starting => vec![Effect::StopOld, Effect::StartNew],
            Phase::Probation { deadline } => vec![
                Effect::StopOld,
                Effect::StartNew,
                Effect::StartProbation {
                    deadline: *deadline,
                },
            ],
            Phase::Committed => vec![Effect::Commit, Effect::GcOld],
            Phase::RollingBack { .. } => vec![Effect::StopNew, Effect::StartPrevious],
            Phase::RolledBack { .. } | Phase::Failed { .. } => vec![],
        }
    }
}

/// Something that happened to the app, reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A desired state names a release for this app other than the running
    /// one and the target in progress. Starts a lifecycle from a terminal
    /// phase; supersedes the target in progress otherwise.
    DesiredReceived,
    /// The first byte is being transferred (the disk-space reserve is fine).
    DownloadStarted,
    /// All content of the target is on disk (possibly without any transfer).
    DownloadComplete,
    DownloadFailed {
        code: ErrorCode,
    },
    Verified,
    VerifyFailed {
        code: ErrorCode,
    },
    /// Snapshots and bundle are ready.
    StageComplete,
    StageFailed {
        code: ErrorCode,
    },
    /// The target's container runs; it must stay healthy `probation_secs`.
    Started {
        probation_secs: u64,
    },
    StartFailed,
    HealthPassed,
    HealthFailed,
    CrashLoop,
    /// The probation timer fired; commits if `now >= deadline`.
    ProbationElapsed,
    RollbackDone,
    RollbackFailed,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::DesiredReceived => "desired_received",
            Event::DownloadStarted => "download_started",
            Event::DownloadComplete => "download_complete",
            Event::DownloadFailed { .. } => "download_failed",
            Event::Verified => "verified",
            Event::VerifyFailed { .. } => "verify_failed",
            Event::StageComplete => "stage_complete",
            Event::StageFailed { .. } => "stage_failed",
            Event::Started { .. } => "started",
            Event::StartFailed => "start_failed",
            Event::HealthPassed => "health_passed",
            Event::HealthFailed => "health_failed",
            Event::CrashLoop => "crash_loop",
            Event::ProbationElapsed => "probation_elapsed",
            Event::RollbackDone => "rollback_done",
            Event::RollbackFailed => "rollback_failed",
        }
    }
}

/// Work for the driver. Each is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum Effect {
    /// Fetch the target's missing content (resumable, after the disk-space
    /// reserve check); report `DownloadStarted`, then `DownloadComplete` or
    /// `DownloadFailed`.
    Fetch,
    /// Stop all work for a superseded target (its content stays until the
    /// next commit's garbage collection).
    AbandonTarget,
    /// Check the target's digest chain; report `Verified` or `VerifyFailed`.
    Verify,
    /// Unpack snapshots and write the target's bundle; report `StageComplete`
    /// or `StageFailed`.
    Stage,
    /// Stop the previous release if it runs.
    StopOld,
    /// Start the target; report `Started` or `StartFailed`.
    StartNew,
    /// Watch health until `deadline` and fire `ProbationElapsed` then; report
    /// `HealthFailed` / `CrashLoop` as they happen.
    StartProbation { deadline: u64 },
    /// Record the target as the app's release (and next rollback target).
    Commit,
    /// Garbage-collect content that no kept release uses. Only after `Commit`.
    GcOld,
    /// Stop the target if it runs.
    StopNew,
    /// Start the previous release (no-op on a first install); report
    /// `RollbackDone` or `RollbackFailed`.
    StartPrevious,
}

/// The outcome of a step: the phase to persist, then the effects to execute
/// in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: Phase,
    pub effects: Vec<Effect>,
}

/// An event that is not valid in the current phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("event {} is not valid in phase {}", event.name(), phase.name())]
    InvalidEvent { phase: Phase, event: Event },
}

/// How a new app, or an app in a terminal phase, starts: persist `Pending`
/// and fetch.
pub fn begin() -> Transition {
    to(Phase::Pending, vec![Effect::Fetch])
}

fn to(next: Phase, effects: Vec<Effect>) -> Transition {
    Transition { next, effects }
}

fn roll_back(reason: ErrorCode) -> Transition {
    to(
        Phase::RollingBack { reason },
        vec![Effect::StopNew, Effect::StartPrevious],
    )
}

/// One step of the lifecycle. Pure: `now` (unix seconds) is only compared
/// with the probation deadline and used to compute it.
pub fn step(phase: &Phase, event: &Event, now: u64) -> Result<Transition, LifecycleError> {
    use Effect as F;
    use Event as E;
    use Phase as P;

    let t = match (phase, event) {
        // A new lifecycle from a terminal phase.
        (P::Committed | P::RolledBack { .. } | P::Failed { .. }, E::DesiredReceived) => begin(),

        // Superseded before the previous release was touched: switch target.
        (P::Pending | P::Downloading | P::Verifying | P::Staged, E::DesiredReceived) => {
            to(P::Pending, vec![F::AbandonTarget, F::Fetch])
        }
        // Superseded once the target may run: roll back first; the driver
        // sends `DesiredReceived` again once `RolledBack`.
        (P::Starting | P::Probation { .. }, E::DesiredReceived) => roll_back(ErrorCode::Superseded),

        // Download.
        (P::Pending, E::DownloadStarted) => to(P::Downloading, vec![]),
        (P::Pending | P::Downloading, E::DownloadComplete) => to(P::Verifying, vec![F::Verify]),
        (P::Pending | P::Downloading, E::DownloadFailed { code }) => {
            to(P::Failed { code: *code }, vec![])
        }

        // Verification and staging.
        (P::Verifying, E::Verified) => to(P::Staged, vec![F::Stage]),
        (P::Verifying, E::VerifyFailed { code }) => to(P::Failed { code: *code }, vec![]),
        (P::Staged, E::StageComplete) => to(P::Starting, vec![F::StopOld, F::StartNew]),
        (P::Staged, E::StageFailed { code }) => to(P::Failed { code: *code }, vec![]),

        // Switch-over.
        (P::Starting, E::Started { probation_secs }) => {
            let deadline = now.saturating_add(*probation_secs);
            to(
                P::Probation { deadline },
                vec![F::StartProbation { deadline }],
            )
        }
        (P::Starting, E::StartFailed) => roll_back(ErrorCode::StartFailed),

        // Probation.
        (P::Probation { .. }, E::HealthPassed) => to(phase.clone(), vec![]),
        (P::Probation { .. }, E::HealthFailed) => roll_back(ErrorCode::HealthCheckFailed),
        (P::Probation { .. }, E::CrashLoop) => roll_back(ErrorCode::CrashLoop),
        (P::Probation { deadline }, E::ProbationElapsed) if now >= *deadline => {
            to(P::Committed, vec![F::Commit, F::GcOld])
        }
        // A timer that fires early (clock steps) changes nothing.
        (P::Probation { .. }, E::ProbationElapsed) => to(phase.clone(), vec![]),

        // After commit, health is supervision's business: never roll back
        // to a release whose content may already be collected.
        (P::Committed, E::HealthPassed | E::HealthFailed | E::CrashLoop) => {
            to(P::Committed, vec![])
        }

        // Rollback.
        (P::RollingBack { reason }, E::RollbackDone) => {
            to(P::RolledBack { reason: *reason }, vec![])
        }
        (P::RollingBack { .. }, E::RollbackFailed) => to(
            P::Failed {
                code: ErrorCode::RollbackFailed,
            },
            vec![],
        ),

        (
            P::Pending
            | P::Downloading
            | P::Verifying
            | P::Staged
            | P::Starting
            | P::Probation { .. }
            | P::Committed
            | P::RollingBack { .. }
            | P::RolledBack { .. }
            | P::Failed { .. },
            E::DesiredReceived
            | E::DownloadStarted
            | E::DownloadComplete
            | E::DownloadFailed { .. }
            | E::Verified
            | E::VerifyFailed { .. }
            | E::StageComplete
            | E::StageFailed { .. }
            | E::Started { .. }
            | E::StartFailed
            | E::HealthPassed
            | E::HealthFailed
            | E::CrashLoop
            | E::ProbationElapsed
            | E::RollbackDone
            | E::RollbackFailed,
        ) => {
            return Err(LifecycleError::InvalidEvent {
                phase: phase.clone(),
                event: event.clone(),
            });
        }
    };
    Ok(t)
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
