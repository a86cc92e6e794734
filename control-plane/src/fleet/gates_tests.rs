//! The gates of a baking wave through the pure rollout step: a wave whose
//! devices' telemetry jumps halts at the gate (with the gate, the measured
//! value and the threshold), a quiet one is promoted, missing data pauses.

use std::sync::Arc;

use fleet_protocol::message::{AppTelemetry, Health, ReleaseRef};
use fleet_protocol::{AppName, AppStatus, DeviceId, Digest, ErrorCode, Phase, Telemetry};

use super::*;
use crate::fleet::rollout::{Effect, Event, step};
use crate::fleet::test_fixtures::{deployed_waves as deployed, ids, record, report, reverted};
use crate::store::{
    HaltRollback, RolloutRecord, RolloutState, Safety, TelemetryGates, Threshold, WaveSize,
    WaveState,
};

const MIB: u64 = 1 << 20;

/// Four devices: a canary wave (d0) and the rest (d1..d3, the baseline),
/// baking 60 s; d0 ran v1 before.
fn rollout(gates: TelemetryGates) -> RolloutRecord {
    let r = record(
        9,
        crate::fleet::rollout::plan_waves(ids(4), &[WaveSize::Count(1)]),
        Safety {
            bake_secs: Some(60),
            gates,
            ..Safety::default()
        },
    );
    let (mut r, _) = step(r, Event::Start, 200).unwrap();
    r.previous
        .insert(ids(1)[0].clone(), Some(Digest::of(b"v1")));
    r
}

fn status(r: &RolloutRecord, device: &DeviceId, app: impl FnOnce(&mut AppStatus)) -> Observed {
    let mut a = AppStatus {
        app: r.app.clone(),
        phase: Phase::Committed,
        running: Some(ReleaseRef {
            version: "v2".into(),
            release_digest: r.release_digest.clone(),
        }),
        target: None,
        previous: None,
        health: Health::Healthy,
        restarts: 0,
        progress: None,
        error: None,
        delta_fallbacks: vec![],
    };
    app(&mut a);
    let mut seen = Observed::default();
    seen.status.extend([report(device, a)]);
    seen
}

/// The canary committed and healthy.
fn canary_committed(r: &RolloutRecord) -> Observed {
    status(r, &ids(1)[0], |_| {})
}

/// `seen` plus telemetry of `device` received at `at`: the app's memory and CPU.
fn with_sample(mut seen: Observed, device: &DeviceId, at: u64, mib: u64, cpu: f32) -> Observed {
    let telemetry = Telemetry {
        device: Some(device.clone()),
        at,
        apps: vec![AppTelemetry {
            app: Some(AppName::new("model").unwrap()),
            running: true,
            restarts: 0,
            health: Health::Healthy,
            cpu_percent: Some(cpu),
            memory_bytes: Some(mib * MIB),
        }],
        ..Telemetry::default()
    };
    seen.telemetry.insert(
        device.clone(),
        Sample {
            received_at: at,
            telemetry: Arc::new(telemetry),
        },
    );
    seen
}

/// The baseline (d1..d3, still on v1) at 100 MiB and 10% CPU.
fn with_baseline(mut seen: Observed) -> Observed {
    for d in &ids(4)[1..] {
        seen = with_sample(seen, d, 150, 100, 10.0);
    }
    seen
}

fn records(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record { kind, message } => Some(format!("{kind}: {message}")),
            _ => None,
        })
        .collect()
}

fn memory(factor: &str) -> TelemetryGates {
    TelemetryGates {
        memory: Some(factor.parse().unwrap()),
        ..TelemetryGates::default()
    }
}

#[test]
fn a_memory_jump_during_the_bake_halts_at_the_gate_and_rolls_the_wave_back() {
    let r = rollout(memory("1.5"));
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    assert_eq!(r.waves[0].settled_at, Some(210));
    // The canary's app uses 300 MiB against a baseline median of 100 MiB.
    let seen = with_baseline(with_sample(canary_committed(&r), &canary, 220, 300, 10.0));
    let (r, effects) = step(r, Event::Progress(seen), 230).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(deployed(&effects).is_empty(), "nobody else got the release");
    // on_halt = failed: the devices the gate judged get v1 back.
    assert_eq!(reverted(&effects), vec![canary.clone()]);
    let g = r.gate_failure.clone().unwrap();
    assert_eq!(g.gate, GateName::Memory);
    assert_eq!(
        (g.wave, g.measured, g.threshold),
        (0, 300.0 * MIB as f64, 150.0 * MIB as f64)
    );
    let reason = r.halt_reason.clone().unwrap();
    assert_eq!(
        reason,
        "gate memory failed in wave 1: the wave's median app memory 300.0 MiB (1 devices) is over \
         1.5× the baseline median 100.0 MiB (3 devices on the previous release): 150.0 MiB"
    );
    assert!(
        records(&effects).contains(&format!(
            "rollout.halted: halted: {reason}; 1 device(s) rolled back"
        )),
        "{effects:?}"
    );
}

#[test]
fn a_wave_whose_telemetry_holds_is_promoted_when_the_bake_is_over() {
    let r = rollout(TelemetryGates {
        memory: Some("1.5".parse().unwrap()),
        cpu: Some("2".parse().unwrap()),
        restarts: Some(0),
        unhealthy: Some(0),
        crash_loop: true,
    });
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let seen = with_baseline(with_sample(canary_committed(&r), &canary, 220, 120, 15.0));
    // Within the bake: the gates hold, the wave waits.
    let (r, effects) = step(r, Event::Progress(seen.clone()), 250).unwrap();
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(r.state, RolloutState::Running);
    // Baked and holding: the next wave goes out.
    let (r, effects) = step(r, Event::Progress(seen), 270).unwrap();
    assert_eq!(deployed(&effects), [1]);
    assert_eq!(r.waves[0].state, WaveState::Done);
    assert!(
        records(&effects).contains(
            &"rollout.gate: wave 1: gates memory, cpu, restarts, unhealthy, crash_loop held".into()
        ),
        "{effects:?}"
    );
}

#[test]
fn missing_telemetry_pauses_at_the_end_of_the_bake_and_a_resume_promotes_the_wave() {
    let r = rollout(memory("1.5"));
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    // A sample from before the bake does not count for the wave; the
    // baseline reported.
    let seen = with_baseline(with_sample(canary_committed(&r), &canary, 205, 100, 10.0));
    let (r, effects) = step(r, Event::Progress(seen.clone()), 230).unwrap();
    assert!(
        effects.is_empty(),
        "undecided is no failure during the bake: {effects:?}"
    );
    let (r, effects) = step(r, Event::Progress(seen.clone()), 270).unwrap();
    assert_eq!(r.state, RolloutState::Paused);
    assert!(deployed(&effects).is_empty());
    assert_eq!(
        r.pause_reason.as_deref(),
        Some(
            "wave 1: gates could not decide: memory: no memory of the app from the wave's \
             updated devices during the bake"
        )
    );
    // Progress changes nothing while paused; the operator's resume promotes.
    let (r, effects) = step(r, Event::Progress(seen.clone()), 280).unwrap();
    assert!(effects.is_empty());
    let (r, effects) = step(r, Event::Resume(seen), 290).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.pause_reason, None);
    assert_eq!(deployed(&effects), [1]);
    assert!(r.waves[0].gates_waived);
}

#[test]
fn no_baseline_is_undecided_too() {
    let r = rollout(memory("2"));
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let seen = with_sample(canary_committed(&r), &canary, 220, 100, 10.0);
    assert_eq!(
        evaluate(&r, 0, &seen),
        Verdict::Undecided(
            "memory: no memory of the app from devices on the previous release (no baseline)"
                .into()
        )
    );
}

#[test]
fn a_crash_loop_halts_at_the_gate_though_the_thresholds_tolerate_a_failure() {
    let mut r = rollout(TelemetryGates {
        crash_loop: true,
        ..TelemetryGates::default()
    });
    r.safety.wave_failures = Some(Threshold::Count(1));
    r.safety.on_halt = HaltRollback::Nothing;
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let looped = status(&r, &canary, |a| {
        a.phase = Phase::RolledBack {
            reason: ErrorCode::CrashLoop,
        };
        a.target = a.running.take();
    });
    let (r, effects) = step(r, Event::Progress(looped), 220).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(reverted(&effects).is_empty(), "on_halt = nothing");
    let g = r.gate_failure.unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::CrashLoop, 1.0, 0.0)
    );
    assert_eq!(g.detail, "the app crash-looped on 1 (d0)");
}

#[test]
fn restarts_and_unhealthy_devices_over_their_bounds_halt() {
    let r = rollout(TelemetryGates {
        restarts: Some(2),
        ..TelemetryGates::default()
    });
    let canary = ids(1)[0].clone();
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let (r2, _) = step(
        r.clone(),
        Event::Progress(status(&r, &canary, |a| a.restarts = 2)),
        220,
    )
    .unwrap();
    assert_eq!(r2.state, RolloutState::Running, "2 restarts are tolerated");
    let (r2, _) = step(
        r,
        Event::Progress(status(&r2, &canary, |a| a.restarts = 3)),
        230,
    )
    .unwrap();
    let g = r2.gate_failure.unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::Restarts, 3.0, 2.0)
    );

    let r = rollout(TelemetryGates {
        unhealthy: Some(0),
        ..TelemetryGates::default()
    });
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let sick = status(&r, &canary, |a| a.health = Health::Unhealthy);
    let (r, _) = step(r, Event::Progress(sick), 220).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    let g = r.gate_failure.unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::Unhealthy, 1.0, 0.0)
    );
}

#[test]
fn gates_without_a_bake_time_are_refused_by_name() {
    let safety = Safety {
        gates: memory("1.5"),
        ..Safety::default()
    };
    let e = safety.check().unwrap_err().to_string();
    assert!(e.contains("gates (memory)") && e.contains("--bake"), "{e}");
    assert!(Safety::default().check().is_ok());
    let baked = Safety {
        bake_secs: Some(60),
        ..safety
    };
    let e = baked.check_with_waves(&[]).unwrap_err().to_string();
    assert!(e.contains("single wave"), "{e}");
    assert!(baked.check_with_waves(&[WaveSize::Count(1)]).is_ok());
    // A record stored before gates existed loads with none.
    let old: Safety = serde_json::from_str(r#"{"on_halt":"failed","bake_secs":30}"#).unwrap();
    assert!(old.gates.is_empty());
}

fn promql(failure_limit: u32) -> RolloutRecord {
    let mut r = rollout(TelemetryGates::default());
    r.safety.promql = Some(crate::store::PromGate {
        query: "max(model_error_ratio)".into(),
        success: "result < 0.05".parse().unwrap(),
        interval_secs: 10,
        failure_limit,
    });
    r
}

fn measured(
    r: RolloutRecord,
    m: crate::fleet::promql::Measurement,
    now: u64,
) -> (RolloutRecord, Vec<Effect>) {
    use crate::fleet::promql::judge;
    let outcome = judge(r.safety.promql.as_ref().unwrap(), m);
    let seen = canary_committed(&r);
    step(
        r,
        Event::GateResult {
            wave: 0,
            outcome,
            seen,
        },
        now,
    )
    .unwrap()
}

#[test]
fn a_promql_gate_is_measured_every_interval_while_the_wave_bakes_and_a_pass_promotes() {
    use crate::fleet::promql::{Measurement, due};
    let r = promql(0);
    assert_eq!(due(&r, 200), None, "not before the wave settled");
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    assert_eq!(due(&r, 210).map(|(w, _)| w), Some(0));
    let (r, effects) = measured(r, Measurement::Values(vec![0.01]), 211);
    assert!(effects.is_empty(), "baking on: {effects:?}");
    assert_eq!(r.waves[0].prom.passed, 1);
    assert_eq!(due(&r, 220), None);
    assert_eq!(due(&r, 221).map(|(w, _)| w), Some(0));
    // The bake is over: the next progress promotes the wave.
    let (r, effects) = step(r.clone(), Event::Progress(canary_committed(&r)), 270).unwrap();
    assert_eq!(deployed(&effects), [1]);
    assert!(records(&effects).contains(&"rollout.gate: wave 1: gates promql held".into()));
    assert_eq!(due(&r, 400), None, "no wave bakes now");
}

#[test]
fn a_baked_wave_waits_for_a_passing_measurement() {
    use crate::fleet::promql::Measurement;
    let r = promql(0);
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let (r, effects) = step(r.clone(), Event::Progress(canary_committed(&r)), 300).unwrap();
    assert!(effects.is_empty() && r.state == RolloutState::Running);
    // The measurement after the bake promotes at once.
    let (r, effects) = measured(r, Measurement::Values(vec![0.0, 0.02]), 301);
    assert_eq!(deployed(&effects), [1]);
    assert_eq!(r.waves[0].state, WaveState::Done);
}

#[test]
fn promql_failures_past_the_limit_halt_with_the_query_value_and_bound() {
    use crate::fleet::promql::Measurement;
    let r = promql(1);
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let (r, effects) = measured(r, Measurement::Values(vec![0.2]), 211);
    assert_eq!(r.state, RolloutState::Running, "one failure is tolerated");
    assert!(effects.is_empty());
    // A second series failing fails the measurement.
    let (r, effects) = measured(r, Measurement::Values(vec![0.01, 0.3]), 221);
    assert_eq!(r.state, RolloutState::Halted);
    assert_eq!(reverted(&effects), ids(1));
    let g = r.gate_failure.clone().unwrap();
    assert_eq!(
        (g.gate, g.measured, g.threshold),
        (GateName::Promql, 0.3, 0.05)
    );
    assert_eq!(
        r.halt_reason.as_deref(),
        Some(
            "gate promql failed in wave 1: `max(model_error_ratio)` = 0.3, not result < 0.05 \
             (2 failed measurement(s), tolerated: 1)"
        )
    );
    // A late measurement changes nothing.
    let (after, effects) = measured(r.clone(), Measurement::Values(vec![0.3]), 231);
    assert_eq!((after, effects.is_empty()), (r, true));
}

#[test]
fn no_data_or_no_prometheus_past_the_limit_pauses_and_a_resume_promotes_after_the_bake() {
    use crate::fleet::promql::Measurement;
    let r = promql(1);
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let (r, _) = measured(
        r,
        Measurement::Unreachable("connection refused".into()),
        211,
    );
    assert_eq!(r.state, RolloutState::Running);
    let (r, effects) = measured(r, Measurement::Values(vec![]), 221);
    assert_eq!(r.state, RolloutState::Paused);
    assert_eq!(
        r.pause_reason.as_deref(),
        Some(
            "wave 1: gates could not decide: promql: `max(model_error_ratio)`: no data: the \
             query returned no series (2 inconclusive measurement(s), tolerated: 1)"
        )
    );
    assert!(records(&effects)[0].starts_with("rollout.gate: paused: wave 1"));
    let (r, effects) = step(r.clone(), Event::Resume(canary_committed(&r)), 230).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert!(deployed(&effects).is_empty(), "still baking");
    let (r, effects) = step(r.clone(), Event::Progress(canary_committed(&r)), 270).unwrap();
    assert_eq!(deployed(&effects), [1]);
    assert_eq!(r.waves[0].state, WaveState::Done);
}

#[test]
fn a_not_a_number_result_is_inconclusive_not_a_failure() {
    use crate::fleet::promql::{Measurement, PromOutcome, judge};
    let r = promql(0);
    let gate = r.safety.promql.as_ref().unwrap();
    assert_eq!(
        judge(gate, Measurement::Values(vec![f64::NAN])),
        PromOutcome::Inconclusive {
            why: "the query returned NaN, not a number".into()
        }
    );
    assert_eq!(
        judge(gate, Measurement::Values(vec![0.01])),
        PromOutcome::Pass { value: 0.01 }
    );
}

#[test]
fn a_gate_pause_reason_goes_when_the_rollout_is_no_longer_paused() {
    use crate::fleet::promql::Measurement;
    let r = promql(0);
    let (r, _) = step(r.clone(), Event::Progress(canary_committed(&r)), 210).unwrap();
    let (r, _) = measured(r, Measurement::Values(vec![]), 211);
    assert!(r.pause_reason.is_some());
    let (r, _) = step(r, Event::Abort, 212).unwrap();
    assert_eq!((r.state, r.pause_reason), (RolloutState::Aborted, None));
}
