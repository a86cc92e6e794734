//! Drives an OCI runtime binary (crun by default, runc supported).
//!
//! One options struct per runtime command renders that command's arguments;
//! the binary path and the `--root` state directory are configurable, so tests
//! run isolated and either runtime can be used. A failed command keeps its
//! exit status, stdout and stderr in the error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Which OCI runtime the agent drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    #[default]
    Crun,
    Runc,
}

impl RuntimeKind {
    /// The binary name looked up in `PATH` when no path is configured.
    pub fn default_binary(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }

    /// The runtime's own default state directory.
    pub fn default_root(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "/run/crun",
            RuntimeKind::Runc => "/run/runc",
        }
    }

    /// Renders the global `--log` option for this runtime.
    fn log_args(self, path: &Path) -> Vec<OsString> {
        match self {
            // crun takes `--log=file:PATH`.
            RuntimeKind::Crun => {
                let mut arg = OsString::from("--log=file:");
                arg.push(path);
                vec![arg]
            }
            RuntimeKind::Runc => vec![
                "--log".into(),
                path.into(),
                "--log-format".into(),
                "json".into(),
            ],
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.default_binary())
    }
}

/// How to reach the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    pub kind: RuntimeKind,
    /// The runtime binary (a bare name is looked up in `PATH`).
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`).
    pub root: PathBuf,
    /// How long one runtime command may take before it is killed.
    pub command_timeout: Duration,
}

impl DriverConfig {
    /// The runtime's defaults: binary from `PATH`, its usual `--root`.
    pub fn new(kind: RuntimeKind) -> Self {
        DriverConfig {
            kind,
            binary: PathBuf::from(kind.default_binary()),
            root: PathBuf::from(kind.default_root()),
            command_timeout: Duration::from_secs(60),
        }
    }

    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }
}

/// Why a runtime command failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("could not run the OCI runtime {binary:?}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {}", failure_text(stderr, stdout))]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("cannot parse the output of `{command}`: {source}; output: {output:?}")]
    Parse {
        command: String,
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn failure_text<'a>(stderr: &'a str, stdout: &'a str) -> &'a str {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        stdout.trim()
    } else {
        stderr
    }
}

impl DriverError {
    /// The runtime's stderr, when the runtime ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            DriverError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// The status of a container as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
    Paused,
    #[serde(other)]
    Unknown,
}

/// `<runtime> state ID` output (and one entry of `list --format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// The container's init process on the host (0 once stopped).
    #[serde(default)]
    pub pid: i32,
    pub status: Status,
    #[serde(default)]
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// `create`: sets the container up without starting its process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOpts {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
}

impl CreateOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into()];
        args.push(self.bundle.clone().into());
        if let Some(pid_file) = &self.pid_file {
            args.push("--pid-file".into());
            args.push(pid_file.clone().into());
        }
        args.push(id.into());
        args
    }
}

/// `start`: runs the process of a created container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartOpts;

impl StartOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        vec!["start".into(), id.into()]
    }
}

/// `run`: create + start in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOpts {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Return once the container process runs (`--detach`).
    pub detach: bool,
}

impl RunOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["run".into(), "--bundle".into()];
        args.push(self.bundle.clone().into());
        if self.detach {
            args.push("--detach".into());
        }
        if let Some(pid_file) = &self.pid_file {
            args.push("--pid-file".into());
            args.push(pid_file.clone().into());
        }
        args.push(id.into());
        args
    }
}

/// `state`: the container's status and pid as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateOpts;

impl StateOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        vec!["state".into(), id.into()]
    }
}

/// A signal the agent sends to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSignal {
    /// SIGTERM: please exit.
    Term,
    /// SIGKILL: exit now.
    Kill,
}

impl KillSignal {
    /// The name the OCI runtimes take (without `SIG`).
    pub fn as_str(self) -> &'static str {
        match self {
            KillSignal::Term => "TERM",
            KillSignal::Kill => "KILL",
        }
    }
}

impl std::fmt::Display for KillSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kill`: sends a signal to the container's init (or all its processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillOpts {
    pub signal: KillSignal,
    pub all: bool,
}

impl KillOpts {
    pub fn new(signal: KillSignal) -> Self {
        KillOpts { signal, all: false }
    }

    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if self.all {
            args.push("--all".into());
        }
        args.push(id.into());
        args.push(self.signal.as_str().into());
        args
    }
}

/// `delete`: removes the container's runtime state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOpts {
    /// Kill it first if it still runs.
    pub force: bool,
}

impl DeleteOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if self.force {
            args.push("--force".into());
        }
        args.push(id.into());
        args
    }
}

/// `exec`: runs another process inside a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOpts {
    pub command: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `uid[:gid]`.
    pub user: Option<String>,
    pub detach: bool,
}

impl ExecOpts {
    pub fn args(&self, id: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["exec".into()];
        for env in &self.env {
            args.push("--env".into());
            args.push(env.into());
        }
        if let Some(cwd) = &self.cwd {
            args.push("--cwd".into());
            args.push(cwd.into());
        }
        if let Some(user) = &self.user {
            args.push("--user".into());
            args.push(user.into());
        }
        if self.detach {
            args.push("--detach".into());
        }
        args.push(id.into());
        args.extend(self.command.iter().map(OsString::from));
        args
    }
}

/// `list --format json`: every container under `--root`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOpts;

impl ListOpts {
    pub fn args(&self) -> Vec<OsString> {
        vec!["list".into(), "--format".into(), "json".into()]
    }
}

/// The output of a command that ran (successfully or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Standard streams handed to a container started detached: the container
/// inherits them from the runtime process.
#[derive(Debug)]
pub struct ContainerStdio {
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
}

/// A handle on one OCI runtime binary and state directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Driver {
    config: Arc<DriverConfig>,
}

impl Driver {
    pub fn new(config: DriverConfig) -> Self {
        Driver {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    pub fn kind(&self) -> RuntimeKind {
        self.config.kind
    }

    fn command(&self, args: &[OsString], log: Option<&Path>) -> (Command, String) {
        let mut cmd = Command::new(&self.config.binary);
        cmd.arg("--root").arg(&self.config.root);
        let mut rendered = format!(
            "{} --root {}",
            self.config.binary.display(),
            self.config.root.display()
        );
        if let Some(log) = log {
            cmd.args(self.config.kind.log_args(log));
        }
        cmd.args(args);
        for arg in args {
            rendered.push(' ');
            rendered.push_str(&arg.to_string_lossy());
        }
        cmd.kill_on_drop(true);
        (cmd, rendered)
    }

    /// Runs one command to completion, capturing stdout and stderr; a
    /// non-zero exit is [`DriverError::Failed`].
    pub async fn exec_command(&self, args: &[OsString]) -> Result<CommandOutput, DriverError> {
        let output = self.output(args).await?;
        Ok(output)
    }

    async fn output(&self, args: &[OsString]) -> Result<CommandOutput, DriverError> {
        let output = self.output_unchecked(args).await?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(DriverError::Failed {
                command: self.render(args),
                status: output.status,
                stdout: output.stdout,
                stderr: output.stderr,
            })
        }
    }

    fn render(&self, args: &[OsString]) -> String {
        self.command(args, None).1
    }

    /// Runs one command to completion; the exit status is left to the caller.
    async fn output_unchecked(&self, args: &[OsString]) -> Result<CommandOutput, DriverError> {
        let (mut cmd, rendered) = self.command(args, None);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| DriverError::Spawn {
            binary: self.config.binary.clone(),
            source,
        })?;
        let timeout = self.config.command_timeout;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| DriverError::Timeout {
                command: rendered.clone(),
                timeout,
            })?
            .map_err(|source| DriverError::Spawn {
                binary: self.config.binary.clone(),
                source,
            })?;
        Ok(CommandOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    pub async fn create(&self, id: &str, opts: &CreateOpts) -> Result<(), DriverError> {
        self.output(&opts.args(id)).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<(), DriverError> {
        self.output(&StartOpts.args(id)).await.map(drop)
    }

    /// `run --detach`: starts the container and returns once its process
    /// runs. The container inherits `stdio`; the runtime's own diagnostics go
    /// to `log` (truncated first) and are the error's stderr on failure.
    ///
    /// A process that exits at once may be reaped by the runtime before it
    /// is re-parented, losing its exit code; [`Driver::create_with_stdio`] +
    /// [`Driver::start`] avoids that race.
    pub async fn run_detached(
        &self,
        id: &str,
        opts: &RunOpts,
        stdio: ContainerStdio,
        log: &Path,
    ) -> Result<(), DriverError> {
        let opts = RunOpts {
            detach: true,
            ..opts.clone()
        };
        self.run_with_stdio(&opts.args(id), stdio, log).await
    }

    /// `create` with the container's stdio: the container's init waits for
    /// `start` while the runtime exits, so it is re-parented (to a subreaper)
    /// before it can run at all. Diagnostics as for [`Driver::run_detached`].
    pub async fn create_with_stdio(
        &self,
        id: &str,
        opts: &CreateOpts,
        stdio: ContainerStdio,
        log: &Path,
    ) -> Result<(), DriverError> {
        self.run_with_stdio(&opts.args(id), stdio, log).await
    }

    async fn run_with_stdio(
        &self,
        args: &[OsString],
        stdio: ContainerStdio,
        log: &Path,
    ) -> Result<(), DriverError> {
        std::fs::write(log, b"").map_err(|source| DriverError::Io {
            path: log.to_owned(),
            source,
        })?;
        let (mut cmd, rendered) = self.command(args, Some(log));
        // The container's init inherits the runtime's process group: its own
        // group keeps a signal meant for the agent's (Ctrl-C at a terminal,
        // a service manager killing the agent's group) from reaching it.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr))
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
            binary: self.config.binary.clone(),
            source,
        })?;
        // The container holds its copies; ours must go so that the log
        // readers see end-of-file when the container exits.
        drop(cmd);
        let timeout = self.config.command_timeout;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .map_err(|_| DriverError::Timeout {
                command: rendered.clone(),
                timeout,
            })?
            .map_err(|source| DriverError::Spawn {
                binary: self.config.binary.clone(),
                source,
            })?;
        if status.success() {
            return Ok(());
        }
        let stderr = std::fs::read_to_string(log).unwrap_or_default();
        Err(DriverError::Failed {
            command: rendered,
            status,
            stdout: String::new(),
            stderr: runtime_log_text(&stderr),
        })
    }

    /// The container's state; `None` when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, DriverError> {
        let args = StateOpts.args(id);
        let output = self.output_unchecked(&args).await?;
        if !output.status.success() {
            // Both runtimes keep one directory per container under --root.
            if !self.config.root.join(id).exists() {
                return Ok(None);
            }
            return Err(DriverError::Failed {
                command: self.render(&args),
                status: output.status,
                stdout: output.stdout,
                stderr: output.stderr,
            });
        }
        serde_json::from_str(&output.stdout)
            .map(Some)
            .map_err(|source| DriverError::Parse {
                command: self.render(&args),
                output: output.stdout,
                source,
            })
    }

    pub async fn kill(&self, id: &str, opts: &KillOpts) -> Result<(), DriverError> {
        self.output(&opts.args(id)).await.map(drop)
    }

    pub async fn delete(&self, id: &str, opts: &DeleteOpts) -> Result<(), DriverError> {
        self.output(&opts.args(id)).await.map(drop)
    }

    /// Runs a process in the container and returns its output; a non-zero
    /// exit is returned as output, not as an error (health checks need it).
    pub async fn exec(&self, id: &str, opts: &ExecOpts) -> Result<CommandOutput, DriverError> {
        self.output_unchecked(&opts.args(id)).await
    }

    /// Every container under `--root`.
    pub async fn list(&self) -> Result<Vec<ContainerState>, DriverError> {
        let args = ListOpts.args();
        if !self.config.root.exists() {
            return Ok(Vec::new());
        }
        let output = self.output(&args).await?;
        let text = output.stdout.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|source| DriverError::Parse {
            command: self.render(&args),
            output: output.stdout,
            source,
        })
    }
}

/// Turns a runtime log (text, or runc's/crun's JSON lines) into readable
/// text: the `msg` of each JSON line, or the line itself.
fn runtime_log_text(log: &str) -> String {
    let mut lines = Vec::new();
    for line in log.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(map)) => match map.get("msg") {
                Some(serde_json::Value::String(msg)) => lines.push(msg.clone()),
                _ => lines.push(line.to_owned()),
            },
            _ => lines.push(line.to_owned()),
        }
    }
    lines.join("\n")
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
