//! Devices: registration on the first report, the device view, operator
//! labels, the last signed desired state.

use std::collections::BTreeMap;

use fleet_protocol::{AppName, DeviceId, Digest, GroupName, Telemetry};
use serde::{Deserialize, Serialize};

use super::engine::{Inner, event};
use super::{Fleet, FleetError, not_found};
use crate::store::{DesiredRecord, DeviceRecord, EventKind, GroupRecord, Labels, Write};

/// What a device was last told to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredSummary {
    pub generation: u64,
    pub apps: BTreeMap<AppName, Digest>,
    pub issued_at: u64,
    pub expires_at: u64,
    pub published: bool,
}

impl From<&DesiredRecord> for DesiredSummary {
    fn from(r: &DesiredRecord) -> Self {
        Self {
            generation: r.generation,
            apps: r.apps.clone(),
            issued_at: r.issued_at,
            expires_at: r.expires_at,
            published: r.published,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub device: DeviceRecord,
    pub effective_labels: Labels,
    pub groups: Vec<GroupName>,
    pub desired: Option<DesiredSummary>,
    /// The latest telemetry the device sent.
    #[serde(default)]
    pub telemetry: Option<TelemetryView>,
}

/// A device's latest telemetry and when the server received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryView {
    /// Unix seconds (server clock).
    pub received_at: u64,
    #[serde(flatten)]
    pub telemetry: Telemetry,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetLabels {
    /// Labels to set (operator labels, over the reported ones).
    #[serde(default)]
    pub set: Labels,
    /// Operator labels to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl Fleet {
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
                event(EventKind::DeviceLabels, &id, msg, now),
            ])?;
            let changed = i.catch_up_commit(std::slice::from_ref(&id), now)?;
            let groups = i.store.groups()?;
            Ok((i.device_view(d, &groups)?, changed))
        })
        .await
    }
}

impl Inner {
    /// Registers `id` on its first report with info (its latest state is
    /// already in memory). Returns whether the device is registered now.
    pub(super) fn register(&self, id: &DeviceId, now: u64) -> Result<bool, FleetError> {
        if self.store.device(id)?.is_some() {
            return Ok(true);
        }
        let Some(live) = self.live.get(id).filter(|l| l.info.is_some()) else {
            tracing::debug!(device = %id, "status from an unregistered device without info; ignored");
            return Ok(false);
        };
        let mut device = DeviceRecord::new(id.clone(), now);
        live.overlay(&mut device);
        self.store.commit(vec![
            event(EventKind::DeviceRegistered, id, "first status report", now),
            Write::Device(device),
        ])?;
        self.live.mark_registered(id);
        Ok(true)
    }

    pub(super) fn device_view(
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
                Some(TelemetryView {
                    received_at: l.telemetry_received_at,
                    telemetry: Telemetry::clone(l.telemetry.as_deref()?),
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
}
