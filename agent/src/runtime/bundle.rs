//! The OCI bundle: `config.json` built from the image configuration and the
//! release's runtime settings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use fleet_protocol::message::{NetworkMode, RuntimeSettings};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxNamespaceType,
    LinuxPids, LinuxResources, Mount, Process, Root, Spec, User,
};

/// Why a bundle could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "the release asks for a privileged container but this device's trust metadata does not allow it"
    )]
    PrivilegedNotAllowed,
    #[error(
        "the release has no command: neither the image nor the release sets entrypoint/cmd/args"
    )]
    NoCommand,
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkingDir(String),
    #[error("mount {field} {path:?} must be an absolute path without `..`")]
    BadMountPath { field: &'static str, path: String },
    #[error("user {user:?}: {reason}")]
    BadUser { user: String, reason: String },
    #[error("resource limit {name} = {value} is out of range")]
    BadLimit { name: &'static str, value: u64 },
    #[error("invalid OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a container's spec is built from.
#[derive(Debug, Clone)]
pub struct BundleParams<'a> {
    /// Runtime container id (also the cgroup leaf name).
    pub id: &'a str,
    /// The cgroup under which the container's cgroup is made (see
    /// [`RuntimeConfig::cgroup_parent`](super::RuntimeConfig::cgroup_parent)).
    pub cgroup_parent: &'a str,
    pub hostname: &'a str,
    pub image: &'a ImageConfiguration,
    pub settings: &'a RuntimeSettings,
    /// The prepared rootfs (absolute).
    pub rootfs: &'a Path,
    /// From the device's trust metadata: whether a release may run
    /// privileged.
    pub allow_privileged: bool,
    pub annotations: BTreeMap<String, String>,
}

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period used to express `cpu_millis` as a quota.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup path of a container (relative to each controller's root).
pub fn cgroups_path(parent: &str, id: &str) -> String {
    format!("{}/{id}", parent.trim_end_matches('/'))
}

/// Builds the container's OCI runtime spec.
pub fn build_spec(p: &BundleParams<'_>) -> Result<Spec, BundleError> {
    let settings = p.settings;
    let privileged = settings.privileged;
    if privileged && !p.allow_privileged {
        return Err(BundleError::PrivilegedNotAllowed);
    }
    let config = p.image.config().clone().unwrap_or_default();

    let args = match &settings.args {
        Some(args) => args.clone(),
        None => {
            let mut args = config.entrypoint().clone().unwrap_or_default();
            args.extend(config.cmd().clone().unwrap_or_default());
            args
        }
    };
    if args.is_empty() {
        return Err(BundleError::NoCommand);
    }

    let env = merge_env(config.env().as_deref().unwrap_or_default(), &settings.env);

    let cwd = settings
        .working_dir
        .clone()
        .or_else(|| config.working_dir().clone())
        .filter(|dir| !dir.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(BundleError::RelativeWorkingDir(cwd));
    }

    let user_spec = settings
        .user
        .clone()
        .or_else(|| config.user().clone())
        .unwrap_or_default();
    let user = resolve_user(&user_spec, p.rootfs)?;

    let capabilities = capabilities(privileged);

    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_user(user)
        .set_capabilities(Some(capabilities))
        .set_no_new_privileges(Some(!privileged))
        // Limits are inherited from the agent, as Docker inherits its
        // daemon's: raising a hard limit would need CAP_SYS_RESOURCE.
        .set_rlimits(None);

    let mounts = mounts(settings, privileged)?;

    let mut linux = oci_spec::runtime::Linux::default();
    let mut namespaces = oci_spec::runtime::get_default_namespaces();
    if settings.network == NetworkMode::Host {
        namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path(p.cgroup_parent, p.id))));
    if privileged {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    }
    linux.set_resources(Some(resources(settings, privileged)?));

    let root = Root::default()
        .set_path(p.rootfs.to_owned())
        .set_readonly(Some(settings.read_only_rootfs))
        .clone();

    let mut spec = Spec::default();
    spec.set_version("1.0.2-dev".to_owned())
        .set_root(Some(root))
        .set_hostname(Some(p.hostname.to_owned()))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_linux(Some(linux))
        .set_annotations(Some(p.annotations.clone().into_iter().collect()));
    Ok(spec)
}

/// The default mounts (with a writable `/sys` when privileged), the host's
/// resolver files with host networking, and the release's bind mounts.
fn mounts(settings: &RuntimeSettings, privileged: bool) -> Result<Vec<Mount>, BundleError> {
    let mut mounts = oci_spec::runtime::get_default_mounts();
    if privileged {
        for mount in &mut mounts {
            if mount.destination() == Path::new("/sys") {
                mount.set_options(Some(
                    ["nosuid", "noexec", "nodev", "rw"]
                        .map(String::from)
                        .to_vec(),
                ));
            }
        }
    }
    if settings.network == NetworkMode::Host {
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(file).is_file() {
                mounts.push(bind_mount(file, file, true));
            }
        }
    }
    for mount in &settings.mounts {
        check_mount_path("source", &mount.source)?;
        check_mount_path("destination", &mount.destination)?;
        if mount.destination == "/" {
            return Err(BundleError::BadMountPath {
                field: "destination",
                path: mount.destination.clone(),
            });
        }
        mounts.push(bind_mount(
            &mount.source,
            &mount.destination,
            mount.read_only,
        ));
    }
    Ok(mounts)
}

/// All capabilities when privileged, else Docker's default set; none ambient.
fn capabilities(privileged: bool) -> LinuxCapabilities {
    let caps: HashSet<Capability> = if privileged {
        ALL_CAPABILITIES.into_iter().collect()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    LinuxCapabilities::default()
        .set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(Some(HashSet::new()))
        .set_ambient(Some(HashSet::new()))
        .clone()
}

fn resources(settings: &RuntimeSettings, privileged: bool) -> Result<LinuxResources, BundleError> {
    let limits = &settings.resources;
    let mut resources = LinuxResources::default();
    let device_rule = LinuxDeviceCgroup::default()
        .set_allow(privileged)
        .set_access(Some("rwm".to_owned()))
        .clone();
    resources.set_devices(Some(vec![device_rule]));
    if let Some(bytes) = limits.memory_bytes {
        let limit = i64::try_from(bytes).map_err(|_| BundleError::BadLimit {
            name: "memory_bytes",
            value: bytes,
        })?;
        resources.set_memory(Some(*LinuxMemory::default().set_limit(Some(limit))));
    }
    if let Some(millis) = limits.cpu_millis {
        let quota = millis
            .checked_mul(CPU_PERIOD_US / 1000)
            .and_then(|q| i64::try_from(q).ok())
            .filter(|q| *q > 0)
            .ok_or(BundleError::BadLimit {
                name: "cpu_millis",
                value: millis,
            })?;
        // The kernel's smallest quota is 1 ms.
        let quota = quota.max(1000);
        resources.set_cpu(Some(
            LinuxCpu::default()
                .set_quota(Some(quota))
                .set_period(Some(CPU_PERIOD_US))
                .clone(),
        ));
    }
    if let Some(pids) = limits.pids {
        if pids <= 0 {
            return Err(BundleError::BadLimit {
                name: "pids",
                value: pids.unsigned_abs(),
            });
        }
        resources.set_pids(Some(*LinuxPids::default().set_limit(pids)));
    }
    Ok(resources)
}

fn bind_mount(source: &str, destination: &str, read_only: bool) -> Mount {
    let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
    options.push(if read_only { "ro" } else { "rw" }.to_owned());
    Mount::default()
        .set_destination(PathBuf::from(destination))
        .set_typ(Some("bind".to_owned()))
        .set_source(Some(PathBuf::from(source)))
        .set_options(Some(options))
        .clone()
}

fn check_mount_path(field: &'static str, path: &str) -> Result<(), BundleError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(BundleError::BadMountPath {
            field,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Image env first (in order), release env overriding or adding; `PATH` is
/// always set.
fn merge_env(image: &[String], release: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in image {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        match out.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => out.push((key.to_owned(), value.to_owned())),
        }
    }
    for (key, value) in release {
        match out.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => out.push((key.clone(), value.clone())),
        }
    }
    let mut env: Vec<String> = out.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    env
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn read_passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: (*fields.first()?).to_owned(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// `(name, gid, members)` of each `/etc/group` line.
fn read_group(rootfs: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            Some((
                (*fields.first()?).to_owned(),
                fields.get(2)?.parse().ok()?,
                members,
            ))
        })
        .collect()
}

/// Resolves `uid[:gid]` or `name[:group]` against the rootfs's `/etc/passwd`
/// and `/etc/group`. Empty means root.
pub fn resolve_user(spec: &str, rootfs: &Path) -> Result<User, BundleError> {
    let bad = |reason: &str| BundleError::BadUser {
        user: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_passwd(rootfs);
    let (uid, passwd_gid, name) = if user_part.is_empty() {
        (0, Some(0), Some("root".to_owned()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry = passwd.iter().find(|e| e.uid == uid);
        (uid, entry.map(|e| e.gid), entry.map(|e| e.name.clone()))
    } else {
        let entry = passwd
            .iter()
            .find(|e| e.name == user_part)
            .ok_or_else(|| bad("no such user in the image's /etc/passwd"))?;
        (entry.uid, Some(entry.gid), Some(entry.name.clone()))
    };
    let groups = read_group(rootfs);
    let gid = match group_part {
        None => passwd_gid.unwrap_or(0),
        Some("") => return Err(bad("empty group")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| bad("no such group in the image's /etc/group"))?,
        },
    };
    let additional: Vec<u32> = match &name {
        Some(name) => groups
            .iter()
            .filter(|(_, gid_, members)| *gid_ != gid && members.iter().any(|m| m == name))
            .map(|(_, gid, _)| *gid)
            .collect(),
        None => Vec::new(),
    };
    let mut user = User::default();
    user.set_uid(uid).set_gid(gid);
    if !additional.is_empty() {
        user.set_additional_gids(Some(additional));
    }
    Ok(user)
}

/// The bundle's OCI runtime spec file.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `config.json` into `bundle_dir` (atomically: temp file + rename).
pub fn write_config(bundle_dir: &Path, spec: &Spec) -> Result<PathBuf, BundleError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    std::fs::create_dir_all(bundle_dir).map_err(io(bundle_dir))?;
    let path = bundle_dir.join(CONFIG_FILE);
    let tmp = bundle_dir.join("config.json.tmp");
    spec.save(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
