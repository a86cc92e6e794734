//! The bake of a settled wave and its gates, pure like the rest of
//! [`super::rollout`]: what the wave's devices reported during the bake
//! (status and telemetry, passed in as [`Observed`]) is measured against the
//! rollout's [`TelemetryGates`], comparing the wave's devices that committed
//! the release with the rollout's devices still on their previous release
//! (the baseline, the waves not started yet).
//!
//! While the wave bakes, a gate that fails halts at once; when the bake time
//! is over, the wave is promoted only if every gate holds. A gate that lacks
//! the data to decide (no telemetry from the wave's devices during the bake,
//! or none from the baseline) pauses the rollout for a human, who may resume
//! it (the wave is then promoted without the undecided gates) or abort it.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet_protocol::message::{AppTelemetry, Health};
use fleet_protocol::{AppStatus, DeviceId, ErrorCode, Phase, StatusReport, Telemetry};

use super::promql;
use super::rollout::{Effect, ProgressState, Reports, device_progress};
use crate::store::{EventKind, GateFailure, GateName, RolloutRecord, WaveState};

/// One telemetry message of a device and when the server received it (its
/// own clock: device clocks drift).
#[derive(Debug, Clone)]
pub struct Sample {
    pub received_at: u64,
    pub telemetry: Arc<Telemetry>,
}

/// The latest telemetry of each device of a rollout that sent some.
pub type Samples = BTreeMap<DeviceId, Sample>;

/// What the devices of a rollout last said: status reports and telemetry.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: Reports,
    pub telemetry: Samples,
}

impl From<Reports> for Observed {
    fn from(status: Reports) -> Self {
        Observed {
            status,
            telemetry: Samples::new(),
        }
    }
}

/// What the gates say about a baking wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every gate set holds (or none is set).
    Holds,
    /// This gate does not hold.
    Failed(GateFailure),
    /// No gate failed, but some could not decide, and why.
    Undecided(String),
}

/// What becomes of a settled wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bake {
    /// It bakes on.
    Wait,
    /// A gate failed: the rollout halts.
    Halt(GateFailure),
    /// The bake is over and a gate could not decide: the rollout pauses.
    Pause(String),
    /// The next wave may go out.
    Promote,
}

/// Where settled wave `wave` of `r` stands in its bake (`bake_secs`, only
/// between waves: the last one completes at once). The first call after it
/// settled starts the clock.
pub(super) fn bake(
    r: &mut RolloutRecord,
    wave: usize,
    now: u64,
    seen: &Observed,
    effects: &mut Vec<Effect>,
) -> Bake {
    let Some(secs) = r.safety.bake_secs.filter(|b| *b > 0) else {
        return Bake::Promote;
    };
    if wave + 1 >= r.waves.len() {
        return Bake::Promote;
    }
    let Some(settled) = r.waves[wave].settled_at else {
        r.waves[wave].settled_at = Some(now);
        effects.push(Effect::Record {
            kind: EventKind::RolloutWave,
            message: format!(
                "wave {} settled; baking {secs} s before wave {}",
                wave + 1,
                wave + 2
            ),
        });
        return Bake::Wait;
    };
    let over = now >= settled.saturating_add(secs);
    let waived = r.waves[wave].gates_waived;
    let verdict = if r.safety.gates.is_empty() {
        Verdict::Holds
    } else {
        evaluate(r, wave, seen)
    };
    let undecided = match verdict {
        Verdict::Failed(failure) => return Bake::Halt(failure),
        _ if !over => return Bake::Wait,
        Verdict::Undecided(why) if !waived => return Bake::Pause(why),
        Verdict::Undecided(why) => Some(why),
        Verdict::Holds => None,
    };
    // The PromQL gate measures on (through its own events) until it passed.
    if !promql::passed(r, wave) {
        return Bake::Wait;
    }
    if r.safety.gates.is_empty() && r.safety.promql.is_none() {
        return Bake::Promote;
    }
    let what = match undecided {
        None if waived => "held or could not decide; promoted as the operator resumed".into(),
        None => "held".into(),
        Some(why) => format!("could not decide ({why}); promoted as the operator resumed"),
    };
    effects.push(gate_record(r, wave, what));
    Bake::Promote
}

fn gate_record(r: &RolloutRecord, wave: usize, what: String) -> Effect {
    let mut gates = r.safety.gates.names();
    if r.safety.promql.is_some() {
        gates.push(GateName::Promql);
    }
    let names: Vec<&str> = gates.iter().map(|g| g.as_str()).collect();
    Effect::Record {
        kind: EventKind::RolloutGate,
        message: format!("wave {}: gates {} {what}", wave + 1, names.join(", ")),
    }
}

/// The wave's devices that committed the release, with their app's status
/// and the app's telemetry received since `since`.
struct Measured<'a> {
    updated: Vec<(
        &'a DeviceId,
        Option<&'a AppStatus>,
        Option<&'a AppTelemetry>,
    )>,
    baseline: Vec<&'a AppTelemetry>,
}

fn app_status<'a>(r: &RolloutRecord, s: Option<&'a StatusReport>) -> Option<&'a AppStatus> {
    s?.apps.iter().find(|a| a.app == r.app)
}

fn app_sample<'a>(
    r: &RolloutRecord,
    s: Option<&'a Sample>,
    since: u64,
) -> Option<&'a AppTelemetry> {
    let s = s.filter(|s| s.received_at >= since)?;
    s.telemetry
        .apps
        .iter()
        .find(|a| a.app.as_ref() == Some(&r.app))
}

fn measured<'a>(r: &'a RolloutRecord, wave: usize, seen: &'a Observed) -> Measured<'a> {
    let since = r.waves[wave]
        .settled_at
        .or(r.waves[wave].started_at)
        .unwrap_or(0);
    let updated = r.waves[wave]
        .devices
        .iter()
        .filter(|d| {
            let status = seen.status.get(*d).map(Arc::as_ref);
            device_progress(r, wave, d, status).state == ProgressState::Committed
        })
        .map(|d| {
            let status = app_status(r, seen.status.get(d).map(Arc::as_ref));
            (d, status, app_sample(r, seen.telemetry.get(d), since))
        })
        .collect();
    let baseline = r
        .waves
        .iter()
        .filter(|w| w.state == WaveState::Pending)
        .flat_map(|w| &w.devices)
        .filter_map(|d| app_sample(r, seen.telemetry.get(d), 0))
        .collect();
    Measured { updated, baseline }
}

/// A gate that did not hold, before it names its wave and devices:
/// gate, measured, threshold, detail.
type Miss = (GateName, f64, f64, String);

/// What the gates of `r` say about wave `wave` by what its devices said.
pub fn evaluate(r: &RolloutRecord, wave: usize, seen: &Observed) -> Verdict {
    let m = measured(r, wave, seen);
    let mut undecided = Vec::new();
    let miss = counted(r, wave, seen, &m).or_else(|| compared(r, &m, &mut undecided));
    if let Some((gate, measured, threshold, detail)) = miss {
        return Verdict::Failed(GateFailure {
            wave,
            gate,
            measured,
            threshold,
            detail,
            devices: m.updated.iter().map(|(d, _, _)| (*d).clone()).collect(),
        });
    }
    if undecided.is_empty() {
        Verdict::Holds
    } else {
        Verdict::Undecided(undecided.join("; "))
    }
}

/// The gates that count: crash loops, restarts, unhealthy devices.
fn counted(r: &RolloutRecord, wave: usize, seen: &Observed, m: &Measured<'_>) -> Option<Miss> {
    let gates = r.safety.gates;
    if gates.crash_loop {
        let looped = crash_loops(r, wave, seen);
        if !looped.is_empty() {
            let names: Vec<String> = looped.iter().map(ToString::to_string).collect();
            let detail = format!(
                "the app crash-looped on {} ({})",
                names.len(),
                names.join(", ")
            );
            return Some((GateName::CrashLoop, looped.len() as f64, 0.0, detail));
        }
    }
    if let Some(max) = gates.restarts {
        let total: u64 = m
            .updated
            .iter()
            .map(|(_, s, t)| {
                let reported = s.map_or(0, |s| s.restarts);
                u64::from(reported.max(t.map_or(0, |t| t.restarts)))
            })
            .sum();
        if total > u64::from(max) {
            let detail = format!(
                "the app restarted {total} times on the wave's {} updated devices (tolerated: {max})",
                m.updated.len()
            );
            return Some((GateName::Restarts, total as f64, f64::from(max), detail));
        }
    }
    let max = gates.unhealthy?;
    let unhealthy = m
        .updated
        .iter()
        .filter(|(_, s, t)| {
            s.is_some_and(|s| s.health == Health::Unhealthy)
                || t.is_some_and(|t| t.health == Health::Unhealthy)
        })
        .count();
    (unhealthy > max as usize).then(|| {
        let detail = format!(
            "{unhealthy} of the wave's {} updated devices report the app unhealthy (tolerated: {max})",
            m.updated.len()
        );
        (GateName::Unhealthy, unhealthy as f64, f64::from(max), detail)
    })
}

/// The gates that compare with the baseline: memory, CPU. Those without
/// data say why in `undecided`.
fn compared(r: &RolloutRecord, m: &Measured<'_>, undecided: &mut Vec<String>) -> Option<Miss> {
    let gates = r.safety.gates;
    let resources: [(GateName, Option<f64>, Resource); 2] = [
        (GateName::Memory, gates.memory.map(f64::from), MEMORY),
        (GateName::Cpu, gates.cpu.map(f64::from), CPU),
    ];
    for (gate, factor, resource) in resources {
        let Some(factor) = factor else { continue };
        let new = median(
            m.updated
                .iter()
                .filter_map(|(_, _, t)| t.and_then(resource.get)),
        );
        let base = median(m.baseline.iter().filter_map(|t| (resource.get)(t)));
        match (new, base) {
            (Some((new, n)), Some((base, b))) if new > factor * base => {
                let detail = format!(
                    "the wave's median app {} {} ({n} devices) is over {factor}× the baseline median {} ({b} devices on the previous release): {}",
                    resource.what,
                    (resource.show)(new),
                    (resource.show)(base),
                    (resource.show)(factor * base),
                );
                return Some((gate, new, factor * base, detail));
            }
            (Some(_), Some(_)) => {}
            (None, _) => undecided.push(format!(
                "{gate}: no {} of the app from the wave's updated devices during the bake",
                resource.what
            )),
            (_, None) => undecided.push(format!(
                "{gate}: no {} of the app from devices on the previous release (no baseline)",
                resource.what
            )),
        }
    }
    None
}

/// A resource the gates compare with the baseline.
struct Resource {
    what: &'static str,
    get: fn(&AppTelemetry) -> Option<f64>,
    show: fn(f64) -> String,
}

const MEMORY: Resource = Resource {
    what: "memory",
    get: |t| t.memory_bytes.map(|b| b as f64),
    show: |b| format!("{:.1} MiB", b / f64::from(1u32 << 20)),
};

const CPU: Resource = Resource {
    what: "CPU",
    get: |t| t.cpu_percent.map(f64::from).filter(|c| c.is_finite()),
    show: |c| format!("{c:.1}%"),
};

/// The median of `values` and how many there were; `None` for none.
fn median(values: impl Iterator<Item = f64>) -> Option<(f64, usize)> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mid = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((mid, n))
}

/// The devices of wave `wave` whose app crash-looped on the release.
fn crash_loops<'a>(r: &RolloutRecord, wave: usize, seen: &'a Observed) -> Vec<&'a DeviceId> {
    seen.status
        .iter()
        .filter(|(d, _)| r.waves[wave].devices.contains(d))
        .filter(|(d, s)| {
            let p = device_progress(r, wave, d, Some(s));
            let by_phase = matches!(
                p.phase,
                Some(
                    Phase::RolledBack {
                        reason: ErrorCode::CrashLoop
                    } | Phase::RollingBack {
                        reason: ErrorCode::CrashLoop
                    } | Phase::Failed {
                        code: ErrorCode::CrashLoop
                    }
                )
            );
            by_phase || p.error.is_some_and(|e| e.code == ErrorCode::CrashLoop)
        })
        .map(|(d, _)| d)
        .collect()
}

#[cfg(test)]
#[path = "gates_tests.rs"]
mod tests;
