//! `fleet-agent verify` on the protocol crate's signed fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const NOW: &str = "1767225600";

fn fixture(name: &str) -> String {
    format!(
        "{}/../protocol/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn verify(extra: &[&str], desired: &str) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["verify", "--trust", &fixture("trust.json"), "--now", NOW])
        .args(extra)
        .arg(fixture(desired))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn good_desired_state_prints_generation_and_apps() {
    let (code, out, err) = verify(
        &["--device", "cam-01", "--last-generation", "5"],
        "desired.json",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("generation 6"), "{out}");
    assert!(out.contains("app web v1"), "{out}");
    assert!(out.contains("app model v2"), "{out}");
}

#[test]
fn without_device_the_named_device_is_checked() {
    let (code, out, err) = verify(&[], "desired.json");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cam-01"), "{err}");
    assert!(out.contains("verified: device cam-01"), "{out}");
}

#[test]
fn rejections_exit_1_with_their_code() {
    for (file, code) in [
        ("tampered_payload.json", "bad_signature"),
        ("unknown_key.json", "unknown_key"),
        ("wrong_role.json", "wrong_role"),
        ("expired.json", "expired"),
        ("replayed_generation.json", "stale_generation"),
        ("release_digest_mismatch.json", "release_digest_mismatch"),
        ("wrong_device.json", "wrong_device"),
    ] {
        let (status, out, err) = verify(&["--device", "cam-01", "--last-generation", "5"], file);
        assert_eq!(status, Some(1), "{file}: {out} {err}");
        assert!(
            err.starts_with(&format!("rejected: {code}: ")),
            "{file}: {err}"
        );
        assert!(out.is_empty(), "{file}: {out}");
    }
}

#[test]
fn an_expired_trust_root_is_bad_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args([
            "verify",
            "--trust",
            &fixture("root_expired.json"),
            "--now",
            NOW,
        ])
        .arg(fixture("desired.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root_expired"));
}
