//! One pass over a layer tar: its diff_id, size, and where each regular
//! file's content lies (byte offsets inside the tar) with its SHA-256.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::format::{normalise_path, path_is_safe};

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

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Indexes the tar read from `reader` (which must be at its start). Files
/// whose path is not UTF-8 or not safe, and non-regular entries, are left
/// out: their bytes travel verbatim.
pub(crate) fn index_tar<R: Read>(reader: R) -> io::Result<TarIndex> {
    let mut hashing = Hashing {
        inner: reader,
        hasher: Sha256::new(),
        read: 0,
    };
    let mut files = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
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
            let mut hasher = Sha256::new();
            let copied = io::copy(&mut entry, &mut hasher)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tar entry shorter than its header says",
                ));
            }
            files.push(TarFile {
                path,
                offset,
                size,
                sha: hasher.finalize().into(),
            });
        }
    }
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(TarIndex {
        diff_id: hashing.hasher.finalize().into(),
        size: hashing.read,
        files,
    })
}
