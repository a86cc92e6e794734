//! The PromQL gate in the pure rollout state machine: which baking wave is
//! due a measurement ([`due`]), what a measurement means against the gate's
//! condition ([`judge`]), and how a judged measurement moves the bake
//! ([`record`], reached through [`super::rollout::Event::GateResult`]). The
//! query itself runs outside, through [`super::ports::GateQuery`].

use fleet_protocol::DeviceId;

use super::gates::Bake;
use crate::store::{
    Comparison, GateFailure, GateName, PromGate, RolloutRecord, RolloutState, WaveState,
};

/// What the query returned: the value of each series (a scalar is one), or
/// why it could not run.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    Values(Vec<f64>),
    Unreachable(String),
}

/// A measurement judged against the gate's success condition.
#[derive(Debug, Clone, PartialEq)]
pub enum PromOutcome {
    /// Every series satisfied the condition (`value`: the first).
    Pass { value: f64 },
    /// A series did not: its value and the comparison it failed.
    Fail { value: f64, failed: Comparison },
    /// No data, not a number, or Prometheus unreachable, and why.
    Inconclusive { why: String },
}

/// Judges `m` by `gate`'s success condition.
pub fn judge(gate: &PromGate, m: Measurement) -> PromOutcome {
    let values = match m {
        Measurement::Unreachable(why) => {
            return PromOutcome::Inconclusive {
                why: format!("Prometheus unreachable: {why}"),
            };
        }
        Measurement::Values(v) => v,
    };
    let Some(first) = values.first().copied() else {
        return PromOutcome::Inconclusive {
            why: "no data: the query returned no series".into(),
        };
    };
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return PromOutcome::Inconclusive {
            why: format!("the query returned {v}, not a number"),
        };
    }
    for &value in &values {
        if let Some(failed) = gate.success.fails(value) {
            return PromOutcome::Fail { value, failed };
        }
    }
    PromOutcome::Pass { value: first }
}

/// The baking wave of `r` whose PromQL measurement is due at `now`, and
/// the gate: the first right after the wave settled, then one every
/// `interval_secs` until the wave is promoted.
pub fn due(r: &RolloutRecord, now: u64) -> Option<(usize, PromGate)> {
    let gate = r.safety.promql.as_ref()?;
    if r.state != RolloutState::Running {
        return None;
    }
    let wave = baking_wave(r)?;
    let next = r.waves[wave]
        .prom
        .last_at
        .map_or(0, |t| t.saturating_add(gate.interval_secs));
    (now >= next).then(|| (wave, gate.clone()))
}

/// The settled wave of `r` in its bake, if any.
fn baking_wave(r: &RolloutRecord) -> Option<usize> {
    r.safety.bake_secs.filter(|b| *b > 0)?;
    let i = r.waves.iter().position(|w| w.state != WaveState::Done)?;
    let w = &r.waves[i];
    (w.state == WaveState::Active && w.settled_at.is_some() && i + 1 < r.waves.len()).then_some(i)
}

/// Whether the PromQL gate lets baked wave `wave` go: it measured a pass,
/// or the operator resumed after it could not decide. No gate: yes.
pub(super) fn passed(r: &RolloutRecord, wave: usize) -> bool {
    r.safety.promql.is_none() || r.waves[wave].prom.passed > 0 || r.waves[wave].gates_waived
}

/// Records `outcome` for wave `wave` of `r` at `now` and says what it
/// means for the bake; `None` when the wave is not baking any more (a late
/// measurement changes nothing).
pub(super) fn record(
    r: &mut RolloutRecord,
    wave: usize,
    outcome: &PromOutcome,
    now: u64,
) -> Option<Bake> {
    let gate = r.safety.promql.clone()?;
    if baking_wave(r) != Some(wave) {
        return None;
    }
    let devices: Vec<DeviceId> = r.waves[wave].devices.clone();
    let waived = r.waves[wave].gates_waived;
    let tally = &mut r.waves[wave].prom;
    tally.last_at = Some(now);
    let limit = gate.failure_limit;
    let bake = match outcome {
        PromOutcome::Pass { value } => {
            tally.passed += 1;
            tally.last = Some(format!("{value} (passed {})", gate.success));
            Bake::Wait
        }
        PromOutcome::Fail { value, failed } => {
            tally.failed += 1;
            tally.last = Some(format!("{value} (failed {failed})"));
            if tally.failed <= limit {
                return Some(Bake::Wait);
            }
            Bake::Halt(GateFailure {
                wave,
                gate: GateName::Promql,
                measured: *value,
                threshold: failed.bound,
                detail: format!(
                    "`{}` = {value}, not {failed} ({} failed measurement(s), tolerated: {limit})",
                    gate.query, tally.failed
                ),
                devices,
            })
        }
        PromOutcome::Inconclusive { why } => {
            tally.inconclusive += 1;
            tally.last = Some(format!("inconclusive: {why}"));
            if tally.inconclusive <= limit || waived {
                return Some(Bake::Wait);
            }
            Bake::Pause(format!(
                "promql: `{}`: {why} ({} inconclusive measurement(s), tolerated: {limit})",
                gate.query, tally.inconclusive
            ))
        }
    };
    Some(bake)
}
