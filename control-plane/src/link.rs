//! The server's MQTT link: publishes signed desired states and commands,
//! receives status, telemetry and presence from every device.
//!
//! It is a [`Handler`] of the event loop shared with the agent
//! (`fleet_agent::link::event_loop`), which reconnects with backoff,
//! resubscribes to [`TopicScheme::server_subscriptions`] on every connection
//! (retained status and presence arrive again then), and keeps each desired
//! state and command until the broker acknowledges it (QoS 1): what was
//! published while the broker was away is sent once it is back. Only the
//! newest desired state of a device is kept. Inbound payloads that do not
//! decode, or that name another device than their topic, are logged and
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use fleet_agent::link::event_loop::{self, Handler, LinkCore, LinkOptions};
use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{Presence, StatusReport, Telemetry, decode};
use fleet_protocol::session::SessionConfig;
use fleet_protocol::topic::{Topic, TopicKind, TopicScheme};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::telemetry::{IngestCounters, MessageKind};

pub use fleet_agent::link::{Backoff, MAX_PACKET_BYTES};

/// How many QoS 1 publishes may wait for their acknowledgement at once.
const MAX_OUTSTANDING: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Address(#[from] BrokerAddrError),
    #[error("the MQTT link has stopped")]
    Stopped,
}

pub use fleet_protocol::broker::{BrokerAddr, BrokerAddrError};

/// The server's reconnection delays (faster than a device's).
pub const SERVER_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(30),
};

/// Configuration of [`ServerLink`].
#[derive(Clone)]
pub struct ServerLinkConfig {
    pub broker: BrokerAddr,
    /// Client id and user name.
    pub client_id: String,
    pub password: String,
    pub scheme: TopicScheme,
    pub keep_alive: Duration,
    pub backoff: Backoff,
    /// Capacity of the inbound channel; the link stops reading from the
    /// broker while it is full.
    pub inbound_capacity: usize,
    /// Where rejected messages are counted.
    pub counters: Arc<IngestCounters>,
    /// TLS for an `mqtts://` broker (trusting the fleet CA).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ServerLinkConfig {
    pub fn new(
        broker: BrokerAddr,
        client_id: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            broker,
            client_id: client_id.into(),
            password: password.into(),
            scheme: TopicScheme::default(),
            keep_alive: Duration::from_secs(30),
            backoff: SERVER_BACKOFF,
            inbound_capacity: 1024,
            counters: IngestCounters::new(),
            tls: None,
        }
    }
}

impl std::fmt::Debug for ServerLinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLinkConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("password", &"<redacted>")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// What devices sent (the fleet engine's inbound port).
pub use crate::fleet::ports::Inbound;
use crate::fleet::ports::{DesiredPublisher, PortError};

enum Request {
    Publish {
        topic: Topic,
        payload: Vec<u8>,
        done: oneshot::Sender<()>,
    },
}

/// A cloneable handle to the server's MQTT link.
#[derive(Clone)]
pub struct ServerLink {
    tx: mpsc::Sender<Request>,
    connected: watch::Receiver<bool>,
}

impl ServerLink {
    /// Starts the link; it connects (and reconnects) in the background until
    /// `cancel` fires. Returns the handle, the inbound messages and the task.
    pub fn connect(
        config: ServerLinkConfig,
        cancel: CancellationToken,
    ) -> (Self, mpsc::Receiver<Inbound>, JoinHandle<()>) {
        let options = LinkOptions {
            side: "server",
            broker: config.broker,
            client_id: config.client_id.clone(),
            user: config.client_id,
            password: config.password,
            keep_alive: config.keep_alive,
            backoff: config.backoff,
            subscriptions: config.scheme.server_subscriptions(),
            last_will: None,
            scheme: config.scheme.clone(),
            session: SessionConfig {
                max_in_flight: MAX_OUTSTANDING,
                supersede_retained: true,
            },
            tls: config.tls,
            tls_updates: None,
        };
        let (tx, rx) = mpsc::channel(256);
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let handler = Server {
            scheme: config.scheme,
            inbound: inbound_tx,
            counters: config.counters,
        };
        let (connected, task) = event_loop::start(options, handler, rx, cancel);
        (Self { tx, connected }, inbound_rx, task)
    }

    /// Publishes a device's signed desired state (QoS 1, retained). Returns
    /// once the link has taken it; it is sent when the broker is reachable
    /// and kept until the broker acknowledges it (a newer desired state for
    /// the same device replaces it).
    pub async fn publish_desired(
        &self,
        device: &DeviceId,
        envelope_json: Vec<u8>,
    ) -> Result<(), LinkError> {
        self.publish(Topic::Desired(device.clone()), envelope_json)
            .await
    }

    /// Publishes a signed command to a device (QoS 1, not retained).
    pub async fn publish_cmd(
        &self,
        device: &DeviceId,
        command_json: Vec<u8>,
    ) -> Result<(), LinkError> {
        self.publish(Topic::Cmd(device.clone()), command_json).await
    }

    /// Whether the link is connected to the broker now; watch it for changes.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    async fn publish(&self, topic: Topic, payload: Vec<u8>) -> Result<(), LinkError> {
        let (done, taken) = oneshot::channel();
        self.tx
            .send(Request::Publish {
                topic,
                payload,
                done,
            })
            .await
            .map_err(|_| LinkError::Stopped)?;
        taken.await.map_err(|_| LinkError::Stopped)
    }
}

/// The server's handler of the shared event loop.
struct Server {
    scheme: TopicScheme,
    inbound: mpsc::Sender<Inbound>,
    counters: Arc<IngestCounters>,
}

impl Handler for Server {
    type Tag = ();
    type Request = Request;

    fn connected(&mut self, _core: &mut LinkCore<()>) {
        info!("server MQTT link connected");
    }

    async fn request(&mut self, core: &mut LinkCore<()>, req: Request) {
        match req {
            Request::Publish {
                topic,
                payload,
                done,
            } => {
                if let Err(e) = core.publish(topic, payload, ()) {
                    warn!(error = %e, "publish refused by the session");
                }
                let _ = done.send(());
            }
        }
    }

    async fn delivered(&mut self, _core: &mut LinkCore<()>, _tag: ()) {}

    async fn message(&mut self, topic: &str, payload: &[u8], cancel: &CancellationToken) {
        let msg = parse_inbound(&self.scheme, topic, payload);
        if msg.is_none() && !payload.is_empty() {
            let kind = match self.scheme.parse(topic).map(|t| t.kind()) {
                Ok(TopicKind::Status) => Some(MessageKind::Status),
                Ok(TopicKind::Telemetry) => Some(MessageKind::Telemetry),
                Ok(TopicKind::Online) => Some(MessageKind::Presence),
                _ => None,
            };
            if let Some(kind) = kind {
                self.counters.rejected(kind);
            }
        }
        if let Some(msg) = msg {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = self.inbound.send(msg) => {
                    if r.is_err() {
                        debug!("inbound receiver dropped; message discarded");
                    }
                }
            }
        }
    }
}

/// Turns one message from a device into [`Inbound`], or logs why not.
pub fn parse_inbound(scheme: &TopicScheme, topic: &str, payload: &[u8]) -> Option<Inbound> {
    let topic = match scheme.parse(topic) {
        Ok(t) => t,
        Err(e) => {
            warn!(%topic, error = %e, "message on an unknown topic dropped");
            return None;
        }
    };
    if payload.is_empty() {
        // A cleared retained message.
        return None;
    }
    let device = topic.device().clone();
    let dropped = |what: &str, e: &dyn std::fmt::Display| {
        warn!(%device, kind = %topic.kind(), error = %e, "{what}; message dropped");
    };
    match &topic {
        Topic::Status(_) => match decode::<StatusReport>(payload) {
            Ok(s) if s.device == device => Some(Inbound::Status(s)),
            Ok(s) => {
                dropped("status names another device", &s.device);
                None
            }
            Err(e) => {
                dropped("undecodable status", &e);
                None
            }
        },
        Topic::Telemetry(_) => match decode::<Telemetry>(payload) {
            Ok(mut t) => match &t.device {
                Some(d) if *d != device => {
                    dropped("telemetry names another device", d);
                    None
                }
                _ => {
                    t.device = Some(device);
                    Some(Inbound::Telemetry(t))
                }
            },
            Err(e) => {
                dropped("undecodable telemetry", &e);
                None
            }
        },
        Topic::Online(_) => match decode::<Presence>(payload) {
            Ok(p) if p.device == device => Some(Inbound::Presence {
                device,
                online: p.online,
            }),
            Ok(p) => {
                dropped("presence names another device", &p.device);
                None
            }
            Err(e) => {
                dropped("undecodable presence", &e);
                None
            }
        },
        Topic::Desired(_) | Topic::Cmd(_) => None,
    }
}

/// The link as the engine's desired-state publisher.
pub struct LinkPublisher(ServerLink);

impl LinkPublisher {
    pub fn new(link: ServerLink) -> Self {
        Self(link)
    }
}

#[async_trait::async_trait]
impl DesiredPublisher for LinkPublisher {
    async fn publish_desired(
        &self,
        device: &DeviceId,
        envelope_json: Vec<u8>,
    ) -> Result<(), PortError> {
        self.0
            .publish_desired(device, envelope_json)
            .await
            .map_err(|e| PortError::Publish {
                device: device.clone(),
                source: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::message::encode;

    #[test]
    fn inbound_messages_must_match_their_topic() {
        let s = TopicScheme::default();
        let a = DeviceId::new("cam-01").unwrap();
        let b = DeviceId::new("cam-02").unwrap();
        let p = encode(&Presence::online(a.clone())).unwrap();
        assert_eq!(
            parse_inbound(&s, "fleet/v1/d/cam-01/online", &p),
            Some(Inbound::Presence {
                device: a.clone(),
                online: true
            })
        );
        assert_eq!(parse_inbound(&s, "fleet/v1/d/cam-02/online", &p), None);
        let t = encode(&Telemetry {
            device: Some(b.clone()),
            ..Telemetry::default()
        })
        .unwrap();
        assert_eq!(parse_inbound(&s, "fleet/v1/d/cam-01/telemetry", &t), None);
        match parse_inbound(&s, "fleet/v1/d/cam-02/telemetry", &t) {
            Some(Inbound::Telemetry(t)) => assert_eq!(t.device, Some(b)),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_inbound(&s, "fleet/v1/d/cam-01/status", b"{"), None);
        assert_eq!(parse_inbound(&s, "fleet/v1/d/cam-01/status", b""), None);
        assert_eq!(parse_inbound(&s, "elsewhere/x", b"{}"), None);
    }
}
