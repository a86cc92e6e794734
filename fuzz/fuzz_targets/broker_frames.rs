#![no_main]
//! The embedded broker's front frames untrusted client bytes: splitting never
//! panics, never takes more than is buffered nor a frame whose remaining
//! length is over the limit, loses no byte, and the PUBLISH header parser and
//! rumqttd's packet reader never panic on a split frame.

use bytes::BytesMut;
use fleet_control_plane::broker::{PublishHeader, next_frame};
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::Protocol as _;
use rumqttd::protocol::v4::V4;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut rebuilt = Vec::with_capacity(data.len());
    loop {
        let before = buf.len();
        let Ok(Some(frame)) = next_frame(&mut buf, MAX) else {
            assert_eq!(buf.len(), before, "no frame, nothing consumed");
            break;
        };
        assert!(frame.len() >= 2 && frame.len() <= before);
        assert!(frame.len() <= MAX + 5, "type byte + 4 length bytes + MAX");
        assert_eq!(buf.len() + frame.len(), before);
        rebuilt.extend_from_slice(&frame);
        if frame[0] >> 4 == 3
            && let Ok(p) = PublishHeader::parse(&frame)
        {
            assert!(p.qos <= 3);
            assert_eq!(p.pkid.is_some(), p.qos > 0);
            assert!(4 + p.topic.len() <= frame.len());
        }
        // What the front hands rumqttd's reader (SUBSCRIBE) and the broker.
        let _ = V4.read_mut(&mut frame.clone(), MAX);
    }
    rebuilt.extend_from_slice(&buf);
    assert_eq!(rebuilt, data);
});
