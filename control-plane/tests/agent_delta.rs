//! The agent's pull path against the server's content endpoint over real
//! HTTP on loopback: a device that runs v1 of an image (its layer unpacked
//! into a snapshot) pulls v2, whose layer changed a little, as a delta; the
//! snapshot it rebuilds holds v2's exact files and its tar hashed to v2's
//! diff_id. A tampered base file, a corrupt delta or an interrupted
//! download do not leave anything half-made: the first two fall back to the
//! whole layer (reason reported), the last resumes where it stopped.
//!
//! Real parts: the content endpoint with its delta computation, the agent's
//! fetch client, content store, puller and snapshot store (the daemon's
//! own). A small proxy stands in for a faulty server where one is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod layers;

use layers::{gzip, layer_tar, noise};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_agent::fetch::{Client, ClientConfig, Platform};
use fleet_agent::image::StoredImage;
use fleet_agent::pull::{EventSink, PullEvent, Puller};
use fleet_agent::snapshot::SnapshotStore;
use fleet_agent::store::{Store, StoreConfig};
use fleet_control_plane::content::{self, DeltaOptions, Deltas, import_oci_layout, media_type};
use fleet_protocol::{Digest, ImageRef};
use serde_json::json;

/// One image version as imported: manifest, layer blob, diff_id, blob size.
#[derive(Clone)]
struct Version {
    manifest: Digest,
    layer: Digest,
    diff_id: Digest,
    layer_size: u64,
}

/// An OCI layout with one image of one gzip'd layer.
fn layout(dir: &Path, tag: &str, tar: &[u8]) -> Version {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let diff_id = Digest::of(tar);
    let gz = gzip(tar);
    let layer = put(&gz);
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
        "layers": [{ "mediaType": media_type::OCI_LAYER_GZIP, "digest": layer, "size": gz.len() }],
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
    Version {
        manifest: manifest_digest,
        layer,
        diff_id,
        layer_size: gz.len() as u64,
    }
}

struct Server {
    deltas: Deltas,
    addr: SocketAddr,
    v1: Version,
    v2: Version,
    model2: Vec<u8>,
    data: tempfile::TempDir,
    _work: tempfile::TempDir,
}

/// The content endpoint serving v1 and v2 of `edge/app`, v2's delta
/// against v1 computed ahead (as a rollout start does).
async fn server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = content::ContentStore::open(data.path()).unwrap();
    let model = noise(3 << 20, 7);
    let mut model2 = model.clone();
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
    let mut versions = Vec::new();
    for (tag, tar) in [("v1", &v1_tar), ("v2", &v2_tar)] {
        let dir = work.path().join(tag);
        versions.push(layout(&dir, tag, tar));
        import_oci_layout(&store, &dir, "edge/app", None)
            .await
            .unwrap();
    }
    let deltas = Deltas::new(store, DeltaOptions::default());
    let app = content::router_with_deltas(deltas.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (v1, v2) = (versions[0].clone(), versions[1].clone());
    deltas.prepare(&v2.layer, std::slice::from_ref(&v1.diff_id));
    let url = format!(
        "http://{addr}/v2/edge/app/deltas/{}?bases={}",
        v2.layer, v1.diff_id
    );
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.head(&url).send().await.unwrap().status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http.head(&url).send().await.unwrap().status(), 200);
    Server {
        deltas,
        addr,
        v1,
        v2,
        model2,
        data,
        _work: work,
    }
}

/// A device: content store, snapshots, a puller with deltas, its events.
struct Device {
    store: Arc<Store>,
    snapshots: Arc<SnapshotStore>,
    events: Arc<Mutex<Vec<PullEvent>>>,
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreConfig::default()).unwrap());
        let snapshots = Arc::new(SnapshotStore::open(dir.path()).unwrap());
        Self {
            store,
            snapshots,
            events: Arc::default(),
            dir,
        }
    }

    fn puller(&self, client: ClientConfig) -> Puller {
        Puller::new(
            Client::new(client).unwrap(),
            self.store.clone(),
            Platform::host(),
        )
        .with_deltas(self.snapshots.clone())
    }

    fn sink(&self) -> EventSink {
        let events = self.events.clone();
        Arc::new(move |e| events.lock().unwrap().push(e))
    }

    async fn pull(&self, puller: &Puller, addr: SocketAddr, v: &Version, bases: &[Digest]) {
        let image = reference(addr, v);
        puller
            .pull_with_bases(&image, bases, self.sink())
            .await
            .unwrap();
    }

    /// What staging does: verify the chain, make every layer a snapshot.
    fn stage(&self, addr: SocketAddr, v: &Version) {
        let reference = reference(addr, v).to_string();
        let image = StoredImage::verify_with_snapshots(
            &self.store,
            Some(&self.snapshots),
            &reference,
            &v.manifest,
        )
        .unwrap();
        image
            .ensure_snapshots(&self.store, &self.snapshots)
            .unwrap();
    }

    /// The device runs v1.
    async fn running_v1(addr: SocketAddr, s: &Server) -> Self {
        let device = Self::new();
        let puller = device.puller(ClientConfig::default());
        device.pull(&puller, addr, &s.v1, &[]).await;
        device.stage(addr, &s.v1);
        device.events.lock().unwrap().clear();
        device
    }

    fn applied(&self) -> Vec<(Digest, u64, u64)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                PullEvent::DeltaApplied {
                    layer,
                    delta_bytes,
                    layer_bytes,
                    ..
                } => Some((layer.clone(), *delta_bytes, *layer_bytes)),
                _ => None,
            })
            .collect()
    }

    fn fallbacks(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                PullEvent::DeltaFallback { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// Nothing half-made: tmp/ is empty, every snapshot is complete.
    fn assert_snapshots_clean(&self) {
        let root = self.dir.path().join("snapshots");
        let tmp: Vec<_> = std::fs::read_dir(root.join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "debris in snapshots/tmp: {tmp:?}");
        for e in std::fs::read_dir(root.join("sha256")).unwrap() {
            let p = e.unwrap().path();
            assert!(p.join("snapshot.json").is_file(), "incomplete {p:?}");
        }
    }

    fn assert_runs_v2(&self, addr: SocketAddr, s: &Server) {
        self.stage(addr, &s.v2);
        let fs = self.snapshots.get(&s.v2.diff_id).expect("v2 snapshot");
        assert_eq!(std::fs::read(fs.join("models/net.onnx")).unwrap(), s.model2);
        assert_eq!(
            std::fs::read(fs.join("etc/app.conf")).unwrap(),
            b"threshold = 0.7\n"
        );
        let info = self.snapshots.info(&s.v2.diff_id).unwrap().unwrap();
        assert_eq!(info.stats.diff_id, s.v2.diff_id);
        self.assert_snapshots_clean();
    }
}

fn reference(addr: SocketAddr, v: &Version) -> ImageRef {
    ImageRef::parse(&format!(
        "127.0.0.1:{}/edge/app@{}",
        addr.port(),
        v.manifest
    ))
    .unwrap()
}

#[tokio::test]
async fn a_changed_layer_is_fetched_as_a_delta_and_rebuilt_into_its_exact_snapshot() {
    let s = server().await;
    let device = Device::running_v1(s.addr, &s).await;
    let before = device.store.content_counters().unwrap();
    let puller = device.puller(ClientConfig::default());
    let received = puller.client().bytes_received();

    device
        .pull(&puller, s.addr, &s.v2, std::slice::from_ref(&s.v1.diff_id))
        .await;

    let applied = device.applied();
    assert_eq!(applied.len(), 1, "one layer rebuilt from a delta");
    let (layer, delta_bytes, layer_bytes) = applied[0].clone();
    assert_eq!((layer, layer_bytes), (s.v2.layer.clone(), s.v2.layer_size));
    assert!(device.fallbacks().is_empty(), "{:?}", device.fallbacks());
    // The server and the device agree on what crossed the wire, and it is
    // the delta, not the layer.
    assert_eq!(s.deltas.counters().served_bytes.load(Relaxed), delta_bytes);
    assert!(
        delta_bytes * 5 < s.v2.layer_size,
        "delta {delta_bytes} vs layer {}",
        s.v2.layer_size
    );
    let on_wire = puller.client().bytes_received() - received;
    assert!(
        on_wire < delta_bytes + 4096,
        "{on_wire} bytes received for a {delta_bytes}-byte delta"
    );
    let after = device.store.content_counters().unwrap();
    assert_eq!(
        after.delta_fetched_bytes - before.delta_fetched_bytes,
        delta_bytes
    );
    assert_eq!(
        after.delta_replaced_bytes - before.delta_replaced_bytes,
        s.v2.layer_size
    );
    assert_eq!(after.delta_fallbacks, 0);
    // The layer blob never came; the delta is gone once applied.
    assert!(!device.store.has_blob(&s.v2.layer));
    device.assert_runs_v2(s.addr, &s);
}

#[tokio::test]
async fn a_tampered_base_file_falls_back_to_the_whole_layer() {
    let s = server().await;
    let device = Device::running_v1(s.addr, &s).await;
    let base = device.snapshots.get(&s.v1.diff_id).unwrap();
    let file = base.join("models/net.onnx");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1 << 20] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let puller = device.puller(ClientConfig::default());
    device
        .pull(&puller, s.addr, &s.v2, std::slice::from_ref(&s.v1.diff_id))
        .await;

    let reasons = device.fallbacks();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("models/net.onnx"),
        "the reason names the base file: {}",
        reasons[0]
    );
    assert!(device.applied().is_empty());
    assert!(device.store.has_blob(&s.v2.layer), "the whole layer came");
    assert!(device.snapshots.get(&s.v2.diff_id).is_none());
    device.assert_snapshots_clean();
    assert_eq!(device.store.content_counters().unwrap().delta_fallbacks, 1);
    device.assert_runs_v2(s.addr, &s);
}

/// A snapshot made before delta format v2 has no skeleton: it is not
/// offered as a base, so the changed layer comes whole (no delta asked
/// for, no fallback), and the new snapshot gets its skeleton.
#[tokio::test]
async fn a_base_snapshot_without_a_skeleton_is_not_offered_and_the_layer_comes_whole() {
    let s = server().await;
    let device = Device::running_v1(s.addr, &s).await;
    let skeleton = device.snapshots.skeleton(&s.v1.diff_id).unwrap();
    std::fs::remove_file(skeleton).unwrap();

    let puller = device.puller(ClientConfig::default());
    device
        .pull(&puller, s.addr, &s.v2, std::slice::from_ref(&s.v1.diff_id))
        .await;

    assert!(device.applied().is_empty());
    assert!(device.fallbacks().is_empty(), "{:?}", device.fallbacks());
    assert_eq!(s.deltas.counters().served_bytes.load(Relaxed), 0);
    assert!(device.store.has_blob(&s.v2.layer), "the whole layer came");
    device.assert_runs_v2(s.addr, &s);
    assert!(device.snapshots.skeleton(&s.v2.diff_id).is_some());
}

/// A proxy to `upstream` that serves every delta changed by `mutate`,
/// announced under the digest of the changed bytes (a server that stored a
/// bad delta): the download checks out, the apply must not.
async fn corrupting_proxy(upstream: SocketAddr, mutate: fn(&mut Vec<u8>)) -> SocketAddr {
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let http = http.clone();
        async move {
            let path = req.uri().path_and_query().unwrap().to_string();
            let url = format!("http://{upstream}{path}");
            let head = req.method() == axum::http::Method::HEAD;
            let mut up = http.get(&url);
            if !path.contains("/deltas/")
                && let Some(r) = req.headers().get("range")
            {
                up = up.header("range", r.to_str().unwrap());
            }
            let resp = up.send().await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let mut body = resp.bytes().await.unwrap().to_vec();
            let mut out = Response::builder().status(status);
            for (k, v) in &headers {
                if k != "content-length" && k != "docker-content-digest" && k != "etag" {
                    out = out.header(k, v);
                }
            }
            if path.contains("/deltas/") && status == 200 {
                mutate(&mut body);
                out = out.header("docker-content-digest", Digest::of(&body).as_str());
            } else if let Some(d) = headers.get("docker-content-digest") {
                out = out.header("docker-content-digest", d);
            }
            out = out.header("content-length", body.len());
            let body = if head { Vec::new() } else { body };
            out.body(Body::from(body)).unwrap_or_else(|_| {
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::empty())
                    .unwrap()
            })
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Byte offsets in a v1 delta header (protocol/DELTA.md).
const TARGET_AT: usize = 10;
const WINDOW_CAP_AT: usize = 8 + 2 + 32 + 8;

#[tokio::test]
async fn a_bad_delta_falls_back_to_the_whole_layer_with_the_reason() {
    let s = server().await;
    type Mutate = fn(&mut Vec<u8>);
    let cases: [(&str, Mutate, &str); 4] = [
        (
            "a flipped byte",
            |d| {
                let mid = d.len() / 2;
                d[mid] ^= 0x01;
            },
            "",
        ),
        (
            "a truncated delta",
            |d| d.truncate(d.len() / 2),
            "truncated",
        ),
        (
            "a delta claiming another target",
            |d| d[TARGET_AT] ^= 0xff,
            "expected",
        ),
        (
            "a window over the device's cap (memory bomb)",
            |d| d[WINDOW_CAP_AT..WINDOW_CAP_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes()),
            "memory bomb",
        ),
    ];
    for (what, mutate, says) in cases {
        let proxy = corrupting_proxy(s.addr, mutate).await;
        let device = Device::running_v1(proxy, &s).await;
        let puller = device.puller(ClientConfig::default());
        device
            .pull(&puller, proxy, &s.v2, std::slice::from_ref(&s.v1.diff_id))
            .await;

        let reasons = device.fallbacks();
        assert_eq!(reasons.len(), 1, "{what}: {reasons:?}");
        assert!(reasons[0].contains(says), "{what}: {}", reasons[0]);
        assert!(device.applied().is_empty(), "{what}");
        assert!(device.store.has_blob(&s.v2.layer), "{what}");
        assert_eq!(device.store.content_counters().unwrap().delta_fallbacks, 1);
        device.assert_snapshots_clean();
        // The running release's snapshot is untouched.
        assert!(device.snapshots.get(&s.v1.diff_id).is_some(), "{what}");
        device.assert_runs_v2(proxy, &s);
    }
}

#[tokio::test]
async fn an_interrupted_delta_download_resumes_where_it_stopped() {
    let s = server().await;
    let device = Device::running_v1(s.addr, &s).await;
    let delta_size = {
        let url = format!(
            "http://{}/v2/edge/app/deltas/{}?bases={}",
            s.addr, s.v2.layer, s.v1.diff_id
        );
        let r = reqwest::Client::new().head(url).send().await.unwrap();
        r.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // The link stalls halfway through the delta; the pull is dropped there
    // (what a kill leaves: the partial download and its journal).
    let proxy = stalling_proxy(s.addr, delta_size / 2).await;
    let puller = device.puller(ClientConfig::default());
    let bases = [s.v1.diff_id.clone()];
    let cut = tokio::time::timeout(
        Duration::from_secs(3),
        device.pull(&puller, proxy, &s.v2, &bases),
    )
    .await;
    assert!(cut.is_err(), "the download should be stalled");
    let first = puller.client().bytes_received();
    assert!(first > 0 && first < delta_size, "{first} of {delta_size}");
    assert!(device.snapshots.get(&s.v2.diff_id).is_none());
    device.assert_snapshots_clean();

    let puller = device.puller(ClientConfig::default());
    device.pull(&puller, proxy, &s.v2, &bases).await;
    let resumed_from = device
        .events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            PullEvent::BlobDone {
                digest,
                resumed_from,
                ..
            } if *digest == s.v2.layer => Some(*resumed_from),
            _ => None,
        })
        .unwrap();
    assert!(resumed_from > 0, "the second attempt resumed");
    let total = first + puller.client().bytes_received();
    assert!(
        total <= delta_size + delta_size / 20 + 2048,
        "{total} bytes over both attempts for a {delta_size}-byte delta"
    );
    assert_eq!(device.applied().len(), 1);
    assert!(device.fallbacks().is_empty());
    device.assert_runs_v2(proxy, &s);
    drop(s.data);
}

/// A TCP proxy to `upstream` that, after the first request for a delta,
/// passes `budget` bytes of the answer and then stalls that connection
/// forever (a link gone dead mid-download). Later connections pass.
async fn stalling_proxy(upstream: SocketAddr, budget: u64) -> SocketAddr {
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let triggered = Arc::new(AtomicBool::new(false));
            let (armed, trig) = (armed.clone(), triggered.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    if text.contains("GET /v2/edge/app/deltas/") && armed.swap(false, Relaxed) {
                        trig.store(true, Relaxed);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut left = budget;
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let n = if triggered.load(Relaxed) {
                        let pass = n.min(left as usize);
                        left -= pass as u64;
                        pass
                    } else {
                        n
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    if triggered.load(Relaxed) && left == 0 {
                        // Dead link: hold the connection, send nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
    });
    addr
}

/// Env var that makes [`kill_target_pull`] run (in a child process).
const CHILD: &str = "FLEET_DELTA_KILL_CHILD";

/// Opens the store in `dir`, waiting for a previous owner's lock to go.
fn reopen(dir: &Path) -> (Arc<Store>, Arc<SnapshotStore>) {
    for _ in 0..200 {
        if let Ok(store) = Store::open(dir, StoreConfig::default()) {
            return (Arc::new(store), Arc::new(SnapshotStore::open(dir).unwrap()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot reopen the store in {}", dir.display());
}

/// Not a test on its own: the process [`a_delta_download_killed_mid_way_resumes_after_a_restart`]
/// starts and kills with SIGKILL while it pulls v2 through a stalling link.
#[tokio::test]
async fn kill_target_pull() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let [proxy, manifest, dir, base]: [&str; 4] =
        spec.split(' ').collect::<Vec<_>>().try_into().unwrap();
    let (store, snapshots) = reopen(Path::new(dir));
    let puller = Puller::new(
        Client::new(ClientConfig::default()).unwrap(),
        store,
        Platform::host(),
    )
    .with_deltas(snapshots);
    let image = ImageRef::parse(&format!("{proxy}/edge/app@{manifest}")).unwrap();
    let base = Digest::new(base).unwrap();
    let _ = puller
        .pull_with_bases(&image, &[base], Arc::new(|_| {}))
        .await;
    eprintln!("the pull ended; it should have been killed");
}

#[tokio::test]
async fn a_delta_download_killed_mid_way_resumes_after_a_restart() {
    let s = server().await;
    let Device { dir, .. } = Device::running_v1(s.addr, &s).await;
    let head = reqwest::Client::new()
        .head(format!(
            "http://{}/v2/edge/app/deltas/{}?bases={}",
            s.addr, s.v2.layer, s.v1.diff_id
        ))
        .send()
        .await
        .unwrap();
    let delta_size: u64 = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let delta = Digest::new(head.headers()["docker-content-digest"].to_str().unwrap()).unwrap();
    let proxy = stalling_proxy(s.addr, delta_size / 2).await;

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_target_pull", "--nocapture"])
        .env(
            CHILD,
            format!(
                "127.0.0.1:{} {} {} {}",
                proxy.port(),
                s.v2.manifest,
                dir.path().display(),
                s.v1.diff_id
            ),
        )
        .spawn()
        .unwrap();
    let partial = dir
        .path()
        .join("tmp")
        .join(format!("{}.partial", delta.hex()));
    let mut have = 0;
    for _ in 0..600 {
        have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have >= delta_size / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(have > 0, "the child never started the delta");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have < delta_size, "{have} of {delta_size}");

    // The agent starts again over the same state.
    let (store, snapshots) = reopen(dir.path());
    let device = Device {
        store,
        snapshots,
        events: Arc::default(),
        dir,
    };
    let puller = device.puller(ClientConfig::default());
    device
        .pull(&puller, proxy, &s.v2, std::slice::from_ref(&s.v1.diff_id))
        .await;
    let resumed_from = device
        .events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            PullEvent::BlobDone {
                digest,
                resumed_from,
                ..
            } if *digest == s.v2.layer => Some(*resumed_from),
            _ => None,
        })
        .unwrap();
    assert_eq!(resumed_from, have, "resumed where the killed one stopped");
    let again = puller.client().bytes_received();
    assert!(
        have + again <= delta_size + delta_size / 20 + 4096,
        "{have} + {again} bytes for a {delta_size}-byte delta"
    );
    assert_eq!(device.applied().len(), 1);
    device.assert_runs_v2(proxy, &s);
}

#[tokio::test]
async fn a_kill_mid_apply_leaves_no_half_snapshot_and_the_stored_delta_is_applied_again() {
    let s = server().await;
    let Device { dir, .. } = Device::running_v1(s.addr, &s).await;
    // What a kill during the apply leaves: the downloaded delta in the
    // store and a half-unpacked snapshot under snapshots/tmp/.
    let url = format!(
        "http://{}/v2/edge/app/deltas/{}?bases={}",
        s.addr, s.v2.layer, s.v1.diff_id
    );
    let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let delta = Digest::of(&bytes);
    let half = dir.path().join("snapshots/tmp/half-made/fs/models");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("net.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    {
        let (store, _) = reopen(dir.path());
        store
            .put_blob(&delta, &bytes, "application/vnd.fleet.layer.delta.v1")
            .unwrap();
    }
    let served = s.deltas.counters().served_bytes.load(Relaxed);

    let (store, snapshots) = reopen(dir.path());
    let device = Device {
        store,
        snapshots,
        events: Arc::default(),
        dir,
    };
    assert!(!half.exists(), "opening the snapshot store clears tmp/");
    let puller = device.puller(ClientConfig::default());
    device
        .pull(&puller, s.addr, &s.v2, std::slice::from_ref(&s.v1.diff_id))
        .await;
    assert_eq!(device.applied().len(), 1);
    assert_eq!(
        s.deltas.counters().served_bytes.load(Relaxed),
        served,
        "the stored delta was not fetched again"
    );
    assert!(
        !device.store.has_blob(&delta),
        "the applied delta is removed"
    );
    device.assert_runs_v2(s.addr, &s);
}
