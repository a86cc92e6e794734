#![no_main]
//! Layer delta apply (`fleet_protocol::delta`): any bytes as a delta, with
//! in-memory base files. Never panics; a success means the output hashes to
//! the expected diff_id and has the reported length.

use std::collections::HashMap;
use std::io::{self, Cursor};

use fleet_protocol::Digest;
use fleet_protocol::delta::{BaseFiles, Limits, apply};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

struct MemBases(HashMap<String, Vec<u8>>);

impl BaseFiles for MemBases {
    type File = Cursor<Vec<u8>>;
    fn has_layer(&self, _: &Digest) -> bool {
        true
    }
    fn open(&self, _: &Digest, path: &str) -> io::Result<Self::File> {
        self.0
            .get(path)
            .cloned()
            .map(Cursor::new)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

fuzz_target!(|data: &[u8]| {
    let bases = MemBases(HashMap::from([
        ("f".to_string(), vec![7u8; 4096]),
        ("g".to_string(), b"base file g".to_vec()),
    ]));
    // Take the claimed target from the header so the ops are reached.
    let mut target = [0u8; 32];
    if data.len() >= 42 {
        target.copy_from_slice(&data[10..42]);
    }
    let expected = Digest::from_sha256(target);
    let limits = Limits { max_window: 1 << 20, max_target_size: 1 << 24, ..Limits::default() };
    let mut out = Vec::new();
    if let Ok(applied) = apply(data, &bases, &mut out, &expected, &limits) {
        assert_eq!(applied.bytes, out.len() as u64);
        assert_eq!(applied.sha256, Digest::from_sha256(Sha256::digest(&out).into()));
        assert_eq!(applied.sha256, expected);
    }
});
