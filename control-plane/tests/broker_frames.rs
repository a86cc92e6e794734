//! The embedded broker's front frames untrusted bytes: properties of its frame
//! splitter and PUBLISH header parser on random input (the fuzz target
//! `broker_frames` in `fuzz/` checks the same on guided input).

use bytes::BytesMut;
use fleet_control_plane::broker::{PublishHeader, next_frame};
use proptest::prelude::*;

const MAX: usize = 512;

/// Splits `input` into frames the way a session does, checking that every
/// frame is a prefix of what was buffered, carries at most `MAX` bytes after
/// its fixed header (type byte and at most 4 length bytes), and that frames
/// plus what is left are exactly the input.
fn split_all(input: &[u8]) -> Vec<BytesMut> {
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    let mut rebuilt = Vec::new();
    loop {
        let before = buf.len();
        match next_frame(&mut buf, MAX) {
            Ok(Some(frame)) => {
                assert!(frame.len() >= 2, "a frame has a fixed header");
                assert!(frame.len() <= before, "consumed more than buffered");
                assert!(frame.len() <= MAX + 5, "frame over the limit");
                assert_eq!(buf.len(), before - frame.len());
                rebuilt.extend_from_slice(&frame);
                frames.push(frame);
            }
            Ok(None) | Err(_) => {
                assert_eq!(
                    buf.len(),
                    before,
                    "an incomplete or bad frame consumes nothing"
                );
                break;
            }
        }
    }
    rebuilt.extend_from_slice(&buf);
    assert_eq!(rebuilt, input);
    frames
}

fn check_publish(frame: &BytesMut) {
    if frame[0] >> 4 != 3 {
        return;
    }
    if let Ok(p) = PublishHeader::parse(frame) {
        assert!(p.qos <= 3);
        assert_eq!(p.pkid.is_some(), p.qos > 0);
        assert!(2 + p.topic.len() + 2 * usize::from(p.pkid.is_some()) < frame.len());
    }
}

/// A well-formed PUBLISH frame (remaining length in 1 or 2 bytes).
fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let mut frame = vec![0x30 | (qos << 1)];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        frame.push(byte);
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    frame
}

proptest! {
    #[test]
    fn random_bytes_split_within_the_buffer(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        for frame in split_all(&input) {
            check_publish(&frame);
        }
    }

    #[test]
    fn publishes_split_and_parse_back(
        packets in proptest::collection::vec(
            ("[a-z/]{0,20}", 0u8..2, 1u16.., proptest::collection::vec(any::<u8>(), 0..200)),
            1..5,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let stream: Vec<u8> = packets
            .iter()
            .flat_map(|(t, q, id, p)| publish(t, *q, *id, p))
            .collect();
        let frames = split_all(&stream);
        prop_assert_eq!(frames.len(), packets.len());
        for (frame, (topic, qos, pkid, _)) in frames.iter().zip(&packets) {
            let p = PublishHeader::parse(frame).unwrap();
            prop_assert_eq!(&p.topic, topic);
            prop_assert_eq!(p.qos, *qos);
            prop_assert_eq!(p.pkid, (*qos > 0).then_some(*pkid));
        }
        // A stream cut anywhere yields only the frames wholly before the cut.
        let at = cut.index(stream.len() + 1);
        let whole = split_all(&stream[..at]);
        prop_assert!(whole.len() <= packets.len());
        let lens: usize = whole.iter().map(|f| f.len()).sum();
        prop_assert!(lens <= at);
    }
}
