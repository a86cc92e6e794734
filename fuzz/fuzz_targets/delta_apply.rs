#![no_main]
//! Layer delta apply (`fleet_protocol::delta`, format v2) with in-memory
//! base files and skeleton. Never panics; a success means the output
//! hashes to the expected diff_id and has the reported length.
//!
//! The first byte picks what the fuzzer controls, so it gets past the
//! header's hashes:
//! - 0: every byte of the delta;
//! - 1: a valid header (prefix = the base's skeleton), then the chunks and
//!   data frames;
//! - 2: a valid header, then the fuzzer's bytes as the *uncompressed*
//!   control stream (compressed here into one chunk against the prefix),
//!   which reaches every op of the control stream.

use std::collections::HashMap;
use std::io::{self, Cursor, Read};

use fleet_protocol::Digest;
use fleet_protocol::delta::{BaseFiles, Limits, MAGIC, VERSION, apply};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

struct MemBases(HashMap<String, Vec<u8>>, Vec<u8>);

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
    fn skeleton(&self, _: &Digest) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(&self.1[..]))
    }
}

/// A valid v2 header: one base, the base's skeleton as prefix.
fn header(target: &[u8; 32], skeleton: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(target);
    h.extend_from_slice(&(1u64 << 16).to_le_bytes());
    h.extend_from_slice(&(1u32 << 16).to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&[9u8; 32]);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(skeleton.len() as u32).to_le_bytes());
    h.extend_from_slice(&Sha256::digest(skeleton));
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let files = HashMap::from([
        ("f".to_string(), vec![7u8; 4096]),
        ("g".to_string(), b"base file g".to_vec()),
    ]);
    // The skeleton of a layer holding f and g, by the protocol's function.
    let mut layer = tar::Builder::new(Vec::new());
    for (path, bytes) in [("f", &files["f"]), ("g", &files["g"])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        layer.append_data(&mut h, path, &bytes[..]).unwrap();
    }
    let mut skeleton = Vec::new();
    fleet_protocol::delta::skeleton(&layer.into_inner().unwrap()[..], &mut skeleton).unwrap();
    let bases = MemBases(files, skeleton.clone());
    let mut target = [0u8; 32];
    if rest.len() >= 32 {
        target.copy_from_slice(&rest[..32]);
    }
    let expected = Digest::from_sha256(target);
    let delta = match mode % 3 {
        0 => rest.to_vec(),
        1 => [header(&target, &skeleton), rest.to_vec()].concat(),
        _ => {
            let mut c = zstd::zstd_safe::CCtx::create();
            c.ref_prefix(&skeleton[..]).unwrap();
            let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(rest.len()));
            c.compress2(&mut frame, rest).unwrap();
            let mut d = header(&target, &skeleton);
            d.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            d.extend_from_slice(&frame);
            d
        }
    };
    let limits = Limits { max_window: 1 << 20, max_target_size: 1 << 24, ..Limits::default() };
    let mut out = Vec::new();
    if let Ok(applied) = apply(&delta[..], &bases, &mut out, &expected, &limits) {
        assert_eq!(applied.bytes, out.len() as u64);
        assert_eq!(applied.sha256, Digest::from_sha256(Sha256::digest(&out).into()));
        assert_eq!(applied.sha256, expected);
    }
});
