//! Replaying a layer's skeleton over its own unpacked files: the exact
//! layer tar again, checked against the layer's diff_id. A device uses it
//! to re-verify a snapshot long after it was unpacked (`fleet-agent fsck`):
//! every indexed file's content is read back, and the tar headers, links
//! and small entries come from the skeleton itself.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::apply::Applied;
use super::bases::BaseFiles;
use super::error::DeltaError;
use super::format::{MAX_PATH_BYTES, OP_COPY, OP_RAW, RAW_CHUNK, path_is_safe};
use crate::Digest;

/// Rebuilds the tar of layer `diff_id` from its skeleton (as written by
/// [`super::skeleton`]) and the layer's files in `files`, writing it to
/// `out`. Fails at the first file that is missing or whose size or SHA-256
/// differs from the skeleton's (`BaseOpen`, `BaseRead`, `BaseMismatch`),
/// on a malformed skeleton, and when the whole does not hash to `diff_id`
/// (`HashMismatch`: the skeleton itself was damaged). A skeleton has only
/// `Raw` and `Copy` ops and no `End`: it ends where its bytes end.
pub fn replay_skeleton<R: Read, B: BaseFiles, W: Write>(
    skeleton: R,
    diff_id: &Digest,
    files: &B,
    out: W,
) -> Result<Applied, DeltaError> {
    let mut r = Replay {
        input: skeleton,
        pos: 0,
        out,
        hasher: Sha256::new(),
        written: 0,
        buf: vec![0; RAW_CHUNK],
    };
    loop {
        let offset = r.pos;
        let mut tag = [0u8; 1];
        match r.input.read(&mut tag) {
            Ok(0) => break,
            Ok(_) => r.pos += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(DeltaError::ReadDelta { offset, source }),
        }
        match tag[0] {
            OP_RAW => r.raw()?,
            OP_COPY => r.copy(offset, diff_id, files)?,
            tag => return Err(DeltaError::UnknownOp { offset, tag }),
        }
    }
    let computed = Digest::from_sha256(r.hasher.finalize().into());
    if &computed != diff_id {
        return Err(DeltaError::HashMismatch {
            expected: diff_id.clone(),
            computed,
        });
    }
    r.out
        .flush()
        .map_err(|source| DeltaError::WriteOutput { source })?;
    Ok(Applied {
        bytes: r.written,
        sha256: computed,
    })
}

struct Replay<R, W> {
    input: R,
    pos: u64,
    out: W,
    hasher: Sha256,
    written: u64,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> Replay<R, W> {
    fn exact(&mut self, n: usize) -> Result<(), DeltaError> {
        let offset = self.pos;
        self.input
            .read_exact(&mut self.buf[..n])
            .map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => DeltaError::Truncated { offset },
                _ => DeltaError::ReadDelta { offset, source },
            })?;
        self.pos += n as u64;
        Ok(())
    }

    fn emit(&mut self, n: usize) -> Result<(), DeltaError> {
        self.hasher.update(&self.buf[..n]);
        self.out
            .write_all(&self.buf[..n])
            .map_err(|source| DeltaError::WriteOutput { source })?;
        self.written += n as u64;
        Ok(())
    }

    fn raw(&mut self) -> Result<(), DeltaError> {
        self.exact(4)?;
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len as usize > RAW_CHUNK {
            return Err(DeltaError::OverLimit {
                field: "raw_len",
                value: len.into(),
                max: RAW_CHUNK as u64,
            });
        }
        self.exact(len as usize)?;
        self.emit(len as usize)
    }

    /// A `Copy`: path, size, SHA-256; the file read back whole, exactly
    /// `size` bytes, hashing to the recorded SHA-256.
    fn copy<B: BaseFiles>(
        &mut self,
        offset: u64,
        layer: &Digest,
        files: &B,
    ) -> Result<(), DeltaError> {
        self.exact(2)?;
        let len = u16::from_le_bytes([self.buf[0], self.buf[1]]) as usize;
        if len > MAX_PATH_BYTES {
            return Err(DeltaError::OverLimit {
                field: "path_len",
                value: len as u64,
                max: MAX_PATH_BYTES as u64,
            });
        }
        self.exact(len)?;
        let path =
            String::from_utf8(self.buf[..len].to_vec()).map_err(|e| DeltaError::UnsafePath {
                offset,
                path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            })?;
        if !path_is_safe(&path) {
            return Err(DeltaError::UnsafePath { offset, path });
        }
        self.exact(40)?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&self.buf[..8]);
        let size = u64::from_le_bytes(size);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&self.buf[8..40]);
        let mismatch = || DeltaError::BaseMismatch {
            base: layer.clone(),
            path: path.clone(),
        };
        let mut file = files
            .open(layer, &path)
            .map_err(|source| DeltaError::BaseOpen {
                base: layer.clone(),
                path: path.clone(),
                source,
            })?;
        let read_err = |source| DeltaError::BaseRead {
            base: layer.clone(),
            path: path.clone(),
            source,
        };
        let mut file_hash = Sha256::new();
        let mut left = size;
        while left > 0 {
            let n = (left.min(self.buf.len() as u64)) as usize;
            let got = file.read(&mut self.buf[..n]).map_err(read_err)?;
            if got == 0 {
                return Err(mismatch());
            }
            file_hash.update(&self.buf[..got]);
            self.emit(got)?;
            left -= got as u64;
        }
        let mut one = [0u8; 1];
        if file.read(&mut one).map_err(read_err)? != 0 {
            return Err(mismatch());
        }
        if <[u8; 32]>::from(file_hash.finalize()) != sha {
            return Err(mismatch());
        }
        Ok(())
    }
}
