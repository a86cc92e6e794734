//! Crash safety: `fleet-agent apply` is aborted (FLEET_AGENT_CRASH_AT) at
//! every crash point across the phases, then run again (`apply` of the same
//! desired state, or `resume`). Each time the device must end with exactly
//! one running release (the old or the new), no duplicate containers, and
//! `status -o json` agreeing with the runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lifecycle_support;

use std::os::unix::process::ExitStatusExt;

use lifecycle_support::*;

const APP: &str = "web";

/// Points reached while v2 is installed and committed.
const COMMIT_POINTS: &[&str] = &[
    "before-pending",
    "after-pending",
    "before-downloading",
    "after-downloading",
    "fetched",
    "before-verifying",
    "after-verifying",
    "before-staged",
    "after-staged",
    "before-starting",
    "after-starting",
    "after-stop-old",
    "after-start-new",
    "before-probation",
    "after-probation",
    "during-probation",
    "before-committed",
    "after-committed",
    "after-commit-record",
    "during-gc",
];

/// Points reached while an unhealthy v2 is rolled back.
const ROLLBACK_POINTS: &[&str] = &[
    "before-rolling_back",
    "after-rolling_back",
    "mid-rollback",
    "after-rollback-start",
    "before-rolled_back",
    "after-rolled_back",
];

fn crash_everywhere(runtime: &str) {
    let test = format!("crash points with {runtime}");
    if !can_run(&test) {
        return;
    }
    let Some(binary) = runtime_binary(&test, runtime) else {
        return;
    };
    let points = COMMIT_POINTS
        .iter()
        .map(|p| (*p, Behaviour::Good))
        .chain(ROLLBACK_POINTS.iter().map(|p| (*p, Behaviour::Unhealthy)));
    // LIFECYCLE_CRASH_ONLY=<point> narrows the run to one point (debugging).
    let only = std::env::var("LIFECYCLE_CRASH_ONLY").ok();
    for (n, (point, behaviour)) in points.enumerate() {
        if only.as_deref().is_some_and(|o| o != point) {
            continue;
        }
        let dev = Device::new(runtime, &binary);
        let layout = Layout::new(&dev.path("layout"));
        let rk = release_key();
        let v1 = signed_release(APP, "v1", &layout.image("v1"), Behaviour::Good, &rk);
        let v2 = signed_release(APP, "v2", &layout.image("v2"), behaviour, &rk);
        let exp = now() + 3600;
        let d1 = dev.file("d1.json", &desired(1, exp, &[(APP, v1.clone())]));
        let d2 = dev.file("d2.json", &desired(2, exp, &[(APP, v2.clone())]));
        let out = dev.apply(&d1, &layout.dir, &[]);
        assert_eq!(out.status.code(), Some(0), "{point}: v1: {}", text(&out));

        let out = dev.apply(&d2, &layout.dir, &[("FLEET_AGENT_CRASH_AT", point)]);
        assert_eq!(
            out.status.signal(),
            Some(libc_sigabrt()),
            "{point}: the crash point was not reached: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("crash point {point}")),
            "{point}: {}",
            text(&out)
        );
        // No duplicates even before recovery.
        assert!(
            dev.running().len() <= 1,
            "{point}: {:?}",
            dev.runtime_list()
        );

        // Rerun: alternately the same apply, or resume.
        let again = if n % 2 == 0 {
            dev.apply(&d2, &layout.dir, &[])
        } else {
            dev.agent(&["resume", "--content", layout.dir.to_str().unwrap()], &[])
        };
        assert!(
            again.status.code().is_some(),
            "{point}: rerun died: {}",
            text(&again)
        );
        eprintln!("{point}: rerun: {}", text(&again));
        let running = dev.assert_one_running_at(point, APP, &[&v1, &v2]);
        let status = dev.status();
        let app = app_status(&status, APP);
        let phase = app["phase"]["phase"].as_str().unwrap();
        match behaviour {
            Behaviour::Good if point == "before-pending" && n % 2 == 1 => {
                // Resume only finishes what was persisted: v2 was never started.
                assert_eq!(running, container_id(APP, &v1), "{point}: {status}");
                assert_eq!(phase, "committed");
            }
            Behaviour::Good => {
                assert_eq!(running, container_id(APP, &v2), "{point}: {status}");
                assert_eq!(phase, "committed", "{point}: {status}");
                assert_eq!(again.status.code(), Some(0), "{point}: {}", text(&again));
            }
            _ => {
                assert_eq!(running, container_id(APP, &v1), "{point}: {status}");
                assert_eq!(phase, "rolled_back", "{point}: {status}");
                assert_eq!(
                    app["error"]["code"], "health_check_failed",
                    "{point}: {status}"
                );
            }
        }
        eprintln!("{runtime}: crash at {point}: ok ({phase}, running {running})");
    }
}

fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

#[test]
fn every_crash_point_ends_with_one_running_release_with_crun() {
    crash_everywhere("crun");
}

#[test]
fn every_crash_point_ends_with_one_running_release_with_runc() {
    crash_everywhere("runc");
}

/// A committed release whose container died (killed) or vanished (deleted)
/// while no agent ran is started again by the next `resume` or `apply`.
fn dead_container_is_restarted(runtime: &str) {
    let test = format!("dead container with {runtime}");
    if !can_run(&test) {
        return;
    }
    let Some(binary) = runtime_binary(&test, runtime) else {
        return;
    };
    let dev = Device::new(runtime, &binary);
    let layout = Layout::new(&dev.path("layout"));
    let v1 = signed_release(
        APP,
        "v1",
        &layout.image("v1"),
        Behaviour::Good,
        &release_key(),
    );
    let d1 = dev.file("d1.json", &desired(1, now() + 3600, &[(APP, v1.clone())]));
    let out = dev.apply(&d1, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "v1: {}", text(&out));
    let id = container_id(APP, &v1);
    dev.assert_one_running_at("installed", APP, &[&v1]);

    // Killed: the runtime holds it stopped.
    let killed = std::process::Command::new(&binary)
        .arg("--root")
        .arg(dev.path("runtime-root"))
        .args(["kill", &id, "KILL"])
        .output()
        .unwrap();
    assert!(killed.status.success(), "kill: {}", text(&killed));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while dev.runtime_status(&id).as_deref() == Some("running") {
        assert!(std::time::Instant::now() < deadline, "{id} still runs");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = dev.agent(&["resume", "--content", layout.dir.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "resume: {}", text(&out));
    dev.assert_one_running_at("after kill + resume", APP, &[&v1]);

    // Deleted: the runtime does not know it any more.
    let deleted = std::process::Command::new(&binary)
        .arg("--root")
        .arg(dev.path("runtime-root"))
        .args(["delete", "--force", &id])
        .output()
        .unwrap();
    assert!(deleted.status.success(), "delete: {}", text(&deleted));
    assert_eq!(dev.runtime_status(&id), None);
    let out = dev.apply(&d1, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "apply again: {}", text(&out));
    dev.assert_one_running_at("after delete + apply", APP, &[&v1]);
    let status = dev.status();
    assert_eq!(
        app_status(&status, APP)["phase"]["phase"],
        "committed",
        "{status}"
    );
}

#[test]
fn a_dead_committed_container_is_restarted_with_crun() {
    dead_container_is_restarted("crun");
}

#[test]
fn a_dead_committed_container_is_restarted_with_runc() {
    dead_container_is_restarted("runc");
}
