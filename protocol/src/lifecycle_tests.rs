use super::*;

const NOW: u64 = 2_000;
const DEADLINE: u64 = 1_000;

/// Forces this file to be revisited when a phase is added.
fn phase_index(p: &Phase) -> usize {
    match p {
        Phase::Pending => 0,
        Phase::Downloading => 1,
        Phase::Verifying => 2,
        Phase::Staged => 3,
        Phase::Starting => 4,
        Phase::Probation { .. } => 5,
        Phase::Committed => 6,
        Phase::RollingBack { .. } => 7,
        Phase::RolledBack { .. } => 8,
        Phase::Failed { .. } => 9,
    }
}

/// Forces this file to be revisited when an event is added.
fn event_index(e: &Event) -> usize {
    match e {
        Event::DesiredReceived => 0,
        Event::DownloadStarted => 1,
        Event::DownloadComplete => 2,
        Event::DownloadFailed { .. } => 3,
        Event::Verified => 4,
        Event::VerifyFailed { .. } => 5,
        Event::StageComplete => 6,
        Event::StageFailed { .. } => 7,
        Event::Started { .. } => 8,
        Event::StartFailed => 9,
        Event::HealthPassed => 10,
        Event::HealthFailed => 11,
        Event::CrashLoop => 12,
        Event::ProbationElapsed => 13,
        Event::RollbackDone => 14,
        Event::RollbackFailed => 15,
    }
}

fn all_phases() -> Vec<Phase> {
    vec![
        Phase::Pending,
        Phase::Downloading,
        Phase::Verifying,
        Phase::Staged,
        Phase::Starting,
        Phase::Probation { deadline: DEADLINE },
        Phase::Committed,
        Phase::RollingBack {
            reason: ErrorCode::CrashLoop,
        },
        Phase::RolledBack {
            reason: ErrorCode::CrashLoop,
        },
        Phase::Failed {
            code: ErrorCode::VerifyFailed,
        },
    ]
}

fn all_events() -> Vec<Event> {
    vec![
        Event::DesiredReceived,
        Event::DownloadStarted,
        Event::DownloadComplete,
        Event::DownloadFailed {
            code: ErrorCode::DiskFull,
        },
        Event::Verified,
        Event::VerifyFailed {
            code: ErrorCode::VerifyFailed,
        },
        Event::StageComplete,
        Event::StageFailed {
            code: ErrorCode::StageFailed,
        },
        Event::Started { probation_secs: 60 },
        Event::StartFailed,
        Event::HealthPassed,
        Event::HealthFailed,
        Event::CrashLoop,
        Event::ProbationElapsed,
        Event::RollbackDone,
        Event::RollbackFailed,
    ]
}

/// Next phase for every (phase, event) pair at `NOW` (past the probation
/// deadline); `-` is an error.
/// Columns: desired_received download_started download_complete
/// download_failed verified verify_failed stage_complete stage_failed started
/// start_failed health_passed health_failed crash_loop probation_elapsed
/// rollback_done rollback_failed.
const TABLE: [(&str, &str); 10] = [
    ("pending", "pend down veri fail - - - - - - - - - - - -"),
    ("downloading", "pend - veri fail - - - - - - - - - - - -"),
    ("verifying", "pend - - - stag fail - - - - - - - - - -"),
    ("staged", "pend - - - - - strt fail - - - - - - - -"),
    ("starting", "rbing - - - - - - - prob rbing - - - - - -"),
    (
        "probation",
        "rbing - - - - - - - - - prob rbing rbing comm - -",
    ),
    ("committed", "pend - - - - - - - - - comm comm comm - - -"),
    ("rolling_back", "- - - - - - - - - - - - - - rbed fail"),
    ("rolled_back", "pend - - - - - - - - - - - - - - -"),
    ("failed", "pend - - - - - - - - - - - - - - -"),
];

fn expand(abbrev: &str) -> Option<&'static str> {
    Some(match abbrev {
        "pend" => "pending",
        "down" => "downloading",
        "veri" => "verifying",
        "stag" => "staged",
        "strt" => "starting",
        "prob" => "probation",
        "comm" => "committed",
        "rbing" => "rolling_back",
        "rbed" => "rolled_back",
        "fail" => "failed",
        "-" => return None,
        other => panic!("bad abbreviation {other:?}"),
    })
}

#[test]
fn every_phase_event_pair_has_the_outcome_in_the_table() {
    let phases = all_phases();
    let events = all_events();
    let mut seen: Vec<usize> = phases.iter().map(phase_index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "a phase is missing");
    let mut seen: Vec<usize> = events.iter().map(event_index).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..16).collect::<Vec<_>>(), "an event is missing");

    let mut checked = 0;
    for (phase, (name, row)) in phases.iter().zip(TABLE) {
        assert_eq!(phase.name(), name);
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), events.len(), "row {name}");
        for (event, cell) in events.iter().zip(cells) {
            let got = step(phase, event, NOW);
            match (expand(cell), got) {
                (None, Err(LifecycleError::InvalidEvent { phase: p, event: e })) => {
                    assert_eq!((&p, &e), (phase, event));
                }
                (Some(next), Ok(t)) => {
                    assert_eq!(t.next.name(), next, "{} + {}", phase.name(), event.name())
                }
                (want, got) => panic!(
                    "{} + {}: expected {want:?}, got {got:?}",
                    phase.name(),
                    event.name()
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 10 * 16);
}

#[test]
fn the_happy_path_emits_each_effect_once_in_order() {
    let mut phase = begin().next;
    let mut effects = begin().effects;
    let path = [
        (Event::DownloadStarted, 10),
        (Event::DownloadComplete, 20),
        (Event::Verified, 30),
        (Event::StageComplete, 40),
        (Event::Started { probation_secs: 60 }, 50),
        (Event::HealthPassed, 70),
        (Event::ProbationElapsed, 109),
        (Event::ProbationElapsed, 110),
    ];
    for (event, now) in path {
        let t = step(&phase, &event, now).unwrap();
        phase = t.next;
        effects.extend(t.effects);
    }
    assert_eq!(phase, Phase::Committed);
    assert_eq!(
        effects,
        vec![
            Effect::Fetch,
            Effect::Verify,
            Effect::Stage,
            Effect::StopOld,
            Effect::StartNew,
            Effect::StartProbation { deadline: 110 },
            Effect::Commit,
            Effect::GcOld,
        ]
    );
}

#[test]
fn probation_commits_only_at_its_deadline() {
    let p = Phase::Probation { deadline: 100 };
    let early = step(&p, &Event::ProbationElapsed, 99).unwrap();
    assert_eq!(early.next, p);
    assert!(early.effects.is_empty());
    let due = step(&p, &Event::ProbationElapsed, 100).unwrap();
    assert_eq!(due.next, Phase::Committed);
    let huge = step(
        &Phase::Starting,
        &Event::Started {
            probation_secs: u64::MAX,
        },
        5,
    )
    .unwrap();
    assert_eq!(huge.next, Phase::Probation { deadline: u64::MAX });
}

#[test]
fn failures_carry_their_code_and_roll_back_only_after_start() {
    let code = |t: Transition| t.next.error_code();
    let dl = Event::DownloadFailed {
        code: ErrorCode::DiskFull,
    };
    assert_eq!(
        code(step(&Phase::Downloading, &dl, 0).unwrap()),
        Some(ErrorCode::DiskFull)
    );
    let t = step(&Phase::Downloading, &dl, 0).unwrap();
    assert!(t.effects.is_empty(), "nothing to undo before start");

    let t = step(&Phase::Starting, &Event::StartFailed, 0).unwrap();
    assert_eq!(
        t.next,
        Phase::RollingBack {
            reason: ErrorCode::StartFailed
        }
    );
    assert_eq!(t.effects, vec![Effect::StopNew, Effect::StartPrevious]);

    let p = Phase::Probation { deadline: 10 };
    for (event, reason) in [
        (Event::HealthFailed, ErrorCode::HealthCheckFailed),
        (Event::CrashLoop, ErrorCode::CrashLoop),
        (Event::DesiredReceived, ErrorCode::Superseded),
    ] {
        let t = step(&p, &event, 0).unwrap();
        assert_eq!(t.next, Phase::RollingBack { reason });
        let done = step(&t.next, &Event::RollbackDone, 0).unwrap();
        assert_eq!(done.next, Phase::RolledBack { reason });
    }
    let t = step(
        &Phase::RollingBack {
            reason: ErrorCode::CrashLoop,
        },
        &Event::RollbackFailed,
        0,
    )
    .unwrap();
    assert_eq!(code(t), Some(ErrorCode::RollbackFailed));
}

#[test]
fn a_newer_desired_state_replaces_a_target_not_yet_started() {
    for p in [
        Phase::Pending,
        Phase::Downloading,
        Phase::Verifying,
        Phase::Staged,
    ] {
        let t = step(&p, &Event::DesiredReceived, 0).unwrap();
        assert_eq!(t.next, Phase::Pending);
        assert_eq!(t.effects, vec![Effect::AbandonTarget, Effect::Fetch]);
    }
}

#[test]
fn error_codes_are_snake_case_and_unknown_ones_decode() {
    for code in ErrorCode::ALL {
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{code}\""));
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
    }
    assert_eq!(
        serde_json::from_str::<ErrorCode>("\"gpu_on_fire\"").unwrap(),
        ErrorCode::Unknown
    );
    let p: Phase = serde_json::from_str(r#"{"phase":"failed","code":"gpu_on_fire"}"#).unwrap();
    assert_eq!(
        p,
        Phase::Failed {
            code: ErrorCode::Unknown
        }
    );
}

#[test]
fn phases_serialize_with_their_name_as_tag() {
    for p in all_phases() {
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["phase"], p.name());
        assert_eq!(serde_json::from_value::<Phase>(v).unwrap(), p);
    }
    assert_eq!(
        serde_json::to_string(&Phase::Probation { deadline: 7 }).unwrap(),
        r#"{"phase":"probation","deadline":7}"#
    );
}

#[test]
fn every_phase_is_reachable_and_every_update_can_finish() {
    use std::collections::BTreeSet;
    let events = all_events();
    let successors = |p: &Phase| -> Vec<Phase> {
        events
            .iter()
            .filter_map(|e| step(p, e, u64::MAX).ok().map(|t| t.next))
            .collect()
    };
    let mut reached: Vec<Phase> = vec![begin().next];
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < reached.len() {
        names.insert(reached[i].name());
        for next in successors(&reached[i].clone()) {
            if !reached.contains(&next) {
                reached.push(next);
            }
        }
        i += 1;
    }
    let all: BTreeSet<_> = all_phases().iter().map(Phase::name).collect();
    assert_eq!(names, all);

    // From every reachable phase some terminal phase is reachable.
    for start in &reached {
        let mut frontier = vec![start.clone()];
        let mut visited = vec![];
        let mut finished = start.is_terminal();
        while let Some(p) = frontier.pop() {
            if p.is_terminal() {
                finished = true;
                break;
            }
            for n in successors(&p) {
                if !visited.contains(&n) {
                    visited.push(n.clone());
                    frontier.push(n);
                }
            }
        }
        assert!(finished, "{start:?} cannot finish");
    }
}
