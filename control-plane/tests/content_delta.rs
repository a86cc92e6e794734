//! Layer deltas from the content endpoint over real HTTP on loopback: two
//! versions of an image (gzip'd layers, a model-like file with 1% of its
//! bytes changed) imported as an OCI layout; the first request answers
//! "not ready", then the delta is served (with Range) and rebuilds the new
//! layer's exact tar from the old layer's unpacked files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod layers;

use layers::{gzip, layer_tar, noise};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet_control_plane::content::{
    self, DELTA_LAYER_SIZE, DELTA_TARGET, DeltaOptions, Deltas, import_oci_layout, media_type,
};
use fleet_protocol::Digest;
use fleet_protocol::delta::{DirBases, Limits, apply, skeleton};
use serde_json::{Value, json};

/// An OCI layout with one image (one gzip'd layer) tagged `tag`. Returns
/// (layer blob digest, diff_id).
fn layout(dir: &Path, tag: &str, tar: &[u8]) -> (Digest, Digest) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let diff_id = Digest::of(tar);
    let gz = gzip(tar);
    let blob = put(&gz);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": media_type::OCI_LAYER_GZIP, "digest": blob, "size": gz.len() }],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (blob, diff_id)
}

struct Fixture {
    store: content::ContentStore,
    v1: (Digest, Digest),
    v2: (Digest, Digest),
    v1_tar: Vec<u8>,
    other: (Digest, Digest),
    _work: tempfile::TempDir,
    data: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = content::ContentStore::open(data.path()).unwrap();
    let model = noise(3 << 20, 7);
    let mut model2 = model.clone();
    // 1% of the bytes changed, in place, spread over the file.
    for i in (0..model2.len()).step_by(100) {
        model2[i] ^= 0x5a;
    }
    let v1_tar = layer_tar(&[
        ("etc/app.conf", b"threshold = 0.5\n"),
        ("models/net.onnx", &model),
    ]);
    let v2_tar = layer_tar(&[
        ("etc/app.conf", b"threshold = 0.7\n"),
        ("models/net.onnx", &model2),
    ]);
    let other_tar = layer_tar(&[("models/net.onnx", &noise(3 << 20, 99))]);
    let mut digests = Vec::new();
    for (tag, tar) in [("v1", &v1_tar), ("v2", &v2_tar), ("other", &other_tar)] {
        let dir = work.path().join(tag);
        digests.push(layout(&dir, tag, tar));
        import_oci_layout(&store, &dir, "edge/app", None)
            .await
            .unwrap();
    }
    Fixture {
        store,
        v1: digests[0].clone(),
        v2: digests[1].clone(),
        other: digests[2].clone(),
        v1_tar,
        _work: work,
        data,
    }
}

async fn serve(deltas: Deltas) -> SocketAddr {
    let app = content::router_with_deltas(deltas);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn delta_url(addr: SocketAddr, layer: &Digest, bases: &[&Digest]) -> String {
    let bases: Vec<&str> = bases.iter().map(|d| d.as_str()).collect();
    format!(
        "http://{addr}/v2/edge/app/deltas/{layer}?bases={}",
        bases.join(",")
    )
}

/// GETs `url` until it is no longer 202 (at most ~5 min: a liveness bound
/// for a loaded machine, not a timing); returns the last answer and how
/// many 202s came first.
async fn until_ready(http: &reqwest::Client, url: &str) -> (reqwest::Response, u32) {
    for pending in 0..3000u32 {
        let r = http.get(url).send().await.unwrap();
        if r.status() != reqwest::StatusCode::ACCEPTED {
            return (r, pending);
        }
        assert_eq!(r.headers()["retry-after"], "2");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DELTA_PENDING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delta of {url} was never ready");
}

fn unpack(tar_bytes: &[u8], dest: &Path) {
    tar::Archive::new(tar_bytes).unpack(dest).unwrap();
}

#[tokio::test]
async fn a_changed_layer_is_served_as_a_small_delta_that_rebuilds_its_exact_tar() {
    let f = fixture().await;
    let addr = serve(Deltas::new(f.store.clone(), DeltaOptions::default())).await;
    let http = reqwest::Client::new();
    let url = delta_url(addr, &f.v2.0, &[&f.v1.1]);
    let (r, pending) = until_ready(&http, &url).await;
    assert!(pending >= 1, "the first request answers 'not ready'");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[DELTA_TARGET], f.v2.1.as_str());
    let layer_size = f.store.blob_size(&f.v2.0).unwrap();
    assert_eq!(
        r.headers()[DELTA_LAYER_SIZE],
        layer_size.to_string().as_str()
    );
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let delta_digest = Digest::new(r.headers()["docker-content-digest"].to_str().unwrap()).unwrap();
    let delta = r.bytes().await.unwrap().to_vec();
    assert_eq!(Digest::of(&delta), delta_digest);
    eprintln!(
        "delta {} bytes, gzip'd layer {layer_size} bytes",
        delta.len()
    );
    // 1% of 3 MiB changed: the delta is a small fraction of the gzip'd layer.
    assert!(
        (delta.len() as u64) * 5 < layer_size,
        "delta {} bytes vs layer {layer_size}",
        delta.len()
    );

    // The device side: base files from the old layer's unpacked tree, and
    // the skeleton it computed from the old layer's tar while unpacking.
    let base_dir = tempfile::tempdir().unwrap();
    unpack(&f.v1_tar, &base_dir.path().join("fs"));
    let skeleton_file = base_dir.path().join("skeleton");
    skeleton(
        &f.v1_tar[..],
        std::fs::File::create(&skeleton_file).unwrap(),
    )
    .unwrap();
    let mut bases = DirBases::new();
    bases.insert(f.v1.1.clone(), base_dir.path().join("fs"));
    bases.set_skeleton(f.v1.1.clone(), skeleton_file);
    let mut rebuilt = Vec::new();
    let applied = apply(
        &delta[..],
        &bases,
        &mut rebuilt,
        &f.v2.1,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        applied.sha256, f.v2.1,
        "the rebuilt tar is the layer's diff_id"
    );
    assert_eq!(Digest::of(&rebuilt), f.v2.1);

    // Ranges, as for blobs (a resumed download).
    let r = http
        .get(&url)
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let range = format!("bytes 100-{}/{}", delta.len() - 1, delta.len());
    assert_eq!(r.headers()["content-range"], range.as_str());
    assert_eq!(r.bytes().await.unwrap(), &delta[100..]);
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        delta.len().to_string().as_str()
    );
}

#[tokio::test]
async fn deltas_survive_a_restart_and_are_counted_when_served() {
    let f = fixture().await;
    let first = Deltas::new(f.store.clone(), DeltaOptions::default());
    first.prepare(&f.v2.0, std::slice::from_ref(&f.v1.1));
    let addr = serve(first.clone()).await;
    let http = reqwest::Client::new();
    let url = delta_url(addr, &f.v2.0, &[&f.v1.1]);
    let (r, _) = until_ready(&http, &url).await;
    assert_eq!(r.status(), 200);
    let len = r.bytes().await.unwrap().len() as u64;
    let c = first.counters();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(c.computed.load(Relaxed), 1);
    assert_eq!(c.served_bytes.load(Relaxed), len);
    assert_eq!(
        c.replaced_layer_bytes.load(Relaxed),
        f.store.blob_size(&f.v2.0).unwrap()
    );
    let exposition = first.render_metrics();
    assert!(
        exposition.contains(&format!("fleet_content_delta_served_bytes_total {len}\n")),
        "{exposition}"
    );
    assert!(exposition.contains("fleet_content_deltas_computed_total 1\n"));

    // A new process over the same data directory serves it at once.
    let store = content::ContentStore::open(f.data.path()).unwrap();
    let again = Deltas::new(store, DeltaOptions::default());
    let addr = serve(again.clone()).await;
    let r = http
        .get(delta_url(addr, &f.v2.0, &[&f.v1.1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "no recomputation after a restart");
    assert_eq!(r.bytes().await.unwrap().len() as u64, len);
    assert_eq!(again.counters().computed.load(Relaxed), 0);
}

#[tokio::test]
async fn no_delta_when_it_is_not_clearly_smaller_or_the_bases_are_unknown() {
    let f = fixture().await;
    let addr = serve(Deltas::new(f.store.clone(), DeltaOptions::default())).await;
    let http = reqwest::Client::new();
    // Against an unrelated layer, a delta is as big as the layer: refused.
    let (r, _) = until_ready(&http, &delta_url(addr, &f.v2.0, &[&f.other.1])).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DELTA_UNAVAILABLE");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not clearly smaller"),
        "{body}"
    );
    // A base no stored image has.
    let unknown = Digest::of(b"no such layer");
    let (r, _) = until_ready(&http, &delta_url(addr, &f.v2.0, &[&unknown])).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(unknown.as_str()),
        "{body}"
    );
    // Malformed requests.
    for query in ["", "?bases=", "?bases=sha256:zz", "?other=1"] {
        let url = format!("http://{addr}/v2/edge/app/deltas/{}{query}", f.v2.0);
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
    }
    let r = http
        .get(delta_url(addr, &f.v2.0, &[&f.v1.1]).replace("edge/app", "edge/none"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "unknown repository");
    // A ratio of 0.001 makes even the good delta not worth sending.
    let strict = Deltas::new(
        f.store.clone(),
        DeltaOptions {
            ratio: 0.001,
            ..Default::default()
        },
    );
    // (Another base set, so no record of the default-ratio cache applies.)
    let addr = serve(strict).await;
    let (r, _) = until_ready(&http, &delta_url(addr, &f.v2.0, &[&f.v1.1, &f.other.1])).await;
    assert_eq!(
        r.status(),
        404,
        "under a strict ratio the delta is not sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn computations_queue_and_a_failed_delta_is_tried_again_once_its_base_arrives() {
    let f = fixture().await;
    let options = DeltaOptions {
        max_concurrent: 1,
        // Long enough for the polls below to see the failure, short enough
        // to wait out.
        retry_failed_after: Duration::from_secs(3),
        ..Default::default()
    };
    let deltas = Deltas::new(f.store.clone(), options);
    let addr = serve(deltas.clone()).await;
    let http = reqwest::Client::new();
    // v0: v1's files with one more block of end-of-archive zeros (another
    // diff_id), not imported yet.
    let mut v0_tar = f.v1_tar.clone();
    v0_tar.extend_from_slice(&[0u8; 512]);
    let work = tempfile::tempdir().unwrap();
    let v0 = layout(&work.path().join("v0"), "v0", &v0_tar);

    // Two requests at once with one slot: both are answered in turn.
    let known = delta_url(addr, &f.v2.0, &[&f.v1.1]);
    let missing = delta_url(addr, &f.v2.0, &[&v0.1]);
    let (a, b) = tokio::join!(until_ready(&http, &known), until_ready(&http, &missing));
    assert_eq!(a.0.status(), 200);
    assert_eq!(b.0.status(), 404);
    let body: Value = b.0.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains(v0.1.as_str()),
        "{body}"
    );
    assert_eq!(deltas.counters().failed.load(Ordering::Relaxed), 1);

    // The base arrives; the failure is not final.
    import_oci_layout(&f.store, &work.path().join("v0"), "edge/app", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (r, pending) = until_ready(&http, &missing).await;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    assert!(
        pending > 0,
        "a retried delta is computed again, not replayed"
    );
    assert_eq!(
        r.headers()["fleet-delta-target"].to_str().unwrap(),
        f.v2.1.as_str()
    );
}
