//! Follows the tar block structure of the stream as it is read, to refuse
//! oversized metadata records (PAX `x`/`g`, GNU long name/link `L`/`K`)
//! before the tar parser buffers them whole in memory.

/// Tar block size.
const BLOCK: usize = 512;

enum State {
    /// Collecting a header block.
    Header {
        buf: Box<[u8; BLOCK]>,
        filled: usize,
    },
    /// Collecting a GNU sparse extension block; then `then` bytes of data.
    SparseExt {
        buf: Box<[u8; BLOCK]>,
        filled: usize,
        then: u64,
    },
    /// Skipping entry data (padded to whole blocks).
    Skip(u64),
    /// End of archive reached, or a header the tar parser will reject anyway.
    Done,
}

pub(super) struct HeaderGuard {
    state: State,
    max: u64,
}

impl HeaderGuard {
    pub(super) fn new(max: u64) -> Self {
        Self {
            state: State::Header {
                buf: Box::new([0; BLOCK]),
                filled: 0,
            },
            max,
        }
    }

    /// Looks at the next bytes of the uncompressed stream. Errors when a
    /// metadata record is larger than the cap.
    pub(super) fn observe(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Skip(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = State::Header {
                            buf: Box::new([0; BLOCK]),
                            filled: 0,
                        };
                    }
                }
                State::Header { buf, filled } | State::SparseExt { buf, filled, .. } => {
                    let k = (BLOCK - *filled).min(data.len());
                    buf[*filled..*filled + k].copy_from_slice(&data[..k]);
                    *filled += k;
                    data = &data[k..];
                    if *filled == BLOCK {
                        self.state = self.next_state()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn next_state(&mut self) -> Result<State, u64> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match state {
            State::SparseExt { buf, then, .. } => Ok(if buf[504] != 0 {
                State::SparseExt {
                    buf,
                    filled: 0,
                    then,
                }
            } else {
                skip(then)
            }),
            State::Header { buf, .. } => {
                if buf.iter().all(|b| *b == 0) {
                    return Ok(State::Done);
                }
                let Some(size) = parse_size(&buf[124..136]) else {
                    return Ok(State::Done);
                };
                let padded = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
                match buf[156] {
                    b'x' | b'g' | b'L' | b'K' if size > self.max => Err(self.max),
                    b'S' if buf[482] != 0 => Ok(State::SparseExt {
                        buf: Box::new([0; BLOCK]),
                        filled: 0,
                        then: padded,
                    }),
                    _ => Ok(skip(padded)),
                }
            }
            other => Ok(other),
        }
    }
}

fn skip(n: u64) -> State {
    if n == 0 {
        State::Header {
            buf: Box::new([0; BLOCK]),
            filled: 0,
        }
    } else {
        State::Skip(n)
    }
}

/// A tar numeric field: octal text, or base-256 when the high bit is set.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..4].copy_from_slice(b"name");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h
    }

    #[test]
    fn follows_entries_and_refuses_only_oversized_metadata() {
        let mut g = HeaderGuard::new(1024);
        let mut stream = header(b'0', 700);
        stream.extend(vec![7u8; 1024]); // 700 bytes of data, padded
        stream.extend(header(b'x', 1000));
        stream.extend(vec![b'a'; 1024]);
        // Feed in odd-sized pieces.
        for chunk in stream.chunks(37) {
            g.observe(chunk).unwrap();
        }
        assert_eq!(g.observe(&header(b'L', 4096)), Err(1024));
        let mut g = HeaderGuard::new(1024);
        // A big regular file is not metadata.
        g.observe(&header(b'0', (1 << 33) - 1)).unwrap();
    }

    #[test]
    fn parses_octal_and_base256_sizes() {
        assert_eq!(parse_size(b"00000001000\0"), Some(512));
        assert_eq!(
            parse_size(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
    }
}
