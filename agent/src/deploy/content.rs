//! Content of a release: get it into the content store, check its digest
//! chain, and hand out what staging needs.
//!
//! [`ContentSource`] is where missing content comes from: an OCI registry
//! (the fetch client), an OCI image layout directory (offline apply), or
//! nothing (the store must already hold it). Whatever the source, blobs enter
//! the store verified, and [`verify`] checks the whole chain again from the
//! store: manifest digest (the one the signed release names) → config digest
//! → layer digests and sizes; diff_ids are checked when layers are unpacked.
//!
//! Functions here block (hashing, copying): call them from `spawn_blocking`.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use fleet_protocol::{Digest, ErrorCode, ImageRef};
use oci_spec::image::ImageConfiguration;
use sha2::{Digest as _, Sha256};

use crate::fetch::{Manifest, PullError, Puller};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::state::{LayerRecord, ReleaseRecord};
use crate::store::{ImageRecord, Store, StoreError};

/// Manifests and configs larger than this are refused.
const SMALL_BLOB_LIMIT: u64 = 16 * 1024 * 1024;

/// Where a release's missing content comes from.
#[derive(Clone)]
pub enum ContentSource {
    /// The content store must already hold it.
    Store,
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    Layout(PathBuf),
    /// An OCI registry, through the fetch client.
    Registry(Puller),
}

impl std::fmt::Debug for ContentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentSource::Store => f.write_str("Store"),
            ContentSource::Layout(p) => write!(f, "Layout({})", p.display()),
            ContentSource::Registry(_) => f.write_str("Registry"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("release image {reference:?} is not a valid reference: {reason}")]
    Reference { reference: String, reason: String },
    #[error("image {reference} is not in the content store and no source was given")]
    NotInStore { reference: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "blob {digest} in {path} does not match: sha256 {actual}, {size} bytes (expected {expected_size})"
    )]
    BlobMismatch {
        digest: Digest,
        path: PathBuf,
        actual: Digest,
        size: u64,
        expected_size: u64,
    },
    #[error("manifest {digest}: {reason}")]
    BadManifest { digest: Digest, reason: String },
    #[error("image config {digest}: {reason}")]
    BadConfig { digest: Digest, reason: String },
    #[error("image {reference} resolved to {got}, the release names {expected}")]
    WrongManifest {
        reference: String,
        expected: Digest,
        got: Digest,
    },
}

impl ContentError {
    /// The lifecycle error code of a failed fetch.
    pub fn fetch_code(&self) -> ErrorCode {
        match self {
            ContentError::Store(StoreError::DiskFull { .. }) => ErrorCode::DiskFull,
            ContentError::Pull(p) if p.is_disk_full() => ErrorCode::DiskFull,
            _ => ErrorCode::DownloadFailed,
        }
    }
}

/// The content-store reference of a release's image: `repository@digest`,
/// normalised as the fetch client records it.
pub fn image_reference(repository: &str, manifest: &Digest) -> Result<String, ContentError> {
    let text = format!("{repository}@{manifest}");
    ImageRef::parse(&text)
        .map(|r| r.to_string())
        .map_err(|e| ContentError::Reference {
            reference: text,
            reason: e.to_string(),
        })
}

/// Makes sure manifest, config and layers of `release` are in the store, and
/// records the image there as kept.
pub fn fetch<'a>(
    store: &'a Arc<Store>,
    source: &'a ContentSource,
    release: &'a ReleaseRecord,
) -> Pin<Box<dyn Future<Output = Result<(), ContentError>> + Send + 'a>> {
    Box::pin(async move {
        let manifest = release.release.manifest_digest.clone();
        match source {
            ContentSource::Registry(puller) => {
                let image =
                    ImageRef::parse(&release.image).map_err(|e| ContentError::Reference {
                        reference: release.image.clone(),
                        reason: e.to_string(),
                    })?;
                let puller = puller.clone();
                // `Puller::pull`'s future is not `Send` for every lifetime (the
                // compiler's higher-ranked check), so it cannot be spawned: it
                // runs on a runtime of its own in a blocking thread.
                let pulled = tokio::task::spawn_blocking(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| ContentError::Io {
                            path: PathBuf::from("(pull runtime)"),
                            source,
                        })?;
                    rt.block_on(puller.pull(&image, Arc::new(|_| {})))
                        .map(drop)
                        .map_err(ContentError::from)
                })
                .await;
                match pulled {
                    Ok(r) => r,
                    Err(e) => Err(ContentError::Io {
                        path: PathBuf::new(),
                        source: io::Error::other(e.to_string()),
                    }),
                }
            }
            ContentSource::Layout(dir) => {
                let store = store.clone();
                let dir = dir.clone();
                let reference = release.image.clone();
                run_blocking(move || fetch_from_layout(&store, &dir, &reference, &manifest)).await
            }
            ContentSource::Store => {
                // Content already there (e.g. a resumed lifecycle, or pulled by hand).
                if store.image(&release.image)?.is_none() && !store.has_blob(&manifest) {
                    return Err(ContentError::NotInStore {
                        reference: release.image.clone(),
                    });
                }
                if store.image(&release.image)?.is_none() {
                    store.put_image(&ImageRecord {
                        reference: release.image.clone(),
                        manifest,
                        index: None,
                        kept: true,
                    })?;
                }
                Ok(())
            }
        }
    })
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContentError> + Send + 'static,
) -> Result<T, ContentError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ContentError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

fn layout_blob(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn fetch_from_layout(
    store: &Store,
    dir: &Path,
    reference: &str,
    manifest_digest: &Digest,
) -> Result<(), ContentError> {
    let path = layout_blob(dir, manifest_digest);
    let bytes = std::fs::read(&path).map_err(|source| ContentError::Io {
        path: path.clone(),
        source,
    })?;
    let manifest = parse_image_manifest(manifest_digest, &bytes)?;
    let missing: Vec<_> = manifest
        .blobs()
        .into_iter()
        .filter(|d| !store.has_blob(&d.digest))
        .cloned()
        .collect();
    store.ensure_space(missing.iter().map(|d| d.size).sum())?;
    for desc in &missing {
        let from = layout_blob(dir, &desc.digest);
        let partial = store.partial(&desc.digest);
        copy_verified(&from, &partial.data, &desc.digest, desc.size)?;
        store.commit_partial(&desc.digest, &partial, &desc.media_type)?;
    }
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| crate::fetch::manifest::OCI_MANIFEST.to_owned());
    store.put_blob(manifest_digest, &bytes, &media_type)?;
    store.put_image(&ImageRecord {
        reference: reference.to_owned(),
        manifest: manifest_digest.clone(),
        index: None,
        kept: true,
    })?;
    Ok(())
}

fn parse_image_manifest(
    digest: &Digest,
    bytes: &[u8],
) -> Result<crate::fetch::manifest::ImageManifest, ContentError> {
    if &Digest::of(bytes) != digest {
        return Err(ContentError::BadManifest {
            digest: digest.clone(),
            reason: format!("its bytes hash to {}", Digest::of(bytes)),
        });
    }
    match Manifest::parse(bytes, None) {
        Ok(Manifest::Image(m)) => Ok(m),
        Ok(Manifest::Index(_)) => Err(ContentError::BadManifest {
            digest: digest.clone(),
            reason: "is an index, not an image manifest".into(),
        }),
        Err(e) => Err(ContentError::BadManifest {
            digest: digest.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Copies `from` to `to`, hashing; fails (removing `to`) unless it is exactly
/// the blob `digest` of `size` bytes.
fn copy_verified(from: &Path, to: &Path, digest: &Digest, size: u64) -> Result<(), ContentError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ContentError::Io { path, source }
    };
    let mut input = File::open(from).map_err(io_err(from))?;
    let mut out = File::create(to).map_err(io_err(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(to))?;
        len += n as u64;
    }
    let actual = digest_of(hasher);
    if &actual != digest || len != size {
        let _ = std::fs::remove_file(to);
        return Err(ContentError::BlobMismatch {
            digest: digest.clone(),
            path: from.to_owned(),
            actual,
            size: len,
            expected_size: size,
        });
    }
    Ok(())
}

fn digest_of(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    // A sha256 hex string is always a valid digest.
    Digest::new(format!("sha256:{hex}")).unwrap_or_else(|_| Digest::of(b""))
}

fn hash_file(path: &Path) -> Result<(Digest, u64), ContentError> {
    let mut f = File::open(path).map_err(|source| ContentError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|source| ContentError::Io {
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((digest_of(hasher), len))
}

/// What a verified image is made of.
#[derive(Debug, Clone)]
pub struct VerifiedContent {
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
}

/// Checks the digest chain of a release's image in the store: the image's
/// manifest (or the index it was chosen from) is the one the release names,
/// the config and every layer blob hash to their descriptors, and the
/// config lists one diff_id per layer. Blocking.
pub fn verify(store: &Store, release: &ReleaseRecord) -> Result<VerifiedContent, ContentError> {
    let expected = &release.release.manifest_digest;
    let record = store
        .image(&release.image)?
        .ok_or_else(|| ContentError::NotInStore {
            reference: release.image.clone(),
        })?;
    let named = record.index.as_ref().unwrap_or(&record.manifest);
    if named != expected {
        return Err(ContentError::WrongManifest {
            reference: release.image.clone(),
            expected: expected.clone(),
            got: named.clone(),
        });
    }
    let bytes = store.read_blob(&record.manifest, SMALL_BLOB_LIMIT)?;
    let manifest = parse_image_manifest(&record.manifest, &bytes)?;
    let config_bytes = store.read_blob(&manifest.config.digest, SMALL_BLOB_LIMIT)?;
    if config_bytes.len() as u64 != manifest.config.size {
        return Err(ContentError::BadConfig {
            digest: manifest.config.digest.clone(),
            reason: format!(
                "{} bytes, the manifest says {}",
                config_bytes.len(),
                manifest.config.size
            ),
        });
    }
    let config = parse_config(&manifest.config.digest, &config_bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ContentError::BadConfig {
            digest: manifest.config.digest.clone(),
            reason: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let path = store.blob_path(&desc.digest);
        let (actual, size) = hash_file(&path)?;
        if actual != desc.digest || size != desc.size {
            return Err(ContentError::BlobMismatch {
                digest: desc.digest.clone(),
                path,
                actual,
                size,
                expected_size: desc.size,
            });
        }
        let diff_id = Digest::new(diff_id.clone()).map_err(|e| ContentError::BadConfig {
            digest: manifest.config.digest.clone(),
            reason: format!("diff_id {diff_id:?}: {e}"),
        })?;
        layers.push(LayerRecord {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            diff_id,
        });
    }
    Ok(VerifiedContent {
        config: manifest.config.digest.clone(),
        layers,
    })
}

fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ImageConfiguration, ContentError> {
    serde_json::from_slice(bytes).map_err(|e| ContentError::BadConfig {
        digest: digest.clone(),
        reason: e.to_string(),
    })
}

/// The image config of a verified release. Blocking.
pub fn image_config(store: &Store, config: &Digest) -> Result<ImageConfiguration, ContentError> {
    let bytes = store.read_blob(config, SMALL_BLOB_LIMIT)?;
    parse_config(config, &bytes)
}

/// The snapshot directories of a verified release's layers, bottom → top,
/// unpacking the missing ones (diff_ids checked while unpacking). Blocking.
pub fn snapshots(
    store: &Store,
    snapshots: &SnapshotStore,
    layers: &[LayerRecord],
) -> Result<Vec<PathBuf>, ContentError> {
    layers
        .iter()
        .map(|l| {
            snapshots
                .ensure(&l.diff_id, &store.blob_path(&l.digest), &l.media_type)
                .map_err(ContentError::from)
        })
        .collect()
}

/// Unpacks an `oci-archive` tarball (an OCI layout in a tar) into `dest`.
pub fn unpack_oci_archive(archive: &Path, dest: &Path) -> Result<(), ContentError> {
    let file = File::open(archive).map_err(|source| ContentError::Io {
        path: archive.to_owned(),
        source,
    })?;
    std::fs::create_dir_all(dest).map_err(|source| ContentError::Io {
        path: dest.to_owned(),
        source,
    })?;
    tar::Archive::new(file)
        .unpack(dest)
        .map_err(|source| ContentError::Io {
            path: archive.to_owned(),
            source,
        })
}
