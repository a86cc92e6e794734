//! Harness for the runtime tests: root and runtime checks, a busybox rootfs,
//! isolated runtime roots and a guard that removes containers even when a
//! test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fleet_agent::runtime::{
    BackoffConfig, ContainerId, ContainerRuntime, DriverConfig, RootfsMode, RuntimeConfig,
    RuntimeKind, StageRequest, Staged,
};
use fleet_protocol::id::{AppName, Digest};
use fleet_protocol::message::RuntimeSettings;
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};

const BUSYBOX: &str = "/bin/busybox";

/// Whether the machine can run these tests; says loudly why not.
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

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The runtimes installed here; each missing one is reported as skipped.
pub fn runtimes(test: &str) -> Vec<(RuntimeKind, PathBuf)> {
    let mut out = Vec::new();
    for kind in [RuntimeKind::Crun, RuntimeKind::Runc] {
        match find_binary(kind.default_binary()) {
            Some(path) => out.push((kind, path)),
            None => eprintln!("SKIPPED: {test} with {kind}: binary not found"),
        }
    }
    out
}

/// A busybox rootfs (static busybox + applet symlinks) as one snapshot dir.
pub fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "www", "root"] {
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
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(dir.join("www/index.html"), "hello from busybox\n").unwrap();
    std::fs::write(dir.join("etc/motd"), "bottom layer\n").unwrap();
}

pub fn image(cmd: &[&str]) -> ImageConfiguration {
    let config = ConfigBuilder::default()
        .cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_owned()])
        .build()
        .unwrap();
    ImageConfigurationBuilder::default()
        .config(config)
        .build()
        .unwrap()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One isolated environment: a temp state dir, its own runtime `--root`,
/// and a guard that deletes every container it staged.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub kind: RuntimeKind,
    pub binary: PathBuf,
    pub runtime: ContainerRuntime,
    staged: std::sync::Mutex<Vec<ContainerId>>,
}

impl Env {
    pub fn new(kind: RuntimeKind, binary: &Path) -> Self {
        Self::with_mode(kind, binary, RootfsMode::Auto)
    }

    pub fn with_mode(kind: RuntimeKind, binary: &Path, mode: RootfsMode) -> Self {
        Self::with_host_root(kind, binary, mode, Path::new("/"))
    }

    /// With host files (CDI specs, device nodes) read under `host_root`.
    pub fn with_host_root(
        kind: RuntimeKind,
        binary: &Path,
        mode: RootfsMode,
        host_root: &Path,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Self::config(tmp.path(), kind, binary, mode);
        config.host_root = host_root.to_owned();
        // The agent's own GPU hook, when a test puts the binary there.
        config.gpu_hook = Some(PathBuf::from("/usr/bin/fleet-agent"));
        let runtime = ContainerRuntime::new(config).unwrap();
        Env {
            tmp,
            kind,
            binary: binary.to_owned(),
            runtime,
            staged: Default::default(),
        }
    }

    pub fn config(
        state: &Path,
        kind: RuntimeKind,
        binary: &Path,
        mode: RootfsMode,
    ) -> RuntimeConfig {
        let driver = DriverConfig::new(kind)
            .with_binary(binary)
            .with_root(state.join("runtime-root"));
        let mut config = RuntimeConfig::new(driver, state);
        config.rootfs_mode = mode;
        config.backoff = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        };
        config
    }

    /// A fresh runtime handle on the same state (as after an agent restart).
    pub fn reopen(&self) -> ContainerRuntime {
        ContainerRuntime::new(Self::config(
            self.tmp.path(),
            self.kind,
            &self.binary,
            self.runtime.config().rootfs_mode,
        ))
        .unwrap()
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.tmp.path().join("runtime-root")
    }

    /// A single busybox snapshot dir.
    pub fn busybox_snapshot(&self) -> PathBuf {
        let dir = self.tmp.path().join("snapshots/busybox");
        if !dir.exists() {
            busybox_rootfs(&dir);
        }
        dir
    }

    /// App name and release digest unique to this test and runtime.
    pub fn release(&self, test: &str) -> (AppName, Digest) {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let app = AppName::new(format!("{test}-{}", self.kind)).unwrap();
        let digest =
            Digest::of(format!("{test}-{}-{}-{n}", self.kind, std::process::id()).as_bytes());
        (app, digest)
    }

    pub async fn stage(
        &self,
        test: &str,
        snapshots: &[PathBuf],
        image: &ImageConfiguration,
        settings: &RuntimeSettings,
    ) -> Staged {
        let (app, digest) = self.release(test);
        let id = ContainerId::for_release(&app, &digest);
        self.staged.lock().unwrap().push(id);
        self.runtime
            .stage(StageRequest {
                app: &app,
                release_digest: &digest,
                image,
                settings,
                snapshots,
                allow_privileged: false,
            })
            .await
            .unwrap()
    }

    /// Asks the runtime binary itself (not the agent) for a container's state.
    pub fn runtime_state(&self, id: &ContainerId) -> Option<serde_json::Value> {
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(self.runtime_root())
            .arg("state")
            .arg(id.as_str())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Ids the runtime binary lists under this env's root.
    pub fn runtime_list(&self) -> Vec<String> {
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(self.runtime_root())
            .args(["list", "--quiet"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn annotations(id: &ContainerId) -> BTreeMap<String, String> {
        BTreeMap::from([("id".to_owned(), id.to_string())])
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.staged.lock().unwrap().iter() {
            let _ = Command::new(&self.binary)
                .arg("--root")
                .arg(self.runtime_root())
                .args(["delete", "--force", id.as_str()])
                .output();
            let _ = fleet_agent::runtime::rootfs::remove(&self.runtime.container_dir(id));
        }
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const LONG: Duration = Duration::from_secs(60);
