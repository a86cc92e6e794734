//! Layers from deltas (protocol/DELTA.md): which missing layers the
//! registry has a delta for against the layers the device runs, and
//! fetching one: the delta is downloaded like a blob (Range, journal,
//! SHA-256, so an interrupted download resumes), stored under its digest,
//! then applied and unpacked in one stream into a snapshot that is
//! committed only if the rebuilt tar hashes to the layer's diff_id (from
//! the image config, whose digest the signed release chain names). Any
//! failure to use a delta discards it and fetches the whole layer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_protocol::{Digest, ImageRef};
use serde::Deserialize;

use super::{EventSink, PullError, PullEvent, Puller, count_content, fetch_blob};
use crate::fetch::{BlobDownload, Client, DeltaOffer, DeltaProbe, Descriptor, ImageManifest};
use crate::snapshot::SnapshotStore;
use crate::store::Store;

/// The media type a delta is recorded under while it sits in the store.
pub const DELTA_MEDIA_TYPE: &str = "application/vnd.fleet.layer.delta.v1";

/// How the missing layers will be had, beyond a plain download.
#[derive(Default)]
pub(super) struct LayerPlan {
    /// Layers whose snapshot the device already has: not fetched at all.
    pub unpacked: Vec<Descriptor>,
    /// Layers to rebuild from a delta, by layer blob digest.
    pub deltas: HashMap<Digest, DeltaJob>,
    /// Bytes and blobs fetched while planning (the image config).
    pub fetched: u64,
    pub fetched_blobs: usize,
}

/// One layer to rebuild from a delta.
#[derive(Clone, Debug)]
pub(super) struct DeltaJob {
    offer: DeltaOffer,
    diff_id: Digest,
    bases: Vec<Digest>,
}

impl DeltaJob {
    /// Bytes still to download for it.
    pub fn needed(&self, store: &Store) -> u64 {
        if store.has_blob(&self.offer.digest) {
            return 0;
        }
        let o = &self.offer;
        o.size
            .saturating_sub(store.partial(&o.digest).resumable_len(&o.digest, o.size))
    }
}

/// The part of an image config planning needs.
#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    diff_ids: Vec<Digest>,
}

impl Puller {
    /// With deltas enabled: fetches the image config first if it is
    /// missing (taking it out of `missing`), moves layers whose snapshot
    /// exists out of `missing`, and asks the registry for a delta of each
    /// remaining layer against `bases` (those of them that have snapshots).
    pub(super) async fn plan_layers(
        &self,
        image: &ImageRef,
        manifest: &ImageManifest,
        missing: &mut Vec<Descriptor>,
        bases: &[Digest],
        events: &EventSink,
    ) -> Result<LayerPlan, PullError> {
        let mut plan = LayerPlan::default();
        let Some(snapshots) = self.snapshots() else {
            return Ok(plan);
        };
        let config = &manifest.config;
        if let Some(pos) = missing.iter().position(|d| d.digest == config.digest) {
            let desc = missing.remove(pos);
            // The disk check before the first byte, for this small one.
            self.store().ensure_space(desc.size)?;
            let (client, store) = (self.client().clone(), self.store().clone());
            let dl = fetch_blob(client, store, image.clone(), desc, events.clone()).await?;
            plan.fetched += dl.fetched;
            plan.fetched_blobs += 1;
        }
        let Some(diff_ids) = self.diff_ids(&config.digest) else {
            return Ok(plan);
        };
        let bases: Vec<Digest> = bases
            .iter()
            // A snapshot without a skeleton (made before delta format v2)
            // cannot be a base: its layer is fetched whole if needed.
            .filter(|b| snapshots.skeleton(b).is_some())
            .take(fleet_protocol::delta::MAX_BASES as usize)
            .cloned()
            .collect();
        let mut remaining = Vec::new();
        for desc in missing.drain(..) {
            let diff_id = manifest
                .layers
                .iter()
                .position(|l| l.digest == desc.digest)
                .and_then(|i| diff_ids.get(i));
            match diff_id {
                Some(d) if snapshots.get(d).is_some() => plan.unpacked.push(desc),
                Some(d) if !bases.is_empty() => {
                    if let Some(job) = self.probe(image, &desc, d, &bases).await {
                        plan.deltas.insert(desc.digest.clone(), job);
                    }
                    remaining.push(desc);
                }
                _ => remaining.push(desc),
            }
        }
        *missing = remaining;
        Ok(plan)
    }

    /// The diff_ids of the config blob `config` in the store, if readable.
    fn diff_ids(&self, config: &Digest) -> Option<Vec<Digest>> {
        let limit = self.client().config().max_manifest_bytes;
        let parsed = self
            .store()
            .read_blob(config, limit)
            .ok()
            .and_then(|b| serde_json::from_slice::<ConfigRootfs>(&b).ok());
        if parsed.is_none() {
            tracing::debug!(%config, "image config unreadable: no deltas for this pull");
        }
        parsed.map(|c| c.rootfs.diff_ids)
    }

    async fn probe(
        &self,
        image: &ImageRef,
        layer: &Descriptor,
        diff_id: &Digest,
        bases: &[Digest],
    ) -> Option<DeltaJob> {
        match self.client().probe_delta(image, &layer.digest, bases).await {
            DeltaProbe::Ready(offer) if &offer.target == diff_id && offer.size < layer.size => {
                Some(DeltaJob {
                    offer,
                    diff_id: diff_id.clone(),
                    bases: bases.to_vec(),
                })
            }
            DeltaProbe::Ready(offer) => {
                tracing::info!(layer = %layer.digest, target = %offer.target, size = offer.size,
                    "delta offered for another target or not smaller: fetching the layer");
                None
            }
            DeltaProbe::Pending => {
                tracing::debug!(layer = %layer.digest, "delta still being computed: fetching the layer");
                None
            }
            DeltaProbe::Unavailable { reason } => {
                tracing::debug!(layer = %layer.digest, %reason, "no delta: fetching the layer");
                None
            }
        }
    }
}

/// What a delta download task works with.
pub(super) struct Ctx {
    pub client: Client,
    pub store: Arc<Store>,
    pub snapshots: Arc<SnapshotStore>,
    pub image: ImageRef,
    pub events: EventSink,
}

/// Why a delta was not used.
enum Failed {
    /// The network failed: the whole layer would not come either; the
    /// delta's partial download stays for the next attempt.
    Network(PullError),
    /// The delta is unusable (corrupt, wrong, bases changed): fall back.
    Unusable { reason: String, fetched: u64 },
}

/// Rebuilds the layer `desc` from `job`'s delta into its snapshot, or
/// fetches it whole when the delta cannot be used.
pub(super) async fn fetch_layer(
    ctx: Ctx,
    desc: Descriptor,
    job: DeltaJob,
) -> Result<BlobDownload, PullError> {
    match try_delta(&ctx, &desc, &job).await {
        Ok(None) => {
            // Another task of this pull rebuilt the same layer meanwhile.
            (ctx.events)(PullEvent::BlobDone {
                digest: desc.digest.clone(),
                size: desc.size,
                fetched: 0,
                resumed_from: 0,
            });
            Ok(BlobDownload::default())
        }
        Ok(Some(dl)) => {
            count_content(&ctx.store, job.offer.size, 0);
            if let Err(e) = ctx.store.add_delta_counters(job.offer.size, desc.size, 0) {
                tracing::warn!(error = %e, "cannot update the delta counters");
            }
            (ctx.events)(PullEvent::DeltaApplied {
                layer: desc.digest.clone(),
                diff_id: job.diff_id.clone(),
                delta_bytes: job.offer.size,
                layer_bytes: desc.size,
            });
            (ctx.events)(PullEvent::BlobDone {
                digest: desc.digest.clone(),
                size: desc.size,
                fetched: dl.fetched,
                resumed_from: dl.resumed_from,
            });
            Ok(dl)
        }
        Err(Failed::Network(e)) => Err(e),
        Err(Failed::Unusable { reason, fetched }) => {
            tracing::warn!(layer = %desc.digest, %reason, "layer delta unusable: fetching the whole layer");
            if let Err(e) = ctx.store.add_delta_counters(0, 0, 1) {
                tracing::warn!(error = %e, "cannot update the delta counters");
            }
            (ctx.events)(PullEvent::DeltaFallback {
                layer: desc.digest.clone(),
                reason,
            });
            ctx.store.ensure_space(desc.size)?;
            let mut dl = fetch_blob(ctx.client, ctx.store, ctx.image, desc, ctx.events).await?;
            dl.fetched += fetched;
            Ok(dl)
        }
    }
}

/// The delta's download, `None` when the layer's snapshot appeared while
/// this task waited for another one using the same delta.
async fn try_delta(
    ctx: &Ctx,
    desc: &Descriptor,
    job: &DeltaJob,
) -> Result<Option<BlobDownload>, Failed> {
    let offer = &job.offer;
    let unusable = |reason: String, fetched| Failed::Unusable { reason, fetched };
    // Held through the apply: a second task for the same delta finds the
    // snapshot, not a removed delta to download again.
    let _using = ctx.store.download_lock(&offer.digest).await;
    if ctx.snapshots.get(&job.diff_id).is_some() {
        return Ok(None);
    }
    let dl = download(ctx, desc, offer).await?;
    let (snapshots, delta_file) = (ctx.snapshots.clone(), ctx.store.blob_path(&offer.digest));
    let (diff_id, bases, media_type) = (
        job.diff_id.clone(),
        job.bases.clone(),
        desc.media_type.clone(),
    );
    let applied = tokio::task::spawn_blocking(move || {
        snapshots.ensure_from_delta(
            &diff_id,
            &delta_file,
            &bases,
            &media_type,
            &fleet_protocol::delta::Limits::default(),
        )
    })
    .await;
    // Used or not, the delta has served its purpose.
    if let Err(e) = ctx.store.remove_blob(&offer.digest) {
        tracing::warn!(delta = %offer.digest, error = %e, "cannot remove an applied delta");
    }
    match applied {
        Ok(Ok(_)) => Ok(Some(dl)),
        Ok(Err(e)) => Err(unusable(fleet_protocol::report(&e), dl.fetched)),
        Err(e) => Err(unusable(format!("the apply task failed: {e}"), dl.fetched)),
    }
}

/// Downloads the delta into the store (unless a previous attempt did).
async fn download(
    ctx: &Ctx,
    desc: &Descriptor,
    offer: &DeltaOffer,
) -> Result<BlobDownload, Failed> {
    if ctx.store.has_blob(&offer.digest) {
        return Ok(BlobDownload::default());
    }
    let partial = ctx.store.partial(&offer.digest);
    let delta_desc = Descriptor::new(DELTA_MEDIA_TYPE, offer.digest.clone(), offer.size);
    // Progress is reported against the layer, scaled from the delta.
    let last = AtomicU64::new(0);
    let step = (offer.size / 100).max(256 * 1024);
    let progress = |done: u64| {
        let prev = last.load(Ordering::Relaxed);
        if done >= prev + step || (done == offer.size && prev != done) {
            last.store(done, Ordering::Relaxed);
            let scaled = u128::from(done) * u128::from(desc.size) / u128::from(offer.size.max(1));
            (ctx.events)(PullEvent::Progress {
                digest: desc.digest.clone(),
                done: u64::try_from(scaled).unwrap_or(desc.size),
                total: desc.size,
            });
        }
    };
    let dl = match ctx
        .client
        .download_from(&ctx.image, &offer.url, &delta_desc, &partial, &progress)
        .await
    {
        Ok(dl) => dl,
        Err(e) if e.is_retryable() || e.is_interruption() => {
            return Err(Failed::Network(e.into()));
        }
        Err(e) => {
            partial.remove().await;
            return Err(Failed::Unusable {
                reason: format!("downloading the delta: {}", fleet_protocol::report(&e)),
                fetched: 0,
            });
        }
    };
    let (store, d, p) = (ctx.store.clone(), offer.digest.clone(), partial.clone());
    let committed =
        tokio::task::spawn_blocking(move || store.commit_partial(&d, &p, DELTA_MEDIA_TYPE)).await;
    match committed {
        Ok(Ok(())) => Ok(dl),
        Ok(Err(e)) => Err(Failed::Unusable {
            reason: format!("storing the delta: {}", fleet_protocol::report(&e)),
            fetched: dl.fetched,
        }),
        Err(e) => Err(Failed::Unusable {
            reason: format!("storing the delta: {e}"),
            fetched: dl.fetched,
        }),
    }
}
