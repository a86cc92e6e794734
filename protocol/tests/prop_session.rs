#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the pure MQTT session: whatever the order of publishes,
//! packet ids, acknowledgements and reconnects, an in-flight packet id is
//! never bound twice, 0 is never bound, ids wrap (skipping 0), every message
//! is delivered at most once, and once the connection stays up everything
//! not superseded is delivered, oldest first.

use std::collections::{BTreeSet, HashMap};

use fleet_protocol::session::{Ack, MessageId, PacketId, Session, SessionConfig};
use fleet_protocol::{DeviceId, Topic, TopicKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        kind: TopicKind,
        device: u8,
    },
    /// The client sends what the session offers.
    Send,
    /// The broker acknowledges the n-th in-flight packet id (any order).
    Ack(usize),
    Disconnect,
    Connect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::sample::select(vec![TopicKind::Desired, TopicKind::Status, TopicKind::Cmd]), 0u8..3)
            .prop_map(|(kind, device)| Op::Enqueue { kind, device }),
        4 => Just(Op::Send),
        3 => (0usize..8).prop_map(Op::Ack),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
    ]
}

/// A client that numbers publishes as MQTT clients do: the next id after the
/// last, wrapping at `max` and skipping 0 and ids still in flight.
struct Client {
    last: PacketId,
    max: PacketId,
    in_flight: BTreeSet<PacketId>,
}

impl Client {
    fn next(&mut self) -> PacketId {
        loop {
            self.last = if self.last >= self.max {
                1
            } else {
                self.last + 1
            };
            if !self.in_flight.contains(&self.last) {
                return self.last;
            }
        }
    }
}

fn device(n: u8) -> DeviceId {
    DeviceId::new(format!("dev-{n}")).unwrap()
}

proptest! {
    #[test]
    fn packet_ids_and_deliveries_keep_their_invariants(
        ops in prop::collection::vec(op(), 0..200),
        supersede in any::<bool>(),
        max_in_flight in 1usize..6,
        max_pkid in 6u16..12,
    ) {
        let mut s: Session<u64> = Session::new(SessionConfig { max_in_flight, supersede_retained: supersede });
        let mut client = Client { last: 0, max: max_pkid, in_flight: BTreeSet::new() };
        let mut wire: HashMap<PacketId, MessageId> = HashMap::new();
        let mut live: BTreeSet<MessageId> = BTreeSet::new();
        let mut delivered: BTreeSet<MessageId> = BTreeSet::new();
        let mut tags = 0u64;
        for op in ops {
            match op {
                Op::Enqueue { kind, device: d } => {
                    tags += 1;
                    let e = s.enqueue(Topic::new(kind, device(d)), vec![d], tags).unwrap();
                    if let Some((old, _)) = e.superseded {
                        prop_assert!(supersede, "superseded without supersede_retained");
                        prop_assert!(live.remove(&old));
                    }
                    live.insert(e.id);
                }
                Op::Send => {
                    if let Some(out) = s.next_to_send() {
                        prop_assert!(s.is_connected());
                        prop_assert!(live.contains(&out.id));
                        prop_assert!(s.in_flight_len() < max_in_flight);
                        s.handed(out.id).unwrap();
                        let pkid = client.next();
                        prop_assert_ne!(pkid, 0);
                        prop_assert_eq!(s.packet_id(pkid).unwrap(), out.id);
                        // An id in flight is refused, the binding kept.
                        prop_assert!(s.packet_id(pkid).is_err());
                        client.in_flight.insert(pkid);
                        wire.insert(pkid, out.id);
                    }
                }
                Op::Ack(n) => {
                    let Some(&pkid) = client.in_flight.iter().nth(n) else { continue };
                    client.in_flight.remove(&pkid);
                    let id = wire.remove(&pkid).unwrap();
                    match s.acked(pkid) {
                        Ack::Delivered { id: got, .. } => {
                            prop_assert_eq!(got, id);
                            prop_assert!(live.remove(&id), "delivered twice or never queued");
                            prop_assert!(delivered.insert(id));
                        }
                        Ack::Superseded { id: got } => {
                            prop_assert_eq!(got, id);
                            prop_assert!(!live.contains(&id));
                        }
                        Ack::Unsolicited { .. } => prop_assert!(false, "a bound id was forgotten"),
                    }
                }
                Op::Disconnect | Op::Connect => {
                    if matches!(op, Op::Connect) { s.connected() } else { s.disconnected() }
                    client.in_flight.clear();
                    wire.clear();
                }
            }
            // The session's in-flight ids are exactly the client's, none is 0.
            let ids: BTreeSet<PacketId> = s.in_flight_ids().collect();
            prop_assert_eq!(&ids, &client.in_flight);
            prop_assert!(!ids.contains(&0));
            prop_assert_eq!(s.pending_len(), live.len());
        }
        // Connected for good, with a broker acking everything: all that is
        // live is delivered, oldest first.
        s.connected();
        client.in_flight.clear();
        let mut order = Vec::new();
        while let Some(out) = s.next_to_send() {
            s.handed(out.id).unwrap();
            let pkid = client.next();
            s.packet_id(pkid).unwrap();
            match s.acked(pkid) {
                Ack::Delivered { id, .. } => order.push(id),
                other => prop_assert!(false, "{other:?}"),
            }
        }
        prop_assert_eq!(order, live.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn ids_wrap_around_skipping_zero_and_are_reused_once_acked(rounds in 1usize..400) {
        let mut s: Session<()> = Session::new(SessionConfig::default());
        s.connected();
        let mut pkid: PacketId = u16::MAX - 3;
        for _ in 0..rounds {
            s.enqueue(Topic::Cmd(device(0)), vec![], ()).unwrap();
            let out = s.next_to_send().unwrap();
            s.handed(out.id).unwrap();
            pkid = pkid.checked_add(1).unwrap_or(1);
            prop_assert_eq!(s.packet_id(pkid).unwrap(), out.id);
            let delivered = matches!(s.acked(pkid), Ack::Delivered { .. });
            prop_assert!(delivered);
        }
        prop_assert!(s.packet_id(0).is_err());
    }
}
