//! CDI spec validation: versions, names, paths (CDI `SPEC.md`,
//! `specs-go/version.go`).

use std::path::{Component, Path};

use super::spec::{ALLOWED_HOST_ROOTS, CdiError, ContainerEdits, Spec, VERSIONS};

const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// `[A-Za-z0-9][A-Za-z0-9_.-]*[A-Za-z0-9]` or one alphanumeric.
pub fn is_name(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let ends_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    !s.is_empty() && s.len() <= 63 && ends_ok && s.chars().all(ok_char)
}

/// `vendor/class`: vendor a DNS-ish name, class a name.
pub fn is_kind(s: &str) -> bool {
    let Some((vendor, class)) = s.split_once('/') else {
        return false;
    };
    !vendor.is_empty() && vendor.split('.').all(is_name) && is_name(class)
}

fn version_index(v: &str) -> Option<usize> {
    VERSIONS.iter().position(|k| *k == v)
}

pub fn is_clean_abs(p: &str) -> bool {
    let path = Path::new(p);
    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir)
}

fn host_allowed(p: &str) -> bool {
    let path = Path::new(p);
    ALLOWED_HOST_ROOTS.iter().any(|root| path.starts_with(root)) || path.starts_with("/dev")
}

/// `/`, `/proc`, `/sys` and below: what the runtime sets up, never replaced
/// by a device's mount.
fn over_runtime_mount(p: &str) -> bool {
    let path = Path::new(p);
    path == Path::new("/") || path.starts_with("/proc") || path.starts_with("/sys")
}

/// Everything [`super::cdi::parse`] checks after decoding.
pub fn spec(path: &Path, spec: &Spec) -> Result<(), CdiError> {
    let p = || path.to_owned();
    let have = version_index(&spec.cdi_version).ok_or_else(|| CdiError::UnknownVersion {
        path: p(),
        version: spec.cdi_version.clone(),
    })?;
    let need = |feature: &'static str, needs: &'static str| -> Result<(), CdiError> {
        match version_index(needs) {
            Some(n) if have < n => Err(CdiError::VersionTooLow {
                path: p(),
                feature,
                needs,
                version: spec.cdi_version.clone(),
            }),
            _ => Ok(()),
        }
    };
    if !is_kind(&spec.kind) {
        return Err(CdiError::BadKind {
            path: p(),
            kind: spec.kind.clone(),
        });
    }
    if spec.devices.is_empty() {
        return Err(CdiError::NoDevices { path: p() });
    }
    let mut annotated = !spec.annotations.is_empty();
    edits(path, &spec.container_edits, &need)?;
    for device in &spec.devices {
        if !is_name(&device.name) {
            return Err(CdiError::BadDeviceName {
                path: p(),
                name: device.name.clone(),
            });
        }
        if device.name.starts_with(|c: char| c.is_ascii_digit()) {
            need("a device name starting with a digit", "0.5.0")?;
        }
        annotated |= !device.annotations.is_empty();
        edits(path, &device.container_edits, &need)?;
    }
    if annotated {
        need("annotations", "0.6.0")?;
    }
    Ok(())
}

fn edits(
    path: &Path,
    e: &ContainerEdits,
    need: &dyn Fn(&'static str, &'static str) -> Result<(), CdiError>,
) -> Result<(), CdiError> {
    let p = || path.to_owned();
    if e.intel_rdt.is_some() {
        return Err(CdiError::Unsupported {
            path: p(),
            field: "intelRdt",
        });
    }
    if e.net_devices.is_some() {
        return Err(CdiError::Unsupported {
            path: p(),
            field: "netDevices",
        });
    }
    if !e.additional_gids.is_empty() {
        need("additionalGids", "0.7.0")?;
    }
    let bad = |field: &'static str, value: &str| CdiError::BadPath {
        path: p(),
        field,
        value: value.to_owned(),
    };
    for node in &e.device_nodes {
        if !is_clean_abs(&node.path) {
            return Err(bad("deviceNodes.path", &node.path));
        }
        if let Some(host) = &node.host_path {
            need("deviceNodes.hostPath", "0.5.0")?;
            if !is_clean_abs(host) {
                return Err(bad("deviceNodes.hostPath", host));
            }
            if !Path::new(host).starts_with("/dev") {
                return Err(CdiError::HostPathNotAllowed {
                    path: p(),
                    host_path: host.clone(),
                });
            }
        }
        if let Some(kind) = &node.kind
            && !matches!(kind.as_str(), "b" | "c" | "u" | "p")
        {
            return Err(CdiError::BadNodeType {
                path: p(),
                kind: kind.clone(),
            });
        }
        if let Some(perm) = &node.permissions
            && !is_cgroup_access(perm)
        {
            return Err(CdiError::BadPermissions {
                path: p(),
                permissions: perm.clone(),
            });
        }
    }
    for m in &e.mounts {
        if !is_clean_abs(&m.container_path) || over_runtime_mount(&m.container_path) {
            return Err(bad("mounts.containerPath", &m.container_path));
        }
        if !is_clean_abs(&m.host_path) {
            return Err(bad("mounts.hostPath", &m.host_path));
        }
        if !host_allowed(&m.host_path) {
            return Err(CdiError::HostPathNotAllowed {
                path: p(),
                host_path: m.host_path.clone(),
            });
        }
        if m.kind.is_some() {
            need("mounts.type", "0.4.0")?;
        }
    }
    for h in &e.hooks {
        if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
            return Err(CdiError::BadHookName {
                path: p(),
                name: h.hook_name.clone(),
            });
        }
        if !is_clean_abs(&h.path) {
            return Err(bad("hooks.path", &h.path));
        }
        if !host_allowed(&h.path) {
            return Err(CdiError::HostPathNotAllowed {
                path: p(),
                host_path: h.path.clone(),
            });
        }
    }
    Ok(())
}

/// A cgroup device access string: some of `r`, `w`, `m`, each once (CDI
/// `deviceNodes.permissions`); `none` is the agent's "no cgroup rule".
fn is_cgroup_access(p: &str) -> bool {
    p == "none"
        || (!p.is_empty()
            && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
            && p.chars().enumerate().all(|(i, c)| !p[..i].contains(c)))
}
