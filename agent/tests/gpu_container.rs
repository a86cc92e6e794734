//! A real crun and runc container started through the agent's bundle path
//! with a CDI spec whose devices and libraries are stand-ins that exist
//! here: character devices mknod'ed with `/dev/null`'s and `/dev/zero`'s
//! numbers under Tegra names, a small shared library, and a hook that
//! writes a marker file. Inside the container the nodes (usable: the cgroup
//! allows them), the mounts, the env, the groups and the hook's marker are
//! present, and the spec's device that was not requested is not. And the
//! CSV fallback on a host without NVIDIA's hook program: the agent binary
//! is the hook that makes the `sym` links and the ld.so cache, so the
//! library's SONAME resolves in the container. Needs root (mknod, overlay,
//! crun/runc); skips loudly otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fleet_agent::runtime::RootfsMode;
use fleet_protocol::message::{GpuRequest, RestartPolicy, RuntimeSettings};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use runtime_support::{Env, LONG, can_run, image, runtimes, wait_until};

const LIB: &str = "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1";

fn node(root: &Path, path: &str, minor: u64, mode: u32, gid: u32) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    mknod(
        &p,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        makedev(1, minor),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
}

/// The host tree: nodes, a library, the hook and the spec.
fn host_tree(root: &Path) {
    node(root, "/dev/nvhost-ctrl-gpu", 3, 0o660, 44);
    node(root, "/dev/nvgpu/igpu0/ctrl", 5, 0o666, 0);
    node(root, "/dev/nvhost-unrequested", 3, 0o666, 0);
    let lib = root.join(LIB.trim_start_matches('/'));
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    // A small shared library: a copy of one on this machine when found.
    let small = [
        "/lib/x86_64-linux-gnu/libdl.so.2",
        "/lib/aarch64-linux-gnu/libdl.so.2",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file());
    match small {
        Some(src) => drop(std::fs::copy(src, &lib).unwrap()),
        None => std::fs::write(&lib, b"\x7fELF stand-in").unwrap(),
    }
    let marker_dir = root.join("usr/share/fleet-test");
    std::fs::create_dir_all(&marker_dir).unwrap();
    let hook = root.join("usr/bin/fleet-test-hook");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n# The runtime passes the container state on stdin.\ncat > {}/marker\n",
            marker_dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = format!(
        r#"cdiVersion: 0.7.0
kind: fleet.test/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvhost-ctrl-gpu
    - path: /dev/nvgpu/igpu0/ctrl
- name: other
  containerEdits:
    deviceNodes:
    - path: /dev/nvhost-unrequested
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  - FLEET_GPU_TEST=1
  additionalGids: [1001]
  mounts:
  - hostPath: {LIB}
    containerPath: {LIB}
    options: [ro, nosuid, nodev, rbind, rprivate]
  - hostPath: /usr/share/fleet-test
    containerPath: /fleet-marker
    options: [ro, rbind]
  hooks:
  - hookName: createContainer
    path: /usr/bin/fleet-test-hook
    args: [fleet-test-hook]
"#
    );
    let cdi = root.join("etc/cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::write(cdi.join("fleet-test.yaml"), spec).unwrap();
}

const SCRIPT: &str = "\
ls -ln /dev/nvhost-ctrl-gpu /dev/nvgpu/igpu0/ctrl | awk '{print $1, $5, $6}'; \
head -c 4 /dev/nvgpu/igpu0/ctrl | od -An -tx1; \
echo hi > /dev/nvhost-ctrl-gpu && echo WRITE_OK; \
test -e /dev/nvhost-unrequested || echo NO_UNREQUESTED; \
test -f /usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1 && echo LIB_OK; \
echo ENV=$FLEET_GPU_TEST/$NVIDIA_VISIBLE_DEVICES; \
grep Groups /proc/self/status; \
grep -q '\"id\"' /fleet-marker/marker && echo HOOK_OK";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_devices_mounts_env_groups_and_hooks_reach_crun_and_runc_containers() {
    let test = "gpu-cdi";
    if !can_run(test) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    if let Err(e) = std::panic::catch_unwind(|| host_tree(host.path())) {
        eprintln!("SKIPPED: {test}: cannot mknod here ({e:?})");
        return;
    }
    for (kind, binary) in runtimes(test) {
        std::fs::remove_file(host.path().join("usr/share/fleet-test/marker")).ok();
        let env = Env::with_host_root(kind, &binary, RootfsMode::Auto, host.path());
        let s = RuntimeSettings {
            args: Some(vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()]),
            devices: vec!["fleet.test/gpu=0".into()],
            restart: RestartPolicy::No,
            ..Default::default()
        };
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(staged.dir.join("config.json")).unwrap())
                .unwrap();
        let rules = &config["linux"]["resources"]["devices"];
        assert_eq!(rules[0]["allow"], false, "{kind}: deny-all first: {rules}");
        for minor in [3, 5] {
            assert!(
                rules.as_array().unwrap().iter().any(|r| r["allow"] == true
                    && r["type"] == "c"
                    && r["major"] == 1
                    && r["minor"] == minor
                    && r["access"] == "rwm"),
                "{kind}: allow rule for 1:{minor}: {rules}"
            );
        }
        let paths: Vec<&str> = config["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"],
            "{kind}"
        );
        let caps = config["process"]["capabilities"]["bounding"].to_string();
        assert!(
            !caps.contains("CAP_SYS_ADMIN"),
            "{kind}: no privilege added: {caps}"
        );
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let stdout = staged.dir.join("logs/stdout.log");
        let read = || std::fs::read_to_string(&stdout).unwrap_or_default();
        assert!(
            wait_until(LONG, || read().contains("Groups")).await,
            "{kind}: {:?} / {:?}",
            read(),
            std::fs::read_to_string(staged.dir.join("logs/stderr.log")).unwrap_or_default()
        );
        wait_until(LONG, || read().contains("HOOK_OK")).await;
        let out = read();
        eprintln!("{kind} container output:\n{out}");
        assert!(
            out.contains("crw-rw---- 1, 3"),
            "{kind}: node with host mode and numbers: {out}"
        );
        assert!(out.contains("crw-rw-rw- 1, 5"), "{kind}: {out}");
        assert!(
            out.contains("00 00 00 00"),
            "{kind}: /dev/zero stand-in readable: {out}"
        );
        assert!(
            out.contains("WRITE_OK"),
            "{kind}: cgroup allows the node: {out}"
        );
        assert!(out.contains("NO_UNREQUESTED"), "{kind}: {out}");
        assert!(out.contains("LIB_OK"), "{kind}: {out}");
        assert!(out.contains("ENV=1/void"), "{kind}: {out}");
        let groups = out.lines().find(|l| l.starts_with("Groups")).unwrap();
        assert!(
            groups.contains("44") && groups.contains("1001"),
            "{kind}: {groups}"
        );
        assert!(out.contains("HOOK_OK"), "{kind}: {out}");
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
        env.runtime.remove(&staged.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_request_the_host_cannot_satisfy_fails_staging_by_name() {
    let test = "gpu-none";
    if !can_run(test) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    for (kind, binary) in runtimes(test) {
        let env = Env::with_host_root(kind, &binary, RootfsMode::Auto, host.path());
        let s = RuntimeSettings {
            args: Some(vec!["/bin/true".into()]),
            gpu: Some(GpuRequest::All),
            ..Default::default()
        };
        let (app, digest) = env.release(test);
        let snapshots = [env.busybox_snapshot()];
        let err = env
            .runtime
            .stage(fleet_agent::runtime::StageRequest {
                app: &app,
                release_digest: &digest,
                image: &image(&["/bin/sh"]),
                settings: &s,
                snapshots: &snapshots,
                allow_privileged: false,
            })
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no CDI spec defines device nvidia.com/gpu=all"),
            "{kind}: {err}"
        );
    }
}

/// A Jetson without a CDI spec nor NVIDIA's toolkit: CSV files, a device
/// node, a driver library with its SONAME (built here with gcc), its `sym`
/// link, glibc's `ldconfig`, and the agent binary under the host root.
fn csv_host_tree(root: &Path) -> bool {
    node(root, "/dev/nvmap", 3, 0o666, 0);
    let dir = root.join("usr/lib/aarch64-linux-gnu/tegra");
    std::fs::create_dir_all(&dir).unwrap();
    let built = std::process::Command::new("gcc")
        .args([
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(dir.join("libcuda.so.1.1"))
        .args(["-x", "c", "/dev/null"])
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        return false;
    }
    std::os::unix::fs::symlink("libcuda.so.1.1", dir.join("libcuda.so")).unwrap();
    let csv = root.join("etc/nvidia-container-runtime/host-files-for-container.d");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::write(csv.join("devices.csv"), "dev, /dev/nvmap\n").unwrap();
    std::fs::write(
        csv.join("drivers.csv"),
        "lib, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1\n\
         sym, /usr/lib/aarch64-linux-gnu/tegra/libcuda.so\n",
    )
    .unwrap();
    let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let Some(ldconfig) = ldconfig else {
        return false;
    };
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    std::fs::copy(ldconfig, root.join("sbin/ldconfig")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_fleet-agent"),
        root.join("usr/bin/fleet-agent"),
    )
    .unwrap();
    true
}

const CSV_SCRIPT: &str = "\
cd /usr/lib/aarch64-linux-gnu/tegra; \
echo SYM=$(readlink libcuda.so); \
echo SONAME=$(readlink libcuda.so.1); \
grep -q /usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1 /etc/ld.so.cache && echo LDCACHE_OK; \
cat /etc/ld.so.conf.d/00-fleet-tegra.conf; \
echo LDP=[$LD_LIBRARY_PATH]; echo DONE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_fallback_without_nvidia_hooks_gets_links_and_ld_cache_from_the_agent_hook() {
    let test = "gpu-csv-hook";
    if !can_run(test) {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    match std::panic::catch_unwind(|| csv_host_tree(host.path())) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("SKIPPED: {test}: needs gcc and glibc's ldconfig on this machine");
            return;
        }
        Err(e) => {
            eprintln!("SKIPPED: {test}: cannot mknod here ({e:?})");
            return;
        }
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::with_host_root(kind, &binary, RootfsMode::Auto, host.path());
        let s = RuntimeSettings {
            args: Some(vec!["/bin/sh".into(), "-c".into(), CSV_SCRIPT.into()]),
            gpu: Some(GpuRequest::All),
            restart: RestartPolicy::No,
            ..Default::default()
        };
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(staged.dir.join("config.json")).unwrap())
                .unwrap();
        let hooks = &config["hooks"]["createContainer"];
        assert_eq!(
            (&hooks[0]["args"][1], &hooks[0]["args"][2]),
            (&"oci-hook".into(), &"tegra-prepare".into()),
            "{kind}: {hooks}"
        );
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let stdout = staged.dir.join("logs/stdout.log");
        let read = || std::fs::read_to_string(&stdout).unwrap_or_default();
        let done = wait_until(LONG, || read().contains("DONE")).await;
        let out = read();
        eprintln!("{kind} container output:\n{out}");
        assert!(
            done,
            "{kind}: {out} / {:?}",
            std::fs::read_to_string(staged.dir.join("logs/stderr.log")).unwrap_or_default()
        );
        assert!(
            out.contains("SYM=libcuda.so.1.1"),
            "{kind}: sym link: {out}"
        );
        assert!(
            out.contains("SONAME=libcuda.so.1.1"),
            "{kind}: ldconfig made the SONAME link: {out}"
        );
        assert!(out.contains("LDCACHE_OK"), "{kind}: {out}");
        assert!(
            out.contains("\n/usr/lib/aarch64-linux-gnu/tegra\n"),
            "{kind}: {out}"
        );
        assert!(out.contains("LDP=[]"), "{kind}: no LD_LIBRARY_PATH: {out}");
        // The host's library directory got no link: they are in the rootfs.
        assert!(
            !host
                .path()
                .join("usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1")
                .exists(),
            "{kind}"
        );
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
        env.runtime.remove(&staged.id).await.unwrap();
    }
}
