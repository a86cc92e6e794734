//! A pulled image, read back from the content store: its config and its
//! layers (blob, media type, diff_id) bottom → top, and the snapshots that
//! make up its root filesystem.
//!
//! Everything here is read from blobs whose digests the store verified on the
//! way in, and re-checked: the manifest's layer count must match the config's
//! `rootfs.diff_ids`, and each snapshot's diff_id is verified while unpacking.

use std::path::PathBuf;

use fleet_protocol::Digest;
use oci_spec::image::ImageConfiguration;

use crate::fetch::manifest::{ImageManifest, Manifest};
use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::store::{Store, StoreError};

/// Upper bound for a manifest or config read from the store.
const MAX_METADATA_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {manifest}: reading from the content store")]
    Store {
        manifest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("image {manifest}: {what}")]
    Invalid { manifest: Digest, what: String },
    #[error("image {manifest}: layer {index}")]
    Snapshot {
        manifest: Digest,
        index: usize,
        #[source]
        source: Box<SnapshotError>,
    },
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Digest,
    pub media_type: String,
    pub diff_id: Digest,
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
        let invalid = |what: String| ImageError::Invalid {
            manifest: manifest.clone(),
            what,
        };
        let read = |d: &Digest| {
            store
                .read_blob(d, MAX_METADATA_BYTES)
                .map_err(|source| ImageError::Store {
                    manifest: manifest.clone(),
                    source,
                })
        };
        let image: ImageManifest = match Manifest::parse(&read(manifest)?, None) {
            Ok(Manifest::Image(m)) => m,
            Ok(Manifest::Index(_)) => {
                return Err(invalid("is an index, not an image manifest".into()));
            }
            Err(e) => return Err(invalid(format!("unreadable manifest: {e}"))),
        };
        let config_bytes = read(&image.config.digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("unreadable image config: {e}")))?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != image.layers.len() {
            return Err(invalid(format!(
                "{} layers in the manifest but {} diff_ids in the config",
                image.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = image
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| {
                Ok(Layer {
                    blob: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    diff_id: Digest::new(diff_id.as_str())
                        .map_err(|e| invalid(format!("bad diff_id: {e}")))?,
                    size: d.size,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        Ok(Self {
            manifest: manifest.clone(),
            config_digest: image.config.digest.clone(),
            config,
            layers,
        })
    }

    /// Makes sure every layer has a snapshot; returns their `fs/` directories
    /// bottom → top (overlayfs lowerdirs). Blocking: unpacks what is missing.
    pub fn ensure_snapshots(
        &self,
        store: &Store,
        snapshots: &SnapshotStore,
    ) -> Result<Vec<PathBuf>, ImageError> {
        self.layers
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
                        manifest: self.manifest.clone(),
                        index,
                        source: Box::new(source),
                    })
            })
            .collect()
    }

    /// The diff_ids of this image (what its snapshots are keyed by).
    pub fn diff_ids(&self) -> impl Iterator<Item = &Digest> {
        self.layers.iter().map(|l| &l.diff_id)
    }
}
