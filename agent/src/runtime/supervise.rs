//! One supervisor task per container: starts it detached, notices when its
//! process exits, restarts it per the restart policy with exponential
//! backoff, counts crashes, pumps its logs, and stops it cleanly.
//!
//! The container's init is not the agent's child: the runtime (`create`)
//! exits once the container is set up. The agent marks itself a child
//! subreaper ([`become_subreaper`]) so that orphaned container inits are
//! re-parented to it and their exit status can be collected with `waitpid`.
//! Containers adopted after an agent restart are someone else's children;
//! for them the exit is noticed through `/proc` and the exit code is unknown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_protocol::message::RestartPolicy;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::driver::{ContainerStdio, CreateOpts, DeleteOpts, Driver, KillOpts, KillSignal, Status};
use super::logs::{self, LogConfig, RotatingLog, Stream};
use super::{ContainerId, RuntimeError};

/// Marks this process a child subreaper so that detached container inits are
/// re-parented to it (and their exit codes can be read). Process-wide.
pub fn become_subreaper() -> Result<(), RuntimeError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(RuntimeError::Subreaper)
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the crash counter.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl BackoffConfig {
    /// The delay before restart number `consecutive_failures` (1-based).
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let shift = consecutive_failures.saturating_sub(1).min(20);
        self.initial
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Where a supervised container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Starting,
    Running {
        pid: i32,
    },
    /// Exited; `code` is unknown for a container adopted after an agent
    /// restart (it was not re-parented to this agent).
    Exited {
        code: Option<i32>,
    },
    /// Waiting `delay` before the next restart.
    BackingOff {
        delay: Duration,
    },
    /// Stopped on request (or by policy) and deleted from the runtime.
    Stopped,
}

/// What a supervisor publishes on its watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub state: RunState,
    /// Restarts done by this supervisor.
    pub restarts: u32,
    /// Exits in a row that came sooner than `reset_after` after a start;
    /// a crash loop shows as this growing.
    pub consecutive_failures: u32,
    pub last_exit: Option<Option<i32>>,
    /// The last start failure (the runtime's stderr included), if any.
    pub last_error: Option<String>,
}

impl ContainerStatus {
    pub fn pid(&self) -> Option<i32> {
        match self.state {
            RunState::Running { pid } => Some(pid),
            _ => None,
        }
    }
}

/// Everything a supervisor needs to (re)start one container.
#[derive(Debug, Clone)]
pub struct SuperviseSpec {
    pub id: ContainerId,
    pub container_dir: PathBuf,
    pub bundle: PathBuf,
    pub restart: RestartPolicy,
    pub backoff: BackoffConfig,
    pub logs: LogConfig,
}

enum Command {
    Stop {
        grace: Duration,
        reply: oneshot::Sender<Result<(), RuntimeError>>,
    },
}

/// A handle on one supervised container. Dropping it stops supervising but
/// leaves the container running (as an agent restart would); use
/// [`Supervisor::stop`] to stop the container.
#[derive(Debug)]
pub struct Supervisor {
    id: ContainerId,
    status: watch::Receiver<ContainerStatus>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Supervisor {
    pub fn id(&self) -> &ContainerId {
        &self.id
    }

    /// The latest status.
    pub fn status(&self) -> ContainerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<ContainerStatus> {
        self.status.clone()
    }

    /// Stops the container: SIGTERM, up to `grace` for it to exit, SIGKILL,
    /// then `delete`. The supervisor ends.
    pub async fn stop(mut self, grace: Duration) -> Result<(), RuntimeError> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop { grace, reply })
            .await
            .is_err()
        {
            return Err(RuntimeError::SupervisorGone(self.id.clone()));
        }
        let result = answer
            .await
            .map_err(|_| RuntimeError::SupervisorGone(self.id.clone()))?;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        result
    }

    /// Stops supervising and waits for the task to end; the container keeps
    /// running (agent shutdown).
    pub async fn detach(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Starts a new container (the runtime must not hold `spec.id`, or hold
    /// it stopped) and supervises it. The first start's failure is returned.
    pub(crate) async fn start(driver: Driver, spec: SuperviseSpec) -> Result<Self, RuntimeError> {
        let mut task = Task::new(driver, spec)?;
        let pid = task.run_once().await?;
        Ok(Self::spawn(task, Some(pid)))
    }

    /// Supervises a container the runtime already holds (after an agent
    /// restart): running → watched; stopped → handled by the restart policy.
    pub(crate) async fn adopt(
        driver: Driver,
        spec: SuperviseSpec,
        pid: Option<i32>,
    ) -> Result<Self, RuntimeError> {
        let mut task = Task::new(driver, spec)?;
        if pid.is_some() {
            task.attach_logs()?;
        }
        Ok(Self::spawn(task, pid))
    }

    fn spawn(mut task: Task, pid: Option<i32>) -> Self {
        let id = task.spec.id.clone();
        let status = task.status.subscribe();
        let (commands, rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        match pid {
            Some(pid) => {
                task.track(pid);
            }
            None => task.exited(None),
        }
        let handle = tokio::spawn(task.run(rx, cancel.clone()));
        Supervisor {
            id,
            status,
            commands,
            cancel,
            task: Some(handle),
        }
    }
}

/// The supervised process: its pid, and the start time from `/proc` that
/// tells it apart from a later process with a reused pid.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    pid: i32,
    start_time: Option<u64>,
    started: Instant,
}

struct Task {
    driver: Driver,
    spec: SuperviseSpec,
    status: watch::Sender<ContainerStatus>,
    tracked: Option<Tracked>,
    restart_at: Option<tokio::time::Instant>,
    pumps: Vec<JoinHandle<()>>,
    logs: [Arc<Mutex<RotatingLog>>; 2],
}

const POLL: Duration = Duration::from_millis(200);

impl Task {
    fn new(driver: Driver, spec: SuperviseSpec) -> Result<Self, RuntimeError> {
        let open = |stream| {
            let path = logs::log_path(&spec.container_dir, stream);
            RotatingLog::open(path.clone(), spec.logs)
                .map(|log| Arc::new(Mutex::new(log)))
                .map_err(|source| RuntimeError::Io { path, source })
        };
        let logs = [open(Stream::Stdout)?, open(Stream::Stderr)?];
        let (status, _) = watch::channel(ContainerStatus {
            state: RunState::Starting,
            restarts: 0,
            consecutive_failures: 0,
            last_exit: None,
            last_error: None,
        });
        Ok(Task {
            driver,
            spec,
            status,
            tracked: None,
            restart_at: None,
            pumps: Vec::new(),
            logs,
        })
    }

    fn pipe_io(&self, stream: Stream) -> impl FnOnce(std::io::Error) -> RuntimeError + use<> {
        let path = logs::pipe_path(&self.spec.container_dir, stream);
        move |source| RuntimeError::Io { path, source }
    }

    /// Opens the agent's ends of the log pipes and starts pumping them.
    fn attach_logs(&mut self) -> Result<(), RuntimeError> {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let path = logs::pipe_path(&self.spec.container_dir, stream);
            logs::ensure_pipe(&path).map_err(self.pipe_io(stream))?;
            let receiver = logs::open_agent_end(&path).map_err(self.pipe_io(stream))?;
            self.pumps
                .push(tokio::spawn(logs::pump(receiver, self.logs[i].clone())));
        }
        Ok(())
    }

    /// Starts the container once (`create` + `start`) and returns its pid.
    async fn run_once(&mut self) -> Result<i32, RuntimeError> {
        let id = self.spec.id.as_str().to_owned();
        self.pumps.retain(|p| !p.is_finished());
        // A stopped leftover under the same id would make `run` fail.
        if self.driver.state(&id).await?.is_some() {
            self.driver.delete(&id, &DeleteOpts { force: true }).await?;
        }
        let dir = self.spec.container_dir.clone();
        let mut ends = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let path = logs::pipe_path(&dir, stream);
            logs::ensure_pipe(&path).map_err(self.pipe_io(stream))?;
            ends.push(logs::open_container_end(&path).map_err(self.pipe_io(stream))?);
        }
        // Open our read ends while the container's ends exist, so nothing
        // written early is lost and end-of-file means "container gone".
        self.attach_logs()?;
        let stderr = ends.pop();
        let stdout = ends.pop();
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(RuntimeError::SupervisorGone(self.spec.id.clone()));
        };
        let pid_file = dir.join("container.pid");
        let _ = std::fs::remove_file(&pid_file);
        let opts = CreateOpts {
            bundle: self.spec.bundle.clone(),
            pid_file: Some(pid_file.clone()),
        };
        // create + start (not `run --detach`): the init is re-parented to
        // this agent before it runs, so even an instant exit's code is ours.
        self.driver
            .create_with_stdio(
                &id,
                &opts,
                ContainerStdio { stdout, stderr },
                &dir.join("runtime.log"),
            )
            .await?;
        if let Err(err) = self.driver.start(&id).await {
            let _ = self.driver.delete(&id, &DeleteOpts { force: true }).await;
            return Err(err.into());
        }
        let text = std::fs::read_to_string(&pid_file).map_err(|source| RuntimeError::Io {
            path: pid_file.clone(),
            source,
        })?;
        text.trim()
            .parse::<i32>()
            .map_err(|_| RuntimeError::BadPidFile {
                path: pid_file,
                content: text,
            })
    }

    fn track(&mut self, pid: i32) {
        self.tracked = Some(Tracked {
            pid,
            start_time: proc_start_time(pid),
            started: Instant::now(),
        });
        self.status.send_modify(|s| {
            s.state = RunState::Running { pid };
            s.last_error = None;
        });
    }

    /// The tracked process exited: record it and schedule a restart per policy.
    fn exited(&mut self, code: Option<i32>) {
        let ran = self.tracked.take().map(|t| t.started.elapsed());
        let restart = match self.spec.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => code != Some(0),
            RestartPolicy::Always => true,
        };
        let backoff = self.spec.backoff;
        self.status.send_modify(|s| {
            s.last_exit = Some(code);
            if ran.is_some_and(|ran| ran >= backoff.reset_after) {
                s.consecutive_failures = 0;
            }
            s.consecutive_failures += 1;
            s.state = RunState::Exited { code };
        });
        if restart {
            let failures = self.status.borrow().consecutive_failures;
            let delay = backoff.delay(failures);
            self.restart_at = Some(tokio::time::Instant::now() + delay);
            self.status
                .send_modify(|s| s.state = RunState::BackingOff { delay });
        }
        tracing::info!(container = %self.spec.id, ?code, restart, "container exited");
    }

    /// `Some(code)` once the tracked process is gone.
    fn poll_exit(&self) -> Option<Option<i32>> {
        let tracked = self.tracked?;
        match nix::sys::wait::waitpid(Pid::from_raw(tracked.pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(WaitStatus::Exited(_, code)) => Some(Some(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(Some(128 + signal as i32)),
            Ok(_) => None,
            // Not our child (adopted): watch /proc instead.
            Err(_) => {
                let alive = proc_start_time(tracked.pid)
                    .is_some_and(|t| tracked.start_time.is_none_or(|want| want == t))
                    && !proc_is_zombie(tracked.pid);
                if alive { None } else { Some(None) }
            }
        }
    }

    async fn restart(&mut self) {
        self.restart_at = None;
        self.status.send_modify(|s| {
            s.state = RunState::Starting;
            s.restarts += 1;
        });
        match self.run_once().await {
            Ok(pid) => self.track(pid),
            Err(err) => {
                tracing::warn!(container = %self.spec.id, error = %err, "restart failed");
                self.status
                    .send_modify(|s| s.last_error = Some(err.to_string()));
                self.exited(None);
            }
        }
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), RuntimeError> {
        let id = self.spec.id.as_str().to_owned();
        self.restart_at = None;
        let running = matches!(
            self.driver.state(&id).await?,
            Some(state) if state.status == Status::Running
        );
        if running {
            let _ = self
                .driver
                .kill(&id, &KillOpts::new(KillSignal::Term))
                .await;
            if !self.wait_exit(grace).await {
                let kill = KillOpts {
                    signal: KillSignal::Kill,
                    all: true,
                };
                let _ = self.driver.kill(&id, &kill).await;
                self.wait_exit(Duration::from_secs(30)).await;
            }
        }
        if self.driver.state(&id).await?.is_some() {
            self.driver.delete(&id, &DeleteOpts { force: true }).await?;
        }
        // Reap the init if it was ours and `wait_exit` did not see it.
        if let Some(tracked) = self.tracked.take() {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(tracked.pid), Some(WaitPidFlag::WNOHANG));
        }
        for pump in self.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        }
        self.status.send_modify(|s| s.state = RunState::Stopped);
        Ok(())
    }

    /// Waits up to `limit` for the tracked process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.poll_exit() {
                Some(code) => {
                    self.status.send_modify(|s| {
                        s.last_exit = Some(code);
                        s.state = RunState::Exited { code };
                    });
                    self.tracked = None;
                    return true;
                }
                None if self.tracked.is_none() => return true,
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL.min(limit)).await;
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Stop { grace, reply }) => {
                        let result = self.stop(grace).await;
                        let _ = reply.send(result);
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if let Some(code) = self.poll_exit() {
                        self.exited(code);
                    }
                    if self.restart_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                        self.restart().await;
                    }
                }
            }
        }
        // Supervision ends; pumps of a still-running container stop too.
        for pump in &self.pumps {
            if cancel.is_cancelled() {
                pump.abort();
            }
        }
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process start time in clock ticks.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn proc_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            rest.chars().next()
        })
        .is_some_and(|state| state == 'Z' || state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(10),
        };
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0).as_millis(), 100);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn proc_stat_start_time_is_read_for_this_process() {
        let me = std::process::id() as i32;
        assert!(proc_start_time(me).is_some());
        assert!(!proc_is_zombie(me));
        assert!(proc_start_time(i32::MAX).is_none());
    }
}
