use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use fleet_protocol::DeviceId;
use fleet_protocol::enroll::Issued;
use rcgen::{CertificateParams, KeyPair};

use super::*;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// An identity with a self-signed certificate (the files do not check the
/// chain; the TLS handshake does).
fn identity(serial: &str, issued_at: u64) -> Identity {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec!["cam-01".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Identity::issued(
        DeviceId::new("cam-01").unwrap(),
        Issued {
            certificate: cert.pem(),
            ca: cert.pem(),
            serial: serial.into(),
            issued_at,
            not_before: issued_at - 300,
            not_after: issued_at + 60,
        },
        key.serialize_pem(),
    )
}

#[test]
fn an_identity_is_stored_with_private_modes_and_loaded_back() {
    let state = tempfile::tempdir().unwrap();
    assert!(load(state.path()).unwrap().is_none());
    let id = identity("41", 1000);
    store(state.path(), &id).unwrap();
    let dir = dir(state.path());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY)), 0o600);
    let loaded = load(state.path()).unwrap().unwrap();
    assert_eq!(loaded.serial, "41");
    assert_eq!(loaded.renew_at(), 1040);
    assert_eq!(loaded.cert_pem, id.cert_pem);
    assert_eq!(loaded.client_identity().key_pem, id.key_pem);
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(META)).unwrap()).unwrap();
    assert_eq!(meta["device"], "cam-01");
    assert_eq!(meta["not_after"], 1060);
    // No key in Debug; no stray files.
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [CA, CERT, KEY, META]);
}

#[test]
fn a_readable_key_or_a_key_of_another_certificate_is_refused() {
    let state = tempfile::tempdir().unwrap();
    store(state.path(), &identity("41", 1000)).unwrap();
    let key = dir(state.path()).join(KEY);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = load(state.path()).unwrap_err();
    assert!(
        matches!(err, IdentityError::KeyMode { mode: 0o644, .. }),
        "{err}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    // Another identity's key under this certificate.
    fs::write(&key, identity("42", 1000).key_pem).unwrap();
    let err = load(state.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Tls { .. }), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

/// Leaves the `*.new` files of `next` as a crash would: all of them with
/// `identity.json.new` (then `renamed` of them already in place), or only
/// some without it.
fn crash(state: &Path, next: &Identity, complete: bool, renamed: usize) {
    let dir = dir(state);
    let meta = serde_json::to_vec(&Meta {
        device: next.device.clone(),
        serial: next.serial.clone(),
        issued_at: Some(next.issued_at),
        not_before: next.not_before,
        not_after: next.not_after,
    })
    .unwrap();
    let files: [(&str, &[u8], u32); 4] = [
        (KEY, next.key_pem.as_bytes(), 0o600),
        (CERT, next.cert_pem.as_bytes(), 0o644),
        (CA, next.ca_pem.as_bytes(), 0o644),
        (META, &meta, 0o644),
    ];
    let written = if complete { 4 } else { 2 };
    for (name, bytes, mode) in &files[..written] {
        write_synced(&dir.join(new_name(name)), bytes, *mode).unwrap();
    }
    for (name, _, _) in &files[..renamed] {
        fs::rename(dir.join(new_name(name)), dir.join(name)).unwrap();
    }
}

#[test]
fn a_replacement_interrupted_by_a_crash_leaves_the_old_set_or_the_new_one() {
    for (complete, renamed, want) in [
        (false, 0, "41"),
        (true, 0, "42"),
        (true, 1, "42"),
        (true, 3, "42"),
    ] {
        let state = tempfile::tempdir().unwrap();
        store(state.path(), &identity("41", 1000)).unwrap();
        crash(state.path(), &identity("42", 2000), complete, renamed);
        let loaded = load(state.path()).unwrap().unwrap();
        assert_eq!(
            loaded.serial, want,
            "complete {complete}, renamed {renamed}"
        );
        let leftovers = fs::read_dir(dir(state.path()))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".new")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}

#[test]
fn a_file_from_before_issued_at_renews_from_not_before() {
    let state = tempfile::tempdir().unwrap();
    store(state.path(), &identity("41", 1000)).unwrap();
    let meta = dir(state.path()).join(META);
    fs::write(
        &meta,
        r#"{"device":"cam-01","serial":"41","not_before":700,"not_after":1060}"#,
    )
    .unwrap();
    let loaded = load(state.path()).unwrap().unwrap();
    assert_eq!(loaded.issued_at, 700);
    assert_eq!(loaded.renew_at(), 940);
}
