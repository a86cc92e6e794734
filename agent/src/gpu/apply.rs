//! CDI container edits → the OCI runtime spec, as the CDI specification
//! says (`pkg/cdi/container-edits.go`, `container-edits_unix.go`):
//!
//! - `env`: a `K=V` replaces an existing `K=`, else is appended.
//! - `deviceNodes`: `hostPath` defaults to `path`; unless the node is fully
//!   specified (type and a major, or a fifo), the host node is `stat`ed at
//!   create time for type, major, minor and mode (Thor's majors are dynamic,
//!   so a cached spec must not carry them). Same-path entries are replaced.
//!   Each b/c node gets an allow rule in `linux.resources.devices` after the
//!   bundle's deny-all. A node that is not world-rw and is group-owned adds
//!   its group to the process's additional groups (NVIDIA's
//!   `internal/edits/device.go`; `video`/`render` on Jetson).
//! - `mounts`: same-destination mounts are replaced, then all mounts are
//!   stable-sorted by destination depth (parents first).
//! - `hooks`: appended to the OCI list the `hookName` names.
//! - `additionalGids`: appended, skipping 0 and duplicates.
//!
//! Host paths (nodes, mount sources, hook programs) are read under the
//! agent's host root, which is `/` on a device.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hook, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Mount, Spec};

use super::cdi::{ContainerEdits, DeviceNode};
use crate::host_root::HostRoot;

/// Why edits could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("device node {path:?} on the host: {source}")]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} on the host is not a device node")]
    NotADevice { path: PathBuf },
    #[error("device node {path:?}: the spec says type {spec}, the host node is {host}")]
    TypeMismatch {
        path: PathBuf,
        spec: String,
        host: &'static str,
    },
}

/// Applies `edits` to `spec`.
pub fn apply(spec: &mut Spec, edits: &ContainerEdits, host: &HostRoot) -> Result<(), ApplyError> {
    apply_env(spec, &edits.env);
    let mut gids: Vec<u32> = edits.additional_gids.clone();
    let mut devices = Vec::new();
    for node in &edits.device_nodes {
        let (device, extra_gid) = resolve_node(node, host)?;
        gids.extend(extra_gid);
        devices.push((device, node.permissions.clone()));
    }
    apply_devices(spec, devices);
    apply_mounts(spec, edits, host);
    apply_hooks(spec, edits, host);
    apply_gids(spec, &gids);
    Ok(())
}

fn apply_env(spec: &mut Spec, env: &[String]) {
    if env.is_empty() {
        return;
    }
    let mut process = spec.process().clone().unwrap_or_default();
    let mut current = process.env().clone().unwrap_or_default();
    for kv in env {
        let key = kv.split('=').next().unwrap_or(kv);
        let prefix = format!("{key}=");
        match current.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(existing) => existing.clone_from(kv),
            None => current.push(kv.clone()),
        }
    }
    process.set_env(Some(current));
    spec.set_process(Some(process));
}

fn node_type(kind: &str) -> LinuxDeviceType {
    match kind {
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    }
}

/// The OCI device for a CDI node, and the group to add (if any).
fn resolve_node(
    node: &DeviceNode,
    host: &HostRoot,
) -> Result<(LinuxDevice, Option<u32>), ApplyError> {
    let host_path = node.host_path.as_deref().unwrap_or(&node.path);
    let fully_specified = match node.kind.as_deref() {
        Some("p") => true,
        Some(_) => node.major.is_some_and(|m| m != 0),
        None => false,
    };
    let mut device = LinuxDevice::default();
    device.set_path(PathBuf::from(&node.path));
    let mut extra_gid = None;
    if fully_specified {
        device.set_typ(node_type(node.kind.as_deref().unwrap_or("c")));
        device.set_major(node.major.unwrap_or(0));
        device.set_minor(node.minor.unwrap_or(0));
        device.set_file_mode(node.file_mode);
    } else {
        let path = host.path(host_path);
        let meta = std::fs::metadata(&path).map_err(|source| ApplyError::Stat {
            path: path.clone(),
            source,
        })?;
        let ft = meta.file_type();
        let (kind, name) = if ft.is_char_device() {
            ("c", "a character device")
        } else if ft.is_block_device() {
            ("b", "a block device")
        } else if ft.is_fifo() {
            ("p", "a fifo")
        } else {
            return Err(ApplyError::NotADevice { path });
        };
        if let Some(spec_kind) = &node.kind
            && spec_kind != kind
            && !(spec_kind == "u" && kind == "c")
        {
            return Err(ApplyError::TypeMismatch {
                path,
                spec: spec_kind.clone(),
                host: name,
            });
        }
        let rdev = meta.rdev();
        device.set_typ(node_type(kind));
        device.set_major(i64::from(rustix::fs::major(rdev)));
        device.set_minor(i64::from(rustix::fs::minor(rdev)));
        let mode = meta.mode() & 0o777;
        device.set_file_mode(Some(node.file_mode.unwrap_or(mode)));
        let gid = node.gid.unwrap_or(meta.gid());
        if node.gid.is_none() {
            device.set_gid(Some(gid));
        }
        if mode & 0o006 != 0o006 && gid != 0 {
            extra_gid = Some(gid);
        }
    }
    if node.uid.is_some() {
        device.set_uid(node.uid);
    }
    if node.gid.is_some() {
        device.set_gid(node.gid);
    }
    Ok((device, extra_gid))
}

fn apply_devices(spec: &mut Spec, devices: Vec<(LinuxDevice, Option<String>)>) {
    if devices.is_empty() {
        return;
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut nodes = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    if rules.is_empty() {
        let mut deny = LinuxDeviceCgroup::default();
        deny.set_allow(false);
        deny.set_access(Some("rwm".to_owned()));
        rules.push(deny);
    }
    for (device, permissions) in devices {
        nodes.retain(|d| d.path() != device.path());
        let access = match permissions.as_deref() {
            None => Some("rwm".to_owned()),
            Some("none") => None,
            Some(p) => Some(p.to_owned()),
        };
        let cgroup_type = matches!(device.typ(), LinuxDeviceType::B | LinuxDeviceType::C);
        if let (Some(access), true) = (access, cgroup_type) {
            let mut rule = LinuxDeviceCgroup::default();
            rule.set_allow(true);
            rule.set_typ(Some(device.typ()));
            rule.set_major(Some(device.major()));
            rule.set_minor(Some(device.minor()));
            rule.set_access(Some(access));
            rules.push(rule);
        }
        nodes.push(device);
    }
    resources.set_devices(Some(rules));
    linux.set_resources(Some(resources));
    linux.set_devices(Some(nodes));
    spec.set_linux(Some(linux));
}

fn depth(p: &Path) -> usize {
    p.components().count()
}

fn apply_mounts(spec: &mut Spec, edits: &ContainerEdits, host: &HostRoot) {
    if edits.mounts.is_empty() {
        return;
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &edits.mounts {
        let destination = PathBuf::from(&m.container_path);
        mounts.retain(|x| x.destination() != &destination);
        let mut options = m.options.clone();
        let is_bind = options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = match &m.kind {
            Some(k) => k.clone(),
            None => {
                if !is_bind {
                    options.push("rbind".to_owned());
                }
                "bind".to_owned()
            }
        };
        let mut mount = Mount::default();
        mount.set_destination(destination);
        mount.set_source(Some(host.path(&m.host_path)));
        mount.set_typ(Some(kind));
        mount.set_options(Some(options));
        mounts.push(mount);
    }
    mounts.sort_by_key(|m| depth(m.destination()));
    spec.set_mounts(Some(mounts));
}

fn apply_hooks(spec: &mut Spec, edits: &ContainerEdits, host: &HostRoot) {
    if edits.hooks.is_empty() {
        return;
    }
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    for h in &edits.hooks {
        let mut hook = Hook::default();
        hook.set_path(host.path(&h.path));
        hook.set_args((!h.args.is_empty()).then(|| h.args.clone()));
        hook.set_env((!h.env.is_empty()).then(|| h.env.clone()));
        hook.set_timeout(h.timeout);
        #[allow(deprecated)]
        let list = match h.hook_name.as_str() {
            "prestart" => hooks.prestart_mut(),
            "createRuntime" => hooks.create_runtime_mut(),
            "createContainer" => hooks.create_container_mut(),
            "startContainer" => hooks.start_container_mut(),
            "poststart" => hooks.poststart_mut(),
            _ => hooks.poststop_mut(),
        };
        list.get_or_insert_with(Vec::new).push(hook);
    }
    spec.set_hooks(Some(hooks));
}

fn apply_gids(spec: &mut Spec, gids: &[u32]) {
    if gids.iter().all(|g| *g == 0) {
        return;
    }
    let mut process = spec.process().clone().unwrap_or_default();
    let mut user = process.user().clone();
    let mut all = user.additional_gids().clone().unwrap_or_default();
    for g in gids {
        if *g != 0 && !all.contains(g) {
            all.push(*g);
        }
    }
    user.set_additional_gids(Some(all));
    process.set_user(user);
    spec.set_process(Some(process));
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
