//! Byte-level layer deltas, format v2 (protocol/DELTA.md).
//!
//! A delta rebuilds the exact uncompressed tar of a target layer from base
//! layers the device already has (named by diff_id): tar headers and
//! padding verbatim, each file's content copied from a base file, patched
//! against a base file in bounded segments (zstd ref prefix, like
//! `zstd --patch-from`), or sent literally; tar headers, ops and small
//! literals travel in one zstd control stream whose ref prefix is the base
//! layers' [`skeleton`]s. [`encode`] runs on the server,
//! [`apply`] on the device; both stream and hold at most a few segment
//! windows in memory. [`replay_skeleton`] rebuilds a layer from its own
//! skeleton and unpacked files, to re-verify a snapshot. Unlike the rest of this crate the codec does I/O, but
//! only through the `Read`/`Write`/[`BaseFiles`] it is handed (and
//! [`DirBases`], a directory-per-layer `BaseFiles`).

mod apply;
mod bases;
mod control;
mod encode;
mod error;
mod format;
mod index;
mod matcher;
mod replay;

pub use apply::{Applied, DeltaError, DeltaHeader, apply, read_header};
pub use bases::{BaseFiles, DirBases};
pub use encode::{EncodeError, EncodeOptions, Encoded, encode};
pub use format::{Limits, MAGIC, MAX_BASES, MAX_PATH_BYTES, VERSION, path_is_safe};
pub use index::{Skeleton, skeleton};
pub use replay::replay_skeleton;

/// HTTP header of a served delta naming the diff_id it rebuilds
/// (protocol/DELTA.md, "Asking the server for a delta").
pub const TARGET_HEADER: &str = "Fleet-Delta-Target";
/// HTTP header of a served delta with the bytes of the whole layer blob it
/// replaces.
pub const LAYER_SIZE_HEADER: &str = "Fleet-Delta-Layer-Size";

/// Default [`worth_sending`] ratio: a delta must be under 80% of the layer.
pub const DEFAULT_RATIO: f64 = 0.8;

/// Whether a delta of `delta_bytes` is clearly smaller than fetching the
/// whole layer (`layer_bytes`, as stored: compressed blob size): strictly
/// under `ratio × layer_bytes`. A ratio outside (0, 1] is treated as the
/// default.
pub fn worth_sending(delta_bytes: u64, layer_bytes: u64, ratio: f64) -> bool {
    let ratio = if ratio > 0.0 && ratio <= 1.0 {
        ratio
    } else {
        DEFAULT_RATIO
    };
    (delta_bytes as f64) < ratio * layer_bytes as f64
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
