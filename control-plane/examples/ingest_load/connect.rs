//! `ingest_load connect`: one connection per device, held open, for the cost
//! of setting connections up and of holding them (`bench/tls.sh`).
//!
//! Every device connects as itself, as on the embedded broker: over plain TCP
//! with its device token (`--tokens DATA_DIR`: client id = user = device id),
//! or over TLS with a certificate of its own (`--ca-dir DATA_DIR/pki`: the
//! fleet CA, with which this process issues each device a certificate for a
//! P-256 key made for that device alone, as enrollment would; every device
//! has its own rustls configuration, so no handshake resumes another's
//! session). Then it takes commands on stdin, one a line, and answers each
//! with one `key=value` line on stdout:
//!
//! - at start, unasked: `ready devices=N issue_secs=S` (credentials made;
//!   for TLS, S is the time to issue every certificate);
//! - `connect`: every device connects, at most `--connecting` at a time
//!   (TCP, the TLS handshake, CONNECT → CONNACK); answers `connected=K
//!   failed=F secs=S rate=R p50_ms= p99_ms= max_ms= first_error=...` once
//!   every attempt has ended. An attempt is not retried;
//! - `telemetry`: every connected device publishes one telemetry report
//!   (QoS 0, as the agent does); answers `sent=K secs=S dropped=D` once
//!   every report is written to its connection;
//! - `quit` or the end of input: exits (the connections close with it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use fleet_agent::link::tls::{ClientIdentity, client_config};
use fleet_control_plane::device_token::DeviceTokens;
use fleet_control_plane::link::BrokerAddr;
use fleet_control_plane::pki::{DEVICE_CERT_LIFETIME_SECS, FleetCa};
use fleet_protocol::message::encode;
use fleet_protocol::{DeviceId, Topic, TopicKind, TopicScheme};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{Semaphore, mpsc};

use crate::payload::{device_id, now, telemetry};

/// How long one device may take from its turn to CONNACK.
const CONNECT_TIMEOUT_SECS: u64 = 60;

#[derive(Parser)]
pub struct ConnectArgs {
    /// mqtt://host:port with --tokens, mqtts://host:port with --ca-dir.
    #[arg(long)]
    broker: String,
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Device ids are `<prefix>-00000`...
    #[arg(long, default_value = "dev")]
    prefix: String,
    /// Plain TCP: the device tokens derived from the server's secret in this
    /// data directory.
    #[arg(long, conflicts_with = "ca_dir")]
    tokens: Option<PathBuf>,
    /// TLS: the fleet CA's directory (`ca.crt`, `ca.key`), which issues every
    /// device its certificate.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64)]
    connecting: usize,
}

/// How one device authenticates.
enum Credential {
    Token(String),
    Certificate(Arc<rustls::ClientConfig>),
}

/// One connected device: its handle, and the report it sends.
struct Connected {
    client: AsyncClient,
    topic: String,
    report: Bytes,
}

/// Counted by the devices' event loops once connected.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
}

pub async fn run(a: ConnectArgs) -> anyhow::Result<()> {
    let addr = BrokerAddr::parse(&a.broker)?;
    let ids = (0..a.devices)
        .map(|i| device_id(&a.prefix, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut credentials = Some(credentials(&a, &addr, &ids)?);
    println!(
        "ready devices={} issue_secs={:.3}",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let counters = Arc::new(Counters::default());
    let mut connected = Vec::new();
    let mut commands = commands();
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "connect" => {
                let credentials = credentials.take().context("connected already")?;
                connected = connect_all(&a, &addr, &ids, credentials, &counters).await?;
            }
            "telemetry" => send_telemetry(&connected, &counters).await,
            "quit" => break,
            other => bail!("unknown command {other:?} (connect, telemetry, quit)"),
        }
    }
    Ok(())
}

/// The lines of stdin, read on a thread of their own (the crate's tokio has
/// no `io-std`); closed at the end of input or on a read error.
fn commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn credentials(
    a: &ConnectArgs,
    addr: &BrokerAddr,
    ids: &[DeviceId],
) -> anyhow::Result<Vec<Credential>> {
    match (addr.tls, &a.tokens, &a.ca_dir) {
        (false, Some(dir), _) => {
            let tokens = DeviceTokens::open(dir)?;
            Ok(ids
                .iter()
                .map(|id| Credential::Token(tokens.token(id)))
                .collect())
        }
        (true, _, Some(dir)) => Ok(certificates(dir, ids)?
            .into_iter()
            .map(Credential::Certificate)
            .collect()),
        (false, ..) => bail!("mqtt:// needs --tokens DATA_DIR"),
        (true, ..) => bail!("mqtts:// needs --ca-dir DATA_DIR/pki"),
    }
}

/// Issues every device a certificate for a key of its own, on every core.
fn certificates(ca_dir: &Path, ids: &[DeviceId]) -> anyhow::Result<Vec<Arc<rustls::ClientConfig>>> {
    let now = now();
    let ca = FleetCa::load(&ca_dir.join("ca.crt"), &ca_dir.join("ca.key"), now)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = ids.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                let ca = &ca;
                s.spawn(move || {
                    part.iter()
                        .map(|id| device_config(ca, id, now))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(ids.len());
        for part in parts {
            all.extend(
                part.join()
                    .map_err(|_| anyhow!("issuing thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// A P-256 key and CSR as the agent makes them, signed by the CA; the rustls
/// configuration presenting it.
fn device_config(
    ca: &FleetCa,
    device: &DeviceId,
    now: u64,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    let cert = ca.sign_device_csr(&csr, device, DEVICE_CERT_LIFETIME_SECS, now)?;
    let identity = ClientIdentity {
        cert_pem: cert.pem,
        key_pem: key.serialize_pem(),
    };
    Ok(client_config(ca.cert_pem(), false, Some(&identity))?)
}

fn options(device: &DeviceId, addr: &BrokerAddr, credential: Credential) -> MqttOptions {
    let mut options = MqttOptions::new(device.as_str(), addr.host.clone(), addr.port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    match credential {
        Credential::Token(token) => {
            options.set_credentials(device.as_str(), token);
        }
        Credential::Certificate(config) => {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
    }
    options
}

/// Connects every device (at most `a.connecting` at a time), prints the
/// outcome, and returns the devices that are connected.
async fn connect_all(
    a: &ConnectArgs,
    addr: &BrokerAddr,
    ids: &[DeviceId],
    credentials: Vec<Credential>,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<Connected>> {
    let scheme = TopicScheme::default();
    let now = now();
    let connecting = Arc::new(Semaphore::new(a.connecting.max(1)));
    let (done_tx, mut done) = mpsc::channel(ids.len().max(1));
    let start = Instant::now();
    let mut devices = Vec::with_capacity(ids.len());
    for (i, (id, credential)) in ids.iter().zip(credentials).enumerate() {
        let (client, eventloop) = AsyncClient::new(options(id, addr, credential), 8);
        tokio::spawn(device(
            i,
            eventloop,
            connecting.clone(),
            done_tx.clone(),
            counters.clone(),
        ));
        let report = Bytes::from(encode(&telemetry(i, 0, now))?);
        let topic = scheme.render(&Topic::new(TopicKind::Telemetry, id.clone()));
        devices.push(Some(Connected {
            client,
            topic,
            report,
        }));
    }
    drop(done_tx);
    let mut latencies = Vec::with_capacity(ids.len());
    let mut failed = 0usize;
    let mut first_error = String::new();
    while let Some((i, outcome)) = done.recv().await {
        match outcome {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                failed += 1;
                devices[i] = None;
                if first_error.is_empty() {
                    first_error = e.replace(char::is_whitespace, "_");
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    let ms = |q: f64| {
        let k = ((latencies.len().saturating_sub(1)) as f64 * q).round() as usize;
        latencies.get(k).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "connected={} failed={failed} secs={secs:.3} rate={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} first_error={}",
        latencies.len(),
        latencies.len() as f64 / secs.max(1e-9),
        ms(0.5),
        ms(0.99),
        ms(1.0),
        if first_error.is_empty() {
            "-"
        } else {
            &first_error
        },
    );
    Ok(devices.into_iter().flatten().collect())
}

/// One device's connection: waits for its turn, connects (reporting the
/// time from its turn to CONNACK, or why it failed), then keeps the
/// connection (pings) and counts what it publishes until it drops.
async fn device(
    index: usize,
    mut eventloop: EventLoop,
    connecting: Arc<Semaphore>,
    done: mpsc::Sender<(usize, Result<Duration, String>)>,
    counters: Arc<Counters>,
) {
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    let Ok(permit) = connecting.acquire_owned().await else {
        return;
    };
    let turn = Instant::now();
    let outcome = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                break match ack.code {
                    ConnectReturnCode::Success => Ok(turn.elapsed()),
                    code => Err(format!("refused: {code:?}")),
                };
            }
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    drop(permit);
    let up = outcome.is_ok();
    let _ = done.send((index, outcome)).await;
    drop(done);
    if !up {
        return;
    }
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One telemetry report from every connected device; prints once all are
/// written (or after a minute, with what was).
async fn send_telemetry(devices: &[Connected], counters: &Counters) {
    let before = counters.published.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut queued = 0u64;
    for d in devices {
        // A device whose connection dropped has no event loop any more.
        if d.client
            .publish(d.topic.clone(), QoS::AtMostOnce, false, d.report.clone())
            .await
            .is_ok()
        {
            queued += 1;
        }
    }
    let want = before + queued;
    let deadline = start + Duration::from_secs(60);
    while counters.published.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "sent={} secs={:.3} dropped={}",
        counters.published.load(Ordering::Relaxed) - before,
        start.elapsed().as_secs_f64(),
        counters.dropped.load(Ordering::Relaxed),
    );
}
