//! The agent's side of the MQTT link, a [`Handler`] of the shared event loop.
//!
//! On every connection it
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::id::DeviceId;
use fleet_protocol::message::{DeviceInfo, Presence, StatusReport, Telemetry, decode, encode};
use fleet_protocol::session::SessionConfig;
use fleet_protocol::topic::{Topic, TopicScheme};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::event_loop::{self, Handler, LinkCore, LinkOptions};
use super::info;
use super::outbox::{Outbox, OutboxError};
use super::{BrokerAddr, BrokerAddrError};

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
    /// TLS (with the device's certificate) for an `mqtts://` broker.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Newer TLS configurations (renewed certificates), for the next
    /// connection.
    pub tls_updates: Option<tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>>,
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
            tls: None,
            tls_updates: None,
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
        let offline =
            encode(&Presence::offline(device.clone())).map_err(|source| LinkError::Encode {
                what: "presence",
                source,
            })?;
        let options = LinkOptions {
            side: "agent",
            broker: config.broker,
            client_id: device.as_str().to_owned(),
            user: device.as_str().to_owned(),
            password: config.token,
            keep_alive: config.keep_alive,
            backoff: config.backoff,
            subscriptions: config.scheme.device_subscriptions(&device),
            last_will: Some((config.scheme.last_will(&device), offline)),
            scheme: config.scheme.clone(),
            // One status is in flight at a time; a newer presence replaces
            // an unacknowledged older one.
            session: SessionConfig {
                max_in_flight: 64,
                supersede_retained: true,
            },
            tls: config.tls,
            tls_updates: config.tls_updates,
        };
        let (tx, rx) = mpsc::channel(64);
        let (downlink_tx, downlink_rx) = mpsc::channel(config.downlink_capacity.max(1));
        let info = Arc::new(info);
        let handler = Device {
            scheme: config.scheme,
            device,
            downlink: downlink_tx,
            outbox: Arc::new(Mutex::new(outbox)),
            info: info.clone(),
            info_acked: false,
            status_in_flight: false,
        };
        let (connected, task) = event_loop::start(options, handler, rx, cancel);
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

/// What a QoS 1 publish of the agent is, for when it is delivered.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Presence,
    Status { seq: u64, with_info: bool },
}

/// The agent's handler of the shared event loop.
struct Device {
    scheme: TopicScheme,
    device: DeviceId,
    downlink: mpsc::Sender<Downlink>,
    outbox: Arc<Mutex<Outbox>>,
    info: Arc<DeviceInfo>,
    info_acked: bool,
    /// The outbox front is in the session (it stays there across
    /// reconnects until the broker acknowledges it).
    status_in_flight: bool,
}

impl Handler for Device {
    type Tag = Tag;
    type Request = Request;

    fn connected(&mut self, core: &mut LinkCore<Tag>) {
        info!(device = %self.device, "agent MQTT link connected");
        self.publish_presence(core, true);
        self.send_next_status(core);
    }

    async fn request(&mut self, core: &mut LinkCore<Tag>, req: Request) {
        match req {
            Request::Status(report, done) => {
                let stored = self.store_status(report).await;
                let _ = done.send(stored);
                self.send_next_status(core);
            }
            Request::Telemetry(mut t) => {
                if !core.is_connected() {
                    return;
                }
                t.device.get_or_insert_with(|| self.device.clone());
                match encode(&t) {
                    Ok(bytes) => {
                        if !core.publish_now(&Topic::Telemetry(self.device.clone()), bytes) {
                            debug!("telemetry dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot encode telemetry"),
                }
            }
        }
    }

    async fn delivered(&mut self, core: &mut LinkCore<Tag>, tag: Tag) {
        let Tag::Status { seq, with_info } = tag else {
            return;
        };
        let outbox = self.outbox.clone();
        let removed = tokio::task::spawn_blocking(move || {
            outbox.lock().unwrap_or_else(|p| p.into_inner()).remove(seq)
        })
        .await;
        if removed.is_err() {
            warn!(seq, "outbox removal task failed");
        }
        self.info_acked |= with_info;
        self.status_in_flight = false;
        self.send_next_status(core);
    }

    async fn message(&mut self, topic: &str, payload: &[u8], cancel: &CancellationToken) {
        if payload.is_empty() {
            return;
        }
        let msg = match self.scheme.parse(topic) {
            Ok(Topic::Desired(d)) if d == self.device => Downlink::Desired(payload.to_vec()),
            Ok(Topic::Cmd(d)) if d == self.device => Downlink::Command(payload.to_vec()),
            _ => {
                warn!(%topic, "message on an unexpected topic dropped");
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

    /// Announces `offline` before the clean disconnect (no last will then).
    fn stopping(&mut self, core: &mut LinkCore<Tag>) {
        self.publish_presence(core, false);
    }
}

impl Device {
    fn publish_presence(&self, core: &mut LinkCore<Tag>, online: bool) {
        let presence = if online {
            Presence::online(self.device.clone())
        } else {
            Presence::offline(self.device.clone())
        };
        match encode(&presence) {
            Ok(bytes) => {
                if let Err(e) =
                    core.publish(Topic::Online(self.device.clone()), bytes, Tag::Presence)
                {
                    warn!(error = %e, "cannot publish presence");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode presence"),
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

    /// Publishes the oldest outbox entry if connected and none is in flight.
    fn send_next_status(&mut self, core: &mut LinkCore<Tag>) {
        if !core.is_connected() || self.status_in_flight {
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
            let topic = Topic::Status(self.device.clone());
            match core.publish(topic, payload, Tag::Status { seq, with_info }) {
                Ok(_) => self.status_in_flight = true,
                Err(e) => warn!(seq, error = %e, "cannot publish status"),
            }
            return;
        }
    }
}
