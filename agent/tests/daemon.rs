//! `fleet-agent run` end to end: a real Mosquitto with per-device ACLs, a
//! real registry (Debian's `docker-registry`) holding a busybox image, crun,
//! and the agent binary as a subprocess. The test plays the server: it
//! publishes a signed desired state (retained) and reads the agent's status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lifecycle_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_protocol::message::{RuntimeSettings, StatusReport, Telemetry, decode};
use fleet_protocol::topic::{Topic, TopicScheme};
use fleet_protocol::{AppName, DeviceId, Phase, Release, SCHEMA_VERSION};
use lifecycle_support as ls;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "cam-01-token";
const SERVER: &str = "fleet-server";
const SERVER_PASSWORD: &str = "server-secret";

/// Mosquitto with a password file and the protocol's ACL patterns.
struct Mosquitto {
    _child: support::Killed,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Option<Self> {
        let (Some(bin), Some(passwd_tool)) = (
            support::tool("mosquitto"),
            support::tool("mosquitto_passwd"),
        ) else {
            eprintln!("SKIPPED: mosquitto / mosquitto_passwd not installed");
            return None;
        };
        let passwd = dir.join("passwd");
        for (i, (user, pass)) in [(ls::DEVICE, TOKEN), (SERVER, SERVER_PASSWORD)]
            .iter()
            .enumerate()
        {
            let mut cmd = Command::new(&passwd_tool);
            if i == 0 {
                cmd.arg("-c");
            }
            let st = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, pass])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "mosquitto_passwd failed");
        }
        let scheme = TopicScheme::default();
        let acl = dir.join("acl");
        std::fs::write(
            &acl,
            format!(
                "{}\nuser {SERVER}\ntopic readwrite {}/#\n",
                scheme.mosquitto_acl_patterns(),
                scheme.prefix()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
                 use_username_as_clientid true\npersistence false\n",
                passwd.display(),
                acl.display()
            ),
        )
        .unwrap();
        let child = support::start_mosquitto(&bin, &conf, port);
        Some(Self {
            _child: child,
            port,
        })
    }
}

/// The agent daemon as a subprocess; killed when dropped.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(device: &ls::Device, run: u32) -> Self {
        let log = device.path(&format!("agent-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
            .args(["run", "--config"])
            .arg(device.path("config.toml"))
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .env_remove("FLEET_AGENT_CONFIG")
            .env_remove("FLEET_AGENT_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server side: publishes desired states, collects status reports.
struct Server {
    client: AsyncClient,
    statuses: mpsc::UnboundedReceiver<StatusReport>,
    telemetry: mpsc::UnboundedReceiver<Telemetry>,
}

impl Server {
    async fn connect(port: u16) -> Self {
        let mut options = MqttOptions::new(SERVER, "127.0.0.1", port);
        options
            .set_credentials(SERVER, SERVER_PASSWORD)
            .set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let scheme = TopicScheme::default();
        let device = DeviceId::new(ls::DEVICE).unwrap();
        let status_topic = scheme.render(&Topic::Status(device.clone()));
        let telemetry_topic = scheme.render(&Topic::Telemetry(device));
        client
            .subscribe(status_topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(telemetry_topic.clone(), QoS::AtMostOnce)
            .await
            .unwrap();
        let (tx, statuses) = mpsc::unbounded_channel();
        let (ttx, telemetry) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status_topic => {
                        if let Ok(r) = decode::<StatusReport>(&p.payload) {
                            let _ = tx.send(r);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == telemetry_topic => {
                        if let Ok(t) = decode::<Telemetry>(&p.payload) {
                            let _ = ttx.send(t);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Server {
            client,
            statuses,
            telemetry,
        }
    }

    /// Waits for a telemetry message matching `want`.
    async fn wait_telemetry(
        &mut self,
        what: &str,
        agent: &Agent,
        want: impl Fn(&Telemetry) -> bool,
    ) -> Telemetry {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.telemetry.recv()).await {
                Ok(Some(t)) if want(&t) => return t,
                Ok(Some(t)) => last = Some(t),
                _ => panic!(
                    "no telemetry {what}; last: {last:#?}\nagent log:\n{}",
                    agent.log()
                ),
            }
        }
    }

    async fn publish_desired(&self, bytes: Vec<u8>) {
        let topic =
            TopicScheme::default().render(&Topic::Desired(DeviceId::new(ls::DEVICE).unwrap()));
        self.client
            .publish(topic, QoS::AtLeastOnce, true, bytes)
            .await
            .unwrap();
    }

    /// Waits for a status report matching `want`; returns it and every
    /// report seen on the way.
    async fn wait_status(
        &mut self,
        what: &str,
        agent: &Agent,
        want: impl Fn(&StatusReport) -> bool,
    ) -> (StatusReport, Vec<StatusReport>) {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.statuses.recv()).await {
                Ok(Some(r)) => {
                    let hit = want(&r);
                    seen.push(r.clone());
                    if hit {
                        return (r, seen);
                    }
                }
                _ => panic!(
                    "no status report {what}; seen: {seen:#?}\nagent log:\n{}",
                    agent.log()
                ),
            }
        }
    }
}

/// What every test here runs on: crun, a scratch directory, Mosquitto and
/// the registry. `None` (each missing part says so) when one cannot run.
struct Bench {
    crun: PathBuf,
    scratch: tempfile::TempDir,
    broker: Mosquitto,
    registry: support::Registry,
}

impl Bench {
    async fn start(test: &str) -> Option<Bench> {
        if !ls::can_run(test) {
            return None;
        }
        let crun = ls::runtime_binary(test, "crun")?;
        let scratch = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(scratch.path())?;
        let registry = support::Registry::start().await?;
        Some(Bench {
            crun,
            scratch,
            broker,
            registry,
        })
    }
}

/// A busybox image (one uncompressed layer) pushed to the registry.
async fn push_busybox(registry: &support::Registry, scratch: &Path) -> fleet_protocol::Digest {
    let _layout = ls::Layout::new(&scratch.join("layout"));
    let layer = busybox_layer(scratch);
    support::push_image(&registry.base(), "edge/busybox", "1", &[layer], "amd64")
        .await
        .manifest
}

/// The busybox root file system under `scratch` (made by [`push_busybox`])
/// as one uncompressed layer.
fn busybox_layer(scratch: &Path) -> support::Layer {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", scratch.join("busybox-rootfs"))
        .unwrap();
    support::raw_layer(builder.into_inner().unwrap())
}

/// A good runtime running `sleep <secs>`.
fn sleep_runtime(secs: u32) -> RuntimeSettings {
    let mut runtime = ls::settings(ls::Behaviour::Good);
    runtime.args = Some(vec!["/bin/sh".into(), "-c".into(), format!("sleep {secs}")]);
    runtime
}

fn signed_release(
    repository: &str,
    manifest: &fleet_protocol::Digest,
) -> fleet_protocol::dsse::Envelope {
    sign_release(repository, manifest, "1.0.0", sleep_runtime(100_000))
}

/// App `cam` at `version`, image `repository@manifest`, signed with the
/// release key.
fn sign_release(
    repository: &str,
    manifest: &fleet_protocol::Digest,
    version: &str,
    runtime: RuntimeSettings,
) -> fleet_protocol::dsse::Envelope {
    let release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new("cam").unwrap(),
        version: version.to_owned(),
        repository: repository.to_owned(),
        manifest_digest: manifest.clone(),
        runtime,
    };
    fleet_protocol::dsse::sign(
        fleet_protocol::dsse::RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(&release).unwrap(),
        &[&ls::release_key()],
    )
}

fn write_config(device: &ls::Device, broker_port: u16) {
    let config = format!(
        "device_id = \"{dev}\"\nstate_dir = \"{state}\"\ntrust = \"{trust}\"\n\
         broker = \"mqtt://127.0.0.1:{broker_port}\"\ntoken = \"{TOKEN}\"\n\
         status_interval_secs = 2\nsupervise_interval_secs = 1\ntelemetry_interval_secs = 1\n\
         [labels]\nsite = \"test-bench\"\n\
         [runtime]\nkind = \"{runtime}\"\nbinary = \"{binary}\"\nroot = \"{root}\"\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 400\n\
         [deploy]\nprobation_secs = 2\ncrash_loop_restarts = 2\n\
         [store]\nreserve_bytes = 0\n",
        dev = ls::DEVICE,
        state = device.path("state").display(),
        trust = device.path("trust.json").display(),
        runtime = device.runtime,
        binary = device.binary.display(),
        root = device.path("runtime-root").display(),
    );
    std::fs::write(device.path("config.toml"), config).unwrap();
}

fn committed_running(r: &StatusReport, release: &fleet_protocol::Digest) -> bool {
    r.generation == Some(1)
        && r.apps.len() == 1
        && r.apps[0].phase == Phase::Committed
        && r.apps[0]
            .running
            .as_ref()
            .is_some_and(|run| &run.release_digest == release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_pulls_runs_reports_and_survives_kill_9() {
    const TEST: &str = "daemon_pulls_runs_reports_and_survives_kill_9";
    let Some(Bench {
        crun,
        scratch,
        broker,
        registry,
    }) = Bench::start(TEST).await
    else {
        return;
    };
    let manifest = push_busybox(&registry, scratch.path()).await;
    let release = signed_release(&format!("{}/edge/busybox", registry.addr), &manifest);
    let release_digest = ls::release_digest(&release);
    let container = ls::container_id("cam", &release);

    let device = ls::Device::new("crun", &crun);
    write_config(&device, broker.port);
    let mut server = Server::connect(broker.port).await;
    // Retained before the agent exists: it must pick it up on connect.
    server
        .publish_desired(ls::desired(
            1,
            ls::now() + 3600,
            &[("cam", release.clone())],
        ))
        .await;

    // First run: registers, pulls, runs, commits.
    let mut agent = Agent::start(&device, 1);
    let (first, _) = server
        .wait_status("from the first start", &agent, |_| true)
        .await;
    let info = first
        .info
        .as_ref()
        .expect("the first status carries the device info");
    assert_eq!(
        info.labels.get("site").map(String::as_str),
        Some("test-bench")
    );
    assert_eq!(info.architecture, "amd64");
    assert_eq!(first.device.as_str(), ls::DEVICE);
    let (done, seen) = server
        .wait_status("showing the release committed", &agent, |r| {
            committed_running(r, &release_digest)
        })
        .await;
    assert!(done.rejected.is_none(), "{done:?}");
    // Progress was reported on the way, not only the end.
    assert!(
        seen.iter()
            .any(|r| r.apps.iter().any(|a| a.phase != Phase::Committed)),
        "no intermediate phase reported: {seen:#?}"
    );
    assert_eq!(
        device.runtime_status(&container).as_deref(),
        Some("running")
    );
    // `fleet-agent status` beside the live daemon (which holds the state
    // database) answers from the daemon's last report.
    let local = device.status();
    assert_eq!(local["device"], ls::DEVICE, "{local:#}");
    assert_eq!(
        local["apps"][0]["running"]["release_digest"],
        release_digest.to_string(),
        "{local:#}"
    );
    assert_eq!(
        device.runtime_list().len(),
        1,
        "{:?}",
        device.runtime_list()
    );

    // Telemetry: the running app with its container's cgroup readings (the
    // runtime's real cgroups), and the pulled bytes counted.
    let running_app = |t: &Telemetry| {
        t.apps.len() == 1
            && t.apps[0].app.as_ref().is_some_and(|a| a.as_str() == "cam")
            && t.apps[0].running
            && t.apps[0].memory_bytes.is_some_and(|m| m > 0)
            && t.apps[0].cpu_percent.is_some()
    };
    let t = server
        .wait_telemetry("with the app's cgroup figures", &agent, running_app)
        .await;
    let fetched = t.fetched_bytes_total.expect("fetched bytes counted");
    assert!(fetched > 0, "{t:?}");
    assert!(
        t.store_used_bytes.is_some_and(|u| u > 0 && u <= fetched),
        "{t:?}"
    );
    assert!(
        t.gpu_load_percent.is_none() && t.power_mw.is_empty(),
        "{t:?}"
    );

    // kill -9: the container keeps running; a new agent adopts it.
    agent.kill9();
    assert_eq!(
        device.runtime_status(&container).as_deref(),
        Some("running")
    );
    let mut agent = Agent::start(&device, 2);
    let (after, _) = server
        .wait_status("with device info after the restart", &agent, |r| {
            r.info.is_some()
        })
        .await;
    assert_eq!(after.generation, Some(1));
    // The retained desired state is delivered again; give it time to be
    // handled, then the status must still be right with one container.
    let (again, _) = server
        .wait_status("committed after the restart", &agent, |r| {
            committed_running(r, &release_digest)
        })
        .await;
    assert_eq!(again.apps[0].restarts, 0, "{again:?}");
    // The content counters survived the restart.
    let t = server
        .wait_telemetry("after the restart", &agent, |t| {
            t.fetched_bytes_total.is_some()
        })
        .await;
    assert!(t.fetched_bytes_total >= Some(fetched), "{t:?} vs {fetched}");
    for _ in 0..3 {
        server
            .wait_status("periodic after the restart", &agent, |r| {
                committed_running(r, &release_digest)
            })
            .await;
    }
    assert_eq!(
        device.runtime_list(),
        vec![(container.clone(), "running".to_owned())]
    );
    let log = agent.log();
    assert!(
        log.contains("desired state received"),
        "the retained desired state was not delivered again:\n{log}"
    );
    assert!(
        !log.contains(r#""message":"phase""#),
        "the same desired state changed a phase again:\n{log}"
    );

    // The container dies: supervision brings it back (the container's own
    // supervisor or the daemon's periodic check; either starts a new process).
    let old_pid = device.runtime_pid(&container);
    assert!(old_pid.is_some(), "no pid for the running container");
    let killed = Command::new(&crun)
        .arg("--root")
        .arg(device.path("runtime-root"))
        .args(["kill", &container, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let mut reported = false;
        while let Ok(r) = server.statuses.try_recv() {
            reported |= committed_running(&r, &release_digest);
        }
        if device.runtime_status(&container).as_deref() == Some("running")
            && device
                .runtime_pid(&container)
                .is_some_and(|p| Some(p) != old_pid)
            && device.runtime_list().len() == 1
            && reported
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed container was not restarted: {:?}\n{}",
            device.runtime_list(),
            agent.log()
        );
    }

    // SIGTERM: a clean exit, the container keeps running.
    let st = agent.terminate();
    assert!(st.success(), "exit {st:?}:\n{}", agent.log());
    assert_eq!(
        device.runtime_status(&container).as_deref(),
        Some("running")
    );
}

/// A release whose content crosses a slow link (a proxy at 512 KiB/s in front
/// of `docker-registry`): while the agent downloads, its status reports carry
/// `progress` moving towards the image's size, and it ends committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reports_download_progress_while_pulling() {
    const TEST: &str = "daemon_reports_download_progress_while_pulling";
    let Some(Bench {
        crun,
        scratch,
        broker,
        registry,
    }) = Bench::start(TEST).await
    else {
        return;
    };
    let manifest = push_busybox(&registry, scratch.path()).await;
    let proxy = support::Proxy::start(
        &registry.addr,
        support::ProxyOpts {
            rate: Some(512 << 10),
            ..support::ProxyOpts::default()
        },
    )
    .await;
    let release = signed_release(&format!("{}/edge/busybox", proxy.addr), &manifest);
    let release_digest = ls::release_digest(&release);

    let device = ls::Device::new("crun", &crun);
    write_config(&device, broker.port);
    let mut server = Server::connect(broker.port).await;
    server
        .publish_desired(ls::desired(
            1,
            ls::now() + 3600,
            &[("cam", release.clone())],
        ))
        .await;
    let agent = Agent::start(&device, 1);
    let (_, seen) = server
        .wait_status("showing the release committed", &agent, |r| {
            committed_running(r, &release_digest)
        })
        .await;
    let downloading: Vec<_> = seen
        .iter()
        .flat_map(|r| &r.apps)
        .filter(|a| a.phase == Phase::Downloading)
        .filter_map(|a| a.progress.clone())
        .collect();
    assert!(
        downloading.len() >= 2,
        "fewer than two reports with progress while downloading: {seen:#?}"
    );
    let total = downloading[0].bytes_total;
    assert!(total > 1 << 20, "busybox is over 1 MiB: {downloading:?}");
    assert!(
        downloading
            .iter()
            .all(|p| p.bytes_total == total && p.bytes_done <= total),
        "{downloading:?}"
    );
    assert!(
        downloading
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress went backwards: {downloading:?}"
    );
    let (first, last) = (&downloading[0], &downloading[downloading.len() - 1]);
    assert!(
        first.bytes_done < last.bytes_done && first.bytes_done < total,
        "progress did not move: {downloading:?}"
    );
    assert!(
        proxy.down_bytes() >= total,
        "the content did not cross the slow link"
    );
    // Once committed, a report carries no download progress.
    let (done, _) = server
        .wait_status("committed", &agent, |r| {
            committed_running(r, &release_digest)
        })
        .await;
    assert!(done.apps[0].progress.is_none(), "{done:?}");
}

/// The generation, phase and running release of the one app of `r`.
fn app_state(r: &StatusReport) -> Option<(u64, Phase, Option<fleet_protocol::Digest>)> {
    let app = r.apps.first()?;
    Some((
        r.generation?,
        app.phase.clone(),
        app.running.as_ref().map(|run| run.release_digest.clone()),
    ))
}

/// Preemption: a desired state rolling back to the running release arrives
/// while a large release downloads over a slow link. The download stops at
/// once (the running release never stopped), the device ends on the
/// rollback target, and when the large release is asked for again its
/// download resumes from what arrived instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_desired_state_interrupts_a_download_which_later_resumes() {
    const TEST: &str = "a_newer_desired_state_interrupts_a_download_which_later_resumes";
    const BIG: usize = 8 << 20;
    let Some(Bench {
        crun,
        scratch,
        broker,
        registry,
    }) = Bench::start(TEST).await
    else {
        return;
    };
    let small = push_busybox(&registry, scratch.path()).await;
    // The large release: busybox plus a layer of 8 MiB of random bytes.
    let payload = support::random_bytes(BIG, 7);
    let big_layer = {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(payload.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "data/model.bin", payload.as_slice())
            .unwrap();
        support::raw_layer(builder.into_inner().unwrap())
    };
    let big = support::push_image(
        &registry.base(),
        "edge/big",
        "1",
        &[busybox_layer(scratch.path()), big_layer],
        "amd64",
    )
    .await
    .manifest;
    let proxy = support::Proxy::start(
        &registry.addr,
        support::ProxyOpts {
            rate: Some(256 << 10),
            ..support::ProxyOpts::default()
        },
    )
    .await;
    let release_small = signed_release(&format!("{}/edge/busybox", registry.addr), &small);
    let release_big = signed_release(&format!("{}/edge/big", proxy.addr), &big);
    let (small_digest, big_digest) = (
        ls::release_digest(&release_small),
        ls::release_digest(&release_big),
    );
    let committed = |generation: u64, release: &fleet_protocol::Digest| {
        let release = release.clone();
        move |r: &StatusReport| {
            app_state(r) == Some((generation, Phase::Committed, Some(release.clone())))
        }
    };
    let expires = ls::now() + 3600;

    let device = ls::Device::new("crun", &crun);
    write_config(&device, broker.port);
    let mut server = Server::connect(broker.port).await;
    let agent = Agent::start(&device, 1);
    server
        .publish_desired(ls::desired(1, expires, &[("cam", release_small.clone())]))
        .await;
    server
        .wait_status("on the small release", &agent, committed(1, &small_digest))
        .await;

    server
        .publish_desired(ls::desired(2, expires, &[("cam", release_big.clone())]))
        .await;
    server
        .wait_status("downloading the large release", &agent, |r| {
            r.generation == Some(2)
                && r.apps.first().is_some_and(|a| {
                    a.phase == Phase::Downloading
                        && a.progress.as_ref().is_some_and(|p| p.bytes_done > 0)
                })
        })
        .await;

    server
        .publish_desired(ls::desired(3, expires, &[("cam", release_small.clone())]))
        .await;
    let (_, seen) = server
        .wait_status(
            "back on the small release, generation 3",
            &agent,
            committed(3, &small_digest),
        )
        .await;
    let fetched_when_preempted = proxy.down_bytes();
    assert!(
        fetched_when_preempted < BIG as u64,
        "the large download ran to its end ({fetched_when_preempted} bytes through the link) \
         instead of stopping for generation 3\nagent log:\n{}",
        agent.log()
    );
    assert!(
        seen.iter()
            .filter_map(app_state)
            .all(|(_, _, running)| running.as_ref() != Some(&big_digest)),
        "the large release ran: {seen:#?}"
    );
    assert!(
        agent.log().contains("interrupting the update in progress"),
        "the agent did not say it interrupted the update:\n{}",
        agent.log()
    );

    server
        .publish_desired(ls::desired(4, expires, &[("cam", release_big.clone())]))
        .await;
    server
        .wait_status("on the large release", &agent, committed(4, &big_digest))
        .await;
    let total = proxy.down_bytes();
    assert!(
        total <= BIG as u64 + BIG as u64 / 20 + (64 << 10),
        "the resumed download fetched {total} bytes for an {BIG}-byte layer \
         ({fetched_when_preempted} before the interruption): more than 5% twice"
    );
    assert!(
        fetched_when_preempted > 0 && total > fetched_when_preempted,
        "{fetched_when_preempted} then {total}"
    );
}

/// A release of busybox `manifest` running `sleep <secs>`, on probation for
/// `probation` seconds if given.
fn sleeping_release(
    repository: &str,
    manifest: &fleet_protocol::Digest,
    secs: u32,
    probation: Option<u64>,
) -> fleet_protocol::dsse::Envelope {
    let mut runtime = sleep_runtime(secs);
    runtime.probation_secs = probation;
    sign_release(repository, manifest, &format!("sleep-{secs}"), runtime)
}

/// Preemption in probation: a release on a ten-minute probation is rolled
/// back (superseded) as soon as a newer desired state arrives, and the
/// newer release is committed, long before that probation would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_desired_state_interrupts_a_probation() {
    const TEST: &str = "a_newer_desired_state_interrupts_a_probation";
    let Some(Bench {
        crun,
        scratch,
        broker,
        registry,
    }) = Bench::start(TEST).await
    else {
        return;
    };
    let manifest = push_busybox(&registry, scratch.path()).await;
    let repo = format!("{}/edge/busybox", registry.addr);
    let first = sleeping_release(&repo, &manifest, 100_000, None);
    let slow = sleeping_release(&repo, &manifest, 100_001, Some(600));
    let newer = sleeping_release(&repo, &manifest, 100_002, None);
    let [first_d, slow_d, newer_d] = [&first, &slow, &newer].map(ls::release_digest);
    let expires = ls::now() + 3600;

    let device = ls::Device::new("crun", &crun);
    write_config(&device, broker.port);
    let mut server = Server::connect(broker.port).await;
    let agent = Agent::start(&device, 1);
    server
        .publish_desired(ls::desired(1, expires, &[("cam", first)]))
        .await;
    server
        .wait_status("on the first release", &agent, |r| {
            app_state(r) == Some((1, Phase::Committed, Some(first_d.clone())))
        })
        .await;
    server
        .publish_desired(ls::desired(2, expires, &[("cam", slow)]))
        .await;
    server
        .wait_status("the slow release on probation", &agent, |r| {
            matches!(app_state(r), Some((2, Phase::Probation { .. }, Some(ref d))) if *d == slow_d)
        })
        .await;
    server
        .publish_desired(ls::desired(3, expires, &[("cam", newer)]))
        .await;
    let (_, seen) = server
        .wait_status("the newer release committed", &agent, |r| {
            app_state(r) == Some((3, Phase::Committed, Some(newer_d.clone())))
        })
        .await;
    assert!(
        seen.iter().any(|r| r.apps.first().is_some_and(|a| {
            matches!(
                a.phase,
                Phase::RollingBack {
                    reason: fleet_protocol::ErrorCode::Superseded
                } | Phase::RolledBack {
                    reason: fleet_protocol::ErrorCode::Superseded
                }
            ) || a
                .error
                .as_ref()
                .is_some_and(|e| e.code == fleet_protocol::ErrorCode::Superseded)
        })),
        "no report says the slow release was superseded: {seen:#?}"
    );
    let log = agent.log();
    assert!(
        log.contains("update interrupted by a newer desired state"),
        "the interruption is not in the log:\n{log}"
    );
}
