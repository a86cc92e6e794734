//! Why a delta was refused or failed on the device.

use std::io;

use super::format::VERSION;
use crate::Digest;

/// Why a delta was refused or failed. Output already written must then be
/// discarded by the caller.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("not a Fleet delta (bad magic)")]
    BadMagic,
    #[error("delta format version {version} is not supported (this device reads {VERSION})")]
    UnsupportedVersion { version: u16 },
    #[error("delta rebuilds {found}, expected {expected}")]
    WrongTarget { expected: Digest, found: Digest },
    #[error("delta asks for a {requested}-byte segment window, device cap is {cap} (memory bomb)")]
    WindowOverCap { requested: u64, cap: u32 },
    #[error("delta field {field} is {value}, limit {max}")]
    OverLimit {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("delta needs base layer {diff_id}, which this device does not have")]
    UnknownBase { diff_id: Digest },
    #[error("op at byte {offset} names base #{index}, delta has {count} bases")]
    BadBaseIndex {
        offset: u64,
        index: u32,
        count: usize,
    },
    #[error("op at byte {offset} names unsafe base path {path:?}")]
    UnsafePath { offset: u64, path: String },
    #[error("unknown op tag {tag:#04x} at byte {offset}")]
    UnknownOp { offset: u64, tag: u8 },
    #[error("delta truncated at byte {offset}")]
    Truncated { offset: u64 },
    #[error("reading the delta at byte {offset}")]
    ReadDelta { offset: u64, source: io::Error },
    #[error("corrupt zstd frame at byte {offset}")]
    Frame { offset: u64, source: io::Error },
    #[error("frame at byte {offset} is malformed: {what}")]
    FrameShape { offset: u64, what: &'static str },
    #[error("opening base file {path:?} of {base}")]
    BaseOpen {
        base: Digest,
        path: String,
        source: io::Error,
    },
    #[error("reading base file {path:?} of {base}")]
    BaseRead {
        base: Digest,
        path: String,
        source: io::Error,
    },
    #[error("base file {path:?} of {base} does not match the delta (tampered or changed)")]
    BaseMismatch { base: Digest, path: String },
    #[error("writing the rebuilt tar")]
    WriteOutput { source: io::Error },
    #[error("rebuilt tar would exceed the declared {declared} bytes")]
    Overrun { declared: u64 },
    #[error("rebuilt {written} bytes, delta declared {declared}")]
    SizeMismatch { declared: u64, written: u64 },
    #[error("rebuilt tar hashes to {computed}, expected {expected}")]
    HashMismatch { expected: Digest, computed: Digest },
    #[error("bytes after the end of the delta at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("delta needs the skeleton of base layer {base}, which this device does not have")]
    NoSkeleton { base: Digest, source: io::Error },
    #[error(
        "the delta's control prefix ({declared} bytes of base skeletons) differs from this device's skeletons ({found} bytes)"
    )]
    SkeletonMismatch { declared: u32, found: u64 },
}
