//! Properties of signed envelopes: whatever the payload, sign → JSON → parse →
//! verify gives back the exact bytes, and changing any single payload byte
//! makes verification fail on the signature (before the payload is parsed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod fixture_gen;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fleet_protocol::dsse::{self, Envelope, RELEASE_PAYLOAD_TYPE};
use fleet_protocol::trust::Role;
use fleet_protocol::verify::verify_bytes;
use fleet_protocol::{TrustedRoot, VerifyError, verify_release};
use proptest::prelude::*;

fn root() -> TrustedRoot {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/trust.json"
    ))
    .unwrap();
    TrustedRoot::bootstrap(&bytes, fixture_gen::NOW).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn sign_then_verify_round_trips_any_payload(payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let keys = fixture_gen::keys();
        let root = root();
        let envelope = dsse::sign(RELEASE_PAYLOAD_TYPE, &payload, &[&keys.release]);
        let json = envelope.to_json();
        prop_assert_eq!(&Envelope::from_json(&json, 1 << 20).unwrap(), &envelope);
        let verified = verify_bytes(&root, Role::Release, RELEASE_PAYLOAD_TYPE, &json, fixture_gen::NOW).unwrap();
        prop_assert_eq!(verified.as_slice(), payload.as_slice());
        prop_assert_eq!(verified.payload_digest(), &fleet_protocol::Digest::of(&payload));
        // The same key signing for the wrong role is refused.
        prop_assert!(
            matches!(
                verify_bytes(&root, Role::Director, RELEASE_PAYLOAD_TYPE, &json, fixture_gen::NOW),
                Err(VerifyError::WrongRole { .. })
            ),
            "release key accepted for the director role"
        );
    }

    #[test]
    fn any_flipped_payload_byte_fails_the_signature(
        payload in proptest::collection::vec(any::<u8>(), 1..1024),
        index in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let keys = fixture_gen::keys();
        let root = root();
        let mut envelope = dsse::sign(RELEASE_PAYLOAD_TYPE, &payload, &[&keys.release]);
        let mut changed = payload.clone();
        let i = index.index(changed.len());
        changed[i] ^= mask;
        envelope.payload = STANDARD.encode(&changed);
        let json = envelope.to_json();
        let generic = verify_bytes(&root, Role::Release, RELEASE_PAYLOAD_TYPE, &json, fixture_gen::NOW);
        prop_assert!(
            matches!(generic, Err(VerifyError::BadSignature { .. })),
            "flipped byte {} accepted: {:?}", i, generic.map(|v| v.len())
        );
        // The typed verifier fails the same way: signatures come before parsing,
        // so even a payload that is not a release is a bad signature, not malformed.
        let typed = verify_release(&root, &json, fixture_gen::NOW);
        prop_assert!(matches!(typed, Err(VerifyError::BadSignature { .. })), "{:?}", typed.err());
    }

    #[test]
    fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(verify_release(&root(), &bytes, fixture_gen::NOW).is_err());
        prop_assert!(TrustedRoot::bootstrap(&bytes, fixture_gen::NOW).is_err());
    }
}
