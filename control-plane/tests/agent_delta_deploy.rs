//! The agent's lifecycle (the daemon's `Deployer` and content source, in
//! process) updating a running app from v1 to v2 through the server's
//! content endpoint, with crun: v2's changed layer arrives as a delta
//! against the layers v1 runs on, the lifecycle verifies, stages and starts
//! v2 from the rebuilt snapshot and commits it. Needs root, crun and
//! busybox-static; says so and skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod layers;

use layers::{gzip, layer_tar, noise};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::deploy::{ContentSource, Deployer};
use fleet_agent::fetch::{Client, ClientConfig, Platform};
use fleet_agent::pull::Puller;
use fleet_control_plane::content::{self, DeltaOptions, Deltas, import_oci_layout, media_type};
use fleet_protocol::dsse::{
    self, DESIRED_STATE_PAYLOAD_TYPE, Envelope, KeyId, RELEASE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE,
    SigningKey,
};
use fleet_protocol::message::{HealthCheck, Probe, RestartPolicy, RuntimeSettings};
use fleet_protocol::trust::{PublicKey, ROOT_SCHEMA_VERSION, RoleKeys, Roles};
use fleet_protocol::{
    AppName, DesiredApp, DesiredState, DeviceId, Digest, Phase, Release, Root, SCHEMA_VERSION,
};
use serde_json::json;

const DEVICE: &str = "cam-delta";
const BUSYBOX: &str = "/bin/busybox";

fn root_key() -> SigningKey {
    SigningKey::from_bytes(&[0x11; 32])
}
fn release_key() -> SigningKey {
    SigningKey::from_bytes(&[0x21; 32])
}
fn director_key() -> SigningKey {
    SigningKey::from_bytes(&[0x31; 32])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn trust_json() -> Vec<u8> {
    let id = |k: &SigningKey| KeyId::of(&k.verifying_key());
    let role = |k: &SigningKey| RoleKeys {
        keyids: vec![id(k)],
        threshold: 1,
    };
    let mut keys = BTreeMap::new();
    for k in [root_key(), release_key(), director_key()] {
        keys.insert(id(&k), PublicKey::ed25519(&k.verifying_key()));
    }
    let root = Root {
        schema: ROOT_SCHEMA_VERSION,
        version: 1,
        expires_at: now() + 86400,
        keys,
        roles: Roles {
            root: role(&root_key()),
            release: role(&release_key()),
            director: role(&director_key()),
        },
        allow_privileged: false,
    };
    let payload = serde_json::to_vec(&root).unwrap();
    dsse::sign(ROOT_PAYLOAD_TYPE, &payload, &[&root_key()]).to_json()
}

fn release(version: &str, repository: &str, manifest: &Digest) -> Envelope {
    let runtime = RuntimeSettings {
        probation_secs: Some(2),
        stop_grace_secs: Some(1),
        restart: RestartPolicy::Always,
        health: Some(HealthCheck {
            probe: Probe::Exec {
                command: vec!["/bin/true".into()],
            },
            interval_secs: 1,
            timeout_secs: 5,
            retries: 3,
            start_period_secs: 0,
        }),
        ..RuntimeSettings::default()
    };
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new("model").unwrap(),
        version: version.into(),
        repository: repository.into(),
        manifest_digest: manifest.clone(),
        runtime,
    };
    let payload = serde_json::to_vec(&release).unwrap();
    dsse::sign(RELEASE_PAYLOAD_TYPE, &payload, &[&release_key()])
}

fn desired(generation: u64, release: &Envelope) -> Vec<u8> {
    let state = DesiredState {
        schema: SCHEMA_VERSION,
        device: DeviceId::new(DEVICE).unwrap(),
        generation,
        issued_at: now() - 10,
        expires_at: now() + 3600,
        apps: vec![DesiredApp {
            app: AppName::new("model").unwrap(),
            release_digest: Digest::of(&release.payload_bytes().unwrap()),
            release: release.clone(),
        }],
    };
    let payload = serde_json::to_vec(&state).unwrap();
    dsse::sign(DESIRED_STATE_PAYLOAD_TYPE, &payload, &[&director_key()]).to_json()
}

/// An uncompressed tar of busybox with its applets, as a base layer.
fn busybox_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        dir(d);
    }
    let bin = std::fs::read(BUSYBOX).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(bin.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "bin/busybox", bin.as_slice())
        .unwrap();
    for applet in ["sh", "true", "sleep", "cat"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// A layout of one image: the busybox layer and a gzip'd top layer.
/// Returns (manifest, top layer blob, top diff_id, base diff_id).
fn layout(dir: &Path, base: &[u8], top: &[u8]) -> (Digest, Digest, Digest, Digest) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let (base_diff, top_diff) = (Digest::of(base), Digest::of(top));
    let base_blob = put(base);
    let gz = gzip(top);
    let top_blob = put(&gz);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "sleep 100000"]},
        "rootfs": { "type": "layers", "diff_ids": [base_diff, top_diff] },
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": base_blob, "size": base.len() },
            { "mediaType": media_type::OCI_LAYER_GZIP, "digest": top_blob, "size": gz.len() },
        ],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": media_type::OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len() }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (manifest_digest, top_blob, top_diff, base_diff)
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Removes what the runtime and the overlay mounts left.
struct Cleanup {
    crun: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let crun = || {
            let mut c = Command::new(&self.crun);
            c.arg("--root").arg(&self.root);
            c
        };
        if let Ok(out) = crun().args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = crun().args(["delete", "--force", id.trim()]).output();
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.state.join("containers")) {
            for e in entries.flatten() {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path().join("rootfs"))
                    .output();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_app_is_updated_from_a_delta_and_runs_v2_with_crun() {
    let test = "delta update with crun";
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        eprintln!("SKIPPED: {test}: needs root (overlay mounts, crun)");
        return;
    }
    let Some(crun) = which("crun") else {
        eprintln!("SKIPPED: {test}: crun not found (apt-get install crun)");
        return;
    };
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("SKIPPED: {test}: {BUSYBOX} missing (apt-get install busybox-static)");
        return;
    }
    // crun 1.8 refuses hybrid cgroup hosts whose hugetlb sits on v2.
    let _ = Command::new("sh")
        .arg("-c")
        .arg("[ -d /sys/fs/cgroup ] && { mkdir -p /sys/fs/cgroup/hugetlb; mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb; } || true")
        .status();

    // The server: v1 and v2 of edge/model, v2's model file 1% changed.
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = content::ContentStore::open(data.path()).unwrap();
    let base = busybox_tar();
    let model = noise(2 << 20, 3);
    let mut model2 = model.clone();
    for i in (0..model2.len()).step_by(100) {
        model2[i] ^= 0x33;
    }
    // The work dir's path makes this run's images (and container ids) its own.
    let origin = work.path().display().to_string();
    let top1 = layer_tar(&[
        ("etc/version", b"v1\n"),
        ("etc/origin", origin.as_bytes()),
        ("models/net.onnx", &model),
    ]);
    let top2 = layer_tar(&[
        ("etc/version", b"v2\n"),
        ("etc/origin", origin.as_bytes()),
        ("models/net.onnx", &model2),
    ]);
    let (m1, _, top1_diff, base_diff) = layout(&work.path().join("v1"), &base, &top1);
    let (m2, top2_blob, top2_diff, _) = layout(&work.path().join("v2"), &base, &top2);
    for v in ["v1", "v2"] {
        import_oci_layout(&store, &work.path().join(v), "edge/model", Some(v))
            .await
            .unwrap();
    }
    let deltas = Deltas::new(store, DeltaOptions::default());
    let app = content::router_with_deltas(deltas.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // What a rollout start does: the delta against what devices run.
    let bases = [base_diff.clone(), top1_diff.clone()];
    deltas.prepare(&top2_blob, &bases);
    let url = format!(
        "http://{addr}/v2/edge/model/deltas/{top2_blob}?bases={},{}",
        bases[0], bases[1]
    );
    let http = reqwest::Client::new();
    for _ in 0..600 {
        if http.head(&url).send().await.unwrap().status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The device.
    let dev = tempfile::tempdir().unwrap();
    std::fs::write(dev.path().join("trust.json"), trust_json()).unwrap();
    let config = format!(
        "device_id = \"{DEVICE}\"\nstate_dir = \"{state}\"\ntrust = \"{trust}\"\n\
         [runtime]\nkind = \"crun\"\nbinary = \"{binary}\"\nroot = \"{root}\"\n\
         [deploy]\nprobation_secs = 2\n[store]\nreserve_bytes = 0\n",
        state = dev.path().join("state").display(),
        trust = dev.path().join("trust.json").display(),
        binary = crun.display(),
        root = dev.path().join("runtime-root").display(),
    );
    std::fs::write(dev.path().join("config.toml"), config).unwrap();
    let _cleanup = Cleanup {
        crun: crun.clone(),
        root: dev.path().join("runtime-root"),
        state: dev.path().join("state"),
    };
    let config = Config::load(Some(&dev.path().join("config.toml"))).unwrap();
    let deployer = Deployer::open(config).await.unwrap();
    let mut client = ClientConfig::default();
    client.plain_http.push(addr.to_string());
    let source = ContentSource::Registry(
        Puller::new(
            Client::new(client).unwrap(),
            deployer.store().clone(),
            Platform::host(),
        )
        .with_deltas(deployer.snapshots().clone()),
    );
    let repository = format!("127.0.0.1:{}/edge/model", addr.port());

    let v1 = release("v1", &repository, &m1);
    let out = deployer
        .apply_desired(&desired(1, &v1), &source)
        .await
        .unwrap();
    assert!(out.committed(), "v1: {out:?}");
    assert_eq!(deltas.counters().served_bytes.load(Relaxed), 0);

    let v2 = release("v2", &repository, &m2);
    let out = deployer
        .apply_desired(&desired(2, &v2), &source)
        .await
        .unwrap();
    assert!(out.committed(), "v2: {out:?}");
    assert_eq!(out.apps[0].phase, Phase::Committed);

    // The changed layer came as a delta: the server and the device count
    // the same bytes, far fewer than the layer's.
    let served = deltas.counters().served_bytes.load(Relaxed);
    let c = deployer.store().content_counters().unwrap();
    assert!(served > 0, "no delta was served");
    assert_eq!(c.delta_fetched_bytes, served);
    let top2_size = std::fs::metadata(work.path().join("v2/blobs/sha256").join(top2_blob.hex()))
        .unwrap()
        .len();
    assert_eq!(c.delta_replaced_bytes, top2_size);
    assert!(
        served * 5 < top2_size,
        "delta {served} vs layer {top2_size}"
    );
    assert_eq!(c.delta_fallbacks, 0);
    assert!(!deployer.store().has_blob(&top2_blob));
    // The rebuilt snapshot is v2's layer, and v2 runs from it.
    let snap = deployer
        .snapshots()
        .get(&top2_diff)
        .expect("v2 layer snapshot");
    assert_eq!(std::fs::read(snap.join("models/net.onnx")).unwrap(), model2);
    let status = deployer.status_report().await.unwrap();
    let text = serde_json::to_string(&status).unwrap();
    assert!(text.contains("\"v2\""), "{text}");
    let running = Command::new(&crun)
        .arg("--root")
        .arg(dev.path().join("runtime-root"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&running.stdout).to_string();
    assert_eq!(ids.lines().count(), 1, "one container runs: {ids}");

    // v3 against a tampered base file on the device: the delta is
    // discarded, the whole layer fetched, v3 still runs, and the app's
    // status says which layer came whole and why.
    let mut model3 = model2.clone();
    for i in (50..model3.len()).step_by(100) {
        model3[i] ^= 0x44;
    }
    let top3 = layer_tar(&[
        ("etc/version", b"v3\n"),
        ("etc/origin", origin.as_bytes()),
        ("models/net.onnx", &model3),
    ]);
    let (m3, top3_blob, _, _) = layout(&work.path().join("v3"), &base, &top3);
    import_oci_layout(
        deltas.store(),
        &work.path().join("v3"),
        "edge/model",
        Some("v3"),
    )
    .await
    .unwrap();
    let bases = [base_diff.clone(), top2_diff.clone()];
    deltas.prepare(&top3_blob, &bases);
    let url = format!(
        "http://{addr}/v2/edge/model/deltas/{top3_blob}?bases={},{}",
        bases[0], bases[1]
    );
    for _ in 0..600 {
        if http.head(&url).send().await.unwrap().status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tampered = snap.join("models/net.onnx");
    let mut perms = std::fs::metadata(&tampered).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&tampered, perms).unwrap();
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&tampered, &bytes).unwrap();
    let v3 = release("v3", &repository, &m3);
    let out = deployer
        .apply_desired(&desired(3, &v3), &source)
        .await
        .unwrap();
    assert!(out.committed(), "v3: {out:?}");
    assert_eq!(
        deployer.store().content_counters().unwrap().delta_fallbacks,
        1
    );
    let status = deployer.status_report().await.unwrap();
    let app = &status.apps[0];
    assert_eq!(app.running.as_ref().unwrap().version, "v3");
    assert_eq!(app.delta_fallbacks.len(), 1, "{:?}", app.delta_fallbacks);
    assert_eq!(app.delta_fallbacks[0].layer, top3_blob);
    let reason = &app.delta_fallbacks[0].reason;
    assert!(reason.contains("models/net.onnx"), "{reason}");
    eprintln!("fallback reported: {reason}");
    deployer.detach().await;
}
