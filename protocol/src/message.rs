//! Wire messages. Every message carries `schema` (the version of this format).
//! Unknown fields are ignored on decode so that an old agent keeps working when
//! a newer server adds fields (except inside a release's `requires`: a
//! requirement the agent cannot check refuses the release by name); a message whose `schema` major is newer than
//! [`SCHEMA_VERSION`] is still decoded, and callers decide what to do with it.
//!
//! Times are seconds since the Unix epoch (`u64`). Absent optional fields and
//! empty lists are left out of the JSON to keep messages small.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::{AppName, DeviceId, Digest};
use crate::lifecycle::{ErrorCode, Phase};
pub use crate::requires::Requirements;

/// The version of the message formats defined here.
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// The largest message [`decode`] accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid {what} message")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Decodes a JSON message of at most [`MAX_MESSAGE_BYTES`]. Unknown fields are
/// ignored; the size is checked before any parsing.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let what = short_type_name::<T>();
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Json { what, source })
}

/// Encodes a message as compact JSON.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(message)
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A release of one application, signed by a release key (offline, operator/CI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub app: AppName,
    /// Human version, e.g. `v2`.
    pub version: String,
    /// Repository without tag or digest, e.g. `registry.local:5000/ns/model`.
    pub repository: String,
    /// The manifest digest the device must run; the content chain below it is
    /// verified while streaming.
    pub manifest_digest: Digest,
    #[serde(default)]
    pub runtime: RuntimeSettings,
}

/// How the release's container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSettings {
    /// Replaces the image's entrypoint + cmd when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a name from the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    pub read_only_rootfs: bool,
    pub network: NetworkMode,
    /// CDI device names, e.g. `nvidia.com/gpu=all`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// `gpu = "all"`: the same as `devices = ["nvidia.com/gpu=all"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// What the device must be (L4T, CUDA, SoC); checked before anything is
    /// downloaded. Unknown requirement names are refused.
    #[serde(skip_serializing_if = "Requirements::is_empty")]
    pub requires: Requirements,
    /// Granted only when the device's trust metadata allows it.
    pub privileged: bool,
    pub restart: RestartPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    pub resources: Resources,
    /// Seconds the new release must stay healthy before it is committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probation_secs: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_secs: Option<u64>,
}

/// Which GPUs a release asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuRequest {
    /// Every GPU the device describes (`nvidia.com/gpu=all`).
    All,
}

impl RuntimeSettings {
    /// The CDI devices the release asks for: `gpu` first, then `devices`,
    /// each once.
    pub fn requested_devices(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let gpu = self.gpu.map(|g| g.cdi_name().to_owned());
        for name in gpu.into_iter().chain(self.devices.iter().cloned()) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }
}

impl GpuRequest {
    /// The CDI device this request stands for.
    pub fn cdi_name(self) -> &'static str {
        match self {
            GpuRequest::All => "nvidia.com/gpu=all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    Host,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    #[default]
    Always,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub start_period_secs: u64,
}

fn default_interval() -> u64 {
    5
}
fn default_timeout() -> u64 {
    2
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Probe {
    Exec { command: Vec<String> },
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

/// One app in a device's desired state: the signed release envelope and the
/// digest of its payload, which the agent checks against the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub app: AppName,
    /// `sha256` of the release envelope's payload bytes.
    pub release_digest: Digest,
    /// The DSSE envelope of the [`Release`], signed by a release key.
    pub release: crate::dsse::Envelope,
}

/// What one device should run, signed by the director key (online, server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub device: DeviceId,
    /// Strictly increasing per device; an agent never applies one that is not
    /// greater than the last it applied.
    pub generation: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<DesiredApp>,
}

/// A stable, machine-readable error code plus a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Download progress of the app's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes that did not need fetching because the device already had them.
    pub bytes_reused: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    #[default]
    Unknown,
    Starting,
    Healthy,
    Unhealthy,
}

/// The state of one app on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: AppName,
    pub phase: Phase,
    /// Version and release digest of what runs now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<ReleaseRef>,
    /// The release being installed, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<ReleaseRef>,
    /// The rollback target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ReleaseRef>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Layers of the target release whose delta could not be used (the
    /// whole layer was fetched instead), and why; kept until the next
    /// download of the app starts. At most [`MAX_DELTA_FALLBACKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_fallbacks: Vec<DeltaFallback>,
}

/// Most [`DeltaFallback`]s one [`AppStatus`] carries.
pub const MAX_DELTA_FALLBACKS: usize = 8;
/// Longest [`DeltaFallback::reason`], in bytes.
pub const MAX_FALLBACK_REASON: usize = 512;

/// A layer delta discarded by the device: the whole layer was fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaFallback {
    /// The layer blob (as the manifest names it).
    pub layer: Digest,
    pub reason: String,
}

impl DeltaFallback {
    /// `reason` cut to [`MAX_FALLBACK_REASON`] bytes (at a char boundary).
    pub fn new(layer: Digest, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_FALLBACK_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            layer,
            reason: reason[..end].to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub version: String,
    pub release_digest: Digest,
}

/// Agent → server, retained, QoS 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub device: DeviceId,
    pub reported_at: u64,
    /// The generation of the last desired state the agent accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppStatus>,
    /// Why the last desired state was refused, if it was.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<ErrorInfo>,
    /// Set on the first report after start: what the device is.
    #[serde(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<DeviceInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceInfo {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// e.g. `v7`, `v8`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Jetson Linux release, e.g. `R36.4.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4t_version: Option<String>,
    /// Tegra SoC, e.g. `t234`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc: Option<String>,
    /// Jetson model from the device tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// JetPack release, e.g. `6.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetpack_version: Option<String>,
    /// CUDA toolkit on the host, e.g. `12.6.68`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// CDI devices the host describes (`nvidia.com/gpu=all`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
    pub agent_version: String,
}

/// Agent → server, QoS 0. Sensors the device lacks are absent, never invented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Telemetry {
    #[serde(default = "schema_version")]
    pub schema: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    pub at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    /// Thermal zone name → degrees Celsius.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub temperatures: BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_load_percent: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_freq_hz: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emc_load_percent: Option<f32>,
    /// Power rail name → milliwatts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub power_mw: BTreeMap<String, u64>,
    /// Content bytes downloaded since the device's store was created
    /// (monotonic counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_bytes_total: Option<u64>,
    /// Content bytes that did not need downloading because the device already
    /// had them (monotonic counter, same origin as `fetched_bytes_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reused_bytes_total: Option<u64>,
    /// Bytes of layer deltas downloaded and applied (monotonic counter;
    /// also counted in `fetched_bytes_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_fetched_bytes_total: Option<u64>,
    /// Bytes of the whole layers those deltas replaced (monotonic counter):
    /// what the device would have fetched without deltas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_replaced_bytes_total: Option<u64>,
    /// Deltas the device could not use and replaced by the whole layer
    /// (monotonic counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_fallbacks_total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppTelemetry>,
}

impl Default for Telemetry {
    /// An empty report of the current schema.
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            device: None,
            at: 0,
            uptime_secs: None,
            cpu_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            store_used_bytes: None,
            disk_free_bytes: None,
            net_rx_bytes: None,
            net_tx_bytes: None,
            temperatures: BTreeMap::new(),
            gpu_load_percent: None,
            gpu_freq_hz: None,
            emc_load_percent: None,
            power_mw: BTreeMap::new(),
            fetched_bytes_total: None,
            reused_bytes_total: None,
            delta_fetched_bytes_total: None,
            delta_replaced_bytes_total: None,
            delta_fallbacks_total: None,
            apps: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppTelemetry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppName>,
    pub running: bool,
    pub restarts: u32,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Server → agent, QoS 1, signed by the director key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub device: DeviceId,
    pub id: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CommandKind {
    RestartApp { app: AppName },
    CollectLogs { app: AppName, max_bytes: u64 },
}

/// Agent → server on the `online` topic, retained, QoS 1. The agent publishes
/// `online: true` once connected and registers `online: false` as its MQTT
/// last will, so the broker announces an unclean disconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub device: DeviceId,
    pub online: bool,
}

impl Presence {
    pub fn online(device: DeviceId) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            device,
            online: true,
        }
    }

    /// The last-will payload.
    pub fn offline(device: DeviceId) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            device,
            online: false,
        }
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
