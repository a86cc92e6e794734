//! Safe extraction of one OCI/Docker layer blob into a snapshot directory.
//!
//! [`unpack_layer`] streams a verified blob (a file on disk) through the
//! right decompressor, hashes the uncompressed tar stream (the layer's
//! `diff_id`) while extracting it, and checks the hash at the end. Any error
//! removes the partial destination. The code is blocking: async callers run
//! it in `spawn_blocking`.
//!
//! Safety rules of the extractor:
//! - entry paths are relative: a leading `./` is dropped, an absolute path
//!   or any `..` component is refused;
//! - every directory on the way to an entry is opened with `O_NOFOLLOW`
//!   relative to its parent's descriptor, so extraction never writes through
//!   a symlink (symlinks themselves, absolute or not, are created as they
//!   are: images legitimately contain `/bin/sh -> busybox`);
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`;
//! - hard links must name a regular file already extracted from the same
//!   layer (never a symlink, never something outside the layer);
//! - character/block devices and FIFOs are refused (only OCI whiteouts,
//!   `.wh.`-named entries, are interpreted);
//! - sizes are capped by [`Limits`] (total uncompressed bytes, entries,
//!   path length, single file size), which stops decompression bombs.
//!
//! Modes are kept as in the layer, **including setuid/setgid/sticky bits**
//! (images need e.g. a setuid `su` or a sticky `/tmp`); the snapshot is only
//! ever used as a container's root filesystem, where those bits are confined
//! by the container's user namespace/capabilities. Ownership is applied when
//! the agent runs as root and skipped otherwise; mtimes are applied;
//! `user.*` and `security.capability` xattrs from PAX records are applied
//! best-effort, every other xattr (notably `trusted.overlay.*`, which would
//! let a layer forge overlayfs metadata) is ignored.
//!
//! Whiteouts are stored in one of two [`WhiteoutFormat`]s; see
//! [`whiteout`] and [`apply_snapshots_to_dir`].

mod extract;
mod fsutil;
mod guard;
mod skeleton;
mod whiteout;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use fsutil::remove_tree;
pub use whiteout::{OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX, apply_snapshots_to_dir};

/// Size caps applied while unpacking one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Cap on the uncompressed tar stream (and on the bytes written).
    pub max_total_bytes: u64,
    /// Cap on the number of tar entries.
    pub max_entries: u64,
    /// Cap on an entry's path length in bytes (each component is also
    /// limited to 255 bytes, the Linux `NAME_MAX`).
    pub max_path_len: usize,
    /// Cap on one file's size.
    pub max_file_size: u64,
    /// Cap on one metadata record (PAX extended header, GNU long name or
    /// link), which the tar parser holds in memory.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    /// 8 GiB in all, 1 million entries, 4096-byte paths, 4 GiB per file,
    /// 1 MiB per metadata record.
    fn default() -> Self {
        Self {
            max_total_bytes: 8 << 30,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_file_size: 4 << 30,
            max_metadata_bytes: 1 << 20,
        }
    }
}

/// How whiteouts and opaque directories are represented in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhiteoutFormat {
    /// overlayfs' own format, so snapshots stack directly as `lowerdir`s:
    /// a whiteout is a 0/0 character device named like the deleted entry, an
    /// opaque directory carries the xattr `trusted.overlay.opaque=y`. Needs
    /// `CAP_MKNOD` and `CAP_SYS_ADMIN` (root).
    Overlay,
    /// The OCI layer format kept on disk: an empty regular file
    /// `.wh.<name>` deletes `<name>`, a file `.wh..wh..opq` makes its
    /// directory opaque. Needs no privilege; such snapshots cannot be given to
    /// overlayfs and are stacked with [`apply_snapshots_to_dir`].
    OciMarkers,
}

impl WhiteoutFormat {
    /// [`WhiteoutFormat::Overlay`] when a 0/0 character device and a
    /// `trusted.overlay.opaque` xattr can be created inside `dir` (an existing
    /// directory on the snapshot filesystem), else
    /// [`WhiteoutFormat::OciMarkers`].
    pub fn detect(dir: &Path) -> Self {
        if whiteout::overlay_format_works(dir) {
            Self::Overlay
        } else {
            Self::OciMarkers
        }
    }
}

/// The compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// What one unpack did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    /// The verified sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    pub compression: Compression,
    pub whiteout_format: WhiteoutFormat,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Bytes written into regular files.
    pub file_bytes: u64,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Xattrs present in the layer but not applied (not allowed, or not
    /// supported by the filesystem).
    pub xattrs_skipped: u64,
}

/// Why a layer could not be unpacked. Each refusal of hostile input has its
/// own variant, naming the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer blob {path}: {source}")]
    OpenBlob { path: PathBuf, source: io::Error },
    #[error("media type {media_type:?} is not a layer media type")]
    UnsupportedMediaType { media_type: String },
    #[error("media type {media_type:?} says {declared:?} but the blob is {found:?}")]
    CompressionMismatch {
        media_type: String,
        declared: Compression,
        found: Compression,
    },
    #[error("destination {path} exists and is not an empty directory")]
    DestinationNotEmpty { path: PathBuf },
    #[error("reading the layer stream: {source}")]
    Read { source: io::Error },
    #[error("{op} {path:?} in {dest}: {source}")]
    Io {
        op: &'static str,
        path: String,
        dest: PathBuf,
        source: io::Error,
    },
    #[error("entry {path:?} has a `..` component")]
    ParentComponent { path: String },
    #[error("entry {path:?} is an absolute path")]
    AbsolutePath { path: String },
    #[error("entry {path:?} is not a valid path (empty component name, NUL or over 255 bytes)")]
    BadPath { path: String },
    #[error("entry path is {len} bytes long, over the limit of {max}")]
    PathTooLong { len: usize, max: usize },
    #[error("entry {path:?} would be written through the symlink {through:?}")]
    SymlinkInPath { path: String, through: String },
    #[error("entry {path:?} needs {through:?} to be a directory but it is not")]
    NotADirectory { path: String, through: String },
    #[error("hard link {path:?} points outside the layer: {target:?}")]
    HardlinkEscape { path: String, target: String },
    #[error("hard link {path:?} points to {target:?}, which is not a regular file of this layer")]
    HardlinkTarget { path: String, target: String },
    #[error("entry {path:?} is a {kind}, which layers may not contain")]
    SpecialFile { path: String, kind: &'static str },
    #[error("entry {path:?} has an unsupported tar entry type {kind:?}")]
    UnsupportedEntry { path: String, kind: u8 },
    #[error("whiteout {path:?} is malformed")]
    BadWhiteout { path: String },
    #[error("layer has a PAX/GNU metadata record over {max} bytes")]
    MetadataTooLarge { max: u64 },
    #[error("layer has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("layer expands past {max} bytes (decompression bomb?)")]
    TooLarge { max: u64 },
    #[error("file {path:?} is larger than {max} bytes")]
    FileTooLarge { path: String, max: u64 },
    #[error("layer diff_id is {actual}, expected {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// Unpacks `blob` into `dest` (created; it may exist only as an empty
/// directory), verifying `expected_diff_id`. Whiteouts use the format
/// [`WhiteoutFormat::detect`] finds for `dest`. On error nothing is left
/// at `dest`.
pub fn unpack_layer(
    blob: &Path,
    media_type: &str,
    expected_diff_id: &Digest,
    dest: &Path,
    limits: &Limits,
) -> Result<LayerStats, UnpackError> {
    prepare_dest(dest)?;
    let format = WhiteoutFormat::detect(dest);
    let result = unpack_into(
        blob,
        media_type,
        expected_diff_id,
        dest,
        limits,
        (format, None),
    );
    if result.is_err() {
        let _ = remove_tree(dest);
    }
    result
}

/// [`unpack_layer`] with an explicit whiteout format.
pub fn unpack_layer_as(
    blob: &Path,
    media_type: &str,
    expected_diff_id: &Digest,
    dest: &Path,
    limits: &Limits,
    format: WhiteoutFormat,
) -> Result<LayerStats, UnpackError> {
    unpack_layer_with_skeleton(
        blob,
        media_type,
        expected_diff_id,
        dest,
        limits,
        format,
        None,
    )
}

/// [`unpack_layer_as`] that also writes the layer's skeleton (protocol
/// DELTA.md) to `skeleton`, computed from the same stream on a thread. The
/// skeleton file exists afterwards only if it is complete; its failure does
/// not fail the unpack.
pub fn unpack_layer_with_skeleton(
    blob: &Path,
    media_type: &str,
    expected_diff_id: &Digest,
    dest: &Path,
    limits: &Limits,
    format: WhiteoutFormat,
    skeleton: Option<&Path>,
) -> Result<LayerStats, UnpackError> {
    prepare_dest(dest)?;
    let result = unpack_into(
        blob,
        media_type,
        expected_diff_id,
        dest,
        limits,
        (format, skeleton),
    );
    if result.is_err() {
        let _ = remove_tree(dest);
    }
    result
}

fn prepare_dest(dest: &Path) -> Result<(), UnpackError> {
    match std::fs::create_dir(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let empty = std::fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir())
                && std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_none());
            if empty {
                Ok(())
            } else {
                Err(UnpackError::DestinationNotEmpty {
                    path: dest.to_path_buf(),
                })
            }
        }
        Err(source) => Err(UnpackError::Io {
            op: "create",
            path: String::new(),
            dest: dest.to_path_buf(),
            source,
        }),
    }
}

fn unpack_into(
    blob: &Path,
    media_type: &str,
    expected_diff_id: &Digest,
    dest: &Path,
    limits: &Limits,
    (format, skeleton): (WhiteoutFormat, Option<&Path>),
) -> Result<LayerStats, UnpackError> {
    let open_err = |source| UnpackError::OpenBlob {
        path: blob.to_path_buf(),
        source,
    };
    let declared = declared_compression(media_type)?;
    let mut file = BufReader::new(File::open(blob).map_err(open_err)?);
    let found = sniff(&mut file).map_err(open_err)?;
    let compression = match (declared, found) {
        (None, found) => found,
        (Some(d), f) if d == f => d,
        (Some(declared), found) => {
            return Err(UnpackError::CompressionMismatch {
                media_type: media_type.to_string(),
                declared,
                found,
            });
        }
    };
    let decoder: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .map_err(|source| UnpackError::Read { source })?,
        ),
    };
    unpack_stream(
        decoder,
        compression,
        expected_diff_id,
        dest,
        limits,
        format,
        skeleton,
    )
}

/// Extracts the uncompressed layer tar read from `tar_stream` into `dest`
/// (an existing empty directory), hashing every byte of the stream (read to
/// its end) and checking it against `expected_diff_id`. `compression` is
/// only recorded in the stats. With `skeleton`, the layer's skeleton is
/// written there as in [`unpack_layer_with_skeleton`]. On error the caller
/// removes `dest`.
pub fn unpack_stream(
    tar_stream: impl Read + 'static,
    compression: Compression,
    expected_diff_id: &Digest,
    dest: &Path,
    limits: &Limits,
    format: WhiteoutFormat,
    skeleton: Option<&Path>,
) -> Result<LayerStats, UnpackError> {
    let decoder: Box<dyn Read> = Box::new(tar_stream);
    let over_limit = Rc::new(Cell::new(None));
    let tee = skeleton.and_then(|path| match skeleton::SkeletonTee::spawn(path) {
        Ok(tee) => Some(tee),
        Err(error) => {
            tracing::warn!(layer = %expected_diff_id, %error, "cannot start the layer skeleton");
            None
        }
    });
    let hashing = HashingReader {
        tee,
        inner: decoder,
        hasher: Sha256::new(),
        count: 0,
        max: limits.max_total_bytes,
        guard: guard::HeaderGuard::new(limits.max_metadata_bytes),
        over_limit: over_limit.clone(),
    };
    let read_err = |source: io::Error| match over_limit.get() {
        Some(Over::Total) => UnpackError::TooLarge {
            max: limits.max_total_bytes,
        },
        Some(Over::Metadata) => UnpackError::MetadataTooLarge {
            max: limits.max_metadata_bytes,
        },
        None => UnpackError::Read { source },
    };
    let mut archive = tar::Archive::new(hashing);
    let mut stats = LayerStats {
        diff_id: expected_diff_id.clone(),
        compression,
        whiteout_format: format,
        tar_bytes: 0,
        file_bytes: 0,
        entries: 0,
        files: 0,
        dirs: 0,
        symlinks: 0,
        hardlinks: 0,
        whiteouts: 0,
        opaque_dirs: 0,
        xattrs_skipped: 0,
    };
    let mut extractor = extract::Extractor::new(dest, limits, format, &mut stats)?;
    let entries = archive.entries().map_err(read_err)?;
    for entry in entries {
        let entry = entry.map_err(read_err)?;
        extractor.entry(entry).map_err(|e| match e {
            UnpackError::Read { source } => read_err(source),
            other => other,
        })?;
    }
    let dirs = extractor.finish_entries();
    // The diff_id covers the whole stream, including what follows the tar
    // end-of-archive blocks.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(read_err)?;
    let tee = hashing.tee.take();
    let actual = Digest::from_sha256(hashing.hasher.finalize().into());
    stats.tar_bytes = hashing.count;
    if &actual != expected_diff_id {
        if let Some(tee) = tee {
            tee.abandon();
        }
        return Err(UnpackError::DiffIdMismatch {
            expected: expected_diff_id.clone(),
            actual,
        });
    }
    if let Some(tee) = tee {
        tee.finish(expected_diff_id);
    }
    extract::apply_dir_metadata(dest, dirs, &mut stats)?;
    Ok(stats)
}

/// The compression a media type promises; `None` when it does not say
/// (generic types: then the magic bytes decide).
fn declared_compression(media_type: &str) -> Result<Option<Compression>, UnpackError> {
    use fleet_protocol::oci::media_type as mt;
    let c = match media_type {
        mt::OCI_LAYER_TAR | mt::OCI_LAYER_NONDISTRIBUTABLE_TAR | mt::DOCKER_LAYER_TAR => {
            Some(Compression::None)
        }
        mt::OCI_LAYER_GZIP
        | mt::OCI_LAYER_NONDISTRIBUTABLE_GZIP
        | mt::DOCKER_LAYER_GZIP
        | mt::DOCKER_LAYER_FOREIGN_GZIP => Some(Compression::Gzip),
        mt::OCI_LAYER_ZSTD | mt::OCI_LAYER_NONDISTRIBUTABLE_ZSTD => Some(Compression::Zstd),
        "" | "application/octet-stream" | "application/x-tar" | "application/tar" => None,
        other => {
            return Err(UnpackError::UnsupportedMediaType {
                media_type: other.to_string(),
            });
        }
    };
    Ok(c)
}

/// Looks at the first bytes of the blob (without consuming them).
fn sniff(reader: &mut BufReader<File>) -> io::Result<Compression> {
    use std::io::BufRead;
    let head = reader.fill_buf()?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        // zstd skippable frame (0x184D2A5?), little-endian.
        [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50 => Compression::Zstd,
        _ => Compression::None,
    })
}

#[derive(Clone, Copy)]
enum Over {
    Total,
    Metadata,
}

/// Hashes and counts the uncompressed stream, failing past the caps.
struct HashingReader {
    /// A copy of the stream for the skeleton thread.
    tee: Option<skeleton::SkeletonTee>,
    inner: Box<dyn Read>,
    hasher: Sha256,
    count: u64,
    max: u64,
    guard: guard::HeaderGuard,
    over_limit: Rc<Cell<Option<Over>>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.max {
            self.over_limit.set(Some(Over::Total));
            return Err(io::Error::other(
                "layer exceeds the uncompressed size limit",
            ));
        }
        if self.guard.observe(&buf[..n]).is_err() {
            self.over_limit.set(Some(Over::Metadata));
            return Err(io::Error::other("layer has an oversized metadata record"));
        }
        self.hasher.update(&buf[..n]);
        if let Some(tee) = &mut self.tee {
            tee.send(&buf[..n]);
        }
        Ok(n)
    }
}
