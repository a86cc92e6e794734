//! The engine's handle and write path: one blocking step at a time under the
//! write lock, then the outbox (publishing desired states), the batched
//! persistence of the devices' latest state, and the device messages the
//! link hands over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use fleet_protocol::{DeviceId, GroupName, TrustedRoot};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ports::{DesiredPublisher, ImageUpdate, Inbound, UpdatePreparer};
use super::{FleetError, RolloutView, now, now_f64};
use crate::director::Director;
use crate::store::{
    DesiredRecord, DeviceRecord, EventKind, EventRecord, GroupRecord, RolloutId, RolloutRecord,
    Store, StoreError, TelemetryRecord, Write,
};
use crate::telemetry::gates::{GateCounters, GateCounts};
use crate::telemetry::updates::{Updates, UpdatesSnapshot};
use crate::telemetry::{DeviceLive, IngestCounters, Live, MessageKind};

/// Devices written per store commit by [`Fleet::flush`].
const FLUSH_BATCH_DEVICES: usize = 500;

pub(super) fn event(
    kind: EventKind,
    subject: impl ToString,
    message: impl Into<String>,
    at: u64,
) -> Write {
    Write::Event(EventRecord {
        seq: 0,
        at,
        kind,
        subject: subject.to_string(),
        message: message.into(),
    })
}

#[derive(Clone)]
pub struct Fleet {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn Store>,
    pub(super) director: Director,
    pub(super) trust: TrustedRoot,
    publisher: Arc<dyn DesiredPublisher>,
    pub(super) preparer: Arc<dyn UpdatePreparer>,
    /// Image updates the deploys of the current change give devices, handed
    /// to the preparer once the change commits.
    pub(super) updates_due: Mutex<BTreeSet<ImageUpdate>>,
    write: Mutex<()>,
    publish: AsyncMutex<()>,
    /// The latest state of every device (the store lags by one flush).
    pub(super) live: Live,
    updates: Updates,
    counters: Arc<IngestCounters>,
    pub(super) gates: GateCounters,
    /// Whether a Prometheus runs the PromQL gates' queries.
    pub(super) prometheus: std::sync::atomic::AtomicBool,
}

/// Desired records, rollouts and groups changed within one step, on top of
/// the store.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) desired: BTreeMap<DeviceId, DesiredRecord>,
    /// Rollouts stepped in this step, as they are now.
    pub(super) rollouts: BTreeMap<RolloutId, RolloutRecord>,
    /// Rollouts that became final in this step, not yet looked at by the
    /// channels (their queued releases start then).
    pub(super) finished: Vec<RolloutId>,
    /// Groups changed in this step (their follows).
    pub(super) groups: BTreeMap<GroupName, GroupRecord>,
}

impl Staged {
    pub(super) fn current(
        &self,
        store: &dyn Store,
        device: &DeviceId,
    ) -> Result<Option<DesiredRecord>, StoreError> {
        match self.desired.get(device) {
            Some(r) => Ok(Some(r.clone())),
            None => store.desired(device),
        }
    }

    /// Every rollout, with those stepped here as they are now.
    pub(super) fn rollouts(&self, store: &dyn Store) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut all = store.rollouts()?;
        for r in &mut all {
            if let Some(now) = self.rollouts.get(&r.id) {
                *r = now.clone();
            }
        }
        let stored: std::collections::BTreeSet<RolloutId> = all.iter().map(|r| r.id).collect();
        all.extend(
            self.rollouts
                .values()
                .filter(|r| !stored.contains(&r.id))
                .cloned(),
        );
        Ok(all)
    }

    pub(super) fn group(
        &self,
        store: &dyn Store,
        name: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError> {
        match self.groups.get(name) {
            Some(g) => Ok(Some(g.clone())),
            None => store.group(name),
        }
    }

    /// Every group, with those changed here as they are now.
    pub(super) fn groups(&self, store: &dyn Store) -> Result<Vec<GroupRecord>, StoreError> {
        let mut all = store.groups()?;
        for g in &mut all {
            if let Some(now) = self.groups.get(&g.name) {
                *g = now.clone();
            }
        }
        Ok(all)
    }

    pub(super) fn into_writes(self, writes: &mut Vec<Write>) -> Vec<DeviceId> {
        let devices = self.desired.keys().cloned().collect();
        writes.extend(self.groups.into_values().map(Write::Group));
        writes.extend(self.desired.into_values().map(Write::Desired));
        devices
    }
}

/// The state of the fleet at one moment, for observers (`/metrics`).
pub struct FleetSnapshot {
    /// Registered devices, with the live state overlaid.
    pub devices: Vec<DeviceRecord>,
    /// The latest state of every device the server heard from.
    pub live: HashMap<DeviceId, DeviceLive>,
    pub groups: Vec<GroupRecord>,
    /// Every unfinished rollout and the newest finished ones, oldest first,
    /// with per-device progress.
    pub rollouts: Vec<RolloutView>,
}

impl Fleet {
    pub fn new(
        store: Arc<dyn Store>,
        director: Director,
        trust: TrustedRoot,
        publisher: Arc<dyn DesiredPublisher>,
        preparer: Arc<dyn UpdatePreparer>,
        counters: Arc<IngestCounters>,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                store,
                director,
                trust,
                publisher,
                preparer,
                updates_due: Mutex::new(BTreeSet::new()),
                write: Mutex::new(()),
                publish: AsyncMutex::new(()),
                live: Live::new(),
                updates: Updates::new(),
                counters,
                gates: GateCounters::default(),
                prometheus: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Fills the in-memory latest state from the store (at start; blocking).
    pub fn load_live(&self) -> Result<usize, FleetError> {
        let i = &self.inner;
        let devices = i.store.devices()?;
        let n = devices.len();
        i.live.load(devices, i.store.telemetry_all()?);
        Ok(n)
    }

    pub fn counters(&self) -> &Arc<IngestCounters> {
        &self.inner.counters
    }

    /// The gate verdicts that halted or paused rollouts so far.
    pub fn gate_counts(&self) -> GateCounts {
        self.inner.gates.snapshot()
    }

    /// The update results and durations seen so far.
    pub fn updates(&self) -> UpdatesSnapshot {
        self.inner.updates.snapshot()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Writes every device whose latest state changed since the last flush
    /// to the store, in batches of up to 500 devices (one commit each).
    /// Returns how many devices were written.
    pub async fn flush(&self) -> Result<usize, FleetError> {
        self.blocking(|i| {
            let _guard = i.lock()?;
            i.flush()
        })
        .await
    }

    /// The fleet now, keeping at most `final_rollouts_kept` finished
    /// rollouts (the newest).
    pub async fn snapshot(&self, final_rollouts_kept: usize) -> Result<FleetSnapshot, FleetError> {
        self.blocking(move |i| {
            let live = i.live.snapshot();
            let devices = i
                .store
                .devices()?
                .into_iter()
                .map(|mut d| {
                    if let Some(l) = live.get(&d.id) {
                        l.overlay(&mut d);
                    }
                    d
                })
                .collect();
            let mut rollouts = i.store.rollouts()?;
            rollouts.reverse();
            let mut finals = 0;
            rollouts.retain(|r| {
                if !r.state.is_final() {
                    return true;
                }
                finals += 1;
                finals <= final_rollouts_kept
            });
            rollouts.reverse();
            let rollouts = rollouts
                .iter()
                .map(|r| i.rollout_view(r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FleetSnapshot {
                devices,
                live,
                groups: i.store.groups()?,
                rollouts,
            })
        })
        .await
    }

    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|source| FleetError::Task { source })?
    }

    /// Runs a change under the write lock, then publishes what it changed.
    pub(super) async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, u64) -> Result<(T, Vec<DeviceId>), FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let (value, devices) = self
            .blocking(move |inner| {
                let _guard = inner.lock()?;
                let result = f(inner, now());
                let due = std::mem::take(
                    &mut *inner.updates_due.lock().unwrap_or_else(|e| e.into_inner()),
                );
                // Only a committed change's deploys are prepared for.
                if result.is_ok() && !due.is_empty() {
                    inner.preparer.prepare(due.into_iter().collect());
                }
                result
            })
            .await?;
        self.publish(devices).await;
        Ok(value)
    }

    /// Publishes the latest unpublished desired state of each device, in
    /// order; a failure leaves it for the next sweep.
    pub async fn publish(&self, devices: Vec<DeviceId>) {
        self.publish_latest(devices, false).await;
    }

    /// Publishes the latest desired state of each of `devices` (only those
    /// not published yet unless `again`: then also those the broker had and
    /// lost, the same bytes, which a device recognises as already handled).
    async fn publish_latest(&self, devices: Vec<DeviceId>, again: bool) {
        if devices.is_empty() {
            return;
        }
        let _guard = self.inner.publish.lock().await;
        // Marked in the store in batches: one commit (and flush) per batch,
        // not per device. A crash before the mark only publishes the same
        // bytes again at the next start.
        let mut published = Vec::new();
        for device in devices {
            if published.len() >= PUBLISH_MARK_BATCH {
                self.mark_published(std::mem::take(&mut published)).await;
            }
            let d = device.clone();
            let record = match self.blocking(move |i| Ok(i.store.desired(&d)?)).await {
                Ok(Some(r)) if !r.published => r,
                Ok(Some(r)) if again => {
                    if let Err(e) = self
                        .inner
                        .publisher
                        .publish_desired(&device, r.envelope)
                        .await
                    {
                        tracing::warn!(%device, error = %e, "publishing desired state again failed");
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%device, error = %e, "cannot read desired state to publish");
                    continue;
                }
            };
            let generation = record.generation;
            match self
                .inner
                .publisher
                .publish_desired(&device, record.envelope)
                .await
            {
                Ok(()) => {
                    tracing::info!(%device, generation, "desired state published");
                    self.inner.updates.published(
                        &device,
                        &record.apps,
                        self.inner.live.status(&device).as_deref(),
                        now_f64(),
                    );
                    published.push((device, generation));
                }
                Err(e) => {
                    tracing::warn!(%device, generation, error = %e, "publishing desired state failed; will retry");
                }
            }
        }
        self.mark_published(published).await;
    }

    /// Records that each (device, generation) of `published` went out.
    async fn mark_published(&self, published: Vec<(DeviceId, u64)>) {
        if published.is_empty() {
            return;
        }
        let n = published.len();
        let marked = self
            .blocking(move |i| {
                let _guard = i.lock()?;
                i.mark_published(&published)
            })
            .await;
        if let Err(e) = marked {
            tracing::warn!(count = n, error = %e, "cannot mark desired states published");
        }
    }

    /// Publishes every desired state not yet published (after a start or a
    /// link failure).
    pub async fn publish_pending(&self) -> Result<usize, FleetError> {
        let devices: Vec<DeviceId> = self
            .blocking(|i| {
                Ok(i.store
                    .desired_all()?
                    .into_iter()
                    .filter(|r| !r.published)
                    .map(|r| r.device)
                    .collect())
            })
            .await?;
        let n = devices.len();
        self.publish(devices).await;
        Ok(n)
    }

    /// Publishes every device's latest desired state, also those published
    /// before: at the start of a server whose embedded broker lost its
    /// retained messages with the previous process, so that a device away
    /// then still finds its state when it connects.
    pub async fn republish_all(&self) -> Result<usize, FleetError> {
        let devices: Vec<DeviceId> = self
            .blocking(|i| {
                Ok(i.store
                    .desired_all()?
                    .into_iter()
                    .map(|r| r.device)
                    .collect())
            })
            .await?;
        let n = devices.len();
        self.publish_latest(devices, true).await;
        Ok(n)
    }

    /// Re-signs (new generation) every desired state within the renewal
    /// margin of its expiry, then publishes them.
    pub async fn renew_due(&self) -> Result<usize, FleetError> {
        self.change(|inner, now| {
            let mut staged = Staged::default();
            for record in inner.store.desired_all()? {
                if inner.director.needs_renewal(&record, now) {
                    let next = inner.director.next(
                        inner.store.as_ref(),
                        &record.device,
                        Some(&record),
                        record.apps.clone(),
                        now,
                    )?;
                    staged.desired.insert(record.device.clone(), next);
                }
            }
            let mut writes = Vec::new();
            let devices = staged.into_writes(&mut writes);
            if !writes.is_empty() {
                inner.store.commit(writes)?;
                tracing::info!(count = devices.len(), "desired states renewed");
            }
            Ok((devices.len(), devices))
        })
        .await
    }

    /// Takes device messages from `inbound` (the link's receiver, handed
    /// over as it is) until it closes or `stop` fires.
    pub async fn consume(&self, mut inbound: mpsc::Receiver<Inbound>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                message = inbound.recv() => match message {
                    Some(m) => {
                        if let Err(e) = self.inbound(m).await {
                            tracing::warn!(error = %e, "handling a device message failed");
                        }
                    }
                    None => break,
                }
            }
        }
    }

    /// Handles one message from a device: the in-memory latest state takes
    /// it at once (persisted by the next [`Fleet::flush`]); a status that
    /// registers a device or changes what it runs also goes through the
    /// engine (registration, rollout waves).
    pub async fn inbound(&self, message: Inbound) -> Result<(), FleetError> {
        self.inbound_batch(vec![message]).await
    }

    /// Handles messages in order, as [`Fleet::inbound`] does one, but takes
    /// the statuses that need the engine through it together: each rollout
    /// steps once for the whole batch and the changes commit at once,
    /// instead of once per report.
    pub async fn inbound_batch(&self, messages: Vec<Inbound>) -> Result<(), FleetError> {
        let mut devices: Vec<DeviceId> = Vec::new();
        for message in messages {
            if let Some(device) = self.ingest(message)
                && !devices.contains(&device)
            {
                devices.push(device);
            }
        }
        if !devices.is_empty() {
            self.change(move |i, now| i.on_statuses(&devices, now))
                .await?;
        }
        Ok(())
    }

    /// Takes one message into the in-memory latest state; the device if its
    /// status must go through the engine.
    fn ingest(&self, message: Inbound) -> Option<DeviceId> {
        let i = &self.inner;
        let now = now();
        match message {
            Inbound::Status(report) => {
                i.counters.ingested(MessageKind::Status);
                let device = report.device.clone();
                let ingest = i.live.on_status(report, now);
                if ingest.repeat {
                    return None;
                }
                i.updates
                    .on_status(ingest.previous.as_deref(), &ingest.current, now_f64());
                let needs_engine = if ingest.registered {
                    ingest.changed
                } else {
                    ingest.current.info.is_some()
                };
                needs_engine.then_some(device)
            }
            Inbound::Presence { device, online } => {
                i.counters.ingested(MessageKind::Presence);
                i.live.on_presence(&device, online, now);
                None
            }
            Inbound::Telemetry(t) => {
                i.counters.ingested(MessageKind::Telemetry);
                match t.device.clone() {
                    Some(device) => i.live.on_telemetry(&device, t, now),
                    None => i.counters.rejected(MessageKind::Telemetry),
                }
                None
            }
        }
    }

    pub async fn events(&self, limit: usize) -> Result<Vec<EventRecord>, FleetError> {
        self.blocking(move |i| Ok(i.store.events(limit)?)).await
    }
}

impl Inner {
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, ()>, FleetError> {
        self.write.lock().map_err(|_| FleetError::LockPoisoned)
    }

    /// A status changed what `id` runs (its latest state is already in
    /// memory): registers the device on its first report with info, then
    /// moves on the running rollouts it is part of.
    /// Statuses of `ids` that registered a device or changed what it runs:
    /// registration, then every rollout they are part of steps once, then
    /// each catches up with its groups' releases.
    fn on_statuses(&self, ids: &[DeviceId], now: u64) -> Result<((), Vec<DeviceId>), FleetError> {
        let mut registered = Vec::with_capacity(ids.len());
        for id in ids {
            if self.register(id, now)? {
                registered.push(id.clone());
            }
        }
        if registered.is_empty() {
            return Ok(((), vec![]));
        }
        let mut devices = self.on_progress(&registered, now)?;
        for d in self.catch_up_commit(&registered, now)? {
            if !devices.contains(&d) {
                devices.push(d);
            }
        }
        Ok(((), devices))
    }

    /// See [`Fleet::flush`]; runs under the write lock.
    fn flush(&self) -> Result<usize, FleetError> {
        // Bounded batches: sled holds a whole transaction (and keeps the
        // memory it grew for it), so 10,000 devices in one commit cost
        // hundreds of MB of RSS.
        in_batches(self.live.take_dirty(), FLUSH_BATCH_DEVICES, |batch| {
            self.flush_batch(batch)
        })
        .map_err(|(e, unwritten)| {
            // Whatever was not committed is written by the next flush.
            self.live
                .mark_dirty(unwritten.into_iter().map(|(id, _)| id));
            e
        })
    }

    fn flush_batch(&self, dirty: &[(DeviceId, DeviceLive)]) -> Result<usize, FleetError> {
        let mut writes = Vec::with_capacity(dirty.len() * 2);
        let mut written = 0;
        for (id, live) in dirty {
            // Unregistered devices stay in memory until they register.
            let Some(mut record) = self.store.device(id)? else {
                continue;
            };
            live.overlay(&mut record);
            writes.push(Write::Device(record));
            if let Some(t) = &live.telemetry {
                writes.push(Write::Telemetry(TelemetryRecord {
                    device: id.clone(),
                    received_at: live.telemetry_received_at,
                    telemetry: fleet_protocol::Telemetry::clone(t),
                }));
            }
            written += 1;
        }
        if writes.is_empty() {
            return Ok(0);
        }
        self.store.commit(writes)?;
        self.counters.batch_written();
        Ok(written)
    }

    fn mark_published(&self, published: &[(DeviceId, u64)]) -> Result<(), FleetError> {
        let mut writes = Vec::with_capacity(published.len());
        for (device, generation) in published {
            if let Some(mut r) = self.store.desired(device)?
                && r.generation == *generation
                && !r.published
            {
                r.published = true;
                writes.push(Write::Desired(r));
            }
        }
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok(())
    }
}

/// Desired states marked published in one store commit, at most.
const PUBLISH_MARK_BATCH: usize = 256;

/// Writes `items` in batches of at most `size` with `write`, in order, and sums
/// what it returns. On the first error, hands back the error with every item
/// not committed: the failed batch and all after it.
fn in_batches<T, E>(
    mut items: Vec<T>,
    size: usize,
    mut write: impl FnMut(&[T]) -> Result<usize, E>,
) -> Result<usize, (E, Vec<T>)> {
    let size = size.max(1);
    let mut total = 0;
    let mut start = 0;
    while start < items.len() {
        let end = items.len().min(start + size);
        match write(&items[start..end]) {
            Ok(n) => total += n,
            Err(e) => return Err((e, items.split_off(start))),
        }
        start = end;
    }
    Ok(total)
}

#[cfg(test)]
mod batch_tests {
    use super::in_batches;

    #[test]
    fn writes_everything_in_bounded_batches_in_order() {
        let mut seen = Vec::new();
        let n = in_batches((0..1_201).collect(), 500, |b: &[u32]| {
            seen.push(b.to_vec());
            Ok::<_, ()>(b.len())
        })
        .unwrap();
        assert_eq!(n, 1_201);
        assert_eq!(
            seen.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 201]
        );
        assert_eq!(seen.concat(), (0..1_201).collect::<Vec<_>>());
        assert_eq!(in_batches(Vec::<u32>::new(), 500, |_| Err("never")), Ok(0));
    }

    #[test]
    fn a_failed_batch_hands_back_itself_and_everything_after_it() {
        let mut calls = 0;
        let (err, unwritten) = in_batches((0..1_201).collect(), 500, |b: &[u32]| {
            calls += 1;
            if calls == 2 {
                Err("disk full")
            } else {
                Ok(b.len())
            }
        })
        .unwrap_err();
        assert_eq!(err, "disk full");
        assert_eq!(unwritten, (500..1_201).collect::<Vec<_>>());
        assert_eq!(calls, 2, "nothing is attempted after a failure");
    }
}
