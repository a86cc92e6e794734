//! The CDI spec as data: its released versions, the host roots a spec may
//! mount from, the file model (spec, devices, container edits) and the
//! errors of reading one. Parsing and the registry are in [`super::cdi`],
//! the checks after decoding in `validate`; both build on this room.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Spec directories, lowest priority first.
pub const SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Released spec versions this parser reads.
pub const VERSIONS: [&str; 8] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// Host paths a spec may bind into a container. Anything else (`/`, `/etc`,
/// the agent's state) is refused.
pub const ALLOWED_HOST_ROOTS: [&str; 10] = [
    "/usr/lib",
    "/usr/local/cuda",
    "/usr/share",
    "/usr/bin",
    "/usr/sbin",
    "/lib",
    "/opt/nvidia",
    "/etc/nv_tegra_release",
    "/etc/vulkan",
    "/etc/glvnd",
];

/// Why CDI specs could not be read or a device not resolved.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI spec {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CDI spec {path:?} is not valid JSON/CDI: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CDI spec {path:?} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: yaml_rust2::ScanError,
    },
    #[error("CDI spec {path:?}: {reason}")]
    YamlShape { path: PathBuf, reason: &'static str },
    #[error("CDI spec {path:?}: unknown cdiVersion {version:?} (known: 0.3.0 to 1.1.0)")]
    UnknownVersion { path: PathBuf, version: String },
    #[error("CDI spec {path:?}: {feature} needs cdiVersion {needs}, the spec says {version}")]
    VersionTooLow {
        path: PathBuf,
        feature: &'static str,
        needs: &'static str,
        version: String,
    },
    #[error("CDI spec {path:?}: kind {kind:?} is not vendor/class")]
    BadKind { path: PathBuf, kind: String },
    #[error("CDI spec {path:?}: device name {name:?} is not valid")]
    BadDeviceName { path: PathBuf, name: String },
    #[error("CDI spec {path:?} defines no devices")]
    NoDevices { path: PathBuf },
    #[error("CDI spec {path:?}: {field} {value:?} must be an absolute path without `..`")]
    BadPath {
        path: PathBuf,
        field: &'static str,
        value: String,
    },
    #[error("CDI spec {path:?}: host path {host_path:?} is outside the allowed roots")]
    HostPathNotAllowed { path: PathBuf, host_path: String },
    #[error("CDI spec {path:?}: hook name {name:?} is not an OCI hook")]
    BadHookName { path: PathBuf, name: String },
    #[error("CDI spec {path:?}: device node type {kind:?} is not b, c, u or p")]
    BadNodeType { path: PathBuf, kind: String },
    #[error("CDI spec {path:?}: device node permissions {permissions:?} are not some of r, w, m")]
    BadPermissions { path: PathBuf, permissions: String },
    #[error("CDI spec {path:?}: containerEdits.{field} is not supported by this agent")]
    Unsupported { path: PathBuf, field: &'static str },
    #[error("CDI device {name} is defined by both {first:?} and {second:?}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{0:?} is not a fully qualified CDI device name (vendor/class=name)")]
    BadQualifiedName(String),
    #[error("no CDI spec defines device {0}")]
    Unresolvable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Parsed so that it is refused by name, not as an unknown field.
    #[serde(default)]
    pub intel_rdt: Option<serde_json::Value>,
    #[serde(default)]
    pub net_devices: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
    pub host_path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub file_mode: Option<u32>,
    pub permissions: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

impl ContainerEdits {
    /// Appends `other` (device edits after spec edits, in request order).
    pub fn extend(&mut self, other: &ContainerEdits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
        self.additional_gids
            .extend(other.additional_gids.iter().copied());
    }

    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
            && self.additional_gids.is_empty()
    }
}
