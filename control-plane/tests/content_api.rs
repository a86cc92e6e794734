//! The content endpoint against real clients: skopeo pulls images imported
//! from an umoci-made layout and from a `docker save`-style tar; ranges,
//! errors and import verification over real HTTP on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_control_plane::cli::image as cli;
use fleet_control_plane::content::{
    self, ContentError, ContentStore, import_oci_layout, media_type,
};
use fleet_protocol::Digest;
use serde_json::{Value, json};

struct Server {
    addr: SocketAddr,
    store: ContentStore,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let store = ContentStore::open(data.path()).unwrap();
        let app = content::router(store.clone()).merge(content::import_router(store.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            store,
            _data: data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("SKIPPED: `{tool}` is not installed (apt-get install {tool})");
    }
    found
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox image made by umoci, as in notes/machine.md.
fn umoci_busybox(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let ub = dir.join("ub");
    let image = format!("{}:latest", img.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&img));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&ub));
    std::fs::create_dir_all(ub.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", ub.join("rootfs/bin/busybox")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&ub));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--architecture",
        "amd64",
        "--os",
        "linux",
    ]));
    img
}

/// Pulls without changing anything (skopeo would otherwise gzip the
/// uncompressed layers of a docker archive on the way into the layout).
fn skopeo_pull(server: &Server, image: &str, dest: &Path) {
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}/{image}", server.addr))
        .arg(format!("oci:{}:x", dest.display())));
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn digest(v: &Value) -> Digest {
    Digest::new(v.as_str().unwrap()).unwrap()
}

/// Checks every blob of an OCI layout hashes to its name; returns the
/// manifest digest tagged `tag`.
fn check_layout(dir: &Path, tag: &str) -> Digest {
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes).hex(),
            entry.file_name().to_str().unwrap(),
            "blob {:?} of the pulled layout",
            entry.path()
        );
    }
    let index = read_json(&dir.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    digest(&desc["digest"])
}

fn blob_json(dir: &Path, d: &Digest) -> Value {
    read_json(&dir.join("blobs/sha256").join(d.hex()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_an_umoci_image_imported_from_a_directory_and_over_http() {
    if !have("umoci") || !have("skopeo") {
        return;
    }
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let img = umoci_busybox(work.path());
    let source_manifest = check_layout(&img, "latest");

    let summary = import_oci_layout(&server.store, &img, "edge/busybox", Some("1"))
        .await
        .unwrap();
    assert_eq!(summary.images.len(), 1);
    assert_eq!(summary.images[0].digest, source_manifest);
    assert_eq!(summary.images[0].media_type, media_type::OCI_MANIFEST);
    assert_eq!(summary.blobs_added, 3, "manifest, config, one layer");
    assert_eq!(
        server.store.resolve("edge/busybox", "1"),
        Some(source_manifest.clone())
    );

    // The same directory through `fleetctl image import` (packed as a tar).
    let uploaded = cli::import_image(
        &server.url(""),
        Some("token"),
        &img,
        "ns/sub/model",
        Some("v1"),
    )
    .await
    .unwrap();
    assert_eq!(uploaded.images[0].digest, source_manifest);
    assert_eq!(uploaded.images[0].repository, "ns/sub/model");
    assert_eq!(uploaded.blobs_added, 0);
    assert_eq!(uploaded.blobs_present, 3);

    for (image, n) in [("edge/busybox:1", 1), ("ns/sub/model:v1", 2)] {
        let dest = work.path().join(format!("pulled{n}"));
        skopeo_pull(&server, image, &dest);
        let pulled = check_layout(&dest, "x");
        assert_eq!(pulled, source_manifest, "{image}: same manifest digest");
        let manifest = blob_json(&dest, &pulled);
        let original = blob_json(&img, &source_manifest);
        assert_eq!(manifest, original);
        let layer = digest(&manifest["layers"][0]["digest"]);
        assert_eq!(
            std::fs::read(dest.join("blobs/sha256").join(layer.hex())).unwrap(),
            std::fs::read(img.join("blobs/sha256").join(layer.hex())).unwrap()
        );
    }
}

/// A `docker save` archive: manifest.json, a `<hex>.json` config and
/// `<id>/layer.tar` layers, the second a symlink to the first as docker
/// writes shared layers.
fn docker_save_tar(path: &Path, repo_tags: &[&str], corrupt_layer: bool) -> (Vec<u8>, Digest) {
    let mut layer = tar::Builder::new(Vec::new());
    let hello = b"hello from a docker layer\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(hello.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    layer
        .append_data(&mut header, "hello.txt", &hello[..])
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = Digest::of(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id, diff_id] },
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    let manifest = json!([{
        "Config": format!("{}.json", config_digest.hex()),
        "RepoTags": repo_tags,
        "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
    }]);

    let mut out = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, bytes).unwrap();
    };
    let mut stored_layer = layer.clone();
    if corrupt_layer {
        stored_layer[0] ^= 1;
    }
    add("aaaa/layer.tar", &stored_layer);
    add(&format!("{}.json", config_digest.hex()), &config);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    out.append_link(&mut link, "bbbb/layer.tar", "../aaaa/layer.tar")
        .unwrap();
    out.into_inner().unwrap();
    (layer, config_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_a_docker_save_archive_uploaded_over_http() {
    if !have("skopeo") {
        return;
    }
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let tar_path = work.path().join("saved.tar");
    let (layer, config_digest) = docker_save_tar(&tar_path, &["hello:2"], false);

    let summary = cli::import_image(&server.url("/"), None, &tar_path, "edge/hello", None)
        .await
        .unwrap();
    assert_eq!(summary.images.len(), 1);
    let image = &summary.images[0];
    assert_eq!(
        (image.repository.as_str(), image.tag.as_str()),
        ("edge/hello", "2")
    );
    assert_eq!(
        server.store.resolve("edge/hello", "2"),
        Some(image.digest.clone())
    );

    let dest = work.path().join("pulled");
    skopeo_pull(&server, "edge/hello:2", &dest);
    let pulled = check_layout(&dest, "x");
    assert_eq!(pulled, image.digest);
    let manifest = blob_json(&dest, &pulled);
    assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(digest(&manifest["config"]["digest"]), config_digest);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert_eq!(l["mediaType"], media_type::OCI_LAYER_TAR);
        // Layers are stored as they are: their digest is the diff_id.
        assert_eq!(digest(&l["digest"]), Digest::of(&layer));
        assert_eq!(l["size"], layer.len());
    }
    let config = blob_json(&dest, &config_digest);
    assert_eq!(
        digest(&config["rootfs"]["diff_ids"][0]),
        digest(&layers[0]["digest"])
    );
    let pulled_layer = std::fs::read(dest.join("blobs/sha256").join(Digest::of(&layer).hex()));
    assert_eq!(pulled_layer.unwrap(), layer);
}

/// A small OCI layout built here: one layer, a config, a manifest.
fn small_layout(dir: &Path, layer: &[u8]) -> (Digest, Digest) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": media_type::OCI_LAYER_TAR, "digest": layer_digest, "size": layer.len() }],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "v3" },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (manifest_digest, layer_digest)
}

#[tokio::test]
async fn blobs_answer_ranges_and_unknown_content_gets_distribution_errors() {
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (manifest_digest, layer_digest) = small_layout(work.path(), &layer);
    let summary = import_oci_layout(&server.store, work.path(), "ns/model", None)
        .await
        .unwrap();
    assert_eq!(summary.images[0].tag, "v3", "named by the layout");
    let http = reqwest::Client::new();
    let blob_url = server.url(&format!("/v2/ns/model/blobs/{layer_digest}"));

    let base = http.get(server.url("/v2/")).send().await.unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    let manifest = http
        .get(server.url("/v2/ns/model/manifests/v3"))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["content-type"], media_type::OCI_MANIFEST);
    assert_eq!(
        manifest.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    let bytes = manifest.bytes().await.unwrap();
    assert_eq!(Digest::of(&bytes), manifest_digest);
    let by_digest = http
        .head(server.url(&format!("/v2/ns/model/manifests/{manifest_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_digest.status(), 200);
    assert_eq!(
        by_digest.headers()["content-length"],
        bytes.len().to_string().as_str()
    );

    let head = http.head(&blob_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(
        head.headers()["docker-content-digest"],
        layer_digest.as_str()
    );
    let full = http.get(&blob_url).send().await.unwrap();
    assert_eq!(full.bytes().await.unwrap(), layer);

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-7", 99_993, 99_999),
        ("bytes=65530-70000", 65_530, 70_000),
        ("bytes=0-999999", 0, 99_999),
    ] {
        let r = http
            .get(&blob_url)
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/100000").as_str(),
            "{range}"
        );
        assert_eq!(r.bytes().await.unwrap(), &layer[start..=end], "{range}");
    }
    for range in ["bytes=100000-", "bytes=50-10", "lines=1-2"] {
        let r = http
            .get(&blob_url)
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(r.headers()["content-range"], "bytes */100000", "{range}");
    }

    let tags: Value = http
        .get(server.url("/v2/ns/model/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags, json!({ "name": "ns/model", "tags": ["v3"] }));

    let absent = Digest::of(b"absent");
    for (path, status, code) in [
        (
            "/v2/ns/model/manifests/v9".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/ns/model/manifests/{absent}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/ns/model/blobs/{absent}"), 404, "BLOB_UNKNOWN"),
        ("/v2/ns/other/manifests/v3".to_owned(), 404, "NAME_UNKNOWN"),
        ("/v2/ns/other/tags/list".to_owned(), 404, "NAME_UNKNOWN"),
        (
            format!("/v2/ns/other/blobs/{layer_digest}"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "/v2/ns/model/blobs/sha256:xyz".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/NS/model/tags/list".to_owned(), 400, "NAME_INVALID"),
    ] {
        let r = http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{path}");
        assert!(body["errors"][0]["message"].is_string(), "{path}");
    }
    let push = http
        .post(server.url("/v2/ns/model/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 405);
    let body: Value = push.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
}

#[tokio::test]
async fn imports_refuse_content_that_does_not_match_its_digest() {
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, layer_digest) = small_layout(&layout, b"the real layer");
    std::fs::write(
        layout.join("blobs/sha256").join(layer_digest.hex()),
        b"the evil layer",
    )
    .unwrap();

    let err = import_oci_layout(&server.store, &layout, "edge/app", Some("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ContentError::DigestMismatch { expected, .. } if *expected == layer_digest),
        "{err}"
    );
    assert_eq!(server.store.resolve("edge/app", "1"), None);
    assert!(!server.store.has_repository("edge/app"));
    assert_eq!(server.store.blob_size(&layer_digest), None);
    assert_eq!(server.store.blob_size(&Digest::of(b"the evil layer")), None);

    // The same layout uploaded as a tar is refused with a stable code.
    let refused = cli::import_image(&server.url(""), None, &layout, "edge/app", Some("1"))
        .await
        .unwrap_err();
    match refused {
        cli::ImportCliError::Refused { status, code, .. } => {
            let code = code.expect("an error body");
            assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));
            assert_eq!(
                code,
                fleet_control_plane::content::ContentCode::DigestInvalid
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }

    // A docker archive whose layer does not match the config's diff_id.
    let tar_path = work.path().join("bad.tar");
    docker_save_tar(&tar_path, &["edge/app:2"], true);
    let err = content::import_docker_archive(&server.store, &tar_path, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ContentError::BadDockerLayer { .. }), "{err}");
    assert_eq!(server.store.resolve("edge/app", "2"), None);

    // And the good archive imports under its own name.
    let good = work.path().join("good.tar");
    docker_save_tar(&good, &["localhost:5000/edge/app:2"], false);
    let summary = content::import_docker_archive(&server.store, &good, None, None)
        .await
        .unwrap();
    assert_eq!(summary.images[0].repository, "edge/app");
    assert_eq!(summary.images[0].tag, "2");
    assert_eq!(
        server.store.resolve("edge/app", "2"),
        Some(summary.images[0].digest.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_requirements_come_from_image_labels_read_over_the_pull_api_flags_first() {
    use fleet_control_plane::cli::labels::{LabelsError, image_labels, with_image_requirements};
    use fleet_protocol::ImageRef;
    use fleet_protocol::message::RuntimeSettings;
    use fleet_protocol::requires::{Soc, VersionRange};
    if !have("umoci") {
        return;
    }
    let server = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let img = umoci_busybox(work.path());
    let tag = format!("{}:latest", img.display());
    run(Command::new("umoci").args([
        "config",
        "--image",
        &tag,
        "--config.label",
        "io.fleet.requires.l4t=>=36.3, <37",
        "--config.label",
        "io.fleet.requires.soc=t234",
    ]));
    let good = check_layout(&img, "latest");
    import_oci_layout(&server.store, &img, "edge/labelled", Some("1"))
        .await
        .unwrap();
    run(Command::new("umoci").args([
        "config",
        "--image",
        &tag,
        "--config.label",
        "io.fleet.requires.cuda=twelve",
    ]));
    let bad = check_layout(&img, "latest");
    import_oci_layout(&server.store, &img, "edge/labelled", Some("bad"))
        .await
        .unwrap();
    // The content router alone, in plain HTTP: the client is only its way in.
    let base = fleet_control_plane::client::Client::new(&server.url(""), None);
    let image = ImageRef::parse(&format!("{}/edge/labelled:1", server.addr)).unwrap();

    let labels = image_labels(&base, "edge/labelled", &good)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(labels["io.fleet.requires.soc"], "t234");

    // Labels fill what the flags leave open.
    let r = with_image_requirements(&base, &image, &good, RuntimeSettings::default())
        .await
        .unwrap();
    assert_eq!(
        r.requires.l4t,
        Some(VersionRange::parse(">=36.3, <37").unwrap())
    );
    assert_eq!(r.requires.soc, Some(Soc::parse("t234").unwrap()));
    // A flag wins over its label.
    let mut flags = RuntimeSettings::default();
    flags.requires.l4t = Some(VersionRange::parse(">=36.4").unwrap());
    let r = with_image_requirements(&base, &image, &good, flags)
        .await
        .unwrap();
    assert_eq!(r.requires.l4t, Some(VersionRange::parse(">=36.4").unwrap()));
    assert_eq!(r.requires.soc, Some(Soc::parse("t234").unwrap()));

    // A malformed label is refused by name.
    let e = with_image_requirements(&base, &image, &bad, RuntimeSettings::default())
        .await
        .unwrap_err();
    assert!(matches!(e, LabelsError::Label(_)), "{e}");
    assert!(
        fleet_protocol::report(&e).contains("io.fleet.requires.cuda=\"twelve\""),
        "{}",
        fleet_protocol::report(&e)
    );
    // An image the server does not hold: labels unread, flags kept.
    let elsewhere = Digest::of(b"not imported");
    assert_eq!(
        image_labels(&base, "edge/labelled", &elsewhere)
            .await
            .unwrap(),
        None
    );
    let r = with_image_requirements(&base, &image, &elsewhere, RuntimeSettings::default())
        .await
        .unwrap();
    assert!(r.requires.is_empty());
}
