//! Test support: Debian's `docker-registry` on a free loopback port, a
//! minimal OCI push, image building, a counting (and fault-injecting) TCP
//! proxy, and a tiny raw HTTP server for misbehaving registries.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::Digest;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A plain HTTP client for the test's own requests (rustls on ring).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A system tool's path, looked up in the sbin and bin directories.
pub fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mosquitto -c conf` and waits (up to 120 s) until it accepts
/// connections on 127.0.0.1:`port` (the port `conf` names).
pub fn start_mosquitto(bin: &Path, conf: &Path, port: u16) -> Killed {
    let child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = Killed(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker
}

/// A `docker-registry` serving a temp root on 127.0.0.1.
pub struct Registry {
    pub addr: String,
    pub root: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one, or says SKIPPED and returns `None` if the tool is missing.
    pub async fn start() -> Option<Self> {
        if !have("docker-registry") {
            skip("docker-registry is not installed (apt-get install docker-registry)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // Built before any child exists, so a failure here leaks no process.
        let http = http();
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    root.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            for _ in 0..300 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(r) = http.get(format!("http://{addr}/v2/")).send().await
                    && r.status().is_success()
                {
                    return Some(Self {
                        addr,
                        root,
                        child,
                        _dir: dir,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start; see its log");
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the registry keeps a blob's bytes (to tamper with them).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layer ready to push.
#[derive(Clone)]
pub struct Layer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
    pub diff_id: Digest,
}

pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip_layer(files: &[(&str, &[u8])]) -> Layer {
    use std::io::Write;
    let tar = tar_of(files);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    Layer {
        media_type: LAYER_GZIP,
        blob: enc.finish().unwrap(),
        diff_id: Digest::of(&tar),
    }
}

/// A zstd layer, compressed by the `zstd` tool.
pub fn zstd_layer(files: &[(&str, &[u8])]) -> Layer {
    use std::io::Write;
    let tar = tar_of(files);
    let mut child = Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the zstd tool (apt-get install zstd)");
    let mut stdin = child.stdin.take().unwrap();
    let input = tar.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    Layer {
        media_type: LAYER_ZSTD,
        blob: out.stdout,
        diff_id: Digest::of(&tar),
    }
}

/// Opaque bytes as an uncompressed layer (the fetcher does not look inside).
pub fn raw_layer(bytes: Vec<u8>) -> Layer {
    Layer {
        media_type: LAYER_TAR,
        diff_id: Digest::of(&bytes),
        blob: bytes,
    }
}

/// What a push left in the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest: Digest,
    pub manifest_len: u64,
    pub config: (Digest, u64),
    pub layers: Vec<(Digest, u64)>,
}

pub async fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> Digest {
    let http = http();
    let digest = Digest::of(bytes);
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "upload start");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "upload finish");
    digest
}

pub async fn push_manifest(
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> Digest {
    let r = http()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "manifest put: {}",
        r.text().await.unwrap_or_default()
    );
    Digest::of(bytes)
}

pub fn config_for(layers: &[Layer], arch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap()
}

pub fn manifest_for(config: &[u8], layers: &[Layer]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": Digest::of(&l.blob).to_string(), "size": l.blob.len()})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Pushes layers, a config and a manifest tagged `tag`.
pub async fn push_image(base: &str, repo: &str, tag: &str, layers: &[Layer], arch: &str) -> Pushed {
    for l in layers {
        push_blob(base, repo, &l.blob).await;
    }
    let config = config_for(layers, arch);
    push_blob(base, repo, &config).await;
    let manifest = manifest_for(&config, layers);
    let digest = push_manifest(base, repo, tag, OCI_MANIFEST, &manifest).await;
    Pushed {
        manifest: digest,
        manifest_len: manifest.len() as u64,
        config: (Digest::of(&config), config.len() as u64),
        layers: layers
            .iter()
            .map(|l| (Digest::of(&l.blob), l.blob.len() as u64))
            .collect(),
    }
}

/// Pushes an index over already pushed images: (image, architecture, variant).
pub async fn push_index(
    base: &str,
    repo: &str,
    tag: &str,
    entries: &[(&Pushed, &str, Option<&str>)],
) -> Digest {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(p, arch, variant)| {
            let mut platform = json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            json!({"mediaType": OCI_MANIFEST, "digest": p.manifest.to_string(), "size": p.manifest_len, "platform": platform})
        })
        .collect();
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap();
    push_manifest(base, repo, tag, OCI_INDEX, &index).await
}

/// Files of a state directory outside `tmp/` and `meta/` (i.e. blobs).
pub fn blob_files(state: &Path) -> Vec<PathBuf> {
    let dir = state.join("blobs/sha256");
    std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

pub fn tmp_files(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("tmp"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// Proxy behaviour.
#[derive(Clone, Debug, Default)]
pub struct ProxyOpts {
    /// Cut a connection after it forwarded this many bytes downstream...
    pub cut_after: Option<u64>,
    /// ...this many times.
    pub cuts: usize,
    /// Forward at most this many bytes per second downstream.
    pub rate: Option<u64>,
}

/// A TCP proxy counting the bytes it forwards downstream (server → client).
pub struct Proxy {
    pub addr: SocketAddr,
    pub down: Arc<AtomicU64>,
    /// Everything clients sent, per connection (request heads, lossy UTF-8).
    pub requests: Arc<Mutex<Vec<String>>>,
    pub cuts_done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str, opts: ProxyOpts) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cuts_done = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let (d, r, c) = (down.clone(), requests.clone(), cuts_done.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (d, r, c, opts) = (d.clone(), r.clone(), c.clone(), opts.clone());
                tokio::spawn(async move { relay(client, server, d, r, c, opts).await });
            }
        });
        Self {
            addr,
            down,
            requests,
            cuts_done,
            task,
        }
    }

    pub fn down_bytes(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    pub fn request_log(&self) -> String {
        self.requests.lock().unwrap().join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    down: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    cuts_done: Arc<AtomicUsize>,
    opts: ProxyOpts,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let slot = {
        let mut r = requests.lock().unwrap();
        r.push(String::new());
        r.len() - 1
    };
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            requests.lock().unwrap()[slot].push_str(&String::from_utf8_lossy(&buf[..n]));
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        let start = tokio::time::Instant::now();
        let cut = match opts.cut_after {
            Some(at) if cuts_done.load(Ordering::SeqCst) < opts.cuts => Some(at),
            _ => None,
        };
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut n = n as u64;
            let mut cutting = false;
            if let Some(at) = cut
                && sent + n >= at
            {
                n = at - sent;
                cutting = true;
            }
            if cw.write_all(&buf[..n as usize]).await.is_err() {
                break;
            }
            sent += n;
            down.fetch_add(n, Ordering::SeqCst);
            if cutting {
                cuts_done.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            if let Some(rate) = opts.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(start + due).await;
            }
        }
        let _ = cw.shutdown().await;
        false
    };
    // Either side ending (or a cut) ends the relay; dropping both halves
    // makes the client see the connection end, mid-body for a cut.
    tokio::select! {
        _ = downstream => {}
        _ = up => {}
    }
}

/// A request as the raw server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw response: whatever bytes the handler wants to send, then close.
pub fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A response with a truthful Content-Length.
pub fn ok(content_type: &str, body: &[u8]) -> Vec<u8> {
    response(
        "200 OK",
        &[
            ("Content-Type", content_type.to_owned()),
            ("Content-Length", body.len().to_string()),
        ],
        body,
    )
}

/// A tiny HTTP/1.1 server answering each request with `handler`'s raw bytes.
pub struct RawServer {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    pub async fn start(handler: impl Fn(&Request) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (handler, hits) = (handler.clone(), h.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let req = Request {
                        method: first.next().unwrap_or_default().to_owned(),
                        path: first.next().unwrap_or_default().to_owned(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .collect(),
                    };
                    hits.lock().unwrap().push(req.clone());
                    let out = handler(&req);
                    let _ = conn.write_all(&out).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, hits, task }
    }

    pub fn hits_for(&self, prefix: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
