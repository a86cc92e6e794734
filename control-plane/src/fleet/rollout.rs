//! Pure rollout logic: per-device progress from status reports, wave planning
//! and the state machine of operator actions. No store, no clock.

use fleet_protocol::{DeviceId, Phase, StatusReport};
use serde::{Deserialize, Serialize};

use crate::store::{RolloutRecord, RolloutState, Wave, WaveState};

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
    /// The app's lifecycle phase as last reported, e.g. `downloading`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    };
    let started = rollout
        .waves
        .get(wave)
        .is_some_and(|w| w.state != WaveState::Pending);
    if !started {
        return p;
    }
    p.state = ProgressState::Sent;
    let Some(status) = status else { return p };
    let Some(app) = status.apps.iter().find(|a| a.app == rollout.app) else {
        if let Some(rejected) = &status.rejected {
            p.state = ProgressState::Failed;
            p.error = Some(rejected.message.clone());
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
            p.error = Some(rejected.message.clone());
        }
        return p;
    }
    p.phase = Some(app.phase.name().to_owned());
    if let Some(progress) = &app.progress {
        p.bytes_done = Some(progress.bytes_done);
        p.bytes_total = Some(progress.bytes_total);
    }
    p.error = app.error.as_ref().map(|e| e.message.clone());
    p.state = match &app.phase {
        Phase::Committed if is_running => ProgressState::Committed,
        Phase::Failed { .. } | Phase::RolledBack { .. } | Phase::RollingBack { .. } => {
            ProgressState::Failed
        }
        _ => ProgressState::Updating,
    };
    p
}

/// Splits `devices` into waves of the given sizes; the last wave takes the
/// rest. No sizes: one wave with every device.
pub fn plan_waves(devices: Vec<DeviceId>, sizes: &[usize]) -> Vec<Wave> {
    let mut waves = Vec::new();
    let mut rest = devices.as_slice();
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let n = size.clamp(1, rest.len());
        waves.push(Wave {
            devices: rest[..n].to_vec(),
            state: WaveState::Pending,
            started_at: None,
        });
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        waves.push(Wave {
            devices: rest.to_vec(),
            state: WaveState::Pending,
            started_at: None,
        });
    }
    waves
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Undo,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Undo => "undo",
        }
    }
}

/// The state after `action`, or `None` when the action does not apply.
/// Pause holds the next waves back; resume lets them go; abort stops the
/// rollout where it is (devices keep what they got); undo gives every device
/// the rollout reached its previous release back.
pub fn apply(state: RolloutState, action: Action) -> Option<RolloutState> {
    use RolloutState::*;
    match (state, action) {
        (Running, Action::Pause) => Some(Paused),
        (Paused, Action::Resume) => Some(Running),
        (Running | Paused, Action::Abort) => Some(Aborted),
        (Running | Paused | Aborted | Completed, Action::Undo) => Some(RolledBack),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<DeviceId> {
        (0..n)
            .map(|i| DeviceId::new(format!("d{i}")).unwrap())
            .collect()
    }

    #[test]
    fn waves_take_the_given_sizes_and_the_last_takes_the_rest() {
        let sizes = |w: &[Wave]| w.iter().map(|w| w.devices.len()).collect::<Vec<_>>();
        assert_eq!(sizes(&plan_waves(ids(5), &[])), [5]);
        assert_eq!(sizes(&plan_waves(ids(5), &[1])), [1, 4]);
        assert_eq!(sizes(&plan_waves(ids(5), &[1, 2])), [1, 2, 2]);
        assert_eq!(sizes(&plan_waves(ids(2), &[1, 5, 5])), [1, 1]);
        assert_eq!(sizes(&plan_waves(ids(3), &[0])), [1, 2]);
        assert!(plan_waves(vec![], &[1]).is_empty());
    }

    #[test]
    fn every_state_action_pair_is_listed() {
        use RolloutState::*;
        let table = [
            (Running, Action::Pause, Some(Paused)),
            (Running, Action::Resume, None),
            (Running, Action::Abort, Some(Aborted)),
            (Running, Action::Undo, Some(RolledBack)),
            (Paused, Action::Pause, None),
            (Paused, Action::Resume, Some(Running)),
            (Paused, Action::Abort, Some(Aborted)),
            (Paused, Action::Undo, Some(RolledBack)),
            (Aborted, Action::Pause, None),
            (Aborted, Action::Resume, None),
            (Aborted, Action::Abort, None),
            (Aborted, Action::Undo, Some(RolledBack)),
            (Completed, Action::Pause, None),
            (Completed, Action::Resume, None),
            (Completed, Action::Abort, None),
            (Completed, Action::Undo, Some(RolledBack)),
            (RolledBack, Action::Pause, None),
            (RolledBack, Action::Resume, None),
            (RolledBack, Action::Abort, None),
            (RolledBack, Action::Undo, None),
        ];
        for (state, action, want) in table {
            assert_eq!(apply(state, action), want, "{state:?} {action:?}");
        }
    }
}
