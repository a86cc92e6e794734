//! A rollout prepares the layer deltas its devices will ask for: the real
//! server on loopback with the content endpoint and the delta cache, a
//! device reported running v1, a rollout of v2; the delta of v2's changed
//! layer against v1's diff_ids is computed before any device asks, so the
//! first request is answered 200 (not 202 "being computed"); the rollout
//! plan shows the bytes the device will fetch, before and after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod layers;

use layers::{gzip, layer_tar, noise};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use fleet_control_plane::api::types::CreateRollout;
use fleet_control_plane::content::{
    self, DELTA_TARGET, DeltaOptions, Deltas, import_oci_layout, media_type,
};
use fleet_control_plane::server::Plugins;
use fleet_control_plane::sign;
use fleet_protocol::{AppName, Digest, GroupName, Release, SCHEMA_VERSION};
use serde_json::json;

/// An OCI layout of one image with a shared base layer and `tar` as its top
/// layer, tagged `tag`. Returns (manifest, top layer blob, diff_ids).
fn layout(dir: &Path, tag: &str, base: &[u8], tar: &[u8]) -> (Digest, Digest, Vec<Digest>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for t in [base, tar] {
        let gz = gzip(t);
        diff_ids.push(Digest::of(t));
        layers.push(json!({ "mediaType": media_type::OCI_LAYER_GZIP, "digest": put(&gz), "size": gz.len() }));
    }
    let top = Digest::new(layers[1]["digest"].as_str().unwrap()).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "arm64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": media_type::OCI_CONFIG, "digest": put(&config), "size": config.len() },
        "layers": layers,
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
    (manifest_digest, top, diff_ids)
}

fn release(site: &Site, version: &str, manifest: &Digest) -> Vec<u8> {
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new("model").unwrap(),
        version: version.into(),
        repository: "fleet.local/edge/model".into(),
        manifest_digest: manifest.clone(),
        runtime: Default::default(),
    };
    sign::sign_release(
        "test",
        &serde_json::to_vec(&release).unwrap(),
        &site.release_key(),
    )
    .unwrap()
    .to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_computes_the_delta_from_the_release_a_device_runs_before_it_asks() {
    let site = Site::new();
    let content_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = content::ContentStore::open(content_dir.path()).unwrap();
    let base = layer_tar(&[("bin/app", &noise(64 << 10, 3))]);
    let model = noise(2 << 20, 7);
    let mut model2 = model.clone();
    for i in (0..model2.len()).step_by(100) {
        model2[i] ^= 0x5a;
    }
    let mut images = Vec::new();
    for (tag, file) in [("v1", &model), ("v2", &model2)] {
        let dir = work.path().join(tag);
        images.push(layout(
            &dir,
            tag,
            &base,
            &layer_tar(&[("models/net.onnx", file)]),
        ));
        import_oci_layout(&store, &dir, "edge/model", None)
            .await
            .unwrap();
    }
    let (v1_manifest, _, v1_diff_ids) = images[0].clone();
    let (v2_manifest, v2_top, v2_diff_ids) = images[1].clone();

    let deltas = Deltas::new(store, DeltaOptions::default());
    let plugins = Plugins {
        publisher: recording(),
        routes: content::router_with_deltas(deltas.clone()),
        preparer: Arc::new(deltas.clone()),
        deltas: Some(deltas.clone()),
        ..Plugins::default()
    };
    let run = start_with(site.config(), plugins).await;
    let client = run.client(run.token.as_deref().unwrap());
    run.send(hello("cam-1", &[("role", "camera")])).await;
    eventually("device registered", || async {
        (client.devices().await.unwrap().len() == 1).then_some(())
    })
    .await;
    cameras_group(&client).await;
    let v1 = client
        .add_release(release(&site, "v1", &v1_manifest))
        .await
        .unwrap();
    let v2 = client
        .add_release(release(&site, "v2", &v2_manifest))
        .await
        .unwrap();
    run.send(committed("cam-1", 1, "model", &v1.digest)).await;
    eventually("v1 reported running", || async {
        let d = client.device(&dev("cam-1")).await.unwrap();
        d.device
            .last_status
            .is_some_and(|s| !s.apps.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(deltas.counters().computed.load(Ordering::Relaxed), 0);

    let request = CreateRollout {
        release_digest: Some(v2.digest.clone()),
        release: None,
        group: GroupName::new("cameras").unwrap(),
        waves: vec![],
        safety: Default::default(),
    };
    // The plan: cam-1 lacks one layer of v2 (the base layer is shared) and
    // no delta is computed yet, so it would fetch that layer whole.
    let plan = client.plan_rollout(&request).await.unwrap();
    let before = plan.fetch[&dev("cam-1")];
    assert_eq!((before.layers, before.deltas), (1, 0));
    assert!(before.bytes > before.whole_bytes, "the config counts too");
    assert_eq!(deltas.counters().computed.load(Ordering::Relaxed), 0);
    client.start_rollout(&request).await.unwrap();
    // Only the background computation runs: nothing has asked yet.
    let computed = || deltas.counters().computed.load(Ordering::Relaxed);
    for _ in 0..600 {
        if computed() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(computed(), 1, "one delta (the changed layer) was prepared");
    // The plan now counts the delta instead of the layer.
    let after = client.plan_rollout(&request).await.unwrap().fetch[&dev("cam-1")];
    assert_eq!((after.layers, after.deltas), (1, 1));
    assert_eq!(after.whole_bytes, before.whole_bytes);
    assert!(after.bytes * 5 < before.bytes, "{after:?} vs {before:?}");

    // The device asks as an agent does: the changed layer against the
    // running image's diff_ids, lowest first.
    let bases: Vec<&str> = v1_diff_ids.iter().map(Digest::as_str).collect();
    let url = format!(
        "{}/v2/edge/model/deltas/{v2_top}?bases={}",
        run.url(),
        bases.join(",")
    );
    // Without credentials the content endpoint refuses (TLS is on).
    let r = run.http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = run
        .http()
        .get(&url)
        .bearer_auth(run.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the first request finds the delta ready");
    assert_eq!(r.headers()[DELTA_TARGET], v2_diff_ids[1].as_str());
    let body = r.bytes().await.unwrap();
    assert!(
        body.len() < model.len() / 10,
        "{} bytes for a 1% change",
        body.len()
    );
    run.stop().await;
}
