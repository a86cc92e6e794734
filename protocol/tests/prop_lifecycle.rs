#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the update lifecycle: random event sequences, with power
//! cuts, driven through a model of the device's releases.
//!
//! Invariants checked after every step:
//! - at most one release runs;
//! - the rollback target (the last committed release) is on disk whenever
//!   one exists, and content is collected only after a commit;
//! - which release runs matches the phase.

use std::collections::BTreeSet;

use fleet_protocol::lifecycle::{Effect, ErrorCode, Event, Phase, begin, step};
use proptest::prelude::*;

/// Releases are numbered; the model tracks what runs and what is on disk.
#[derive(Debug)]
struct Device {
    phase: Phase,
    now: u64,
    /// The last committed release: the rollback target.
    previous: Option<u32>,
    /// The release the current lifecycle installs.
    target: u32,
    next_release: u32,
    running: BTreeSet<u32>,
    on_disk: BTreeSet<u32>,
}

impl Device {
    fn new(first_install: bool) -> Self {
        let mut d = Device {
            phase: Phase::Committed,
            now: 1_000,
            previous: None,
            target: 0,
            next_release: 1,
            running: BTreeSet::new(),
            on_disk: BTreeSet::new(),
        };
        if first_install {
            let t = begin();
            d.new_target();
            d.phase = t.next;
            d.execute(&t.effects);
        } else {
            d.previous = Some(0);
            d.running.insert(0);
            d.on_disk.insert(0);
        }
        d
    }

    fn new_target(&mut self) {
        self.target = self.next_release;
        self.next_release += 1;
    }

    fn execute(&mut self, effects: &[Effect]) {
        let mut committed = false;
        for effect in effects {
            match effect {
                Effect::Fetch => {
                    self.on_disk.insert(self.target);
                }
                Effect::AbandonTarget => {
                    assert!(
                        !self.running.contains(&self.target),
                        "abandoning a running target"
                    );
                }
                Effect::Verify | Effect::Stage => {
                    assert!(self.on_disk.contains(&self.target));
                }
                Effect::StopOld => {
                    if let Some(p) = self.previous {
                        self.running.remove(&p);
                    }
                }
                Effect::StartNew => {
                    assert!(
                        self.running.is_empty(),
                        "StartNew while {:?} runs",
                        self.running
                    );
                    assert!(self.on_disk.contains(&self.target));
                    self.running.insert(self.target);
                }
                Effect::StartProbation { deadline } => {
                    assert_eq!(
                        self.phase,
                        Phase::Probation {
                            deadline: *deadline
                        }
                    );
                    assert!(
                        self.running.contains(&self.target),
                        "probation of a stopped target"
                    );
                }
                Effect::Commit => {
                    assert_eq!(self.phase, Phase::Committed, "commit outside Committed");
                    assert!(self.on_disk.contains(&self.target));
                    self.previous = Some(self.target);
                    committed = true;
                }
                Effect::GcOld => {
                    assert!(committed, "GcOld without a preceding Commit");
                    let keep = self.previous;
                    self.on_disk.retain(|r| Some(*r) == keep);
                }
                Effect::StopNew => {
                    self.running.remove(&self.target);
                }
                Effect::StartPrevious => {
                    assert!(
                        self.running.is_empty(),
                        "StartPrevious while {:?} runs",
                        self.running
                    );
                    if let Some(p) = self.previous {
                        assert!(self.on_disk.contains(&p), "rollback target {p} is gone");
                        self.running.insert(p);
                    }
                }
            }
        }
    }

    /// Power cut: every container dies; on boot the supervisor restarts the
    /// release the phase says is current, then the driver resumes.
    fn crash_and_resume(&mut self) {
        self.running.clear();
        let previous_is_current = matches!(
            self.phase,
            Phase::Pending
                | Phase::Downloading
                | Phase::Verifying
                | Phase::Staged
                | Phase::Committed
                | Phase::RolledBack { .. }
        ) || matches!(self.phase, Phase::Failed { code } if code != ErrorCode::RollbackFailed);
        if previous_is_current && let Some(p) = self.previous {
            self.running.insert(p);
        }
        let effects = self.phase.resume_effects();
        self.execute(&effects);
    }

    fn apply(&mut self, event: &Event, advance: u64) {
        self.now += advance;
        let before = self.phase.clone();
        match step(&self.phase, event, self.now) {
            Ok(t) => {
                if let Event::DesiredReceived = event
                    && !matches!(t.next, Phase::RollingBack { .. })
                {
                    self.new_target();
                }
                if t.next == Phase::Committed && before != Phase::Committed {
                    let Phase::Probation { deadline } = before else {
                        panic!("committed from {before:?}");
                    };
                    assert!(self.now >= deadline, "committed before the deadline");
                }
                self.phase = t.next;
                self.execute(&t.effects);
            }
            Err(_) => assert_eq!(self.phase, before),
        }
    }

    fn check(&self) {
        assert!(self.running.len() <= 1, "{:?} run at once", self.running);
        if let Some(p) = self.previous {
            assert!(
                self.on_disk.contains(&p),
                "rollback target {p} is not on disk"
            );
        }
        let previous: BTreeSet<u32> = self.previous.into_iter().collect();
        match &self.phase {
            // The previous release is not touched before Starting (it may be
            // down already if an earlier rollback failed).
            Phase::Pending | Phase::Downloading | Phase::Verifying | Phase::Staged => {
                assert!(self.running.is_subset(&previous), "in {:?}", self.phase);
            }
            Phase::Committed | Phase::RolledBack { .. } => {
                assert_eq!(self.running, previous, "in {:?}", self.phase);
            }
            Phase::Probation { .. } => {
                assert_eq!(self.running, BTreeSet::from([self.target]));
            }
            Phase::Failed { code } if *code != ErrorCode::RollbackFailed => {
                assert!(self.running.is_subset(&previous), "in {:?}", self.phase);
            }
            Phase::Starting | Phase::RollingBack { .. } | Phase::Failed { .. } => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Any event, valid or not in the current phase.
    Event(Event, u64),
    /// One of the events valid in the current phase (index modulo their
    /// number), so that sequences reach deep phases.
    Valid(usize, Event, u64),
    PowerCut,
}

/// The events `step` accepts in `phase`, built from a template event's
/// payloads.
fn valid_events(phase: &Phase, now: u64, template: &Event) -> Vec<Event> {
    let (code, probation_secs) = match template {
        Event::DownloadFailed { code }
        | Event::VerifyFailed { code }
        | Event::StageFailed { code } => (*code, 30),
        Event::Started { probation_secs } => (ErrorCode::Internal, *probation_secs),
        _ => (ErrorCode::DownloadFailed, 30),
    };
    [
        Event::DesiredReceived,
        Event::DownloadStarted,
        Event::DownloadComplete,
        Event::DownloadFailed { code },
        Event::Verified,
        Event::VerifyFailed { code },
        Event::StageComplete,
        Event::StageFailed { code },
        Event::Started { probation_secs },
        Event::StartFailed,
        Event::HealthPassed,
        Event::HealthFailed,
        Event::CrashLoop,
        Event::ProbationElapsed,
        Event::RollbackDone,
        Event::RollbackFailed,
    ]
    .into_iter()
    .filter(|e| step(phase, e, now).is_ok())
    .collect()
}

fn code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::DesiredReceived),
        Just(Event::DownloadStarted),
        Just(Event::DownloadComplete),
        code().prop_map(|code| Event::DownloadFailed { code }),
        Just(Event::Verified),
        code().prop_map(|code| Event::VerifyFailed { code }),
        Just(Event::StageComplete),
        code().prop_map(|code| Event::StageFailed { code }),
        (0u64..200).prop_map(|probation_secs| Event::Started { probation_secs }),
        Just(Event::StartFailed),
        Just(Event::HealthPassed),
        Just(Event::HealthFailed),
        Just(Event::CrashLoop),
        Just(Event::ProbationElapsed),
        Just(Event::RollbackDone),
        Just(Event::RollbackFailed),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (event(), 0u64..100).prop_map(|(e, dt)| Step::Event(e, dt)),
            12 => (any::<usize>(), event(), 0u64..100).prop_map(|(i, e, dt)| Step::Valid(i, e, dt)),
            1 => Just(Step::PowerCut),
        ],
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_event_sequence_breaks_the_release_invariants(first_install: bool, steps in steps()) {
        let mut device = Device::new(first_install);
        device.check();
        for s in &steps {
            match s {
                Step::Event(e, dt) => device.apply(e, *dt),
                Step::Valid(i, template, dt) => {
                    let valid = valid_events(&device.phase, device.now + dt, template);
                    prop_assert!(!valid.is_empty(), "no way out of {:?}", device.phase);
                    device.apply(&valid[i % valid.len()], *dt);
                }
                Step::PowerCut => device.crash_and_resume(),
            }
            device.check();
        }
    }
}

#[test]
fn a_crash_loop_after_an_upgrade_brings_the_previous_release_back() {
    let mut d = Device::new(false);
    for e in [
        Event::DesiredReceived,
        Event::DownloadComplete,
        Event::Verified,
        Event::StageComplete,
        Event::Started { probation_secs: 30 },
    ] {
        d.apply(&e, 1);
        d.check();
    }
    assert_eq!(d.running, BTreeSet::from([1]));
    d.crash_and_resume();
    d.check();
    d.apply(&Event::CrashLoop, 1);
    d.apply(&Event::RollbackDone, 1);
    d.check();
    assert_eq!(
        d.phase,
        Phase::RolledBack {
            reason: ErrorCode::CrashLoop
        }
    );
    assert_eq!(d.running, BTreeSet::from([0]));
    assert!(
        d.on_disk.contains(&1),
        "target content stays until the next commit"
    );
}
