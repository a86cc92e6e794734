//! MQTT 3.1.1 framing for the broker front: splitting frames off a byte
//! stream, reading a PUBLISH header, and the few replies the front writes
//! itself (CONNACK, PUBACK, SUBACK failure).

use bytes::{Buf, BufMut, BytesMut};
use rumqttd::protocol::v4;
use tokio::io::AsyncReadExt;

use super::SessionError;

/// Topic, QoS and packet id of a PUBLISH frame.
#[doc(hidden)] // public for the fuzz targets only
pub struct PublishHeader {
    pub topic: String,
    pub qos: u8,
    pub pkid: Option<u16>,
}

impl PublishHeader {
    pub fn parse(frame: &BytesMut) -> Result<Self, SessionError> {
        let bad = SessionError::BadPublish;
        let header = v4::check(frame.iter(), usize::MAX).map_err(SessionError::Malformed)?;
        let qos = (header.byte1 >> 1) & 0b11;
        let mut body = &frame[header.fixed_header_len..];
        if body.len() < 2 {
            return Err(bad("no topic"));
        }
        let len = usize::from(body.get_u16());
        if body.len() < len {
            return Err(bad("topic length"));
        }
        let topic = std::str::from_utf8(&body[..len])
            .map_err(|_| bad("topic is not UTF-8"))?
            .to_owned();
        body.advance(len);
        let pkid = if qos > 0 {
            if body.len() < 2 {
                return Err(bad("no packet id"));
            }
            Some(body.get_u16())
        } else {
            None
        };
        Ok(Self { topic, qos, pkid })
    }
}

/// Reads until one whole frame is buffered; `None` on a clean EOF.
pub(super) async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<BytesMut>, SessionError> {
    loop {
        if let Some(frame) = next_frame(buf, max)? {
            return Ok(Some(frame));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Splits one complete MQTT frame off the front of `buf`, if there is one.
#[doc(hidden)] // public for the fuzz targets only
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, SessionError> {
    match v4::check(buf.iter(), max) {
        Ok(header) => Ok(Some(buf.split_to(header.frame_length()))),
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(SessionError::Malformed(e)),
    }
}

pub(super) fn connack(code: u8) -> Vec<u8> {
    vec![0x20, 0x02, 0x00, code]
}

pub(super) fn puback(pkid: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(4);
    b.put_u8(0x40);
    b.put_u8(0x02);
    b.put_u16(pkid);
    b
}

/// SUBACK with the failure code (0x80) for each of `count` filters.
pub(super) fn suback_failure(pkid: u16, count: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(0x90);
    let remaining = 2 + count;
    // Variable-length remaining length.
    let mut x = remaining;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        b.put_u8(byte);
        if x == 0 {
            break;
        }
    }
    b.put_u16(pkid);
    b.extend(std::iter::repeat_n(0x80u8, count));
    b.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suback_failure_encodes_one_code_per_filter() {
        assert_eq!(suback_failure(7, 2), vec![0x90, 4, 0, 7, 0x80, 0x80]);
        let long = suback_failure(1, 200);
        assert_eq!(&long[..3], &[0x90, 0xca, 0x01]);
        assert_eq!(long.len(), 3 + 2 + 200);
    }

    #[test]
    fn publish_header_is_parsed_for_each_qos() {
        // QoS 1, topic "a/b", pkid 9, payload "x".
        let frame = BytesMut::from(&[0x32, 8, 0, 3, b'a', b'/', b'b', 0, 9, b'x'][..]);
        let p = PublishHeader::parse(&frame).unwrap();
        assert_eq!((p.topic.as_str(), p.qos, p.pkid), ("a/b", 1, Some(9)));
        let frame = BytesMut::from(&[0x30, 4, 0, 1, b'a', b'x'][..]);
        let p = PublishHeader::parse(&frame).unwrap();
        assert_eq!((p.topic.as_str(), p.qos, p.pkid), ("a", 0, None));
        let short = BytesMut::from(&[0x32, 3, 0, 9, b'a'][..]);
        assert!(PublishHeader::parse(&short).is_err());
    }

    #[test]
    fn frames_are_split_only_when_complete() {
        let mut buf = BytesMut::from(&[0x30, 4, 0, 1, b'a'][..]);
        assert!(next_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&[b'x', 0xc0]);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.len(), 6);
        assert!(next_frame(&mut buf, 1024).unwrap().is_none());
        buf.extend_from_slice(&[0x00]);
        assert_eq!(next_frame(&mut buf, 1024).unwrap().unwrap().len(), 2);
    }
}
