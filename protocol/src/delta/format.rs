//! Wire layout of delta format v2 (protocol/DELTA.md): constants, the
//! header, op tags, the device's limits and the path rule.

/// First eight bytes of every delta.
pub const MAGIC: [u8; 8] = *b"FLTDELTA";
/// The only format version this crate reads and writes.
pub const VERSION: u16 = 2;

/// Op tags of the control stream. Every op starts with one of these bytes.
/// `Raw`: bytes inline in the control stream.
pub(crate) const OP_RAW: u8 = 1;
/// `Data`: bytes in a separate zstd frame after the control chunk.
pub(crate) const OP_DATA: u8 = 2;
/// `Copy`: a whole file of the current base layer.
pub(crate) const OP_COPY: u8 = 3;
/// `Patch`: a file patched against a file of the current base layer.
pub(crate) const OP_PATCH: u8 = 4;
/// `Base`: sets the current base layer (0 at the start).
pub(crate) const OP_BASE: u8 = 5;
/// `Group`: small files patched together in one frame against their base
/// files, decoded into a buffer that `Take` ops hand out in order.
pub(crate) const OP_GROUP: u8 = 6;
/// `Take`: the next file of the current group.
pub(crate) const OP_TAKE: u8 = 7;
/// Most files in one group.
pub(crate) const MAX_GROUP_FILES: u32 = 4096;
pub(crate) const OP_END: u8 = 0xFF;

/// Largest `Raw` op: longer runs of inline bytes are cut into ops of this
/// size (the same rule in a skeleton and in a delta, so they match).
pub(crate) const RAW_CHUNK: usize = 64 << 10;

/// zstd `windowLog` ceiling of the control stream (8 MiB): the device's
/// decoding buffer for it.
pub(crate) const CONTROL_WINDOW_LOG: u32 = 23;

/// Hard ceilings of the format, whatever the device's limits say.
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_BASES: u32 = 1024;

/// What a device accepts. Checked before anything is allocated or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest segment window (base range or output bytes per frame) the
    /// device will hold in memory. A delta declaring more is refused.
    pub max_window: u32,
    /// Most base layers a delta may name.
    pub max_bases: u32,
    /// Largest rebuilt tar accepted.
    pub max_target_size: u64,
    /// Most segments in one `Patch` op.
    pub max_segments: u32,
    /// Largest ref prefix of the control stream (the base layers'
    /// skeletons), held in memory while applying.
    pub max_prefix: u32,
}

impl Default for Limits {
    /// 16 MiB windows (what [`super::EncodeOptions::default`] produces) and
    /// an 8 MiB prefix: apply memory stays under ~50 MiB (DELTA.md).
    fn default() -> Self {
        Self {
            max_window: 16 << 20,
            max_bases: 128,
            max_target_size: 64 << 30,
            max_segments: 1 << 20,
            max_prefix: 8 << 20,
        }
    }
}

/// The fixed part of a delta, before the ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// SHA-256 of the rebuilt tar (the target layer's diff_id).
    pub target: [u8; 32],
    pub target_size: u64,
    /// diff_ids of the base layers; ops name them by index.
    pub bases: Vec<[u8; 32]>,
    /// Largest base range and largest output of any frame, in bytes.
    pub window_cap: u32,
    /// Indexes (into `bases`) of the layers whose skeletons, concatenated
    /// in this order, are the control stream's ref prefix.
    pub prefix_bases: Vec<u32>,
    pub prefix_len: u32,
    /// SHA-256 of the prefix.
    pub prefix_sha: [u8; 32],
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.bases.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.target);
        out.extend_from_slice(&self.target_size.to_le_bytes());
        out.extend_from_slice(&self.window_cap.to_le_bytes());
        let count = u32::try_from(self.bases.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for base in &self.bases {
            out.extend_from_slice(base);
        }
        let count = u32::try_from(self.prefix_bases.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for index in &self.prefix_bases {
            out.extend_from_slice(&index.to_le_bytes());
        }
        out.extend_from_slice(&self.prefix_len.to_le_bytes());
        out.extend_from_slice(&self.prefix_sha);
        out
    }
}

/// zstd `windowLogMax` that admits every frame a delta within `window_cap`
/// may legally carry: a patch frame references its base range (≤ cap) and
/// produces ≤ cap bytes, so its window is at most 2 × cap.
pub(crate) fn window_log_for(window_cap: u32) -> u32 {
    let span = u64::from(window_cap).saturating_mul(2).max(1 << 10);
    64 - (span - 1).leading_zeros()
}

/// A base file path as a delta names it: relative, `/`-separated, no empty,
/// `.` or `..` component, no NUL, at most [`MAX_PATH_BYTES`].
pub fn path_is_safe(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Normalises a tar entry path the way deltas name files: no leading `./`
/// or `/`, no trailing `/`.
pub(crate) fn normalise_path(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    p.trim_end_matches('/').to_string()
}
