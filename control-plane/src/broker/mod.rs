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

mod frame;
mod internal;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleet_protocol::id::{DeviceId, IdError};
use fleet_protocol::topic::TopicScheme;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, LastWill, Login, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

#[doc(hidden)] // public for the fuzz targets only
pub use frame::{PublishHeader, next_frame};
use frame::{connack, puback, read_frame, suback_failure};
pub use internal::ProbeError;
use internal::{
    ct_eq, random_secret, reserve_loopback_port, sha256, start_rumqttd, wait_until_ready,
};

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
    #[error("the internal broker on {addr} did not come up")]
    InternalStart {
        addr: SocketAddr,
        #[source]
        source: ProbeError,
    },
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
    #[error("malformed MQTT packet")]
    Malformed(#[source] rumqttd::protocol::Error),
    #[error("malformed PUBLISH: {0}")]
    BadPublish(&'static str),
    #[error("the first packet is not CONNECT")]
    NotConnect,
    #[error("a second CONNECT on one connection")]
    SecondConnect,
    #[error("a SUBSCRIBE that does not decode as one")]
    NotSubscribe,
    #[error("forbidden QoS {qos} publish to {topic}")]
    ForbiddenPublish { qos: u8, topic: String },
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("refused CONNECT from {client_id:?}")]
    Refused {
        client_id: String,
        #[source]
        reason: Refusal,
    },
}

/// Why a CONNECT was refused; each maps to its MQTT 3.1.1 CONNACK code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no credentials")]
    NoCredentials,
    #[error("bad server credentials")]
    BadServerCredentials,
    #[error("the client id is not a device id")]
    NotADeviceId(#[source] IdError),
    #[error("the user name differs from the client id")]
    UserNameMismatch,
    #[error("bad device token")]
    BadDeviceToken,
    #[error("last will on forbidden topic {0}")]
    ForbiddenWill(String),
}

impl Refusal {
    /// CONNACK return code: 2 identifier rejected, 4 bad user name or
    /// password, 5 not authorised.
    pub fn connack_code(&self) -> u8 {
        match self {
            Self::NotADeviceId(_) => 2,
            Self::BadServerCredentials | Self::UserNameMismatch | Self::BadDeviceToken => 4,
            Self::NoCredentials | Self::ForbiddenWill(_) => 5,
        }
    }
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
        Ok(_) => return Err(SessionError::NotConnect),
        Err(v4_err) => {
            if matches!(v4_err, rumqttd::protocol::Error::InvalidProtocolLevel(_)) {
                client.write_all(&connack(1)).await?;
            }
            return Err(SessionError::Malformed(v4_err));
        }
    };
    let identity = match authorize(shared, &connect, will.as_ref(), login.as_ref()) {
        Ok(id) => id,
        Err(reason) => {
            client.write_all(&connack(reason.connack_code())).await?;
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
    .map_err(SessionError::Malformed)?;
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
        1 => Err(SessionError::SecondConnect),
        3 => {
            let publish = PublishHeader::parse(frame)?;
            if shared.scheme.device_may_publish(device, &publish.topic) {
                return Ok(Verdict::Forward);
            }
            warn!(%device, topic = %publish.topic, "ACL: publish refused");
            match (publish.qos, publish.pkid) {
                (0, _) => Ok(Verdict::Drop),
                (1, Some(pkid)) => Ok(Verdict::Reply(puback(pkid))),
                _ => Err(SessionError::ForbiddenPublish {
                    qos: publish.qos,
                    topic: publish.topic,
                }),
            }
        }
        8 => {
            let Packet::Subscribe(subscribe, _) = V4
                .read_mut(&mut frame.clone(), frame.len())
                .map_err(SessionError::Malformed)?
            else {
                return Err(SessionError::NotSubscribe);
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
) -> Result<Identity, Refusal> {
    let Some(login) = login else {
        return Err(Refusal::NoCredentials);
    };
    if connect.client_id == shared.server.client_id {
        return if login.username == shared.server.client_id
            && ct_eq(
                &sha256(login.password.as_bytes()),
                &sha256(shared.server.password.as_bytes()),
            ) {
            Ok(Identity::Server)
        } else {
            Err(Refusal::BadServerCredentials)
        };
    }
    let device = DeviceId::new(connect.client_id.as_str()).map_err(Refusal::NotADeviceId)?;
    if login.username != connect.client_id {
        return Err(Refusal::UserNameMismatch);
    }
    if !shared
        .devices
        .authenticate(&device, login.password.as_bytes())
    {
        return Err(Refusal::BadDeviceToken);
    }
    if let Some(will) = will {
        let topic = String::from_utf8_lossy(&will.topic);
        if !shared.scheme.device_may_publish(&device, &topic) {
            return Err(Refusal::ForbiddenWill(topic.into_owned()));
        }
    }
    Ok(Identity::Device(device))
}

#[cfg(test)]
mod tests {
    use super::*;

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
