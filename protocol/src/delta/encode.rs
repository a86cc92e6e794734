//! Server side: compute a delta that rebuilds a target layer tar from base
//! layer tars.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};
use zstd::zstd_safe::{CCtx, CParameter};

use super::format::{Header, OP_COPY, OP_END, OP_LITERAL, OP_PATCH, OP_RAW};
use super::index::{TarFile, TarIndex, index_tar};
use crate::Digest;

/// Encoder knobs. `segment + 2 * slack` is the delta's window cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// zstd level for every frame.
    pub level: i32,
    /// Target bytes per patch segment and per raw/literal op.
    pub segment: u32,
    /// Base bytes taken on each side of the proportional offset.
    pub slack: u32,
    /// Files smaller than this are sent literally rather than patched.
    pub min_patch: u64,
}

impl Default for EncodeOptions {
    /// 8 MiB segments with 4 MiB slack: a 16 MiB window cap (DELTA.md).
    fn default() -> Self {
        Self {
            level: 19,
            segment: 8 << 20,
            slack: 4 << 20,
            min_patch: 256,
        }
    }
}

/// What [`encode`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub target: Digest,
    pub target_size: u64,
    pub bases: Vec<Digest>,
    pub delta_bytes: u64,
    /// Target bytes rebuilt by `Copy`, `Patch`, and raw/literal ops.
    pub copied: u64,
    pub patched: u64,
    pub literal: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("reading base layer #{index}")]
    ReadBase { index: usize, source: io::Error },
    #[error("reading the target layer")]
    ReadTarget { source: io::Error },
    #[error("writing the delta")]
    Write { source: io::Error },
    #[error("zstd: {message}")]
    Zstd { message: &'static str },
    #[error("options: segment and slack give a window over 1 GiB or a zero segment")]
    Options,
    #[error("too many base layers ({count})")]
    TooManyBases { count: usize },
}

/// Where a base file lives: base layer index and its entry in that index.
#[derive(Debug, Clone, Copy)]
struct BaseRef {
    base: usize,
    file: usize,
}

/// Writes a delta rebuilding `target` from `bases` (in layer order, lowest
/// first) to `out`.
pub fn encode<B: Read + Seek, T: Read + Seek, W: Write>(
    bases: &mut [B],
    mut target: T,
    out: W,
    opts: &EncodeOptions,
) -> Result<Encoded, EncodeError> {
    let window_cap = opts
        .segment
        .checked_add(opts.slack.saturating_mul(2))
        .filter(|cap| *cap <= 1 << 30 && opts.segment > 0)
        .ok_or(EncodeError::Options)?;
    let mut indexes = Vec::with_capacity(bases.len());
    for (index, base) in bases.iter_mut().enumerate() {
        let read = |source| EncodeError::ReadBase { index, source };
        base.seek(SeekFrom::Start(0)).map_err(read)?;
        indexes.push(index_tar(&mut *base).map_err(read)?);
    }
    let read = |source| EncodeError::ReadTarget { source };
    target.seek(SeekFrom::Start(0)).map_err(read)?;
    let wanted = index_tar(&mut target).map_err(read)?;
    target.seek(SeekFrom::Start(0)).map_err(read)?;
    if indexes.len() > super::format::MAX_BASES as usize {
        return Err(EncodeError::TooManyBases {
            count: indexes.len(),
        });
    }
    let header = Header {
        target: wanted.diff_id,
        target_size: wanted.size,
        bases: indexes.iter().map(|i| i.diff_id).collect(),
        window_cap,
    };
    let mut enc = Encoder {
        out: Counting { out, count: 0 },
        opts: *opts,
        matcher: Matcher::new(&indexes),
        indexes: &indexes,
        bases,
        pending: Vec::new(),
        pending_content: false,
        stats: [0; 3],
    };
    enc.put(&header.encode())?;
    enc.body(&mut target, &wanted)?;
    Ok(Encoded {
        target: Digest::from_sha256(wanted.diff_id),
        target_size: wanted.size,
        bases: header
            .bases
            .iter()
            .map(|b| Digest::from_sha256(*b))
            .collect(),
        delta_bytes: enc.out.count,
        copied: enc.stats[0],
        patched: enc.stats[1],
        literal: enc.stats[2],
    })
}

/// Finds the base file a target file is best rebuilt from.
struct Matcher {
    by_sha: HashMap<[u8; 32], BaseRef>,
    by_path: HashMap<String, BaseRef>,
    by_shape: HashMap<String, Vec<BaseRef>>,
    by_name: HashMap<String, Vec<BaseRef>>,
}

/// The path with every run of digits replaced by `#`: `pkg-1.2.dist-info`
/// and `pkg-1.3.dist-info` share a shape.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Matcher {
    fn new(indexes: &[TarIndex]) -> Self {
        let mut m = Matcher {
            by_sha: HashMap::new(),
            by_path: HashMap::new(),
            by_shape: HashMap::new(),
            by_name: HashMap::new(),
        };
        // Later (upper) layers win for a path, as in the unpacked rootfs.
        for (base, index) in indexes.iter().enumerate() {
            for (file, f) in index.files.iter().enumerate() {
                let r = BaseRef { base, file };
                m.by_sha.entry(f.sha).or_insert(r);
                m.by_path.insert(f.path.clone(), r);
                m.by_shape.entry(shape(&f.path)).or_default().push(r);
                m.by_name
                    .entry(file_name(&f.path).to_string())
                    .or_default()
                    .push(r);
            }
        }
        m
    }

    /// Identical content anywhere → `(r, true)`; else a similar file to
    /// patch against: same path, same shape, same file name (closest size).
    fn find(&self, indexes: &[TarIndex], f: &TarFile) -> Option<(BaseRef, bool)> {
        if let Some(r) = self.by_path.get(&f.path) {
            if indexes[r.base].files[r.file].sha == f.sha {
                return Some((*r, true));
            }
        }
        if let Some(r) = self.by_sha.get(&f.sha) {
            return Some((*r, true));
        }
        if let Some(r) = self.by_path.get(&f.path) {
            return Some((*r, false));
        }
        let closest = |refs: &Vec<BaseRef>| {
            refs.iter()
                .min_by_key(|r| indexes[r.base].files[r.file].size.abs_diff(f.size))
                .copied()
        };
        self.by_shape
            .get(&shape(&f.path))
            .and_then(closest)
            .or_else(|| self.by_name.get(file_name(&f.path)).and_then(closest))
            .map(|r| (r, false))
    }
}

struct Counting<W> {
    out: W,
    count: u64,
}

struct Encoder<'a, B, W> {
    out: Counting<W>,
    opts: EncodeOptions,
    matcher: Matcher,
    indexes: &'a [TarIndex],
    bases: &'a mut [B],
    /// Raw/literal bytes not yet written, at most one segment.
    pending: Vec<u8>,
    pending_content: bool,
    /// Bytes by copy, patch, raw/literal.
    stats: [u64; 3],
}

impl<B: Read + Seek, W: Write> Encoder<'_, B, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.out
            .out
            .write_all(bytes)
            .map_err(|source| EncodeError::Write { source })?;
        self.out.count += bytes.len() as u64;
        Ok(())
    }

    fn body<T: Read>(&mut self, target: &mut T, wanted: &TarIndex) -> Result<(), EncodeError> {
        let mut pos = 0u64;
        for f in &wanted.files {
            self.literal(target, f.offset - pos, false)?;
            let found = (f.size >= self.opts.min_patch)
                .then(|| self.matcher.find(self.indexes, f))
                .flatten();
            match found {
                Some((r, true)) => {
                    self.copy_op(r, f)?;
                    skip(target, f.size)?;
                }
                Some((r, false)) => self.patch_op(target, r, f)?,
                None => self.literal(target, f.size, true)?,
            }
            pos = f.offset + f.size;
        }
        self.literal(target, wanted.size - pos, false)?;
        self.flush()?;
        let mut end = vec![OP_END];
        end.extend_from_slice(&wanted.diff_id);
        self.put(&end)
    }

    /// Moves `len` target bytes into the pending raw/literal buffer.
    fn literal<T: Read>(
        &mut self,
        target: &mut T,
        len: u64,
        content: bool,
    ) -> Result<(), EncodeError> {
        let mut left = len;
        while left > 0 {
            let room = self.opts.segment as usize - self.pending.len();
            let take = left.min(room as u64) as usize;
            let start = self.pending.len();
            self.pending.resize(start + take, 0);
            target
                .read_exact(&mut self.pending[start..])
                .map_err(|source| EncodeError::ReadTarget { source })?;
            self.pending_content |= content;
            left -= take as u64;
            if self.pending.len() == self.opts.segment as usize {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EncodeError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        let frame = self.compress(&data, &[])?;
        let tag = if self.pending_content {
            OP_LITERAL
        } else {
            OP_RAW
        };
        let mut op = vec![tag];
        op.extend_from_slice(&len32(data.len()).to_le_bytes());
        op.extend_from_slice(&len32(frame.len()).to_le_bytes());
        self.put(&op)?;
        self.put(&frame)?;
        self.stats[2] += data.len() as u64;
        self.pending = data;
        self.pending.clear();
        self.pending_content = false;
        Ok(())
    }

    fn op_head(&mut self, tag: u8, r: BaseRef, path: &str, size: u64) -> Result<(), EncodeError> {
        self.flush()?;
        let mut op = vec![tag];
        op.extend_from_slice(&len32(r.base).to_le_bytes());
        let path_len = u16::try_from(path.len()).unwrap_or(u16::MAX);
        op.extend_from_slice(&path_len.to_le_bytes());
        op.extend_from_slice(path.as_bytes());
        op.extend_from_slice(&size.to_le_bytes());
        self.put(&op)
    }

    fn copy_op(&mut self, r: BaseRef, f: &TarFile) -> Result<(), EncodeError> {
        let base = &self.indexes[r.base].files[r.file];
        let path = base.path.clone();
        self.op_head(OP_COPY, r, &path, f.size)?;
        self.put(&f.sha)?;
        self.stats[0] += f.size;
        Ok(())
    }

    fn patch_op<T: Read>(
        &mut self,
        target: &mut T,
        r: BaseRef,
        f: &TarFile,
    ) -> Result<(), EncodeError> {
        let base = self.indexes[r.base].files[r.file].clone();
        self.op_head(OP_PATCH, r, &base.path, f.size)?;
        let seg = u64::from(self.opts.segment);
        let count = f.size.div_ceil(seg);
        self.put(&len32(count as usize).to_le_bytes())?;
        let mut seg_buf = Vec::new();
        let mut base_buf = Vec::new();
        for i in 0..count {
            let t0 = i * seg;
            let out_len = seg.min(f.size - t0) as usize;
            seg_buf.resize(out_len, 0);
            target
                .read_exact(&mut seg_buf)
                .map_err(|source| EncodeError::ReadTarget { source })?;
            let (b0, b_len) = base_range(&self.opts, base.size, f.size, t0);
            base_buf.resize(b_len as usize, 0);
            let src = &mut self.bases[r.base];
            let read = |source| EncodeError::ReadBase {
                index: r.base,
                source,
            };
            src.seek(SeekFrom::Start(base.offset + b0)).map_err(read)?;
            src.read_exact(&mut base_buf).map_err(read)?;
            let frame = self.compress(&seg_buf, &base_buf)?;
            let mut head = Vec::with_capacity(60);
            head.extend_from_slice(&b0.to_le_bytes());
            head.extend_from_slice(&len32(base_buf.len()).to_le_bytes());
            head.extend_from_slice(&Sha256::digest(&base_buf));
            head.extend_from_slice(&len32(out_len).to_le_bytes());
            head.extend_from_slice(&len32(frame.len()).to_le_bytes());
            self.put(&head)?;
            self.put(&frame)?;
        }
        self.stats[1] += f.size;
        Ok(())
    }

    /// One zstd frame of `data`, with `prefix` as ref prefix (patch-from).
    fn compress(&mut self, data: &[u8], prefix: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let span = (data.len() + prefix.len()).max(1 << 10) as u64;
        let window_log = (64 - (span - 1).leading_zeros()).clamp(10, 30);
        let zstd = |message| move |_| EncodeError::Zstd { message };
        // A ref prefix borrows for the context's lifetime: one per frame.
        let mut c = CCtx::create();
        if !prefix.is_empty() {
            c.ref_prefix(prefix).map_err(zstd("ref prefix"))?;
        }
        c.set_parameter(CParameter::CompressionLevel(self.opts.level))
            .map_err(zstd("level"))?;
        c.set_parameter(CParameter::WindowLog(window_log))
            .map_err(zstd("window log"))?;
        c.set_parameter(CParameter::EnableLongDistanceMatching(span > 8 << 20))
            .map_err(zstd("long distance matching"))?;
        c.set_parameter(CParameter::ContentSizeFlag(true))
            .map_err(zstd("content size"))?;
        c.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd("checksum"))?;
        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        c.compress2(&mut frame, data).map_err(zstd("compress"))?;
        Ok(frame)
    }
}

/// The base range a target segment at `t0` is patched against: the whole
/// base file if it fits the window, else `segment + 2 * slack` bytes around
/// the proportional offset `t0 * base / target`.
fn base_range(opts: &EncodeOptions, base: u64, target: u64, t0: u64) -> (u64, u64) {
    let want = u64::from(opts.segment) + 2 * u64::from(opts.slack);
    if base <= want {
        return (0, base);
    }
    let centre = (u128::from(t0) * u128::from(base) / u128::from(target.max(1))) as u64;
    let start = centre.saturating_sub(opts.slack.into()).min(base - want);
    (start, want)
}

fn skip<T: Read>(target: &mut T, len: u64) -> Result<(), EncodeError> {
    let copied = io::copy(&mut target.take(len), &mut io::sink())
        .map_err(|source| EncodeError::ReadTarget { source })?;
    if copied != len {
        return Err(EncodeError::ReadTarget {
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}

/// Lengths bounded by the window cap (≤ 1 GiB) always fit a u32.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
