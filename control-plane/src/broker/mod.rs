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
mod session;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::id::{DeviceId, IdError};
use fleet_protocol::topic::TopicScheme;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::pki::tls::peer_of;
use crate::pki::{PeerCert, Revoked};

#[doc(hidden)] // public for the fuzz targets only
pub use frame::{PublishHeader, next_frame};
pub use internal::ProbeError;
use internal::{
    ct_eq, raise_open_files, random_secret, reserve_loopback_port, sha256, start_rumqttd,
    wait_until_ready,
};
use session::session;

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
    #[error("cannot start the broker thread")]
    Thread(#[source] std::io::Error),
}

/// Errors of one proxied connection (logged, never fatal to the broker).
#[derive(Debug, thiserror::Error)]
#[doc(hidden)] // public for the fuzz targets only
pub enum SessionError {
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
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
    #[error("no device certificate (TLS client certificate required)")]
    NoCertificate,
    #[error("the client id is not the certificate's device {0}")]
    CertificateMismatch(DeviceId),
    #[error("device {0} is revoked")]
    Revoked(DeviceId),
}

impl Refusal {
    /// CONNACK return code: 2 identifier rejected, 4 bad user name or
    /// password, 5 not authorised.
    pub fn connack_code(&self) -> u8 {
        match self {
            Self::NotADeviceId(_) | Self::CertificateMismatch(_) => 2,
            Self::BadServerCredentials | Self::UserNameMismatch | Self::BadDeviceToken => 4,
            Self::NoCredentials
            | Self::ForbiddenWill(_)
            | Self::NoCertificate
            | Self::Revoked(_) => 5,
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

/// TLS on the device listener: devices are then identified by their
/// certificates alone (see [`crate::pki`]), and revoked ones cut off.
#[derive(Clone)]
pub struct BrokerTls {
    /// Verifies client certificates against the fleet CA.
    pub config: Arc<rustls::ServerConfig>,
    pub revoked: Revoked,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
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

struct Shared {
    /// With TLS: the revoked devices (and devices need certificates).
    revoked: Option<Revoked>,
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
    tls: bool,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts rumqttd on an internal loopback port and the ACL front on
    /// `config.listen`; both stop serving when `cancel` fires.
    pub async fn start(
        config: BrokerConfig,
        cancel: CancellationToken,
    ) -> Result<Self, BrokerError> {
        raise_open_files(config.max_connections);
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
        info!(%addr, tls = config.tls.is_some(), "MQTT broker listening");
        let acceptor = config
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.config.clone()));
        let shared = Arc::new(Shared {
            revoked: config.tls.map(|t| t.revoked),
            scheme: config.scheme,
            server: config.server,
            devices: config.devices,
            max_packet_bytes: config.max_packet_bytes,
            internal,
            secret,
        });
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let tls = acceptor.is_some();
        let task = tokio::spawn(accept_loop(listener, acceptor, shared, limit, cancel));
        Ok(Self { addr, tls, task })
    }

    /// The address devices connect to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtts://host:port` (or `mqtt://` without TLS), for
    /// [`crate::link::BrokerAddr::parse`].
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}", self.addr)
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
    acceptor: Option<TlsAcceptor>,
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
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let result = match acceptor {
                None => session(stream, None, &shared, &cancel).await,
                Some(acceptor) => match tls_accept(&acceptor, stream).await {
                    Ok((stream, device)) => session(stream, device, &shared, &cancel).await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e @ SessionError::Refused { .. }) => {
                    info!(%peer, error = %e, "connection refused")
                }
                Err(e @ SessionError::Handshake(_)) => {
                    info!(%peer, error = %e, "TLS handshake failed")
                }
                Err(e) => debug!(%peer, error = %e, "connection closed"),
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    info!("MQTT broker front stopped");
}

/// The TLS handshake (bounded by the CONNECT timeout) and the device the
/// client's certificate names, if it presented one.
async fn tls_accept(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> Result<
    (
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        Option<PeerCert>,
    ),
    SessionError,
> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| SessionError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(SessionError::Handshake)?;
    let device = peer_of(stream.get_ref().1.peer_certificates())
        .transpose()
        .map_err(|e| SessionError::Handshake(std::io::Error::other(e.to_string())))?;
    Ok((stream, device))
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
