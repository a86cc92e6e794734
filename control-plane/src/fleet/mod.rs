//! The fleet engine: devices, groups, releases and rollouts.
//!
//! [`Fleet`] is a cloneable handle. Every change runs as one blocking step
//! (under a write lock, in `spawn_blocking`) that computes the new records,
//! signs desired states and commits everything in one durable batch; only
//! then are the affected devices' desired states published (the `published`
//! flag of each record is the outbox: what a crash left unpublished is sent
//! at the next start or sweep).

pub mod ports;
pub mod rollout;
mod steps;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fleet_protocol::{DeviceId, Digest, GroupName, TrustedRoot, verify};
use tokio::sync::Mutex as AsyncMutex;

use crate::api::types::{
    AddMembers, CreateGroup, CreateRollout, DesiredSummary, DeviceView, GroupView, ReleaseView,
    RolloutView, SetLabels,
};
use crate::director::{Director, DirectorError};
use crate::store::TelemetryRecord;
use crate::store::{
    DesiredRecord, DeviceRecord, EventRecord, GroupRecord, ReleaseRecord, RolloutId, Store,
    StoreError, Write,
};
use crate::telemetry::updates::Updates;
use crate::telemetry::{DeviceLive, IngestCounters, Live, MessageKind};
use ports::{DesiredPublisher, Inbound};
use rollout::Action;

/// Devices written per store commit by [`Fleet::flush`].
const FLUSH_BATCH_DEVICES: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    Invalid { message: String },
    #[error("release refused: {source}")]
    Untrusted {
        #[source]
        source: verify::VerifyError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Director(Box<DirectorError>),
    #[error("internal task failed: {0}")]
    Task(String),
}

impl From<DirectorError> for FleetError {
    fn from(e: DirectorError) -> Self {
        FleetError::Director(Box::new(e))
    }
}

impl FleetError {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            FleetError::NotFound { .. } => "not_found",
            FleetError::Conflict { .. } => "conflict",
            FleetError::Invalid { .. } => "invalid",
            FleetError::Untrusted { source } => source.code(),
            FleetError::Store(_) => "store",
            FleetError::Director(_) => "director",
            FleetError::Task(_) => "internal",
        }
    }
}

fn not_found(what: &'static str, key: impl ToString) -> FleetError {
    FleetError::NotFound {
        what,
        key: key.to_string(),
    }
}

/// The unix time now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The unix time now, with fractions of a second.
pub fn now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn event(kind: &str, subject: impl ToString, message: impl Into<String>, at: u64) -> Write {
    Write::Event(EventRecord {
        seq: 0,
        at,
        kind: kind.to_owned(),
        subject: subject.to_string(),
        message: message.into(),
    })
}

#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    director: Director,
    trust: TrustedRoot,
    publisher: Arc<dyn DesiredPublisher>,
    write: Mutex<()>,
    publish: AsyncMutex<()>,
    /// The latest state of every device (the store lags by one flush).
    live: Live,
    updates: Updates,
    counters: Arc<IngestCounters>,
}

/// Desired records changed within one step, on top of the store.
#[derive(Default)]
struct Staged {
    desired: BTreeMap<DeviceId, DesiredRecord>,
}

impl Staged {
    fn current(
        &self,
        store: &dyn Store,
        device: &DeviceId,
    ) -> Result<Option<DesiredRecord>, StoreError> {
        match self.desired.get(device) {
            Some(r) => Ok(Some(r.clone())),
            None => store.desired(device),
        }
    }

    fn into_writes(self, writes: &mut Vec<Write>) -> Vec<DeviceId> {
        let devices = self.desired.keys().cloned().collect();
        writes.extend(self.desired.into_values().map(Write::Desired));
        devices
    }
}

impl Fleet {
    pub fn new(
        store: Arc<dyn Store>,
        director: Director,
        trust: TrustedRoot,
        publisher: Arc<dyn DesiredPublisher>,
        counters: Arc<IngestCounters>,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                store,
                director,
                trust,
                publisher,
                write: Mutex::new(()),
                publish: AsyncMutex::new(()),
                live: Live::new(),
                updates: Updates::new(),
                counters,
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

    /// Writes every device whose latest state changed since the last flush
    /// to the store, in batches of up to 500 devices (one commit each).
    /// Returns how many devices were written.
    pub async fn flush(&self) -> Result<usize, FleetError> {
        self.blocking(|i| {
            let _guard = i
                .write
                .lock()
                .map_err(|_| FleetError::Task("write lock poisoned".into()))?;
            i.flush()
        })
        .await
    }

    /// The Prometheus exposition of the fleet now.
    pub async fn metrics_text(&self) -> Result<String, FleetError> {
        self.blocking(|i| {
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
                finals <= crate::metrics::FINAL_ROLLOUTS_KEPT
            });
            rollouts.reverse();
            let rollouts = rollouts
                .iter()
                .map(|r| i.rollout_view(r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(crate::metrics::render(&crate::metrics::Input {
                devices,
                live,
                groups: i.store.groups()?,
                rollouts,
                counters: &i.counters,
                updates: i.updates.snapshot(),
            }))
        })
        .await
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| FleetError::Task(e.to_string()))?
    }

    /// Runs a change under the write lock, then publishes what it changed.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, u64) -> Result<(T, Vec<DeviceId>), FleetError> + Send + 'static,
    ) -> Result<T, FleetError> {
        let (value, devices) = self
            .blocking(move |inner| {
                let _guard = inner
                    .write
                    .lock()
                    .map_err(|_| FleetError::Task("write lock poisoned".into()))?;
                f(inner, now())
            })
            .await?;
        self.publish(devices).await;
        Ok(value)
    }

    /// Publishes the latest unpublished desired state of each device, in
    /// order; a failure leaves it for the next sweep.
    pub async fn publish(&self, devices: Vec<DeviceId>) {
        if devices.is_empty() {
            return;
        }
        let _guard = self.inner.publish.lock().await;
        for device in devices {
            let d = device.clone();
            let record = match self.blocking(move |i| Ok(i.store.desired(&d)?)).await {
                Ok(Some(r)) if !r.published => r,
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
                    let d = device.clone();
                    let marked = self
                        .blocking(move |i| {
                            let _guard = i
                                .write
                                .lock()
                                .map_err(|_| FleetError::Task("write lock poisoned".into()))?;
                            i.mark_published(&d, generation)
                        })
                        .await;
                    if let Err(e) = marked {
                        tracing::warn!(%device, error = %e, "cannot mark desired state published");
                    }
                }
                Err(e) => {
                    tracing::warn!(%device, generation, error = %e, "publishing desired state failed; will retry");
                }
            }
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

    /// Handles one message from a device: the in-memory latest state takes
    /// it at once (persisted by the next [`Fleet::flush`]); a status that
    /// registers a device or changes what it runs also goes through the
    /// engine (registration, rollout waves).
    pub async fn inbound(&self, message: Inbound) -> Result<(), FleetError> {
        let i = &self.inner;
        let now = now();
        match message {
            Inbound::Status(report) => {
                i.counters.ingested(MessageKind::Status);
                let device = report.device.clone();
                let ingest = i.live.on_status(report, now);
                if ingest.repeat {
                    return Ok(());
                }
                i.updates
                    .on_status(ingest.previous.as_deref(), &ingest.current, now_f64());
                let needs_engine = if ingest.registered {
                    ingest.changed
                } else {
                    ingest.current.info.is_some()
                };
                if needs_engine {
                    self.change(move |i, now| i.on_status(&device, now)).await?;
                }
                Ok(())
            }
            Inbound::Presence { device, online } => {
                i.counters.ingested(MessageKind::Presence);
                i.live.on_presence(&device, online, now);
                Ok(())
            }
            Inbound::Telemetry(t) => {
                i.counters.ingested(MessageKind::Telemetry);
                match t.device.clone() {
                    Some(device) => i.live.on_telemetry(&device, t, now),
                    None => i.counters.rejected(MessageKind::Telemetry),
                }
                Ok(())
            }
        }
    }

    pub async fn add_release(&self, envelope_json: Vec<u8>) -> Result<ReleaseView, FleetError> {
        self.change(move |i, now| {
            let record = i.verify_release(&envelope_json, now)?;
            let view = ReleaseView::from(&record);
            if i.store.release(&record.digest)?.is_none() {
                let msg = format!(
                    "{} {} ({}@{})",
                    record.release.app,
                    record.release.version,
                    record.release.repository,
                    record.release.manifest_digest
                );
                i.store.commit(vec![
                    event("release.added", &record.digest, msg, now),
                    Write::Release(record),
                ])?;
            }
            Ok((view, vec![]))
        })
        .await
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseView>, FleetError> {
        self.blocking(|i| Ok(i.store.releases()?.iter().map(ReleaseView::from).collect()))
            .await
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, FleetError> {
        self.blocking(|i| {
            let groups = i.store.groups()?;
            i.store
                .devices()?
                .into_iter()
                .map(|d| i.device_view(d, &groups))
                .collect()
        })
        .await
    }

    pub async fn device(&self, id: DeviceId) -> Result<DeviceView, FleetError> {
        self.blocking(move |i| {
            let groups = i.store.groups()?;
            let d = i
                .store
                .device(&id)?
                .ok_or_else(|| not_found("device", &id))?;
            i.device_view(d, &groups)
        })
        .await
    }

    /// The last signed desired state of a device, exactly as published.
    pub async fn device_desired(&self, id: DeviceId) -> Result<Vec<u8>, FleetError> {
        self.blocking(move |i| {
            Ok(i.store
                .desired(&id)?
                .ok_or_else(|| not_found("desired state of device", &id))?
                .envelope)
        })
        .await
    }

    pub async fn set_labels(&self, id: DeviceId, req: SetLabels) -> Result<DeviceView, FleetError> {
        self.change(move |i, now| {
            let mut d = i
                .store
                .device(&id)?
                .ok_or_else(|| not_found("device", &id))?;
            if let Some(l) = i.live.get(&id) {
                l.overlay(&mut d);
            }
            for k in &req.remove {
                d.labels.remove(k);
            }
            d.labels.extend(req.set.clone());
            let msg = format!("labels set {:?}, removed {:?}", req.set, req.remove);
            i.store.commit(vec![
                Write::Device(d.clone()),
                event("device.labels", &id, msg, now),
            ])?;
            let groups = i.store.groups()?;
            Ok((i.device_view(d, &groups)?, vec![]))
        })
        .await
    }

    pub async fn groups(&self) -> Result<Vec<GroupView>, FleetError> {
        self.blocking(|i| {
            let devices = i.store.devices()?;
            Ok(i.store
                .groups()?
                .into_iter()
                .map(|g| group_view(g, &devices))
                .collect())
        })
        .await
    }

    pub async fn group(&self, name: GroupName) -> Result<GroupView, FleetError> {
        self.blocking(move |i| {
            let g = i
                .store
                .group(&name)?
                .ok_or_else(|| not_found("group", &name))?;
            Ok(group_view(g, &i.store.devices()?))
        })
        .await
    }

    pub async fn create_group(&self, req: CreateGroup) -> Result<GroupView, FleetError> {
        self.change(move |i, now| {
            if i.store.group(&req.name)?.is_some() {
                return Err(FleetError::Conflict {
                    message: format!(
                        "group {} exists; add devices with `fleetctl groups add-members`",
                        req.name
                    ),
                });
            }
            if req.selector.is_empty() && req.members.is_empty() {
                return Err(FleetError::Invalid {
                    message: "a group needs a label selector (e.g. role=camera) or members".into(),
                });
            }
            let g = GroupRecord {
                name: req.name.clone(),
                selector: req.selector,
                members: req.members.into_iter().collect(),
                created_at: now,
            };
            let msg = format!("selector {:?}, members {:?}", g.selector, g.members);
            i.store.commit(vec![
                Write::Group(g.clone()),
                event("group.created", &g.name, msg, now),
            ])?;
            Ok((group_view(g, &i.store.devices()?), vec![]))
        })
        .await
    }

    pub async fn add_members(
        &self,
        name: GroupName,
        req: AddMembers,
    ) -> Result<GroupView, FleetError> {
        self.change(move |i, now| {
            let mut g = i
                .store
                .group(&name)?
                .ok_or_else(|| not_found("group", &name))?;
            g.members.extend(req.devices.iter().cloned());
            let msg = format!("members added {:?}", req.devices);
            i.store.commit(vec![
                Write::Group(g.clone()),
                event("group.members", &name, msg, now),
            ])?;
            Ok((group_view(g, &i.store.devices()?), vec![]))
        })
        .await
    }

    pub async fn start_rollout(&self, req: CreateRollout) -> Result<RolloutView, FleetError> {
        self.change(move |i, now| i.start_rollout(req, now)).await
    }

    pub async fn rollout_action(
        &self,
        id: RolloutId,
        action: Action,
    ) -> Result<RolloutView, FleetError> {
        self.change(move |i, now| i.rollout_action(id, action, now))
            .await
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, FleetError> {
        self.blocking(|i| {
            i.store
                .rollouts()?
                .iter()
                .map(|r| i.rollout_view(r))
                .collect()
        })
        .await
    }

    pub async fn rollout(&self, id: RolloutId) -> Result<RolloutView, FleetError> {
        self.blocking(move |i| {
            let r = i
                .store
                .rollout(id)?
                .ok_or_else(|| not_found("rollout", id))?;
            i.rollout_view(&r)
        })
        .await
    }

    pub async fn events(&self, limit: usize) -> Result<Vec<EventRecord>, FleetError> {
        self.blocking(move |i| Ok(i.store.events(limit)?)).await
    }
}

fn group_view(group: GroupRecord, devices: &[DeviceRecord]) -> GroupView {
    let members = devices
        .iter()
        .filter(|d| group.contains(d))
        .map(|d| d.id.clone())
        .collect();
    GroupView {
        group,
        devices: members,
    }
}

impl Inner {
    fn device_view(
        &self,
        mut device: DeviceRecord,
        groups: &[GroupRecord],
    ) -> Result<DeviceView, FleetError> {
        let desired = self.store.desired(&device.id)?;
        let live = self.live.get(&device.id);
        if let Some(l) = &live {
            l.overlay(&mut device);
        }
        Ok(DeviceView {
            telemetry: live.as_ref().and_then(|l| {
                Some(crate::api::types::TelemetryView {
                    received_at: l.telemetry_received_at,
                    telemetry: fleet_protocol::Telemetry::clone(l.telemetry.as_deref()?),
                })
            }),
            effective_labels: device.effective_labels(),
            groups: groups
                .iter()
                .filter(|g| g.contains(&device))
                .map(|g| g.name.clone())
                .collect(),
            desired: desired.as_ref().map(DesiredSummary::from),
            device,
        })
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

    fn mark_published(&self, device: &DeviceId, generation: u64) -> Result<(), FleetError> {
        if let Some(mut r) = self.store.desired(device)?
            && r.generation == generation
            && !r.published
        {
            r.published = true;
            self.store.commit(vec![Write::Desired(r)])?;
        }
        Ok(())
    }

    fn verify_release(&self, envelope_json: &[u8], now: u64) -> Result<ReleaseRecord, FleetError> {
        let verified = verify::verify_release(&self.trust, envelope_json, now)
            .map_err(|source| FleetError::Untrusted { source })?;
        let digest = verified.payload_digest().clone();
        let envelope =
            fleet_protocol::dsse::Envelope::from_json(envelope_json, verify::MAX_RELEASE_BYTES)
                .map_err(|source| FleetError::Untrusted {
                    source: verify::VerifyError::MalformedEnvelope { source },
                })?;
        Ok(ReleaseRecord {
            digest,
            release: verified.into_inner(),
            envelope,
            added_at: now,
        })
    }
}

/// Consumes device messages until the channel closes.
pub async fn run_inbound(fleet: Fleet, mut rx: tokio::sync::mpsc::Receiver<Inbound>) {
    while let Some(message) = rx.recv().await {
        if let Err(e) = fleet.inbound(message).await {
            tracing::warn!(error = %e, "handling a device message failed");
        }
    }
}

/// Digest helper for tests and tools: the release digest of a signed release.
pub fn release_digest(envelope: &fleet_protocol::dsse::Envelope) -> Option<Digest> {
    envelope.payload_bytes().ok().map(|p| Digest::of(&p))
}

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
