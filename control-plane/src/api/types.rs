//! JSON bodies of the REST API, shared by the server and the typed client.

use std::collections::BTreeMap;

use fleet_protocol::dsse::Envelope;
use fleet_protocol::{AppName, DeviceId, Digest, GroupName, Telemetry};
use serde::{Deserialize, Serialize};

use crate::fleet::rollout::{Counts, DeviceProgress};
use crate::store::{
    DesiredRecord, DeviceRecord, GroupRecord, Labels, ReleaseRecord, RolloutId, RolloutRecord,
    RolloutState, WaveState,
};

/// Every error answer: a stable code and a message saying what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: GroupRecord,
    /// The devices in the group now.
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroup {
    pub name: GroupName,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub members: Vec<DeviceId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddMembers {
    pub devices: Vec<DeviceId>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    pub digest: Digest,
    pub app: AppName,
    pub version: String,
    pub repository: String,
    pub manifest_digest: Digest,
    pub added_at: u64,
}

impl From<&ReleaseRecord> for ReleaseView {
    fn from(r: &ReleaseRecord) -> Self {
        Self {
            digest: r.digest.clone(),
            app: r.release.app.clone(),
            version: r.release.version.clone(),
            repository: r.release.repository.clone(),
            manifest_digest: r.release.manifest_digest.clone(),
            added_at: r.added_at,
        }
    }
}

/// Start a rollout of a release already posted (`release_digest`) or of the
/// signed release given here (`release`), to a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRollout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Envelope>,
    pub group: GroupName,
    /// Sizes of the first waves; the last wave takes the remaining devices.
    /// Empty: one wave.
    #[serde(default)]
    pub waves: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveView {
    pub state: WaveState,
    pub devices: usize,
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: RolloutId,
    pub release_digest: Digest,
    pub app: AppName,
    pub version: String,
    pub group: GroupName,
    pub state: RolloutState,
    pub waves: Vec<WaveView>,
    pub created_at: u64,
    pub updated_at: u64,
    pub counts: Counts,
    pub devices: Vec<DeviceProgress>,
}

impl RolloutView {
    pub fn new(r: &RolloutRecord, devices: Vec<DeviceProgress>) -> Self {
        Self {
            id: r.id,
            release_digest: r.release_digest.clone(),
            app: r.app.clone(),
            version: r.version.clone(),
            group: r.group.clone(),
            state: r.state,
            waves: r
                .waves
                .iter()
                .map(|w| WaveView {
                    state: w.state,
                    devices: w.devices.len(),
                    started_at: w.started_at,
                })
                .collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            counts: Counts::of(&devices),
            devices,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveView {
    /// The reference as given, normalised.
    pub image: String,
    pub repository: String,
    pub digest: Digest,
}
