//! Registries that lie, cut, tamper or demand credentials: a tiny raw HTTP
//! server plays them, so every byte on the wire is under the test's control.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use fleet_agent::fetch::{
    Client, ClientConfig, Credentials, FetchError, ImageRef, Platform, RetryPolicy,
};
use fleet_agent::pull::{PullError, PullSummary, Puller};
use fleet_agent::store::{Store, StoreConfig};
use fleet_protocol::Digest;
use support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Honest,
    WrongBytes,
    DeclaresMore,
    EofDelimitedMore,
    AlwaysShort,
    CutThenIgnoresRange,
    HugeManifest,
    HugeManifestNoLength,
    Bearer,
    Basic,
}

struct Fake {
    server: RawServer,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

const TOKEN: &str = "secret-token";

async fn fake(mode: Mode) -> Fake {
    let layer = random_bytes(200_000, 7);
    let l = raw_layer(layer.clone());
    let config = config_for(std::slice::from_ref(&l), "amd64");
    let manifest = manifest_for(&config, std::slice::from_ref(&l));
    let layer_path = format!("/v2/r/app/blobs/{}", Digest::of(&layer));
    let config_path = format!("/v2/r/app/blobs/{}", Digest::of(&config));
    let me: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let (m, lay, me2) = (manifest.clone(), layer.clone(), me.clone());
    let layer_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = RawServer::start(move |req| {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:pw")
        );
        match mode {
            Mode::Bearer if req.path.starts_with("/token") => {
                let want = "scope=repository%3Ar%2Fapp%3Apull";
                if !req.path.contains(want) || !req.path.contains("service=fake") {
                    return response("400 Bad Request", &[], b"");
                }
                let body = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#);
                return ok("application/json", body.as_bytes());
            }
            Mode::Bearer if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) => {
                let realm = format!(
                    r#"Bearer realm="http://{}/token",service="fake",scope="repository:r/app:pull""#,
                    me2.get().unwrap()
                );
                return response("401 Unauthorized", &[("WWW-Authenticate", realm), ("Content-Length", "0".into())], b"");
            }
            Mode::Basic if req.header("authorization") != Some(basic.as_str()) => {
                return response(
                    "401 Unauthorized",
                    &[("WWW-Authenticate", r#"Basic realm="fake""#.into()), ("Content-Length", "0".into())],
                    b"",
                );
            }
            _ => {}
        }
        if req.path == "/v2/r/app/manifests/1" {
            return match mode {
                Mode::HugeManifest => ok(OCI_MANIFEST, &vec![b' '; 5 << 20]),
                Mode::HugeManifestNoLength => {
                    response("200 OK", &[("Content-Type", OCI_MANIFEST.into())], &vec![b' '; 5 << 20])
                }
                _ => ok(OCI_MANIFEST, &m),
            };
        }
        if req.path == config_path {
            return ok("application/octet-stream", &config);
        }
        if req.path != layer_path {
            return response("404 Not Found", &[("Content-Length", "0".into())], b"");
        }
        let n = layer_hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let size = lay.len();
        let cl = |n: usize| ("Content-Length", n.to_string());
        match mode {
            Mode::WrongBytes => {
                let mut bad = lay.clone();
                bad[size / 2] ^= 1;
                ok("application/octet-stream", &bad)
            }
            Mode::DeclaresMore => {
                let mut more = lay.clone();
                more.extend_from_slice(&[0; 10]);
                ok("application/octet-stream", &more)
            }
            Mode::EofDelimitedMore => {
                let mut more = lay.clone();
                more.extend_from_slice(&[0; 10]);
                response("200 OK", &[], &more)
            }
            Mode::AlwaysShort => response("200 OK", &[cl(size)], &lay[..size / 2]),
            Mode::CutThenIgnoresRange if n == 0 => response("200 OK", &[cl(size)], &lay[..size / 2]),
            _ => ok("application/octet-stream", &lay),
        }
    })
    .await;
    me.set(server.addr.to_string()).unwrap();
    Fake {
        server,
        layer,
        manifest,
    }
}

fn config(creds: bool) -> ClientConfig {
    let mut cfg = ClientConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..ClientConfig::default()
    };
    if creds {
        cfg.credentials.insert(
            "127.0.0.1".into(),
            Credentials {
                username: "user".into(),
                password: "pw".into(),
            },
        );
    }
    cfg
}

async fn pull(f: &Fake, state: &Path, cfg: ClientConfig) -> Result<PullSummary, PullError> {
    let store = Arc::new(
        Store::open(
            state,
            StoreConfig {
                reserve_bytes: 0,
                cache_bytes: 256 * 1024,
            },
        )
        .unwrap(),
    );
    let mut cfg = cfg;
    // Credentials are keyed by the registry as written in the reference.
    if let Some(c) = cfg.credentials.remove("127.0.0.1") {
        cfg.credentials.insert(f.server.addr.to_string(), c);
    }
    let puller = Puller::new(
        Client::new(cfg).unwrap(),
        store,
        Platform::parse("linux/amd64").unwrap(),
    );
    let r = ImageRef::parse(&format!("{}/r/app:1", f.server.addr)).unwrap();
    puller.pull(&r, Arc::new(|_| {})).await
}

/// The bad layer is neither in the store nor in its temp area, and no
/// manifest was stored.
fn assert_nothing_kept(f: &Fake, state: &Path) {
    let layer = Digest::of(&f.layer);
    assert!(!state.join("blobs/sha256").join(layer.hex()).exists());
    assert!(
        !state
            .join("blobs/sha256")
            .join(Digest::of(&f.manifest).hex())
            .exists()
    );
    // (Other blobs' downloads, stopped when this one failed, may stay to be resumed.)
    let tmp: Vec<_> = tmp_files(state)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(layer.hex()))
        .collect();
    assert!(tmp.is_empty(), "left in tmp: {tmp:?}");
}

#[tokio::test]
async fn an_honest_server_works_and_a_second_pull_only_asks_for_the_manifest() {
    let f = fake(Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let s = pull(&f, dir.path(), config(false)).await.unwrap();
    assert_eq!(s.layers, vec![Digest::of(&f.layer)]);
    let again = pull(&f, dir.path(), config(false)).await.unwrap();
    assert_eq!(again.bytes_fetched, f.manifest.len() as u64);
    assert_eq!(
        f.server.hits_for("/v2/r/app/blobs/"),
        2,
        "config and layer once each"
    );
}

#[tokio::test]
async fn wrong_bytes_are_a_digest_mismatch() {
    let f = fake(Mode::WrongBytes).await;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
    assert!(
        matches!(err, PullError::Fetch(FetchError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("not the expected"), "{err}");
    assert_nothing_kept(&f, dir.path());
}

#[tokio::test]
async fn a_content_length_beyond_the_descriptor_is_refused() {
    let f = fake(Mode::DeclaresMore).await;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
    match &err {
        PullError::Fetch(FetchError::LengthMismatch {
            expected, declared, ..
        }) => {
            assert_eq!(*expected, f.layer.len() as u64);
            assert_eq!(*declared, f.layer.len() as u64 + 10);
        }
        other => panic!("expected a length mismatch, got {other}"),
    }
    assert_nothing_kept(&f, dir.path());
}

#[tokio::test]
async fn more_bytes_than_the_descriptor_without_a_length_are_refused() {
    let f = fake(Mode::EofDelimitedMore).await;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
    assert!(
        matches!(err, PullError::Fetch(FetchError::TooLong { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("sent more than"), "{err}");
    assert_nothing_kept(&f, dir.path());
}

#[tokio::test]
async fn fewer_bytes_than_declared_fail_after_retries_keeping_the_partial_for_later() {
    let f = fake(Mode::AlwaysShort).await;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
    match &err {
        PullError::Fetch(FetchError::Truncated {
            expected, received, ..
        }) => {
            assert_eq!(*expected, f.layer.len() as u64);
            assert!(*received < *expected);
        }
        other => panic!("expected a truncation, got {other}"),
    }
    assert_eq!(
        f.server
            .hits_for(&format!("/v2/r/app/blobs/{}", Digest::of(&f.layer))),
        3
    );
    let layer = Digest::of(&f.layer);
    assert!(!dir.path().join("blobs/sha256").join(layer.hex()).exists());
    // What arrived is kept (with its journal) for a later resume, in tmp only.
    let partial = dir
        .path()
        .join("tmp")
        .join(format!("{}.partial", layer.hex()));
    assert_eq!(
        std::fs::read(&partial).unwrap(),
        f.layer[..f.layer.len() / 2]
    );
}

#[tokio::test]
async fn a_server_ignoring_range_makes_the_download_start_over_cleanly() {
    let f = fake(Mode::CutThenIgnoresRange).await;
    let dir = tempfile::tempdir().unwrap();
    let s = pull(&f, dir.path(), config(false)).await.unwrap();
    let layer = Digest::of(&f.layer);
    assert_eq!(
        std::fs::read(dir.path().join("blobs/sha256").join(layer.hex())).unwrap(),
        f.layer
    );
    let hits = f.server.hits.lock().unwrap().clone();
    let second = hits
        .iter()
        .filter(|r| r.path.ends_with(layer.as_str()))
        .nth(1)
        .expect("a second request for the layer");
    assert_eq!(
        second.header("range"),
        Some(format!("bytes={}-", f.layer.len() / 2).as_str())
    );
    // Half, then the whole blob again.
    let size = f.layer.len() as u64;
    assert!(s.bytes_fetched >= size + size / 2);
}

#[tokio::test]
async fn manifests_over_the_limit_are_refused_with_or_without_a_length() {
    for mode in [Mode::HugeManifest, Mode::HugeManifestNoLength] {
        let f = fake(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
        match &err {
            PullError::Fetch(FetchError::ManifestTooLarge { limit, size, .. }) => {
                assert_eq!(*limit, 4 << 20);
                assert_eq!(size.is_some(), mode == Mode::HugeManifest);
            }
            other => panic!("{mode:?}: expected ManifestTooLarge, got {other}"),
        }
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(blob_files(dir.path()).is_empty());
        assert!(tmp_files(dir.path()).is_empty());
        assert_eq!(f.server.hits_for("/v2/r/app/blobs/"), 0);
    }
}

#[tokio::test]
async fn bearer_tokens_are_obtained_from_the_challenge_and_cached() {
    let f = fake(Mode::Bearer).await;
    let dir = tempfile::tempdir().unwrap();
    let s = pull(&f, dir.path(), config(false)).await.unwrap();
    assert_eq!(s.layers, vec![Digest::of(&f.layer)]);
    assert_eq!(
        f.server.hits_for("/token"),
        1,
        "one token for manifest, config and layer"
    );
    let hits = f.server.hits.lock().unwrap().clone();
    let authed = hits
        .iter()
        .filter(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")))
        .count();
    assert_eq!(authed, 3);
}

#[tokio::test]
async fn basic_auth_needs_credentials_and_uses_them() {
    let f = fake(Mode::Basic).await;
    let dir = tempfile::tempdir().unwrap();
    let err = pull(&f, dir.path(), config(false)).await.unwrap_err();
    assert!(
        matches!(err, PullError::Fetch(FetchError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("no credentials"), "{err}");
    let s = pull(&f, dir.path(), config(true)).await.unwrap();
    assert_eq!(s.layers, vec![Digest::of(&f.layer)]);
}
