//! Runs the real `fleetctl` binary: keys init → release sign → desired sign →
//! keys rotate, and checks every output with the verifier the devices use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleet_protocol::dsse::Envelope;
use fleet_protocol::{DeviceId, TrustedRoot, VerifyError, verify_desired_state, verify_release};

fn fleetctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env_remove("FLEET_KEYS_DIR")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = fleetctl(args);
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = fleetctl(args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn private_of(key: &Path) -> String {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(key).unwrap()).unwrap();
    json["private"].as_str().unwrap().to_owned()
}

const RELEASE: &str = r#"{
  "app": "web",
  "version": "v1",
  "repository": "registry.local:5000/edge/web",
  "manifest_digest": "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
  "runtime": {"env": {"MODE": "prod"}, "devices": ["nvidia.com/gpu=all"]}
}"#;

#[test]
fn keys_init_release_sign_desired_sign_and_rotate_verify_with_the_protocol_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let d = |name: &str| dir.join(name);
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let mut outputs = String::new();

    // keys init
    outputs += &ok(&["keys", "init", "--dir", &p(&dir)]);
    for key in ["root.key", "release.key", "director.key"] {
        assert_eq!(mode(&d(key)), 0o600, "{key}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d(key)).unwrap()).unwrap();
        assert_eq!(json["keytype"], "ed25519");
        assert_eq!(json["role"], key.trim_end_matches(".key"));
        assert_eq!(json["keyid"].as_str().unwrap().len(), 64);
        assert_eq!(
            STANDARD
                .decode(json["private"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }
    let trust_v1 = std::fs::read(d("trust.json")).unwrap();
    let root = TrustedRoot::bootstrap(&trust_v1, now()).unwrap();
    assert_eq!(root.version(), 1);
    let year = root.expires_at() - now();
    assert!((364 * 86_400..=366 * 86_400).contains(&year), "{year}");

    // A second init refuses and changes nothing.
    let err = fails(&["keys", "init", "--dir", &p(&dir)]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(d("trust.json")).unwrap(), trust_v1);

    // release sign
    let release = tmp.path().join("release.json");
    std::fs::write(&release, RELEASE).unwrap();
    let signed = tmp.path().join("release.signed.json");
    outputs += &ok(&[
        "release",
        "sign",
        &p(&release),
        "--key",
        &p(&d("release.key")),
        "-o",
        &p(&signed),
    ]);
    let signed_bytes = std::fs::read(&signed).unwrap();
    let verified = verify_release(&root, &signed_bytes, now()).unwrap();
    assert_eq!(verified.app.as_str(), "web");
    assert_eq!(verified.runtime.env["MODE"], "prod");

    // One flipped payload byte fails the signature.
    let mut envelope: Envelope = serde_json::from_slice(&signed_bytes).unwrap();
    let mut payload = envelope.payload_bytes().unwrap();
    payload[10] ^= 0x01;
    envelope.payload = STANDARD.encode(&payload);
    let err = verify_release(&root, &envelope.to_json(), now()).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err:?}");

    // The director key may not sign releases, and says which key is needed.
    let err = fails(&[
        "release",
        "sign",
        &p(&release),
        "--key",
        &p(&d("director.key")),
        "-o",
        &p(&signed),
    ]);
    assert!(err.contains("release key is needed"), "{err}");

    // A key file readable by others is refused with the fix.
    std::fs::set_permissions(d("release.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&[
        "release",
        "sign",
        &p(&release),
        "--key",
        &p(&d("release.key")),
        "-o",
        &p(&signed),
    ]);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(d("release.key"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // desired sign
    let desired = tmp.path().join("desired.json");
    outputs += &ok(&[
        "desired",
        "sign",
        "--device",
        "cam-01",
        "--generation",
        "7",
        "--expires-in",
        "3600",
        "--key",
        &p(&d("director.key")),
        "--trust",
        &p(&d("trust.json")),
        &p(&signed),
        "-o",
        &p(&desired),
    ]);
    let device = DeviceId::new("cam-01").unwrap();
    let state = verify_desired_state(
        &root,
        &std::fs::read(&desired).unwrap(),
        &device,
        Some(6),
        now(),
    )
    .unwrap();
    assert_eq!(state.generation, 7);
    assert_eq!(state.releases().len(), 1);
    assert_eq!(
        state.releases()[0].payload_digest(),
        &state.apps[0].release_digest
    );
    assert!(state.expires_at > now() && state.expires_at <= now() + 3600);

    // keys rotate
    outputs += &ok(&["keys", "rotate", "--dir", &p(&dir)]);
    assert_eq!(std::fs::read(d("trust.v1.json")).unwrap(), trust_v1);
    assert_eq!(mode(&d("root.key")), 0o600);
    assert_eq!(mode(&d("root.v1.key")), 0o600);
    let v2 = root
        .rotate(&std::fs::read(d("trust.json")).unwrap(), now())
        .unwrap();
    assert_eq!(v2.version(), 2);
    // Release and director keys are unchanged: the desired state still verifies.
    verify_desired_state(
        &v2,
        &std::fs::read(&desired).unwrap(),
        &device,
        Some(6),
        now(),
    )
    .unwrap();

    // No private key ever reached the terminal.
    for key in ["root.key", "root.v1.key", "release.key", "director.key"] {
        assert!(!outputs.contains(&private_of(&d(key))), "{key} printed");
    }
}

#[test]
fn desired_sign_refuses_an_unsigned_release_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    ok(&["keys", "init", "--dir", &p(&dir)]);
    let release = tmp.path().join("release.json");
    std::fs::write(&release, RELEASE).unwrap();
    let err = fails(&[
        "desired",
        "sign",
        "--device",
        "cam-01",
        "--generation",
        "1",
        "--key",
        &p(&dir.join("director.key")),
        &p(&release),
        "-o",
        &p(&tmp.path().join("d.json")),
    ]);
    assert!(err.contains("fleetctl release sign"), "{err}");
}

#[test]
fn a_release_the_trust_root_does_not_know_exits_3_and_a_local_failure_1() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    ok(&["keys", "init", "--dir", &p(&ours)]);
    ok(&["keys", "init", "--dir", &p(&theirs)]);
    let release = tmp.path().join("release.json");
    std::fs::write(&release, RELEASE).unwrap();
    let signed = tmp.path().join("release.signed.json");
    ok(&[
        "release",
        "sign",
        &p(&release),
        "--key",
        &p(&theirs.join("release.key")),
        "-o",
        &p(&signed),
    ]);
    let desired = |trust: &Path| {
        fleetctl(&[
            "desired",
            "sign",
            "--device",
            "cam-01",
            "--generation",
            "1",
            "--key",
            &p(&ours.join("director.key")),
            "--trust",
            &p(trust),
            &p(&signed),
            "-o",
            &p(&tmp.path().join("d.json")),
        ])
    };
    let out = desired(&ours.join("trust.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("does not verify"), "{err}");

    // A trust root file that is not there: a local failure, exit code 1.
    let out = desired(&tmp.path().join("missing.json"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A usage error clap finds: exit code 2.
    assert_eq!(
        fleetctl(&["keys", "init", "--bogus"]).status.code(),
        Some(2)
    );
}
