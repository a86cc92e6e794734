//! The latest state of every device, in memory: its last status report,
//! last telemetry, presence and last-seen time.
//!
//! Device messages land here first (the MQTT link parses them before any lock
//! is taken); each update holds one shard's mutex for a few field writes. A
//! changed device is marked dirty and the background flusher
//! ([`crate::fleet::Fleet::flush`]) writes every dirty device to the store in
//! batches of up to 500 devices every `telemetry.flush_secs` and at shutdown,
//! so the store sees one commit (one fsync) per 500 changed devices per
//! interval, never one per message.
//!
//! [`IngestCounters`] count messages ingested and rejected per kind;
//! [`updates::Updates`] measures update durations and results;
//! [`gates::GateCounters`] counts gate verdicts.

pub mod gates;
pub mod updates;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fleet_protocol::message::DeviceInfo;
use fleet_protocol::{DeviceId, StatusReport, Telemetry};

use crate::store::{DeviceRecord, TelemetryRecord};

/// How many shards the device map is split into.
const SHARDS: usize = 64;

/// The kinds of device messages, as the `kind` label of the ingest counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Status,
    Telemetry,
    Presence,
}

impl MessageKind {
    pub const ALL: [MessageKind; 3] = [
        MessageKind::Status,
        MessageKind::Telemetry,
        MessageKind::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Status => "status",
            MessageKind::Telemetry => "telemetry",
            MessageKind::Presence => "presence",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Messages ingested and rejected (malformed, or naming another device than
/// their topic), per kind, plus the store's batched flushes.
#[derive(Debug, Default)]
pub struct IngestCounters {
    ingested: [AtomicU64; 3],
    rejected: [AtomicU64; 3],
    batch_writes: AtomicU64,
}

impl IngestCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn ingested(&self, kind: MessageKind) {
        self.ingested[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, kind: MessageKind) {
        self.rejected[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn batch_written(&self) {
        self.batch_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ingested_count(&self, kind: MessageKind) -> u64 {
        self.ingested[kind.index()].load(Ordering::Relaxed)
    }

    pub fn rejected_count(&self, kind: MessageKind) -> u64 {
        self.rejected[kind.index()].load(Ordering::Relaxed)
    }

    pub fn batch_writes(&self) -> u64 {
        self.batch_writes.load(Ordering::Relaxed)
    }
}

/// What the server knows about one device right now.
#[derive(Debug, Clone, Default)]
pub struct DeviceLive {
    /// Presence: `None` until a presence message or any message arrived.
    pub online: Option<bool>,
    /// Unix seconds (server clock) of the last message that showed the device
    /// alive.
    pub last_seen: u64,
    pub status: Option<Arc<StatusReport>>,
    /// The device info of the last report that carried one (applied to the
    /// device record at the next flush).
    pub info: Option<DeviceInfo>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// Unix seconds (server clock) the telemetry arrived.
    pub telemetry_received_at: u64,
    /// Whether the device has a record in the store.
    pub registered: bool,
    dirty: bool,
}

impl DeviceLive {
    /// Overlays this live state on the stored record.
    pub fn overlay(&self, record: &mut DeviceRecord) {
        if let Some(online) = self.online {
            record.online = online;
        }
        record.last_seen = record.last_seen.max(self.last_seen);
        if let Some(status) = &self.status {
            record.last_status = Some(StatusReport::clone(status));
        }
        if let Some(info) = &self.info {
            record.reported_labels = info.labels.clone();
            record.architecture = info.architecture.clone();
            record.variant = info.variant.clone();
            record.l4t_version = info.l4t_version.clone();
            record.soc = info.soc.clone();
            record.cuda_version = info.cuda_version.clone();
            record.cdi_devices = Some(info.cdi_devices.clone());
            record.agent_version = info.agent_version.clone();
        }
    }
}

/// The result of ingesting a status report.
#[derive(Debug, Clone)]
pub struct StatusIngest {
    /// The report is byte-for-byte the last one (a retained message seen
    /// again after a resubscription): nothing changed.
    pub repeat: bool,
    /// What the device reports differs from before in something the rollout
    /// engine looks at (apps, generation, rejection), or it is new.
    pub changed: bool,
    pub registered: bool,
    pub previous: Option<Arc<StatusReport>>,
    pub current: Arc<StatusReport>,
}

/// The in-memory latest state of every device, sharded by device id.
pub struct Live {
    shards: Box<[Mutex<HashMap<DeviceId, DeviceLive>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, device: &DeviceId) -> MutexGuard<'_, HashMap<DeviceId, DeviceLive>> {
        let i = (self.hasher.hash_one(device) as usize) % self.shards.len();
        // A poisoned shard only means a panic elsewhere mid-update of plain
        // fields; the data is still usable.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills the state from what the store kept (at start).
    pub fn load(&self, devices: Vec<DeviceRecord>, telemetry: Vec<TelemetryRecord>) {
        for d in devices {
            let mut shard = self.shard(&d.id);
            let e = shard.entry(d.id.clone()).or_default();
            e.registered = true;
            e.online = Some(d.online);
            e.last_seen = e.last_seen.max(d.last_seen);
            e.status = d.last_status.map(Arc::new);
        }
        for t in telemetry {
            let mut shard = self.shard(&t.device);
            let e = shard.entry(t.device.clone()).or_default();
            e.telemetry = Some(Arc::new(t.telemetry));
            e.telemetry_received_at = t.received_at;
        }
    }

    pub fn on_status(&self, report: StatusReport, now: u64) -> StatusIngest {
        let mut shard = self.shard(&report.device);
        let e = shard.entry(report.device.clone()).or_default();
        if let Some(prev) = &e.status
            && **prev == report
        {
            return StatusIngest {
                repeat: true,
                changed: false,
                registered: e.registered,
                previous: Some(prev.clone()),
                current: prev.clone(),
            };
        }
        let changed = e.status.as_deref().is_none_or(|prev| {
            prev.apps != report.apps
                || prev.generation != report.generation
                || prev.rejected != report.rejected
        });
        if let Some(info) = &report.info {
            e.info = Some(info.clone());
        }
        let current = Arc::new(report);
        let previous = e.status.replace(current.clone());
        e.last_seen = e.last_seen.max(now);
        e.online = Some(true);
        e.dirty = true;
        StatusIngest {
            repeat: false,
            changed,
            registered: e.registered,
            previous,
            current,
        }
    }

    pub fn on_telemetry(&self, device: &DeviceId, telemetry: Telemetry, now: u64) {
        let mut shard = self.shard(device);
        let e = shard.entry(device.clone()).or_default();
        e.telemetry = Some(Arc::new(telemetry));
        e.telemetry_received_at = now;
        e.last_seen = e.last_seen.max(now);
        e.online = Some(true);
        e.dirty = true;
    }

    /// A presence message: `online: false` is also the broker's last will.
    pub fn on_presence(&self, device: &DeviceId, online: bool, now: u64) {
        let mut shard = self.shard(device);
        let e = shard.entry(device.clone()).or_default();
        if e.online == Some(online) && !online {
            return;
        }
        e.online = Some(online);
        if online {
            e.last_seen = e.last_seen.max(now);
        }
        e.dirty = true;
    }

    /// The device now has a record in the store.
    pub fn mark_registered(&self, device: &DeviceId) {
        self.shard(device)
            .entry(device.clone())
            .or_default()
            .registered = true;
    }

    pub fn get(&self, device: &DeviceId) -> Option<DeviceLive> {
        self.shard(device).get(device).cloned()
    }

    pub fn status(&self, device: &DeviceId) -> Option<Arc<StatusReport>> {
        self.shard(device)
            .get(device)
            .and_then(|e| e.status.clone())
    }

    /// Takes the dirty devices (clearing their flag) for a flush.
    pub fn take_dirty(&self) -> Vec<(DeviceId, DeviceLive)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (id, e) in shard.iter_mut() {
                if e.dirty {
                    e.dirty = false;
                    out.push((id.clone(), e.clone()));
                }
            }
        }
        out
    }

    /// Marks devices dirty again after a failed flush.
    pub fn mark_dirty(&self, devices: impl IntoIterator<Item = DeviceId>) {
        for d in devices {
            if let Some(e) = self.shard(&d).get_mut(&d) {
                e.dirty = true;
            }
        }
    }

    /// A copy of every device's state (cheap: reports are shared).
    pub fn snapshot(&self) -> HashMap<DeviceId, DeviceLive> {
        let mut out = HashMap::new();
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            out.extend(shard.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
