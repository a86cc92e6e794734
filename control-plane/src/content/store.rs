//! The server's content store: blobs by digest and the repository index.
//!
//! Layout under the data directory:
//!
//! ```text
//! <data>/content/blobs/sha256/<hex>   one file per blob (manifests too)
//! <data>/content/index.json           repositories: tags and manifests
//! <data>/content/tmp/                 partial writes and uploads
//! ```
//!
//! Blobs are written to a temporary file in `tmp/`, hashed while written,
//! fsynced and renamed into place only when the digest matches, so a blob
//! file is always complete and correct. The index is replaced the same way.
//! Methods doing file I/O are blocking: call them from `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::ContentError;

const BUF: usize = 256 * 1024;

/// A manifest a repository holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Repository {
    #[serde(default)]
    tags: BTreeMap<String, Digest>,
    #[serde(default)]
    manifests: BTreeMap<Digest, ManifestEntry>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    repositories: BTreeMap<String, Repository>,
}

/// The content store. Cheap to clone; clones share the index.
#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    index_path: PathBuf,
    index: RwLock<Index>,
    /// Serialises index updates (read-modify-write-persist).
    writer: Mutex<()>,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `<data_dir>/content`.
    /// Leftover temporary files from an interrupted write are removed.
    pub fn open(data_dir: &Path) -> Result<Self, ContentError> {
        let root = data_dir.join("content");
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for dir in [&blobs, &tmp] {
            fs::create_dir_all(dir).map_err(|e| ContentError::io("create", dir, e))?;
        }
        let entries = fs::read_dir(&tmp).map_err(|e| ContentError::io("read", &tmp, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
        let index_path = root.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ContentError::CorruptIndex {
                    path: index_path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(ContentError::io("read", &index_path, e)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                blobs,
                tmp,
                index_path,
                index: RwLock::new(index),
                writer: Mutex::new(()),
            }),
        })
    }

    /// `<data>/content`.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where temporary files go (same file system as the blobs).
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp
    }

    /// The file of a blob (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// The size of a stored blob, `None` when it is not stored.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// The manifest digest a tag points to: what `fleetctl rollout` pins.
    pub fn resolve(&self, repository: &str, tag: &str) -> Option<Digest> {
        self.read()
            .repositories
            .get(repository)
            .and_then(|r| r.tags.get(tag))
            .cloned()
    }

    /// Whether the repository exists (has at least one manifest).
    pub fn has_repository(&self, repository: &str) -> bool {
        self.read().repositories.contains_key(repository)
    }

    /// The repositories, sorted.
    pub fn repositories(&self) -> Vec<String> {
        self.read().repositories.keys().cloned().collect()
    }

    /// A repository's tags, sorted; `None` when the repository is unknown.
    pub fn tags(&self, repository: &str) -> Option<Vec<String>> {
        self.read()
            .repositories
            .get(repository)
            .map(|r| r.tags.keys().cloned().collect())
    }

    /// A manifest of a repository, by digest.
    pub fn manifest(&self, repository: &str, digest: &Digest) -> Option<ManifestEntry> {
        self.read()
            .repositories
            .get(repository)
            .and_then(|r| r.manifests.get(digest))
            .cloned()
    }

    /// Every manifest digest of every repository, sorted, deduplicated.
    pub fn manifest_digests(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self
            .read()
            .repositories
            .values()
            .flat_map(|r| r.manifests.keys().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Reads a stored blob whole. For manifests and configs; stream layers.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ContentError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|e| ContentError::io("read", path, e))
    }

    /// Stores `bytes`, returning their digest. Blocking.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, ContentError> {
        let digest = Digest::of(bytes);
        if self.blob_size(&digest) == Some(bytes.len() as u64) {
            return Ok(digest);
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)
            .map_err(|e| ContentError::io("write", tmp.path(), e))?;
        self.persist(tmp, &digest)?;
        Ok(digest)
    }

    /// Copies `src` into the store, verifying it hashes to `expected` (and
    /// has `expected_size` bytes, when given). Returns whether the blob was
    /// new. The source is hashed even when the blob is already stored, so a
    /// corrupt source is always refused. Blocking.
    pub fn put_file(
        &self,
        src: &Path,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<bool, ContentError> {
        let mut file = File::open(src).map_err(|e| ContentError::io("open", src, e))?;
        let present = self.blob_size(expected).is_some();
        let mut tmp = if present {
            None
        } else {
            Some(self.temp_file()?)
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ContentError::io("read", src, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Some(tmp) = tmp.as_mut() {
                tmp.write_all(&buf[..n])
                    .map_err(|e| ContentError::io("write", tmp.path(), e))?;
            }
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if &actual != expected {
            return Err(ContentError::DigestMismatch {
                path: src.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
        if let Some(want) = expected_size
            && want != size
        {
            return Err(ContentError::SizeMismatch {
                digest: expected.clone(),
                expected: want,
                actual: size,
            });
        }
        match tmp {
            Some(tmp) => {
                self.persist(tmp, expected)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Moves `src`, a file in [`Self::tmp_dir`] already hashed to `digest`
    /// by the caller, into the store. Returns whether the blob was new.
    pub(crate) fn adopt(&self, src: &Path, digest: &Digest) -> Result<bool, ContentError> {
        if self.blob_size(digest).is_some() {
            return Ok(false);
        }
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(|e| ContentError::io("fsync", src, e))?;
        let dest = self.blob_path(digest);
        fs::rename(src, &dest).map_err(|e| ContentError::io("rename into", &dest, e))?;
        File::open(&self.inner.blobs)
            .and_then(|d| d.sync_all())
            .map_err(|e| ContentError::io("fsync", &self.inner.blobs, e))?;
        Ok(true)
    }

    /// Records manifests and tags of a repository, in one atomic index
    /// update. Every manifest (and what it points to) must be stored already.
    pub fn commit(
        &self,
        repository: &str,
        manifests: impl IntoIterator<Item = (Digest, ManifestEntry)>,
        tags: impl IntoIterator<Item = (String, Digest)>,
    ) -> Result<(), ContentError> {
        super::validate_repository(repository)?;
        let _guard = self.lock_writer();
        let mut next = self.read().clone();
        let repo = next.repositories.entry(repository.to_owned()).or_default();
        repo.manifests.extend(manifests);
        for (tag, digest) in tags {
            super::validate_tag(&tag)?;
            repo.tags.insert(tag, digest);
        }
        self.write_index(&next)?;
        *self.write() = next;
        Ok(())
    }

    fn write_index(&self, index: &Index) -> Result<(), ContentError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| ContentError::BadJson {
            what: "index",
            path: self.inner.index_path.clone(),
            source,
        })?;
        let mut tmp = self.temp_file()?;
        tmp.write_all(&bytes)
            .map_err(|e| ContentError::io("write", tmp.path(), e))?;
        sync_and_rename(tmp, &self.inner.index_path)
    }

    fn temp_file(&self) -> Result<NamedTempFile, ContentError> {
        NamedTempFile::new_in(&self.inner.tmp)
            .map_err(|e| ContentError::io("create", &self.inner.tmp, e))
    }

    fn persist(&self, tmp: NamedTempFile, digest: &Digest) -> Result<(), ContentError> {
        sync_and_rename(tmp, &self.blob_path(digest))
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        // A poisoned lock still holds a consistent index: it is replaced whole.
        self.inner.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.inner.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// fsyncs `tmp`, renames it to `dest` and fsyncs `dest`'s directory.
fn sync_and_rename(tmp: NamedTempFile, dest: &Path) -> Result<(), ContentError> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| ContentError::io("fsync", tmp.path(), e))?;
    tmp.persist(dest)
        .map_err(|e| ContentError::io("rename into", dest, e.error))?;
    if let Some(dir) = dest.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ContentError::io("fsync", dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_stored_by_digest_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"hello");
        assert!(
            store
                .blob_path(&d)
                .starts_with(dir.path().join("content/blobs/sha256"))
        );

        let src = dir.path().join("src");
        std::fs::write(&src, b"other").unwrap();
        let err = store.put_file(&src, &d, None).unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        let good = Digest::of(b"other");
        let err = store.put_file(&src, &good, Some(4)).unwrap_err();
        assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
        assert!(store.blob_size(&good).is_none());
        assert!(store.put_file(&src, &good, Some(5)).unwrap());
        assert!(!store.put_file(&src, &good, Some(5)).unwrap());
        assert_eq!(store.blob_size(&good), Some(5));
    }

    #[test]
    fn the_index_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"{}").unwrap();
        let entry = ManifestEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 2,
        };
        store
            .commit(
                "ns/model",
                [(d.clone(), entry.clone())],
                [("v1".into(), d.clone())],
            )
            .unwrap();
        assert!(store.commit("Bad", [], []).is_err());
        assert!(
            store
                .commit("ns/model", [], [("bad/tag".into(), d.clone())])
                .is_err()
        );
        drop(store);

        let store = ContentStore::open(dir.path()).unwrap();
        assert_eq!(store.resolve("ns/model", "v1"), Some(d.clone()));
        assert_eq!(store.resolve("ns/model", "v2"), None);
        assert_eq!(store.resolve("ns", "v1"), None);
        assert_eq!(store.tags("ns/model"), Some(vec!["v1".to_owned()]));
        assert_eq!(store.manifest("ns/model", &d), Some(entry));
        assert_eq!(store.repositories(), vec!["ns/model".to_owned()]);
    }
}
