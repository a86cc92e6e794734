//! Content of a release: get it into the content store from where it
//! comes from. Checking the digest chain and staging its layers is the
//! business of [`crate::image`].
//!
//! [`ContentSource`] is where missing content comes from: an OCI registry
//! (the fetch client, a plain `Send` task reporting progress), an OCI image
//! layout directory (offline apply: blobs copied and hashed in one pass), or
//! nothing (the store must already hold it). Whatever the source, blobs
//! enter the store verified.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use fleet_protocol::oci::MAX_MANIFEST_BYTES;
use fleet_protocol::{Digest, ErrorCode, ImageRef, ImageRefError};
use sha2::{Digest as _, Sha256};

use crate::fetch::{ImageManifest, Manifest, ManifestError};
use crate::pull::{EventSink, PullError, Puller};
use crate::state::ReleaseRecord;
use crate::store::{ImageRecord, Store, StoreError};

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

impl ContentSource {
    /// This source with its registry downloads stopping once `token` is
    /// cancelled (see [`crate::fetch::Client::interrupted_by`]).
    pub fn interrupted_by(&self, token: tokio_util::sync::CancellationToken) -> Self {
        match self {
            ContentSource::Registry(puller) => {
                ContentSource::Registry(puller.interrupted_by(token))
            }
            other => other.clone(),
        }
    }
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
    #[error("release image {reference:?} is not a valid reference")]
    Reference {
        reference: String,
        #[source]
        source: ImageRefError,
    },
    #[error("image {reference} is not in the content store and no source was given")]
    NotInStore { reference: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a blocking task ({what}) ended abnormally")]
    Blocking {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
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
    #[error("manifest {digest} in the layout hashes to {actual}")]
    ManifestMismatch { digest: Digest, actual: Digest },
    #[error("manifest {digest} in the layout is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { digest: Digest },
    #[error("manifest {digest} in the layout is an index, not an image manifest")]
    NotAnImage { digest: Digest },
    #[error("manifest {digest} in the layout is unreadable")]
    BadManifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
}

impl ContentError {
    /// The lifecycle error code of a failed fetch.
    /// Whether a newer desired state stopped the download (not a failure).
    pub fn is_interruption(&self) -> bool {
        matches!(self, ContentError::Pull(p) if p.is_interruption())
    }

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
        .map_err(|source| ContentError::Reference {
            reference: text,
            source,
        })
}

/// Makes sure manifest, config and layers of `release` are in the store (or,
/// for a layer rebuilt from a delta against the `bases` layers the device
/// runs, its snapshot), and records the image there as kept. A registry
/// pull reports to `events`.
pub fn fetch<'a>(
    store: &'a Arc<Store>,
    source: &'a ContentSource,
    release: &'a ReleaseRecord,
    bases: &'a [Digest],
    events: EventSink,
) -> Pin<Box<dyn Future<Output = Result<(), ContentError>> + Send + 'a>> {
    Box::pin(async move {
        let manifest = release.release.manifest_digest.clone();
        match source {
            ContentSource::Registry(puller) => {
                let image =
                    ImageRef::parse(&release.image).map_err(|source| ContentError::Reference {
                        reference: release.image.clone(),
                        source,
                    })?;
                puller.pull_with_bases(&image, bases, events).await?;
                Ok(())
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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ContentError::Blocking {
            what: "layout import",
            source,
        })?
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
    let media_type = Manifest::Image(manifest).media_type().to_owned();
    store.put_blob(manifest_digest, &bytes, &media_type)?;
    store.put_image(&ImageRecord {
        reference: reference.to_owned(),
        manifest: manifest_digest.clone(),
        index: None,
        kept: true,
    })?;
    Ok(())
}

fn parse_image_manifest(digest: &Digest, bytes: &[u8]) -> Result<ImageManifest, ContentError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ContentError::ManifestTooLarge {
            digest: digest.clone(),
        });
    }
    let actual = Digest::of(bytes);
    if &actual != digest {
        return Err(ContentError::ManifestMismatch {
            digest: digest.clone(),
            actual,
        });
    }
    match Manifest::parse(bytes, None) {
        Ok(Manifest::Image(m)) => Ok(m),
        Ok(Manifest::Index(_)) => Err(ContentError::NotAnImage {
            digest: digest.clone(),
        }),
        Err(source) => Err(ContentError::BadManifest {
            digest: digest.clone(),
            source,
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
