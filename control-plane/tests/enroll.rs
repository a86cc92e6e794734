//! Enrollment end to end on loopback: the real server's engine and store,
//! the enrollment router over real TLS, the agent's own enrollment and
//! renewal code, and the real `fleetctl` binary for the admin side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod enroll_support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use enroll_support::Bench;
use fleet_agent::identity::enroll::{EnrollError, EnrollOptions, enroll};
use fleet_agent::identity::renew::{RenewError, renew_once};
use fleet_agent::identity::{self, Identity};
use fleet_control_plane::enroll::EnrollConfig;
use fleet_control_plane::store::{EnrollTokenRecord, Write};
use fleet_protocol::enroll::{EnrollRequest, EnrollToken};
use fleet_protocol::{DeviceId, GroupName};
use tokio_util::sync::CancellationToken;

fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn options(b: &Bench, token: &str, device: &str, state: &Path) -> EnrollOptions {
    let mut o = EnrollOptions::new(
        &b.https,
        EnrollToken::parse(token).unwrap(),
        dev(device),
        state.to_owned(),
    );
    o.poll_initial = Duration::from_millis(100);
    o.poll_max = Duration::from_millis(500);
    o
}

async fn try_enroll(
    b: &Bench,
    token: &str,
    device: &str,
    state: &Path,
) -> Result<Identity, EnrollError> {
    let opts = options(b, token, device, state);
    enroll(&opts, &CancellationToken::new()).await
}

/// `fleetctl enroll create` as an admin runs it: the token alone on stdout.
fn create_token(b: &Bench, config: &Path, args: &[&str]) -> String {
    let mut all = vec!["enroll", "create", "--group", "cameras"];
    all.extend_from_slice(args);
    let out = b.fleetctl(config, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(EnrollToken::parse(&token).is_ok(), "{token}");
    token
}

fn refused_with(result: Result<Identity, EnrollError>, status: u16) -> String {
    match result {
        Err(EnrollError::Refused {
            status: got,
            message,
            ..
        }) if got == status => message,
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolls_renews_and_is_refused_once_revoked() {
    let b = Bench::start(3600, EnrollConfig::default()).await;
    let config = tempfile::tempdir().unwrap();
    let token = create_token(&b, config.path(), &["--uses", "1", "--expires", "24h"]);
    let listed = b.fleetctl(config.path(), &["enroll", "list"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("0/1") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(token.split('_').nth(1).unwrap()));

    let state = tempfile::tempdir().unwrap();
    let id = try_enroll(&b, &token, "cam-01", state.path())
        .await
        .unwrap();
    assert_eq!(id.device, dev("cam-01"));
    let dir = identity::dir(state.path());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("device.key")), 0o600);
    for f in ["device.crt", "ca.crt", "identity.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(!dir.join("pending.key").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        b.ca_pem
    );
    let loaded = identity::load(state.path()).unwrap().unwrap();
    assert_eq!(loaded.serial, id.serial);
    // The device is in the token's group; the token is spent.
    let group = b
        .admin
        .group(&GroupName::new("cameras").unwrap())
        .await
        .unwrap();
    assert!(group.group.members.contains(&dev("cam-01")));
    let again = try_enroll(&b, &token, "cam-02", tempfile::tempdir().unwrap().path()).await;
    assert!(refused_with(again, 403).contains("used up"));

    // Renewal over TLS with the certificate as client certificate.
    let renewed = renew_once(&b.https, state.path(), &loaded).await.unwrap();
    assert_ne!(renewed.serial, loaded.serial);
    assert_ne!(
        renewed.client_identity().key_pem,
        loaded.client_identity().key_pem
    );
    assert_eq!(
        identity::load(state.path()).unwrap().unwrap().serial,
        renewed.serial
    );

    let out = b.fleetctl(config.path(), &["devices", "revoke", "cam-01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cam-01 revoked"));
    assert!(b.revoked.contains(&dev("cam-01")));
    for current in [&renewed, &loaded] {
        match renew_once(&b.https, state.path(), current).await {
            Err(RenewError::Refused {
                status: 403,
                message,
                ..
            }) => {
                assert!(message.contains("revoked"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // The files are the last good ones.
    assert_eq!(
        identity::load(state.path()).unwrap().unwrap().serial,
        renewed.serial
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_expired_forged_and_wrongly_pinned_tokens_are_refused() {
    let b = Bench::start(3600, EnrollConfig::default()).await;
    let fp = b.fingerprint.clone();
    let state = tempfile::tempdir().unwrap();
    // Forged: the right CA pin, a secret the server never made.
    let forged = EnrollToken::new([7; 32], &fp).unwrap().to_string();
    let msg = refused_with(try_enroll(&b, &forged, "cam-01", state.path()).await, 401);
    assert!(msg.contains("unknown enrollment token"), "{msg}");
    // Expired (the API makes none: written to the store).
    let expired = EnrollToken::new([8; 32], &fp).unwrap();
    b.store
        .commit(vec![Write::EnrollToken(EnrollTokenRecord {
            id: expired.id(),
            secret_sha256: expired.secret_sha256(),
            group: GroupName::new("cameras").unwrap(),
            uses: 10,
            used: 0,
            expires_at: common::now() - 1,
            approve: false,
            reenroll: false,
            created_at: common::now() - 60,
            revoked: false,
        })])
        .unwrap();
    let msg = refused_with(
        try_enroll(&b, &expired.to_string(), "cam-01", state.path()).await,
        403,
    );
    assert!(msg.contains("expired"), "{msg}");
    // A token pinning another CA: the device refuses the server first.
    let other_pin = EnrollToken::new([7; 32], &"ab".repeat(32))
        .unwrap()
        .to_string();
    match try_enroll(&b, &other_pin, "cam-01", state.path()).await {
        Err(EnrollError::WrongCa { got, .. }) => assert_eq!(got, fp),
        other => panic!("{other:?}"),
    }
    // Plain HTTP is no enrollment.
    let mut plain = options(&b, &forged, "cam-01", state.path());
    plain.server = b.http.clone();
    let err = enroll(&plain, &CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, EnrollError::NotHttps { .. }), "{err}");
    // Nothing was stored, no device joined.
    assert!(identity::load(state.path()).unwrap().is_none());
    assert!(!identity::dir(state.path()).join("device.key").exists());
    let group = b
        .admin
        .group(&GroupName::new("cameras").unwrap())
        .await
        .unwrap();
    assert!(group.group.members.is_empty());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_racing_on_a_single_use_token_enroll_one() {
    let b = Bench::start(3600, EnrollConfig::default()).await;
    let config = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let token = create_token(&b, config.path(), &["--uses", "1"]);
        let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, z) = (format!("race-{round}-a"), format!("race-{round}-b"));
        let (one, two) = tokio::join!(
            try_enroll(&b, &token, &a, s1.path()),
            try_enroll(&b, &token, &z, s2.path()),
        );
        assert_eq!(
            [&one, &two].iter().filter(|r| r.is_ok()).count(),
            1,
            "{one:?} {two:?}"
        );
        let loser = if one.is_ok() { two } else { one };
        assert!(refused_with(loser, 403).contains("used up"));
    }
    let tokens = b.admin.enroll_tokens().await.unwrap();
    assert!(tokens.iter().all(|t| t.used == 1));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_token_waits_until_an_admin_approves() {
    let b = Bench::start(3600, EnrollConfig::default()).await;
    let config = tempfile::tempdir().unwrap();
    let token = create_token(&b, config.path(), &["--uses", "1", "--approve"]);
    let state = tempfile::tempdir().unwrap();
    let opts = options(&b, &token, "cam-07", state.path());
    let waiting = tokio::spawn(async move { enroll(&opts, &CancellationToken::new()).await });
    let pending = loop {
        let p = b.admin.enroll_pending().await.unwrap();
        if !p.is_empty() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pending[0].device, dev("cam-07"));
    // The key the device waits with is the one kept for a restart.
    assert!(identity::dir(state.path()).join("pending.key").is_file());
    let out = b.fleetctl(config.path(), &["enroll", "pending"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pending[0].key_sha256));
    assert!(!waiting.is_finished());
    let out = b.fleetctl(config.path(), &["enroll", "approve", "cam-07"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id.device, dev("cam-07"));
    assert!(b.admin.enroll_pending().await.unwrap().is_empty());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_requests_is_rate_limited_and_the_server_stays_responsive() {
    let limits = EnrollConfig {
        rate: 2.0,
        burst: 10.0,
        peer_rate: 1.0,
        peer_burst: 10.0,
        ..EnrollConfig::default()
    };
    let b = Bench::start(3600, limits).await;
    let http = b.https_client();
    let url = format!("{}/enroll/v1", b.https);
    let burst = (0..200u8).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        let body = EnrollRequest {
            token: EnrollToken::new([i; 32], &b.fingerprint)
                .unwrap()
                .to_string(),
            device: format!("flood-{i}"),
            csr: "not a csr".into(),
        };
        tokio::spawn(async move {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").cloned();
            (r.status().as_u16(), retry)
        })
    });
    let burst: Vec<_> = burst.collect();
    // While it runs, the same listener still answers.
    for _ in 0..5 {
        let h = http
            .get(format!("{}/healthz", b.https))
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), 200);
    }
    let mut limited = 0;
    let mut other = Vec::new();
    for task in burst {
        match task.await.unwrap() {
            (429, Some(retry)) => {
                assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                limited += 1;
            }
            (status, _) => other.push(status),
        }
    }
    // Only the burst and what the rate refilled meanwhile got through, and
    // those were refused for what they are (a bad CSR, an unknown token).
    assert!(limited >= 150, "{limited} limited, others {other:?}");
    assert!(other.iter().all(|s| *s == 400 || *s == 401), "{other:?}");
    // The device list did not grow.
    assert!(b.admin.devices().await.unwrap().is_empty());
    assert!(b.admin.enroll_pending().await.unwrap().is_empty());
    b.stop().await;
}
