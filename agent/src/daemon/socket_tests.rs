use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_protocol::DeviceId;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::*;

/// Answers with a report whose generation counts the requests: each answer
/// is built when asked.
struct Counting(AtomicU64);

impl Responder for Counting {
    async fn respond(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(report(self.0.fetch_add(1, Ordering::SeqCst))),
        }
    }
}

fn report(generation: u64) -> StatusReport {
    StatusReport {
        schema: 1,
        device: DeviceId::new("cam-01").unwrap(),
        reported_at: 1_700_000_000,
        generation: Some(generation),
        apps: Vec::new(),
        rejected: None,
        info: None,
    }
}

const T: Duration = Duration::from_secs(5);

struct Served {
    dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::bind(dir.path()).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(listener.serve(Arc::new(Counting(AtomicU64::new(1))), stop.clone()));
    Served { dir, stop, task }
}

#[test]
fn requests_parse_from_their_line_and_render_back() {
    assert_eq!("status\n".parse::<Request>(), Ok(Request::Status));
    assert_eq!("  status \r\n".parse::<Request>(), Ok(Request::Status));
    assert_eq!(Request::Status.to_string(), "status");
    assert_eq!("\n".parse::<Request>(), Err(RequestError::Empty));
    assert_eq!(
        "volumes".parse::<Request>(),
        Err(RequestError::Unknown {
            word: "volumes".into()
        })
    );
    assert_eq!(
        "status now".parse::<Request>(),
        Err(RequestError::Arguments {
            request: Request::Status
        })
    );
}

#[test]
fn responses_are_one_json_line_each() {
    let status = serde_json::to_string(&Response::Status(report(3))).unwrap();
    assert!(status.starts_with(r#"{"status":{"#), "{status}");
    assert!(!status.contains('\n'));
    let refusal = Response::Error(Refusal::new(RefusalCode::UnknownRequest, "no"));
    assert_eq!(
        serde_json::to_string(&refusal).unwrap(),
        r#"{"error":{"code":"unknown_request","message":"no"}}"#
    );
}

#[tokio::test]
async fn the_socket_is_0600_and_answers_fresh_reports_until_shutdown_removes_it() {
    let s = serve().await;
    let sock = path(s.dir.path());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(SOCKET_NAME)]);

    // Built at each request, not cached.
    assert_eq!(status(s.dir.path(), T).await.unwrap().generation, Some(1));
    assert_eq!(status(s.dir.path(), T).await.unwrap().generation, Some(2));

    s.stop.cancel();
    s.task.await.unwrap();
    assert!(!sock.exists(), "the socket is removed at shutdown");
    assert!(matches!(
        status(s.dir.path(), T).await,
        Err(AskError::NoSocket { .. })
    ));
}

async fn ask_line(c: &mut BufReader<UnixStream>, line: &str) -> Response {
    c.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut answer = String::new();
    c.read_line(&mut answer).await.unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[tokio::test]
async fn one_connection_carries_many_requests_and_bad_lines_get_a_coded_refusal() {
    let s = serve().await;
    let mut c = BufReader::new(UnixStream::connect(path(s.dir.path())).await.unwrap());
    assert!(matches!(
        ask_line(&mut c, "status\n").await,
        Response::Status(_)
    ));
    match ask_line(&mut c, "logs cam\n").await {
        Response::Error(r) => assert_eq!(r.code, RefusalCode::UnknownRequest, "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ask_line(&mut c, "status\n").await,
        Response::Status(_)
    ));
    let long = format!("{}\n", "x".repeat(MAX_REQUEST_BYTES + 10));
    match ask_line(&mut c, &long).await {
        Response::Error(r) => assert_eq!(r.code, RefusalCode::RequestTooLong),
        other => panic!("{other:?}"),
    }
    s.stop.cancel();
    s.task.await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_refused_at_once_and_replaced_by_the_next_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // A socket whose listener is gone, as after kill -9.
    drop(std::os::unix::net::UnixListener::bind(path(dir.path())).unwrap());
    let started = std::time::Instant::now();
    let err = status(dir.path(), T).await.unwrap_err();
    assert!(matches!(err, AskError::Stale { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let listener = Listener::bind(dir.path()).await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(listener.serve(Arc::new(Counting(AtomicU64::new(7))), stop.clone()));
    assert_eq!(status(dir.path(), T).await.unwrap().generation, Some(7));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_listener_that_never_answers_times_out_and_a_live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    // Bound and listening (the kernel accepts), never read: a hung daemon.
    let _hung = std::os::unix::net::UnixListener::bind(path(dir.path())).unwrap();
    let err = status(dir.path(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, AskError::NoAnswer { .. }), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");

    assert!(matches!(
        Listener::bind(dir.path()).await,
        Err(BindError::InUse { .. })
    ));
}

#[tokio::test]
async fn a_file_in_the_sockets_place_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(path(dir.path()), b"not a socket").unwrap();
    assert!(matches!(
        Listener::bind(dir.path()).await,
        Err(BindError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(path(dir.path())).unwrap(), b"not a socket");
}
