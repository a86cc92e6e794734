//! Layer deltas computed when a rollout deploys, before any device asks
//! (issue 13: "for the base layers its devices actually run, when a rollout
//! or release needs them, off the request path"). The engine hands over
//! (running image, target image) pairs through
//! [`UpdatePreparer`](crate::fleet::ports::UpdatePreparer); for each
//! target layer the running image lacks, [`Deltas::prepare`] starts the
//! delta against the running image's diff_ids in order: exactly the
//! `bases` an agent sends (protocol/DELTA.md, "How the agent uses them").

use std::collections::BTreeSet;

use fleet_protocol::Digest;
use fleet_protocol::oci::Manifest;

use super::delta::Outcome;
use super::{ContentError, ContentStore, Deltas};
use crate::fleet::ports::{FetchEstimate, ImageUpdate, UpdatePreparer};

/// Why an image's layers could not be read for preparing deltas.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("image {manifest}: {source}")]
    Content {
        manifest: Digest,
        #[source]
        source: ContentError,
    },
    #[error("image {manifest} is not a single-platform image manifest")]
    NotAnImage { manifest: Digest },
    #[error("image {manifest}: its config has no valid rootfs.diff_ids")]
    BadConfig { manifest: Digest },
}

/// An image's layers: (blob digest, diff_id), lowest first.
pub fn image_layers(
    store: &ContentStore,
    manifest: &Digest,
) -> Result<Vec<(Digest, Digest)>, PrepareError> {
    let content = |source| PrepareError::Content {
        manifest: manifest.clone(),
        source,
    };
    let bytes = store.read_blob(manifest).map_err(content)?;
    let Ok(Manifest::Image(image)) = Manifest::parse(&bytes, None) else {
        return Err(PrepareError::NotAnImage {
            manifest: manifest.clone(),
        });
    };
    let config = store.read_blob(&image.config.digest).map_err(content)?;
    let bad = || PrepareError::BadConfig {
        manifest: manifest.clone(),
    };
    let config: serde_json::Value = serde_json::from_slice(&config).map_err(|_| bad())?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|d| d.as_str().and_then(|d| Digest::new(d).ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)?;
    if diff_ids.len() != image.layers.len() {
        return Err(bad());
    }
    Ok(image
        .layers
        .into_iter()
        .map(|l| l.digest)
        .zip(diff_ids)
        .collect())
}

/// The (target layer blob, bases) pairs a device moving from image `from`
/// to image `to` will ask deltas for: every layer of `to` whose diff_id
/// `from` lacks, against all of `from`'s diff_ids in order.
pub fn deltas_needed(
    store: &ContentStore,
    update: &ImageUpdate,
) -> Result<Vec<(Digest, Vec<Digest>)>, PrepareError> {
    let bases: Vec<Digest> = image_layers(store, &update.from)?
        .into_iter()
        .map(|(_, diff_id)| diff_id)
        .collect();
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    Ok(image_layers(store, &update.to)?
        .into_iter()
        .filter(|(_, diff_id)| !bases.contains(diff_id))
        .map(|(blob, _)| (blob, bases.clone()))
        .collect())
}

impl Deltas {
    /// Starts the deltas of every update (blocking: reads manifests and
    /// configs); returns how many (target, bases) pairs were handed to
    /// [`Deltas::prepare`]. Must be called inside a tokio runtime.
    pub fn prepare_updates(&self, updates: &[ImageUpdate]) -> usize {
        let mut pairs = BTreeSet::new();
        for update in updates {
            match deltas_needed(self.store(), update) {
                Ok(needed) => pairs.extend(needed),
                Err(e) => tracing::info!(
                    from = %update.from, to = %update.to, error = %fleet_protocol::report(&e),
                    "no layer deltas prepared for this update"
                ),
            }
        }
        for (target, bases) in &pairs {
            self.prepare(target, bases);
        }
        pairs.len()
    }
}

impl Deltas {
    /// [`UpdatePreparer::estimate`]: the layers of `to` whose diff_id
    /// `from` lacks, each at its delta's size when one is ready, else whole.
    pub fn estimate_fetch(&self, from: Option<&Digest>, to: &Digest) -> Option<FetchEstimate> {
        let store = self.store();
        let bases: Vec<Digest> = match from {
            Some(from) => image_layers(store, from)
                .ok()?
                .into_iter()
                .map(|(_, d)| d)
                .collect(),
            None => Vec::new(),
        };
        let mut e = FetchEstimate::default();
        if from != Some(to) {
            let bytes = store.read_blob(to).ok()?;
            if let Ok(Manifest::Image(image)) = Manifest::parse(&bytes, None) {
                e.bytes += store.blob_size(&image.config.digest).unwrap_or(0);
            }
        }
        for (blob, diff_id) in image_layers(store, to).ok()? {
            if bases.contains(&diff_id) {
                continue;
            }
            let whole = store.blob_size(&blob).unwrap_or(0);
            e.layers += 1;
            e.whole_bytes += whole;
            let delta = (!bases.is_empty())
                .then(|| self.known(&blob, &bases))
                .flatten();
            match delta {
                Some(Outcome::Ready { delta_bytes, .. }) if delta_bytes < whole => {
                    e.deltas += 1;
                    e.bytes += delta_bytes;
                }
                _ => e.bytes += whole,
            }
        }
        Some(e)
    }
}

impl UpdatePreparer for Deltas {
    fn estimate(&self, from: Option<&Digest>, to: &Digest) -> Option<FetchEstimate> {
        self.estimate_fetch(from, to)
    }

    fn prepare(&self, updates: Vec<ImageUpdate>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to prepare layer deltas on; devices will ask for them");
            return;
        };
        let this = self.clone();
        let _task = runtime.spawn(async move {
            // Blocking-pool threads are inside the runtime: `prepare` spawns.
            let started = tokio::task::spawn_blocking(move || this.prepare_updates(&updates)).await;
            match started {
                Ok(n) => tracing::info!(deltas = n, "layer deltas prepared for a rollout"),
                Err(e) => tracing::warn!(error = %e, "preparing layer deltas failed"),
            }
        });
    }
}
