//! Unit tests of the verifier (beside it, in their own file).

use super::*;
use crate::dsse::DsseError;
use crate::dsse::{SigningKey, sign};
use crate::id::AppName;
use crate::lifecycle::ErrorCode;
use crate::trust::TrustError;
use crate::trust::{PublicKey, RoleKeys, Roles, Root};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Root key 1, release keys 2 and 3 (threshold `release_threshold`), director key 4.
fn trusted(release_threshold: u32) -> TrustedRoot {
    let ids = |ks: &[u8]| {
        ks.iter()
            .map(|n| KeyId::of(&key(*n).verifying_key()))
            .collect()
    };
    let root = Root {
        schema: 1,
        version: 1,
        expires_at: 100,
        keys: (1..=4)
            .map(|n| {
                let k = key(n).verifying_key();
                (KeyId::of(&k), PublicKey::ed25519(&k))
            })
            .collect(),
        roles: Roles {
            root: RoleKeys {
                keyids: ids(&[1]),
                threshold: 1,
            },
            release: RoleKeys {
                keyids: ids(&[2, 3]),
                threshold: release_threshold,
            },
            director: RoleKeys {
                keyids: ids(&[4]),
                threshold: 1,
            },
        },
        allow_privileged: false,
    };
    let env = sign(
        crate::dsse::ROOT_PAYLOAD_TYPE,
        &root.to_payload(),
        &[&key(1)],
    );
    TrustedRoot::bootstrap(&env.to_json(), 10).unwrap()
}

#[test]
fn threshold_counts_distinct_valid_role_keys_and_ignores_others() {
    let root = trusted(2);
    let both = sign(
        RELEASE_PAYLOAD_TYPE,
        b"x",
        &[&key(2), &key(9), &key(4), &key(3)],
    );
    let v = verify_bytes(
        &root,
        Role::Release,
        RELEASE_PAYLOAD_TYPE,
        &both.to_json(),
        10,
    )
    .unwrap();
    assert_eq!(v.signed_by().len(), 2);
    let one = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(2), &key(2)]);
    assert!(matches!(
        verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &one.to_json(),
            10
        ),
        Err(VerifyError::BelowThreshold {
            have: 1,
            need: 2,
            ..
        })
    ));
}

#[test]
fn an_invalid_signature_by_a_role_key_is_refused_even_above_threshold() {
    let root = trusted(1);
    let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(2), &key(3)]);
    // Key 3's entry now carries a signature over other bytes.
    env.signatures[1].sig = sign(RELEASE_PAYLOAD_TYPE, b"y", &[&key(3)]).signatures[0]
        .sig
        .clone();
    let err = verify_bytes(
        &root,
        Role::Release,
        RELEASE_PAYLOAD_TYPE,
        &env.to_json(),
        10,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BadSignature {
                role: Role::Release,
                ..
            }
        ),
        "{err:?}"
    );
    // A signature that is not even base64 is as bad.
    env.signatures[1].sig = "!!".into();
    let err = verify_bytes(
        &root,
        Role::Release,
        RELEASE_PAYLOAD_TYPE,
        &env.to_json(),
        10,
    )
    .unwrap_err();
    assert_eq!(err.code(), "bad_signature");
}

#[test]
fn signatures_without_key_id_are_matched_against_the_role_keys() {
    let root = trusted(1);
    let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(3)]);
    env.signatures[0].keyid.clear();
    verify_bytes(
        &root,
        Role::Release,
        RELEASE_PAYLOAD_TYPE,
        &env.to_json(),
        10,
    )
    .unwrap();
    let mut env = sign(RELEASE_PAYLOAD_TYPE, b"x", &[&key(9)]);
    env.signatures[0].keyid.clear();
    assert!(matches!(
        verify_bytes(
            &root,
            Role::Release,
            RELEASE_PAYLOAD_TYPE,
            &env.to_json(),
            10
        ),
        Err(VerifyError::UnknownKey { .. })
    ));
}

#[test]
fn every_error_has_a_distinct_code() {
    let a = AppName::new("a").unwrap();
    let d = DeviceId::new("d").unwrap();
    let k = KeyId::of(&key(1).verifying_key());
    let json_err = || serde_json::from_slice::<u8>(b"x").unwrap_err();
    let errors = [
        VerifyError::TooLarge {
            what: "x",
            len: 2,
            max: 1,
        },
        VerifyError::MalformedEnvelope {
            source: DsseError::Json { source: json_err() },
        },
        VerifyError::WrongPayloadType {
            expected: "a",
            got: "b".into(),
        },
        VerifyError::BadSignature {
            role: Role::Root,
            keyid: k.clone(),
        },
        VerifyError::UnknownKey { keyid: "x".into() },
        VerifyError::WrongRole {
            keyid: k,
            role: Role::Root,
        },
        VerifyError::BelowThreshold {
            role: Role::Root,
            have: 0,
            need: 1,
        },
        VerifyError::MalformedPayload {
            payload_type: "x",
            source: json_err(),
        },
        VerifyError::WrongDevice {
            expected: d.clone(),
            got: d,
        },
        VerifyError::Expired {
            expires_at: 1,
            now: 2,
        },
        VerifyError::StaleGeneration { got: 1, last: 1 },
        VerifyError::TooManyApps { count: 65, max: 64 },
        VerifyError::DuplicateApp { app: a.clone() },
        VerifyError::ReleaseDigestMismatch {
            app: a.clone(),
            expected: Digest::of(b"1"),
            actual: Digest::of(b"2"),
        },
        VerifyError::ReleaseAppMismatch {
            expected: a.clone(),
            got: a.clone(),
        },
        VerifyError::PrivilegedNotAllowed { app: a },
        VerifyError::RootExpired {
            version: 1,
            expires_at: 1,
            now: 2,
        },
        VerifyError::RootMissingLink { have: 1, got: 3 },
        VerifyError::RootRollback { have: 2, got: 1 },
        VerifyError::InvalidRoot {
            source: TrustError::ZeroVersion,
        },
    ];
    let codes: BTreeSet<&str> = errors.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), errors.len());
    for e in &errors {
        let info = e.to_error_info();
        assert_eq!(info.code, e.error_code());
        assert_ne!(info.code, ErrorCode::Unknown);
        assert!(info.message.starts_with(e.code()), "{}", info.message);
        // One vocabulary: a precise code that is also a wire code's name
        // reports as that wire code, and vice versa.
        for wire in ErrorCode::ALL {
            if wire.as_str() == e.code() {
                assert_eq!(
                    e.error_code(),
                    wire,
                    "{} reports as {}",
                    e.code(),
                    e.error_code()
                );
            }
        }
    }
    for wire in [ErrorCode::StaleGeneration, ErrorCode::WrongDevice] {
        let named: Vec<&str> = errors
            .iter()
            .filter(|e| e.error_code() == wire)
            .map(|e| e.code())
            .collect();
        assert_eq!(
            named,
            [wire.as_str()],
            "the only rejection reported as {wire}"
        );
    }
}
