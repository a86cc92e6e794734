//! `max_unavailable`: at most that many devices of a wave are mid-update
//! (given the release, not yet committed or failed) at once; a larger wave
//! is fed progressively as its devices settle. The devices of an active
//! wave not given the release yet are its `held` set. Once the wave's
//! deadline passed, devices that never answered (still `sent`) stop taking
//! a place, so that offline devices do not hold the others back; the wave
//! closes at its deadline only when nothing is held any more. Pure, like
//! the rest of [`super::rollout`].

use std::sync::Arc;

use fleet_protocol::DeviceId;

use super::rollout::{Effect, ProgressState, Reports, device_progress};
use crate::store::{EventKind, RolloutRecord};

/// How many devices of `r` may be mid-update at once; `None`: no limit.
fn limit(r: &RolloutRecord) -> Option<usize> {
    let total = r.devices().count();
    r.safety.max_unavailable.map(|m| m.of(total).max(1))
}

/// Starts wave `wave`: gives the release to as many of its devices as
/// `max_unavailable` lets go and holds the rest back.
pub(super) fn start(r: &mut RolloutRecord, wave: usize, effects: &mut Vec<Effect>) {
    let devices = r.waves[wave].devices.clone();
    let n = limit(r).map_or(devices.len(), |l| l.min(devices.len()));
    let (now, held) = devices.split_at(n);
    r.waves[wave].held = held.iter().cloned().collect();
    let at_once = if held.is_empty() {
        String::new()
    } else {
        format!(", {n} at once by max_unavailable")
    };
    effects.push(Effect::Record {
        kind: EventKind::RolloutWave,
        message: format!(
            "wave {} started ({} devices{at_once})",
            wave + 1,
            devices.len()
        ),
    });
    effects.push(Effect::Deploy {
        wave,
        devices: now.to_vec(),
    });
}

/// Gives held devices of active wave `wave` the release as places free
/// up; `deadline_passed`: devices that never answered take no place.
pub(super) fn feed(
    r: &mut RolloutRecord,
    wave: usize,
    reports: &Reports,
    deadline_passed: bool,
    effects: &mut Vec<Effect>,
) {
    if r.waves[wave].held.is_empty() {
        return;
    }
    let Some(limit) = limit(r) else {
        // The limit was lifted: everything held goes.
        let devices = take(r, wave, usize::MAX);
        deploy(r, wave, devices, effects);
        return;
    };
    let w = &r.waves[wave];
    let busy = w
        .devices
        .iter()
        .filter(|d| !w.held.contains(*d))
        .filter(
            |d| match device_progress(r, wave, d, reports.get(*d).map(Arc::as_ref)).state {
                ProgressState::Updating => true,
                ProgressState::Sent => !deadline_passed,
                ProgressState::Waiting | ProgressState::Committed | ProgressState::Failed => false,
            },
        )
        .count();
    let free = limit.saturating_sub(busy);
    if free > 0 {
        let devices = take(r, wave, free);
        deploy(r, wave, devices, effects);
    }
}

/// Takes up to `n` held devices of wave `wave`, in wave order.
fn take(r: &mut RolloutRecord, wave: usize, n: usize) -> Vec<DeviceId> {
    let w = &mut r.waves[wave];
    let next: Vec<DeviceId> = w
        .devices
        .iter()
        .filter(|d| w.held.contains(*d))
        .take(n)
        .cloned()
        .collect();
    for d in &next {
        w.held.remove(d);
    }
    next
}

fn deploy(r: &RolloutRecord, wave: usize, devices: Vec<DeviceId>, effects: &mut Vec<Effect>) {
    if devices.is_empty() {
        return;
    }
    effects.push(Effect::Record {
        kind: EventKind::RolloutWave,
        message: format!(
            "wave {}: {} more device(s) given the release ({} held back)",
            wave + 1,
            devices.len(),
            r.waves[wave].held.len()
        ),
    });
    effects.push(Effect::Deploy { wave, devices });
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
