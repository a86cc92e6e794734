//! `max_unavailable` through the pure rollout step: a wave larger than the
//! limit is fed as its devices settle, never more than the limit mid-update.

use std::sync::Arc;

use fleet_protocol::message::ReleaseRef;
use fleet_protocol::{AppStatus, DeviceId, ErrorCode, Phase};

use crate::fleet::rollout::{
    Effect, Event, ProgressState, Reports, device_progress, plan_waves, step,
};
use crate::fleet::test_fixtures::{self as fixtures, ids, record};
use crate::store::{RolloutRecord, RolloutState, Safety, WaveSize, WaveState};

/// `n` devices in one wave, at most `max` mid-update.
fn rollout(n: usize, max: WaveSize, deadline: Option<u64>) -> RolloutRecord {
    record(
        3,
        plan_waves(ids(n), &[]),
        Safety {
            max_unavailable: Some(max),
            wave_deadline_secs: deadline,
            ..Safety::default()
        },
    )
}

fn report(r: &RolloutRecord, reports: &mut Reports, device: &DeviceId, phase: Phase) {
    let release = ReleaseRef {
        version: "v2".into(),
        release_digest: r.release_digest.clone(),
    };
    let committed = phase == Phase::Committed;
    let app = AppStatus {
        app: r.app.clone(),
        phase,
        running: committed.then(|| release.clone()),
        target: (!committed).then_some(release),
        previous: None,
        health: Default::default(),
        restarts: 0,
        progress: None,
        error: None,
        delta_fallbacks: vec![],
    };
    reports.extend([fixtures::report(device, app)]);
}

fn deployed(effects: &[Effect]) -> Vec<DeviceId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deploy { devices, .. } => Some(devices.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Devices given the release and neither committed nor failed.
fn mid_update(r: &RolloutRecord, reports: &Reports) -> usize {
    r.waves[0]
        .devices
        .iter()
        .filter(|d| {
            let s = device_progress(r, 0, d, reports.get(*d).map(Arc::as_ref)).state;
            matches!(s, ProgressState::Sent | ProgressState::Updating)
        })
        .count()
}

#[test]
fn a_wave_larger_than_max_unavailable_is_fed_as_its_devices_settle() {
    let d = ids(5);
    let (mut r, effects) = step(rollout(5, WaveSize::Count(2), None), Event::Start, 200).unwrap();
    assert_eq!(deployed(&effects), d[..2]);
    assert_eq!(r.waves[0].held.len(), 3);
    let mut reports = Reports::new();
    assert_eq!(mid_update(&r, &reports), 2);
    // The held devices show as waiting, not sent.
    assert_eq!(
        device_progress(&r, 0, &d[4], None).state,
        ProgressState::Waiting
    );

    // Each step: what reported, then who is given the release next.
    type Step<'a> = (&'a [(usize, Phase)], &'a [usize]);
    let script: [Step; 5] = [
        (&[(0, Phase::Downloading), (1, Phase::Downloading)], &[]),
        (&[(0, Phase::Committed)], &[2]),
        (
            &[(
                1,
                Phase::Failed {
                    code: ErrorCode::CrashLoop,
                },
            )],
            &[3],
        ),
        (&[(2, Phase::Committed), (3, Phase::Committed)], &[4]),
        (&[(4, Phase::Committed)], &[]),
    ];
    for (t, (reported, next)) in script.into_iter().enumerate() {
        for (i, phase) in reported {
            report(&r, &mut reports, &d[*i], phase.clone());
        }
        let (stepped, effects) =
            step(r, Event::Progress(reports.clone().into()), 210 + t as u64).unwrap();
        r = stepped;
        let want: Vec<DeviceId> = next.iter().map(|i| d[*i].clone()).collect();
        assert_eq!(deployed(&effects), want, "step {t}");
        assert!(mid_update(&r, &reports) <= 2, "step {t}: over the limit");
    }
    assert_eq!(r.state, RolloutState::Completed);
    assert!(r.waves[0].held.is_empty());
}

#[test]
fn a_percentage_is_of_the_rollouts_devices_rounded_up() {
    let (r, effects) = step(rollout(10, WaveSize::Percent(15), None), Event::Start, 200).unwrap();
    assert_eq!(deployed(&effects).len(), 2);
    assert_eq!(r.waves[0].held.len(), 8);
    // A limit larger than the wave: everything at once, nothing held.
    let (r, effects) = step(rollout(3, WaveSize::Count(5), None), Event::Start, 200).unwrap();
    assert_eq!(deployed(&effects), ids(3));
    assert!(r.waves[0].held.is_empty());
}

#[test]
fn past_the_deadline_devices_that_never_answered_take_no_place_and_the_wave_closes_when_all_went() {
    let d = ids(3);
    let (r, _) = step(rollout(3, WaveSize::Count(1), Some(60)), Event::Start, 200).unwrap();
    // d0 is offline: it never reports. Before the deadline nobody else goes.
    let (r, effects) = step(r, Event::Progress(Reports::new().into()), 259).unwrap();
    assert!(deployed(&effects).is_empty());
    // At the deadline d0 stops holding its place: d1 goes, not yet closed.
    let (r, effects) = step(r, Event::Progress(Reports::new().into()), 260).unwrap();
    assert_eq!(deployed(&effects), [d[1].clone()]);
    assert_eq!(r.waves[0].state, WaveState::Active);
    let (r, effects) = step(r, Event::Progress(Reports::new().into()), 261).unwrap();
    assert_eq!(deployed(&effects), [d[2].clone()]);
    // Nothing held any more: the wave closes at its deadline.
    let (r, _) = step(r, Event::Progress(Reports::new().into()), 262).unwrap();
    assert_eq!(r.state, RolloutState::Completed);
}

#[test]
fn a_limit_is_refused_at_zero_and_old_waves_load_with_nothing_held() {
    assert!("0".parse::<WaveSize>().is_err());
    assert!("0%".parse::<WaveSize>().is_err());
    let w: crate::store::Wave =
        serde_json::from_str(r#"{"devices":["d0"],"state":"active","started_at":5}"#).unwrap();
    assert!(w.held.is_empty());
}
