//! The committed fixtures: each broken file is rejected with its specific
//! error, the good ones verify, and the files are what the generator makes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture_gen;

use std::path::PathBuf;

use fixture_gen::{DEVICE, LAST_GENERATION, NOW};
use fleet_protocol::trust::Role;
use fleet_protocol::{
    DeviceId, TrustedRoot, VerifyError, verify_command, verify_desired_state, verify_release,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn trust(name: &str) -> TrustedRoot {
    TrustedRoot::bootstrap(&read(name), NOW).unwrap()
}

fn device() -> DeviceId {
    DeviceId::new(DEVICE).unwrap()
}

fn desired_err(trust_file: &str, name: &str) -> VerifyError {
    match verify_desired_state(
        &trust(trust_file),
        &read(name),
        &device(),
        Some(LAST_GENERATION),
        NOW,
    ) {
        Ok(v) => panic!("{name} verified (generation {})", v.generation),
        Err(e) => e,
    }
}

#[test]
fn good_fixtures_verify() {
    let root = trust("trust.json");
    assert_eq!(root.version(), 1);
    let desired = verify_desired_state(
        &root,
        &read("desired.json"),
        &device(),
        Some(LAST_GENERATION),
        NOW,
    )
    .unwrap();
    assert_eq!(desired.generation, LAST_GENERATION + 1);
    assert_eq!(desired.releases().len(), 2);
    assert_eq!(desired.releases()[0].app.as_str(), "web");
    assert_eq!(desired.releases()[1].app.as_str(), "model");
    assert_eq!(
        desired.releases()[0].payload_digest(),
        &desired.apps[0].release_digest
    );
    // A device that never applied anything accepts it too.
    verify_desired_state(&root, &read("desired.json"), &device(), None, NOW).unwrap();

    let release = verify_release(&root, &read("release.json"), NOW).unwrap();
    assert_eq!(release.version, "v1");
    assert_eq!(release.signed_by().len(), 1);

    let command = verify_command(&root, &read("command.json"), &device(), NOW).unwrap();
    assert_eq!(command.id, 1);

    let v2 = root.rotate(&read("root_v2.json"), NOW).unwrap();
    assert_eq!(v2.version(), 2);
    // Release and director keys carried over: the same desired state still verifies.
    verify_desired_state(&v2, &read("desired.json"), &device(), None, NOW).unwrap();
}

#[test]
fn tampered_payload_is_a_bad_signature() {
    let e = desired_err("trust.json", "tampered_payload.json");
    assert!(
        matches!(
            e,
            VerifyError::BadSignature {
                role: Role::Director,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), "bad_signature");
}

#[test]
fn unknown_key_is_rejected() {
    let e = desired_err("trust.json", "unknown_key.json");
    assert!(matches!(e, VerifyError::UnknownKey { .. }), "{e:?}");
    assert_eq!(e.code(), "unknown_key");
}

#[test]
fn release_key_cannot_sign_desired_state() {
    let e = desired_err("trust.json", "wrong_role.json");
    assert!(
        matches!(
            e,
            VerifyError::WrongRole {
                role: Role::Director,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), "wrong_role");
}

#[test]
fn one_of_two_director_signatures_is_below_threshold() {
    let e = desired_err("trust_threshold2.json", "below_threshold.json");
    assert!(
        matches!(
            e,
            VerifyError::BelowThreshold {
                role: Role::Director,
                have: 1,
                need: 2
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), "below_threshold");
}

#[test]
fn unsigned_envelope_is_below_threshold() {
    let e = desired_err("trust.json", "unsigned.json");
    assert!(
        matches!(
            e,
            VerifyError::BelowThreshold {
                have: 0,
                need: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn expired_desired_state_is_rejected() {
    let e = desired_err("trust.json", "expired.json");
    assert!(
        matches!(e, VerifyError::Expired { expires_at, now } if expires_at == NOW - 1 && now == NOW),
        "{e:?}"
    );
    assert_eq!(e.code(), "expired");
}

#[test]
fn replayed_generation_is_rejected() {
    let e = desired_err("trust.json", "replayed_generation.json");
    assert!(
        matches!(e, VerifyError::StaleGeneration { got: 5, last: 5 }),
        "{e:?}"
    );
    assert_eq!(e.code(), "stale_generation");
}

#[test]
fn desired_state_for_another_device_is_rejected() {
    let e = desired_err("trust.json", "wrong_device.json");
    assert!(matches!(e, VerifyError::WrongDevice { .. }), "{e:?}");
}

#[test]
fn wrong_payload_type_is_rejected() {
    let e = desired_err("trust.json", "wrong_payload_type.json");
    assert!(matches!(e, VerifyError::WrongPayloadType { .. }), "{e:?}");
    assert_eq!(e.code(), "wrong_payload_type");
}

#[test]
fn malformed_files_are_rejected() {
    let e = desired_err("trust.json", "malformed_envelope.json");
    assert!(matches!(e, VerifyError::MalformedEnvelope { .. }), "{e:?}");
    let e = desired_err("trust.json", "malformed_payload.json");
    assert!(matches!(e, VerifyError::MalformedPayload { .. }), "{e:?}");
}

#[test]
fn release_digest_mismatch_is_rejected() {
    let e = desired_err("trust.json", "release_digest_mismatch.json");
    assert!(
        matches!(&e, VerifyError::ReleaseDigestMismatch { app, .. } if app.as_str() == "web"),
        "{e:?}"
    );
    assert_eq!(e.code(), "release_digest_mismatch");
}

#[test]
fn release_under_another_app_name_is_rejected() {
    let e = desired_err("trust.json", "release_app_mismatch.json");
    assert!(matches!(e, VerifyError::ReleaseAppMismatch { .. }), "{e:?}");
}

#[test]
fn tampered_release_inside_a_signed_desired_state_is_rejected() {
    let e = desired_err("trust.json", "release_tampered.json");
    assert!(
        matches!(
            e,
            VerifyError::BadSignature {
                role: Role::Release,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn director_key_cannot_sign_releases() {
    let e = desired_err("trust.json", "release_wrong_role.json");
    assert!(
        matches!(
            e,
            VerifyError::WrongRole {
                role: Role::Release,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn privileged_release_needs_the_root_to_allow_it() {
    let e = desired_err("trust.json", "privileged_not_allowed.json");
    assert!(
        matches!(e, VerifyError::PrivilegedNotAllowed { .. }),
        "{e:?}"
    );
}

#[test]
fn root_rotation_fixtures_are_rejected_with_their_reason() {
    let root = trust("trust.json");
    let e = root
        .rotate(&read("root_missing_link.json"), NOW)
        .unwrap_err();
    assert!(
        matches!(e, VerifyError::RootMissingLink { have: 1, got: 3 }),
        "{e:?}"
    );
    assert_eq!(e.code(), "root_missing_link");
    // With v2 in between, v3 is accepted.
    let v3 = root
        .rotate_chain(
            &[&read("root_v2.json"), &read("root_missing_link.json")],
            NOW,
        )
        .unwrap();
    assert_eq!(v3.version(), 3);

    let e = root
        .rotate(&read("root_not_signed_by_old.json"), NOW)
        .unwrap_err();
    assert!(matches!(e, VerifyError::UnknownKey { .. }), "{e:?}");

    let e = TrustedRoot::bootstrap(&read("root_expired.json"), NOW).unwrap_err();
    assert!(
        matches!(e, VerifyError::RootExpired { version: 1, .. }),
        "{e:?}"
    );
    let e = TrustedRoot::bootstrap(&read("root_invalid.json"), NOW).unwrap_err();
    assert!(matches!(e, VerifyError::InvalidRoot { .. }), "{e:?}");
}

#[test]
fn an_expired_root_freezes_everything() {
    let root = trust("trust.json");
    let later = root.expires_at();
    let e = verify_release(&root, &read("release.json"), later).unwrap_err();
    assert!(matches!(e, VerifyError::RootExpired { .. }), "{e:?}");
}

#[test]
fn fixtures_match_the_generator() {
    let fixtures = fixture_gen::generate();
    let mut expected: Vec<String> = fixtures.iter().map(|f| f.name.to_owned()).collect();
    for f in &fixtures {
        assert!(
            read(f.name) == f.bytes,
            "{} differs from the generator's output; regenerate (see tests/fixtures/README.md)",
            f.name
        );
    }
    assert_eq!(read("README.md"), fixture_gen::readme(&fixtures));
    expected.push("README.md".into());
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    expected.sort();
    assert_eq!(on_disk, expected, "stray or missing fixture files");
}

#[test]
#[ignore = "rewrites tests/fixtures; run after a deliberate change"]
fn regenerate_fixtures() {
    let fixtures = fixture_gen::generate();
    std::fs::create_dir_all(dir()).unwrap();
    for f in &fixtures {
        std::fs::write(dir().join(f.name), &f.bytes).unwrap();
    }
    std::fs::write(dir().join("README.md"), fixture_gen::readme(&fixtures)).unwrap();
}
