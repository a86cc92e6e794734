//! The enrollment rules against a real engine and store (no HTTP): what a
//! token allows, the locked step's atomicity, approval, re-enrollment,
//! renewal and revocation.

use std::sync::Arc;

use fleet_protocol::enroll::{EnrollRequest, EnrollToken, Issued, RenewRequest};
use fleet_protocol::{DeviceId, GroupName, TrustedRoot};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::admin::{self, CreateEnrollToken};
use super::service::{self, Enrolled};
use super::*;
use crate::director::Director;
use crate::fleet::CreateGroup;
use crate::fleet::ports::{NoPreparation, RecordingPublisher};
use crate::pki::PeerCert;
use crate::store::{EnrollTokenRecord, SledStore, Write};
use crate::telemetry::IngestCounters;

struct Bench {
    _dir: tempfile::TempDir,
    state: EnrollState,
}

fn now() -> u64 {
    crate::fleet::now()
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn cameras() -> GroupName {
    GroupName::new("cameras").unwrap()
}

async fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    crate::keys::init(&keys, 365, false, now()).unwrap();
    let director = Director::load(&keys.join("director.key"), 7 * 86_400, 86_400).unwrap();
    let trust =
        TrustedRoot::bootstrap(&std::fs::read(keys.join("trust.json")).unwrap(), now()).unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let fleet = Fleet::new(
        store,
        director,
        trust,
        Arc::new(RecordingPublisher::new()),
        Arc::new(NoPreparation),
        IngestCounters::new(),
    );
    fleet
        .create_group(CreateGroup {
            name: cameras(),
            selector: [("role".to_owned(), "camera".to_owned())].into(),
            members: vec![],
        })
        .await
        .unwrap();
    let ca = FleetCa::open_or_create(&dir.path().join("pki"), now()).unwrap();
    let state = EnrollState::new(
        fleet,
        Arc::new(ca),
        Revoked::default(),
        &EnrollConfig::default(),
        3600,
    );
    Bench { _dir: dir, state }
}

fn csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

impl Bench {
    async fn token(&self, uses: u32, approve: bool, reenroll: bool) -> String {
        admin::create_token(
            &self.state,
            CreateEnrollToken {
                group: cameras(),
                uses,
                expires_in_secs: 3600,
                approve,
                reenroll,
            },
        )
        .await
        .unwrap()
        .token
    }

    async fn enroll(&self, token: &str, device: &str, csr: &str) -> Result<Enrolled, EnrollError> {
        let req = EnrollRequest {
            token: token.to_owned(),
            device: device.to_owned(),
            csr: csr.to_owned(),
        };
        service::enroll(&self.state, req, None).await
    }

    async fn issued(&self, token: &str, device: &str, csr: &str) -> Issued {
        match self.enroll(token, device, csr).await {
            Ok(Enrolled::Issued(i)) => i,
            other => panic!("{device}: {other:?}"),
        }
    }

    async fn members(&self) -> Vec<DeviceId> {
        let g = self.state.fleet.group(cameras()).await.unwrap();
        g.group.members.into_iter().collect()
    }

    fn token_record(&self, token: &str) -> EnrollTokenRecord {
        let t = EnrollToken::parse(token).unwrap();
        self.state
            .store()
            .enroll_token(&t.secret_sha256())
            .unwrap()
            .unwrap()
    }
}

fn peer_of(issued: &Issued) -> PeerCert {
    let der = CertificateDer::from_pem_slice(issued.certificate.as_bytes()).unwrap();
    crate::pki::peer_device(&der).unwrap()
}

#[tokio::test]
async fn a_token_enrolls_into_its_group_once_per_use() {
    let b = bench().await;
    let token = b.token(2, false, false).await;
    let a = b.issued(&token, "cam-a", &csr().1).await;
    b.issued(&token, "cam-b", &csr().1).await;
    let err = b.enroll(&token, "cam-c", &csr().1).await.unwrap_err();
    assert!(
        matches!(
            err,
            EnrollError::TokenUnusable {
                why: TokenUnusable::UsedUp,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(b.members().await, [id("cam-a"), id("cam-b")]);
    assert_eq!(b.token_record(&token).used, 2);
    assert_eq!(peer_of(&a).device, id("cam-a"));
    assert!(a.not_after <= now() + 3600 && a.not_after >= now() + 3590);
    assert_eq!(a.ca, b.state.ca.cert_pem());
    let record = b.state.store().device_cert(&id("cam-a")).unwrap().unwrap();
    assert_eq!(record.current().unwrap().serial, a.serial);
    // Never the token in a listing.
    let listed = admin::list_tokens(&b.state).await.unwrap();
    assert_eq!(listed[0].state, "used up");
    let json = serde_json::to_string(&listed).unwrap();
    let secret = token.split('_').nth(1).unwrap();
    assert!(!json.contains(secret));
    assert!(!json.contains(&b.token_record(&token).secret_sha256));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_requests_on_a_single_use_token_enroll_one_device() {
    let b = bench().await;
    for round in 0..5 {
        let token = b.token(1, false, false).await;
        let (a, b_) = (format!("r{round}-a"), format!("r{round}-b"));
        let (csr_a, csr_b) = (csr().1, csr().1);
        let (one, two) = tokio::join!(b.enroll(&token, &a, &csr_a), b.enroll(&token, &b_, &csr_b));
        let oks = [&one, &two].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "{one:?} {two:?}");
        let refused = if one.is_ok() { two } else { one };
        assert!(matches!(
            refused,
            Err(EnrollError::TokenUnusable {
                why: TokenUnusable::UsedUp,
                ..
            })
        ));
        assert_eq!(b.token_record(&token).used, 1);
    }
    assert_eq!(b.members().await.len(), 5);
}

#[tokio::test]
async fn a_repeated_request_is_answered_again_without_spending_a_use() {
    let b = bench().await;
    let token = b.token(1, false, false).await;
    let (_key, csr) = csr();
    let first = b.issued(&token, "cam-a", &csr).await;
    let again = b.issued(&token, "cam-a", &csr).await;
    assert_ne!(first.serial, again.serial);
    assert_eq!(b.token_record(&token).used, 1);
    // Another key for the same id is no repeat.
    let err = b.enroll(&token, "cam-a", &super::tests::csr().1).await;
    assert!(matches!(err, Err(EnrollError::OtherKey { .. })), "{err:?}");
}

#[tokio::test]
async fn another_key_for_an_enrolled_device_needs_a_reenroll_token() {
    let b = bench().await;
    let plain = b.token(5, false, false).await;
    b.issued(&plain, "cam-a", &csr().1).await;
    let err = b.enroll(&plain, "cam-a", &csr().1).await.unwrap_err();
    assert!(matches!(err, EnrollError::OtherKey { .. }), "{err}");
    assert!(err.to_string().contains("--reenroll"));
    let reenroll = b.token(1, false, true).await;
    let (key, new_csr) = csr();
    b.issued(&reenroll, "cam-a", &new_csr).await;
    let record = b.state.store().device_cert(&id("cam-a")).unwrap().unwrap();
    assert_eq!(record.issued.len(), 2);
    assert_eq!(
        record.key_sha256,
        fleet_protocol::enroll::sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(&key))
    );
}

#[tokio::test]
async fn forged_other_ca_expired_and_revoked_tokens_are_refused() {
    let b = bench().await;
    let fp = b.state.ca.fingerprint().to_owned();
    let forged = EnrollToken::new([9; 32], &fp).unwrap().to_string();
    let other_ca = EnrollToken::new([9; 32], &"0".repeat(64))
        .unwrap()
        .to_string();
    for (token, want) in [
        (forged.as_str(), "unknown"),
        ("fleet-enroll_nonsense", "unknown"),
        (other_ca.as_str(), "another fleet CA"),
    ] {
        let err = b.enroll(token, "cam-a", &csr().1).await.unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // Expired: written straight to the store (the API makes none).
    let expired = EnrollToken::new([3; 32], &fp).unwrap();
    b.state
        .store()
        .commit(vec![Write::EnrollToken(EnrollTokenRecord {
            id: expired.id(),
            secret_sha256: expired.secret_sha256(),
            group: cameras(),
            uses: 5,
            used: 0,
            expires_at: now() - 1,
            approve: false,
            reenroll: false,
            created_at: now() - 100,
            revoked: false,
        })])
        .unwrap();
    let err = b
        .enroll(&expired.to_string(), "cam-a", &csr().1)
        .await
        .unwrap_err();
    assert!(err.to_string().ends_with("is expired"), "{err}");
    let token = b.token(5, false, false).await;
    let id = b.token_record(&token).id;
    assert!(admin::revoke_token(&b.state, id).await.unwrap().revoked);
    let err = b.enroll(&token, "cam-a", &csr().1).await.unwrap_err();
    assert!(err.to_string().ends_with("is revoked"), "{err}");
    assert!(b.members().await.is_empty());
    // Bad device ids and CSRs.
    let err = b.enroll(&token, "Cam A", &csr().1).await.unwrap_err();
    assert!(matches!(err, EnrollError::BadDevice { .. }), "{err}");
    let err = b.enroll(&token, "cam-a", "junk").await.unwrap_err();
    assert!(matches!(err, EnrollError::BadCsr(_)), "{err}");
}

#[tokio::test]
async fn an_approval_token_waits_for_the_admin() {
    let b = bench().await;
    let token = b.token(2, true, false).await;
    let (_key, csr_a) = csr();
    assert!(matches!(
        b.enroll(&token, "cam-a", &csr_a).await,
        Ok(Enrolled::Pending)
    ));
    assert!(matches!(
        b.enroll(&token, "cam-a", &csr_a).await,
        Ok(Enrolled::Pending)
    ));
    // Someone else claiming the id with another key.
    let err = b.enroll(&token, "cam-a", &csr().1).await.unwrap_err();
    assert!(matches!(err, EnrollError::PendingOtherKey { .. }), "{err}");
    // Waiting enrollments count against the uses.
    assert!(matches!(
        b.enroll(&token, "cam-b", &csr().1).await,
        Ok(Enrolled::Pending)
    ));
    let err = b.enroll(&token, "cam-c", &csr().1).await.unwrap_err();
    assert!(err.to_string().ends_with("used up"), "{err}");
    let pending = admin::pending(&b.state).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].key_sha256.len() == 64 && !pending[0].approved);
    // Reject one, approve the other.
    admin::decide(&b.state, id("cam-b"), false).await.unwrap();
    admin::decide(&b.state, id("cam-a"), true).await.unwrap();
    b.issued(&token, "cam-a", &csr_a).await;
    assert!(admin::pending(&b.state).await.unwrap().is_empty());
    assert_eq!(b.members().await, [id("cam-a")]);
    let err = admin::decide(&b.state, id("cam-z"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn renewal_takes_any_valid_certificate_of_the_device_until_it_is_revoked() {
    let b = bench().await;
    let token = b.token(1, false, false).await;
    let first = b.issued(&token, "cam-a", &csr().1).await;
    let renew = |peer: Option<PeerCert>| {
        let state = b.state.clone();
        async move { service::renew(&state, peer, RenewRequest { csr: csr().1 }).await }
    };
    let second = renew(Some(peer_of(&first))).await.unwrap();
    assert_eq!(peer_of(&second).device, id("cam-a"));
    // The answer was lost: the first certificate renews again.
    let third = renew(Some(peer_of(&first))).await.unwrap();
    assert_ne!(second.serial, third.serial);
    // No certificate, or one this device was never issued.
    let err = renew(None).await.unwrap_err();
    assert!(matches!(err, EnrollError::NoClientCertificate), "{err}");
    let mut stranger = peer_of(&third);
    stranger.serial = "4242".into();
    let err = renew(Some(stranger)).await.unwrap_err();
    assert!(
        matches!(err, EnrollError::UnknownCertificate { .. }),
        "{err}"
    );

    let revoked = admin::revoke_device(&b.state, id("cam-a")).await.unwrap();
    assert_eq!(revoked.serials.len(), 3);
    assert!(b.state.revoked.contains(&id("cam-a")));
    assert!(b.state.store().revoked(&id("cam-a")).unwrap().is_some());
    let err = renew(Some(peer_of(&third))).await.unwrap_err();
    assert!(matches!(err, EnrollError::DeviceRevoked { .. }), "{err}");
    // Even with a fresh token, and after a restart (the set from the store).
    let again = b.token(1, false, true).await;
    let err = b.enroll(&again, "cam-a", &csr().1).await.unwrap_err();
    assert!(matches!(err, EnrollError::DeviceRevoked { .. }), "{err}");
    let reloaded = revoked_from_store(b.state.store().as_ref()).unwrap();
    assert!(reloaded.contains(&id("cam-a")));
    // Revoking again changes nothing; an unknown device is named.
    let twice = admin::revoke_device(&b.state, id("cam-a")).await.unwrap();
    assert_eq!(twice, revoked);
    let err = admin::revoke_device(&b.state, id("nobody"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("device nobody not found"), "{err}");
}

#[tokio::test]
async fn tokens_are_made_for_existing_groups_with_sane_limits_only() {
    let b = bench().await;
    let req = |group: &str, uses, expires_in_secs| CreateEnrollToken {
        group: GroupName::new(group).unwrap(),
        uses,
        expires_in_secs,
        approve: false,
        reenroll: false,
    };
    let err = admin::create_token(&b.state, req("nope", 1, 3600))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("group nope not found"), "{err}");
    for (uses, secs) in [(0, 3600), (1, 10), (1, 400 * 86_400)] {
        let err = admin::create_token(&b.state, req("cameras", uses, secs))
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Invalid(_)), "{err}");
    }
    let made = admin::create_token(&b.state, req("cameras", 3, 3600))
        .await
        .unwrap();
    let token = EnrollToken::parse(&made.token).unwrap();
    assert_eq!(token.ca_fingerprint(), b.state.ca.fingerprint());
    assert_eq!(made.view.id, token.id());
    assert!(!format!("{made:?}").contains(&made.token));
    let err = admin::revoke_token(&b.state, "0000000000000000".into())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::NotFound { .. }), "{err}");
}

#[test]
fn the_config_refuses_rates_that_cannot_work() {
    assert!(EnrollConfig::default().validate().is_ok());
    let bad = [
        EnrollConfig {
            rate: 0.0,
            ..Default::default()
        },
        EnrollConfig {
            peer_burst: 0.5,
            ..Default::default()
        },
        EnrollConfig {
            renew_rate: f64::NAN,
            ..Default::default()
        },
        EnrollConfig {
            max_pending: 0,
            ..Default::default()
        },
    ];
    for c in bad {
        assert!(c.validate().is_err(), "{c:?}");
    }
}
