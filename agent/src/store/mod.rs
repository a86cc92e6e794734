//! The content store: blobs addressed by digest under
//! `<state>/blobs/sha256/<hex>`, downloads in progress under `<state>/tmp`,
//! and metadata (blob sizes and media types, image records) in sled under
//! `<state>/meta`.
//!
//! Blobs enter only through [`Store::commit_partial`] / [`Store::put_blob`]:
//! verified content in a temp file, fsync, atomic rename, fsync of the
//! directory. sled holds an exclusive lock on its directory, so one process
//! owns a store at a time.

mod counters;
mod gc;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::fetch::Partial;

pub use counters::ContentCounters;
pub use gc::{GcOptions, GcReport};

/// The metadata layout this code reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store metadata in {path}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "store metadata in {path} has schema version {found}, this agent knows {SCHEMA_VERSION}: \
         upgrade the agent or move the state directory away"
    )]
    Schema { path: PathBuf, found: String },
    #[error("corrupt record {key:?} in the store metadata")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "not enough disk space: {needed} bytes needed, {available} available, {reserve} kept in reserve \
         (free space or lower the reserve)"
    )]
    DiskFull {
        needed: u64,
        available: u64,
        reserve: u64,
    },
    #[error("blob {digest} is not in the store")]
    Missing { digest: Digest },
    #[error("blob {digest} has {actual} bytes on disk or hashes to {hash}, not what was expected")]
    Corrupt {
        digest: Digest,
        actual: u64,
        hash: Digest,
    },
    #[error("blob {digest} is larger than the {limit}-byte limit for reading it whole")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("a pull is in progress; try garbage collection again later")]
    Busy,
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
}

impl StoreError {
    /// Another process holds the database: sled takes an exclusive file
    /// lock and reports a failure to get it only as this message (sled is
    /// pinned in third_party/, so the text is stable).
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            StoreError::Db { source: sled::Error::Io(e), .. }
                if e.to_string().starts_with("could not acquire lock on")
        )
    }
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Disk space that downloads must leave free.
    pub reserve_bytes: u64,
    /// sled's page cache (it dominates the agent's idle memory).
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            reserve_bytes: 256 * 1024 * 1024,
            cache_bytes: 1024 * 1024,
        }
    }
}

/// What the store knows about a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub size: u64,
    pub media_type: String,
}

/// A pulled image: the reference it was pulled by and what it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference as given (normalised), e.g. `docker.io/library/x:1`.
    pub reference: String,
    /// The platform's image manifest.
    pub manifest: Digest,
    /// The index the reference pointed at, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// Kept images (and everything they reference) survive garbage collection.
    pub kept: bool,
}

/// The content store. Share it behind an `Arc`.
pub struct Store {
    root: PathBuf,
    cfg: StoreConfig,
    db: sled::Db,
    blobs: sled::Tree,
    images: sled::Tree,
    /// Pulls hold it shared; garbage collection exclusively.
    lease: Arc<RwLock<()>>,
    /// One download per blob at a time: two pulls (two apps sharing a layer)
    /// would otherwise write the same partial file.
    downloads: std::sync::Mutex<std::collections::HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Store {
    /// Opens (creating if needed) the store under `root`, the agent's state
    /// directory, after making that directory private
    /// ([`crate::state_dir::secure`]: every process that uses a state
    /// directory opens its store first).
    pub fn open(root: &Path, cfg: StoreConfig) -> Result<Self, StoreError> {
        crate::state_dir::secure(root)?;
        for dir in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        let meta = root.join("meta");
        let db_err = |source| StoreError::Db {
            path: meta.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&meta)
            .cache_capacity(cfg.cache_bytes)
            .open()
            .map_err(db_err)?;
        match db.get(SCHEMA_KEY).map_err(db_err)? {
            None => {
                db.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(db_err)?;
                db.flush().map_err(db_err)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(StoreError::Schema {
                    path: meta,
                    found: String::from_utf8_lossy(&v).into_owned(),
                });
            }
        }
        let blobs = db.open_tree("blobs").map_err(db_err)?;
        let images = db.open_tree("images").map_err(db_err)?;
        Ok(Self {
            root: root.to_owned(),
            cfg,
            db,
            blobs,
            images,
            lease: Arc::new(RwLock::new(())),
            downloads: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Held while a blob is downloaded into its partial file; a second
    /// download of the same digest waits, then finds the blob present.
    pub async fn download_lock(&self, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.downloads.lock() {
            Ok(mut map) => {
                map.retain(|_, l| Arc::strong_count(l) > 1);
                map.entry(digest.clone()).or_default().clone()
            }
            // A poisoned map only means another thread panicked while
            // pruning it; a fresh lock keeps this download going.
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        lock.lock_owned().await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The agent's one sled database (other modules open their own trees in it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether the blob is present (a present blob costs no download).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>, StoreError> {
        self.get_json(&self.blobs, digest.as_str())
    }

    /// Every blob record (digest, what was recorded), whether or not its
    /// file is still there (`fleet-agent fsck` compares the two).
    pub fn blob_records(&self) -> Result<Vec<(String, BlobInfo)>, StoreError> {
        let mut out = Vec::new();
        for item in self.blobs.iter() {
            let (k, v) = item.map_err(|source| self.db_err(source))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let info = serde_json::from_slice(&v).map_err(|source| StoreError::Record {
                key: key.clone(),
                source,
            })?;
            out.push((key, info));
        }
        Ok(out)
    }

    /// Forgets the record of `key` (as [`Store::blob_records`] lists it)
    /// without touching any file.
    pub fn remove_blob_record(&self, key: &str) -> Result<(), StoreError> {
        self.blobs
            .remove(key.as_bytes())
            .map_err(|source| self.db_err(source))?;
        Ok(())
    }

    /// Where a download of `digest` in progress lives.
    pub fn partial(&self, digest: &Digest) -> Partial {
        Partial::in_dir(&self.tmp_dir(), digest)
    }

    /// Opens a present blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<fs::File, StoreError> {
        let path = self.blob_path(digest);
        fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing {
                digest: digest.clone(),
            },
            _ => io("open", &path)(e),
        })
    }

    /// Reads a small blob (a manifest or a config) whole, checking its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let len = self
            .open_blob(digest)?
            .metadata()
            .map_err(io("stat", &path))?
            .len();
        if len > limit {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let hash = Digest::of(&bytes);
        if hash != *digest {
            return Err(StoreError::Corrupt {
                digest: digest.clone(),
                actual: bytes.len() as u64,
                hash,
            });
        }
        Ok(bytes)
    }

    /// Moves a verified download (`partial.data`, exactly the blob) into place.
    pub fn commit_partial(
        &self,
        digest: &Digest,
        partial: &Partial,
        media_type: &str,
    ) -> Result<(), StoreError> {
        let size = fs::metadata(&partial.data)
            .map_err(io("stat", &partial.data))?
            .len();
        fs::File::open(&partial.data)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &partial.data))?;
        self.install(digest, &partial.data, size, media_type)?;
        let _ = fs::remove_file(&partial.journal);
        Ok(())
    }

    /// Removes a blob and its record (e.g. a layer delta once applied, or
    /// one that failed). Missing is fine.
    pub fn remove_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
        self.blobs
            .remove(digest.as_str().as_bytes())
            .map_err(|source| self.db_err(source))?;
        Ok(())
    }

    /// Stores `bytes` (e.g. a manifest) under `digest` after checking it.
    pub fn put_blob(
        &self,
        digest: &Digest,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), StoreError> {
        let hash = Digest::of(bytes);
        if hash != *digest {
            return Err(StoreError::Corrupt {
                digest: digest.clone(),
                actual: bytes.len() as u64,
                hash,
            });
        }
        if self.has_blob(digest) {
            return self.record_blob(digest, bytes.len() as u64, media_type);
        }
        let tmp = self
            .tmp_dir()
            .join(format!("{}.put.{}", digest.hex(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        self.install(digest, &tmp, bytes.len() as u64, media_type)
    }

    fn install(
        &self,
        digest: &Digest,
        from: &Path,
        size: u64,
        media_type: &str,
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if let Err(e) = fs::rename(from, &dest) {
            // Blobs are content-addressed: when another writer (a second app
            // sharing this layer) installed the same digest first, its
            // verified copy is the one we wanted.
            if !dest.is_file() {
                return Err(io("rename into", &dest)(e));
            }
            let _ = fs::remove_file(from);
        }
        let dir = self.blobs_dir();
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &dir))?;
        self.record_blob(digest, size, media_type)
    }

    fn record_blob(&self, digest: &Digest, size: u64, media_type: &str) -> Result<(), StoreError> {
        let info = BlobInfo {
            size,
            media_type: media_type.to_owned(),
        };
        self.put_json(&self.blobs, digest.as_str(), &info)
    }

    /// Records (or replaces) an image.
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        self.put_json(&self.images, &record.reference, record)?;
        self.flush()
    }

    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.get_json(&self.images, reference)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.images.iter() {
            let (k, v) = item.map_err(|source| self.db_err(source))?;
            out.push(
                serde_json::from_slice(&v).map_err(|source| StoreError::Record {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Marks an image kept or not; false if there is no such image.
    pub fn set_kept(&self, reference: &str, kept: bool) -> Result<bool, StoreError> {
        let Some(mut rec) = self.image(reference)? else {
            return Ok(false);
        };
        rec.kept = kept;
        self.put_image(&rec)?;
        Ok(true)
    }

    /// Forgets an image record (its blobs go at the next garbage collection).
    pub fn remove_image(&self, reference: &str) -> Result<bool, StoreError> {
        let old = self
            .images
            .remove(reference.as_bytes())
            .map_err(|source| self.db_err(source))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Bytes available to this process on the store's file system.
    pub fn available_bytes(&self) -> Result<u64, StoreError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| StoreError::Io {
            op: "statvfs",
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Fails with [`StoreError::DiskFull`] unless `needed` bytes fit while
    /// leaving the reserve free.
    pub fn ensure_space(&self, needed: u64) -> Result<(), StoreError> {
        let available = self.available_bytes()?;
        let reserve = self.cfg.reserve_bytes;
        if needed.saturating_add(reserve) > available {
            return Err(StoreError::DiskFull {
                needed,
                available,
                reserve,
            });
        }
        Ok(())
    }

    /// Held (shared) by a pull from before its first blob until its image is
    /// recorded, so garbage collection cannot take blobs from under it.
    pub async fn lease(&self) -> OwnedRwLockReadGuard<()> {
        self.lease.clone().read_owned().await
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| self.db_err(source))
    }

    fn db_err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.root.join("meta"),
            source,
        }
    }

    fn put_json<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Record {
            key: key.to_owned(),
            source,
        })?;
        tree.insert(key.as_bytes(), bytes)
            .map_err(|source| self.db_err(source))?;
        Ok(())
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &sled::Tree,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(v) = tree
            .get(key.as_bytes())
            .map_err(|source| self.db_err(source))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|source| StoreError::Record {
                key: key.to_owned(),
                source,
            })
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

#[cfg(test)]
mod tests;
