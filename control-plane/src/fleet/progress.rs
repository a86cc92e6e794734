//! Where each device of a rollout is, from its last status report
//! ([`device_progress`]), and the counts per state.

use fleet_protocol::message::DeltaFallback;
use fleet_protocol::{DeviceId, ErrorCode, ErrorInfo, Phase, StatusReport};
use serde::{Deserialize, Serialize};

use crate::store::{RolloutRecord, WaveState};

/// Where one device of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// Its wave has not started.
    Waiting,
    /// Its desired state names the release; no report about it yet.
    Sent,
    /// The device works on the release (downloading ... probation).
    Updating,
    /// The device committed the release.
    Committed,
    /// The update failed, rolled back, or the device rejected the state.
    Failed,
}

impl ProgressState {
    pub fn settled(self) -> bool {
        matches!(self, ProgressState::Committed | ProgressState::Failed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    pub device: DeviceId,
    pub wave: usize,
    pub state: ProgressState,
    /// The app's lifecycle phase as last reported (the device's own type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// The app's error, or the device's rejection of its desired state, as
    /// the device reported it (stable code plus message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Layers the device fetched whole because their delta was unusable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_fallbacks: Vec<DeltaFallback>,
}

/// Counts of devices per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: usize,
    pub waiting: usize,
    pub sent: usize,
    pub updating: usize,
    pub committed: usize,
    pub failed: usize,
}

impl Counts {
    pub fn of(progress: &[DeviceProgress]) -> Counts {
        let mut c = Counts {
            total: progress.len(),
            ..Counts::default()
        };
        for p in progress {
            match p.state {
                ProgressState::Waiting => c.waiting += 1,
                ProgressState::Sent => c.sent += 1,
                ProgressState::Updating => c.updating += 1,
                ProgressState::Committed => c.committed += 1,
                ProgressState::Failed => c.failed += 1,
            }
        }
        c
    }
}

/// The progress of `device` (in wave `wave`) from its last status report.
pub fn device_progress(
    rollout: &RolloutRecord,
    wave: usize,
    device: &DeviceId,
    status: Option<&StatusReport>,
) -> DeviceProgress {
    let mut p = DeviceProgress {
        device: device.clone(),
        wave,
        state: ProgressState::Waiting,
        phase: None,
        bytes_done: None,
        bytes_total: None,
        error: None,
        delta_fallbacks: Vec::new(),
    };
    let started = rollout
        .waves
        .get(wave)
        .is_some_and(|w| w.state != WaveState::Pending && !w.held.contains(device));
    if !started {
        return p;
    }
    p.state = ProgressState::Sent;
    let Some(status) = status else { return p };
    let Some(app) = status.apps.iter().find(|a| a.app == rollout.app) else {
        if let Some(rejected) = &status.rejected {
            p.state = ProgressState::Failed;
            p.error = Some(rejected.clone());
        }
        return p;
    };
    let digest = &rollout.release_digest;
    let is_target = app
        .target
        .as_ref()
        .is_some_and(|t| &t.release_digest == digest);
    let is_running = app
        .running
        .as_ref()
        .is_some_and(|r| &r.release_digest == digest);
    if !(is_target || is_running) {
        if let Some(rejected) = &status.rejected {
            p.state = ProgressState::Failed;
            p.error = Some(rejected.clone());
        }
        return p;
    }
    p.phase = Some(app.phase.clone());
    if let Some(progress) = &app.progress {
        p.bytes_done = Some(progress.bytes_done);
        p.bytes_total = Some(progress.bytes_total);
    }
    p.error.clone_from(&app.error);
    p.delta_fallbacks = app.delta_fallbacks.clone();
    p.state = match &app.phase {
        Phase::Committed if is_running && gate_failed(rollout, app.restarts) => {
            p.error = Some(ErrorInfo::new(
                ErrorCode::GateFailed,
                format!(
                    "gate: the app restarted {} times since the release started (tolerated: {})",
                    app.restarts,
                    rollout.safety.max_restarts.unwrap_or_default()
                ),
            ));
            ProgressState::Failed
        }
        Phase::Committed if is_running => ProgressState::Committed,
        // Committed but not yet reported as the running release: still updating.
        Phase::Committed
        | Phase::Pending
        | Phase::Downloading
        | Phase::Verifying
        | Phase::Staged
        | Phase::Starting
        | Phase::Probation { .. } => ProgressState::Updating,
        Phase::Failed { .. } | Phase::RolledBack { .. } | Phase::RollingBack { .. } => {
            ProgressState::Failed
        }
    };
    p
}

/// Whether `restarts` of an updated device cross the rollout's restart gate.
fn gate_failed(rollout: &RolloutRecord, restarts: u32) -> bool {
    rollout
        .safety
        .max_restarts
        .is_some_and(|max| restarts > max)
}
