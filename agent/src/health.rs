//! Health checks of a running container: exec (through `<runtime> exec`),
//! HTTP (`GET` on `127.0.0.1:port/path`; 2xx/3xx is healthy) and TCP connect,
//! with the interval, timeout, retries and start period of a
//! [`HealthCheck`]. Results are published on a watch channel.
//!
//! HTTP and TCP probes connect from the container's network namespace when
//! it has its own (network mode `none`): a short-lived thread enters it
//! (`setns`) just to open the socket.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet_protocol::message::{HealthCheck, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::runtime::driver::ExecOpts;
use crate::runtime::{NetNs, ProbeTarget};

pub use fleet_protocol::message::Health;

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting to 127.0.0.1:{port} failed: {source}")]
    Connect {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("HTTP probe on port {port}: {reason}")]
    Http { port: u16, reason: String },
    #[error("exec probe exited with {status}: {output}")]
    Exec { status: String, output: String },
    #[error("exec probe could not run: {0}")]
    Runtime(#[from] crate::runtime::DriverError),
    #[error("the container has no running process to probe")]
    NotRunning,
    #[error("entering the container's network namespace failed: {0}")]
    Netns(#[source] io::Error),
}

/// Runs one probe with a timeout.
pub async fn probe_once(
    probe: &Probe,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, probe_inner(probe, target, timeout))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn probe_inner(
    probe: &Probe,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), ProbeError> {
    match probe {
        Probe::Tcp { port } => connect(*port, &target.net, timeout).await.map(drop),
        Probe::Http { port, path } => http_get(*port, path, &target.net, timeout).await,
        Probe::Exec { command } => {
            let opts = ExecOpts {
                command: command.clone(),
                ..Default::default()
            };
            let output = target
                .driver
                .exec(target.container_id.as_str(), &opts)
                .await?;
            if output.status.success() {
                Ok(())
            } else {
                let mut text = output.stdout.trim().to_owned();
                if !output.stderr.trim().is_empty() {
                    text.push_str(output.stderr.trim());
                }
                text.truncate(512);
                Err(ProbeError::Exec {
                    status: output.status.to_string(),
                    output: text,
                })
            }
        }
    }
}

async fn connect(port: u16, net: &NetNs, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connect_err = |source| ProbeError::Connect { port, source };
    match net {
        NetNs::Host => TcpStream::connect(addr).await.map_err(connect_err),
        NetNs::Container(pid) => {
            let pid = pid().ok_or(ProbeError::NotRunning)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A throwaway thread: after setns it lives in the container's
            // network namespace, so it must not be a pooled runtime thread.
            std::thread::spawn(move || {
                let _ = tx.send(connect_in_netns(pid, addr, timeout));
            });
            let std_stream = rx
                .await
                .map_err(|_| ProbeError::Netns(io::Error::other("probe thread ended")))??;
            TcpStream::from_std(std_stream).map_err(connect_err)
        }
    }
}

fn connect_in_netns(
    pid: i32,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, ProbeError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(ProbeError::Netns)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| ProbeError::Netns(io::Error::from(errno)))?;
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|source| {
        ProbeError::Connect {
            port: addr.port(),
            source,
        }
    })?;
    stream.set_nonblocking(true).map_err(ProbeError::Netns)?;
    Ok(stream)
}

async fn http_get(port: u16, path: &str, net: &NetNs, timeout: Duration) -> Result<(), ProbeError> {
    let http_err = |reason: String| ProbeError::Http { port, reason };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if path.contains(['\r', '\n', ' ']) {
        return Err(http_err(format!("invalid path {path:?}")));
    }
    let mut stream = connect(port, net, timeout).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: fleet-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| http_err(format!("sending the request: {e}")))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| http_err(format!("reading the response: {e}")))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let code = parse_status(&head).ok_or_else(|| {
        http_err(format!(
            "no HTTP status line in {:?}",
            String::from_utf8_lossy(&head[..head.len().min(80)])
        ))
    })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(http_err(format!("status {code}")))
    }
}

/// The status code of an `HTTP/1.x NNN ...` status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Turns probe results into a health state, per the check's retries and
/// start period. Pure; time is passed in as "seconds since checks began".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    pub health: Health,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl HealthState {
    pub fn new() -> Self {
        HealthState {
            health: Health::Starting,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    /// Records one probe result.
    pub fn record(
        &mut self,
        check: &HealthCheck,
        since_start: Duration,
        result: Result<(), String>,
    ) {
        match result {
            Ok(()) => {
                self.health = Health::Healthy;
                self.consecutive_failures = 0;
                self.last_error = None;
            }
            Err(err) => {
                self.last_error = Some(err);
                let in_start_period = self.health == Health::Starting
                    && since_start < Duration::from_secs(check.start_period_secs);
                if in_start_period {
                    return;
                }
                self.consecutive_failures += 1;
                if self.consecutive_failures >= check.retries.max(1) {
                    self.health = Health::Unhealthy;
                }
            }
        }
    }
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a [`HealthCheck`] against a container until dropped or cancelled.
#[derive(Debug)]
pub struct HealthMonitor {
    state: watch::Receiver<HealthState>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl HealthMonitor {
    /// Probes at once, then every `interval_secs`.
    pub fn spawn(check: HealthCheck, target: ProbeTarget) -> Self {
        let (tx, state) = watch::channel(HealthState::new());
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let interval = Duration::from_secs(check.interval_secs.max(1));
            let timeout = Duration::from_secs(check.timeout_secs.max(1));
            loop {
                let result = tokio::select! {
                    _ = token.cancelled() => return,
                    r = probe_once(&check.probe, &target, timeout) => r,
                };
                let result = result.map_err(|e| e.to_string());
                tx.send_modify(|s| s.record(&check, began.elapsed(), result));
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        HealthMonitor {
            state,
            cancel,
            task: Some(task),
        }
    }

    pub fn health(&self) -> Health {
        self.state.borrow().health
    }

    pub fn state(&self) -> HealthState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every result.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.state.clone()
    }

    /// Stops probing and waits for the task to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_secs: u64) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_secs: 1,
            timeout_secs: 1,
            retries,
            start_period_secs,
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 302 Found\r\nX: y"), Some(302));
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-x\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 no\r\n"), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let c = check(2, 10);
        let mut s = HealthState::new();
        s.record(&c, Duration::from_secs(1), Err("no".into()));
        s.record(&c, Duration::from_secs(2), Err("no".into()));
        assert_eq!((s.health, s.consecutive_failures), (Health::Starting, 0));
        s.record(&c, Duration::from_secs(11), Err("no".into()));
        assert_eq!(s.health, Health::Starting);
        s.record(&c, Duration::from_secs(12), Err("no".into()));
        assert_eq!(s.health, Health::Unhealthy);
        assert_eq!(s.last_error.as_deref(), Some("no"));
    }

    #[test]
    fn retries_count_consecutive_failures_after_being_healthy() {
        let c = check(3, 60);
        let mut s = HealthState::new();
        s.record(&c, Duration::from_secs(1), Ok(()));
        assert_eq!(s.health, Health::Healthy);
        // Once healthy, the start period no longer hides failures.
        s.record(&c, Duration::from_secs(2), Err("x".into()));
        s.record(&c, Duration::from_secs(3), Err("x".into()));
        assert_eq!((s.health, s.consecutive_failures), (Health::Healthy, 2));
        s.record(&c, Duration::from_secs(4), Ok(()));
        assert_eq!(s.consecutive_failures, 0);
        for t in 5..8 {
            s.record(&c, Duration::from_secs(t), Err("x".into()));
        }
        assert_eq!(s.health, Health::Unhealthy);
        s.record(&c, Duration::from_secs(9), Ok(()));
        assert_eq!(s.health, Health::Healthy);
    }

    #[tokio::test]
    async fn tcp_and_http_probes_on_the_host_network() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                sock.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let target = ProbeTarget {
            driver: crate::runtime::driver::Driver::new(crate::runtime::DriverConfig::new(
                crate::runtime::RuntimeKind::Crun,
            )),
            container_id: crate::runtime::ContainerId::for_release(
                &fleet_protocol::AppName::new("unused").unwrap(),
                &fleet_protocol::Digest::of(b"unused"),
            ),
            net: NetNs::Host,
        };
        let t = Duration::from_secs(10);
        let http = Probe::Http {
            port,
            path: "healthz".into(),
        };
        probe_once(&http, &target, t).await.unwrap();
        let err = probe_once(&http, &target, t).await.unwrap_err();
        assert!(err.to_string().contains("status 500"), "{err}");
        server.await.unwrap();
        // Nothing listens any more.
        let err = probe_once(&Probe::Tcp { port }, &target, t)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }
}
