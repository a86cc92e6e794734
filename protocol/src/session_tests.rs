use super::*;
use crate::id::DeviceId;

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn connected(config: SessionConfig) -> Session<&'static str> {
    let mut s = Session::new(config);
    s.connected();
    s
}

/// Hands the next message to the "client" and returns it.
fn send(s: &mut Session<&'static str>) -> Outgoing {
    let out = s.next_to_send().expect("something to send");
    s.handed(out.id).unwrap();
    out
}

#[test]
fn a_message_is_sent_once_bound_to_its_packet_id_and_delivered_on_its_ack() {
    let mut s = connected(SessionConfig::default());
    let e = s
        .enqueue(Topic::Status(dev("a")), b"s1".to_vec(), "s1")
        .unwrap();
    assert_eq!(e.superseded, None);
    let out = send(&mut s);
    assert_eq!((out.id, out.payload.as_slice()), (e.id, &b"s1"[..]));
    assert_eq!(s.next_to_send(), None, "handed messages are not sent twice");
    assert_eq!(s.packet_id(7), Ok(e.id));
    assert_eq!(s.in_flight_ids().collect::<Vec<_>>(), vec![7]);
    assert_eq!(
        s.acked(7),
        Ack::Delivered {
            id: e.id,
            tag: "s1"
        }
    );
    assert_eq!(s.pending_len(), 0);
    assert_eq!(s.in_flight_len(), 0);
    assert_eq!(s.acked(7), Ack::Unsolicited { pkid: 7 });
}

#[test]
fn nothing_is_sent_while_disconnected_and_everything_unacked_is_resent_after_connack() {
    let mut s = Session::new(SessionConfig::default());
    let a = s.enqueue(Topic::Cmd(dev("a")), b"1".to_vec(), "1").unwrap();
    assert_eq!(s.next_to_send(), None);
    s.connected();
    let b = s.enqueue(Topic::Cmd(dev("a")), b"2".to_vec(), "2").unwrap();
    assert_eq!(send(&mut s).id, a.id);
    assert_eq!(send(&mut s).id, b.id);
    s.packet_id(1).unwrap();
    s.packet_id(2).unwrap();
    assert_eq!(s.acked(1), Ack::Delivered { id: a.id, tag: "1" });
    s.disconnected();
    assert_eq!(s.next_to_send(), None);
    // An ack of the lost connection settles nothing.
    assert_eq!(s.acked(2), Ack::Unsolicited { pkid: 2 });
    s.connected();
    assert_eq!(send(&mut s).id, b.id, "the unacked command goes again");
    assert_eq!(s.next_to_send(), None);
    assert_eq!(s.packet_id(2), Ok(b.id), "the old packet id is free again");
}

#[test]
fn a_newer_retained_message_supersedes_an_unacked_older_one_on_the_same_topic() {
    let mut s = connected(SessionConfig::default());
    let first = s
        .enqueue(Topic::Desired(dev("a")), b"g1".to_vec(), "g1")
        .unwrap();
    send(&mut s);
    s.packet_id(1).unwrap();
    let other = s
        .enqueue(Topic::Desired(dev("b")), b"b1".to_vec(), "b1")
        .unwrap();
    assert_eq!(other.superseded, None, "another device's topic");
    let second = s
        .enqueue(Topic::Desired(dev("a")), b"g2".to_vec(), "g2")
        .unwrap();
    assert_eq!(second.superseded, Some((first.id, "g1")));
    let cmd1 = s
        .enqueue(Topic::Cmd(dev("a")), b"c".to_vec(), "c1")
        .unwrap();
    let cmd2 = s
        .enqueue(Topic::Cmd(dev("a")), b"c".to_vec(), "c2")
        .unwrap();
    assert_eq!(cmd2.superseded, None, "commands are not retained");
    assert_eq!(s.acked(1), Ack::Superseded { id: first.id });
    let order: Vec<MessageId> = std::iter::from_fn(|| {
        let out = s.next_to_send()?;
        s.handed(out.id).unwrap();
        Some(out.id)
    })
    .collect();
    assert_eq!(order, vec![other.id, second.id, cmd1.id, cmd2.id]);
}

#[test]
fn without_superseding_every_retained_message_is_delivered_in_order() {
    let mut s = connected(SessionConfig {
        supersede_retained: false,
        ..SessionConfig::default()
    });
    let a = s
        .enqueue(Topic::Status(dev("a")), b"1".to_vec(), "1")
        .unwrap();
    let b = s
        .enqueue(Topic::Status(dev("a")), b"2".to_vec(), "2")
        .unwrap();
    assert_eq!(b.superseded, None);
    assert_eq!(send(&mut s).id, a.id);
    assert_eq!(send(&mut s).id, b.id);
}

#[test]
fn the_in_flight_window_is_bounded() {
    let mut s = connected(SessionConfig {
        max_in_flight: 2,
        supersede_retained: true,
    });
    for tag in ["1", "2", "3"] {
        s.enqueue(Topic::Cmd(dev("a")), tag.as_bytes().to_vec(), tag)
            .unwrap();
    }
    send(&mut s);
    send(&mut s);
    assert_eq!(s.next_to_send(), None, "two in flight");
    s.packet_id(1).unwrap();
    assert_eq!(s.next_to_send(), None, "still two in flight");
    assert!(matches!(s.acked(1), Ack::Delivered { tag: "1", .. }));
    assert_eq!(send(&mut s).payload, b"3");
}

#[test]
fn packet_id_rules_are_enforced() {
    let mut s = connected(SessionConfig::default());
    let cases: Vec<(PacketId, Result<(), SessionError>)> = vec![
        (5, Err(SessionError::NothingHanded { pkid: 5 })),
        (0, Err(SessionError::ZeroPacketId)),
    ];
    for (pkid, want) in cases {
        assert_eq!(s.packet_id(pkid).map(|_| ()), want, "pkid {pkid}");
    }
    let a = s.enqueue(Topic::Cmd(dev("a")), b"1".to_vec(), "1").unwrap();
    let b = s.enqueue(Topic::Cmd(dev("a")), b"2".to_vec(), "2").unwrap();
    send(&mut s);
    send(&mut s);
    assert_eq!(s.packet_id(9), Ok(a.id));
    assert_eq!(
        s.packet_id(9),
        Err(SessionError::PacketIdInFlight {
            pkid: 9,
            bound: a.id
        }),
        "an id in flight is never bound twice"
    );
    assert_eq!(
        s.packet_id(10),
        Ok(b.id),
        "the refused report kept b handed"
    );
    assert_eq!(s.handed(a.id), Err(SessionError::NotQueued { id: a.id }));
}

#[test]
fn qos_0_topics_never_enter_the_session() {
    let mut s: Session<()> = Session::new(SessionConfig::default());
    assert_eq!(
        s.enqueue(Topic::Telemetry(dev("a")), vec![], ()),
        Err(SessionError::NotAcknowledged {
            kind: TopicKind::Telemetry
        })
    );
    for kind in TopicKind::ALL {
        let got = s.enqueue(Topic::new(kind, dev("a")), vec![], ()).is_ok();
        assert_eq!(got, kind.delivery().qos == Qos::AtLeastOnce, "{kind}");
    }
}
