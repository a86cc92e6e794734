//! Device side: rebuild a target layer tar from a delta and base files,
//! streaming, memory bounded by the delta's segment window.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};

use super::bases::BaseFiles;
use super::control::{Control, Input};
pub use super::error::DeltaError;
use super::format::{
    Limits, MAGIC, MAX_BASES, MAX_GROUP_FILES, MAX_PATH_BYTES, OP_BASE, OP_COPY, OP_DATA, OP_END,
    OP_GROUP, OP_PATCH, OP_RAW, OP_TAKE, RAW_CHUNK, VERSION, path_is_safe, window_log_for,
};
use crate::Digest;

const CHUNK: usize = 64 << 10;

/// What [`apply`] rebuilt: every byte it wrote and their SHA-256, equal to
/// the expected diff_id (apply fails otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub bytes: u64,
    pub sha256: Digest,
}

/// Rebuilds the layer `expected` (its diff_id) from `delta` and `bases`
/// into `out`. Refuses a delta for another target, over `limits`, or
/// naming a base layer `bases` lacks before writing a byte.
pub fn apply<R: Read, B: BaseFiles, W: Write>(
    delta: R,
    bases: &B,
    out: W,
    expected: &Digest,
    limits: &Limits,
) -> Result<Applied, DeltaError> {
    let mut input = Input::new(delta);
    let header = parse_header(&mut input, limits)?;
    check_header(&header, bases, expected)?;
    let prefix = load_prefix(&header, bases)?;
    let mut applier = Applier {
        input,
        ctl: Control::new(&prefix)?,
        current_base: 0,
        bases,
        out: Output {
            out,
            hasher: Sha256::new(),
            written: 0,
            declared: header.target_size,
        },
        header,
        max_segments: limits.max_segments,
        chunk: vec![0; CHUNK],
        base_buf: Vec::new(),
        group: Group::default(),
    };
    applier.run(expected)
}

/// A delta's header as read by [`read_header`]: what it rebuilds, from
/// which base layers, with which window. Lets the agent check disk space
/// and base availability before fetching the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The diff_id the delta claims to rebuild.
    pub target: Digest,
    pub target_size: u64,
    pub bases: Vec<Digest>,
    pub window_cap: u32,
    /// Indexes into `bases` of the layers whose skeletons make the control
    /// stream's prefix, in order.
    pub prefix_bases: Vec<u32>,
    pub prefix_len: u32,
    pub prefix_sha: [u8; 32],
}

/// Reads and checks a delta's header against `limits` (magic, version,
/// window cap, base count, target size).
pub fn read_header<R: Read>(delta: R, limits: &Limits) -> Result<DeltaHeader, DeltaError> {
    parse_header(&mut Input::new(delta), limits)
}

/// The control stream's prefix: the skeletons the header names, checked
/// against its length and SHA-256 before anything is decoded.
fn load_prefix<B: BaseFiles>(header: &DeltaHeader, bases: &B) -> Result<Vec<u8>, DeltaError> {
    let want = u64::from(header.prefix_len);
    let mut prefix = Vec::with_capacity(header.prefix_len as usize);
    for index in &header.prefix_bases {
        let base = &header.bases[*index as usize];
        let no_skeleton = |source| DeltaError::NoSkeleton {
            base: base.clone(),
            source,
        };
        let reader = bases.skeleton(base).map_err(no_skeleton)?;
        let room = want.saturating_sub(prefix.len() as u64);
        reader
            .take(room + 1)
            .read_to_end(&mut prefix)
            .map_err(no_skeleton)?;
        if prefix.len() as u64 > want {
            break;
        }
    }
    let found = prefix.len() as u64;
    if found != want || <[u8; 32]>::from(Sha256::digest(&prefix)) != header.prefix_sha {
        return Err(DeltaError::SkeletonMismatch {
            declared: header.prefix_len,
            found,
        });
    }
    Ok(prefix)
}

fn check_header<B: BaseFiles>(
    header: &DeltaHeader,
    bases: &B,
    expected: &Digest,
) -> Result<(), DeltaError> {
    if &header.target != expected {
        return Err(DeltaError::WrongTarget {
            expected: expected.clone(),
            found: header.target.clone(),
        });
    }
    match header.bases.iter().find(|b| !bases.has_layer(b)) {
        Some(diff_id) => Err(DeltaError::UnknownBase {
            diff_id: diff_id.clone(),
        }),
        None => Ok(()),
    }
}

fn parse_header<R: Read>(input: &mut Input<R>, limits: &Limits) -> Result<DeltaHeader, DeltaError> {
    let magic: [u8; 8] = input.array()?;
    if magic != MAGIC {
        return Err(DeltaError::BadMagic);
    }
    let version = u16::from_le_bytes(input.array()?);
    if version != VERSION {
        return Err(DeltaError::UnsupportedVersion { version });
    }
    let target = Digest::from_sha256(input.array()?);
    let target_size = input.u64()?;
    over_limit("target_size", target_size, limits.max_target_size)?;
    let window_cap = input.u32()?;
    if window_cap > limits.max_window {
        return Err(DeltaError::WindowOverCap {
            requested: u64::from(window_cap),
            cap: limits.max_window,
        });
    }
    let count = input.u32()?;
    over_limit(
        "bases",
        count.into(),
        limits.max_bases.min(MAX_BASES).into(),
    )?;
    let mut bases = Vec::with_capacity(count as usize);
    for _ in 0..count {
        bases.push(Digest::from_sha256(input.array()?));
    }
    let prefix_count = input.u32()?;
    over_limit("prefix_bases", prefix_count.into(), count.into())?;
    let mut prefix_bases = Vec::with_capacity(prefix_count as usize);
    for _ in 0..prefix_count {
        let offset = input.pos;
        let index = input.u32()?;
        if index >= count {
            return Err(DeltaError::BadBaseIndex {
                offset,
                index,
                count: bases.len(),
            });
        }
        prefix_bases.push(index);
    }
    let prefix_len = input.u32()?;
    over_limit("prefix_len", prefix_len.into(), limits.max_prefix.into())?;
    Ok(DeltaHeader {
        target,
        target_size,
        bases,
        window_cap,
        prefix_bases,
        prefix_len,
        prefix_sha: input.array()?,
    })
}

fn over_limit(field: &'static str, value: u64, max: u64) -> Result<(), DeltaError> {
    if value > max {
        return Err(DeltaError::OverLimit { field, value, max });
    }
    Ok(())
}

struct Applier<'b, 'p, R, B, W> {
    input: Input<R>,
    ctl: Control<'p>,
    /// Index of the base layer `Copy` and `Patch` read from.
    current_base: u32,
    bases: &'b B,
    out: Output<W>,
    header: DeltaHeader,
    max_segments: u32,
    chunk: Vec<u8>,
    base_buf: Vec<u8>,
    group: Group,
}

/// The decoded files of the current `Group`, handed out by `Take`.
#[derive(Default)]
struct Group {
    sizes: std::collections::VecDeque<u64>,
    out: Vec<u8>,
    pos: usize,
}

/// One `Patch` segment as read from the delta.
struct Segment {
    base_offset: u64,
    base_len: u32,
    base_sha: [u8; 32],
    out_len: u32,
    frame_len: u32,
}

impl<R: Read, B: BaseFiles, W: Write> Applier<'_, '_, R, B, W> {
    fn run(&mut self, expected: &Digest) -> Result<Applied, DeltaError> {
        loop {
            let offset = self.ctl.pos;
            let [tag] = self.ctl.array(&mut self.input)?;
            match tag {
                OP_RAW => self.raw()?,
                OP_DATA => {
                    let out_len = self.capped("out_len")?;
                    let frame_len = self.frame_len()?;
                    self.frame(frame_len, out_len, Sink::Output)?;
                }
                OP_COPY => self.copy(offset)?,
                OP_PATCH => self.patch(offset)?,
                OP_BASE => {
                    let index = self.ctl.u32(&mut self.input)?;
                    if index as usize >= self.header.bases.len() {
                        return Err(DeltaError::BadBaseIndex {
                            offset,
                            index,
                            count: self.header.bases.len(),
                        });
                    }
                    self.current_base = index;
                }
                OP_GROUP => self.group(offset)?,
                OP_TAKE => self.take(offset)?,
                OP_END => {
                    if !self.group.sizes.is_empty() {
                        return Err(DeltaError::FrameShape {
                            offset,
                            what: "grouped files never taken",
                        });
                    }
                    self.ctl.finish(&mut self.input)?;
                    return self.end(expected);
                }
                tag => return Err(DeltaError::UnknownOp { offset, tag }),
            }
        }
    }

    /// Inline bytes from the control stream.
    fn raw(&mut self) -> Result<(), DeltaError> {
        let len = self.ctl.u32(&mut self.input)?;
        over_limit("raw_len", len.into(), RAW_CHUNK as u64)?;
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            self.ctl.exact(&mut self.input, &mut self.chunk[..n])?;
            self.out.write(&self.chunk[..n])?;
            left -= n;
        }
        Ok(())
    }

    fn end(&mut self, expected: &Digest) -> Result<Applied, DeltaError> {
        let written = self.out.written;
        if written != self.header.target_size {
            return Err(DeltaError::SizeMismatch {
                declared: self.header.target_size,
                written,
            });
        }
        let computed = Digest::from_sha256(std::mem::take(&mut self.out.hasher).finalize().into());
        if &computed != expected {
            return Err(DeltaError::HashMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        let offset = self.input.pos;
        let mut one = [0u8; 1];
        match self.input.read(&mut one) {
            Ok(0) => {}
            Ok(_) => return Err(DeltaError::TrailingData { offset }),
            Err(source) => return Err(DeltaError::ReadDelta { offset, source }),
        }
        self.out
            .out
            .flush()
            .map_err(|source| DeltaError::WriteOutput { source })?;
        Ok(Applied {
            bytes: written,
            sha256: computed,
        })
    }

    /// A u32 length bounded by the delta's window cap.
    fn capped(&mut self, field: &'static str) -> Result<u32, DeltaError> {
        let value = self.ctl.u32(&mut self.input)?;
        over_limit(field, value.into(), self.header.window_cap.into())?;
        Ok(value)
    }

    fn frame_len(&mut self) -> Result<u32, DeltaError> {
        let value = self.ctl.u32(&mut self.input)?;
        let bound = zstd::zstd_safe::compress_bound(self.header.window_cap as usize) + 1024;
        over_limit("frame_len", value.into(), bound as u64)?;
        Ok(value)
    }

    /// Reads an op's path and opens that file of the current base layer.
    fn open_base(&mut self, offset: u64) -> Result<(Digest, String, B::File), DeltaError> {
        let base = self.header.bases[self.current_base as usize].clone();
        let len = self.ctl.u16(&mut self.input)?;
        over_limit("path_len", len.into(), MAX_PATH_BYTES as u64)?;
        let mut raw = vec![0; len as usize];
        self.ctl.exact(&mut self.input, &mut raw)?;
        let path = String::from_utf8(raw).map_err(|e| DeltaError::UnsafePath {
            offset,
            path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })?;
        if !path_is_safe(&path) {
            return Err(DeltaError::UnsafePath { offset, path });
        }
        match self.bases.open(&base, &path) {
            Ok(file) => Ok((base, path, file)),
            Err(source) => Err(DeltaError::BaseOpen { base, path, source }),
        }
    }

    /// A `Group`: reads each member's whole base file (checked against its
    /// SHA-256) into the prefix, then decodes the frame of their target
    /// contents into the group buffer.
    fn group(&mut self, offset: u64) -> Result<(), DeltaError> {
        if !self.group.sizes.is_empty() {
            return Err(DeltaError::FrameShape {
                offset,
                what: "a group before the previous one was used up",
            });
        }
        let count = self.ctl.u32(&mut self.input)?;
        over_limit("group files", count.into(), MAX_GROUP_FILES.into())?;
        let half = u64::from(self.header.window_cap / 2);
        self.base_buf.clear();
        let mut total = 0u64;
        for _ in 0..count {
            let (base, path, mut file) = self.open_base(offset)?;
            let base_size = self.ctl.u64(&mut self.input)?;
            let base_sha: [u8; 32] = self.ctl.array(&mut self.input)?;
            let size = self.ctl.u64(&mut self.input)?;
            let start = self.base_buf.len();
            over_limit("group base bytes", start as u64 + base_size, half)?;
            self.base_buf.resize(start + base_size as usize, 0);
            let mismatch = || DeltaError::BaseMismatch {
                base: base.clone(),
                path: path.clone(),
            };
            match file.read_exact(&mut self.base_buf[start..]) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(mismatch()),
                Err(source) => return Err(DeltaError::BaseRead { base, path, source }),
            }
            if <[u8; 32]>::from(Sha256::digest(&self.base_buf[start..])) != base_sha {
                return Err(mismatch());
            }
            total = total.saturating_add(size);
            self.group.sizes.push_back(size);
        }
        let out_len = self.capped("out_len")?;
        over_limit("group out_len", out_len.into(), half)?;
        let frame_len = self.frame_len()?;
        if u64::from(out_len) != total {
            return Err(DeltaError::FrameShape {
                offset,
                what: "group sizes do not add up to its output",
            });
        }
        self.group.out.clear();
        self.group.pos = 0;
        self.frame(frame_len, out_len, Sink::Group)
    }

    /// A `Take`: the next file of the current group.
    fn take(&mut self, offset: u64) -> Result<(), DeltaError> {
        let size = self.group.sizes.pop_front().ok_or(DeltaError::FrameShape {
            offset,
            what: "take without a group",
        })?;
        // The group's sizes add up to its decoded length.
        let end = self.group.pos + size as usize;
        let bytes = &self.group.out[self.group.pos..end];
        self.out.write(bytes)?;
        self.group.pos = end;
        if self.group.sizes.is_empty() {
            self.group.out = Vec::new();
        }
        Ok(())
    }

    fn copy(&mut self, offset: u64) -> Result<(), DeltaError> {
        let (base, path, mut file) = self.open_base(offset)?;
        let size = self.ctl.u64(&mut self.input)?;
        let sha: [u8; 32] = self.ctl.array(&mut self.input)?;
        let remaining_target = self.header.target_size - self.out.written;
        over_limit("copy size", size, remaining_target)?;
        let mut hasher = Sha256::new();
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let n = match file.read(&mut self.chunk[..want]) {
                Ok(0) => return Err(DeltaError::BaseMismatch { base, path }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(DeltaError::BaseRead { base, path, source }),
            };
            hasher.update(&self.chunk[..n]);
            self.out.write(&self.chunk[..n])?;
            left -= n as u64;
        }
        if <[u8; 32]>::from(hasher.finalize()) != sha {
            return Err(DeltaError::BaseMismatch { base, path });
        }
        Ok(())
    }

    fn patch(&mut self, offset: u64) -> Result<(), DeltaError> {
        let (base, path, mut file) = self.open_base(offset)?;
        let base_size = self.ctl.u64(&mut self.input)?;
        let base_sha: [u8; 32] = self.ctl.array(&mut self.input)?;
        let size = self.ctl.u64(&mut self.input)?;
        let segments = self.ctl.u32(&mut self.input)?;
        over_limit("segments", segments.into(), self.max_segments.into())?;
        let mut produced = 0u64;
        for _ in 0..segments {
            let base_offset = self.ctl.u64(&mut self.input)?;
            let base_len = self.capped("base_len")?;
            // A range that is the whole base file is checked against the
            // file's SHA-256; any other range carries its own.
            let whole = base_offset == 0 && u64::from(base_len) == base_size;
            let seg = Segment {
                base_offset,
                base_len,
                base_sha: if whole {
                    base_sha
                } else {
                    self.ctl.array(&mut self.input)?
                },
                out_len: self.capped("out_len")?,
                frame_len: self.frame_len()?,
            };
            self.load_base_range(&mut file, &seg, &base, &path)?;
            self.frame(seg.frame_len, seg.out_len, Sink::Patched)?;
            produced += u64::from(seg.out_len);
        }
        if produced != size {
            return Err(DeltaError::FrameShape {
                offset,
                what: "patch segments do not add up to the file size",
            });
        }
        Ok(())
    }

    /// Reads the segment's base range into `base_buf` and checks its hash.
    fn load_base_range(
        &mut self,
        file: &mut B::File,
        seg: &Segment,
        base: &Digest,
        path: &str,
    ) -> Result<(), DeltaError> {
        let read_err = |source| DeltaError::BaseRead {
            base: base.clone(),
            path: path.to_string(),
            source,
        };
        file.seek(SeekFrom::Start(seg.base_offset))
            .map_err(read_err)?;
        self.base_buf.clear();
        self.base_buf.resize(seg.base_len as usize, 0);
        if let Err(e) = file.read_exact(&mut self.base_buf) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(DeltaError::BaseMismatch {
                    base: base.clone(),
                    path: path.to_string(),
                });
            }
            return Err(read_err(e));
        }
        if <[u8; 32]>::from(Sha256::digest(&self.base_buf)) != seg.base_sha {
            return Err(DeltaError::BaseMismatch {
                base: base.clone(),
                path: path.to_string(),
            });
        }
        Ok(())
    }

    /// Decodes one zstd frame of exactly `frame_len` bytes that must yield
    /// exactly `out_len` bytes, with `base_buf` as ref prefix unless `sink`
    /// is the plain output.
    fn frame(&mut self, frame_len: u32, out_len: u32, sink: Sink) -> Result<(), DeltaError> {
        let offset = self.input.pos;
        if !self.ctl.at_chunk_boundary() {
            return Err(DeltaError::FrameShape {
                offset,
                what: "data frame inside a control chunk",
            });
        }
        let prefix: &[u8] = match sink {
            Sink::Output => &[],
            Sink::Patched | Sink::Group => &self.base_buf,
        };
        let (out, group) = (&mut self.out, &mut self.group.out);
        let window_log = window_log_for(self.header.window_cap);
        // The frame must declare its content size (= out_len): zstd then
        // sizes its buffer by that, not by the window (DELTA.md, memory).
        let mut head = [0u8; 18];
        let head_len = (frame_len as usize).min(head.len());
        self.input.exact(&mut head[..head_len])?;
        match zstd::zstd_safe::get_frame_content_size(&head[..head_len]) {
            Ok(Some(n)) if n == u64::from(out_len) => {}
            _ => {
                return Err(DeltaError::FrameShape {
                    offset,
                    what: "frame does not declare its output size",
                });
            }
        }
        let rest = (&mut self.input).take(u64::from(frame_len) - head_len as u64);
        let reader = BufReader::with_capacity(CHUNK, (&head[..head_len]).chain(rest));
        let mut produced = 0u64;
        let result = decode_into(reader, prefix, window_log, &mut self.chunk, |bytes| {
            produced += bytes.len() as u64;
            if produced > u64::from(out_len) {
                return Err(DeltaError::FrameShape {
                    offset,
                    what: "frame yields more bytes than declared",
                });
            }
            match sink {
                Sink::Group => {
                    group.extend_from_slice(bytes);
                    Ok(())
                }
                Sink::Output | Sink::Patched => out.write(bytes),
            }
        });
        match result {
            Err(Decode::Zstd(source)) if self.input.eof => {
                let _ = source;
                Err(DeltaError::Truncated {
                    offset: self.input.pos,
                })
            }
            Err(Decode::Zstd(source)) => Err(DeltaError::Frame { offset, source }),
            Err(Decode::Sink(e)) => Err(e),
            Ok(false) => Err(DeltaError::FrameShape {
                offset,
                what: "bytes left over after the frame",
            }),
            Ok(true) if produced != u64::from(out_len) => Err(DeltaError::FrameShape {
                offset,
                what: "frame yields fewer bytes than declared",
            }),
            Ok(true) => Ok(()),
        }
    }
}

/// Where a frame's bytes go, and whether `base_buf` is its prefix.
#[derive(Clone, Copy)]
enum Sink {
    /// The output, no prefix (`Data`).
    Output,
    /// The output, `base_buf` as prefix (`Patch`).
    Patched,
    /// The group buffer, `base_buf` as prefix (`Group`).
    Group,
}

enum Decode {
    Zstd(io::Error),
    Sink(DeltaError),
}

/// Streams one frame from `reader` into `sink`. `Ok(true)` when the frame
/// used up `reader` exactly.
fn decode_into<Rd: BufRead>(
    reader: Rd,
    prefix: &[u8],
    window_log: u32,
    chunk: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> Result<(), DeltaError>,
) -> Result<bool, Decode> {
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(reader, prefix)
        .map_err(Decode::Zstd)?
        .single_frame();
    dec.window_log_max(window_log).map_err(Decode::Zstd)?;
    loop {
        let n = match dec.read(chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Decode::Zstd(e)),
        };
        sink(&chunk[..n]).map_err(Decode::Sink)?;
    }
    let mut rest = dec.finish();
    let left = rest.fill_buf().map_err(Decode::Zstd)?;
    Ok(left.is_empty())
}

/// The rebuilt tar: hashed, counted and bounded by the declared size.
struct Output<W> {
    out: W,
    hasher: Sha256,
    written: u64,
    declared: u64,
}

impl<W: Write> Output<W> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), DeltaError> {
        let end = self.written.saturating_add(bytes.len() as u64);
        if end > self.declared {
            return Err(DeltaError::Overrun {
                declared: self.declared,
            });
        }
        self.hasher.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|source| DeltaError::WriteOutput { source })?;
        self.written = end;
        Ok(())
    }
}
