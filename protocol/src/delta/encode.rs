//! Server side: compute a delta that rebuilds a target layer tar from base
//! layer tars.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer, zstd_sys::ZSTD_EndDirective};

use super::format::{
    CONTROL_WINDOW_LOG, Header, MAX_GROUP_FILES, OP_BASE, OP_COPY, OP_DATA, OP_END, OP_GROUP,
    OP_PATCH, OP_TAKE, RAW_CHUNK,
};
use super::index::{RawRun, TarFile, TarIndex, index_and_skeleton, index_tar, put_file_fields};
use super::matcher::{BaseRef, Matcher};
use crate::Digest;

/// Encoder knobs. `segment + 2 * slack` is the delta's window cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// zstd level of the control stream and of frames.
    pub level: i32,
    /// A frame of more than `large_frame` bytes is first compressed at
    /// `probe_level`; that is kept when it is either tiny (≤ 1/16 of the
    /// input: a patch that found its base) or useless (≥ 9/10: new
    /// incompressible bytes), where `level` would gain next to nothing,
    /// and redone at `level` otherwise.
    pub probe_level: i32,
    pub large_frame: u32,
    /// Target bytes per patch segment and per data frame.
    pub segment: u32,
    /// Base bytes taken on each side of the proportional offset.
    pub slack: u32,
    /// Files smaller than this are sent literally rather than patched.
    pub min_patch: u64,
    /// Patched files whose target and base are both at most this size are
    /// patched in groups (one frame against their base files, up to half
    /// the window cap of base files and `large_frame` of output) rather
    /// than one frame each.
    pub group_file_max: u64,
    /// New files up to this size travel inline in the control stream;
    /// larger ones in their own frames.
    pub inline_max: u64,
    /// Largest control-stream prefix (bases' skeletons) the delta may ask
    /// for; keep it ≤ the devices' `Limits::max_prefix`.
    pub max_prefix: u32,
}

impl Default for EncodeOptions {
    /// 8 MiB segments with 4 MiB slack: a 16 MiB window cap (DELTA.md).
    fn default() -> Self {
        Self {
            level: 19,
            probe_level: 6,
            large_frame: 4 << 20,
            segment: 8 << 20,
            slack: 4 << 20,
            min_patch: 256,
            group_file_max: 1 << 20,
            inline_max: 1 << 20,
            max_prefix: 8 << 20,
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
    /// Bytes of the control stream's prefix (bases' skeletons).
    pub prefix_len: u32,
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

fn zstd_err(message: &'static str) -> impl Fn(usize) -> EncodeError {
    move |_| EncodeError::Zstd { message }
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
    if bases.len() > super::format::MAX_BASES as usize {
        return Err(EncodeError::TooManyBases { count: bases.len() });
    }
    let mut indexes = Vec::with_capacity(bases.len());
    let mut skeletons = Vec::with_capacity(bases.len());
    for (index, base) in bases.iter_mut().enumerate() {
        let read = |source| EncodeError::ReadBase { index, source };
        base.seek(SeekFrom::Start(0)).map_err(read)?;
        let (i, s) = index_and_skeleton(&mut *base).map_err(read)?;
        indexes.push(i);
        // A skeleton over the cap can never be in the prefix: not kept.
        skeletons.push((s.len() <= opts.max_prefix as usize).then_some(s));
    }
    let read = |source| EncodeError::ReadTarget { source };
    target.seek(SeekFrom::Start(0)).map_err(read)?;
    let wanted = index_tar(&mut target).map_err(read)?;
    target.seek(SeekFrom::Start(0)).map_err(read)?;
    let matcher = Matcher::new(&indexes);
    let prefix_bases = choose_prefix(&matcher, &indexes, &wanted, &skeletons, opts);
    let prefix: Vec<u8> = prefix_bases
        .iter()
        .filter_map(|i| skeletons[*i as usize].as_ref())
        .flat_map(|s| s.iter().copied())
        .collect();
    drop(skeletons);
    let header = Header {
        target: wanted.diff_id,
        target_size: wanted.size,
        bases: indexes.iter().map(|i| i.diff_id).collect(),
        window_cap,
        prefix_bases,
        prefix_len: u32::try_from(prefix.len()).unwrap_or(u32::MAX),
        prefix_sha: Sha256::digest(&prefix).into(),
    };
    let ctl = Ctl::new(&prefix, control_window_log(&prefix, &wanted), opts.level)?;
    let mut enc = Encoder {
        out: Counting { out, count: 0 },
        opts: *opts,
        matcher,
        indexes: &indexes,
        bases,
        ctl,
        current_base: 0,
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
        prefix_len: header.prefix_len,
    })
}

/// The bases whose skeletons make the prefix: those the target's files are
/// rebuilt from, most used first while they fit `max_prefix` (a skeleton
/// is taken whole or not at all), then ordered least used first so the
/// most used one sits nearest the control stream.
fn choose_prefix(
    matcher: &Matcher,
    indexes: &[TarIndex],
    wanted: &TarIndex,
    skeletons: &[Option<Vec<u8>>],
    opts: &EncodeOptions,
) -> Vec<u32> {
    let mut uses = vec![0u64; indexes.len()];
    for f in &wanted.files {
        if let Some((r, _)) = matcher.find(indexes, f) {
            uses[r.base] += 1;
        }
    }
    let mut ranked: Vec<usize> = (0..indexes.len()).filter(|i| uses[*i] > 0).collect();
    ranked.sort_by_key(|i| std::cmp::Reverse(uses[*i]));
    let mut total = 0usize;
    let mut chosen = Vec::new();
    for i in ranked {
        let Some(len) = skeletons[i].as_ref().map(Vec::len) else {
            continue;
        };
        if total + len <= opts.max_prefix as usize {
            total += len;
            chosen.push(i);
        }
    }
    chosen.reverse();
    chosen.into_iter().map(|i| i as u32).collect()
}

/// A window covering the prefix and the control stream (estimated as the
/// target's bytes outside file content plus 128 bytes per file), capped.
fn control_window_log(prefix: &[u8], wanted: &TarIndex) -> u32 {
    let content: u64 = wanted.files.iter().map(|f| f.size).sum();
    let estimate = (wanted.size - content) + 128 * wanted.files.len() as u64;
    let span = (prefix.len() as u64 + estimate).max(1 << 10);
    (64 - (span - 1).leading_zeros()).clamp(10, CONTROL_WINDOW_LOG)
}

/// The base file a target file is rebuilt from, and whether it is
/// identical (copy) rather than similar (patch).
type Found = Option<(BaseRef, bool)>;

struct Counting<W> {
    out: W,
    count: u64,
}

/// The control stream being written: ops not yet compressed, the current
/// run of inline bytes, and compressed bytes not yet sent as a chunk.
struct Ctl<'p> {
    cctx: CCtx<'p>,
    ops: Vec<u8>,
    run: RawRun,
    compressed: Vec<u8>,
}

impl<'p> Ctl<'p> {
    fn new(prefix: &'p [u8], window_log: u32, level: i32) -> Result<Self, EncodeError> {
        let mut cctx = CCtx::create();
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(zstd_err("level"))?;
        cctx.set_parameter(CParameter::WindowLog(window_log))
            .map_err(zstd_err("window log"))?;
        cctx.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd_err("checksum"))?;
        if !prefix.is_empty() {
            cctx.ref_prefix(prefix).map_err(zstd_err("ref prefix"))?;
        }
        Ok(Self {
            cctx,
            ops: Vec::new(),
            run: RawRun::default(),
            compressed: Vec::new(),
        })
    }

    /// Compresses the pending ops; with `Flush` or `End`, until zstd has
    /// emitted everything.
    fn pump(&mut self, directive: ZSTD_EndDirective) -> Result<(), EncodeError> {
        let mut input = InBuffer::around(&self.ops);
        loop {
            self.compressed.reserve(RAW_CHUNK * 2);
            let pos = self.compressed.len();
            let mut out = OutBuffer::around_pos(&mut self.compressed, pos);
            let left = self
                .cctx
                .compress_stream2(&mut out, &mut input, directive)
                .map_err(zstd_err("compress control stream"))?;
            let consumed = input.pos() == self.ops.len();
            let done = match directive {
                ZSTD_EndDirective::ZSTD_e_continue => consumed,
                _ => consumed && left == 0,
            };
            if done {
                break;
            }
        }
        self.ops.clear();
        Ok(())
    }
}

struct Encoder<'a, 'p, B, W> {
    out: Counting<W>,
    opts: EncodeOptions,
    matcher: Matcher,
    indexes: &'a [TarIndex],
    bases: &'a mut [B],
    ctl: Ctl<'p>,
    current_base: usize,
    /// Bytes by copy, patch, raw/literal.
    stats: [u64; 3],
}

impl<B: Read + Seek, W: Write> Encoder<'_, '_, B, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.out
            .out
            .write_all(bytes)
            .map_err(|source| EncodeError::Write { source })?;
        self.out.count += bytes.len() as u64;
        Ok(())
    }

    /// Sends the compressed control bytes so far as one chunk.
    fn chunk(&mut self) -> Result<(), EncodeError> {
        if self.ctl.compressed.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.ctl.compressed);
        self.put(&len32(bytes.len()).to_le_bytes())?;
        self.put(&bytes)?;
        self.ctl.compressed = bytes;
        self.ctl.compressed.clear();
        Ok(())
    }

    /// Compresses (and sends) pending control bytes once there are many.
    fn settle(&mut self) -> Result<(), EncodeError> {
        if self.ctl.ops.len() >= 4 * RAW_CHUNK {
            self.ctl.pump(ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        if self.ctl.compressed.len() >= 16 * RAW_CHUNK {
            self.chunk()?;
        }
        Ok(())
    }

    /// Ends the inline run and appends `op` to the control stream.
    fn op(&mut self, op: &[u8]) -> Result<(), EncodeError> {
        self.ctl.run.finish(&mut self.ctl.ops);
        self.ctl.ops.extend_from_slice(op);
        self.settle()
    }

    /// Appends `op` (which ends with a frame length), flushes the control
    /// stream into a chunk, then sends `frame`.
    fn op_with_frame(&mut self, op: &[u8], frame: &[u8]) -> Result<(), EncodeError> {
        self.ctl.run.finish(&mut self.ctl.ops);
        self.ctl.ops.extend_from_slice(op);
        self.ctl.pump(ZSTD_EndDirective::ZSTD_e_flush)?;
        self.chunk()?;
        self.put(frame)
    }

    fn set_base(&mut self, base: usize) -> Result<(), EncodeError> {
        if base != self.current_base {
            let mut op = vec![OP_BASE];
            op.extend_from_slice(&len32(base).to_le_bytes());
            self.op(&op)?;
            self.current_base = base;
        }
        Ok(())
    }

    /// What each target file becomes, and the groups of small patched
    /// files (indexes into `wanted.files`; a group is sent where its first
    /// file is).
    fn plan(&self, wanted: &TarIndex) -> (Vec<Found>, Vec<Vec<usize>>) {
        let found: Vec<_> = wanted
            .files
            .iter()
            .map(|f| {
                (f.size >= self.opts.min_patch)
                    .then(|| self.matcher.find(self.indexes, f))
                    .flatten()
            })
            .collect();
        // Within the device's group limits (half the window cap each way),
        // and no larger than a frame that gets the full level.
        let half = u64::from(self.opts.segment / 2 + self.opts.slack);
        let max_out = half.min(self.opts.large_frame.into());
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let (mut out, mut base, mut group_base) = (0u64, 0u64, usize::MAX);
        for (i, f) in wanted.files.iter().enumerate() {
            let Some((r, false)) = found[i] else { continue };
            let b = self.indexes[r.base].files[r.file].size;
            let most = self.opts.group_file_max;
            if f.size > most.min(max_out) || b > most.min(half) {
                continue;
            }
            let fits = groups.last().is_some_and(|g| {
                r.base == group_base
                    && out + f.size <= max_out
                    && base + b <= half
                    && g.len() < MAX_GROUP_FILES as usize
            });
            if !fits {
                groups.push(Vec::new());
                (out, base, group_base) = (0, 0, r.base);
            }
            out += f.size;
            base += b;
            if let Some(g) = groups.last_mut() {
                g.push(i);
            }
        }
        (found, groups)
    }

    fn body<T: Read + Seek>(
        &mut self,
        target: &mut T,
        wanted: &TarIndex,
    ) -> Result<(), EncodeError> {
        let (found, groups) = self.plan(wanted);
        let mut grouped = vec![false; wanted.files.len()];
        let mut starts = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            starts.insert(members[0], g);
            for m in members {
                grouped[*m] = true;
            }
        }
        let mut pos = 0u64;
        for (i, f) in wanted.files.iter().enumerate() {
            self.inline(target, f.offset - pos)?;
            if let Some(g) = starts.get(&i) {
                self.group_op(target, wanted, &groups[*g], &found)?;
            }
            match found[i] {
                _ if grouped[i] => {
                    self.op(&[OP_TAKE])?;
                    skip(target, f.size)?;
                }
                Some((r, true)) => {
                    self.copy_op(r, f)?;
                    skip(target, f.size)?;
                }
                Some((r, false)) => self.patch_op(target, r, f)?,
                None if f.size <= self.opts.inline_max => self.inline(target, f.size)?,
                None => self.data_ops(target, f.size)?,
            }
            pos = f.offset + f.size;
        }
        self.inline(target, wanted.size - pos)?;
        self.ctl.run.finish(&mut self.ctl.ops);
        self.ctl.ops.push(OP_END);
        self.ctl.pump(ZSTD_EndDirective::ZSTD_e_end)?;
        self.chunk()?;
        self.out
            .out
            .flush()
            .map_err(|source| EncodeError::Write { source })
    }

    /// Moves `len` target bytes into the control stream's inline run.
    fn inline<T: Read>(&mut self, target: &mut T, len: u64) -> Result<(), EncodeError> {
        let mut left = len;
        let mut buf = vec![0u8; RAW_CHUNK.min(len as usize)];
        while left > 0 {
            let take = left.min(buf.len() as u64) as usize;
            target
                .read_exact(&mut buf[..take])
                .map_err(|source| EncodeError::ReadTarget { source })?;
            self.ctl.run.push(&buf[..take], &mut self.ctl.ops);
            left -= take as u64;
            self.settle()?;
        }
        self.stats[2] += len;
        Ok(())
    }

    /// A large new file: `Data` ops of at most one segment each.
    fn data_ops<T: Read>(&mut self, target: &mut T, len: u64) -> Result<(), EncodeError> {
        let mut left = len;
        let mut buf = Vec::new();
        while left > 0 {
            let take = left.min(u64::from(self.opts.segment)) as usize;
            buf.resize(take, 0);
            target
                .read_exact(&mut buf)
                .map_err(|source| EncodeError::ReadTarget { source })?;
            let frame = self.compress(&buf, &[])?;
            let mut op = vec![OP_DATA];
            op.extend_from_slice(&len32(take).to_le_bytes());
            op.extend_from_slice(&len32(frame.len()).to_le_bytes());
            self.op_with_frame(&op, &frame)?;
            left -= take as u64;
        }
        self.stats[2] += len;
        Ok(())
    }

    /// A `Group` op: the members' base files and sizes, then one frame of
    /// their target contents (read by seeking, then back) against their
    /// base files.
    fn group_op<T: Read + Seek>(
        &mut self,
        target: &mut T,
        wanted: &TarIndex,
        members: &[usize],
        found: &[Found],
    ) -> Result<(), EncodeError> {
        let read_target = |source| EncodeError::ReadTarget { source };
        let here = target.stream_position().map_err(read_target)?;
        let mut op = vec![OP_GROUP];
        op.extend_from_slice(&len32(members.len()).to_le_bytes());
        let (mut data, mut prefix) = (Vec::new(), Vec::new());
        let mut base_index = 0;
        for m in members {
            let Some((r, _)) = found[*m] else { continue };
            base_index = r.base;
            let f = &wanted.files[*m];
            let b = &self.indexes[r.base].files[r.file];
            put_file_fields(&mut op, &b.path, b.size, &b.sha);
            op.extend_from_slice(&f.size.to_le_bytes());
            let start = data.len();
            data.resize(start + f.size as usize, 0);
            target
                .seek(SeekFrom::Start(f.offset))
                .map_err(read_target)?;
            target.read_exact(&mut data[start..]).map_err(read_target)?;
            let start = prefix.len();
            prefix.resize(start + b.size as usize, 0);
            let read_base = |source| EncodeError::ReadBase {
                index: r.base,
                source,
            };
            let src = &mut self.bases[r.base];
            src.seek(SeekFrom::Start(b.offset)).map_err(read_base)?;
            src.read_exact(&mut prefix[start..]).map_err(read_base)?;
        }
        target.seek(SeekFrom::Start(here)).map_err(read_target)?;
        self.set_base(base_index)?;
        let frame = self.compress(&data, &prefix)?;
        op.extend_from_slice(&len32(data.len()).to_le_bytes());
        op.extend_from_slice(&len32(frame.len()).to_le_bytes());
        self.op_with_frame(&op, &frame)?;
        self.stats[1] += data.len() as u64;
        Ok(())
    }

    fn copy_op(&mut self, r: BaseRef, f: &TarFile) -> Result<(), EncodeError> {
        self.set_base(r.base)?;
        let path = self.indexes[r.base].files[r.file].path.clone();
        let mut op = vec![OP_COPY];
        put_file_fields(&mut op, &path, f.size, &f.sha);
        self.op(&op)?;
        self.stats[0] += f.size;
        Ok(())
    }

    fn patch_op<T: Read>(
        &mut self,
        target: &mut T,
        r: BaseRef,
        f: &TarFile,
    ) -> Result<(), EncodeError> {
        self.set_base(r.base)?;
        let base = self.indexes[r.base].files[r.file].clone();
        let seg = u64::from(self.opts.segment);
        let count = f.size.div_ceil(seg);
        let mut op = vec![OP_PATCH];
        put_file_fields(&mut op, &base.path, base.size, &base.sha);
        op.extend_from_slice(&f.size.to_le_bytes());
        op.extend_from_slice(&len32(count as usize).to_le_bytes());
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
            op.extend_from_slice(&b0.to_le_bytes());
            op.extend_from_slice(&len32(base_buf.len()).to_le_bytes());
            // The whole base file is checked against its SHA-256 above;
            // a range of a larger file carries its own.
            if b_len != base.size {
                op.extend_from_slice(&Sha256::digest(&base_buf));
            }
            op.extend_from_slice(&len32(out_len).to_le_bytes());
            op.extend_from_slice(&len32(frame.len()).to_le_bytes());
            self.op_with_frame(&op, &frame)?;
            op.clear();
        }
        self.stats[1] += f.size;
        Ok(())
    }

    /// One zstd frame of `data`, with `prefix` as ref prefix (patch-from),
    /// probing a large frame at a fast level first (`EncodeOptions`).
    fn compress(&mut self, data: &[u8], prefix: &[u8]) -> Result<Vec<u8>, EncodeError> {
        if data.len() > self.opts.large_frame as usize && self.opts.probe_level < self.opts.level {
            let probe = compress_at(data, prefix, self.opts.probe_level)?;
            if probe.len() * 16 <= data.len() || probe.len() * 10 >= data.len() * 9 {
                return Ok(probe);
            }
        }
        compress_at(data, prefix, self.opts.level)
    }
}

/// One zstd frame of `data` at `level`, with `prefix` as ref prefix.
fn compress_at(data: &[u8], prefix: &[u8], level: i32) -> Result<Vec<u8>, EncodeError> {
    let span = (data.len() + prefix.len()).max(1 << 10) as u64;
    let window_log = (64 - (span - 1).leading_zeros()).clamp(10, 30);
    // A ref prefix borrows for the context's lifetime: one per frame.
    let mut c = CCtx::create();
    if !prefix.is_empty() {
        c.ref_prefix(prefix).map_err(zstd_err("ref prefix"))?;
    }
    c.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zstd_err("level"))?;
    c.set_parameter(CParameter::WindowLog(window_log))
        .map_err(zstd_err("window log"))?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(span > 8 << 20))
        .map_err(zstd_err("long distance matching"))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(zstd_err("content size"))?;
    c.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(zstd_err("checksum"))?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut frame, data)
        .map_err(zstd_err("compress"))?;
    Ok(frame)
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
