//! Harness for the lifecycle tests: busybox images written as an OCI image
//! layout, releases and desired states signed with keys from fixed seeds, a
//! device (state dir, trust.json, config, its own runtime root) and the
//! `fleet-agent` binary run as a subprocess.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleet_protocol::dsse::{
    self, DESIRED_STATE_PAYLOAD_TYPE, Envelope, KeyId, RELEASE_PAYLOAD_TYPE, ROOT_PAYLOAD_TYPE,
    SigningKey,
};
use fleet_protocol::message::{HealthCheck, Probe, RestartPolicy, RuntimeSettings};
use fleet_protocol::trust::{PublicKey, ROOT_SCHEMA_VERSION, RoleKeys, Roles};
use fleet_protocol::{
    AppName, DesiredApp, DesiredState, DeviceId, Digest, Release, Root, SCHEMA_VERSION,
};
use sha2::{Digest as _, Sha256};

pub const DEVICE: &str = "cam-01";
const BUSYBOX: &str = "/bin/busybox";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn root_key() -> SigningKey {
    SigningKey::from_bytes(&[0x11; 32])
}
pub fn release_key() -> SigningKey {
    SigningKey::from_bytes(&[0x21; 32])
}
pub fn director_key() -> SigningKey {
    SigningKey::from_bytes(&[0x31; 32])
}
pub fn stranger_key() -> SigningKey {
    SigningKey::from_bytes(&[0x66; 32])
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether this machine can run the lifecycle tests; says loudly why not.
pub fn can_run(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: {test}: needs root (overlay mounts, crun/runc)");
        return false;
    }
    if !Path::new(BUSYBOX).is_file() {
        eprintln!("SKIPPED: {test}: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    // crun 1.8 refuses hybrid cgroup hosts whose hugetlb sits on v2.
    let _ = Command::new("sh")
        .arg("-c")
        .arg("[ -d /sys/fs/cgroup ] && { mkdir -p /sys/fs/cgroup/hugetlb; mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb; } || true")
        .status();
    true
}

/// The runtime binary, or a loud skip.
pub fn runtime_binary(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|p| {
            p.to_str().map(|p| {
                p.split(':')
                    .chain(["/usr/sbin", "/sbin", "/usr/bin"])
                    .map(|d| Path::new(d).join(name))
                    .find(|p| p.is_file())
            })
        })
        .flatten();
    if found.is_none() {
        eprintln!("SKIPPED: {test}: {name} not found (apt-get install {name})");
    }
    found
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An OCI image layout directory holding any number of images.
pub struct Layout {
    pub dir: PathBuf,
    base_layer: (String, u64),
}

/// One image in the layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Digest,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        let rootfs = dir.join("../busybox-rootfs");
        busybox_rootfs(&rootfs);
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &rootfs).unwrap();
        let tar = builder.into_inner().unwrap();
        let mut layout = Layout {
            dir: dir.to_owned(),
            base_layer: (String::new(), 0),
        };
        let hex = layout.blob(&tar);
        layout.base_layer = (hex, tar.len() as u64);
        layout
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let hex = sha(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        hex
    }

    /// An image: the busybox layer plus a small layer with `/etc/version`.
    pub fn image(&self, version: &str) -> Image {
        let mut builder = tar::Builder::new(Vec::new());
        let content = format!("{version}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/version", content.as_bytes())
            .unwrap();
        // The layout's own path makes every device's images (so release
        // digests, container ids and cgroup paths) its own: devices of tests
        // running at the same time, here or in another checkout, built in
        // the same second would otherwise share them, and one runtime's
        // cgroup-wide kill would take the other's container with it.
        let origin = format!("{}\n", self.dir.display());
        let mut header = tar::Header::new_gnu();
        header.set_size(origin.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/fleet-test-layout", origin.as_bytes())
            .unwrap();
        let top = builder.into_inner().unwrap();
        let top_hex = self.blob(&top);
        let (base_hex, base_size) = &self.base_layer;
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "sleep 100000"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{base_hex}"), format!("sha256:{top_hex}")]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_hex = self.blob(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": format!("sha256:{config_hex}"), "size": config.len()},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": format!("sha256:{base_hex}"), "size": base_size},
                {"mediaType": OCI_LAYER, "digest": format!("sha256:{top_hex}"), "size": top.len()},
            ],
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let hex = self.blob(&manifest);
        let index_path = self.dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": format!("sha256:{hex}"), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": version},
        }));
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        Image {
            manifest: Digest::new(format!("sha256:{hex}")).unwrap(),
        }
    }
}

fn busybox_rootfs(dir: &Path) {
    if dir.join("bin/busybox").is_file() {
        return;
    }
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
}

/// How a test release behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs and passes its exec health check.
    Good,
    /// Runs, but its health check fails.
    Unhealthy,
    /// Exits at once, again and again.
    CrashLoop,
}

pub fn settings(behaviour: Behaviour) -> RuntimeSettings {
    let check = |cmd: &str, retries: u32| HealthCheck {
        probe: Probe::Exec {
            command: vec![cmd.to_owned()],
        },
        interval_secs: 1,
        timeout_secs: 5,
        retries,
        start_period_secs: 0,
    };
    let mut s = RuntimeSettings {
        probation_secs: Some(2),
        stop_grace_secs: Some(1),
        restart: RestartPolicy::Always,
        ..RuntimeSettings::default()
    };
    match behaviour {
        Behaviour::Good => s.health = Some(check("/bin/true", 3)),
        Behaviour::Unhealthy => s.health = Some(check("/bin/false", 1)),
        Behaviour::CrashLoop => {
            s.args = Some(vec!["/bin/sh".into(), "-c".into(), "exit 3".into()]);
        }
    }
    s
}

pub fn signed_release(
    app: &str,
    version: &str,
    image: &Image,
    behaviour: Behaviour,
    key: &SigningKey,
) -> Envelope {
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new(app).unwrap(),
        version: version.into(),
        repository: format!("local/{app}"),
        manifest_digest: image.manifest.clone(),
        runtime: settings(behaviour),
    };
    dsse::sign(
        RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(&release).unwrap(),
        &[key],
    )
}

/// The digest a desired state names for a release envelope.
pub fn release_digest(envelope: &Envelope) -> Digest {
    Digest::of(&envelope.payload_bytes().unwrap())
}

pub fn desired(generation: u64, expires_at: u64, releases: &[(&str, Envelope)]) -> Vec<u8> {
    let state = DesiredState {
        schema: SCHEMA_VERSION,
        device: DeviceId::new(DEVICE).unwrap(),
        generation,
        issued_at: now() - 10,
        expires_at,
        apps: releases
            .iter()
            .map(|(app, env)| DesiredApp {
                app: AppName::new(*app).unwrap(),
                release_digest: release_digest(env),
                release: env.clone(),
            })
            .collect(),
    };
    dsse::sign(
        DESIRED_STATE_PAYLOAD_TYPE,
        &serde_json::to_vec(&state).unwrap(),
        &[&director_key()],
    )
    .to_json()
}

pub fn trust_json() -> Vec<u8> {
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
        expires_at: now() + 10 * 365 * 86400,
        keys,
        roles: Roles {
            root: role(&root_key()),
            release: role(&release_key()),
            director: role(&director_key()),
        },
        allow_privileged: false,
    };
    dsse::sign(
        ROOT_PAYLOAD_TYPE,
        &serde_json::to_vec(&root).unwrap(),
        &[&root_key()],
    )
    .to_json()
}

/// The runtime container id of a release (as the agent names it).
pub fn container_id(app: &str, release: &Envelope) -> String {
    format!("fleet-{app}-{}", &release_digest(release).hex()[..12])
}

/// One device: state dir, trust root, config, its own runtime root.
pub struct Device {
    pub dir: tempfile::TempDir,
    pub runtime: String,
    pub binary: PathBuf,
}

impl Device {
    pub fn new(runtime: &str, binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trust.json"), trust_json()).unwrap();
        let config = format!(
            "device_id = \"{DEVICE}\"\nstate_dir = \"{state}\"\ntrust = \"{trust}\"\n\
             [runtime]\nkind = \"{runtime}\"\nbinary = \"{binary}\"\nroot = \"{root}\"\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 400\n\
             [deploy]\nprobation_secs = 2\ncrash_loop_restarts = 2\n\
             [store]\nreserve_bytes = 0\n",
            state = dir.path().join("state").display(),
            trust = dir.path().join("trust.json").display(),
            binary = binary.display(),
            root = dir.path().join("runtime-root").display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Device {
            dir,
            runtime: runtime.to_owned(),
            binary: binary.to_owned(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` to a file in the device dir and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs `fleet-agent <args>` with this device's config.
    pub fn agent(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-agent"));
        cmd.args(args)
            .env("FLEET_AGENT_CONFIG", self.path("config.toml"))
            .env_remove("FLEET_AGENT_CRASH_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    pub fn apply(&self, desired: &Path, layout: &Path, env: &[(&str, &str)]) -> Output {
        self.agent(
            &[
                "apply",
                "--content",
                layout.to_str().unwrap(),
                desired.to_str().unwrap(),
            ],
            env,
        )
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.agent(&["status", "-o", "json"], &[]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn runtime_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(self.path("runtime-root"));
        cmd
    }

    /// `<runtime> --root R state ID`'s status, or None if it does not know it.
    pub fn runtime_status(&self, id: &str) -> Option<String> {
        let out = self.runtime_cmd().args(["state", id]).output().unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Some(v["status"].as_str().unwrap().to_owned())
    }

    /// The pid `<runtime> state` reports for a container, if it has one.
    pub fn runtime_pid(&self, id: &str) -> Option<i64> {
        let out = self.runtime_cmd().args(["state", id]).output().unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["pid"].as_i64().filter(|p| *p > 0)
    }

    /// `<runtime> --root R list`: (id, status) of every container.
    pub fn runtime_list(&self) -> Vec<(String, String)> {
        if !self.path("runtime-root").exists() {
            return Vec::new();
        }
        let out = self
            .runtime_cmd()
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "list: {}", text(&out));
        let s = String::from_utf8_lossy(&out.stdout);
        let s = s.trim();
        if s.is_empty() || s == "null" {
            return Vec::new();
        }
        let v: Vec<serde_json::Value> = serde_json::from_str(s).unwrap();
        v.iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The ids of running containers.
    pub fn running(&self) -> Vec<String> {
        self.runtime_list()
            .into_iter()
            .filter(|(_, s)| s == "running")
            .map(|(id, _)| id)
            .collect()
    }

    /// Asserts exactly one container runs, it is one of `allowed`, and
    /// `status -o json` names the same release as running. Returns its id.
    pub fn assert_one_running(&self, app: &str, allowed: &[&Envelope]) -> String {
        self.assert_one_running_at("", app, allowed)
    }

    /// [`Device::assert_one_running`], its panic messages prefixed with `at`
    /// (e.g. the crash point).
    pub fn assert_one_running_at(&self, at: &str, app: &str, allowed: &[&Envelope]) -> String {
        let list = self.runtime_list();
        let running = self.running();
        assert_eq!(
            running.len(),
            1,
            "{at}: exactly one running container: {list:?}\n{}",
            self.diagnose()
        );
        assert_eq!(
            list.len(),
            1,
            "{at}: no other container left: {list:?}\n{}",
            self.diagnose()
        );
        let id = running[0].clone();
        assert!(
            allowed.iter().any(|e| container_id(app, e) == id),
            "{at}: {id} is none of the expected releases"
        );
        let status = self.status();
        let entry = status["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .unwrap_or_else(|| panic!("{at}: no app {app} in status {status}"));
        let digest = entry["running"]["release_digest"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{at}: status says nothing runs: {entry}\n{}",
                    self.diagnose()
                )
            });
        let hex = digest.strip_prefix("sha256:").unwrap();
        assert_eq!(
            format!("fleet-{app}-{}", &hex[..12]),
            id,
            "{at}: status {entry}"
        );
        id
    }
}

impl Device {
    /// What the runtime and the container directories say, for a failure
    /// message: each container's state, pid file, process and runtime log.
    pub fn diagnose(&self) -> String {
        let mut out = format!("runtime list: {:?}\n", self.runtime_list());
        let Ok(entries) = std::fs::read_dir(self.path("state/containers")) else {
            return out;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(dir.join("container.pid")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .unwrap_or_else(|e| format!("({e})"));
            let state = self
                .runtime_cmd()
                .args(["state", &id])
                .output()
                .map(|o| text(&o))
                .unwrap_or_default();
            let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            out.push_str(&format!(
                "container {id}: pid file {pid:?}, /proc stat {stat:?}\nstate: {state}\n\
                 runtime.log: {}\nstdout: {}\nstderr: {}\n",
                log("runtime.log"),
                log("logs/stdout.log"),
                log("logs/stderr.log"),
            ));
        }
        out
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for (id, _) in self.runtime_list() {
            let _ = self.runtime_cmd().args(["delete", "--force", &id]).output();
        }
        if let Ok(entries) = std::fs::read_dir(self.path("state/containers")) {
            for e in entries.flatten() {
                let _ =
                    nix::mount::umount2(&e.path().join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn app_status<'a>(status: &'a serde_json::Value, app: &str) -> &'a serde_json::Value {
    status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .unwrap()
}
