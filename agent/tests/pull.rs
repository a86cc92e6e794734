//! Pulling from a real `docker-registry` started by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_agent::fetch::Client;
use fleet_agent::fetch::{ClientConfig, FetchError, ImageRef, Platform, RetryPolicy};
use fleet_agent::pull::{PullError, PullEvent, Puller};
use fleet_agent::store::{Store, StoreConfig, StoreError};
use support::*;

fn store(state: &Path) -> Arc<Store> {
    Arc::new(
        Store::open(
            state,
            StoreConfig {
                reserve_bytes: 0,
                cache_bytes: 256 * 1024,
            },
        )
        .unwrap(),
    )
}

fn fast_retry() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..ClientConfig::default()
    }
}

fn puller(store: Arc<Store>, platform: &str) -> Puller {
    Puller::new(
        Client::new(fast_retry()).unwrap(),
        store,
        Platform::parse(platform).unwrap(),
    )
}

fn events() -> (fleet_agent::pull::EventSink, Arc<Mutex<Vec<PullEvent>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (Arc::new(move |e| l.lock().unwrap().push(e)), log)
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

#[tokio::test]
async fn pull_by_tag_then_by_digest_stores_gzip_and_zstd_layers() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let big = random_bytes(300 * 1024, 1);
    let layers = [
        gzip_layer(&[("etc/hostname", b"edge\n"), ("data/big", &big)]),
        zstd_layer(&[("app/model.bin", &random_bytes(200 * 1024, 2))]),
    ];
    let pushed = push_image(&reg.base(), "edge/app", "1", &layers, "amd64").await;
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let (sink, log) = events();

    let s = puller(st.clone(), "linux/amd64")
        .pull(&image(&format!("{}/edge/app:1", reg.addr)), sink.clone())
        .await
        .unwrap();
    assert_eq!(s.manifest, pushed.manifest);
    assert_eq!(s.config, pushed.config.0);
    assert_eq!(
        s.layers,
        pushed
            .layers
            .iter()
            .map(|l| l.0.clone())
            .collect::<Vec<_>>()
    );
    let blob_bytes: u64 = pushed.layers.iter().map(|l| l.1).sum::<u64>() + pushed.config.1;
    assert_eq!(s.bytes_fetched, blob_bytes + pushed.manifest_len);
    assert_eq!((s.blobs_fetched, s.blobs_reused, s.bytes_reused), (3, 0, 0));
    for (layer, (digest, _)) in layers.iter().zip(&pushed.layers) {
        assert_eq!(std::fs::read(st.blob_path(digest)).unwrap(), layer.blob);
        assert_eq!(
            st.blob_info(digest).unwrap().unwrap().media_type,
            layer.media_type
        );
    }
    assert!(st.has_blob(&pushed.manifest));
    let rec = st
        .image(&format!("{}/edge/app:1", reg.addr))
        .unwrap()
        .unwrap();
    assert!(rec.kept);
    assert_eq!(rec.manifest, pushed.manifest);
    assert!(tmp_files(dir.path()).is_empty());
    // The store's counters: every content byte came over the network.
    let counters = st.content_counters().unwrap();
    assert_eq!(
        (counters.fetched_bytes, counters.reused_bytes),
        (blob_bytes + pushed.manifest_len, 0)
    );
    assert_eq!(st.used_bytes().unwrap(), blob_bytes + pushed.manifest_len);
    {
        let log = log.lock().unwrap();
        assert!(
            matches!(log.first(), Some(PullEvent::Resolved { total_bytes, .. }) if *total_bytes == blob_bytes)
        );
        assert!(matches!(log.last(), Some(PullEvent::Done(_))));
        let done = log
            .iter()
            .filter(|e| matches!(e, PullEvent::BlobDone { .. }))
            .count();
        assert_eq!(done, 3);
    }

    // By digest: everything is present, so nothing is requested at all.
    let p = puller(st.clone(), "linux/amd64");
    let by_digest = image(&format!("{}/edge/app@{}", reg.addr, pushed.manifest));
    let again = p.pull(&by_digest, sink.clone()).await.unwrap();
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(p.client().bytes_received(), 0);
    assert_eq!(again.bytes_reused, blob_bytes);
    let counters = st.content_counters().unwrap();
    assert_eq!(
        (counters.fetched_bytes, counters.reused_bytes),
        (blob_bytes + pushed.manifest_len, blob_bytes)
    );

    // By digest into an empty store: the manifest is checked against the digest.
    let dir2 = tempfile::tempdir().unwrap();
    let fresh = puller(store(dir2.path()), "linux/amd64")
        .pull(&by_digest, sink)
        .await
        .unwrap();
    assert_eq!(fresh.bytes_fetched, blob_bytes + pushed.manifest_len);
}

#[tokio::test]
async fn an_index_resolves_to_this_platforms_manifest() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let amd = push_image(
        &reg.base(),
        "multi/app",
        "amd64",
        &[raw_layer(random_bytes(10_000, 3))],
        "amd64",
    )
    .await;
    let arm = push_image(
        &reg.base(),
        "multi/app",
        "arm64",
        &[raw_layer(random_bytes(12_000, 4))],
        "arm64",
    )
    .await;
    let index = push_index(
        &reg.base(),
        "multi/app",
        "1",
        &[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))],
    )
    .await;
    let reference = format!("{}/multi/app:1", reg.addr);
    for (platform, want) in [("linux/arm64", &arm), ("linux/amd64", &amd)] {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let s = puller(st.clone(), platform)
            .pull(&image(&reference), events().0)
            .await
            .unwrap();
        assert_eq!(s.manifest, want.manifest, "{platform}");
        assert_eq!(s.index.as_ref(), Some(&index));
        assert_eq!(s.layers, vec![want.layers[0].0.clone()]);
        let other = if std::ptr::eq(want, &arm) { &amd } else { &arm };
        assert!(
            !st.has_blob(&other.layers[0].0),
            "the other platform's layer is not fetched"
        );
        assert!(st.has_blob(&index));
        assert_eq!(
            st.image(&reference).unwrap().unwrap().index,
            Some(index.clone())
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let err = puller(store(dir.path()), "linux/riscv64")
        .pull(&image(&reference), events().0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PullError::Fetch(FetchError::NoPlatform { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[tokio::test]
async fn an_update_fetches_only_the_changed_layer() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let base = raw_layer(random_bytes(2 << 20, 10));
    let libs = gzip_layer(&[("lib/x.so", &random_bytes(1 << 20, 11))]);
    let v1 = push_image(
        &reg.base(),
        "edge/model",
        "v1",
        &[base.clone(), libs.clone(), gzip_layer(&[("app/v", b"1")])],
        "amd64",
    )
    .await;
    let top2 = gzip_layer(&[("app/v", b"2"), ("app/extra", &random_bytes(50_000, 12))]);
    let v2 = push_image(
        &reg.base(),
        "edge/model",
        "v2",
        &[base, libs, top2],
        "amd64",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    puller(st.clone(), "linux/amd64")
        .pull(&image(&format!("{}/edge/model:v1", reg.addr)), events().0)
        .await
        .unwrap();

    let proxy = Proxy::start(&reg.addr, ProxyOpts::default()).await;
    let p = puller(st.clone(), "linux/amd64");
    let s = p
        .pull(&image(&format!("{}/edge/model:v2", proxy.addr)), events().0)
        .await
        .unwrap();
    let expected = v2.layers[2].1 + v2.config.1 + v2.manifest_len;
    assert_eq!(s.bytes_fetched, expected);
    assert_eq!(p.client().bytes_received(), expected);
    assert_eq!(s.bytes_reused, v2.layers[0].1 + v2.layers[1].1);
    assert_eq!((s.blobs_fetched, s.blobs_reused), (2, 2));
    // The proxy saw the bodies plus three responses' headers, nothing more.
    let down = proxy.down_bytes();
    assert!(down >= expected, "{down} < {expected}");
    assert!(
        down < expected + 8 * 1024,
        "proxy forwarded {down} bytes for {expected} body bytes"
    );
    assert_ne!(v1.config, v2.config);
}

#[tokio::test]
async fn an_image_made_by_umoci_and_pushed_by_skopeo() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    if !have("umoci") || !have("skopeo") {
        skip("umoci or skopeo is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "umoci init --layout img && umoci new --image img:latest && umoci unpack --rootless --image img:latest ub >/dev/null",
    );
    sh("mkdir -p ub/rootfs/bin && cp /bin/sh ub/rootfs/bin/sh && echo hi > ub/rootfs/hello");
    sh(
        "umoci repack --image img:latest ub && umoci config --image img:latest --config.cmd /bin/sh --architecture amd64 --os linux",
    );
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false oci:img:latest docker://{}/edge/tools:1",
        reg.addr
    ));
    let state = d.join("state");
    let st = store(&state);
    let s = puller(st.clone(), "linux/amd64")
        .pull(&image(&format!("{}/edge/tools:1", reg.addr)), events().0)
        .await
        .unwrap();
    assert!(!s.layers.is_empty());
    for l in &s.layers {
        let bytes = std::fs::read(st.blob_path(l)).unwrap();
        assert_eq!(fleet_protocol::Digest::of(&bytes), *l);
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "skopeo pushes gzip layers");
    }
    let config = st.read_blob(&s.config, 1 << 20).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh");
}

#[tokio::test]
async fn a_connection_cut_mid_blob_resumes_with_range() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let blob = random_bytes(4 << 20, 20);
    let pushed = push_image(
        &reg.base(),
        "edge/cut",
        "1",
        &[raw_layer(blob.clone())],
        "amd64",
    )
    .await;
    // The first two connections that carry 1 MiB are cut there.
    let proxy = Proxy::start(
        &reg.addr,
        ProxyOpts {
            cut_after: Some(1 << 20),
            cuts: 2,
            rate: None,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let p = puller(st.clone(), "linux/amd64");
    let s = p
        .pull(&image(&format!("{}/edge/cut:1", proxy.addr)), events().0)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(st.blob_path(&pushed.layers[0].0)).unwrap(),
        blob
    );
    assert!(proxy.cuts_done.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let log = proxy.request_log().to_ascii_lowercase();
    assert!(log.contains("range: bytes="), "no range request in:\n{log}");
    // Resumed, not restarted: little more than the blob went through.
    let total = pushed.layers[0].1 + pushed.config.1 + pushed.manifest_len;
    assert!(s.bytes_fetched >= total);
    assert!(
        s.bytes_fetched < total + (1 << 20),
        "{} fetched for {total}",
        s.bytes_fetched
    );
}

#[tokio::test]
async fn a_tampered_blob_in_the_registry_is_rejected() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let layer = raw_layer(random_bytes(256 * 1024, 30));
    let pushed = push_image(&reg.base(), "edge/bad", "1", &[layer], "amd64").await;
    let bad = &pushed.layers[0].0;
    let path = reg.blob_data_path(bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let reference = format!("{}/edge/bad:1", reg.addr);
    let err = puller(st.clone(), "linux/amd64")
        .pull(&image(&reference), events().0)
        .await
        .unwrap_err();
    match &err {
        PullError::Fetch(FetchError::DigestMismatch { expected, .. }) => assert_eq!(expected, bad),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(bad.as_str()), "{err}");
    assert!(!st.has_blob(bad));
    assert!(
        !st.has_blob(&pushed.manifest),
        "no manifest without its blobs"
    );
    assert!(st.image(&reference).unwrap().is_none());
    let left: Vec<_> = tmp_files(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(bad.hex()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_full_disk_fails_before_the_first_blob_byte() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    if !is_root() {
        skip("mounting a small tmpfs needs root");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    if !status.success() {
        skip("cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    let pushed = push_image(
        &reg.base(),
        "edge/huge",
        "1",
        &[
            raw_layer(random_bytes(6 << 20, 40)),
            raw_layer(random_bytes(6 << 20, 41)),
        ],
        "amd64",
    )
    .await;
    let proxy = Proxy::start(&reg.addr, ProxyOpts::default()).await;
    let state = mnt.path().join("state");
    let st = store(&state);
    let p = puller(st.clone(), "linux/amd64");
    let err = p
        .pull(&image(&format!("{}/edge/huge:1", proxy.addr)), events().0)
        .await
        .unwrap_err();
    match &err {
        PullError::Store(StoreError::DiskFull {
            needed,
            available,
            reserve,
        }) => {
            assert!(*needed >= 12 << 20);
            assert!(*available < *needed);
            assert_eq!(*reserve, 0);
        }
        other => panic!("expected DiskFull, got {other}"),
    }
    assert!(err.is_disk_full());
    assert_eq!(
        p.client().bytes_received(),
        pushed.manifest_len,
        "only the manifest was read"
    );
    assert!(proxy.down_bytes() < pushed.manifest_len + 4096);
    assert!(blob_files(&state).is_empty());
    assert!(tmp_files(&state).is_empty());
}

#[tokio::test]
async fn gc_after_an_update_removes_only_what_the_old_version_alone_used() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    let shared = raw_layer(random_bytes(100_000, 50));
    let v1 = push_image(
        &reg.base(),
        "edge/gc",
        "v1",
        &[shared.clone(), raw_layer(random_bytes(10_000, 51))],
        "amd64",
    )
    .await;
    let v2 = push_image(
        &reg.base(),
        "edge/gc",
        "v2",
        &[shared, raw_layer(random_bytes(10_000, 52))],
        "amd64",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let p = puller(st.clone(), "linux/amd64");
    for tag in ["v1", "v2"] {
        p.pull(&image(&format!("{}/edge/gc:{tag}", reg.addr)), events().0)
            .await
            .unwrap();
    }
    assert!(
        st.set_kept(&format!("{}/edge/gc:v1", reg.addr), false)
            .unwrap()
    );
    let report = st.gc(&Default::default()).unwrap();
    assert_eq!(
        report.blobs_removed, 3,
        "v1's manifest, config and own layer"
    );
    for d in [&v1.manifest, &v1.config.0, &v1.layers[1].0] {
        assert!(!st.has_blob(d));
    }
    for d in [&v2.manifest, &v2.config.0, &v2.layers[0].0, &v2.layers[1].0] {
        assert!(st.has_blob(d));
    }
}

/// A registry that is not Fleet's content endpoint has no deltas: with
/// deltas enabled and a running release's layers as bases, the changed
/// layer is pulled whole, silently (no delta event, no fallback counted),
/// and a layer whose snapshot the device has is not fetched at all.
#[tokio::test]
async fn against_a_plain_registry_deltas_quietly_fall_back_to_whole_layers() {
    let Some(reg) = Registry::start().await else {
        return;
    };
    // Layers with owners set, so that they unpack.
    let layer = |path: &str, seed| {
        use std::io::Write;
        let data = random_bytes(100 * 1024, seed);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_slice()).unwrap();
        let tar = b.into_inner().unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        Layer {
            media_type: LAYER_GZIP,
            blob: enc.finish().unwrap(),
            diff_id: fleet_protocol::Digest::of(&tar),
        }
    };
    let shared = layer("bin/tool", 7);
    let v1 = layer("app/model.bin", 8);
    let v2 = layer("app/model.bin", 9);
    let (shared_diff, v1_diff) = (shared.diff_id.clone(), v1.diff_id.clone());
    push_image(&reg.base(), "edge/app", "1", &[shared.clone(), v1], "amd64").await;
    let p2 = push_image(&reg.base(), "edge/app", "2", &[shared, v2], "amd64").await;
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path());
    let snapshots = Arc::new(fleet_agent::snapshot::SnapshotStore::open(dir.path()).unwrap());
    let puller = puller(st.clone(), "linux/amd64").with_deltas(snapshots.clone());
    let (sink, log) = events();
    puller
        .pull(&image(&format!("{}/edge/app:1", reg.addr)), sink.clone())
        .await
        .unwrap();
    // The device runs v1: its layers are snapshots; the shared layer's blob
    // is gone from the store (as after a delta), only its snapshot stays.
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let v1_blob = log
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            PullEvent::Done(s) => Some(s.layers[1].clone()),
            _ => None,
        })
        .unwrap();
    let shared_blob = &p2.layers[0].0;
    snapshots
        .ensure(&shared_diff, &st.blob_path(shared_blob), gz)
        .unwrap();
    st.remove_blob(shared_blob).unwrap();
    snapshots
        .ensure(&v1_diff, &st.blob_path(&v1_blob), gz)
        .unwrap();
    log.lock().unwrap().clear();

    let s = puller
        .pull_with_bases(
            &image(&format!("{}/edge/app:2", reg.addr)),
            &[shared_diff.clone(), v1_diff],
            sink,
        )
        .await
        .unwrap();
    let events = log.lock().unwrap();
    assert!(
        !events.iter().any(|e| matches!(
            e,
            PullEvent::DeltaApplied { .. } | PullEvent::DeltaFallback { .. }
        )),
        "no delta events against a plain registry"
    );
    assert!(st.has_blob(&p2.layers[1].0), "the changed layer came whole");
    assert!(
        !st.has_blob(&p2.layers[0].0),
        "the layer the device has unpacked was not fetched"
    );
    assert_eq!(s.blobs_reused, 1);
    let c = st.content_counters().unwrap();
    assert_eq!((c.delta_fetched_bytes, c.delta_fallbacks), (0, 0));
}
