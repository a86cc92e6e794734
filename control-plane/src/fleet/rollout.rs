//! The rollout as a pure state machine, in the manner of the device
//! lifecycle (`fleet_protocol::lifecycle`): [`step`]`(rollout, event, now)`
//! returns the next rollout and the [`Effect`]s to run, or an error for a
//! pair that does not apply. No store, no clock, no I/O: the engine persists
//! the new rollout together with what its effects staged (signed desired
//! states, events) in one commit, then publishes.
//!
//! Every (state, event) pair is listed in [`step`]'s match:
//!
//! | state \ event | start | progress | pause | resume | abort | undo | superseded | wave timer | gate result |
//! |---|---|---|---|---|---|---|---|---|---|
//! | running | advance | advance | paused | error | aborted | rolled back | aborted | nothing | record, then halt, pause or advance |
//! | paused | error | nothing | error | running, advance | aborted | rolled back | aborted | nothing | nothing |
//! | aborted | error | nothing | error | error | error | rolled back | error | nothing | nothing |
//! | completed | error | nothing | error | error | error | rolled back | error | nothing | nothing |
//! | rolled back | error | nothing | error | error | error | error | error | nothing | nothing |
//! | halted | error | nothing | error | error | error | rolled back | error | nothing | nothing |
//!
//! "Advance" first checks the failure thresholds of the rollout's
//! [`Safety`]: more failed devices in the active wave than `wave_failures`
//! tolerates (of the wave's devices), or more in the whole rollout than
//! `total_failures` tolerates (of all its devices), halts it at once, open
//! wave or not: no further wave goes out, and by `on_halt` the failed
//! devices, every device given the release, or none get their previous
//! release back ([`Effect::Revert`]). Otherwise it starts the first pending
//! wave, closes waves whose devices all settled and completes the rollout
//! after the last. A wave open for `wave_deadline_secs` closes with its
//! unsettled devices counted as pending, not failed (the engine's periodic
//! tick steps running rollouts with progress so that deadlines pass
//! without reports). A settled wave with a next one bakes for `bake_secs`
//! first: the thresholds and the gates on its devices' telemetry
//! ([`super::gates`]) are checked all along (the same tick steps it); a
//! failed gate halts like a crossed threshold, gates that cannot decide
//! when the bake is over pause the rollout (`pause_reason`), and only when
//! they hold does the next wave go out.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_protocol::{DeviceId, Digest, StatusReport};

use super::feed;
use super::gates::{self, Bake};
use super::promql::{self, PromOutcome};
use crate::store::{
    EventKind, GateFailure, HaltRollback, RolloutId, RolloutRecord, RolloutState, Safety, Wave,
    WaveSize, WaveState,
};

pub use super::progress::{Counts, DeviceProgress, ProgressState, device_progress};

/// Splits `devices` into waves of the given sizes (a percentage is of all
/// the devices); the last wave takes the rest. No sizes: one wave with
/// every device.
pub fn plan_waves(devices: Vec<DeviceId>, sizes: &[WaveSize]) -> Vec<Wave> {
    let mut waves = Vec::new();
    let total = devices.len();
    let mut rest = devices.as_slice();
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let n = size.of(total).clamp(1, rest.len());
        waves.push(Wave {
            devices: rest[..n].to_vec(),
            state: WaveState::Pending,
            started_at: None,
            settled_at: None,
            gates_waived: false,
            prom: Default::default(),
            held: Default::default(),
        });
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        waves.push(Wave {
            devices: rest.to_vec(),
            state: WaveState::Pending,
            started_at: None,
            settled_at: None,
            gates_waived: false,
            prom: Default::default(),
            held: Default::default(),
        });
    }
    waves
}

pub use super::action::{Action, UnknownAction};
pub use super::gates::{Observed, Sample, Samples};

/// The latest status report of each device of a rollout that sent one.
pub type Reports = BTreeMap<DeviceId, Arc<StatusReport>>;

/// What happens to a rollout.
#[derive(Debug, Clone)]
pub enum Event {
    /// The rollout was just created: its first wave goes out.
    Start,
    /// Devices of the rollout reported (with the latest report and
    /// telemetry of every device of the rollout that sent some).
    Progress(Observed),
    /// The operator holds the next waves back.
    Pause,
    /// The operator lets them go again (with the latest reports, so that a
    /// wave that settled meanwhile closes at once). After a pause of the
    /// gates (they could not decide), the baking wave is promoted without
    /// the undecided gates.
    Resume(Observed),
    /// The operator stops the rollout where it is (devices keep what they
    /// got).
    Abort,
    /// The operator gives every device the rollout reached its previous
    /// release back.
    Undo,
    /// A newer rollout of the same app on some of the same devices started.
    Superseded { by: RolloutId },
    /// A wave's timer fired. No timer is armed yet (a wave goes out as soon
    /// as the previous one settled); the pause between waves arms it.
    WaveTimer { wave: usize },
    /// The PromQL gate measured wave `wave` (judged; with the latest
    /// reports, so that a wave whose bake is over is promoted at once).
    GateResult {
        wave: usize,
        outcome: PromOutcome,
        seen: Observed,
    },
}

impl Event {
    /// The event an operator's action is, given the latest reports.
    pub fn operator(action: Action, reports: Observed) -> Event {
        match action {
            Action::Pause => Event::Pause,
            Action::Resume => Event::Resume(reports),
            Action::Abort => Event::Abort,
            Action::Undo => Event::Undo,
        }
    }

    pub fn name(&self) -> EventName {
        match self {
            Event::Start => EventName::Start,
            Event::Progress(_) => EventName::Progress,
            Event::Pause => EventName::Operator(Action::Pause),
            Event::Resume(_) => EventName::Operator(Action::Resume),
            Event::Abort => EventName::Operator(Action::Abort),
            Event::Undo => EventName::Operator(Action::Undo),
            Event::Superseded { .. } => EventName::Superseded,
            Event::WaveTimer { .. } => EventName::WaveTimer,
            Event::GateResult { .. } => EventName::GateResult,
        }
    }
}

/// An [`Event`] without its data, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    Start,
    Progress,
    Operator(Action),
    Superseded,
    WaveTimer,
    GateResult,
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventName::Start => f.write_str("start"),
            EventName::Progress => f.write_str("take progress"),
            EventName::Operator(a) => f.write_str(a.as_str()),
            EventName::Superseded => f.write_str("be superseded"),
            EventName::WaveTimer => f.write_str("take a wave timer"),
            EventName::GateResult => f.write_str("take a gate result"),
        }
    }
}

/// What the engine does after persisting a stepped rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Sign desired states that give the devices of `wave` the rollout's
    /// release; the engine keeps what each ran before in
    /// [`RolloutRecord::previous`].
    Deploy { wave: usize, devices: Vec<DeviceId> },
    /// Give each device its previous release of the app back (`None`:
    /// remove the app), where the rollout's release is still what the
    /// device should run (a later rollout wins).
    Revert {
        previous: BTreeMap<DeviceId, Option<Digest>>,
    },
    /// Append an event about the rollout to the log.
    Record { kind: EventKind, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("rollout {id} is {state}; it cannot {event}")]
    NotApplicable {
        id: RolloutId,
        state: RolloutState,
        event: EventName,
    },
}

/// How the active wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveOutcome {
    /// Some device has not settled.
    Open,
    /// Every device committed or failed. (A failure threshold adds a
    /// `Halted` outcome here.)
    Settled,
}

/// The next rollout and its effects, or [`StepError::NotApplicable`].
pub fn step(
    rollout: RolloutRecord,
    event: Event,
    now: u64,
) -> Result<(RolloutRecord, Vec<Effect>), StepError> {
    use RolloutState::{Aborted, Completed, Halted, Paused, RolledBack, Running};
    let before = rollout.clone();
    let mut r = rollout;
    let mut effects = Vec::new();
    let name = event.name();
    let refuse = |r: &RolloutRecord| StepError::NotApplicable {
        id: r.id,
        state: r.state,
        event: name,
    };
    match (r.state, event) {
        (Running, Event::Start) => advance(&mut r, &Observed::default(), &mut effects, now),
        (Paused | Aborted | Completed | RolledBack | Halted, Event::Start) => {
            return Err(refuse(&r));
        }

        (Running, Event::Progress(reports)) => advance(&mut r, &reports, &mut effects, now),
        // A device that fails after the halt gets what the halt gave the
        // others.
        (Halted, Event::Progress(seen)) => revert_late_failures(&mut r, &seen.status, &mut effects),
        // Held back, or over: reports change nothing.
        (Paused | Aborted | Completed | RolledBack, Event::Progress(_)) => {}

        (Running, Event::Pause) => act(&mut r, Action::Pause, Paused, &mut effects),
        (Paused | Aborted | Completed | RolledBack | Halted, Event::Pause) => {
            return Err(refuse(&r));
        }

        (Paused, Event::Resume(reports)) => {
            waive_gates(&mut r);
            act(&mut r, Action::Resume, Running, &mut effects);
            advance(&mut r, &reports, &mut effects, now);
        }
        (Running | Aborted | Completed | RolledBack | Halted, Event::Resume(_)) => {
            return Err(refuse(&r));
        }

        (Running | Paused, Event::Abort) => act(&mut r, Action::Abort, Aborted, &mut effects),
        (Aborted | Completed | RolledBack | Halted, Event::Abort) => return Err(refuse(&r)),

        (Running | Paused | Aborted | Completed | Halted, Event::Undo) => {
            act(&mut r, Action::Undo, RolledBack, &mut effects);
            effects.push(Effect::Revert {
                previous: r.previous.clone(),
            });
        }
        (RolledBack, Event::Undo) => return Err(refuse(&r)),

        (Running | Paused, Event::Superseded { by }) => {
            r.state = Aborted;
            effects.push(Effect::Record {
                kind: EventKind::RolloutAborted,
                message: format!("superseded by a newer rollout of the same app (rollout {by})"),
            });
        }
        (Aborted | Completed | RolledBack | Halted, Event::Superseded { .. }) => {
            return Err(refuse(&r));
        }

        // No timer is armed today; a stale one changes nothing.
        (Running | Paused | Aborted | Completed | RolledBack | Halted, Event::WaveTimer { .. }) => {
        }

        (
            Running,
            Event::GateResult {
                wave,
                outcome,
                seen,
            },
        ) => {
            match promql::record(&mut r, wave, &outcome, now) {
                Some(Bake::Halt(failure)) => halt_at_gate(&mut r, failure, &seen, &mut effects),
                Some(Bake::Pause(why)) => pause_undecided(&mut r, wave, &why, &mut effects),
                Some(_) => advance(&mut r, &seen, &mut effects, now),
                // A late measurement of a wave no longer baking.
                None => {}
            }
        }
        // Held back, or over: a measurement changes nothing.
        (Paused | Aborted | Completed | RolledBack | Halted, Event::GateResult { .. }) => {}
    }
    // Why it paused by itself is only kept while it stays paused.
    if r.state != Paused {
        r.pause_reason = None;
    }
    if r != before {
        r.updated_at = now;
    }
    Ok((r, effects))
}

/// An operator's action that moves the rollout to `to`.
fn act(r: &mut RolloutRecord, action: Action, to: RolloutState, effects: &mut Vec<Effect>) {
    r.state = to;
    effects.push(Effect::Record {
        kind: action.event_kind(),
        message: format!("now {to}"),
    });
}

/// After a pause of the gates, the operator's resume promotes the baking
/// wave without the gates that could not decide.
fn waive_gates(r: &mut RolloutRecord) {
    if r.pause_reason.take().is_some()
        && let Some(w) = r.waves.iter_mut().find(|w| w.state == WaveState::Active)
    {
        w.gates_waived = true;
    }
}

/// Moves a running rollout on: starts the first pending wave, closes waves
/// whose devices all settled (after their bake and gates), completes the
/// rollout after the last.
fn advance(r: &mut RolloutRecord, seen: &Observed, effects: &mut Vec<Effect>, now: u64) {
    let reports = &seen.status;
    if let Some(reason) = crossed(r, reports) {
        halt(r, &reason, reports, &[], effects);
        return;
    }
    while r.state == RolloutState::Running {
        let Some(i) = r.waves.iter().position(|w| w.state != WaveState::Done) else {
            r.state = RolloutState::Completed;
            effects.push(Effect::Record {
                kind: EventKind::RolloutCompleted,
                message: "every wave settled".into(),
            });
            return;
        };
        match r.waves[i].state {
            WaveState::Pending => {
                r.waves[i].state = WaveState::Active;
                r.waves[i].started_at = Some(now);
                feed::start(r, i, effects);
                return;
            }
            WaveState::Active => match wave_outcome(r, i, reports) {
                WaveOutcome::Open if !r.waves[i].held.is_empty() => {
                    let late = deadline_passed(r, i, now);
                    feed::feed(r, i, reports, late, effects);
                    return;
                }
                WaveOutcome::Open if deadline_passed(r, i, now) => {
                    close_at_deadline(r, i, reports, effects);
                }
                WaveOutcome::Open => return,
                WaveOutcome::Settled => match gates::bake(r, i, now, seen, effects) {
                    Bake::Wait => return,
                    Bake::Halt(failure) => {
                        halt_at_gate(r, failure, seen, effects);
                        return;
                    }
                    Bake::Pause(why) => {
                        pause_undecided(r, i, &why, effects);
                        return;
                    }
                    Bake::Promote => r.waves[i].state = WaveState::Done,
                },
            },
            // Not found by the search above.
            WaveState::Done => return,
        }
    }
}

/// The devices of started waves that failed, by wave.
fn failed_by_wave(r: &RolloutRecord, reports: &Reports) -> Vec<Vec<DeviceId>> {
    r.waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            w.devices
                .iter()
                .filter(|d| {
                    device_progress(r, i, d, reports.get(*d).map(Arc::as_ref)).state
                        == ProgressState::Failed
                })
                .cloned()
                .collect()
        })
        .collect()
}

/// Which failure threshold of `r`'s [`Safety`] the reports cross, said in
/// words; `None`: none.
pub fn crossed(r: &RolloutRecord, reports: &Reports) -> Option<String> {
    let Safety {
        wave_failures,
        total_failures,
        ..
    } = r.safety;
    if wave_failures.is_none() && total_failures.is_none() {
        return None;
    }
    let failed = failed_by_wave(r, reports);
    if let Some(t) = wave_failures {
        for (i, (w, f)) in r.waves.iter().zip(&failed).enumerate() {
            if t.crossed(f.len(), w.devices.len()) {
                return Some(format!(
                    "wave {}: {} of {} devices failed (tolerated: {t})",
                    i + 1,
                    f.len(),
                    w.devices.len()
                ));
            }
        }
    }
    let total: usize = failed.iter().map(Vec::len).sum();
    let of = r.devices().count();
    match total_failures {
        Some(t) if t.crossed(total, of) => Some(format!(
            "{total} of {of} devices failed in the rollout (tolerated: {t})"
        )),
        Some(_) | None => None,
    }
}

/// Halts `r` at a failed gate, which is kept with what it measured.
fn halt_at_gate(
    r: &mut RolloutRecord,
    failure: GateFailure,
    seen: &Observed,
    effects: &mut Vec<Effect>,
) {
    let reason = failure.to_string();
    let judged = failure.devices.clone();
    r.gate_failure = Some(failure);
    halt(r, &reason, &seen.status, &judged, effects);
}

/// Pauses `r` because the gates could not decide on wave `wave`.
fn pause_undecided(r: &mut RolloutRecord, wave: usize, why: &str, effects: &mut Vec<Effect>) {
    r.state = RolloutState::Paused;
    r.pause_reason = Some(format!("wave {}: gates could not decide: {why}", wave + 1));
    effects.push(Effect::Record {
        kind: EventKind::RolloutGate,
        message: format!(
            "paused: wave {}: gates could not decide: {why}; resume to promote the wave without them, or abort",
            wave + 1
        ),
    });
}

/// Halts `r` for `reason`; by its `on_halt`, devices get their previous
/// release back (with `failed`, the devices that failed and those a failed
/// gate judged, `judged`).
fn halt(
    r: &mut RolloutRecord,
    reason: &str,
    reports: &Reports,
    judged: &[DeviceId],
    effects: &mut Vec<Effect>,
) {
    r.state = RolloutState::Halted;
    r.halt_reason = Some(reason.to_owned());
    let previous: BTreeMap<DeviceId, Option<Digest>> = match r.safety.on_halt {
        HaltRollback::Nothing => BTreeMap::new(),
        HaltRollback::Updated => r.previous.clone(),
        HaltRollback::Failed => failed_by_wave(r, reports)
            .into_iter()
            .flatten()
            .chain(judged.iter().cloned())
            .filter_map(|d| r.previous.get(&d).map(|p| (d, p.clone())))
            .collect(),
    };
    let which = match r.safety.on_halt {
        HaltRollback::Nothing => "no device rolled back".to_owned(),
        HaltRollback::Updated | HaltRollback::Failed => {
            format!("{} device(s) rolled back", previous.len())
        }
    };
    effects.push(Effect::Record {
        kind: EventKind::RolloutHalted,
        message: format!("halted: {reason}; {which}"),
    });
    r.reverted.extend(previous.keys().cloned());
    if !previous.is_empty() {
        effects.push(Effect::Revert { previous });
    }
}

/// After a halt that rolls failed devices back: the devices of its started
/// waves that failed since (they were still installing at the halt) get
/// their previous release too, once each.
fn revert_late_failures(r: &mut RolloutRecord, reports: &Reports, effects: &mut Vec<Effect>) {
    if r.safety.on_halt != HaltRollback::Failed {
        return;
    }
    let late: BTreeMap<DeviceId, Option<Digest>> = failed_by_wave(r, reports)
        .into_iter()
        .flatten()
        .filter(|d| !r.reverted.contains(d))
        .filter_map(|d| r.previous.get(&d).map(|p| (d, p.clone())))
        .collect();
    if late.is_empty() {
        return;
    }
    r.reverted.extend(late.keys().cloned());
    effects.push(Effect::Record {
        kind: EventKind::RolloutHalted,
        message: format!(
            "{} device(s) failed after the halt; rolled back",
            late.len()
        ),
    });
    effects.push(Effect::Revert { previous: late });
}

/// Whether wave `wave` has been open for its rollout's wave deadline.
fn deadline_passed(r: &RolloutRecord, wave: usize, now: u64) -> bool {
    let started = r.waves.get(wave).and_then(|w| w.started_at);
    r.safety
        .wave_deadline_secs
        .zip(started)
        .is_some_and(|(deadline, started)| now >= started.saturating_add(deadline))
}

/// Closes wave `wave` at its deadline; its unsettled devices stay pending.
fn close_at_deadline(
    r: &mut RolloutRecord,
    wave: usize,
    reports: &Reports,
    effects: &mut Vec<Effect>,
) {
    let pending = r.waves[wave]
        .devices
        .iter()
        .filter(|d| {
            !device_progress(r, wave, d, reports.get(*d).map(Arc::as_ref))
                .state
                .settled()
        })
        .count();
    r.waves[wave].state = WaveState::Done;
    effects.push(Effect::Record {
        kind: EventKind::RolloutWave,
        message: format!(
            "wave {} closed at its deadline: {pending} device(s) pending, not failed",
            wave + 1
        ),
    });
}

/// How wave `wave` stands by the latest reports.
pub fn wave_outcome(r: &RolloutRecord, wave: usize, reports: &Reports) -> WaveOutcome {
    let Some(w) = r.waves.get(wave) else {
        return WaveOutcome::Open;
    };
    let settled = w.devices.iter().all(|d| {
        device_progress(r, wave, d, reports.get(d).map(Arc::as_ref))
            .state
            .settled()
    });
    if settled {
        WaveOutcome::Settled
    } else {
        WaveOutcome::Open
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
