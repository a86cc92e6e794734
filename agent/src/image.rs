//! An image in the content store: load it (manifest, config, layers bottom →
//! top), verify its digest chain against what a signed release names, and
//! make sure its layers have snapshots (the read-only directories its root
//! filesystem is stacked from).
//!
//! # Why a layer is read only twice
//!
//! A layer's bytes are read once while they stream in (hashed and written
//! in one pass) and once when they are unpacked into a snapshot; nothing in
//! between hashes the layer file again. That is sound because:
//!
//! - Blobs enter the store only through [`Store::commit_partial`] and
//!   [`Store::put_blob`]. `put_blob` hashes the bytes it is given;
//!   `commit_partial` is only called with a download the fetch client
//!   verified while streaming (`fetch/blob.rs`: size and sha256 of exactly
//!   the bytes written, a resumed prefix re-hashed from disk) or with a copy
//!   out of an OCI layout that was hashed while copying
//!   (`deploy/content.rs`). Either way the store records the blob (size,
//!   media type) only after the check and the atomic rename, so a recorded
//!   blob is one whose content was verified on entry.
//! - [`StoredImage::verify`] checks the chain from the digest the signed
//!   release names down: the image record's manifest (or the index it was
//!   chosen from, which must list it) is the named digest; the manifest and
//!   the config are small and re-hashed when read ([`Store::read_blob`]);
//!   every layer must be recorded by the store with the descriptor's size,
//!   and its file must have that size. A layer the store never verified, or
//!   one truncated or replaced by a different-sized file, is refused.
//! - Unpacking hashes the uncompressed stream and refuses a layer whose
//!   diff_id differs from the config's (`unpack`), so a blob changed on
//!   disk after entry cannot become a snapshot either.
//!
//! - A layer rebuilt from a delta has no blob in the store, only its
//!   snapshot: [`StoredImage::verify_with_snapshots`] accepts it, because a
//!   snapshot exists only once its tar hashed to the diff_id (checked by
//!   the delta codec and again by the unpacker) and that diff_id is the
//!   config's, whose digest the chain names.
//!
//! What this does not catch before unpacking is a same-sized in-place
//! corruption of a layer file on disk; the diff_id check then refuses it at
//! unpack time, before anything runs from it.
//!
//! Manifests and configs are read whole, up to [`MAX_MANIFEST_BYTES`] (the
//! registry's own manifest limit; image configs are a few KiB).

use std::path::PathBuf;

use fleet_protocol::Digest;
use fleet_protocol::oci::MAX_MANIFEST_BYTES;
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::fetch::{Descriptor, ImageManifest, Manifest, ManifestError};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {manifest}: reading from the content store")]
    Store {
        manifest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("image {reference} is not in the content store")]
    NotInStore { reference: String },
    #[error("image {reference} resolved to {got}, the release names {expected}")]
    WrongManifest {
        reference: String,
        expected: Digest,
        got: Digest,
    },
    #[error("manifest {digest} is unreadable")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("image config {digest} is unreadable")]
    Config {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {manifest} is an index, not an image manifest")]
    NotAnImage { manifest: Digest },
    #[error("image {manifest} is not listed by the index {index}")]
    NotInIndex { manifest: Digest, index: Digest },
    #[error("image {manifest}: config {config} has {actual} bytes, the manifest says {expected}")]
    ConfigSize {
        manifest: Digest,
        config: Digest,
        actual: u64,
        expected: u64,
    },
    #[error(
        "image {manifest}: {layers} layers in the manifest but {diff_ids} diff_ids in the config"
    )]
    LayerCount {
        manifest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("image {manifest}: bad diff_id {diff_id:?} in the config")]
    DiffId {
        manifest: Digest,
        diff_id: String,
        #[source]
        source: fleet_protocol::IdError,
    },
    #[error(
        "blob {digest}: the store holds {recorded:?} bytes verified on entry and {on_disk:?} on disk, \
         the manifest says {expected}"
    )]
    Unverified {
        digest: Digest,
        expected: u64,
        recorded: Option<u64>,
        on_disk: Option<u64>,
    },
    #[error("image {manifest}: layer {index}")]
    Snapshot {
        manifest: Digest,
        index: usize,
        #[source]
        source: Box<SnapshotError>,
    },
}

/// One layer of an image: its blob, and the diff_id it unpacks to. The one
/// layer type of the agent (persisted in a release's record once verified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The (compressed) blob's digest.
    #[serde(rename = "digest")]
    pub blob: Digest,
    pub media_type: String,
    /// The digest of the uncompressed tar (from the config's `rootfs`).
    pub diff_id: Digest,
    /// The blob's size (0 in records written before it was kept).
    #[serde(default)]
    pub size: u64,
}

/// An image whose manifest and config are in the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub manifest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// Bottom → top.
    pub layers: Vec<Layer>,
}

impl StoredImage {
    /// Reads the image manifest `manifest` (not an index) and its config.
    pub fn load(store: &Store, manifest: &Digest) -> Result<Self, ImageError> {
        let image = match parse_manifest(store, manifest)? {
            Manifest::Image(m) => m,
            Manifest::Index(_) => {
                return Err(ImageError::NotAnImage {
                    manifest: manifest.clone(),
                });
            }
        };
        let config = read_config(store, manifest, &image.config)?;
        let layers = layers_of(manifest, &image, &config)?;
        Ok(Self {
            manifest: manifest.clone(),
            config_digest: image.config.digest.clone(),
            config,
            layers,
        })
    }

    /// The image `reference` of the store, checked against the manifest (or
    /// index) digest a signed release names: see the module doc for the
    /// chain and why layer blobs are not hashed again here. Blocking.
    pub fn verify(store: &Store, reference: &str, named: &Digest) -> Result<Self, ImageError> {
        Self::verify_with_snapshots(store, None, reference, named)
    }

    /// [`StoredImage::verify`], also accepting a layer whose blob is not in
    /// the store when `snapshots` has the snapshot of its diff_id (a layer
    /// rebuilt from a delta): a snapshot exists only if its tar hashed to
    /// that diff_id, and the diff_id comes from the config the chain
    /// verified.
    pub fn verify_with_snapshots(
        store: &Store,
        snapshots: Option<&SnapshotStore>,
        reference: &str,
        named: &Digest,
    ) -> Result<Self, ImageError> {
        let record = store
            .image(reference)
            .map_err(|source| ImageError::Store {
                manifest: named.clone(),
                source,
            })?
            .ok_or_else(|| ImageError::NotInStore {
                reference: reference.to_owned(),
            })?;
        let top = record.index.as_ref().unwrap_or(&record.manifest);
        if top != named {
            return Err(ImageError::WrongManifest {
                reference: reference.to_owned(),
                expected: named.clone(),
                got: top.clone(),
            });
        }
        if let Some(index) = &record.index {
            let listed = match parse_manifest(store, index)? {
                Manifest::Index(i) => i.manifests.iter().any(|d| d.digest == record.manifest),
                Manifest::Image(_) => false,
            };
            if !listed {
                return Err(ImageError::NotInIndex {
                    manifest: record.manifest.clone(),
                    index: index.clone(),
                });
            }
        }
        let image = Self::load(store, &record.manifest)?;
        for layer in &image.layers {
            let unpacked = snapshots.is_some_and(|s| s.get(&layer.diff_id).is_some());
            if !unpacked {
                check_recorded(store, &layer.blob, layer.size)?;
            }
        }
        Ok(image)
    }

    /// Makes sure every layer has a snapshot; returns their `fs/` directories
    /// bottom → top (overlayfs lowerdirs). Blocking: unpacks what is missing
    /// (each layer read once, its diff_id checked while unpacking).
    pub fn ensure_snapshots(
        &self,
        store: &Store,
        snapshots: &SnapshotStore,
    ) -> Result<Vec<PathBuf>, ImageError> {
        ensure_snapshots(store, snapshots, &self.manifest, &self.layers)
    }

    /// The diff_ids of this image (what its snapshots are keyed by).
    pub fn diff_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|l| &l.diff_id)
    }
}

/// The snapshot directories of `layers` (of image `manifest`), bottom →
/// top, unpacking the missing ones. Blocking.
pub fn ensure_snapshots(
    store: &Store,
    snapshots: &SnapshotStore,
    manifest: &Digest,
    layers: &[Layer],
) -> Result<Vec<PathBuf>, ImageError> {
    layers
        .iter()
        .enumerate()
        .map(|(index, layer)| {
            snapshots
                .ensure(
                    &layer.diff_id,
                    &store.blob_path(&layer.blob),
                    &layer.media_type,
                )
                .map_err(|source| ImageError::Snapshot {
                    manifest: manifest.clone(),
                    index,
                    source: Box::new(source),
                })
        })
        .collect()
}

/// The image config blob `config` of image `manifest`. Blocking.
pub fn config(
    store: &Store,
    manifest: &Digest,
    config: &Digest,
) -> Result<ImageConfiguration, ImageError> {
    let bytes = read(store, manifest, config)?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Config {
        digest: config.clone(),
        source,
    })
}

fn read(store: &Store, manifest: &Digest, digest: &Digest) -> Result<Vec<u8>, ImageError> {
    store
        .read_blob(digest, MAX_MANIFEST_BYTES)
        .map_err(|source| ImageError::Store {
            manifest: manifest.clone(),
            source,
        })
}

fn parse_manifest(store: &Store, digest: &Digest) -> Result<Manifest, ImageError> {
    Manifest::parse(&read(store, digest, digest)?, None).map_err(|source| ImageError::Manifest {
        digest: digest.clone(),
        source,
    })
}

fn read_config(
    store: &Store,
    manifest: &Digest,
    desc: &Descriptor,
) -> Result<ImageConfiguration, ImageError> {
    let bytes = read(store, manifest, &desc.digest)?;
    if bytes.len() as u64 != desc.size {
        return Err(ImageError::ConfigSize {
            manifest: manifest.clone(),
            config: desc.digest.clone(),
            actual: bytes.len() as u64,
            expected: desc.size,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Config {
        digest: desc.digest.clone(),
        source,
    })
}

fn layers_of(
    manifest: &Digest,
    image: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<Layer>, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.layers.len() {
        return Err(ImageError::LayerCount {
            manifest: manifest.clone(),
            layers: image.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    image
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            Ok(Layer {
                blob: d.digest.clone(),
                media_type: d.media_type.clone(),
                diff_id: Digest::new(diff_id.as_str()).map_err(|source| ImageError::DiffId {
                    manifest: manifest.clone(),
                    diff_id: diff_id.clone(),
                    source,
                })?,
                size: d.size,
            })
        })
        .collect()
}

/// The blob is recorded by the store (verified on entry) with `size`, and
/// its file has that size.
fn check_recorded(store: &Store, digest: &Digest, size: u64) -> Result<(), ImageError> {
    let recorded = store
        .blob_info(digest)
        .map_err(|source| ImageError::Store {
            manifest: digest.clone(),
            source,
        })?
        .map(|i| i.size);
    let on_disk = std::fs::metadata(store.blob_path(digest))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    if recorded == Some(size) && on_disk == Some(size) {
        Ok(())
    } else {
        Err(ImageError::Unverified {
            digest: digest.clone(),
            expected: size,
            recorded,
            on_disk,
        })
    }
}
