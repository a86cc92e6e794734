//! The server's MQTT link: publishes signed desired states and commands,
//! receives status, telemetry and presence from every device.
//!
//! One actor task owns the rumqttc event loop. It reconnects with exponential
//! backoff, resubscribes to [`TopicScheme::server_subscriptions`] on every
//! connection (retained status and presence arrive again then), and keeps each
//! desired state and command until the broker acknowledges it (QoS 1): what
//! was published while the broker was away is sent once it is back. Only the
//! newest desired state of a device is kept. Inbound payloads that do not
//! decode, or that name another device than their topic, are logged and
//! dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{Presence, StatusReport, Telemetry, decode};
use fleet_protocol::topic::{Topic, TopicKind, TopicScheme};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::telemetry::{IngestCounters, MessageKind};

/// Largest packet the link sends or accepts.
pub const MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;

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

/// Reconnection delays: doubling from `initial` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

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
            backoff: Backoff::default(),
            inbound_capacity: 1024,
            counters: IngestCounters::new(),
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

enum Request {
    Publish {
        topic: Topic,
        payload: Bytes,
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
        let mut options = MqttOptions::new(
            config.client_id.clone(),
            config.broker.host.clone(),
            config.broker.port,
        );
        options
            .set_credentials(config.client_id.clone(), config.password.clone())
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        let (client, eventloop) = AsyncClient::new(options, 2 * MAX_OUTSTANDING);
        let (tx, rx) = mpsc::channel(256);
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let (connected_tx, connected) = watch::channel(false);
        let actor = Actor {
            scheme: config.scheme,
            backoff: config.backoff,
            client,
            inbound: inbound_tx,
            counters: config.counters,
            connected: connected_tx,
            pending: BTreeMap::new(),
            latest_desired: HashMap::new(),
            next_seq: 0,
            session: Session::default(),
        };
        let task = tokio::spawn(actor.run(eventloop, rx, cancel));
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
                payload: Bytes::from(payload),
                done,
            })
            .await
            .map_err(|_| LinkError::Stopped)?;
        taken.await.map_err(|_| LinkError::Stopped)
    }
}

struct PendingPublish {
    topic: Topic,
    payload: Bytes,
}

/// Bookkeeping of one MQTT session (reset on every connection).
#[derive(Default)]
struct Session {
    connected: bool,
    /// Sequence numbers of QoS 1 publishes handed to rumqttc, in order; the
    /// next `Outgoing::Publish(pkid)` belongs to the front one.
    awaiting_pkid: VecDeque<u64>,
    inflight: HashMap<u16, u64>,
    sent: HashSet<u64>,
}

struct Actor {
    scheme: TopicScheme,
    backoff: Backoff,
    client: AsyncClient,
    inbound: mpsc::Sender<Inbound>,
    counters: Arc<IngestCounters>,
    connected: watch::Sender<bool>,
    pending: BTreeMap<u64, PendingPublish>,
    latest_desired: HashMap<DeviceId, u64>,
    next_seq: u64,
    session: Session,
}

impl Actor {
    async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut requests: mpsc::Receiver<Request>,
        cancel: CancellationToken,
    ) {
        let mut delay = self.backoff.initial;
        let mut requests_open = true;
        loop {
            // The poll future is kept across requests and dropped only on
            // cancellation, so rumqttc never loses a half-done step.
            let event = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            info!("server MQTT link stopping");
                            return;
                        }
                        ev = &mut poll => break ev,
                        req = requests.recv(), if requests_open => match req {
                            Some(req) => self.on_request(req),
                            None => requests_open = false,
                        },
                    }
                }
            };
            match event {
                Ok(event) => {
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        delay = self.backoff.initial;
                    }
                    self.on_event(event, &cancel).await;
                }
                Err(e) => {
                    self.on_disconnect(&e);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff.max);
                }
            }
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Publish {
                topic,
                payload,
                done,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Topic::Desired(device) = &topic
                    && let Some(old) = self.latest_desired.insert(device.clone(), seq)
                {
                    self.pending.remove(&old);
                }
                self.pending.insert(seq, PendingPublish { topic, payload });
                let _ = done.send(());
                self.flush_pending();
            }
        }
    }

    /// Hands unsent pending publishes to rumqttc while connected.
    fn flush_pending(&mut self) {
        if !self.session.connected {
            return;
        }
        let unsent: Vec<u64> = self
            .pending
            .keys()
            .filter(|s| !self.session.sent.contains(s))
            .take(MAX_OUTSTANDING.saturating_sub(self.session.sent.len()))
            .copied()
            .collect();
        for seq in unsent {
            let Some(p) = self.pending.get(&seq) else {
                continue;
            };
            let topic = self.scheme.render(&p.topic);
            match self.client.try_publish(
                topic,
                qos(p.topic.qos()),
                p.topic.retained(),
                p.payload.clone(),
            ) {
                Ok(()) => {
                    self.session.sent.insert(seq);
                    self.session.awaiting_pkid.push_back(seq);
                }
                Err(e) => {
                    debug!(error = %e, "publish queue full; retrying later");
                    break;
                }
            }
        }
    }

    fn on_disconnect(&mut self, e: &ConnectionError) {
        if self.session.connected {
            warn!(error = %e, "MQTT connection lost; reconnecting");
        } else {
            debug!(error = %e, "MQTT connection attempt failed");
        }
        self.session = Session::default();
        self.connected.send_replace(false);
    }

    async fn on_event(&mut self, event: Event, cancel: &CancellationToken) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                info!("server MQTT link connected");
                self.session = Session {
                    connected: true,
                    ..Session::default()
                };
                self.connected.send_replace(true);
                let filters = self
                    .scheme
                    .server_subscriptions()
                    .into_iter()
                    .map(|sub| SubscribeFilter::new(sub.filter, qos(sub.qos.level())));
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    warn!(error = %e, "cannot queue the subscription");
                }
                self.flush_pending();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(seq) = self.session.awaiting_pkid.pop_front() {
                    self.session.inflight.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.session.inflight.remove(&ack.pkid) {
                    self.session.sent.remove(&seq);
                    if let Some(p) = self.pending.remove(&seq)
                        && let Topic::Desired(device) = &p.topic
                        && self.latest_desired.get(device) == Some(&seq)
                    {
                        self.latest_desired.remove(device);
                    }
                    self.flush_pending();
                }
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                warn!(codes = ?ack.return_codes, "broker refused a subscription");
            }
            Event::Incoming(Packet::Publish(p)) => {
                let msg = parse_inbound(&self.scheme, &p.topic, &p.payload);
                if msg.is_none() && !p.payload.is_empty() {
                    let kind = match self.scheme.parse(&p.topic).map(|t| t.kind()) {
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
            _ => {}
        }
    }
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
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
