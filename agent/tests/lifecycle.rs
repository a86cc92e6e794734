//! The update lifecycle end to end through `fleet-agent apply` and `status`,
//! against real crun and runc: v1 → v2 committed, automatic rollbacks (failing
//! health check, crash loop), refused desired states, app removal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lifecycle_support;

use lifecycle_support::*;

const APP: &str = "web";

fn scenario(runtime: &str) {
    let test = format!("lifecycle with {runtime}");
    if !can_run(&test) {
        return;
    }
    let Some(binary) = runtime_binary(&test, runtime) else {
        return;
    };
    let dev = Device::new(runtime, &binary);
    let layout = Layout::new(&dev.path("layout"));
    let rk = release_key();
    let v1 = signed_release(APP, "v1", &layout.image("v1"), Behaviour::Good, &rk);
    let v2 = signed_release(APP, "v2", &layout.image("v2"), Behaviour::Good, &rk);
    let v3 = signed_release(APP, "v3", &layout.image("v3"), Behaviour::Unhealthy, &rk);
    let v4 = signed_release(APP, "v4", &layout.image("v4"), Behaviour::CrashLoop, &rk);
    let exp = now() + 3600;

    // v1: first install, committed.
    let d1 = dev.file("d1.json", &desired(1, exp, &[(APP, v1.clone())]));
    let out = dev.apply(&d1, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        dev.runtime_status(&container_id(APP, &v1)).as_deref(),
        Some("running")
    );
    dev.assert_one_running(APP, &[&v1]);
    let s = dev.status();
    assert_eq!(app_status(&s, APP)["phase"]["phase"], "committed", "{s}");
    assert_eq!(s["generation"], 1);

    // v2: committed, v1 stopped, v1 kept as the previous release.
    let d2 = dev.file("d2.json", &desired(2, exp, &[(APP, v2.clone())]));
    let out = dev.apply(&d2, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    dev.assert_one_running(APP, &[&v2]);
    assert_eq!(dev.runtime_status(&container_id(APP, &v1)), None);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["phase"]["phase"], "committed", "{s}");
    assert_eq!(a["running"]["version"], "v2");
    assert_eq!(a["previous"]["version"], "v1");
    assert_eq!(a["health"], "healthy");

    // v3 fails its health check: rolled back to v2, status says why.
    let d3 = dev.file("d3.json", &desired(3, exp, &[(APP, v3.clone())]));
    let out = dev.apply(&d3, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("health_check_failed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        dev.runtime_status(&container_id(APP, &v2)).as_deref(),
        Some("running")
    );
    dev.assert_one_running(APP, &[&v2]);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["phase"]["phase"], "rolled_back", "{s}");
    assert_eq!(a["phase"]["reason"], "health_check_failed");
    assert_eq!(a["error"]["code"], "health_check_failed");
    assert!(
        a["error"]["message"].as_str().unwrap().contains("health"),
        "{s}"
    );
    assert_eq!(a["running"]["version"], "v2");

    // v4 crash-loops: rolled back to v2.
    let d4 = dev.file("d4.json", &desired(4, exp, &[(APP, v4.clone())]));
    let out = dev.apply(&d4, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    dev.assert_one_running(APP, &[&v2]);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["phase"]["phase"], "rolled_back", "{s}");
    assert_eq!(a["error"]["code"], "crash_loop", "{s}");

    // Refused desired states leave v2 running and say why.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&desired(5, exp, &[(APP, v1.clone())])).unwrap();
    let other = desired(50, exp, &[(APP, v1.clone())]);
    let other: serde_json::Value = serde_json::from_slice(&other).unwrap();
    tampered["payload"] = other["payload"].clone();
    let stranger = signed_release(
        APP,
        "v9",
        &layout.image("v9"),
        Behaviour::Good,
        &stranger_key(),
    );
    let refusals: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad signature",
            serde_json::to_vec(&tampered).unwrap(),
            "bad_signature",
        ),
        (
            "replayed generation",
            std::fs::read(&d2).unwrap(),
            "stale_generation",
        ),
        (
            "expired",
            desired(6, now() - 1, &[(APP, v1.clone())]),
            "expired",
        ),
        (
            "release not signed by a release key",
            desired(7, exp, &[(APP, stranger)]),
            "bad_signature",
        ),
    ];
    for (what, bytes, code) in refusals {
        let f = dev.file("refused.json", &bytes);
        let out = dev.apply(&f, &layout.dir, &[]);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("rejected: {code}")),
            "{what}: {}",
            text(&out)
        );
        dev.assert_one_running(APP, &[&v2]);
        let s = dev.status();
        assert_eq!(s["rejected"]["code"], code, "{what}: {s}");
        assert_eq!(s["generation"], 4, "{what}: {s}");
        assert_eq!(app_status(&s, APP)["running"]["version"], "v2");
    }

    // An app no longer desired is stopped.
    let d8 = dev.file("d8.json", &desired(8, exp, &[]));
    let out = dev.apply(&d8, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(dev.runtime_list().is_empty(), "{:?}", dev.runtime_list());
    assert!(dev.status()["apps"].as_array().is_none_or(|a| a.is_empty()));
}

#[test]
fn v1_v2_commit_rollbacks_and_refusals_with_crun() {
    scenario("crun");
}

#[test]
fn v1_v2_commit_rollbacks_and_refusals_with_runc() {
    scenario("runc");
}

/// A crash loop slower than the restart threshold (the container waits out
/// a long backoff between restarts, as on a loaded device): at the end of
/// probation its container is not running, so the release is rolled back,
/// never committed.
#[test]
fn a_release_whose_container_is_down_at_the_end_of_probation_is_not_committed() {
    let test = "down at the end of probation";
    if !can_run(test) {
        return;
    }
    let Some(binary) = runtime_binary(test, "crun") else {
        return;
    };
    let dev = Device::new("crun", &binary);
    let config = std::fs::read_to_string(dev.path("config.toml")).unwrap();
    let config = config
        .replace("backoff_initial_ms = 100", "backoff_initial_ms = 60000")
        .replace("backoff_max_ms = 400", "backoff_max_ms = 60000")
        .replace("crash_loop_restarts = 2", "crash_loop_restarts = 1000");
    std::fs::write(dev.path("config.toml"), config).unwrap();
    let layout = Layout::new(&dev.path("layout"));
    let rk = release_key();
    let v1 = signed_release(APP, "v1", &layout.image("v1"), Behaviour::Good, &rk);
    let v2 = signed_release(APP, "v2", &layout.image("v2"), Behaviour::CrashLoop, &rk);
    let exp = now() + 3600;
    let d1 = dev.file("d1.json", &desired(1, exp, &[(APP, v1.clone())]));
    let out = dev.apply(&d1, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let d2 = dev.file("d2.json", &desired(2, exp, &[(APP, v2.clone())]));
    let out = dev.apply(&d2, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    dev.assert_one_running(APP, &[&v1]);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["phase"]["phase"], "rolled_back", "{s}");
    assert_eq!(a["error"]["code"], "crash_loop", "{s}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not running at the end of probation"),
        "{s}"
    );
    assert_eq!(a["running"]["version"], "v1", "{s}");
    let d3 = dev.file("d3.json", &desired(3, exp, &[]));
    let out = dev.apply(&d3, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
