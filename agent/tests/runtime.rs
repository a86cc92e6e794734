//! Runs real containers with crun and runc (each test against both): a
//! busybox rootfs, overlayfs layers, health checks, restart policy, stop,
//! adoption, runtime failures and cgroup limits. Needs root; skips loudly
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_agent::health::{Health, HealthMonitor, probe_once};
use fleet_agent::runtime::{
    ContainerRuntime, DriverConfig, DriverError, RootfsKind, RootfsMode, RunState, RuntimeError,
    StageRequest, rootfs,
};
use fleet_agent::runtime::{NetNs, ProbeTarget};
use fleet_protocol::message::{
    HealthCheck, NetworkMode, Probe, Resources, RestartPolicy, RuntimeSettings,
};
use runtime_support::{Env, LONG, can_run, free_port, image, runtimes, wait_until};

fn settings(args: &[&str], restart: RestartPolicy) -> RuntimeSettings {
    RuntimeSettings {
        args: Some(args.iter().map(|s| s.to_string()).collect()),
        restart,
        ..Default::default()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_container_runs_and_http_tcp_exec_checks_pass_and_fail() {
    let test = "serve";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let port = free_port();
        let snapshot = env.busybox_snapshot();
        let listen = format!("127.0.0.1:{port}");
        let staged = env
            .stage(
                test,
                &[snapshot],
                &image(&["/bin/httpd", "-f", "-p", &listen, "-h", "/www"]),
                &RuntimeSettings::default(),
            )
            .await;
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let pid = supervisor.status().pid().unwrap();

        // The runtime itself says it runs, with the pid the agent tracks.
        let state = env.runtime_state(&staged.id).expect("runtime knows it");
        assert_eq!(state["status"], "running", "{kind}: {state}");
        assert_eq!(state["pid"], pid, "{kind}");

        let target = ProbeTarget {
            driver: env.runtime.driver().clone(),
            container_id: staged.id.clone(),
            net: NetNs::Host,
        };
        let t = Duration::from_secs(10);
        let http_ok = Probe::Http {
            port,
            path: "/index.html".into(),
        };
        assert!(
            wait_until(LONG, || std::net::TcpStream::connect(&listen).is_ok()).await,
            "{kind}: httpd never listened"
        );
        probe_once(&http_ok, &target, t).await.unwrap();
        let missing = Probe::Http {
            port,
            path: "/missing".into(),
        };
        let err = probe_once(&missing, &target, t).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{kind}: {err}");
        probe_once(&Probe::Tcp { port }, &target, t).await.unwrap();
        probe_once(&Probe::Tcp { port: free_port() }, &target, t)
            .await
            .unwrap_err();
        let exec_ok = Probe::Exec {
            command: vec!["test".into(), "-f".into(), "/www/index.html".into()],
        };
        probe_once(&exec_ok, &target, t).await.unwrap();
        let exec_bad = Probe::Exec {
            command: vec!["test".into(), "-f".into(), "/nope".into()],
        };
        let err = probe_once(&exec_bad, &target, t).await.unwrap_err();
        assert!(err.to_string().contains("exited"), "{kind}: {err}");

        // A monitor publishes Healthy for a passing check and Unhealthy for a
        // failing one.
        let check = |probe| HealthCheck {
            probe,
            interval_secs: 1,
            timeout_secs: 5,
            retries: 2,
            start_period_secs: 0,
        };
        let good = HealthMonitor::spawn(check(http_ok), target.clone());
        let bad = HealthMonitor::spawn(check(missing), target.clone());
        let mut good_rx = good.subscribe();
        let mut bad_rx = bad.subscribe();
        tokio::time::timeout(LONG, good_rx.wait_for(|s| s.health == Health::Healthy))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(LONG, bad_rx.wait_for(|s| s.health == Health::Unhealthy))
            .await
            .unwrap()
            .unwrap();
        assert!(bad.state().last_error.unwrap().contains("404"));
        good.stop().await;
        bad.stop().await;

        supervisor.stop(Duration::from_secs(5)).await.unwrap();
        assert!(env.runtime_state(&staged.id).is_none(), "{kind}: deleted");
        env.runtime.remove(&staged.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_reach_a_container_with_its_own_network_namespace() {
    let test = "netns";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let snapshot = env.busybox_snapshot();
        // Port 80 inside its own namespace: nothing on the host listens there
        // for this container.
        let mut s = settings(
            &["/bin/httpd", "-f", "-p", "127.0.0.1:80", "-h", "/www"],
            RestartPolicy::No,
        );
        s.network = NetworkMode::None;
        let staged = env.stage(test, &[snapshot], &image(&["/bin/sh"]), &s).await;
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let status = supervisor.subscribe();
        let target = ProbeTarget {
            driver: env.runtime.driver().clone(),
            container_id: staged.id.clone(),
            net: NetNs::Container(std::sync::Arc::new(move || status.borrow().pid())),
        };
        let probe = Probe::Http {
            port: 80,
            path: "/".into(),
        };
        let mut ok = false;
        for _ in 0..100 {
            if probe_once(&probe, &target, Duration::from_secs(5))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "{kind}: HTTP probe inside the container's netns failed");
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_stack_through_overlayfs_and_unmount_on_removal() {
    let test = "layers";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::with_mode(kind, &binary, RootfsMode::Overlay);
        let bottom = env.busybox_snapshot();
        let top = env.tmp.path().join("snapshots/top");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(top.join("etc/motd"), "top layer\n").unwrap();
        std::fs::write(top.join("etc/extra"), "only in top\n").unwrap();
        let s = settings(
            &[
                "/bin/sh",
                "-c",
                "cat /etc/motd /etc/extra; echo written > /etc/by-app; echo err >&2",
            ],
            RestartPolicy::No,
        );
        let staged = env
            .stage(
                test,
                &[bottom.clone(), top.clone()],
                &image(&["/bin/sh"]),
                &s,
            )
            .await;
        assert_eq!(staged.rootfs.kind, RootfsKind::Overlay);
        assert!(rootfs::is_mount_point(&staged.rootfs.path));
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let mut status = supervisor.subscribe();
        tokio::time::timeout(
            LONG,
            status.wait_for(|s| matches!(s.state, RunState::Exited { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(supervisor.status().last_exit, Some(Some(0)), "{kind}");
        let stdout = staged.dir.join("logs/stdout.log");
        assert!(
            wait_until(LONG, || read(&stdout).contains("only in top")).await,
            "{kind}: stdout was {:?}",
            read(&stdout)
        );
        assert_eq!(read(&stdout), "top layer\nonly in top\n", "{kind}");
        assert!(
            wait_until(LONG, || read(&staged.dir.join("logs/stderr.log"))
                == "err\n")
            .await,
            "{kind}"
        );
        // Writes land in the container's upper dir, never in a snapshot.
        assert_eq!(read(&staged.dir.join("upper/etc/by-app")), "written\n");
        assert!(!bottom.join("etc/by-app").exists() && !top.join("etc/by-app").exists());
        assert_eq!(read(&bottom.join("etc/motd")), "bottom layer\n");

        supervisor.stop(Duration::from_secs(5)).await.unwrap();
        let mount = staged.rootfs.path.clone();
        env.runtime.remove(&staged.id).await.unwrap();
        assert!(!rootfs::is_mount_point(&mount), "{kind}: still mounted");
        assert!(!staged.dir.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_fallback_runs_the_same_container() {
    let test = "copy";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::with_mode(kind, &binary, RootfsMode::Copy);
        let s = settings(&["/bin/cat", "/etc/motd"], RestartPolicy::No);
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        assert_eq!(staged.rootfs.kind, RootfsKind::Copy);
        assert!(!rootfs::is_mount_point(&staged.rootfs.path));
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let stdout = staged.dir.join("logs/stdout.log");
        assert!(
            wait_until(LONG, || read(&stdout) == "bottom layer\n").await,
            "{kind}: {:?}",
            read(&stdout)
        );
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
        env.runtime.remove(&staged.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_policy_restarts_a_crashing_process_and_counts_crashes() {
    let test = "crash";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let snapshot = env.busybox_snapshot();
        let crash = ["/bin/sh", "-c", "echo started; exit 3"];

        for policy in [RestartPolicy::Always, RestartPolicy::OnFailure] {
            let staged = env
                .stage(
                    test,
                    std::slice::from_ref(&snapshot),
                    &image(&["/bin/sh"]),
                    &settings(&crash, policy),
                )
                .await;
            let supervisor = env.runtime.start(&staged).await.unwrap();
            let mut status = supervisor.subscribe();
            tokio::time::timeout(LONG, status.wait_for(|s| s.restarts >= 3))
                .await
                .unwrap_or_else(|_| panic!("{kind} {policy:?}: {:?}", supervisor.status()))
                .unwrap();
            let now = supervisor.status();
            assert!(now.consecutive_failures >= 3, "{kind}: {now:?}");
            assert_eq!(now.last_exit, Some(Some(3)), "{kind}: {now:?}");
            let stdout = staged.dir.join("logs/stdout.log");
            assert!(
                wait_until(LONG, || read(&stdout).matches("started").count() >= 3).await,
                "{kind}: {:?}",
                read(&stdout)
            );
            supervisor.stop(Duration::from_secs(5)).await.unwrap();
        }

        // on-failure does not restart a clean exit; no never restarts.
        for (policy, args) in [
            (RestartPolicy::OnFailure, ["/bin/sh", "-c", "exit 0"]),
            (RestartPolicy::No, ["/bin/sh", "-c", "exit 3"]),
        ] {
            let staged = env
                .stage(
                    test,
                    std::slice::from_ref(&snapshot),
                    &image(&["/bin/sh"]),
                    &settings(&args, policy),
                )
                .await;
            let supervisor = env.runtime.start(&staged).await.unwrap();
            let mut status = supervisor.subscribe();
            tokio::time::timeout(
                LONG,
                status.wait_for(|s| matches!(s.state, RunState::Exited { .. })),
            )
            .await
            .unwrap()
            .unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            let now = supervisor.status();
            assert_eq!(now.restarts, 0, "{kind} {policy:?}: {now:?}");
            assert!(matches!(now.state, RunState::Exited { .. }), "{now:?}");
            supervisor.stop(Duration::from_secs(5)).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let test = "stop";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let snapshot = env.busybox_snapshot();

        // Handles SIGTERM: exits cleanly within the grace period.
        let polite = [
            "/bin/sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
        ];
        let staged = env
            .stage(
                test,
                std::slice::from_ref(&snapshot),
                &image(&["/bin/sh"]),
                &settings(&polite, RestartPolicy::Always),
            )
            .await;
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let stdout = staged.dir.join("logs/stdout.log");
        assert!(
            wait_until(LONG, || read(&stdout).contains("up")).await,
            "{kind}"
        );
        let status = supervisor.subscribe();
        supervisor.stop(Duration::from_secs(30)).await.unwrap();
        let last = status.borrow().clone();
        assert_eq!(last.state, RunState::Stopped, "{kind}");
        assert_eq!(last.last_exit, Some(Some(0)), "{kind}: {last:?}");
        assert_eq!(last.restarts, 0, "{kind}: a requested stop is no crash");
        assert!(read(&stdout).contains("bye"), "{kind}: {:?}", read(&stdout));
        assert!(env.runtime_state(&staged.id).is_none());

        // Ignores SIGTERM: killed once the grace period is over.
        let stubborn = [
            "/bin/sh",
            "-c",
            "trap '' TERM; echo up; while true; do sleep 0.1; done",
        ];
        let staged = env
            .stage(
                test,
                std::slice::from_ref(&snapshot),
                &image(&["/bin/sh"]),
                &settings(&stubborn, RestartPolicy::Always),
            )
            .await;
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let stdout = staged.dir.join("logs/stdout.log");
        assert!(
            wait_until(LONG, || read(&stdout).contains("up")).await,
            "{kind}"
        );
        let status = supervisor.subscribe();
        supervisor.stop(Duration::from_millis(500)).await.unwrap();
        let last = status.borrow().clone();
        assert_eq!(last.last_exit, Some(Some(128 + 9)), "{kind}: {last:?}");
        assert!(env.runtime_state(&staged.id).is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_supervisor_adopts_a_running_container_instead_of_starting_another() {
    let test = "adopt";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let s = settings(
            &["/bin/sh", "-c", "while true; do echo tick; sleep 0.2; done"],
            RestartPolicy::Always,
        );
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        let first = env.runtime.start(&staged).await.unwrap();
        let pid = first.status().pid().unwrap();
        first.detach().await;

        // As after an agent restart: a new runtime handle on the same state.
        let runtime = env.reopen();
        let adopted = runtime.adopt_all().await.unwrap();
        assert_eq!(adopted.len(), 1, "{kind}");
        let (id, supervisor) = adopted.into_iter().next().unwrap();
        let supervisor = supervisor.unwrap();
        assert_eq!(id, staged.id);
        assert_eq!(supervisor.status().pid(), Some(pid), "{kind}: same process");
        // Starting the same release again adopts it too.
        let again = runtime.start(&staged).await.unwrap();
        assert_eq!(again.status().pid(), Some(pid), "{kind}");
        again.detach().await;
        assert_eq!(env.runtime_list(), vec![staged.id.to_string()], "{kind}");
        // Logs keep flowing through the re-opened pipe.
        let stdout = staged.dir.join("logs/stdout.log");
        let before = read(&stdout).len();
        assert!(
            wait_until(LONG, || read(&stdout).len() > before).await,
            "{kind}"
        );

        // An adopted container that dies is still noticed and restarted.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut status = supervisor.subscribe();
        tokio::time::timeout(
            LONG,
            status.wait_for(|s| s.restarts >= 1 && s.pid().is_some()),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind}: {:?}", supervisor.status()))
        .unwrap();
        assert_ne!(supervisor.status().pid(), Some(pid));
        assert_eq!(env.runtime_list().len(), 1, "{kind}");
        supervisor.stop(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_failures_carry_the_runtimes_own_message() {
    let test = "fail";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        // A binary that does not exist.
        let env = Env::new(kind, &binary);
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("no-such-runtime");
        // A copied rootfs: nothing stays mounted if an assertion fails.
        let mut config = Env::config(tmp.path(), kind, &bad, RootfsMode::Copy);
        config.driver = DriverConfig::new(kind)
            .with_binary(&bad)
            .with_root(tmp.path().join("root"));
        let broken = ContainerRuntime::new(config).unwrap();
        let (app, digest) = env.release(test);
        let s = settings(&["/bin/true"], RestartPolicy::No);
        let img = image(&["/bin/sh"]);
        let snapshots = [env.busybox_snapshot()];
        let staged = broken
            .stage(StageRequest {
                app: &app,
                release_digest: &digest,
                image: &img,
                settings: &s,
                snapshots: &snapshots,
                allow_privileged: false,
            })
            .await
            .unwrap();
        let err = broken.start(&staged).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::Driver(DriverError::Spawn { .. })),
            "{kind}: {err}"
        );
        assert!(err.to_string().contains("no-such-runtime"), "{err}");
        // The broken runtime cannot be asked to delete anything; the rootfs
        // is the agent's own.
        rootfs::remove(&staged.dir).unwrap();

        // A bundle whose command does not exist in the rootfs.
        let s = settings(&["/no/such/program"], RestartPolicy::No);
        let staged = env.stage(test, &snapshots, &img, &s).await;
        let err = env.runtime.start(&staged).await.unwrap_err();
        let text = err.to_string();
        let RuntimeError::Driver(DriverError::Failed { stderr, status, .. }) = &err else {
            panic!("{kind}: unexpected {err:?}");
        };
        assert!(!status.success());
        assert!(
            stderr.contains("/no/such/program"),
            "{kind}: stderr {stderr:?}"
        );
        assert!(text.contains("/no/such/program"), "{kind}: {text}");
        eprintln!("{kind} reports: {text}");
    }
}

fn cgroup_dir(pid: i32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(controllers)
                .join(path.trim_start_matches('/'));
        }
    }
    panic!("no {controller} cgroup for {pid}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_appear_in_the_containers_cgroup() {
    let test = "limits";
    if !can_run(test) {
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        eprintln!("SKIPPED: {test}: no cgroup v1 memory controller here");
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let mut s = settings(&["/bin/sleep", "600"], RestartPolicy::No);
        s.resources = Resources {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(32),
        };
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        let supervisor = env.runtime.start(&staged).await.unwrap();
        let pid = supervisor.status().pid().unwrap();
        let memory = cgroup_dir(pid, "memory");
        assert!(memory.ends_with(staged.id.as_str()), "{kind}: {memory:?}");
        assert_eq!(
            read(&memory.join("memory.limit_in_bytes")).trim(),
            "67108864"
        );
        assert_eq!(read(&cgroup_dir(pid, "pids").join("pids.max")).trim(), "32");
        let cpu = cgroup_dir(pid, "cpu");
        assert_eq!(
            read(&cpu.join("cpu.cfs_quota_us")).trim(),
            "50000",
            "{kind}"
        );
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")).trim(), "100000");
        supervisor.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// The benchmark hook: "bundle ready → container process running", printed,
/// never asserted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latency_is_measured_from_bundle_to_running_process() {
    let test = "latency";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        let env = Env::new(kind, &binary);
        let s = settings(&["/bin/sleep", "600"], RestartPolicy::No);
        let staged = env
            .stage(test, &[env.busybox_snapshot()], &image(&["/bin/sh"]), &s)
            .await;
        let (supervisor, elapsed) = env.runtime.timed_start(&staged).await.unwrap();
        let state = env.runtime_state(&staged.id).unwrap();
        assert_eq!(state["status"], "running");
        eprintln!("{kind}: bundle ready -> process running in {elapsed:?}");
        supervisor.stop(Duration::from_secs(1)).await.unwrap();
    }
}

/// The state directory is 0700 (agent/src/state_dir.rs): a container whose
/// process runs as another user still starts and reads its files, because
/// only root (the runtime, the overlay mounter) walks the host path down to
/// the rootfs; the process sees the rootfs from inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_container_user_runs_under_the_private_state_directory() {
    use std::os::unix::fs::PermissionsExt as _;
    let test = "private-state";
    if !can_run(test) {
        return;
    }
    for (kind, binary) in runtimes(test) {
        for mode in [RootfsMode::Overlay, RootfsMode::Copy] {
            let env = Env::with_mode(kind, &binary, mode);
            let state = env.tmp.path();
            fleet_agent::state_dir::secure(state).unwrap();
            let private = std::fs::metadata(state).unwrap().permissions().mode() & 0o7777;
            assert_eq!(private, 0o700);
            let snapshot = env.busybox_snapshot();
            let mut s = settings(
                &["/bin/sh", "-c", "id -u; cat /etc/motd"],
                RestartPolicy::No,
            );
            s.user = Some("65534:65534".into());
            let staged = env.stage(test, &[snapshot], &image(&["/bin/sh"]), &s).await;
            let supervisor = env.runtime.start(&staged).await.unwrap();
            let mut status = supervisor.subscribe();
            tokio::time::timeout(
                LONG,
                status.wait_for(|s| matches!(s.state, RunState::Exited { .. })),
            )
            .await
            .unwrap()
            .unwrap();
            let stdout = staged.dir.join("logs/stdout.log");
            assert!(
                wait_until(LONG, || read(&stdout).contains("bottom layer")).await,
                "{kind} {mode:?}: stdout {:?}, stderr {:?}",
                read(&stdout),
                read(&staged.dir.join("logs/stderr.log"))
            );
            assert_eq!(read(&stdout), "65534\nbottom layer\n", "{kind} {mode:?}");
            assert_eq!(supervisor.status().last_exit, Some(Some(0)), "{kind}");
            env.runtime.remove(&staged.id).await.unwrap();
        }
    }
}
