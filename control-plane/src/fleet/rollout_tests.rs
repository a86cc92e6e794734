//! Table tests of the rollout state machine: every (state, event) pair, then
//! the waves end to end.

use super::*;
use crate::fleet::test_fixtures::{
    app_status, deployed_waves as deployed, ids, record, report, reverted,
};
use crate::store::Threshold;
use fleet_protocol::{ErrorInfo, Phase};

fn counts(sizes: &[usize]) -> Vec<WaveSize> {
    sizes.iter().copied().map(WaveSize::Count).collect()
}

fn digest(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

/// A rollout of `model` to `devices` in waves of `sizes`, not started.
fn rollout(devices: usize, sizes: &[usize]) -> RolloutRecord {
    record(
        7,
        plan_waves(ids(devices), &counts(sizes)),
        Safety::default(),
    )
}

fn committed(r: &RolloutRecord, devices: &[DeviceId]) -> Reports {
    devices
        .iter()
        .map(|d| {
            report(
                d,
                app_status(Phase::Committed, Some(&r.release_digest), None),
            )
        })
        .collect()
}

/// Two waves of one device each; the first is out, `d0` ran `v1` before.
fn in_flight(state: RolloutState) -> RolloutRecord {
    let (mut r, _) = step(rollout(2, &[1]), Event::Start, 200).unwrap();
    r.previous.insert(ids(1)[0].clone(), Some(digest("v1")));
    r.state = state;
    r
}

/// An effect without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Record(EventKind),
    Deploy(usize),
    Revert,
}

fn shape(e: &Effect) -> Shape {
    match e {
        Effect::Record { kind, .. } => Shape::Record(*kind),
        Effect::Deploy { wave, .. } => Shape::Deploy(*wave),
        Effect::Revert { .. } => Shape::Revert,
    }
}

#[test]
fn every_state_event_pair_is_listed() {
    use EventKind as K;
    use RolloutState::*;
    use Shape::*;
    let fixture = in_flight(Running);
    // The first wave's device committed: progress or resume closes the
    // first wave and starts the second.
    let reports = committed(&fixture, &ids(1));
    let events = [
        Event::Start,
        Event::Progress(reports.clone().into()),
        Event::Pause,
        Event::Resume(reports.clone().into()),
        Event::Abort,
        Event::Undo,
        Event::Superseded { by: 8 },
        Event::WaveTimer { wave: 1 },
        // No wave of the fixture bakes: a late measurement.
        Event::GateResult {
            wave: 0,
            outcome: crate::fleet::promql::PromOutcome::Pass { value: 1.0 },
            seen: reports.clone().into(),
        },
    ];
    let next_wave = [Record(K::RolloutWave), Deploy(1)];
    let resumed = [Record(K::RolloutResume), Record(K::RolloutWave), Deploy(1)];
    let undone = [Record(K::RolloutUndo), Revert];
    type Want<'a> = Option<(RolloutState, &'a [Shape])>;
    let table: [(RolloutState, [Want; 9]); 6] = [
        (
            Running,
            [
                Some((Running, &[])),
                Some((Running, &next_wave)),
                Some((Paused, &[Record(K::RolloutPause)])),
                None,
                Some((Aborted, &[Record(K::RolloutAbort)])),
                Some((RolledBack, &undone)),
                Some((Aborted, &[Record(K::RolloutAborted)])),
                Some((Running, &[])),
                Some((Running, &[])),
            ],
        ),
        (
            Paused,
            [
                None,
                Some((Paused, &[])),
                None,
                Some((Running, &resumed)),
                Some((Aborted, &[Record(K::RolloutAbort)])),
                Some((RolledBack, &undone)),
                Some((Aborted, &[Record(K::RolloutAborted)])),
                Some((Paused, &[])),
                Some((Paused, &[])),
            ],
        ),
        (
            Aborted,
            [
                None,
                Some((Aborted, &[])),
                None,
                None,
                None,
                Some((RolledBack, &undone)),
                None,
                Some((Aborted, &[])),
                Some((Aborted, &[])),
            ],
        ),
        (
            Completed,
            [
                None,
                Some((Completed, &[])),
                None,
                None,
                None,
                Some((RolledBack, &undone)),
                None,
                Some((Completed, &[])),
                Some((Completed, &[])),
            ],
        ),
        (
            RolledBack,
            [
                None,
                Some((RolledBack, &[])),
                None,
                None,
                None,
                None,
                None,
                Some((RolledBack, &[])),
                Some((RolledBack, &[])),
            ],
        ),
        (
            Halted,
            [
                None,
                Some((Halted, &[])),
                None,
                None,
                None,
                Some((RolledBack, &undone)),
                None,
                Some((Halted, &[])),
                Some((Halted, &[])),
            ],
        ),
    ];
    for (state, wants) in table {
        for (event, want) in events.iter().zip(wants) {
            let name = event.name();
            let got = step(in_flight(state), event.clone(), 300);
            match (got, want) {
                (Ok((r, effects)), Some((next, shapes))) => {
                    assert_eq!(r.state, next, "{state:?} {name:?}");
                    let got: Vec<Shape> = effects.iter().map(shape).collect();
                    assert_eq!(got, shapes, "{state:?} {name:?}");
                    let changed = r.state != state || !effects.is_empty();
                    assert_eq!(r.updated_at == 300, changed, "{state:?} {name:?}");
                }
                (
                    Err(StepError::NotApplicable {
                        id,
                        state: s,
                        event,
                    }),
                    None,
                ) => {
                    assert_eq!((id, s, event), (7, state, name));
                }
                (got, want) => panic!("{state:?} {name:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}

#[test]
fn an_unlisted_pair_says_what_the_rollout_is_and_what_it_cannot() {
    let err = step(in_flight(RolloutState::Completed), Event::Pause, 1).unwrap_err();
    assert_eq!(err.to_string(), "rollout 7 is completed; it cannot pause");
}

#[test]
fn waves_go_out_one_after_the_other_as_devices_settle() {
    let devices = ids(5);
    let (r, effects) = step(rollout(5, &[1, 2]), Event::Start, 10).unwrap();
    assert_eq!(
        effects.iter().map(shape).collect::<Vec<_>>(),
        [Shape::Record(EventKind::RolloutWave), Shape::Deploy(0)]
    );
    assert_eq!(
        effects[1],
        Effect::Deploy {
            wave: 0,
            devices: devices[..1].to_vec()
        }
    );
    assert_eq!(r.waves[0].state, WaveState::Active);
    assert_eq!(r.waves[0].started_at, Some(10));

    // Still updating: nothing moves.
    let updating: Reports = [report(
        &devices[0],
        app_status(Phase::Downloading, None, Some(&r.release_digest)),
    )]
    .into();
    let (r, effects) = step(r, Event::Progress(updating.into()), 20).unwrap();
    assert!(effects.is_empty());
    assert_eq!(r.updated_at, 10, "an unchanged rollout keeps its time");

    // A failed device settles its wave too.
    let failed: Reports = [report(
        &devices[0],
        app_status(
            Phase::RolledBack {
                reason: fleet_protocol::ErrorCode::HealthCheckFailed,
            },
            None,
            Some(&r.release_digest),
        ),
    )]
    .into();
    let (r, effects) = step(r, Event::Progress(failed.clone().into()), 30).unwrap();
    assert_eq!(
        effects.iter().map(shape).collect::<Vec<_>>(),
        [Shape::Record(EventKind::RolloutWave), Shape::Deploy(1)]
    );
    assert_eq!(r.waves[0].state, WaveState::Done);

    let mut all = committed(&r, &devices);
    all.extend(failed);
    let (r, _) = step(r, Event::Progress(all.clone().into()), 40).unwrap();
    assert_eq!(r.waves[2].state, WaveState::Active);
    let (r, effects) = step(r, Event::Progress(all.into()), 50).unwrap();
    assert_eq!(r.state, RolloutState::Completed);
    assert_eq!(
        effects.iter().map(shape).collect::<Vec<_>>(),
        [Shape::Record(EventKind::RolloutCompleted)]
    );
}

#[test]
fn pause_holds_the_next_wave_back_and_resume_lets_it_go() {
    let devices = ids(2);
    let (r, _) = step(rollout(2, &[1]), Event::Start, 10).unwrap();
    let (r, _) = step(r, Event::Pause, 11).unwrap();
    let reports = committed(&r, &devices[..1]);
    let (r, effects) = step(r, Event::Progress(reports.clone().into()), 12).unwrap();
    assert!(effects.is_empty());
    assert_eq!(r.waves[1].state, WaveState::Pending);
    let (r, effects) = step(r, Event::Resume(reports.into()), 13).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(
        effects.last(),
        Some(&Effect::Deploy {
            wave: 1,
            devices: devices[1..].to_vec()
        })
    );
}

#[test]
fn undo_reverts_every_device_the_rollout_reached_to_what_it_ran_before() {
    let mut r = in_flight(RolloutState::Running);
    r.previous.insert(ids(2)[1].clone(), None);
    let (r, effects) = step(r, Event::Undo, 9).unwrap();
    assert_eq!(r.state, RolloutState::RolledBack);
    let Some(Effect::Revert { previous }) = effects.last() else {
        panic!("{effects:?}");
    };
    assert_eq!(previous[&ids(1)[0]], Some(digest("v1")));
    assert_eq!(previous[&ids(2)[1]], None);
}

#[test]
fn waves_take_the_given_sizes_and_the_last_takes_the_rest() {
    let sizes = |w: &[Wave]| w.iter().map(|w| w.devices.len()).collect::<Vec<_>>();
    assert_eq!(sizes(&plan_waves(ids(5), &counts(&[]))), [5]);
    assert_eq!(sizes(&plan_waves(ids(5), &counts(&[1]))), [1, 4]);
    assert_eq!(sizes(&plan_waves(ids(5), &counts(&[1, 2]))), [1, 2, 2]);
    assert_eq!(sizes(&plan_waves(ids(2), &counts(&[1, 5, 5]))), [1, 1]);
    assert_eq!(sizes(&plan_waves(ids(3), &counts(&[0]))), [1, 2]);
    assert!(plan_waves(vec![], &counts(&[1])).is_empty());
}

#[test]
fn percentage_waves_are_of_all_the_devices_rounded_up_and_mix_with_counts() {
    let sizes = |w: &[Wave]| w.iter().map(|w| w.devices.len()).collect::<Vec<_>>();
    let p = |s: &[&str]| {
        s.iter()
            .map(|s| s.parse::<WaveSize>().unwrap())
            .collect::<Vec<_>>()
    };
    // A canary of 1, then 10% and 50% of 100 devices, then the rest.
    assert_eq!(
        sizes(&plan_waves(ids(100), &p(&["1", "10%", "50%"]))),
        [1, 10, 50, 39]
    );
    // Rounded up, never an empty wave.
    assert_eq!(sizes(&plan_waves(ids(7), &p(&["10%", "50%"]))), [1, 4, 2]);
    assert_eq!(sizes(&plan_waves(ids(3), &p(&["100%"]))), [3]);
    for bad in ["0", "0%", "101%", "-1", "ten", "5 %", ""] {
        let e = bad.parse::<WaveSize>().unwrap_err();
        assert_eq!(e.given, bad);
    }
    // On the wire: counts are numbers (as stored before percentages), a
    // percentage a string.
    let wire: Vec<WaveSize> = serde_json::from_str(r#"[1, "25%", "3"]"#).unwrap();
    assert_eq!(
        wire,
        [
            WaveSize::Count(1),
            WaveSize::Percent(25),
            WaveSize::Count(3)
        ]
    );
    assert_eq!(serde_json::to_string(&wire).unwrap(), r#"[1,"25%",3]"#);
    assert!(serde_json::from_str::<Vec<WaveSize>>(r#"["0%"]"#).is_err());
    assert_eq!(crate::store::wave_sizes(&wire), "1, 25%, 3");
}

#[test]
fn actions_keep_their_wire_names() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            format!("\"{}\"", a.as_str())
        );
        assert_eq!(a.event_kind().as_str(), format!("rollout.{a}"));
    }
    assert!("restart".parse::<Action>().is_err());
}

fn failed(r: &RolloutRecord, devices: &[DeviceId]) -> Reports {
    devices
        .iter()
        .map(|d| {
            let phase = Phase::RolledBack {
                reason: fleet_protocol::ErrorCode::CrashLoop,
            };
            report(d, app_status(phase, None, Some(&r.release_digest)))
        })
        .collect()
}

/// A rollout of 10 devices in waves 1, 3, 6 with `safety`, started; every
/// device ran `v1` before (as the engine records on deploy).
fn guarded(safety: Safety) -> RolloutRecord {
    let mut r = rollout(10, &[1, 3]);
    r.safety = safety;
    let (mut r, _) = step(r, Event::Start, 200).unwrap();
    for d in ids(10) {
        r.previous.insert(d, Some(digest("v1")));
    }
    r
}

#[test]
fn a_failed_canary_over_the_wave_threshold_halts_and_rolls_the_canary_back() {
    let r = guarded(Safety {
        wave_failures: Some(Threshold::Count(0)),
        total_failures: None,
        on_halt: HaltRollback::Failed,
        wave_deadline_secs: None,
        bake_secs: None,
        max_restarts: None,
        gates: Default::default(),
        promql: None,
        max_unavailable: None,
    });
    let canary = ids(1);
    let (r, effects) = step(r.clone(), Event::Progress(failed(&r, &canary).into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(deployed(&effects).is_empty(), "no further wave goes out");
    assert_eq!(reverted(&effects), canary);
    assert_eq!(r.waves[1].state, WaveState::Pending);
    let record = effects.iter().find_map(|e| match e {
        Effect::Record {
            kind: EventKind::RolloutHalted,
            message,
        } => Some(message.clone()),
        _ => None,
    });
    assert_eq!(
        record.as_deref(),
        Some("halted: wave 1: 1 of 1 devices failed (tolerated: 0); 1 device(s) rolled back")
    );
    assert_eq!(
        r.halt_reason.as_deref(),
        Some("wave 1: 1 of 1 devices failed (tolerated: 0)"),
        "the view and fleetctl say why"
    );
    // Halted is final: later reports change nothing, no wave goes out.
    let later = committed(&r, &ids(10));
    let (after, effects) = step(r.clone(), Event::Progress(later.into()), 400).unwrap();
    assert_eq!(after, r);
    assert!(effects.is_empty());
}

#[test]
fn without_thresholds_failures_never_halt() {
    let r = guarded(Safety::default());
    let (r, effects) = step(r.clone(), Event::Progress(failed(&r, &ids(1)).into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(
        deployed(&effects),
        [1],
        "the failed canary settled the wave"
    );
}

#[test]
fn a_percent_threshold_tolerates_its_share_rounded_down_and_halts_past_it() {
    // Wave 2 has 3 devices: 34% tolerates 1 failure, not 2.
    let r = guarded(Safety {
        wave_failures: Some(Threshold::Percent(34)),
        total_failures: None,
        on_halt: HaltRollback::Failed,
        wave_deadline_secs: None,
        bake_secs: None,
        max_restarts: None,
        gates: Default::default(),
        promql: None,
        max_unavailable: None,
    });
    let mut reports = committed(&r, &ids(1));
    let (r, _) = step(r, Event::Progress(reports.clone().into()), 300).unwrap();
    assert_eq!(r.waves[1].state, WaveState::Active);
    let wave2 = r.waves[1].devices.clone();
    reports.extend(failed(&r, &wave2[..1]));
    let (r, _) = step(r, Event::Progress(reports.clone().into()), 310).unwrap();
    assert_eq!(r.state, RolloutState::Running, "one of three is tolerated");
    reports.extend(failed(&r, &wave2[1..2]));
    let (r, effects) = step(r, Event::Progress(reports.into()), 320).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert_eq!(reverted(&effects), wave2[..2].to_vec());
}

#[test]
fn the_total_threshold_counts_failures_across_waves() {
    let r = guarded(Safety {
        wave_failures: None,
        total_failures: Some(Threshold::Count(1)),
        on_halt: HaltRollback::Updated,
        wave_deadline_secs: None,
        bake_secs: None,
        max_restarts: None,
        gates: Default::default(),
        promql: None,
        max_unavailable: None,
    });
    let mut reports = failed(&r, &ids(1));
    let (r, _) = step(r, Event::Progress(reports.clone().into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Running, "one failure is tolerated");
    let wave2 = r.waves[1].devices.clone();
    reports.extend(failed(&r, &wave2[..1]));
    let (r, effects) = step(r, Event::Progress(reports.into()), 310).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    // `updated`: every device the rollout recorded a previous release for.
    assert_eq!(reverted(&effects), ids(10));
}

#[test]
fn on_halt_nothing_rolls_nobody_back() {
    let r = guarded(Safety {
        wave_failures: Some(Threshold::Count(0)),
        total_failures: None,
        on_halt: HaltRollback::Nothing,
        wave_deadline_secs: None,
        bake_secs: None,
        max_restarts: None,
        gates: Default::default(),
        promql: None,
        max_unavailable: None,
    });
    let (r, effects) = step(r.clone(), Event::Progress(failed(&r, &ids(1)).into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(reverted(&effects).is_empty());
    assert!(effects.iter().all(|e| !matches!(e, Effect::Revert { .. })));
}

#[test]
fn thresholds_parse_from_counts_and_percentages_and_refuse_the_rest() {
    assert_eq!("2".parse::<Threshold>().unwrap(), Threshold::Count(2));
    assert_eq!("10%".parse::<Threshold>().unwrap(), Threshold::Percent(10));
    for bad in ["", "-1", "101%", "ten", "5 %"] {
        let err = bad.parse::<Threshold>().unwrap_err();
        assert_eq!(err.given, bad);
    }
    assert!(!Threshold::Percent(10).crossed(1, 10));
    assert!(Threshold::Percent(10).crossed(2, 10));
    assert!(Threshold::Count(0).crossed(1, 1));
}

#[test]
fn a_wave_open_past_its_deadline_closes_with_its_devices_pending_not_failed() {
    let r = guarded(Safety {
        wave_deadline_secs: Some(60),
        ..Safety::default()
    });
    // Started at 200; nobody reported. Before the deadline: nothing.
    let (r, effects) = step(r, Event::Progress(Reports::new().into()), 259).unwrap();
    assert!(effects.is_empty());
    assert_eq!(r.waves[0].state, WaveState::Active);
    let (r, effects) = step(r, Event::Progress(Reports::new().into()), 260).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.waves[0].state, WaveState::Done);
    assert_eq!(deployed(&effects), [1]);
    let messages: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages[0],
        "wave 1 closed at its deadline: 1 device(s) pending, not failed"
    );
    let canary = &ids(1)[0];
    let p = device_progress(&r, 0, canary, None);
    assert_eq!(p.state, ProgressState::Sent, "pending, not failed");
    // Without a deadline a silent wave stays open forever.
    let (r, effects) = step(
        guarded(Safety::default()),
        Event::Progress(Reports::new().into()),
        99_999,
    )
    .unwrap();
    assert!(effects.is_empty());
    assert_eq!(r.waves[0].state, WaveState::Active);
}

#[test]
fn a_settled_wave_bakes_before_the_next_goes_out_and_the_last_completes_at_once() {
    let r = guarded(Safety {
        bake_secs: Some(30),
        ..Safety::default()
    });
    let canary = ids(1);
    // The canary commits at 210: its wave settles and the bake starts.
    let (r, effects) = step(
        r.clone(),
        Event::Progress(committed(&r, &canary).into()),
        210,
    )
    .unwrap();
    assert!(deployed(&effects).is_empty(), "{effects:?}");
    assert_eq!(r.waves[0].state, WaveState::Active);
    assert_eq!(r.waves[0].settled_at, Some(210));
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Record { message, .. } if message == "wave 1 settled; baking 30 s before wave 2")));
    // During the bake: nothing moves, and the clock is not restarted.
    let (r, effects) = step(
        r.clone(),
        Event::Progress(committed(&r, &canary).into()),
        239,
    )
    .unwrap();
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(r.waves[0].settled_at, Some(210));
    // Baked: the next wave goes out.
    let (r, effects) = step(
        r.clone(),
        Event::Progress(committed(&r, &canary).into()),
        240,
    )
    .unwrap();
    assert_eq!(deployed(&effects), [1]);
    assert_eq!(r.waves[0].state, WaveState::Done);

    // The last wave completes the rollout without a bake.
    let mut all = guarded(Safety {
        bake_secs: Some(30),
        ..Safety::default()
    });
    for w in &mut all.waves {
        w.state = WaveState::Active;
        w.started_at = Some(200);
    }
    all.waves[0].state = WaveState::Done;
    all.waves[1].state = WaveState::Done;
    let everyone = ids(10);
    let (all, _) = step(
        all.clone(),
        Event::Progress(committed(&all, &everyone).into()),
        300,
    )
    .unwrap();
    assert_eq!(all.state, RolloutState::Completed);
}

#[test]
fn a_device_failing_during_the_bake_halts_the_rollout_before_the_next_wave() {
    let r = guarded(Safety {
        bake_secs: Some(600),
        wave_failures: Some(Threshold::Count(0)),
        ..Safety::default()
    });
    let canary = ids(1);
    let (r, _) = step(
        r.clone(),
        Event::Progress(committed(&r, &canary).into()),
        210,
    )
    .unwrap();
    assert_eq!(r.waves[0].settled_at, Some(210));
    // Committed, then a crash loop rolls it back on the device.
    let (r, effects) = step(r.clone(), Event::Progress(failed(&r, &canary).into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(deployed(&effects).is_empty(), "nobody else got the release");
    assert_eq!(reverted(&effects), canary);
    assert_eq!(r.waves[1].state, WaveState::Pending);
}

#[test]
fn a_device_error_keeps_its_wire_code_and_message() {
    let mut r = rollout(2, &[2]);
    r.waves[0].state = WaveState::Active;
    let [d0, d1] = [
        &r.waves[0].devices[0].clone(),
        &r.waves[0].devices[1].clone(),
    ];
    let code = fleet_protocol::ErrorCode::CrashLoop;
    let mut app = app_status(
        Phase::RolledBack { reason: code },
        None,
        Some(&r.release_digest),
    );
    app.error = Some(ErrorInfo::new(code, "exited 3 times in 60s"));
    let (_, status) = report(d0, app);
    let p = device_progress(&r, 0, d0, Some(&status));
    assert_eq!(p.state, ProgressState::Failed);
    assert_eq!(p.error, Some(ErrorInfo::new(code, "exited 3 times in 60s")));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["error"]["code"], "crash_loop");
    assert_eq!(json["error"]["message"], "exited 3 times in 60s");

    // A device that refused its desired state fails with the rejection.
    let (_, mut status) = report(d1, app_status(Phase::Pending, None, None));
    let rejected = ErrorInfo::new(
        fleet_protocol::ErrorCode::StaleGeneration,
        "generation 2 <= 3",
    );
    Arc::make_mut(&mut status).apps.clear();
    Arc::make_mut(&mut status).rejected = Some(rejected.clone());
    let p = device_progress(&r, 0, d1, Some(&status));
    assert_eq!(p.state, ProgressState::Failed);
    assert_eq!(p.error, Some(rejected));
}

#[test]
fn an_updated_device_whose_app_keeps_restarting_fails_the_restart_gate_and_halts() {
    let r = guarded(Safety {
        bake_secs: Some(600),
        wave_failures: Some(Threshold::Count(0)),
        max_restarts: Some(2),
        ..Safety::default()
    });
    let canary = ids(1);
    let restarted = |r: &RolloutRecord, n: u32| -> Reports {
        canary
            .iter()
            .map(|d| {
                let mut app = app_status(Phase::Committed, Some(&r.release_digest), None);
                app.restarts = n;
                report(d, app)
            })
            .collect()
    };
    // Committed with two restarts: within the gate, the wave bakes.
    let (r, effects) = step(r.clone(), Event::Progress(restarted(&r, 2).into()), 210).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert!(deployed(&effects).is_empty());
    let p = device_progress(
        &r,
        0,
        &canary[0],
        restarted(&r, 2).values().next().map(Arc::as_ref),
    );
    assert_eq!(p.state, ProgressState::Committed);
    // A third restart during the bake: the gate fails, the rollout halts
    // and the canary goes back to what it ran.
    let reports = restarted(&r, 3);
    let p = device_progress(&r, 0, &canary[0], reports.values().next().map(Arc::as_ref));
    assert_eq!(p.state, ProgressState::Failed);
    let error = p.error.unwrap();
    assert_eq!(error.code, fleet_protocol::ErrorCode::GateFailed);
    assert_eq!(
        error.message,
        "gate: the app restarted 3 times since the release started (tolerated: 2)"
    );
    let (r, effects) = step(r.clone(), Event::Progress(reports.into()), 300).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert!(deployed(&effects).is_empty());
    assert_eq!(reverted(&effects), canary);
    // Without the gate, restarts alone fail nobody.
    let free = guarded(Safety::default());
    let p = device_progress(
        &free,
        0,
        &canary[0],
        restarted(&free, 50).values().next().map(Arc::as_ref),
    );
    assert_eq!(p.state, ProgressState::Committed);
}

#[test]
fn a_devices_delta_fallbacks_show_in_its_rollout_progress() {
    let mut r = rollout(1, &[]);
    r.waves[0].state = WaveState::Active;
    let d = &ids(1)[0];
    let mut app = app_status(Phase::Committed, Some(&digest("v2")), None);
    app.delta_fallbacks = vec![fleet_protocol::message::DeltaFallback::new(
        digest("layer"),
        "base file \"models/net.onnx\" does not match the delta (tampered or changed)",
    )];
    let (_, status) = report(d, app);
    let p = device_progress(&r, 0, d, Some(&status));
    assert_eq!(p.state, ProgressState::Committed);
    assert_eq!(p.delta_fallbacks.len(), 1);
    assert!(p.delta_fallbacks[0].reason.contains("models/net.onnx"));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["delta_fallbacks"][0]["layer"],
        digest("layer").as_str()
    );
    // Without any, the field is left out of the view (older clients).
    let (_, plain) = report(d, app_status(Phase::Committed, Some(&digest("v2")), None));
    let json = serde_json::to_value(device_progress(&r, 0, d, Some(&plain))).unwrap();
    assert!(json.get("delta_fallbacks").is_none());
}

#[test]
fn a_device_failing_after_the_halt_is_rolled_back_once_like_the_others() {
    // Waves 1, 3, 6; the canary commits, wave 2 goes out; one of wave 2
    // fails and halts the rollout (tolerated: 0) while the other two still
    // install.
    let r = guarded(Safety {
        wave_failures: Some(Threshold::Count(0)),
        on_halt: HaltRollback::Failed,
        ..Safety::default()
    });
    let all = ids(10);
    let (r, _) = step(
        r.clone(),
        Event::Progress(committed(&r, &all[..1]).into()),
        300,
    )
    .unwrap();
    assert_eq!(r.waves[1].state, WaveState::Active);
    let mut reports = committed(&r, &all[..1]);
    reports.extend(failed(&r, &all[1..2]));
    let (r, effects) = step(r, Event::Progress(reports.clone().into()), 310).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert_eq!(reverted(&effects), all[1..2]);

    // d2 fails after the halt: it gets its previous release too, once.
    reports.extend(failed(&r, &all[2..3]));
    let (r, effects) = step(r, Event::Progress(reports.clone().into()), 320).unwrap();
    assert_eq!(r.state, RolloutState::Halted);
    assert_eq!(reverted(&effects), all[2..3]);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Record { kind: EventKind::RolloutHalted, message } if message.contains("after the halt")
    )));
    let (again, effects) = step(r.clone(), Event::Progress(reports.clone().into()), 330).unwrap();
    assert_eq!(again, r, "nothing new");
    assert!(effects.is_empty());

    // d3 commits after the halt: with `failed`, it keeps the release.
    reports.extend(committed(&r, &all[3..4]));
    let (_, effects) = step(r, Event::Progress(reports.into()), 340).unwrap();
    assert!(effects.is_empty());
}
