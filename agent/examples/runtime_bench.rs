//! Measuring helper for `bench/runtime.sh` (not a test, never judged on timing).
//!
//! `runtime_bench start KIND BINARY N WORKDIR`: stages a busybox release N
//! times through [`ContainerRuntime`] and times "bundle + rootfs ready →
//! container process running" with `timed_start`; interleaved with it, the
//! same kind of bundle run directly by the runtime binary (`run -d`, and
//! `create` + `start`) as the baseline. Prints one `<what> <ms>` line per
//! sample on stdout. Everything it starts is deleted before it exits.
//!
//! `runtime_bench device DIR RUNTIME BINARY BROKER`: writes a device for the
//! idle measurement: an OCI image layout with two busybox images
//! (`DIR/layout`), `DIR/trust.json`, `DIR/desired.json` (one signed desired
//! state with two apps) and `DIR/agent.toml`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_agent::runtime::{
    ContainerRuntime, DriverConfig, RootfsMode, RuntimeConfig, RuntimeKind, StageRequest,
};
use fleet_protocol::dsse::{
    self, DESIRED_STATE_PAYLOAD_TYPE, KeyId, RELEASE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE, SigningKey,
};
use fleet_protocol::message::{RestartPolicy, RuntimeSettings};
use fleet_protocol::trust::{PublicKey, ROOT_SCHEMA_VERSION, RoleKeys, Roles};
use fleet_protocol::{
    AppName, DesiredApp, DesiredState, DeviceId, Digest, Release, Root, SCHEMA_VERSION,
};
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};
use sha2::{Digest as _, Sha256};

const BUSYBOX: &str = "/bin/busybox";
const DEVICE: &str = "bench-01";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("start") if args.len() == 5 => {
            let kind = match args[1].as_str() {
                "crun" => RuntimeKind::Crun,
                "runc" => RuntimeKind::Runc,
                other => panic!("unknown runtime {other}"),
            };
            let n: usize = args[3].parse().expect("N");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(start_bench(
                kind,
                Path::new(&args[2]),
                n,
                Path::new(&args[4]),
            ));
        }
        Some("device") if args.len() == 5 => {
            device(Path::new(&args[1]), &args[2], Path::new(&args[3]), &args[4])
        }
        _ => {
            eprintln!(
                "usage: runtime_bench start crun|runc BINARY N WORKDIR\n       runtime_bench device DIR crun|runc BINARY BROKER"
            );
            std::process::exit(2);
        }
    }
}

fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

/// The runtime binary itself, on its own root.
fn direct(binary: &Path, root: &Path, args: &[&str]) -> std::process::ExitStatus {
    Command::new(binary)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

async fn start_bench(kind: RuntimeKind, binary: &Path, n: usize, work: &Path) {
    let snapshot = work.join("snapshots/busybox");
    busybox_rootfs(&snapshot);
    let driver = DriverConfig::new(kind)
        .with_binary(binary)
        .with_root(work.join("agent-root"));
    let mut config = RuntimeConfig::new(driver, &work.join("state"));
    config.rootfs_mode = RootfsMode::Auto;
    let runtime = ContainerRuntime::new(config).unwrap();
    let image = ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .cmd(vec!["sleep".to_owned(), "100000".to_owned()])
                .env(vec!["PATH=/bin".to_owned()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let settings = RuntimeSettings {
        restart: RestartPolicy::No,
        stop_grace_secs: Some(0),
        ..RuntimeSettings::default()
    };
    let snapshots = [snapshot];
    let app = AppName::new(format!("bench-{kind}")).unwrap();
    let direct_root = work.join("direct-root");
    // The baseline's bundle: one staged by the agent and never started by it.
    let base_digest = Digest::of(format!("baseline-{kind}-{}", std::process::id()).as_bytes());
    let base = runtime
        .stage(StageRequest {
            app: &app,
            release_digest: &base_digest,
            image: &image,
            settings: &settings,
            snapshots: &snapshots,
            allow_privileged: false,
        })
        .await
        .unwrap();
    let bundle = base.dir.to_str().unwrap().to_owned();
    eprintln!("runtime_bench: {kind}: {n} runs each, bundle {bundle}");
    for i in 0..n {
        // The agent: stage (not timed), then timed_start.
        let digest = Digest::of(format!("agent-{kind}-{}-{i}", std::process::id()).as_bytes());
        let staged = runtime
            .stage(StageRequest {
                app: &app,
                release_digest: &digest,
                image: &image,
                settings: &settings,
                snapshots: &snapshots,
                allow_privileged: false,
            })
            .await
            .unwrap();
        let (supervisor, took) = runtime.timed_start(&staged).await.unwrap();
        println!("agent {}", ms(took));
        supervisor.stop(Duration::ZERO).await.unwrap();
        runtime.remove(&staged.id).await.unwrap();

        // Baseline: `run -d` of the same kind of bundle (detached, as the agent's).
        let id = format!("direct-{kind}-{i}");
        let begin = Instant::now();
        let ok = direct(
            binary,
            &direct_root,
            &["run", "-d", "--bundle", &bundle, &id],
        );
        let took = begin.elapsed();
        assert!(ok.success(), "{binary:?} run -d failed");
        println!("run-d {}", ms(took));
        direct(binary, &direct_root, &["delete", "--force", &id]);

        // Baseline: `create` + `start`, the two calls the agent makes.
        let id = format!("direct-cs-{kind}-{i}");
        let begin = Instant::now();
        let ok = direct(binary, &direct_root, &["create", "--bundle", &bundle, &id]);
        assert!(ok.success(), "{binary:?} create failed");
        let ok = direct(binary, &direct_root, &["start", &id]);
        let took = begin.elapsed();
        assert!(ok.success(), "{binary:?} start failed");
        println!("create-start {}", ms(took));
        direct(binary, &direct_root, &["delete", "--force", &id]);
    }
    runtime.remove(&base.id).await.unwrap();
}

// ------------------------------------------------------------- device ---

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    hex
}

/// Writes a one-layer busybox image tagged `name`; returns its manifest digest.
fn image(layout: &Path, base: &(String, u64), name: &str) -> Digest {
    let (base_hex, base_size) = base;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", format!("echo {name}; exec sleep 100000")]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{base_hex}")]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_hex = blob(layout, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{base_hex}"), "size": base_size}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let hex = blob(layout, &manifest);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{hex}"), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    Digest::new(format!("sha256:{hex}")).unwrap()
}

/// `dir/trust.json`: a version 1 root naming the root, release and director keys.
fn write_trust(dir: &Path, [root_key, release_key, director_key]: [&SigningKey; 3]) {
    let id = |k: &SigningKey| KeyId::of(&k.verifying_key());
    let role = |k: &SigningKey| RoleKeys {
        keyids: vec![id(k)],
        threshold: 1,
    };
    let mut keys = BTreeMap::new();
    for k in [root_key, release_key, director_key] {
        keys.insert(id(k), PublicKey::ed25519(&k.verifying_key()));
    }
    let root = Root {
        schema: ROOT_SCHEMA_VERSION,
        version: 1,
        expires_at: now() + 365 * 86400,
        keys,
        roles: Roles {
            root: role(root_key),
            release: role(release_key),
            director: role(director_key),
        },
        allow_privileged: false,
    };
    let trust = dsse::sign(
        ROOT_PAYLOAD_TYPE,
        &serde_json::to_vec(&root).unwrap(),
        &[root_key],
    );
    std::fs::write(dir.join("trust.json"), trust.to_json()).unwrap();
}

fn device(dir: &Path, runtime: &str, binary: &Path, broker: &str) {
    let (root_key, release_key, director_key) = (key(0x11), key(0x21), key(0x31));
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    let rootfs = dir.join("busybox-rootfs");
    busybox_rootfs(&rootfs);
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &rootfs).unwrap();
    let tar = builder.into_inner().unwrap();
    let base = (blob(&layout, &tar), tar.len() as u64);
    std::fs::remove_dir_all(&rootfs).unwrap();

    let mut apps = Vec::new();
    for name in ["alpha", "beta"] {
        let manifest = image(&layout, &base, name);
        let release = Release {
            schema: SCHEMA_VERSION,
            app: AppName::new(name).unwrap(),
            version: "1".into(),
            repository: format!("local/{name}"),
            manifest_digest: manifest,
            runtime: RuntimeSettings {
                restart: RestartPolicy::Always,
                probation_secs: Some(2),
                stop_grace_secs: Some(1),
                ..RuntimeSettings::default()
            },
        };
        let envelope = dsse::sign(
            RELEASE_PAYLOAD_TYPE,
            &serde_json::to_vec(&release).unwrap(),
            &[&release_key],
        );
        apps.push(DesiredApp {
            app: AppName::new(name).unwrap(),
            release_digest: Digest::of(&envelope.payload_bytes().unwrap()),
            release: envelope,
        });
    }
    let state = DesiredState {
        schema: SCHEMA_VERSION,
        device: DeviceId::new(DEVICE).unwrap(),
        generation: 1,
        issued_at: now() - 10,
        expires_at: now() + 86400,
        apps,
    };
    let desired = dsse::sign(
        DESIRED_STATE_PAYLOAD_TYPE,
        &serde_json::to_vec(&state).unwrap(),
        &[&director_key],
    );
    std::fs::write(dir.join("desired.json"), desired.to_json()).unwrap();

    write_trust(dir, [&root_key, &release_key, &director_key]);

    let d = |p: &str| -> PathBuf { dir.join(p) };
    let config = format!(
        "device_id = \"{DEVICE}\"\nstate_dir = \"{state}\"\ntrust = \"{trust}\"\n\
         broker = \"{broker}\"\ntoken = \"anonymous-broker\"\n\
         [runtime]\nkind = \"{runtime}\"\nbinary = \"{binary}\"\nroot = \"{root}\"\n\
         [deploy]\nprobation_secs = 2\n\
         [store]\nreserve_bytes = 0\n",
        state = d("state").display(),
        trust = d("trust.json").display(),
        binary = binary.display(),
        root = d("runtime-root").display(),
    );
    std::fs::write(dir.join("agent.toml"), config).unwrap();
}
