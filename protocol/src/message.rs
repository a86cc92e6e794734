//! Wire messages. Every message carries `schema` (the version of this format).
//! Unknown fields are ignored on decode so that an old agent keeps working when
//! a newer server adds fields; a message whose `schema` major is newer than
//! [`SCHEMA_VERSION`] is still decoded, and callers decide what to do with it.
//!
//! Times are seconds since the Unix epoch (`u64`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{AppName, DeviceId, Digest};
use crate::lifecycle::{ErrorCode, Phase};

/// The version of the message formats defined here.
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version() -> u32 {
    SCHEMA_VERSION
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
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a name from the image.
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    pub read_only_rootfs: bool,
    pub network: NetworkMode,
    /// CDI device names, e.g. `nvidia.com/gpu=all`.
    pub devices: Vec<String>,
    /// Granted only when the device's trust metadata allows it.
    pub privileged: bool,
    pub restart: RestartPolicy,
    pub health: Option<HealthCheck>,
    pub resources: Resources,
    /// Seconds the new release must stay healthy before it is committed.
    pub probation_secs: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub stop_grace_secs: Option<u64>,
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
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core.
    pub cpu_millis: Option<u64>,
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
    pub running: Option<ReleaseRef>,
    /// The release being installed, if any.
    pub target: Option<ReleaseRef>,
    /// The rollback target.
    pub previous: Option<ReleaseRef>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub progress: Option<Progress>,
    #[serde(default)]
    pub error: Option<ErrorInfo>,
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
    pub generation: Option<u64>,
    #[serde(default)]
    pub apps: Vec<AppStatus>,
    /// Why the last desired state was refused, if it was.
    #[serde(default)]
    pub rejected: Option<ErrorInfo>,
    /// Set on the first report after start: what the device is.
    #[serde(default)]
    pub info: Option<DeviceInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceInfo {
    pub labels: BTreeMap<String, String>,
    /// `amd64`, `arm64`, `arm`.
    pub architecture: String,
    /// e.g. `v7`, `v8`.
    pub variant: Option<String>,
    /// Jetson Linux release, e.g. `R36.4.0`.
    pub l4t_version: Option<String>,
    pub agent_version: String,
}

/// Agent → server, QoS 0. Sensors the device lacks are absent, never invented.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Telemetry {
    #[serde(default = "schema_version")]
    pub schema: u32,
    pub device: Option<DeviceId>,
    pub at: u64,
    pub uptime_secs: Option<u64>,
    pub cpu_percent: Option<f32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub store_used_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    /// Thermal zone name → degrees Celsius.
    pub temperatures: BTreeMap<String, f32>,
    pub gpu_load_percent: Option<f32>,
    pub gpu_freq_hz: Option<u64>,
    pub emc_load_percent: Option<f32>,
    /// Power rail name → milliwatts.
    pub power_mw: BTreeMap<String, u64>,
    pub apps: Vec<AppTelemetry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppTelemetry {
    pub app: Option<AppName>,
    pub running: bool,
    pub restarts: u32,
    pub health: Health,
    pub cpu_percent: Option<f32>,
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
