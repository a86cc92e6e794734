//! The one MQTT event loop, shared by the agent and the control plane.
//!
//! One task owns the rumqttc event loop and a [`Session`] (the pure QoS 1
//! bookkeeping in `fleet-protocol`). It reconnects with [`Backoff`], and on
//! every `CONNACK` subscribes to the side's topics and sends again whatever
//! the broker has not acknowledged. Every publish and subscription takes its
//! topic string, QoS and retain flag from [`TopicScheme`]. What differs
//! between the two sides (what a request does, what an incoming message
//! becomes, what to do when a message is delivered) is a [`Handler`].

use std::future::Future;
use std::time::Duration;

use fleet_protocol::broker::BrokerAddr;
use fleet_protocol::session::{Ack, Enqueued, Session, SessionConfig, SessionError};
use fleet_protocol::topic::{Publication, Qos, Subscription, Topic, TopicScheme};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    SubscribeFilter,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::Backoff;

/// Largest packet a link sends or accepts.
pub const MAX_PACKET_BYTES: usize = 2 * 1024 * 1024;

/// How long a stopping link waits for its last messages and DISCONNECT.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How one side connects.
#[derive(Clone)]
pub struct LinkOptions {
    /// Which side this is, for the logs (`agent`, `server`).
    pub side: &'static str,
    pub broker: BrokerAddr,
    pub client_id: String,
    pub user: String,
    pub password: String,
    pub keep_alive: Duration,
    pub backoff: Backoff,
    pub scheme: TopicScheme,
    /// Subscribed to on every connection.
    pub subscriptions: Vec<Subscription>,
    /// The last will and its payload.
    pub last_will: Option<(Publication, Vec<u8>)>,
    pub session: SessionConfig,
    /// The TLS configuration an `mqtts://` broker needs (see
    /// [`super::tls::client_config`]); [`start`] refuses to connect to one
    /// without it. Unused with `mqtt://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Newer TLS configurations (a renewed device certificate): taken for
    /// the next connection; the connection up stays as it is.
    pub tls_updates: Option<watch::Receiver<std::sync::Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("side", &self.side)
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("password", &"<redacted>")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// What one side of the link does with requests, messages and deliveries.
/// Each method runs on the link task, between two polls of the client.
pub trait Handler: Send + 'static {
    /// What the caller gets back when a QoS 1 message is delivered.
    type Tag: Send + 'static;
    /// What the side's handle sends to the link task.
    type Request: Send + 'static;

    /// A new connection is up (subscriptions are already queued).
    fn connected(&mut self, core: &mut LinkCore<Self::Tag>);

    /// A request from the side's handle.
    fn request(
        &mut self,
        core: &mut LinkCore<Self::Tag>,
        request: Self::Request,
    ) -> impl Future<Output = ()> + Send;

    /// The broker acknowledged a message published with `tag`.
    fn delivered(
        &mut self,
        core: &mut LinkCore<Self::Tag>,
        tag: Self::Tag,
    ) -> impl Future<Output = ()> + Send;

    /// A message arrived on `topic` (a subscribed one).
    fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        cancel: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// The link is stopping while connected: the last chance to publish.
    fn stopping(&mut self, _core: &mut LinkCore<Self::Tag>) {}
}

/// The connection as a handler sees it: publish through it.
pub struct LinkCore<T> {
    side: &'static str,
    scheme: TopicScheme,
    client: AsyncClient,
    session: Session<T>,
    subscriptions: Vec<Subscription>,
    connected: watch::Sender<bool>,
}

impl<T> LinkCore<T> {
    pub fn scheme(&self) -> &TopicScheme {
        &self.scheme
    }

    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    pub fn session(&self) -> &Session<T> {
        &self.session
    }

    /// Publishes a QoS 1 message: kept (and sent again after reconnects)
    /// until the broker acknowledges it; then [`Handler::delivered`] gets
    /// `tag`.
    pub fn publish(
        &mut self,
        topic: Topic,
        payload: Vec<u8>,
        tag: T,
    ) -> Result<Enqueued<T>, SessionError> {
        let enqueued = self.session.enqueue(topic, payload, tag)?;
        self.flush();
        Ok(enqueued)
    }

    /// Publishes a QoS 0 message now if connected; false when it was dropped
    /// (offline, the client's queue full, or a QoS 1 topic).
    pub fn publish_now(&mut self, topic: &Topic, payload: Vec<u8>) -> bool {
        let p = self.scheme.publication(topic);
        if !self.is_connected() || p.qos != Qos::AtMostOnce {
            return false;
        }
        match self
            .client
            .try_publish(p.topic, qos(p.qos), p.retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                debug!(side = self.side, error = %e, "QoS 0 message dropped");
                false
            }
        }
    }

    /// Hands what the session has to send to the client, while it takes it.
    fn flush(&mut self) {
        while let Some(out) = self.session.next_to_send() {
            let p = self.scheme.publication(&out.topic);
            if let Err(e) = self
                .client
                .try_publish(p.topic, qos(p.qos), p.retain, out.payload)
            {
                debug!(side = self.side, error = %e, "publish queue full; retrying later");
                return;
            }
            if let Err(e) = self.session.handed(out.id) {
                warn!(side = self.side, error = %e, "session out of step");
                return;
            }
        }
    }

    fn on_connack(&mut self) {
        info!(side = self.side, "MQTT link connected");
        self.session.connected();
        let filters = self
            .subscriptions
            .iter()
            .map(|s| SubscribeFilter::new(s.filter.clone(), qos(s.qos)));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            warn!(side = self.side, error = %e, "cannot queue the subscription");
        }
    }

    fn on_disconnect(&mut self, e: &ConnectionError) {
        if self.session.is_connected() {
            warn!(side = self.side, error = %e, "MQTT connection lost; reconnecting");
        } else {
            debug!(side = self.side, error = %e, "MQTT connection attempt failed");
        }
        self.session.disconnected();
        self.connected.send_replace(false);
    }
}

fn qos(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
    }
}

/// Starts the link task: it connects (and reconnects) until `cancel` fires.
/// Returns whether it is connected (watch it) and the task.
pub fn start<H: Handler>(
    options: LinkOptions,
    handler: H,
    requests: mpsc::Receiver<H::Request>,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let mut mqtt = MqttOptions::new(
        options.client_id.clone(),
        options.broker.host.clone(),
        options.broker.port,
    );
    mqtt.set_credentials(options.user.clone(), options.password.clone())
        .set_keep_alive(options.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let (true, Some(tls)) = (options.broker.tls, &options.tls) {
        mqtt.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    if let Some((will, payload)) = &options.last_will {
        mqtt.set_last_will(LastWill::new(
            will.topic.clone(),
            payload.clone(),
            qos(will.qos),
            will.retain,
        ));
    }
    let capacity = (2 * options.session.max_in_flight).max(64);
    let (client, eventloop) = AsyncClient::new(mqtt, capacity);
    let (connected_tx, connected) = watch::channel(false);
    let core = LinkCore {
        side: options.side,
        scheme: options.scheme,
        client,
        session: Session::new(options.session),
        subscriptions: options.subscriptions,
        connected: connected_tx,
    };
    let tls_updates = options.tls_updates.filter(|_| options.broker.tls);
    let task = tokio::spawn(run(
        core,
        eventloop,
        handler,
        requests,
        options.backoff,
        tls_updates,
        cancel,
    ));
    (connected, task)
}

async fn run<H: Handler>(
    mut core: LinkCore<H::Tag>,
    mut eventloop: EventLoop,
    mut handler: H,
    mut requests: mpsc::Receiver<H::Request>,
    backoff: Backoff,
    mut tls_updates: Option<watch::Receiver<std::sync::Arc<rustls::ClientConfig>>>,
    cancel: CancellationToken,
) {
    let mut delay = backoff.first();
    let mut requests_open = true;
    loop {
        if let Some(updates) = &mut tls_updates
            && updates.has_changed().unwrap_or(false)
        {
            let tls = updates.borrow_and_update().clone();
            eventloop
                .mqtt_options
                .set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls),
                ));
            tracing::debug!("a new TLS configuration for the next connection");
        }
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
                        Some(req) => handler.request(&mut core, req).await,
                        None => requests_open = false,
                    },
                }
            }
        };
        match event {
            None => {
                stop(&mut core, &mut handler, &mut eventloop).await;
                return;
            }
            Some(Ok(event)) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    delay = backoff.first();
                }
                on_event(&mut core, &mut handler, event, &cancel).await;
                core.flush();
            }
            Some(Err(e)) => {
                core.on_disconnect(&e);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = backoff.after(delay);
            }
        }
    }
}

async fn on_event<H: Handler>(
    core: &mut LinkCore<H::Tag>,
    handler: &mut H,
    event: Event,
    cancel: &CancellationToken,
) {
    match event {
        Event::Incoming(Packet::ConnAck(_)) => {
            core.on_connack();
            handler.connected(core);
            core.connected.send_replace(true);
        }
        Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
            if let Err(e) = core.session.packet_id(pkid) {
                warn!(side = core.side, error = %e, "packet id not bound");
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => match core.session.acked(ack.pkid) {
            Ack::Delivered { tag, .. } => handler.delivered(core, tag).await,
            Ack::Superseded { id } => debug!(side = core.side, %id, "superseded message acked"),
            Ack::Unsolicited { pkid } => debug!(side = core.side, pkid, "unsolicited PUBACK"),
        },
        Event::Incoming(Packet::SubAck(ack))
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
        {
            warn!(side = core.side, codes = ?ack.return_codes, "broker refused a subscription");
        }
        Event::Incoming(Packet::Publish(p)) => handler.message(&p.topic, &p.payload, cancel).await,
        _ => {}
    }
}

/// Lets the handler publish its last words, then disconnects cleanly (so no
/// last will fires) and waits a little for the DISCONNECT to go out.
async fn stop<H: Handler>(core: &mut LinkCore<H::Tag>, handler: &mut H, eventloop: &mut EventLoop) {
    if !core.is_connected() {
        return;
    }
    handler.stopping(core);
    let _ = core.client.try_disconnect();
    let drain = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(STOP_GRACE, drain).await;
    core.session.disconnected();
    core.connected.send_replace(false);
    info!(side = core.side, "MQTT link stopped");
}
