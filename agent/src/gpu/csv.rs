//! The CSV fallback: the L4T BSP's
//! `/etc/nvidia-container-runtime/host-files-for-container.d/*.csv` turned
//! into the CDI spec `nvidia-ctk cdi generate --mode=csv` would write
//! (NVIDIA's `internal/platform-support/tegra/csv`, `pkg/nvcdi/lib-csv.go`):
//! devices `nvidia.com/gpu=0` and `=all` carry the device nodes; the spec's
//! own edits carry the library/dir mounts, `/etc/nv_tegra_release`, a
//! `create-symlinks` hook for `sym` entries and an `update-ldcache` hook for
//! every directory holding an injected `lib*.so*`.
//!
//! Line grammar: `TYPE, PATH`, split on the first comma and trimmed; TYPE is
//! `dev`, `lib`, `sym` or `dir`; other lines are skipped. A relative `dev`
//! path is `/dev/<name>` (old sample files); `//` is normalised; a `*` in
//! the last component of a `dev` path is expanded; entries missing on the
//! host are skipped (a board lacks some), as are duplicates. Only the base
//! files (`devices.csv`, `drivers.csv`, `l4t.csv`) are read, as NVIDIA does
//! by default.
//!
//! The hooks run NVIDIA's `nvidia-cdi-hook` (toolkit ≥ 1.16) or
//! `nvidia-ctk hook` when the host has one; without either the agent itself
//! is the hook (`fleet-agent oci-hook tegra-prepare`, [`super::hook`]): the
//! same links, an ld.so.conf.d entry and the host's `ldconfig -r`. Only a
//! host with neither hook nor `ldconfig` gets the library directories in
//! `LD_LIBRARY_PATH` (the last resort: it replaces the image's value).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::cdi::{ContainerEdits, Device, DeviceNode, Hook, Mount, Spec};
use super::hook::{Prepare, SUBCOMMAND};
use crate::host_root::HostRoot;

pub const CSV_DIR: &str = "/etc/nvidia-container-runtime/host-files-for-container.d";
pub const BASE_FILES: [&str; 3] = ["devices.csv", "drivers.csv", "l4t.csv"];
/// Where glibc's (static) `ldconfig` is on the host.
const LDCONFIG: [&str; 2] = ["/sbin/ldconfig", "/usr/sbin/ldconfig"];
const MOUNT_OPTIONS: [&str; 5] = ["ro", "nosuid", "nodev", "rbind", "rprivate"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dev,
    Lib,
    Sym,
    Dir,
}

/// One CSV line.
pub fn parse_line(line: &str) -> Option<(Kind, String)> {
    let (kind, path) = line.split_once(',')?;
    let kind = match kind.trim() {
        "dev" => Kind::Dev,
        "lib" => Kind::Lib,
        "sym" => Kind::Sym,
        "dir" => Kind::Dir,
        _ => return None,
    };
    let path = path.trim();
    if path.is_empty() {
        return None;
    }
    let path = if kind == Kind::Dev && !path.starts_with('/') {
        format!("/dev/{path}")
    } else {
        path.to_owned()
    };
    let mut clean = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && clean.ends_with('/')) {
            clean.push(c);
        }
    }
    Some((kind, clean))
}

/// All entries of the base CSV files on the host, deduplicated, in order.
pub fn read_entries(host: &HostRoot) -> Vec<(Kind, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in BASE_FILES {
        let Some(text) = host.read(&format!("{CSV_DIR}/{name}")) else {
            continue;
        };
        for entry in text.lines().filter_map(parse_line) {
            if seen.insert(entry.clone()) {
                out.push(entry);
            }
        }
    }
    out
}

/// Whether the host has CSV files to fall back on.
pub fn present(host: &HostRoot) -> bool {
    BASE_FILES
        .iter()
        .any(|n| host.path(&format!("{CSV_DIR}/{n}")).is_file())
}

/// `dev` paths with a `*` in the file name, expanded on the host.
fn expand(host: &HostRoot, path: &str) -> Vec<String> {
    let Some((dir, pattern)) = path.rsplit_once('/') else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = pattern.split_once('*') else {
        return vec![path.to_owned()];
    };
    let mut out: Vec<String> = host
        .entries(if dir.is_empty() { "/" } else { dir })
        .into_iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|n| {
            n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()
        })
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    out
}

fn bind(path: &str) -> Mount {
    Mount {
        host_path: path.to_owned(),
        container_path: path.to_owned(),
        kind: None,
        options: MOUNT_OPTIONS.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn is_lib(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("lib") && n.contains(".so"))
}

/// The hook program on the host: (path, leading args).
fn hook_program(host: &HostRoot) -> Option<(String, Vec<String>)> {
    if host.path("/usr/bin/nvidia-cdi-hook").is_file() {
        return Some((
            "/usr/bin/nvidia-cdi-hook".into(),
            vec!["nvidia-cdi-hook".into()],
        ));
    }
    if host.path("/usr/bin/nvidia-ctk").is_file() {
        return Some((
            "/usr/bin/nvidia-ctk".into(),
            vec!["nvidia-ctk".into(), "hook".into()],
        ));
    }
    None
}

#[derive(Default)]
struct Collected {
    nodes: Vec<DeviceNode>,
    mounts: Vec<Mount>,
    links: Vec<String>,
    lib_dirs: BTreeSet<String>,
}

fn collect(host: &HostRoot) -> Collected {
    let mut c = Collected::default();
    let allowed = |p: &str| {
        super::cdi::ALLOWED_HOST_ROOTS
            .iter()
            .any(|r| Path::new(p).starts_with(r))
    };
    for (kind, path) in read_entries(host) {
        match kind {
            Kind::Dev => {
                for p in expand(host, &path) {
                    if host.path(&p).exists() {
                        c.nodes.push(DeviceNode {
                            path: p,
                            ..DeviceNode::default()
                        });
                    }
                }
            }
            Kind::Lib | Kind::Dir => {
                if !host.path(&path).exists() || !allowed(&path) {
                    tracing::debug!(%path, "CSV entry missing on the host or not allowed; skipped");
                    continue;
                }
                if kind == Kind::Lib && is_lib(&path) {
                    c.lib_dirs.insert(parent(&path));
                }
                c.mounts.push(bind(&path));
            }
            Kind::Sym => collect_symlink(host, &path, &allowed, &mut c),
        }
    }
    c
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

/// A `sym` entry: mount the link chain's final target, recreate the links.
fn collect_symlink(host: &HostRoot, path: &str, allowed: &dyn Fn(&str) -> bool, c: &mut Collected) {
    let mut link = path.to_owned();
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(host.path(&link)) else {
            break;
        };
        let target_text = target.to_string_lossy().into_owned();
        c.links.push(format!("{target_text}::{link}"));
        let abs = if target.is_absolute() {
            target_text
        } else {
            format!("{}/{target_text}", parent(&link))
        };
        link = abs;
    }
    let real = host.path(&link);
    if link != path && real.exists() && !real.is_symlink() && allowed(&link) {
        if is_lib(&link) {
            c.lib_dirs.insert(parent(&link));
        }
        if !c.mounts.iter().any(|m| m.host_path == link) {
            c.mounts.push(bind(&link));
        }
    }
}

/// The CDI spec the host's CSV files describe, or `None` without CSV files
/// or device nodes. `agent` is the agent binary (a path under the host
/// root): without NVIDIA's hook program it is the spec's
/// `createContainer` hook ([`super::hook`]).
pub fn generate(host: &HostRoot, agent: Option<&Path>) -> Option<Spec> {
    if !present(host) {
        return None;
    }
    let c = collect(host);
    if c.nodes.is_empty() {
        return None;
    }
    let mut common = ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".into()],
        mounts: c.mounts,
        ..ContainerEdits::default()
    };
    if host.path("/etc/nv_tegra_release").is_file() {
        common.mounts.push(bind("/etc/nv_tegra_release"));
    }
    let ldconfig = LDCONFIG.into_iter().find(|p| host.path(p).is_file());
    let hook = |program: &str, args: Vec<String>| Hook {
        hook_name: "createContainer".into(),
        path: program.to_owned(),
        args,
        env: Vec::new(),
        timeout: None,
    };
    let last_resort = |common: &mut ContainerEdits| {
        if !c.lib_dirs.is_empty() {
            let dirs: Vec<&str> = c.lib_dirs.iter().map(String::as_str).collect();
            common
                .env
                .push(format!("LD_LIBRARY_PATH={}", dirs.join(":")));
        }
    };
    match (hook_program(host), agent) {
        (Some((program, lead)), _) => {
            if !c.links.is_empty() {
                let mut args = lead.clone();
                args.push("create-symlinks".to_owned());
                for l in &c.links {
                    args.extend(["--link".to_owned(), l.clone()]);
                }
                common.hooks.push(hook(&program, args));
            }
            if !c.lib_dirs.is_empty() {
                let mut args = lead;
                args.push("update-ldcache".to_owned());
                for d in &c.lib_dirs {
                    args.extend(["--folder".to_owned(), d.clone()]);
                }
                common.hooks.push(hook(&program, args));
            }
        }
        (None, Some(agent))
            if host.path(&agent.to_string_lossy()).is_file()
                && (!c.links.is_empty() || !c.lib_dirs.is_empty()) =>
        {
            let prepare = Prepare {
                links: c
                    .links
                    .iter()
                    .filter_map(|l| l.split_once("::"))
                    .map(|(t, l)| (t.to_owned(), l.to_owned()))
                    .collect(),
                folders: c.lib_dirs.iter().cloned().collect(),
                ldconfig: ldconfig.map(|p| host.path(p)),
            };
            let mut args = vec!["fleet-agent".to_owned()];
            args.extend(SUBCOMMAND.iter().map(|s| (*s).to_owned()));
            args.extend(prepare.args());
            common.hooks.push(hook(&agent.to_string_lossy(), args));
            if ldconfig.is_none() {
                last_resort(&mut common);
            }
        }
        (None, _) => last_resort(&mut common),
    }
    let device = |name: &str| Device {
        name: name.to_owned(),
        annotations: Default::default(),
        container_edits: ContainerEdits {
            device_nodes: c.nodes.clone(),
            ..ContainerEdits::default()
        },
    };
    Some(Spec {
        cdi_version: "0.5.0".into(),
        kind: "nvidia.com/gpu".into(),
        annotations: Default::default(),
        devices: vec![device("0"), device("all")],
        container_edits: common,
    })
}

/// Where a generated spec is named in errors.
pub fn spec_path(host: &HostRoot) -> PathBuf {
    host.path(CSV_DIR)
}
