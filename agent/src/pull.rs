//! Pulling an image into the content store: resolve the reference (index →
//! this platform's manifest), skip what the store already has, check disk
//! space before the first byte, download the rest (bounded, verified,
//! resumable), then record the manifests and the image.

mod delta;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_protocol::{Digest, ImageRef};
use serde::Serialize;
use tokio::task::JoinSet;

use self::delta::DeltaJob;
use crate::fetch::{
    BlobDownload, Client, Descriptor, FetchError, ImageManifest, Manifest, ManifestError, Platform,
};
use crate::snapshot::SnapshotStore;
use crate::store::{ImageRecord, Store, StoreError};

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {digest} in the store is invalid")]
    StoredManifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("{reference}: the index entry {digest} for {platform} is itself an index")]
    NestedIndex {
        reference: String,
        digest: Digest,
        platform: String,
    },
    #[error("a download task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl PullError {
    /// The disk-space shortfall, if that is why the pull failed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, PullError::Store(StoreError::DiskFull { .. }))
    }

    /// Whether a newer desired state stopped the pull (its partial downloads
    /// are kept).
    pub fn is_interruption(&self) -> bool {
        matches!(self, PullError::Fetch(e) if e.is_interruption())
    }
}

/// Progress of a pull, as emitted to the caller (and as `-o json` lines).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is known; `needed_bytes` will be downloaded at most.
    Resolved {
        reference: String,
        manifest: Digest,
        index: Option<Digest>,
        blobs: usize,
        total_bytes: u64,
        reused_bytes: u64,
        needed_bytes: u64,
    },
    /// Bytes of one blob present so far (throttled: about every 1%).
    Progress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// One blob is verified and in the store (for a layer rebuilt from a
    /// delta: its snapshot is, and `fetched` counts the delta's bytes).
    BlobDone {
        digest: Digest,
        size: u64,
        fetched: u64,
        resumed_from: u64,
    },
    /// The layer `layer` was rebuilt from a delta of `delta_bytes` instead
    /// of fetching its `layer_bytes`.
    DeltaApplied {
        layer: Digest,
        diff_id: Digest,
        delta_bytes: u64,
        layer_bytes: u64,
    },
    /// A delta for `layer` could not be used; the whole layer is fetched.
    DeltaFallback {
        layer: Digest,
        reason: String,
    },
    Done(PullSummary),
}

/// The outcome of a pull.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PullSummary {
    pub reference: String,
    pub manifest: Digest,
    pub index: Option<Digest>,
    pub config: Digest,
    pub layers: Vec<Digest>,
    /// Sizes of the config and layers.
    pub total_bytes: u64,
    /// Body bytes received from the registry (manifests included).
    pub bytes_fetched: u64,
    /// Blob bytes that were already in the store.
    pub bytes_reused: u64,
    pub blobs_fetched: usize,
    pub blobs_reused: usize,
}

/// Receives pull events; called from download tasks.
pub type EventSink = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// Pulls images into a [`Store`] with a [`Client`].
#[derive(Clone)]
pub struct Puller {
    client: Client,
    store: Arc<Store>,
    platform: Platform,
    /// Where layers rebuilt from deltas go (and base files come from);
    /// `None`: layers are always fetched whole.
    snapshots: Option<Arc<SnapshotStore>>,
}

struct Got {
    digest: Digest,
    media_type: String,
    bytes: Vec<u8>,
    manifest: Manifest,
    fetched: u64,
}

impl Puller {
    pub fn new(client: Client, store: Arc<Store>, platform: Platform) -> Self {
        Self {
            client,
            store,
            platform,
            snapshots: None,
        }
    }

    /// Lets [`Puller::pull_with_bases`] ask the registry for layer deltas
    /// and rebuild layers into `snapshots` from them; a layer whose
    /// snapshot exists is then not fetched at all.
    pub fn with_deltas(mut self, snapshots: Arc<SnapshotStore>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// A clone whose downloads stop once `token` is cancelled, keeping what
    /// arrived ([`Client::interrupted_by`]).
    pub fn interrupted_by(&self, token: tokio_util::sync::CancellationToken) -> Self {
        Self {
            client: self.client.interrupted_by(token),
            ..self.clone()
        }
    }

    pub(super) fn snapshots(&self) -> Option<&Arc<SnapshotStore>> {
        self.snapshots.as_ref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Pulls `image` for this puller's platform and records it as kept.
    pub async fn pull(
        &self,
        image: &ImageRef,
        events: EventSink,
    ) -> Result<PullSummary, PullError> {
        self.pull_with_bases(image, &[], events).await
    }

    /// [`Puller::pull`] for a device that has the layers `bases` (diff_ids,
    /// bottom → top: the running release's) unpacked: with deltas enabled
    /// ([`Puller::with_deltas`]), a missing layer the registry has a delta
    /// for (against those bases) is rebuilt from it; any failure of a delta
    /// falls back to the whole layer ([`PullEvent::DeltaFallback`]).
    pub async fn pull_with_bases(
        &self,
        image: &ImageRef,
        bases: &[Digest],
        events: EventSink,
    ) -> Result<PullSummary, PullError> {
        let _lease = self.store.lease().await;
        let reference = image.to_string();
        let (index, manifest, mut fetched) = self.resolve(image, &reference).await?;
        let Manifest::Image(image_manifest) = &manifest.manifest else {
            return Err(PullError::NestedIndex {
                reference,
                digest: manifest.digest.clone(),
                platform: self.platform.to_string(),
            });
        };

        let blobs: Vec<Descriptor> = image_manifest.blobs().into_iter().cloned().collect();
        let (mut present, mut missing): (Vec<_>, Vec<_>) = blobs
            .iter()
            .cloned()
            .partition(|d| self.store.has_blob(&d.digest));
        let plan = self
            .plan_layers(image, image_manifest, &mut missing, bases, &events)
            .await?;
        present.extend(plan.unpacked);
        let total_bytes: u64 = blobs.iter().map(|d| d.size).sum();
        let reused_bytes: u64 = present.iter().map(|d| d.size).sum();
        let mut needed: u64 = missing
            .iter()
            .map(|d| match plan.deltas.get(&d.digest) {
                Some(job) => job.needed(&self.store),
                None => d.size.saturating_sub(
                    self.store
                        .partial(&d.digest)
                        .resumable_len(&d.digest, d.size),
                ),
            })
            .sum();
        for m in index.iter().chain([&manifest]) {
            if !self.store.has_blob(&m.digest) {
                needed += m.bytes.len() as u64;
            }
        }
        self.store.ensure_space(needed)?;
        events(PullEvent::Resolved {
            reference: reference.clone(),
            manifest: manifest.digest.clone(),
            index: index.as_ref().map(|i| i.digest.clone()),
            blobs: blobs.len(),
            total_bytes,
            reused_bytes,
            needed_bytes: needed,
        });

        let manifest_bytes = fetched;
        fetched += plan.fetched;
        fetched += self
            .fetch_missing(image, &missing, plan.deltas, &events)
            .await?;

        for m in index.iter().chain([&manifest]) {
            self.store.put_blob(&m.digest, &m.bytes, &m.media_type)?;
        }
        // Blobs were counted as they were committed; manifests and what the
        // store already had are counted once here (before `put_image`
        // flushes).
        count_content(&self.store, manifest_bytes, reused_bytes);
        self.store.put_image(&ImageRecord {
            reference: reference.clone(),
            manifest: manifest.digest.clone(),
            index: index.as_ref().map(|i| i.digest.clone()),
            kept: true,
        })?;
        let summary = summarize(
            reference,
            &manifest.digest,
            index.as_ref().map(|i| &i.digest),
            image_manifest,
            total_bytes,
            fetched,
            reused_bytes,
            (missing.len() + plan.fetched_blobs, present.len()),
        );
        events(PullEvent::Done(summary.clone()));
        Ok(summary)
    }

    /// The image manifest for this puller's platform: `image`'s own, or the
    /// matching child of its index. Returns (index, manifest, bytes fetched).
    async fn resolve(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Option<Got>, Got, u64), PullError> {
        let top = self
            .manifest(image, image.reference(), image.digest())
            .await?;
        let fetched = top.fetched;
        match &top.manifest {
            Manifest::Image(_) => Ok((None, top, fetched)),
            Manifest::Index(idx) => {
                let desc = idx
                    .select(&self.platform)
                    .ok_or_else(|| FetchError::NoPlatform {
                        reference: reference.to_owned(),
                        platform: self.platform.to_string(),
                        available: idx.platforms().join(", "),
                    })?;
                let child = self
                    .manifest(image, desc.digest.as_str(), Some(&desc.digest))
                    .await?;
                let fetched = fetched + child.fetched;
                Ok((Some(top), child, fetched))
            }
        }
    }

    /// Downloads the `missing` blobs concurrently; returns the bytes fetched.
    /// The first failure stops the others (their partials stay for a resume).
    async fn fetch_missing(
        &self,
        image: &ImageRef,
        missing: &[Descriptor],
        mut deltas: HashMap<Digest, DeltaJob>,
        events: &EventSink,
    ) -> Result<u64, PullError> {
        let mut fetched = 0;
        let mut tasks = JoinSet::new();
        for desc in missing.iter().cloned() {
            let (client, store, image, events) = (
                self.client.clone(),
                self.store.clone(),
                image.clone(),
                events.clone(),
            );
            match (deltas.remove(&desc.digest), self.snapshots.clone()) {
                (Some(job), Some(snapshots)) => {
                    let ctx = delta::Ctx {
                        client,
                        store,
                        snapshots,
                        image,
                        events,
                    };
                    tasks.spawn(async move { delta::fetch_layer(ctx, desc, job).await })
                }
                _ => {
                    tasks.spawn(async move { fetch_blob(client, store, image, desc, events).await })
                }
            };
        }
        while let Some(done) = tasks.join_next().await {
            match done.map_err(PullError::Task).and_then(|r| r) {
                Ok(dl) => fetched += dl.fetched,
                Err(e) if e.is_interruption() => {
                    // Every download sees the same interruption: let them
                    // stop on their own, their partials and journals whole.
                    while tasks.join_next().await.is_some() {}
                    return Err(e);
                }
                Err(e) => {
                    tasks.shutdown().await;
                    return Err(e);
                }
            }
        }

        Ok(fetched)
    }

    /// A manifest from the store when its digest is known and present (no
    /// request at all), else from the registry.
    async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
        digest: Option<&Digest>,
    ) -> Result<Got, PullError> {
        if let Some(d) = digest
            && self.store.has_blob(d)
        {
            let bytes = self
                .store
                .read_blob(d, self.client.config().max_manifest_bytes)?;
            let manifest =
                Manifest::parse(&bytes, None).map_err(|source| PullError::StoredManifest {
                    digest: d.clone(),
                    source,
                })?;
            return Ok(Got {
                digest: d.clone(),
                media_type: manifest.media_type().to_owned(),
                bytes,
                manifest,
                fetched: 0,
            });
        }
        let m = self.client.fetch_manifest(image, reference, digest).await?;
        Ok(Got {
            fetched: m.bytes.len() as u64,
            digest: m.digest,
            media_type: m.media_type,
            bytes: m.bytes,
            manifest: m.manifest,
        })
    }
}

pub(super) async fn fetch_blob(
    client: Client,
    store: Arc<Store>,
    image: ImageRef,
    desc: Descriptor,
    events: EventSink,
) -> Result<BlobDownload, PullError> {
    let _downloading = store.download_lock(&desc.digest).await;
    if store.has_blob(&desc.digest) {
        // Another pull stored it while this one waited.
        count_content(&store, 0, desc.size);
        events(PullEvent::BlobDone {
            digest: desc.digest.clone(),
            size: desc.size,
            fetched: 0,
            resumed_from: 0,
        });
        return Ok(BlobDownload::default());
    }
    let partial = store.partial(&desc.digest);
    let step = (desc.size / 100).max(1024 * 1024);
    let last = AtomicU64::new(0);
    let progress = |done: u64| {
        let prev = last.load(Ordering::Relaxed);
        if done >= prev + step || (done == desc.size && prev != done) {
            last.store(done, Ordering::Relaxed);
            events(PullEvent::Progress {
                digest: desc.digest.clone(),
                done,
                total: desc.size,
            });
        }
    };
    let dl = client
        .download_blob(&image, &desc, &partial, &progress)
        .await?;
    let (st, d, mt, p) = (
        store.clone(),
        desc.digest.clone(),
        desc.media_type.clone(),
        partial.clone(),
    );
    tokio::task::spawn_blocking(move || st.commit_partial(&d, &p, &mt))
        .await
        .map_err(PullError::Task)??;
    // The blob's content came over the network (in this or an earlier,
    // resumed attempt); retransmitted bytes are not content.
    count_content(&store, desc.size, 0);
    events(PullEvent::BlobDone {
        digest: desc.digest.clone(),
        size: desc.size,
        fetched: dl.fetched,
        resumed_from: dl.resumed_from,
    });
    Ok(dl)
}

/// Adds to the store's content counters; a failure costs only telemetry.
pub(super) fn count_content(store: &Store, fetched: u64, reused: u64) {
    if let Err(e) = store.add_content_counters(fetched, reused) {
        tracing::warn!(error = %e, "cannot update the content byte counters");
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    reference: String,
    manifest: &Digest,
    index: Option<&Digest>,
    m: &ImageManifest,
    total_bytes: u64,
    bytes_fetched: u64,
    bytes_reused: u64,
    (blobs_fetched, blobs_reused): (usize, usize),
) -> PullSummary {
    PullSummary {
        reference,
        manifest: manifest.clone(),
        index: index.cloned(),
        config: m.config.digest.clone(),
        layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
        total_bytes,
        bytes_fetched,
        bytes_reused,
        blobs_fetched,
        blobs_reused,
    }
}
