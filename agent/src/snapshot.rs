//! Read-only layer snapshots, one per diff_id, shared by every image that
//! uses the layer.
//!
//! Layout under `<state>/snapshots/`:
//!
//! ```text
//! sha256/<hex>/fs/             the unpacked layer (an overlayfs lowerdir)
//! sha256/<hex>/snapshot.json   what was unpacked: LayerStats, whiteout format
//! sha256/<hex>/skeleton        the layer's skeleton (protocol/DELTA.md), if
//!                              complete: only then is it a delta base
//! tmp/                         unpacks in progress and removals; emptied on open
//! ```
//!
//! A snapshot is complete exactly when `sha256/<hex>/snapshot.json` exists:
//! it is unpacked under `tmp/`, `snapshot.json` is written, the filesystem
//! is synced, then the directory is renamed into place in one step and the
//! parent directory is fsynced. A crash leaves at most a directory in
//! `tmp/`, removed by the next [`SnapshotStore::open`].
//!
//! Read-only: snapshots are not remounted read-only (the agent runs on
//! plain filesystems); instead the agent never writes into them. They are
//! only ever given to overlayfs as `lowerdir`s (containers write to their
//! own per-container `upperdir`), or read by the copy fallback
//! [`apply_snapshots_to_dir`](crate::unpack::apply_snapshots_to_dir), which
//! writes to a separate rootfs directory.
//!
//! A snapshot is made either from a layer blob ([`SnapshotStore::ensure`])
//! or from a layer delta applied over the snapshots of base layers
//! ([`SnapshotStore::ensure_from_delta`], protocol/DELTA.md): the rebuilt
//! tar streams through a pipe into the same unpacker, both checking the
//! diff_id, under `tmp/` like any unpack.
//!
//! Methods block (unpacking, fsync): async callers use `spawn_blocking`.
//! Concurrent [`SnapshotStore::ensure`] calls for the same diff_id are safe;
//! the first to finish wins and the others discard their copy.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};

use fleet_protocol::delta::{self, DeltaError, DirBases};

use crate::unpack::{self, Compression, LayerStats, Limits, UnpackError, WhiteoutFormat};

const META_FILE: &str = "snapshot.json";
const FS_DIR: &str = "fs";
const SKELETON_FILE: &str = "skeleton";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unpacking layer {diff_id}: {source}")]
    Unpack {
        diff_id: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("rebuilding layer {diff_id} from a delta: {source}")]
    Delta {
        diff_id: Digest,
        #[source]
        source: DeltaError,
    },
    #[error("delta for layer {diff_id} needs base layer {base}, which has no snapshot")]
    MissingBase { diff_id: Digest, base: Digest },
    #[error("the delta apply thread for layer {diff_id} failed")]
    DeltaThread { diff_id: Digest },
    #[error("snapshot {diff_id}: unreadable {META_FILE}: {source}")]
    BadMetadata {
        diff_id: Digest,
        source: serde_json::Error,
    },
}

/// What `snapshot.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub diff_id: Digest,
    pub media_type: String,
    pub stats: LayerStats,
}

impl SnapshotInfo {
    pub fn whiteout_format(&self) -> WhiteoutFormat {
        self.stats.whiteout_format
    }
}

/// The snapshots of one agent state directory.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    limits: Limits,
    format: WhiteoutFormat,
    seq: AtomicU64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

impl SnapshotStore {
    /// Opens (creating) `<state_dir>/snapshots`, removes what a crash left in
    /// `tmp/`, and picks the whiteout format this filesystem and privilege
    /// level allow ([`WhiteoutFormat::detect`]).
    pub fn open(state_dir: &Path) -> Result<Self, SnapshotError> {
        let root = state_dir.join("snapshots");
        let tmp = root.join("tmp");
        crate::state_dir::create_private(&root).map_err(io_err("create", &root))?;
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let format = WhiteoutFormat::detect(&tmp);
        Self::open_with(state_dir, Limits::default(), format)
    }

    /// [`SnapshotStore::open`] with explicit limits and whiteout format.
    pub fn open_with(
        state_dir: &Path,
        limits: Limits,
        format: WhiteoutFormat,
    ) -> Result<Self, SnapshotError> {
        let root = state_dir.join("snapshots");
        let tmp = root.join("tmp");
        let sha = root.join("sha256");
        // Layers keep their setuid bits: nobody but the agent's user may
        // walk into the unpacked trees (see crate::state_dir).
        crate::state_dir::create_private(&root).map_err(io_err("create", &root))?;
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        fs::create_dir_all(&sha).map_err(io_err("create", &sha))?;
        for e in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
            let p = e.map_err(io_err("read", &tmp))?.path();
            unpack::remove_tree(&p).map_err(io_err("remove leftover", &p))?;
        }
        // A snapshot directory without its metadata file cannot come from
        // this code (the rename carries both); treat it as debris.
        for e in fs::read_dir(&sha).map_err(io_err("read", &sha))? {
            let p = e.map_err(io_err("read", &sha))?.path();
            let valid = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| Digest::new(format!("sha256:{n}")).is_ok());
            if !valid || !p.join(META_FILE).is_file() {
                unpack::remove_tree(&p).map_err(io_err("remove incomplete", &p))?;
            }
        }
        Ok(Self {
            root,
            limits,
            format,
            seq: AtomicU64::new(0),
        })
    }

    /// `<state>/snapshots`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The whiteout format new snapshots are written in.
    pub fn whiteout_format(&self) -> WhiteoutFormat {
        self.format
    }

    fn dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("sha256").join(diff_id.hex())
    }

    /// The snapshot's content directory (to use as a lowerdir), whether or
    /// not it exists.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir(diff_id).join(FS_DIR)
    }

    /// The content directory of a complete snapshot, if there is one.
    pub fn get(&self, diff_id: &Digest) -> Option<PathBuf> {
        self.dir(diff_id)
            .join(META_FILE)
            .is_file()
            .then(|| self.path(diff_id))
    }

    /// The skeleton file of a complete snapshot, if it has one (snapshots
    /// made by agents before delta format v2 have none). Only a snapshot
    /// with a skeleton is offered as a delta base.
    pub fn skeleton(&self, diff_id: &Digest) -> Option<PathBuf> {
        let path = self.dir(diff_id).join(SKELETON_FILE);
        (self.get(diff_id).is_some() && path.is_file()).then_some(path)
    }

    /// The recorded metadata of a complete snapshot.
    pub fn info(&self, diff_id: &Digest) -> Result<Option<SnapshotInfo>, SnapshotError> {
        let p = self.dir(diff_id).join(META_FILE);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SnapshotError::BadMetadata {
                diff_id: diff_id.clone(),
                source,
            })
    }

    fn temp_dir(&self, tag: &str) -> Result<PathBuf, SnapshotError> {
        let tmp = self.root.join("tmp");
        loop {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let p = tmp.join(format!("{tag}-{}-{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &p)(e)),
            }
        }
    }

    /// Returns the snapshot of `diff_id`, unpacking `blob` (a verified blob
    /// of `media_type`) first if there is none. An existing snapshot costs no
    /// work. The blob must expand to exactly `diff_id`.
    pub fn ensure(
        &self,
        diff_id: &Digest,
        blob: &Path,
        media_type: &str,
    ) -> Result<PathBuf, SnapshotError> {
        if let Some(p) = self.get(diff_id) {
            return Ok(p);
        }
        let work = self.temp_dir(&diff_id.hex()[..12])?;
        let result = self.unpack_and_commit(diff_id, blob, media_type, &work);
        // Whatever happened, nothing of this attempt stays in tmp/.
        let _ = unpack::remove_tree(&work);
        result
    }

    /// Returns the snapshot of `diff_id`, rebuilding its tar from the delta
    /// file `delta_file` over the snapshots of the `bases` layers (read-only)
    /// and unpacking that tar as it streams, if there is no snapshot yet.
    /// Both the delta codec and the unpacker check the rebuilt tar against
    /// `diff_id`; on any error nothing of the attempt stays. `media_type`
    /// (the layer's) is only recorded.
    pub fn ensure_from_delta(
        &self,
        diff_id: &Digest,
        delta_file: &Path,
        bases: &[Digest],
        media_type: &str,
        limits: &delta::Limits,
    ) -> Result<PathBuf, SnapshotError> {
        if let Some(p) = self.get(diff_id) {
            return Ok(p);
        }
        let mut dirs = DirBases::new();
        for base in bases {
            let dir = self.get(base).ok_or_else(|| SnapshotError::MissingBase {
                diff_id: diff_id.clone(),
                base: base.clone(),
            })?;
            dirs.insert(base.clone(), dir);
            if let Some(skeleton) = self.skeleton(base) {
                dirs.set_skeleton(base.clone(), skeleton);
            }
        }
        let file = fs::File::open(delta_file).map_err(io_err("open", delta_file))?;
        let work = self.temp_dir(&diff_id.hex()[..12])?;
        let result = self.rebuild_and_commit(diff_id, file, dirs, media_type, limits, &work);
        let _ = unpack::remove_tree(&work);
        result
    }

    /// Applies the delta on a thread writing the rebuilt tar into a pipe,
    /// and unpacks from the pipe's other end here.
    fn rebuild_and_commit(
        &self,
        diff_id: &Digest,
        delta_file: fs::File,
        bases: DirBases,
        media_type: &str,
        limits: &delta::Limits,
        work: &Path,
    ) -> Result<PathBuf, SnapshotError> {
        let fs_dir = work.join(FS_DIR);
        fs::create_dir(&fs_dir).map_err(io_err("create", &fs_dir))?;
        // An OS pipe (std's `io::pipe` is newer than this crate's MSRV).
        let (reader, writer) =
            rustix::pipe::pipe().map_err(|e| io_err("pipe", work)(io::Error::from(e)))?;
        let (reader, writer) = (fs::File::from(reader), fs::File::from(writer));
        let (target, limits) = (diff_id.clone(), *limits);
        let applier = std::thread::Builder::new()
            .name("delta-apply".into())
            .spawn(move || {
                let input = io::BufReader::with_capacity(64 << 10, delta_file);
                let out = io::BufWriter::with_capacity(64 << 10, writer);
                // The writer is dropped on return: the unpacker sees the end.
                delta::apply(input, &bases, out, &target, &limits)
            })
            .map_err(io_err("spawn delta thread", work))?;
        let unpacked = unpack::unpack_stream(
            reader,
            Compression::None,
            diff_id,
            &fs_dir,
            &self.limits,
            self.format,
            Some(&work.join(SKELETON_FILE)),
        );
        let applied = applier.join().map_err(|_| SnapshotError::DeltaThread {
            diff_id: diff_id.clone(),
        })?;
        let delta_err = |source| SnapshotError::Delta {
            diff_id: diff_id.clone(),
            source,
        };
        let unpack_err = |source| SnapshotError::Unpack {
            diff_id: diff_id.clone(),
            source,
        };
        let stats = match (applied, unpacked) {
            (Ok(_), Ok(stats)) => stats,
            // The unpacker stopped reading first (the codec then only saw
            // a closed pipe): its error is the cause.
            (Err(DeltaError::WriteOutput { .. }), Err(e)) => return Err(unpack_err(e)),
            // Otherwise the codec's error says more (which base file, which
            // op) than the unpacker's view of a stream that stopped.
            (Err(e), _) => return Err(delta_err(e)),
            (Ok(_), Err(e)) => return Err(unpack_err(e)),
        };
        self.commit(diff_id, media_type, stats, work)
    }

    fn unpack_and_commit(
        &self,
        diff_id: &Digest,
        blob: &Path,
        media_type: &str,
        work: &Path,
    ) -> Result<PathBuf, SnapshotError> {
        let fs_dir = work.join(FS_DIR);
        let stats = unpack::unpack_layer_with_skeleton(
            blob,
            media_type,
            diff_id,
            &fs_dir,
            &self.limits,
            self.format,
            Some(&work.join(SKELETON_FILE)),
        )
        .map_err(|source| SnapshotError::Unpack {
            diff_id: diff_id.clone(),
            source,
        })?;
        self.commit(diff_id, media_type, stats, work)
    }

    /// Writes the metadata into `work`, syncs, and renames it into place.
    fn commit(
        &self,
        diff_id: &Digest,
        media_type: &str,
        stats: LayerStats,
        work: &Path,
    ) -> Result<PathBuf, SnapshotError> {
        let info = SnapshotInfo {
            diff_id: diff_id.clone(),
            media_type: media_type.to_string(),
            stats,
        };
        let meta = work.join(META_FILE);
        let json =
            serde_json::to_vec_pretty(&info).map_err(|source| SnapshotError::BadMetadata {
                diff_id: diff_id.clone(),
                source,
            })?;
        let mut f = fs::File::create(&meta).map_err(io_err("create", &meta))?;
        f.write_all(&json).map_err(io_err("write", &meta))?;
        // One syncfs flushes every file of the unpack (and the metadata).
        rustix::fs::syncfs(&f).map_err(|e| io_err("syncfs", &meta)(io::Error::from(e)))?;
        drop(f);
        let target = self.dir(diff_id);
        match fs::rename(work, &target) {
            Ok(()) => {}
            // Someone else completed it first: theirs is as good as ours.
            Err(_) if self.get(diff_id).is_some() => return Ok(self.path(diff_id)),
            Err(e) => return Err(io_err("rename into place", &target)(e)),
        }
        let parent = self.root.join("sha256");
        fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &parent))?;
        Ok(self.path(diff_id))
    }

    /// Removes a snapshot. Returns whether there was one. The caller makes
    /// sure no container uses it.
    pub fn remove(&self, diff_id: &Digest) -> Result<bool, SnapshotError> {
        let dir = self.dir(diff_id);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(false);
        }
        // First out of sight in one step, then deleted at leisure: a crash
        // in between leaves only debris in tmp/.
        let trash = self.root.join("tmp").join(format!(
            "rm-{}-{}-{}",
            &diff_id.hex()[..12],
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&dir, &trash).map_err(io_err("move out", &dir))?;
        unpack::remove_tree(&trash).map_err(io_err("remove", &trash))?;
        Ok(true)
    }

    /// Moves a snapshot out of the store to `dest` (a path that does not
    /// exist yet, on the same filesystem) in one rename: for
    /// `fleet-agent fsck --repair`, which quarantines damaged snapshots. A
    /// container whose overlay stacks it keeps running on the moved tree.
    /// Returns whether there was one.
    pub fn move_out(&self, diff_id: &Digest, dest: &Path) -> Result<bool, SnapshotError> {
        let dir = self.dir(diff_id);
        if fs::symlink_metadata(&dir).is_err() {
            return Ok(false);
        }
        fs::rename(&dir, dest).map_err(io_err("move out", &dir))?;
        let parent = self.root.join("sha256");
        fs::File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &parent))?;
        Ok(true)
    }

    /// The diff_ids of every complete snapshot, sorted.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let sha = self.root.join("sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&sha).map_err(io_err("read", &sha))? {
            let e = e.map_err(io_err("read", &sha))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Ok(d) = Digest::new(format!("sha256:{name}"))
                && e.path().join(META_FILE).is_file()
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes every snapshot not in `keep`; returns the removed diff_ids.
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<Vec<Digest>, SnapshotError> {
        let mut removed = Vec::new();
        for d in self.list()? {
            if !keep.contains(&d) && self.remove(&d)? {
                removed.push(d);
            }
        }
        Ok(removed)
    }
}
