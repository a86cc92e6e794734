//! Container Device Interface specs (versions 0.3.0 – 1.1.0): strict
//! parsing of JSON and YAML into the model of [`super::spec`], and the
//! registry of specs found in `/etc/cdi` and `/var/run/cdi` under the host
//! root.
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

use crate::host_root::HostRoot;

pub use super::spec::{
    ALLOWED_HOST_ROOTS, CdiError, ContainerEdits, Device, DeviceNode, Hook, Mount, SPEC_DIRS, Spec,
    VERSIONS,
};

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
