//! One pass over a layer tar: its diff_id, size, where each regular file's
//! content lies (byte offsets inside the tar) with its SHA-256, and
//! optionally its *skeleton* (protocol/DELTA.md, "Skeletons").

use std::cell::RefCell;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::format::{OP_COPY, OP_RAW, RAW_CHUNK, normalise_path, path_is_safe};
use crate::Digest;

/// A regular file's content inside a tar.
#[derive(Debug, Clone)]
pub(crate) struct TarFile {
    pub path: String,
    /// Offset of the first content byte in the tar.
    pub offset: u64,
    pub size: u64,
    pub sha: [u8; 32],
}

#[derive(Debug, Clone)]
pub(crate) struct TarIndex {
    pub diff_id: [u8; 32],
    pub size: u64,
    /// In tar order (ascending offsets).
    pub files: Vec<TarFile>,
}

/// What [`skeleton`] wrote and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skeleton {
    /// Bytes of skeleton written.
    pub len: u64,
    /// SHA-256 of the skeleton.
    pub sha256: Digest,
    /// SHA-256 and length of the tar read (its diff_id).
    pub diff_id: Digest,
    pub tar_bytes: u64,
}

/// Appends a `Raw` op carrying `bytes` (≤ [`RAW_CHUNK`]).
pub(crate) fn put_raw(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(OP_RAW);
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the (path, size, sha) fields shared by `Copy` and `Patch`.
pub(crate) fn put_file_fields(out: &mut Vec<u8>, path: &str, size: u64, sha: &[u8; 32]) {
    let path_len = u16::try_from(path.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&path_len.to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(sha);
}

/// A run of inline bytes, cut into `Raw` ops of [`RAW_CHUNK`] bytes
/// counted from the start of the run.
#[derive(Default)]
pub(crate) struct RawRun {
    buf: Vec<u8>,
}

impl RawRun {
    pub(crate) fn push(&mut self, mut bytes: &[u8], ops: &mut Vec<u8>) {
        while !bytes.is_empty() {
            let take = bytes.len().min(RAW_CHUNK - self.buf.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == RAW_CHUNK {
                put_raw(ops, &self.buf);
                self.buf.clear();
            }
        }
    }

    /// Ends the run (before any other op).
    pub(crate) fn finish(&mut self, ops: &mut Vec<u8>) {
        if !self.buf.is_empty() {
            put_raw(ops, &self.buf);
            self.buf.clear();
        }
    }
}

/// Writes the skeleton of the layer tar read from `reader` to `out`: the
/// control stream of the delta that rebuilds this layer from itself (a
/// `Raw` op for every byte that is not regular-file content, a `Copy` op
/// naming path, size and SHA-256 for every regular file). The server and
/// the device both compute it with this function, so they agree byte for
/// byte. Reads `reader` to its end; needs no `Seek`.
pub fn skeleton<R: Read, W: Write>(reader: R, mut out: W) -> io::Result<Skeleton> {
    let mut sink = HashingSink {
        out: &mut out,
        hasher: Sha256::new(),
        len: 0,
    };
    let index = walk(reader, Some(&mut sink), false)?;
    let (len, sha) = (sink.len, sink.hasher.finalize());
    out.flush()?;
    Ok(Skeleton {
        len,
        sha256: Digest::from_sha256(sha.into()),
        diff_id: Digest::from_sha256(index.diff_id),
        tar_bytes: index.size,
    })
}

/// Indexes the tar read from `reader` (which must be at its start). Files
/// whose path is not UTF-8 or not safe, empty files and non-regular
/// entries are left out: their bytes travel verbatim.
pub(crate) fn index_tar<R: Read>(reader: R) -> io::Result<TarIndex> {
    walk(reader, None, true)
}

/// [`index_tar`] and the skeleton in memory.
pub(crate) fn index_and_skeleton<R: Read>(reader: R) -> io::Result<(TarIndex, Vec<u8>)> {
    let mut skel = Vec::new();
    let index = walk(reader, Some(&mut skel), true)?;
    Ok((index, skel))
}

struct HashingSink<W> {
    out: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The walk's state, shared by the reader the tar crate pulls from and the
/// loop over entries.
struct State<'w> {
    hasher: Sha256,
    pos: u64,
    /// Bytes before this position are file content (not recorded).
    skip_end: u64,
    run: RawRun,
    ops: Vec<u8>,
    out: Option<&'w mut dyn Write>,
}

impl State<'_> {
    fn drain(&mut self) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            out.write_all(&self.ops)?;
        }
        self.ops.clear();
        Ok(())
    }
}

struct Tee<'s, 'w, R> {
    inner: R,
    state: &'s RefCell<State<'w>>,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.borrow_mut();
        let bytes = &buf[..n];
        s.hasher.update(bytes);
        let start = s.pos;
        s.pos += n as u64;
        if s.out.is_some() && s.pos > s.skip_end {
            let from = s.skip_end.saturating_sub(start) as usize;
            let s = &mut *s;
            s.run.push(&bytes[from..], &mut s.ops);
            if s.ops.len() >= RAW_CHUNK {
                s.drain()?;
            }
        }
        Ok(n)
    }
}

fn walk<R: Read>(reader: R, out: Option<&mut dyn Write>, keep_files: bool) -> io::Result<TarIndex> {
    let state = RefCell::new(State {
        hasher: Sha256::new(),
        pos: 0,
        skip_end: 0,
        run: RawRun::default(),
        ops: Vec::new(),
        out,
    });
    let mut tee = Tee {
        inner: reader,
        state: &state,
    };
    let mut files = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut tee);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            let size = entry.size();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) || size == 0 {
                continue;
            }
            let path = match entry.path()?.to_str() {
                Some(p) => normalise_path(p),
                None => continue,
            };
            if !path_is_safe(&path) {
                continue;
            }
            let offset = entry.raw_file_position();
            {
                let mut s = state.borrow_mut();
                if s.pos != offset {
                    return Err(io::Error::other("tar reader is not at the file content"));
                }
                s.skip_end = offset + size;
            }
            let mut hasher = Sha256::new();
            let copied = io::copy(&mut entry, &mut hasher)?;
            if copied != size {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let sha: [u8; 32] = hasher.finalize().into();
            let mut s = state.borrow_mut();
            let s = &mut *s;
            if s.out.is_some() {
                s.run.finish(&mut s.ops);
                s.ops.push(OP_COPY);
                put_file_fields(&mut s.ops, &path, size, &sha);
                s.drain()?;
            }
            if keep_files {
                files.push(TarFile {
                    path,
                    offset,
                    size,
                    sha,
                });
            }
        }
    }
    io::copy(&mut tee, &mut io::sink())?;
    let mut s = state.borrow_mut();
    let s = &mut *s;
    if s.out.is_some() {
        s.run.finish(&mut s.ops);
        s.drain()?;
    }
    Ok(TarIndex {
        diff_id: std::mem::take(&mut s.hasher).finalize().into(),
        size: s.pos,
        files,
    })
}
