//! Container Device Interface specs (versions 0.3.0 – 1.1.0): the model,
//! strict parsing of JSON and YAML, and the registry of specs found in
//! `/etc/cdi` and `/var/run/cdi` under the host root.
//!
//! Written here rather than taken from the `container-device-interface`
//! crate: its releases pin another `oci-spec` than the agent's (1.1.1 needs
//! 0.10, the agent is on 0.8) and pull `clap` and `jsonschema` into the
//! device binary; its applier does not depth-sort mounts. The spec is small.
//!
//! Rules (CDI `SPEC.md`, `pkg/cdi/cache.go`, `spec-dirs.go`): files ending
//! `.json` or `.yaml` directly in a spec directory (no recursion); unknown
//! fields fail; `cdiVersion` must be a released version and at least the
//! version that introduced the fields a spec uses; a device defined twice in
//! one directory is a conflict, and `/var/run/cdi` wins over `/etc/cdi`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::host_root::HostRoot;

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

/// Parses one spec file (`.json` or `.yaml`) and validates it.
pub fn parse(path: &Path, text: &str) -> Result<Spec, CdiError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let value = if is_json {
        serde_json::from_str(text).map_err(|source| CdiError::Json {
            path: path.to_owned(),
            source,
        })?
    } else {
        super::yaml::to_json(text).map_err(|e| match e {
            super::yaml::YamlError::Scan(source) => CdiError::Yaml {
                path: path.to_owned(),
                source,
            },
            super::yaml::YamlError::Shape(reason) => CdiError::YamlShape {
                path: path.to_owned(),
                reason,
            },
        })?
    };
    let spec: Spec = serde_json::from_value(value).map_err(|source| CdiError::Json {
        path: path.to_owned(),
        source,
    })?;
    super::validate::spec(path, &spec)?;
    Ok(spec)
}

/// A device name split: `nvidia.com/gpu=all` → (`nvidia.com/gpu`, `all`).
pub fn split_qualified(name: &str) -> Result<(&str, &str), CdiError> {
    let bad = || CdiError::BadQualifiedName(name.to_owned());
    let (kind, device) = name.split_once('=').ok_or_else(bad)?;
    if !super::validate::is_kind(kind) || !super::validate::is_name(device) {
        return Err(bad());
    }
    Ok((kind, device))
}

/// The specs found on the host, by kind, each with its priority.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// (priority, file, spec); higher priority wins.
    specs: Vec<(usize, PathBuf, Spec)>,
}

impl Registry {
    /// Reads every spec under the host's spec directories. A spec that does
    /// not parse or validate fails the whole read: a half-understood spec
    /// must not silently give a container fewer devices.
    pub fn load(host: &HostRoot) -> Result<Self, CdiError> {
        let mut specs = Vec::new();
        for (priority, dir) in SPEC_DIRS.iter().enumerate() {
            let mut files: Vec<PathBuf> = host
                .entries(dir)
                .into_iter()
                .filter(|p| {
                    p.is_file() && p.extension().is_some_and(|e| e == "json" || e == "yaml")
                })
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(|source| CdiError::Io {
                    path: file.clone(),
                    source,
                })?;
                specs.push((priority, file.clone(), parse(&file, &text)?));
            }
        }
        let registry = Registry { specs };
        registry.check_conflicts()?;
        Ok(registry)
    }

    /// Adds a spec made in memory (the CSV fallback's), below every spec
    /// on disk.
    pub fn push_fallback(&mut self, path: PathBuf, spec: Spec) {
        self.specs.push((0, path, spec));
    }

    /// Adds a spec file outside the spec directories (the one `nvidia-ctk`
    /// generated into the state dir), below every spec in them.
    pub fn push_file_fallback(&mut self, file: &Path) -> Result<(), CdiError> {
        let text = std::fs::read_to_string(file).map_err(|source| CdiError::Io {
            path: file.to_owned(),
            source,
        })?;
        let spec = parse(file, &text)?;
        self.specs.push((0, file.to_owned(), spec));
        self.check_conflicts()
    }

    fn check_conflicts(&self) -> Result<(), CdiError> {
        let mut seen: BTreeMap<(usize, String), &Path> = BTreeMap::new();
        for (priority, path, spec) in &self.specs {
            for device in &spec.devices {
                let name = format!("{}={}", spec.kind, device.name);
                if let Some(first) = seen.insert((*priority, name.clone()), path) {
                    return Err(CdiError::Duplicate {
                        name,
                        first: first.to_owned(),
                        second: path.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn has_kind(&self, kind: &str) -> bool {
        self.specs.iter().any(|(_, _, s)| s.kind == kind)
    }

    /// Every fully qualified device name, sorted.
    pub fn device_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .specs
            .iter()
            .flat_map(|(_, _, s)| s.devices.iter().map(|d| format!("{}={}", s.kind, d.name)))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The spec (highest priority) that defines `kind=name`.
    fn find(&self, kind: &str, name: &str) -> Option<(usize, &Spec, &Device)> {
        self.specs
            .iter()
            .enumerate()
            .filter(|(_, (_, _, s))| s.kind == kind)
            .filter_map(|(i, (p, _, s))| {
                s.devices
                    .iter()
                    .find(|d| d.name == name)
                    .map(|d| (*p, i, s, d))
            })
            .max_by_key(|(p, ..)| *p)
            .map(|(_, i, s, d)| (i, s, d))
    }

    /// The edits for `names` (fully qualified): each spec's own edits once,
    /// then each device's, in request order. `kind=all` is the spec's `all`
    /// device when it defines one (NVIDIA's do), else every device of kind.
    pub fn resolve(&self, names: &[String]) -> Result<ContainerEdits, CdiError> {
        let mut edits = ContainerEdits::default();
        let mut used_specs: Vec<usize> = Vec::new();
        for name in names {
            let (kind, device) = split_qualified(name)?;
            let mut hits: Vec<(usize, &Spec, &Device)> = Vec::new();
            match self.find(kind, device) {
                Some(hit) => hits.push(hit),
                None if device == "all" => {
                    // Each device once, from the spec that wins for it.
                    let mut names: Vec<&str> = Vec::new();
                    for (_, _, s) in self.specs.iter().filter(|(_, _, s)| s.kind == kind) {
                        for d in &s.devices {
                            if !names.contains(&d.name.as_str()) {
                                names.push(&d.name);
                            }
                        }
                    }
                    hits.extend(names.into_iter().filter_map(|n| self.find(kind, n)));
                }
                None => {}
            }
            if hits.is_empty() {
                return Err(CdiError::Unresolvable(name.clone()));
            }
            for (i, spec, dev) in hits {
                if !used_specs.contains(&i) {
                    used_specs.push(i);
                    edits.extend(&spec.container_edits);
                }
                edits.extend(&dev.container_edits);
            }
        }
        Ok(edits)
    }
}
