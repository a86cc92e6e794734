//! The MQTT session of one link, without I/O (in the manner of rumqttc's
//! `state.rs`): which QoS 1 messages wait for the broker, which packet id each
//! one went out with, what an acknowledgement settles, and what must be sent
//! again after a reconnect.
//!
//! The event loop (the agent crate's `link` feature) drives it: it asks
//! [`Session::next_to_send`] what to hand to the MQTT client, reports with
//! [`Session::handed`] that it did, reports each packet id the client gave a
//! publish with [`Session::packet_id`] (in the order the publishes were
//! handed), each `PUBACK` with [`Session::acked`], and each connection and
//! loss with [`Session::connected`] / [`Session::disconnected`].
//!
//! Links use clean sessions: the broker forgets unacknowledged publishes when
//! the connection drops, so every message not yet acknowledged is sent again,
//! oldest first, after the next `CONNACK`. For a retained topic only the
//! newest message matters to a late subscriber; with
//! [`SessionConfig::supersede_retained`] a newer message on the same retained
//! topic replaces an older one that was not acknowledged yet.
//!
//! Packet ids are chosen by the MQTT client (rumqttc numbers publishes
//! itself); the session binds them and holds the rules: id 0 is never a QoS 1
//! id, and an id is never bound to two messages waiting for their
//! acknowledgement at once (a reported id that is in flight is refused and the
//! earlier binding kept). Ids are reused freely once acknowledged, so a client
//! that wraps around (skipping 0) is fine. QoS 0 messages (telemetry) never
//! enter the session. No time is needed: keep-alive belongs to the client and
//! MQTT 3.1.1 resends only on reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::topic::{Qos, Topic, TopicKind};

/// A packet id as it appears on the wire (never 0 for QoS 1).
pub type PacketId = u16;

/// The session's own number for a message, increasing in the order messages
/// were queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

impl MessageId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("a {kind} message is QoS 0: it is published directly, not kept in the session")]
    NotAcknowledged { kind: TopicKind },
    #[error("packet id 0 is not a valid QoS 1 packet id")]
    ZeroPacketId,
    #[error("packet id {pkid} is already bound to {bound}, which waits for its acknowledgement")]
    PacketIdInFlight { pkid: PacketId, bound: MessageId },
    #[error("the client reported packet id {pkid} but no publish was handed to it")]
    NothingHanded { pkid: PacketId },
    #[error("{id} is not waiting to be sent")]
    NotQueued { id: MessageId },
}

/// How a session behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most messages handed to the client and not yet acknowledged.
    pub max_in_flight: usize,
    /// A newer message on a retained topic replaces an unacknowledged older
    /// one on the same topic.
    pub supersede_retained: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            supersede_retained: true,
        }
    }
}

/// What to publish now (QoS and retain come from the topic's kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: MessageId,
    pub topic: Topic,
    pub payload: Vec<u8>,
}

/// The result of [`Session::enqueue`].
#[derive(Debug, PartialEq, Eq)]
pub struct Enqueued<T> {
    pub id: MessageId,
    /// The older message on the same retained topic this one replaced.
    pub superseded: Option<(MessageId, T)>,
}

/// What an acknowledgement settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack<T> {
    /// The message is delivered: it leaves the session.
    Delivered { id: MessageId, tag: T },
    /// The packet id belonged to a message a newer one had superseded.
    Superseded { id: MessageId },
    /// No message waits on that packet id (e.g. one from a previous
    /// connection); nothing changes.
    Unsolicited { pkid: PacketId },
}

#[derive(Debug)]
struct Entry<T> {
    topic: Topic,
    payload: Vec<u8>,
    tag: T,
}

/// The QoS 1 bookkeeping of one link. `T` is what the caller wants back when
/// a message is delivered (e.g. the outbox sequence number of a status).
#[derive(Debug)]
pub struct Session<T> {
    config: SessionConfig,
    next_id: u64,
    connected: bool,
    /// Every message not yet acknowledged, oldest first.
    pending: BTreeMap<MessageId, Entry<T>>,
    /// Pending messages not handed to the client on this connection.
    queued: BTreeSet<MessageId>,
    /// Handed to the client, waiting for their packet id, in order.
    handed: VecDeque<MessageId>,
    /// Sent with a packet id, waiting for the broker's acknowledgement.
    in_flight: HashMap<PacketId, MessageId>,
    /// The newest pending message of each retained topic.
    retained: HashMap<Topic, MessageId>,
}

impl<T> Session<T> {
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            next_id: 0,
            connected: false,
            pending: BTreeMap::new(),
            queued: BTreeSet::new(),
            handed: VecDeque::new(),
            in_flight: HashMap::new(),
            retained: HashMap::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Messages not yet acknowledged.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether `id` still waits for its acknowledgement.
    pub fn is_pending(&self, id: MessageId) -> bool {
        self.pending.contains_key(&id)
    }

    /// Messages handed to the client and not yet acknowledged on this
    /// connection (superseded ones included: their packet ids are still
    /// taken).
    pub fn in_flight_len(&self) -> usize {
        self.handed.len() + self.in_flight.len()
    }

    /// The packet ids waiting for an acknowledgement.
    pub fn in_flight_ids(&self) -> impl Iterator<Item = PacketId> + '_ {
        self.in_flight.keys().copied()
    }

    /// Keeps a QoS 1 message until the broker acknowledges it.
    pub fn enqueue(
        &mut self,
        topic: Topic,
        payload: Vec<u8>,
        tag: T,
    ) -> Result<Enqueued<T>, SessionError> {
        let delivery = topic.delivery();
        if delivery.qos == Qos::AtMostOnce {
            return Err(SessionError::NotAcknowledged { kind: topic.kind() });
        }
        let id = MessageId(self.next_id);
        self.next_id += 1;
        let mut superseded = None;
        if self.config.supersede_retained
            && delivery.retain
            && let Some(old) = self.retained.insert(topic.clone(), id)
        {
            self.queued.remove(&old);
            superseded = self.pending.remove(&old).map(|e| (old, e.tag));
        }
        self.pending.insert(
            id,
            Entry {
                topic,
                payload,
                tag,
            },
        );
        self.queued.insert(id);
        Ok(Enqueued { id, superseded })
    }

    /// The oldest message to hand to the client now, if connected and below
    /// [`SessionConfig::max_in_flight`]. It stays queued until [`Self::handed`].
    pub fn next_to_send(&self) -> Option<Outgoing> {
        if !self.connected || self.in_flight_len() >= self.config.max_in_flight {
            return None;
        }
        let id = *self.queued.first()?;
        let entry = self.pending.get(&id)?;
        Some(Outgoing {
            id,
            topic: entry.topic.clone(),
            payload: entry.payload.clone(),
        })
    }

    /// The client took `id`; its packet id comes with [`Self::packet_id`].
    pub fn handed(&mut self, id: MessageId) -> Result<(), SessionError> {
        if !self.queued.remove(&id) {
            return Err(SessionError::NotQueued { id });
        }
        self.handed.push_back(id);
        Ok(())
    }

    /// The client sent the oldest handed publish with `pkid`.
    pub fn packet_id(&mut self, pkid: PacketId) -> Result<MessageId, SessionError> {
        if pkid == 0 {
            return Err(SessionError::ZeroPacketId);
        }
        if let Some(&bound) = self.in_flight.get(&pkid) {
            return Err(SessionError::PacketIdInFlight { pkid, bound });
        }
        let id = self
            .handed
            .pop_front()
            .ok_or(SessionError::NothingHanded { pkid })?;
        self.in_flight.insert(pkid, id);
        Ok(id)
    }

    /// The broker acknowledged `pkid`.
    pub fn acked(&mut self, pkid: PacketId) -> Ack<T> {
        let Some(id) = self.in_flight.remove(&pkid) else {
            return Ack::Unsolicited { pkid };
        };
        match self.pending.remove(&id) {
            Some(entry) => {
                if self.retained.get(&entry.topic) == Some(&id) {
                    self.retained.remove(&entry.topic);
                }
                Ack::Delivered { id, tag: entry.tag }
            }
            None => Ack::Superseded { id },
        }
    }

    /// A new connection (`CONNACK`, clean session): every pending message is
    /// sent again, oldest first.
    pub fn connected(&mut self) {
        self.reset();
        self.connected = true;
    }

    /// The connection is gone: nothing is in flight any more.
    pub fn disconnected(&mut self) {
        self.reset();
        self.connected = false;
    }

    fn reset(&mut self) {
        self.handed.clear();
        self.in_flight.clear();
        self.queued = self.pending.keys().copied().collect();
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
