use super::*;
use fleet_protocol::{AppName, AppStatus, Phase};

fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

fn status(id: &str, at: u64, phase: Phase) -> StatusReport {
    StatusReport {
        schema: 1,
        device: dev(id),
        reported_at: at,
        generation: Some(1),
        apps: vec![AppStatus {
            app: AppName::new("model").unwrap(),
            phase,
            running: None,
            target: None,
            previous: None,
            health: Default::default(),
            restarts: 0,
            progress: None,
            error: None,
            delta_fallbacks: vec![],
        }],
        rejected: None,
        info: None,
    }
}

#[test]
fn a_repeated_status_changes_nothing_and_a_new_one_marks_the_device_dirty() {
    let live = Live::new();
    let first = live.on_status(status("a", 10, Phase::Downloading), 100);
    assert!(!first.repeat && first.changed && first.previous.is_none());
    assert_eq!(live.take_dirty().len(), 1);
    assert!(live.take_dirty().is_empty(), "the flag is cleared");

    // The retained report again (after a resubscription): a repeat.
    let again = live.on_status(status("a", 10, Phase::Downloading), 200);
    assert!(again.repeat);
    assert!(live.take_dirty().is_empty());
    assert_eq!(live.get(&dev("a")).unwrap().last_seen, 100);

    // A periodic report with the same apps: new, but not a change.
    let periodic = live.on_status(status("a", 20, Phase::Downloading), 300);
    assert!(!periodic.repeat && !periodic.changed);
    let next = live.on_status(status("a", 30, Phase::Committed), 400);
    assert!(next.changed);
    assert_eq!(next.previous.unwrap().reported_at, 20);
    let dirty = live.take_dirty();
    assert_eq!(dirty.len(), 1);
    assert_eq!(dirty[0].1.last_seen, 400);
    assert_eq!(dirty[0].1.online, Some(true));
}

#[test]
fn presence_and_telemetry_set_online_and_last_seen() {
    let live = Live::new();
    let d = dev("b");
    assert!(live.get(&d).is_none());
    live.on_presence(&d, true, 50);
    assert_eq!(live.get(&d).unwrap().online, Some(true));
    // The last will: offline, last seen unchanged.
    live.on_presence(&d, false, 60);
    let e = live.get(&d).unwrap();
    assert_eq!((e.online, e.last_seen), (Some(false), 50));
    live.on_telemetry(
        &d,
        Telemetry {
            cpu_percent: Some(12.5),
            ..Telemetry::default()
        },
        70,
    );
    let e = live.get(&d).unwrap();
    assert_eq!((e.online, e.last_seen), (Some(true), 70));
    assert_eq!(e.telemetry.unwrap().cpu_percent, Some(12.5));
    assert_eq!(e.telemetry_received_at, 70);
}

#[test]
fn state_loaded_from_the_store_makes_the_retained_status_a_repeat() {
    let mut rec = DeviceRecord::new(dev("c"), 5);
    rec.online = true;
    rec.last_status = Some(status("c", 10, Phase::Committed));
    let live = Live::new();
    live.load(
        vec![rec],
        vec![TelemetryRecord {
            device: dev("c"),
            received_at: 9,
            telemetry: Telemetry::default(),
        }],
    );
    let e = live.get(&dev("c")).unwrap();
    assert!(e.registered && e.telemetry.is_some());
    assert!(live.on_status(status("c", 10, Phase::Committed), 99).repeat);
    assert!(live.take_dirty().is_empty());
}

#[test]
fn overlay_applies_the_live_fields_to_a_record() {
    let live = Live::new();
    let mut s = status("d", 10, Phase::Committed);
    s.info = Some(DeviceInfo {
        architecture: "arm64".into(),
        agent_version: "0.2.0".into(),
        l4t_version: Some("R36.4.0".into()),
        ..DeviceInfo::default()
    });
    live.on_status(s, 42);
    let mut rec = DeviceRecord::new(dev("d"), 1);
    live.get(&dev("d")).unwrap().overlay(&mut rec);
    assert!(rec.online);
    assert_eq!(rec.last_seen, 42);
    assert_eq!(rec.agent_version, "0.2.0");
    assert_eq!(rec.l4t_version.as_deref(), Some("R36.4.0"));
    assert_eq!(rec.last_status.unwrap().reported_at, 10);
}
