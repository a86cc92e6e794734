//! The agent's MQTT link.
//!
//! One actor task owns the rumqttc event loop. On every connection it
//! publishes `online` presence (its last will, registered with the broker, is
//! the retained `offline` presence), subscribes to its own `desired` and `cmd`
//! topics, and sends the status reports waiting in the on-disk
//! [`outbox::Outbox`], oldest first, one at a time; an entry leaves the outbox
//! only when the broker has acknowledged it (QoS 1). Telemetry is QoS 0 and
//! dropped while offline. Desired states and commands are handed over as raw
//! bytes on a channel: the deploy driver verifies them. It reconnects with
//! exponential backoff. Until a report carrying [`DeviceInfo`] has been
//! acknowledged, the link adds the device info to every status it sends, so
//! the first status after start describes the device.

pub mod info;
pub mod outbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{DeviceInfo, Presence, StatusReport, Telemetry, decode, encode};
use fleet_protocol::topic::{Topic, TopicScheme};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::outbox::{Outbox, OutboxError};

/// Largest packet the link sends or accepts.
pub const MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Address(#[from] BrokerAddrError),
    #[error("status outbox")]
    Outbox(#[from] OutboxError),
    #[error("cannot encode a {what} message")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
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
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

/// Configuration of [`AgentLink`].
#[derive(Clone)]
pub struct AgentLinkConfig {
    pub broker: BrokerAddr,
    /// The MQTT client id and user name.
    pub device: DeviceId,
    /// The device's password/token.
    pub token: String,
    pub scheme: TopicScheme,
    /// The outbox lives in `{state_dir}/link/outbox`.
    pub state_dir: PathBuf,
    /// Where the host's `/etc` is read from (`/` normally; a fixture in tests).
    pub host_root: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub keep_alive: Duration,
    pub backoff: Backoff,
    /// Most status reports kept while offline (the oldest go first).
    pub outbox_limit: usize,
    pub downlink_capacity: usize,
}

impl AgentLinkConfig {
    pub fn new(
        broker: BrokerAddr,
        device: DeviceId,
        token: impl Into<String>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            broker,
            device,
            token: token.into(),
            scheme: TopicScheme::default(),
            state_dir,
            host_root: PathBuf::from("/"),
            labels: BTreeMap::new(),
            keep_alive: Duration::from_secs(30),
            backoff: Backoff::default(),
            outbox_limit: 256,
            downlink_capacity: 16,
        }
    }
}

impl std::fmt::Debug for AgentLinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLinkConfig")
            .field("broker", &self.broker)
            .field("device", &self.device)
            .field("token", &"<redacted>")
            .field("scheme", &self.scheme)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// What the server sent, as raw bytes (verified by the deploy driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downlink {
    /// The signed desired state envelope.
    Desired(Vec<u8>),
    /// A signed command envelope.
    Command(Vec<u8>),
}

enum Request {
    Status(StatusReport, oneshot::Sender<Result<(), LinkError>>),
    Telemetry(Telemetry),
}

/// A cloneable handle to the agent's MQTT link.
#[derive(Clone)]
pub struct AgentLink {
    tx: mpsc::Sender<Request>,
    connected: watch::Receiver<bool>,
    info: Arc<DeviceInfo>,
}

impl AgentLink {
    /// Opens the outbox and starts the link; it connects (and reconnects) in
    /// the background until `cancel` fires. On cancellation it publishes
    /// `offline` presence and disconnects cleanly.
    pub async fn start(
        config: AgentLinkConfig,
        cancel: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<Downlink>, JoinHandle<()>), LinkError> {
        let dir = config.state_dir.join("link").join("outbox");
        let limit = config.outbox_limit;
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&dir, limit))
            .await
            .map_err(|_| LinkError::Stopped)??;
        let host_root = config.host_root.clone();
        let labels = config.labels.clone();
        let info = tokio::task::spawn_blocking(move || info::device_info(labels, &host_root))
            .await
            .map_err(|_| LinkError::Stopped)?;

        let device = config.device.clone();
        let online_topic = config.scheme.render(&Topic::Online(device.clone()));
        let offline =
            encode(&Presence::offline(device.clone())).map_err(|source| LinkError::Encode {
                what: "presence",
                source,
            })?;
        let mut options = MqttOptions::new(
            device.as_str(),
            config.broker.host.clone(),
            config.broker.port,
        );
        options
            .set_credentials(device.as_str(), config.token.clone())
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_last_will(LastWill::new(online_topic, offline, QoS::AtLeastOnce, true));
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::channel(64);
        let (downlink_tx, downlink_rx) = mpsc::channel(config.downlink_capacity.max(1));
        let (connected_tx, connected) = watch::channel(false);
        let info = Arc::new(info);
        let actor = Actor {
            scheme: config.scheme,
            device,
            backoff: config.backoff,
            client,
            downlink: downlink_tx,
            connected: connected_tx,
            outbox: Arc::new(Mutex::new(outbox)),
            info: info.clone(),
            info_acked: false,
            session: Session::default(),
        };
        let task = tokio::spawn(actor.run(eventloop, rx, cancel));
        Ok((
            Self {
                tx,
                connected,
                info,
            },
            downlink_rx,
            task,
        ))
    }

    /// Queues a status report (QoS 1, retained). When this returns Ok the
    /// report is on disk; it is sent when the broker is reachable.
    pub async fn report_status(&self, report: StatusReport) -> Result<(), LinkError> {
        let (done, stored) = oneshot::channel();
        self.tx
            .send(Request::Status(report, done))
            .await
            .map_err(|_| LinkError::Stopped)?;
        stored.await.map_err(|_| LinkError::Stopped)?
    }

    /// Sends telemetry (QoS 0) if connected; returns false when it was
    /// dropped (offline, or the link is busy).
    pub fn send_telemetry(&self, telemetry: Telemetry) -> bool {
        *self.connected.borrow() && self.tx.try_send(Request::Telemetry(telemetry)).is_ok()
    }

    /// Whether the link is connected now; watch it for changes.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// What the first status after start reports about the device.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }
}

/// A QoS 1 publish waiting for its packet id / acknowledgement.
#[derive(Debug, Clone, Copy)]
enum Tracked {
    Presence,
    Status { seq: u64, with_info: bool },
}

/// Bookkeeping of one MQTT session (reset on every connection).
#[derive(Default)]
struct Session {
    connected: bool,
    awaiting_pkid: VecDeque<Tracked>,
    inflight: HashMap<u16, Tracked>,
    status_in_flight: bool,
}

struct Actor {
    scheme: TopicScheme,
    device: DeviceId,
    backoff: Backoff,
    client: AsyncClient,
    downlink: mpsc::Sender<Downlink>,
    connected: watch::Sender<bool>,
    outbox: Arc<Mutex<Outbox>>,
    info: Arc<DeviceInfo>,
    info_acked: bool,
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
                        _ = cancel.cancelled() => break None,
                        ev = &mut poll => break Some(ev),
                        req = requests.recv(), if requests_open => match req {
                            Some(req) => self.on_request(req).await,
                            None => requests_open = false,
                        },
                    }
                }
            };
            let Some(event) = event else {
                self.shutdown(&mut eventloop).await;
                return;
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

    /// Announces `offline` and disconnects cleanly (no last will then).
    async fn shutdown(&mut self, eventloop: &mut EventLoop) {
        if !self.session.connected {
            return;
        }
        let topic = self.scheme.render(&Topic::Online(self.device.clone()));
        if let Ok(offline) = encode(&Presence::offline(self.device.clone())) {
            let _ = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, offline);
        }
        let _ = self.client.try_disconnect();
        let drain = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        self.connected.send_replace(false);
        info!(device = %self.device, "agent MQTT link stopped");
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Status(report, done) => {
                let stored = self.store_status(report).await;
                let _ = done.send(stored);
                self.send_next_status();
            }
            Request::Telemetry(mut t) => {
                if !self.session.connected {
                    return;
                }
                t.device.get_or_insert_with(|| self.device.clone());
                match encode(&t) {
                    Ok(bytes) => {
                        let topic = self.scheme.render(&Topic::Telemetry(self.device.clone()));
                        if let Err(e) =
                            self.client
                                .try_publish(topic, QoS::AtMostOnce, false, bytes)
                        {
                            debug!(error = %e, "telemetry dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode telemetry"),
                }
            }
        }
    }

    async fn store_status(&mut self, report: StatusReport) -> Result<(), LinkError> {
        let bytes = encode(&report).map_err(|source| LinkError::Encode {
            what: "status",
            source,
        })?;
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || -> Result<u64, OutboxError> {
            let mut o = outbox.lock().unwrap_or_else(|p| p.into_inner());
            o.push(bytes)
        })
        .await
        .map_err(|_| LinkError::Stopped)??;
        Ok(())
    }

    /// Sends the oldest outbox entry if connected and none is in flight.
    fn send_next_status(&mut self) {
        if !self.session.connected || self.session.status_in_flight {
            return;
        }
        loop {
            let front = {
                let o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
                o.front().map(|(seq, p)| (seq, p.to_vec()))
            };
            let Some((seq, payload)) = front else { return };
            let (payload, with_info) = if self.info_acked {
                (payload, false)
            } else {
                match decode::<StatusReport>(&payload) {
                    Ok(mut report) => {
                        let had = report.info.is_some();
                        if !had {
                            report.info = Some((*self.info).clone());
                        }
                        match encode(&report) {
                            Ok(b) => (b, true),
                            Err(_) => (payload, had),
                        }
                    }
                    Err(e) => {
                        warn!(seq, error = %e, "undecodable status in the outbox removed");
                        self.outbox
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(seq);
                        continue;
                    }
                }
            };
            let topic = self.scheme.render(&Topic::Status(self.device.clone()));
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, payload)
            {
                Ok(()) => {
                    self.session.status_in_flight = true;
                    self.session
                        .awaiting_pkid
                        .push_back(Tracked::Status { seq, with_info });
                }
                Err(e) => debug!(error = %e, "status publish queue full; retrying later"),
            }
            return;
        }
    }

    fn on_disconnect(&mut self, e: &ConnectionError) {
        if self.session.connected {
            warn!(device = %self.device, error = %e, "MQTT connection lost; reconnecting");
        } else {
            debug!(device = %self.device, error = %e, "MQTT connection attempt failed");
        }
        self.session = Session::default();
        self.connected.send_replace(false);
    }

    async fn on_event(&mut self, event: Event, cancel: &CancellationToken) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                info!(device = %self.device, "agent MQTT link connected");
                self.session = Session {
                    connected: true,
                    ..Session::default()
                };
                let topic = self.scheme.render(&Topic::Online(self.device.clone()));
                match encode(&Presence::online(self.device.clone())) {
                    Ok(online) => {
                        if self
                            .client
                            .try_publish(topic, QoS::AtLeastOnce, true, online)
                            .is_ok()
                        {
                            self.session.awaiting_pkid.push_back(Tracked::Presence);
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode presence"),
                }
                let filters = self
                    .scheme
                    .device_subscriptions(&self.device)
                    .into_iter()
                    .map(|sub| {
                        let q = match sub.qos {
                            fleet_protocol::topic::Qos::AtMostOnce => QoS::AtMostOnce,
                            fleet_protocol::topic::Qos::AtLeastOnce => QoS::AtLeastOnce,
                        };
                        SubscribeFilter::new(sub.filter, q)
                    });
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    warn!(error = %e, "cannot queue the subscription");
                }
                self.connected.send_replace(true);
                self.send_next_status();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(t) = self.session.awaiting_pkid.pop_front() {
                    self.session.inflight.insert(pkid, t);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Tracked::Status { seq, with_info }) =
                    self.session.inflight.remove(&ack.pkid)
                {
                    let outbox = self.outbox.clone();
                    let removed = tokio::task::spawn_blocking(move || {
                        outbox.lock().unwrap_or_else(|p| p.into_inner()).remove(seq)
                    })
                    .await;
                    if removed.is_err() {
                        warn!(seq, "outbox removal task failed");
                    }
                    self.info_acked |= with_info;
                    self.session.status_in_flight = false;
                    self.send_next_status();
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
                if p.payload.is_empty() {
                    return;
                }
                let msg = match self.scheme.parse(&p.topic) {
                    Ok(Topic::Desired(d)) if d == self.device => {
                        Downlink::Desired(p.payload.to_vec())
                    }
                    Ok(Topic::Cmd(d)) if d == self.device => Downlink::Command(p.payload.to_vec()),
                    _ => {
                        warn!(topic = %p.topic, "message on an unexpected topic dropped");
                        return;
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = self.downlink.send(msg) => {
                        if r.is_err() {
                            debug!("downlink receiver dropped; message discarded");
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
