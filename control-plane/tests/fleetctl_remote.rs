//! The real `fleetctl` binary against a real server on loopback, and the
//! real `fleet-server` binary's configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::*;
use fleet_control_plane::fleet::ports::{ImageResolver, PortError};
use fleet_control_plane::server::Plugins;
use fleet_protocol::{Digest, ImageRef, verify_desired_state};

fn fleetctl(config_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEET_CONFIG_DIR", config_dir)
        .env_remove("FLEET_SERVER")
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_RELEASE_KEY")
        .output()
        .unwrap()
}

fn ok(config_dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(config_dir, args);
    assert!(
        out.status.success(),
        "fleetctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(config_dir: &Path, args: &[&str]) -> String {
    let out = fleetctl(config_dir, args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// Runs fleetctl and returns its exit code and standard error.
fn exit(config_dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = fleetctl(config_dir, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs fleetctl off the runtime's threads (the server and proxies keep running).
async fn exit_async<S: AsRef<str>>(config_dir: &Path, args: &[S]) -> (Option<i32>, String) {
    let cfg = config_dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exit(&cfg, &args)
    })
    .await
    .unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_logs_in_groups_devices_and_rolls_an_image_out() {
    let site = Site::new();
    let publisher = recording();
    let run = start(site.config(), publisher.clone()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let cfg = cfg.path().to_owned();
    let url = run.url();

    // Without credentials, the error says what to do.
    let err = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || fails(&cfg, &["devices", "ls"])
    })
    .await
    .unwrap();
    assert!(err.contains("fleetctl login"), "{err}");

    // A bad token is refused at login and nothing is saved.
    let ca = run.ca_path.display().to_string();
    // Without the fleet CA, the server's certificate is not trusted.
    let err = fails(&cfg, &["login", "--server", &url, "--token", &token]);
    assert!(err.contains("cannot reach the server"), "{err}");
    let err = fails(
        &cfg,
        &[
            "login",
            "--server",
            &url,
            "--token",
            "fleet_bad",
            "--ca",
            &ca,
        ],
    );
    assert!(
        err.contains("log in again") || err.contains("refused"),
        "{err}"
    );
    assert!(!cfg.join("credentials").exists());

    let out = ok(
        &cfg,
        &["login", "--server", &url, "--token", &token, "--ca", &ca],
    );
    assert!(out.contains("logged in"), "{out}");
    let mode = std::fs::metadata(cfg.join("credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    for (id, role) in [
        ("cam-1", "camera"),
        ("cam-2", "camera"),
        ("gw-1", "gateway"),
    ] {
        run.send(hello(id, &[("role", role)])).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 3).then_some(())
    })
    .await;

    let devices = json(&ok(&cfg, &["devices", "ls", "-o", "json"]));
    assert_eq!(devices.as_array().unwrap().len(), 3);
    let shown = json(&ok(&cfg, &["devices", "show", "cam-1", "--output", "json"]));
    assert_eq!(shown["id"], "cam-1");
    assert_eq!(shown["l4t_version"], "36.3.0");
    let text = ok(&cfg, &["devices", "ls"]);
    assert!(text.contains("gw-1") && text.contains("36.3.0"), "{text}");

    let group = json(&ok(
        &cfg,
        &[
            "groups",
            "add",
            "cameras",
            "--selector",
            "role=camera",
            "-o",
            "json",
        ],
    ));
    assert_eq!(group["devices"], serde_json::json!(["cam-1", "cam-2"]));
    // Labelling gw-1 as a camera puts it in the group.
    ok(&cfg, &["groups", "label", "gw-1", "role=camera"]);
    let groups = json(&ok(&cfg, &["groups", "ls", "-o", "json"]));
    assert_eq!(groups[0]["devices"].as_array().unwrap().len(), 3);

    // Roll out an image given by digest (no image store is attached here).
    let manifest = Digest::of(b"model v2 manifest");
    let image = format!("registry.local:5000/edge/model:v2@{manifest}");
    let release_key = site.keys().join("release.key");
    let started = json(&ok(
        &cfg,
        &[
            "rollout",
            &image,
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
            "--canary",
            "1",
            "-o",
            "json",
        ],
    ));
    assert_eq!(started["app"], "model");
    assert_eq!(started["version"], "v2");
    assert_eq!(started["state"], "running");
    assert_eq!(started["counts"]["total"], 3);
    assert_eq!(started["counts"]["sent"], 1);
    let id = started["id"].as_u64().unwrap().to_string();

    // The published state verifies on the device and names the image digest.
    let trust = site.trust();
    let sent = publisher.sent();
    assert_eq!(sent.len(), 1);
    let state = verify_desired_state(&trust, &sent[0].1, &sent[0].0, None, now()).unwrap();
    let releases = state.releases();
    assert_eq!(releases[0].manifest_digest, manifest);
    assert_eq!(releases[0].repository, "registry.local:5000/edge/model");

    let status = json(&ok(&cfg, &["rollout", "status", &id, "-o", "json"]));
    assert_eq!(status["devices"].as_array().unwrap().len(), 3);
    let list = ok(&cfg, &["rollout", "status"]);
    assert!(list.contains("model") && list.contains("running"), "{list}");

    let paused = ok(&cfg, &["rollout", "pause", &id]);
    assert!(paused.contains("paused"), "{paused}");
    // Not a terminal: --watch prints plain lines and stops on a paused rollout.
    let watched = ok(&cfg, &["rollout", "status", &id, "--watch"]);
    assert!(watched.contains("paused"), "{watched}");
    let err = fails(&cfg, &["rollout", "pause", &id]);
    assert!(err.contains("cannot pause"), "{err}");
    ok(&cfg, &["rollout", "resume", &id]);
    let undone = json(&ok(&cfg, &["rollout", "undo", &id, "-o", "json"]));
    assert_eq!(undone["state"], "rolled_back");

    // A tag without an image store: the error says how to proceed.
    let err = fails(
        &cfg,
        &[
            "rollout",
            "registry.local:5000/edge/model:v3",
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
        ],
    );
    assert!(err.contains("by digest"), "{err}");

    let completions = ok(&cfg, &["completions", "bash"]);
    assert!(completions.contains("fleetctl"));
    run.stop().await;
}

#[test]
fn fleet_server_refuses_a_bad_config_with_a_distinct_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("server.toml");
    std::fs::write(&bad, "[http]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.toml"), "{err}");

    // A valid config whose director key is missing: exit code 3, with a hint.
    let good = dir.path().join("ok.toml");
    std::fs::write(
        &good,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[director]\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("missing.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-server"))
        .args(["--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fleetctl keys init"), "{err}");
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_exit_codes_tell_usage_rejection_and_unreachable_apart() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let cfg = cfg.path().to_owned();
    let url = run.url();
    let release_key = site.keys().join("release.key");
    let release_key = release_key.to_str().unwrap();
    let image = format!("registry.local:5000/edge/model:v2@{}", Digest::of(b"m"));

    // The codes are documented in --help.
    let help = ok(&cfg, &["--help"]);
    for line in [
        "Exit codes:",
        "2  usage",
        "3  rejected",
        "4  the server is unreachable",
    ] {
        assert!(help.contains(line), "{line:?} not in {help}");
    }

    // 2: usage errors, from clap and found after parsing.
    for args in [
        vec!["devices"],
        vec!["rollout", "Not An Image", "--group", "g"],
        vec!["devices", "ls", "--bogus"],
        vec!["devices", "ls"],
        vec!["devices", "ls", "--server", "not a url", "--token", "t"],
        vec!["login", "--server", "ftp://127.0.0.1", "--token", "t"],
    ] {
        let (code, err) = exit_async(&cfg, &args).await;
        assert_eq!(code, Some(2), "fleetctl {args:?}: {err}");
    }

    // 4: nothing listens on the port.
    let dead = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        vec!["devices", "ls", "--server", &dead, "--token", &token],
        vec!["login", "--server", &dead, "--token", &token],
        vec![
            "rollout",
            &image,
            "--group",
            "g",
            "--release-key",
            release_key,
            "--server",
            &dead,
            "--token",
            &token,
        ],
    ] {
        let (code, err) = exit_async(&cfg, &args).await;
        assert_eq!(code, Some(4), "fleetctl {args:?}: {err}");
        assert!(err.contains("cannot reach the server"), "{err}");
    }

    // 3: the server refuses the request.
    let ca = run.ca_path.display().to_string();
    let (code, err) = exit_async(
        &cfg,
        &[
            "devices",
            "ls",
            "--server",
            &url,
            "--token",
            "fleet_bad",
            "--ca",
            &ca,
        ],
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("log in again"), "{err}");
    let (code, err) = exit_async(
        &cfg,
        &[
            "login",
            "--server",
            &url,
            "--token",
            "fleet_bad",
            "--ca",
            &ca,
        ],
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    let remote = [
        "--server",
        url.as_str(),
        "--token",
        token.as_str(),
        "--ca",
        ca.as_str(),
    ];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(&remote).map(|a| a.to_string()).collect()
    };
    let (code, err) = exit_async(
        &cfg,
        &with(&[
            "rollout",
            &image,
            "--group",
            "nobody",
            "--release-key",
            release_key,
        ]),
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("nobody"), "{err}");
    let (code, err) = exit_async(&cfg, &with(&["rollout", "pause", "99"])).await;
    assert_eq!(code, Some(3), "{err}");
    let (code, err) = exit_async(&cfg, &with(&["devices", "show", "nobody"])).await;
    assert_eq!(code, Some(3), "{err}");

    // 3: a release signed by a key the server's trust root does not know.
    run.send(hello("cam-1", &[("role", "camera")])).await;
    let client = run.client(&token);
    eventually("device registered", || async {
        (client.devices().await.unwrap().len() == 1).then_some(())
    })
    .await;
    let (code, err) = exit_async(
        &cfg,
        &with(&["groups", "add", "cameras", "-s", "role=camera"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let stranger = Site::new();
    let stranger_key = stranger.keys().join("release.key");
    let (code, err) = exit_async(
        &cfg,
        &with(&[
            "rollout",
            &image,
            "--group",
            "cameras",
            "--release-key",
            stranger_key.to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("unknown_key"), "{err}");

    // 1: anything else, e.g. a release key file that is not there.
    let (code, err) = exit_async(
        &cfg,
        &with(&[
            "rollout",
            &image,
            "--group",
            "cameras",
            "--release-key",
            "/nonexistent.key",
        ]),
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("release key is needed"), "{err}");
    run.stop().await;
}

/// The site's configuration without TLS.
fn plain(site: &Site) -> fleet_control_plane::config::Config {
    let mut config = site.config();
    config.tls.insecure = true;
    config
}

/// A loopback TCP proxy to `upstream` that records the request line of
/// every HTTP/1.1 request going through it.
async fn recording_proxy(upstream: SocketAddr) -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let log = log.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                        let line = String::from_utf8_lossy(&pending[..end]).into_owned();
                        if let Some(request) = line.strip_suffix(" HTTP/1.1") {
                            log.lock().unwrap().push(request.to_owned());
                        }
                        pending.drain(..end + 2);
                    }
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_rollout_of_an_image_by_digest_is_one_request() {
    let site = Site::new();
    let publisher = recording();
    // The proxy reads request lines: this server speaks plain HTTP.
    let run = start(plain(&site), publisher.clone()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let cfg: PathBuf = cfg.path().to_owned();
    for id in ["cam-1", "cam-2"] {
        run.send(hello(id, &[("role", "camera")])).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == 2).then_some(())
    })
    .await;
    let (proxy, seen) = recording_proxy(run.addr).await;
    let remote = ["--server", proxy.as_str(), "--token", token.as_str()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(&remote).map(|a| a.to_string()).collect()
    };
    let (code, err) = exit_async(
        &cfg,
        &with(&["groups", "add", "cameras", "-s", "role=camera"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(*seen.lock().unwrap(), ["POST /api/v1/groups"]);
    seen.lock().unwrap().clear();

    let manifest = Digest::of(b"model v3 manifest");
    let image = format!("registry.local:5000/edge/model:v3@{manifest}");
    let release_key = site.keys().join("release.key");
    let (code, err) = exit_async(
        &cfg,
        &with(&[
            "rollout",
            &image,
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    // One request starts it; before it, only reads of the image's labels
    // from the content endpoint (not held here: one 404).
    let requests = seen.lock().unwrap().clone();
    let (reads, api): (Vec<_>, Vec<_>) = requests.iter().partition(|r| r.starts_with("GET /v2/"));
    assert_eq!(api, ["POST /api/v1/rollouts"], "{requests:?}");
    assert_eq!(reads.len(), 1, "{requests:?}");

    // The release came with the rollout: the server kept it and published it.
    let releases = client.releases().await.unwrap();
    assert_eq!(releases.len(), 1);
    let rollouts = client.rollouts().await.unwrap();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0].release_digest, releases[0].digest);
    assert_eq!(rollouts[0].version, "v3");
    let sent = publisher.sent();
    assert_eq!(sent.len(), 2);
    let state = verify_desired_state(&site.trust(), &sent[0].1, &sent[0].0, None, now()).unwrap();
    assert_eq!(state.releases()[0].manifest_digest, manifest);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_devices_table_columns_line_up() {
    let site = Site::new();
    let run = start(site.config(), recording()).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let ids = ["a", "cam-01", "gateway-at-the-far-end"];
    for id in ids {
        run.send(hello(id, &[("role", "camera")])).await;
    }
    let client = run.client(&token);
    eventually("devices registered", || async {
        (client.devices().await.unwrap().len() == ids.len()).then_some(())
    })
    .await;
    let remote = run.remote_args(&token);
    let text = tokio::task::spawn_blocking({
        let cfg = cfg.path().to_owned();
        move || {
            let mut args = vec!["devices", "ls"];
            args.extend(remote.iter().map(String::as_str));
            ok(&cfg, &args)
        }
    })
    .await
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + ids.len(), "{text}");
    let header = lines[0];
    let columns = ["ONLINE", "ARCH", "L4T", "AGENT", "LABELS", "GROUPS"];
    let starts: Vec<usize> = columns.iter().map(|c| header.find(c).unwrap()).collect();
    for (line, id) in lines[1..].iter().zip(ids) {
        assert!(line.starts_with(&format!("{id} ")), "{line}");
        let values = ["yes", "arm64", "36.3.0", "0.1.0", "role=camera", "-"];
        for ((column, start), value) in columns.iter().zip(&starts).zip(values) {
            assert!(
                line[*start..].starts_with(value),
                "{column} of {id:?} is not under its header:\n{text}"
            );
            assert_eq!(&line[start - 1..*start], " ", "{text}");
        }
    }
    run.stop().await;
}

/// Resolves one tag (the role the server's content store plays for an
/// imported image).
struct OneTag {
    image: ImageRef,
    digest: Digest,
}

#[async_trait::async_trait]
impl ImageResolver for OneTag {
    async fn resolve(&self, image: &ImageRef) -> Result<Digest, PortError> {
        if image == &self.image {
            Ok(self.digest.clone())
        } else {
            Err(PortError::Resolve {
                image: image.clone(),
                source: format!("{image} is not known").into(),
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_rollout_of_a_tag_reads_its_digest_then_starts_in_one_request() {
    let site = Site::new();
    let publisher = recording();
    let manifest = Digest::of(b"model v4 manifest");
    let image = "registry.local:5000/edge/model:v4";
    let plugins = Plugins {
        publisher: publisher.clone(),
        resolver: Arc::new(OneTag {
            image: ImageRef::parse(image).unwrap(),
            digest: manifest.clone(),
        }),
        ..Plugins::default()
    };
    // The proxy reads request lines: this server speaks plain HTTP.
    let run = start_with(plain(&site), plugins).await;
    let token = run.token.clone().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    run.send(hello("cam-1", &[("role", "camera")])).await;
    let client = run.client(&token);
    eventually("device registered", || async {
        (client.devices().await.unwrap().len() == 1).then_some(())
    })
    .await;
    let (proxy, seen) = recording_proxy(run.addr).await;
    let remote = ["--server", proxy.as_str(), "--token", token.as_str()];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter().chain(&remote).map(|a| a.to_string()).collect()
    };
    let (code, err) = exit_async(
        cfg.path(),
        &with(&["groups", "add", "cameras", "-s", "role=camera"]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    seen.lock().unwrap().clear();

    let release_key = site.keys().join("release.key");
    let (code, err) = exit_async(
        cfg.path(),
        &with(&[
            "rollout",
            image,
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let mut requests = seen.lock().unwrap().clone();
    // Reads of the image's labels (content endpoint) aside.
    requests.retain(|r| !r.starts_with("GET /v2/"));
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[0].starts_with("GET /api/v1/images/resolve?ref="),
        "{requests:?}"
    );
    assert_eq!(requests[1], "POST /api/v1/rollouts");
    let sent = publisher.sent();
    assert_eq!(sent.len(), 1);
    let state = verify_desired_state(&site.trust(), &sent[0].1, &sent[0].0, None, now()).unwrap();
    let release = &state.releases()[0];
    assert_eq!(release.manifest_digest, manifest);
    assert_eq!(release.version, "v4");
    assert_eq!(release.repository, "registry.local:5000/edge/model");

    // A tag the server does not know: refused, exit code 3.
    let (code, err) = exit_async(
        cfg.path(),
        &with(&[
            "rollout",
            "registry.local:5000/edge/model:v5",
            "--group",
            "cameras",
            "--release-key",
            release_key.to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is not known"), "{err}");
    run.stop().await;
}
