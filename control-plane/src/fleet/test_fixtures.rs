//! What the pure rollout tests (`rollout_tests`, `gates_tests`,
//! `feed_tests`) build alike: device ids, a rollout record of `model` v2 to
//! `cameras`, device reports, and the effects a step returned.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_protocol::StatusReport;
use fleet_protocol::message::ReleaseRef;
use fleet_protocol::{AppName, AppStatus, DeviceId, Digest, GroupName, Phase, SCHEMA_VERSION};

use crate::fleet::rollout::Effect;
use crate::store::{RolloutRecord, RolloutState, Safety, Wave};

/// `d0`, `d1`, ... `d{n-1}`.
pub fn ids(n: usize) -> Vec<DeviceId> {
    (0..n)
        .map(|i| DeviceId::new(format!("d{i}")).unwrap())
        .collect()
}

/// Rollout `id` of `model` v2 (`Digest::of(b"v2")`) to `cameras` in
/// `waves`, running, not started, created at 100.
pub fn record(id: u64, waves: Vec<Wave>, safety: Safety) -> RolloutRecord {
    RolloutRecord {
        id,
        release_digest: Digest::of(b"v2"),
        app: AppName::new("model").unwrap(),
        version: "v2".into(),
        group: GroupName::new("cameras").unwrap(),
        state: RolloutState::Running,
        waves,
        previous: BTreeMap::new(),
        reverted: Default::default(),
        safety,
        excluded: vec![],
        halt_reason: None,
        gate_failure: None,
        pause_reason: None,
        created_at: 100,
        updated_at: 100,
    }
}

/// `model` in `phase`, running and targeting the given releases.
pub fn app_status(phase: Phase, running: Option<&Digest>, target: Option<&Digest>) -> AppStatus {
    let r = |d: &Digest| ReleaseRef {
        version: "x".into(),
        release_digest: d.clone(),
    };
    AppStatus {
        app: AppName::new("model").unwrap(),
        phase,
        running: running.map(r),
        target: target.map(r),
        previous: None,
        health: Default::default(),
        restarts: 0,
        progress: None,
        error: None,
        delta_fallbacks: vec![],
    }
}

/// `device`'s report of generation 2 with `app`, as the rollout reads it.
pub fn report(device: &DeviceId, app: AppStatus) -> (DeviceId, Arc<StatusReport>) {
    let status = StatusReport {
        schema: SCHEMA_VERSION,
        device: device.clone(),
        reported_at: 1,
        generation: Some(2),
        apps: vec![app],
        rejected: None,
        info: None,
    };
    (device.clone(), Arc::new(status))
}

/// The waves the effects deploy.
pub fn deployed_waves(effects: &[Effect]) -> Vec<usize> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deploy { wave, .. } => Some(*wave),
            _ => None,
        })
        .collect()
}

/// The devices the effects give their previous release back.
pub fn reverted(effects: &[Effect]) -> Vec<DeviceId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Revert { previous } => Some(previous.keys().cloned().collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}
