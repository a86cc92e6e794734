//! `<state_dir>/agent.sock`: the running daemon answers local questions
//! (`fleet-agent status`) over a Unix domain socket.
//!
//! The protocol is line-oriented: a client writes one request per line and
//! reads one response per line, as many as it likes on one connection.
//!
//! - A request is a word, then its arguments separated by spaces (none take
//!   any yet): `status`.
//! - A response is one line of JSON: `{"status":{...StatusReport...}}`, or
//!   `{"error":{"code":"unknown_request","message":"..."}}` ([`Refusal`]).
//!
//! The daemon binds the socket at start ([`Listener::bind`]): it is created
//! under a temporary name, made mode 0600 and renamed into place, so it is
//! never reachable with wider permissions, and a stale socket left by a
//! daemon that died (`kill -9`, power cut) is replaced. It is removed at
//! shutdown. Connections are bounded ([`CONNECTIONS`]), requests are capped
//! at [`MAX_REQUEST_BYTES`] and an idle connection is closed after
//! [`IDLE_TIMEOUT`].
//!
//! [`ask`] is the client: it tells a missing socket, a stale one (nobody
//! listening: refused at once) and a daemon that accepts but does not answer
//! (a timeout) apart, so that `fleet-agent status` can fall back or say why.

use std::fmt;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::StatusReport;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The socket's file name in the state directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// The longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// The longest response line a client reads.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// A connection without a request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
pub const CONNECTIONS: usize = 8;

/// The socket's path in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The daemon's current [`StatusReport`], built when asked.
    Status,
}

impl Request {
    /// The request's word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Request::Status => "status",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A request line the daemon cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty request")]
    Empty,
    #[error("unknown request {word:?} (known: status)")]
    Unknown { word: String },
    #[error("request {request} takes no arguments")]
    Arguments { request: Request },
}

impl FromStr for Request {
    type Err = RequestError;

    fn from_str(line: &str) -> Result<Self, RequestError> {
        let mut words = line.split_ascii_whitespace();
        let request = match words.next() {
            None => return Err(RequestError::Empty),
            Some("status") => Request::Status,
            Some(word) => {
                return Err(RequestError::Unknown {
                    word: word.to_owned(),
                });
            }
        };
        match words.next() {
            None => Ok(request),
            Some(_) => Err(RequestError::Arguments { request }),
        }
    }
}

/// What the daemon answers: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// One response per request on a local socket: the size difference (the
// device info in the status grew with the GPU fields) does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    Status(StatusReport),
    Error(Refusal),
}

/// Why the daemon did not answer a request: a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The line is not a request this daemon knows.
    UnknownRequest,
    /// The line is longer than [`MAX_REQUEST_BYTES`].
    RequestTooLong,
    /// The daemon could not build the answer (e.g. the state database
    /// failed).
    Unavailable,
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalCode::UnknownRequest => "unknown_request",
            RefusalCode::RequestTooLong => "request_too_long",
            RefusalCode::Unavailable => "unavailable",
        })
    }
}

/// What answers the requests (the daemon: its deployer).
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, request: Request) -> impl Future<Output = Response> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path} exists and is not a socket: remove it")]
    NotASocket { path: PathBuf },
    #[error("another process answers on {path}")]
    InUse { path: PathBuf },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} mode 0600: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The daemon's bound socket.
pub struct Listener {
    path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file, so shutdown removes only its own.
    identity: (u64, u64),
}

impl Listener {
    /// Binds `<state_dir>/agent.sock` (mode 0600), replacing a stale socket.
    /// The caller holds the state database's lock, so no other daemon of
    /// this state directory runs; a socket that still answers is refused
    /// all the same.
    pub async fn bind(state_dir: &Path) -> Result<Self, BindError> {
        let path = path(state_dir);
        clear_stale(&path).await?;
        let tmp = state_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
        remove_if_exists(&tmp)?;
        let listener = UnixListener::bind(&tmp).map_err(|source| BindError::Bind {
            path: tmp.clone(),
            source,
        })?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| BindError::Permissions {
                path: tmp.clone(),
                source,
            })
            .and_then(|()| {
                std::fs::rename(&tmp, &path).map_err(|source| BindError::Rename {
                    from: tmp.clone(),
                    to: path.clone(),
                    source,
                })
            })
            .and_then(|()| {
                std::fs::symlink_metadata(&path).map_err(|source| BindError::Inspect {
                    path: path.clone(),
                    source,
                })
            });
        let meta = match placed {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Ok(Self {
            path,
            listener,
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers connections until `shutdown`, then closes them and removes
    /// the socket file.
    pub async fn serve<R: Responder>(self, responder: Arc<R>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            // Reap finished connections as we go.
            while connections.try_join_next().is_some() {}
            match accepted {
                Ok((stream, _)) => {
                    let responder = responder.clone();
                    connections.spawn(async move {
                        if let Err(e) = connection(stream, responder.as_ref()).await {
                            debug!(error = %e, "local socket connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "local socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        connections.shutdown().await;
        self.remove();
    }

    fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if !ours {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove the local socket");
        }
    }
}

/// Removes a socket nobody answers on; refuses a live one or a non-socket.
async fn clear_stale(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    let probe = tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await;
    if let Ok(Ok(_)) = probe {
        return Err(BindError::InUse {
            path: path.to_owned(),
        });
    }
    debug!(path = %path.display(), "replacing a stale local socket");
    remove_if_exists(path)
}

fn remove_if_exists(path: &Path) -> Result<(), BindError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BindError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// One client: request lines in, response lines out, until it hangs up,
/// idles or sends a line that is too long.
async fn connection<R: Responder>(stream: UnixStream, responder: &R) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let mut capped = (&mut reader).take(limit);
        let read = capped.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let response = if too_long {
            Response::Error(Refusal::new(
                RefusalCode::RequestTooLong,
                format!("a request is at most {MAX_REQUEST_BYTES} bytes"),
            ))
        } else {
            match String::from_utf8_lossy(&line).parse::<Request>() {
                Ok(request) => responder.respond(request).await,
                Err(e) => Response::Error(Refusal::new(RefusalCode::UnknownRequest, e.to_string())),
            }
        };
        let mut bytes = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        if too_long {
            return Ok(());
        }
    }
}

/// Why a client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no agent socket at {path}")]
    NoSocket { path: PathBuf },
    #[error("stale agent socket {path}: no agent listens on it ({source})")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent on {path} accepted but did not answer within {after:?}")]
    NoAnswer { path: PathBuf, after: Duration },
    #[error("talking to the agent on {path}: {source}")]
    Exchange {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent on {path} hung up without an answer")]
    Closed { path: PathBuf },
    #[error("the agent on {path} answered more than {limit} bytes")]
    TooLong { path: PathBuf, limit: usize },
    #[error("the agent on {path} answered something that is not a response: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent on {path} refused {request}: {source}")]
    Refused {
        path: PathBuf,
        request: Request,
        #[source]
        source: Refusal,
    },
    #[error("the agent on {path} answered {request} with another kind of response")]
    Unexpected { path: PathBuf, request: Request },
}

/// Sends one request to the daemon of `state_dir`; the whole exchange is
/// bounded by `timeout`.
pub async fn ask(
    state_dir: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Response, AskError> {
    let path = path(state_dir);
    let stream = match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
        Err(_) => {
            return Err(AskError::NoAnswer {
                path,
                after: timeout,
            });
        }
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(path, e)),
    };
    match tokio::time::timeout(timeout, exchange(stream, request)).await {
        Err(_) => Err(AskError::NoAnswer {
            path,
            after: timeout,
        }),
        Ok(Ok(line)) => {
            serde_json::from_slice(&line).map_err(|source| AskError::Malformed { path, source })
        }
        Ok(Err(Exchanged::Io(source))) => Err(AskError::Exchange { path, source }),
        Ok(Err(Exchanged::Closed)) => Err(AskError::Closed { path }),
        Ok(Err(Exchanged::TooLong)) => Err(AskError::TooLong {
            path,
            limit: MAX_RESPONSE_BYTES,
        }),
    }
}

/// The daemon's current status report.
pub async fn status(state_dir: &Path, timeout: Duration) -> Result<StatusReport, AskError> {
    let request = Request::Status;
    match ask(state_dir, request, timeout).await? {
        Response::Status(report) => Ok(report),
        Response::Error(source) => Err(AskError::Refused {
            path: path(state_dir),
            request,
            source,
        }),
    }
}

fn connect_error(path: PathBuf, e: std::io::Error) -> AskError {
    match e.kind() {
        std::io::ErrorKind::NotFound => AskError::NoSocket { path },
        std::io::ErrorKind::ConnectionRefused => AskError::Stale { path, source: e },
        _ => AskError::Connect { path, source: e },
    }
}

enum Exchanged {
    Io(std::io::Error),
    Closed,
    TooLong,
}

async fn exchange(mut stream: UnixStream, request: Request) -> Result<Vec<u8>, Exchanged> {
    let line = format!("{request}\n");
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(Exchanged::Io)?;
    let mut reader = BufReader::new(stream).take((MAX_RESPONSE_BYTES + 1) as u64);
    let mut answer = Vec::new();
    reader
        .read_until(b'\n', &mut answer)
        .await
        .map_err(Exchanged::Io)?;
    match answer.pop() {
        Some(b'\n') => Ok(answer),
        Some(_) if answer.len() >= MAX_RESPONSE_BYTES => Err(Exchanged::TooLong),
        _ => Err(Exchanged::Closed),
    }
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
