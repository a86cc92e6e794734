//! The embedded MQTT broker: rumqttd behind a front that enforces the per-device ACL.
//!
//! rumqttd 0.20 authenticates a CONNECT (user name and password) but has no
//! per-topic authorisation, cannot report the port it bound, and has no
//! shutdown. So the broker is two parts:
//!
//! - rumqttd listens on an internal loopback port and accepts only connections
//!   that present a random secret made at start (nobody else can reach the
//!   router around the ACL);
//! - the front, which this module owns, listens on the configured address. It
//!   frames MQTT 3.1.1 packets, authenticates each CONNECT (the server's
//!   account, or a device whose client id, user name and token match), checks
//!   the device's last will, and then checks every SUBSCRIBE and PUBLISH from a
//!   device against [`TopicScheme::device_may_subscribe`] and
//!   [`TopicScheme::device_may_publish`]. A SUBSCRIBE with any forbidden filter
//!   is refused whole (SUBACK failure for each filter); a forbidden PUBLISH is
//!   dropped (QoS 1 is acknowledged, as Mosquitto does, so a client does not
//!   retry it forever; QoS 2 closes the connection). Allowed packets are
//!   forwarded byte for byte, and so is everything the broker sends.
//!
//! MQTT 5 clients are refused (CONNACK "unacceptable protocol version"): both
//! sides of Fleet speak 3.1.1. On cancellation the front closes every
//! connection (the broker then sends the devices' last wills); rumqttd's own
//! threads stay idle until the process exits, since it offers no shutdown.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use fleet_protocol::id::DeviceId;
use fleet_protocol::topic::TopicScheme;
use rand_core::{OsRng, RngCore};
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{Connect, LastWill, Login, Packet, Protocol};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Largest MQTT packet accepted by default: a desired state may be 1 MiB
/// (`fleet_protocol::message::MAX_MESSAGE_BYTES`) plus topic and header.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not start or a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind the MQTT listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reserve an internal port for the broker")]
    InternalPort(#[source] std::io::Error),
    #[error("the internal broker on {addr} did not come up: {reason}")]
    InternalStart { addr: SocketAddr, reason: String },
    #[error("TLS on the embedded broker is not supported yet (configured for {addr})")]
    TlsUnsupported { addr: SocketAddr },
    #[error("cannot start the broker thread")]
    Thread(#[source] std::io::Error),
}

/// Errors of one proxied connection (logged, never fatal to the broker).
#[derive(Debug, thiserror::Error)]
#[doc(hidden)] // public for the fuzz targets only
pub enum SessionError {
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("malformed MQTT packet: {0}")]
    Protocol(String),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("refused CONNECT from {client_id:?}: {reason}")]
    Refused { client_id: String, reason: String },
}

/// Decides whether a device may connect with a token.
pub trait DeviceAuthenticator: Send + Sync + 'static {
    fn authenticate(&self, device: &DeviceId, token: &[u8]) -> bool;
}

/// A fixed table of device tokens (tests, small fleets). Comparison is on
/// SHA-256 digests, in constant time.
#[derive(Default, Clone)]
pub struct StaticDeviceTokens {
    tokens: HashMap<DeviceId, [u8; 32]>,
}

impl StaticDeviceTokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, device: DeviceId, token: &str) -> &mut Self {
        self.tokens.insert(device, sha256(token.as_bytes()));
        self
    }
}

impl std::fmt::Debug for StaticDeviceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticDeviceTokens")
            .field("devices", &self.tokens.len())
            .finish()
    }
}

impl DeviceAuthenticator for StaticDeviceTokens {
    fn authenticate(&self, device: &DeviceId, token: &[u8]) -> bool {
        self.tokens
            .get(device)
            .is_some_and(|want| ct_eq(want, &sha256(token)))
    }
}

/// The control plane's own MQTT account: full access to every topic.
#[derive(Clone)]
pub struct ServerAccount {
    /// Client id and user name of the server.
    pub client_id: String,
    pub password: String,
}

impl std::fmt::Debug for ServerAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAccount")
            .field("client_id", &self.client_id)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS for the device listener (server certificate, and the CA that signs
/// device client certificates). The shape is fixed; the embedded broker does
/// not serve TLS yet and refuses to start when this is set.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client_ca_path: Option<PathBuf>,
}

/// Configuration of [`EmbeddedBroker`].
#[derive(Clone)]
pub struct BrokerConfig {
    /// Where devices connect; port 0 picks a free port (see
    /// [`EmbeddedBroker::local_addr`]).
    pub listen: SocketAddr,
    pub scheme: TopicScheme,
    pub server: ServerAccount,
    pub devices: Arc<dyn DeviceAuthenticator>,
    pub max_packet_bytes: usize,
    pub max_connections: usize,
    pub tls: Option<BrokerTls>,
}

impl BrokerConfig {
    /// Loopback on 1883, default topic scheme, no TLS.
    pub fn new(server: ServerAccount, devices: Arc<dyn DeviceAuthenticator>) -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1883)),
            scheme: TopicScheme::default(),
            server,
            devices,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_connections: 20_000,
            tls: None,
        }
    }
}

/// Who a connection is, once its CONNECT was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Server,
    Device(DeviceId),
}

struct Shared {
    scheme: TopicScheme,
    server: ServerAccount,
    devices: Arc<dyn DeviceAuthenticator>,
    max_packet_bytes: usize,
    internal: SocketAddr,
    secret: String,
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on an internal loopback port and the ACL front on
    /// `config.listen`; both stop serving when `cancel` fires.
    pub async fn start(
        config: BrokerConfig,
        cancel: CancellationToken,
    ) -> Result<Self, BrokerError> {
        if config.tls.is_some() {
            return Err(BrokerError::TlsUnsupported {
                addr: config.listen,
            });
        }
        let secret = random_secret();
        let internal = reserve_loopback_port().map_err(BrokerError::InternalPort)?;
        start_rumqttd(&config, internal, &secret)?;
        wait_until_ready(internal, &secret).await?;

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
        info!(%addr, "MQTT broker listening");
        let shared = Arc::new(Shared {
            scheme: config.scheme,
            server: config.server,
            devices: config.devices,
            max_packet_bytes: config.max_packet_bytes,
            internal,
            secret,
        });
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let task = tokio::spawn(accept_loop(listener, shared, limit, cancel));
        Ok(Self { addr, task })
    }

    /// The address devices connect to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://host:port`, for [`crate::link::BrokerAddr::parse`].
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Waits until the front has stopped (after cancellation) and every
    /// connection is closed.
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            warn!(error = %e, "broker task ended abnormally");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            match session(stream, &shared, &cancel).await {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => debug!(%peer, error = %e, "connection closed"),
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    info!("MQTT broker front stopped");
}

/// One client connection, proxied to the internal broker.
async fn session(
    mut client: TcpStream,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    client.set_nodelay(true)?;
    let max = shared.max_packet_bytes;
    let mut cbuf = BytesMut::with_capacity(4096);

    let first = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        f = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut client, &mut cbuf, max)) => {
            f.map_err(|_| SessionError::ConnectTimeout(CONNECT_TIMEOUT))??
        }
    };
    let Some(first) = first else { return Ok(()) };
    let (connect, will, login) = match V4.read_mut(&mut first.clone(), max) {
        Ok(Packet::Connect(c, _, will, _, login)) => (c, will, login),
        Ok(_) => return Err(SessionError::Protocol("first packet is not CONNECT".into())),
        Err(v4_err) => {
            if matches!(v4_err, rumqttd::protocol::Error::InvalidProtocolLevel(_)) {
                client.write_all(&connack(1)).await?;
            }
            return Err(SessionError::Protocol(format!("bad CONNECT: {v4_err}")));
        }
    };
    let identity = match authorize(shared, &connect, will.as_ref(), login.as_ref()) {
        Ok(id) => id,
        Err((code, reason)) => {
            client.write_all(&connack(code)).await?;
            return Err(SessionError::Refused {
                client_id: connect.client_id,
                reason,
            });
        }
    };
    debug!(client_id = %connect.client_id, ?identity, "CONNECT accepted");

    let mut broker = TcpStream::connect(shared.internal).await?;
    broker.set_nodelay(true)?;
    let login = Some(Login {
        username: connect.client_id.clone(),
        password: shared.secret.clone(),
    });
    let mut out = BytesMut::new();
    V4.write(
        Packet::Connect(connect.clone(), None, will, None, login),
        &mut out,
    )
    .map_err(|e| SessionError::Protocol(format!("re-encoding CONNECT: {e}")))?;
    broker.write_all(&out).await?;

    // Broker → client frames may be larger than what a client may send
    // (a retained desired state plus headers); frame them with headroom.
    let max_down = max.saturating_mul(2);
    let mut bbuf = BytesMut::with_capacity(4096);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = client.read_buf(&mut cbuf) => {
                if n? == 0 {
                    return Ok(());
                }
                while let Some(frame) = next_frame(&mut cbuf, max)? {
                    match filter(shared, &identity, &frame)? {
                        Verdict::Forward => broker.write_all(&frame).await?,
                        Verdict::Reply(reply) => client.write_all(&reply).await?,
                        Verdict::Drop => {}
                    }
                }
            }
            n = broker.read_buf(&mut bbuf) => {
                if n? == 0 {
                    return Ok(());
                }
                while let Some(frame) = next_frame(&mut bbuf, max_down)? {
                    client.write_all(&frame).await?;
                }
            }
        }
    }
}

enum Verdict {
    Forward,
    Reply(Vec<u8>),
    Drop,
}

/// The ACL decision for one client → broker packet.
fn filter(shared: &Shared, identity: &Identity, frame: &BytesMut) -> Result<Verdict, SessionError> {
    let Identity::Device(device) = identity else {
        return Ok(Verdict::Forward);
    };
    let packet_type = frame[0] >> 4;
    match packet_type {
        // CONNECT twice is a protocol violation.
        1 => Err(SessionError::Protocol("second CONNECT".into())),
        3 => {
            let publish = PublishHeader::parse(frame)?;
            if shared.scheme.device_may_publish(device, &publish.topic) {
                return Ok(Verdict::Forward);
            }
            warn!(%device, topic = %publish.topic, "ACL: publish refused");
            match (publish.qos, publish.pkid) {
                (0, _) => Ok(Verdict::Drop),
                (1, Some(pkid)) => Ok(Verdict::Reply(puback(pkid))),
                _ => Err(SessionError::Protocol(format!(
                    "forbidden QoS {} publish to {}",
                    publish.qos, publish.topic
                ))),
            }
        }
        8 => {
            let Packet::Subscribe(subscribe, _) = V4
                .read_mut(&mut frame.clone(), frame.len())
                .map_err(|e| SessionError::Protocol(format!("bad SUBSCRIBE: {e}")))?
            else {
                return Err(SessionError::Protocol("bad SUBSCRIBE".into()));
            };
            let denied: Vec<&str> = subscribe
                .filters
                .iter()
                .map(|f| f.path.as_str())
                .filter(|f| !shared.scheme.device_may_subscribe(device, f))
                .collect();
            if denied.is_empty() {
                return Ok(Verdict::Forward);
            }
            warn!(%device, filters = ?denied, "ACL: subscribe refused");
            Ok(Verdict::Reply(suback_failure(
                subscribe.pkid,
                subscribe.filters.len(),
            )))
        }
        _ => Ok(Verdict::Forward),
    }
}

fn authorize(
    shared: &Shared,
    connect: &Connect,
    will: Option<&LastWill>,
    login: Option<&Login>,
) -> Result<Identity, (u8, String)> {
    // CONNACK codes (3.1.1): 2 identifier rejected, 4 bad user name or
    // password, 5 not authorised.
    let Some(login) = login else {
        return Err((5, "no credentials".into()));
    };
    if connect.client_id == shared.server.client_id {
        return if login.username == shared.server.client_id
            && ct_eq(
                &sha256(login.password.as_bytes()),
                &sha256(shared.server.password.as_bytes()),
            ) {
            Ok(Identity::Server)
        } else {
            Err((4, "bad server credentials".into()))
        };
    }
    let device = DeviceId::new(connect.client_id.as_str())
        .map_err(|e| (2, format!("client id is not a device id: {e}")))?;
    if login.username != connect.client_id {
        return Err((4, "user name differs from the client id".into()));
    }
    if !shared
        .devices
        .authenticate(&device, login.password.as_bytes())
    {
        return Err((4, "bad device token".into()));
    }
    if let Some(will) = will {
        let topic = String::from_utf8_lossy(&will.topic);
        if !shared.scheme.device_may_publish(&device, &topic) {
            return Err((5, format!("last will on forbidden topic {topic}")));
        }
    }
    Ok(Identity::Device(device))
}

/// Topic, QoS and packet id of a PUBLISH frame.
#[doc(hidden)] // public for the fuzz targets only
pub struct PublishHeader {
    pub topic: String,
    pub qos: u8,
    pub pkid: Option<u16>,
}

impl PublishHeader {
    pub fn parse(frame: &BytesMut) -> Result<Self, SessionError> {
        let bad = |what: &str| SessionError::Protocol(format!("bad PUBLISH: {what}"));
        let header = v4::check(frame.iter(), usize::MAX)
            .map_err(|e| SessionError::Protocol(format!("bad PUBLISH: {e}")))?;
        let qos = (header.byte1 >> 1) & 0b11;
        let mut body = &frame[header.fixed_header_len..];
        if body.len() < 2 {
            return Err(bad("no topic"));
        }
        let len = usize::from(body.get_u16());
        if body.len() < len {
            return Err(bad("topic length"));
        }
        let topic = std::str::from_utf8(&body[..len])
            .map_err(|_| bad("topic is not UTF-8"))?
            .to_owned();
        body.advance(len);
        let pkid = if qos > 0 {
            if body.len() < 2 {
                return Err(bad("no packet id"));
            }
            Some(body.get_u16())
        } else {
            None
        };
        Ok(Self { topic, qos, pkid })
    }
}

/// Reads until one whole frame is buffered; `None` on a clean EOF.
async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<BytesMut>, SessionError> {
    loop {
        if let Some(frame) = next_frame(buf, max)? {
            return Ok(Some(frame));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Splits one complete MQTT frame off the front of `buf`, if there is one.
#[doc(hidden)] // public for the fuzz targets only
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, SessionError> {
    match v4::check(buf.iter(), max) {
        Ok(header) => Ok(Some(buf.split_to(header.frame_length()))),
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(SessionError::Protocol(e.to_string())),
    }
}

fn connack(code: u8) -> Vec<u8> {
    vec![0x20, 0x02, 0x00, code]
}

fn puback(pkid: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(4);
    b.put_u8(0x40);
    b.put_u8(0x02);
    b.put_u16(pkid);
    b
}

/// SUBACK with the failure code (0x80) for each of `count` filters.
fn suback_failure(pkid: u16, count: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(0x90);
    let remaining = 2 + count;
    // Variable-length remaining length.
    let mut x = remaining;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        b.put_u8(byte);
        if x == 0 {
            break;
        }
    }
    b.put_u16(pkid);
    b.extend(std::iter::repeat_n(0x80u8, count));
    b.to_vec()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds a free loopback port for rumqttd (which cannot report the port it
/// bound). The short race with another process is caught by
/// [`wait_until_ready`], which needs the secret to succeed.
fn reserve_loopback_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    l.local_addr()
}

fn start_rumqttd(
    config: &BrokerConfig,
    internal: SocketAddr,
    secret: &str,
) -> Result<(), BrokerError> {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: config.max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let want = secret.to_owned();
    connections.set_auth_handler(move |_client: String, _user: String, pass: String| {
        let ok = ct_eq(&sha256(pass.as_bytes()), &sha256(want.as_bytes()));
        async move { ok }
    });
    let server = rumqttd::ServerSettings {
        name: "fleet-internal".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let router = rumqttd::RouterConfig {
        // The front is the only client; it keeps one internal connection per
        // device connection.
        max_connections: config.max_connections + 16,
        max_outgoing_packet_count: 200,
        // Per-topic commit logs: retained messages live apart from them, and
        // each device topic carries few, small messages.
        max_segment_size: config.max_packet_bytes.max(1024 * 1024) * 2,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let rconfig = rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("fleet".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rconfig);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(())
}

/// Connects to rumqttd with the secret until it answers with CONNACK success.
async fn wait_until_ready(internal: SocketAddr, secret: &str) -> Result<(), BrokerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::from("not tried");
    while tokio::time::Instant::now() < deadline {
        match probe(internal, secret).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BrokerError::InternalStart {
        addr: internal,
        reason: last,
    })
}

async fn probe(internal: SocketAddr, secret: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(internal)
        .await
        .map_err(|e| e.to_string())?;
    let connect = Connect {
        keep_alive: 10,
        client_id: "fleet-broker-probe".into(),
        clean_session: true,
    };
    let login = Some(Login {
        username: "fleet-broker-probe".into(),
        password: secret.to_owned(),
    });
    let mut out = BytesMut::new();
    V4.write(Packet::Connect(connect, None, None, None, login), &mut out)
        .map_err(|e| e.to_string())?;
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s, &mut buf, 64))
        .await
        .map_err(|_| "no CONNACK".to_owned())?
        .map_err(|e| e.to_string())?
        .ok_or("closed before CONNACK")?;
    if frame.len() == 4 && frame[0] == 0x20 && frame[3] == 0 {
        let _ = s.write_all(&[0xe0, 0x00]).await;
        Ok(())
    } else {
        Err(format!("unexpected answer {:02x?}", &frame[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suback_failure_encodes_one_code_per_filter() {
        assert_eq!(suback_failure(7, 2), vec![0x90, 4, 0, 7, 0x80, 0x80]);
        let long = suback_failure(1, 200);
        assert_eq!(&long[..3], &[0x90, 0xca, 0x01]);
        assert_eq!(long.len(), 3 + 2 + 200);
    }

    #[test]
    fn publish_header_is_parsed_for_each_qos() {
        // QoS 1, topic "a/b", pkid 9, payload "x".
        let frame = BytesMut::from(&[0x32, 8, 0, 3, b'a', b'/', b'b', 0, 9, b'x'][..]);
        let p = PublishHeader::parse(&frame).unwrap();
        assert_eq!((p.topic.as_str(), p.qos, p.pkid), ("a/b", 1, Some(9)));
        let frame = BytesMut::from(&[0x30, 4, 0, 1, b'a', b'x'][..]);
        let p = PublishHeader::parse(&frame).unwrap();
        assert_eq!((p.topic.as_str(), p.qos, p.pkid), ("a", 0, None));
        let short = BytesMut::from(&[0x32, 3, 0, 9, b'a'][..]);
        assert!(PublishHeader::parse(&short).is_err());
    }

    #[test]
    fn frames_are_split_only_when_complete() {
        let mut buf = BytesMut::from(&[0x30, 4, 0, 1, b'a'][..]);
        assert!(next_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&[b'x', 0xc0]);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.len(), 6);
        assert!(next_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&[0x00]);
        assert_eq!(next_frame(&mut buf, 1024).unwrap().unwrap().len(), 2);
    }

    #[test]
    fn static_tokens_check_device_and_token() {
        let mut t = StaticDeviceTokens::new();
        let a = DeviceId::new("cam-01").unwrap();
        t.insert(a.clone(), "s3cret");
        assert!(t.authenticate(&a, b"s3cret"));
        assert!(!t.authenticate(&a, b"s3cre"));
        assert!(!t.authenticate(&DeviceId::new("cam-02").unwrap(), b"s3cret"));
    }
}
