//! The agent as its own OCI `createContainer` hook, for the CSV fallback on
//! a device without NVIDIA's hook program (`nvidia-cdi-hook`/`nvidia-ctk`):
//! what NVIDIA's `create-symlinks` and `update-ldcache` hooks do, so that
//! `libcuda.so.1` is found inside the container without `LD_LIBRARY_PATH`.
//!
//! `fleet-agent oci-hook tegra-prepare --link TARGET::LINK … --folder DIR …
//! [--ldconfig HOST_PATH]` reads the container state the runtime passes on
//! stdin, finds the rootfs from `<bundle>/config.json`, and — in the
//! container's mount namespace, after the mounts and before `pivot_root`
//! (OCI runtime spec, `createContainer`) —
//!
//! 1. creates each `LINK → TARGET` symlink inside the rootfs (paths resolved
//!    with `RESOLVE_IN_ROOT`, so a symlink in the image cannot send a write
//!    to the host; an existing entry is left as it is);
//! 2. writes `/etc/ld.so.conf.d/00-fleet-tegra.conf` naming the folders
//!    (and `/etc/ld.so.conf` including that directory when the image has
//!    none);
//! 3. runs the host's `ldconfig -r <rootfs>` (glibc's ldconfig is static
//!    and chroots itself), which writes the rootfs's `/etc/ld.so.cache` and
//!    the SONAME links (`libcuda.so.1 → libcuda.so.1.1`).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The words after the program name that select this hook.
pub const SUBCOMMAND: [&str; 2] = ["oci-hook", "tegra-prepare"];

/// The ld.so configuration file the hook writes into the rootfs.
pub const LD_CONF: &str = "/etc/ld.so.conf.d/00-fleet-tegra.conf";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("oci-hook tegra-prepare: {what}")]
    Usage { what: String },
    #[error("the container state on stdin is not valid JSON with a bundle")]
    State(#[source] serde_json::Error),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid OCI config")]
    Config {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{path} inside the container root")]
    InRoot {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{ldconfig} -r {}: {status}: {stderr}", rootfs.display())]
    Ldconfig {
        ldconfig: PathBuf,
        rootfs: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// What the hook is asked to do: its command line after [`SUBCOMMAND`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepare {
    /// (target, link): `link` is an absolute path in the container.
    pub links: Vec<(String, String)>,
    /// Absolute library folders in the container.
    pub folders: Vec<String>,
    /// The host's `ldconfig` (a real path, read before the hook runs).
    pub ldconfig: Option<PathBuf>,
}

fn container_path(what: &str, p: &str) -> Result<(), HookError> {
    let path = Path::new(p);
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean && path.file_name().is_some() {
        Ok(())
    } else {
        Err(HookError::Usage {
            what: format!("{what} {p:?} is not an absolute path without '..'"),
        })
    }
}

impl Prepare {
    /// The hook's arguments after [`SUBCOMMAND`].
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (target, link) in &self.links {
            out.extend(["--link".to_owned(), format!("{target}::{link}")]);
        }
        for f in &self.folders {
            out.extend(["--folder".to_owned(), f.clone()]);
        }
        if let Some(l) = &self.ldconfig {
            out.extend(["--ldconfig".to_owned(), l.to_string_lossy().into_owned()]);
        }
        out
    }

    /// Parses [`Prepare::args`]'s output; anything else is refused by name.
    pub fn parse(args: &[String]) -> Result<Self, HookError> {
        let mut out = Prepare::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| HookError::Usage {
                what: format!("{flag} needs a value"),
            })?;
            match flag.as_str() {
                "--link" => {
                    let (target, link) =
                        value.split_once("::").ok_or_else(|| HookError::Usage {
                            what: format!("--link {value:?} is not TARGET::LINK"),
                        })?;
                    container_path("--link", link)?;
                    if target.is_empty() || target.contains('\0') {
                        return Err(HookError::Usage {
                            what: format!("--link {value:?} has no target"),
                        });
                    }
                    out.links.push((target.to_owned(), link.to_owned()));
                }
                "--folder" => {
                    container_path("--folder", value)?;
                    out.folders.push(value.clone());
                }
                "--ldconfig" => out.ldconfig = Some(PathBuf::from(value)),
                other => {
                    return Err(HookError::Usage {
                        what: format!("unknown argument {other:?}"),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The rootfs of the container whose state is on `state` (the runtime's
/// stdin): `root.path` of `<bundle>/config.json`, relative to the bundle.
pub fn rootfs_from_state(state: impl Read) -> Result<PathBuf, HookError> {
    #[derive(serde::Deserialize)]
    struct State {
        bundle: PathBuf,
    }
    let state: State = serde_json::from_reader(state).map_err(HookError::State)?;
    let path = state.bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|source| HookError::Config {
        path: path.clone(),
        source,
    })?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    Ok(state.bundle.join(root))
}

/// Runs the hook against `rootfs` (see the module documentation).
pub fn prepare(p: &Prepare, rootfs: &Path) -> Result<(), HookError> {
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| HookError::Io {
        path: rootfs.to_owned(),
        source: e.into(),
    })?;
    for (target, link) in &p.links {
        symlink_in_root(&root, target, link).map_err(|source| HookError::InRoot {
            path: link.clone(),
            source,
        })?;
    }
    if p.folders.is_empty() {
        return Ok(());
    }
    let mut conf = String::from("# Written by fleet-agent for the Tegra GPU libraries\n");
    for f in &p.folders {
        conf.push_str(f);
        conf.push('\n');
    }
    write_in_root(&root, LD_CONF, conf.as_bytes(), true).map_err(|source| HookError::InRoot {
        path: LD_CONF.into(),
        source,
    })?;
    write_in_root(
        &root,
        "/etc/ld.so.conf",
        b"include /etc/ld.so.conf.d/*.conf\n",
        false,
    )
    .map_err(|source| HookError::InRoot {
        path: "/etc/ld.so.conf".into(),
        source,
    })?;
    if let Some(ldconfig) = &p.ldconfig {
        let out = Command::new(ldconfig)
            .arg("-r")
            .arg(rootfs)
            .output()
            .map_err(|source| HookError::Io {
                path: ldconfig.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(HookError::Ldconfig {
                ldconfig: ldconfig.clone(),
                rootfs: rootfs.to_owned(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The directory `dir` (absolute, in the container), created as needed,
/// every component resolved inside `root`.
fn dir_in_root(root: &OwnedFd, dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut sofar = PathBuf::new();
    let mut fd = rustix::fs::openat2(root, ".", flags, Mode::empty(), IN_ROOT)?;
    for c in dir.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        sofar.push(name);
        fd = match rustix::fs::openat2(root, &sofar, flags, Mode::empty(), IN_ROOT) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat2(root, &sofar, flags, Mode::empty(), IN_ROOT)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(fd)
}

fn split(path: &str) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let p = Path::new(path);
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")),
    }
}

fn symlink_in_root(root: &OwnedFd, target: &str, link: &str) -> io::Result<()> {
    let (parent, name) = split(link)?;
    let dir = dir_in_root(root, parent)?;
    match rustix::fs::symlinkat(target, &dir, name) {
        Ok(()) => Ok(()),
        // The image (or a mount) has something there already: leave it.
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `path` inside `root`; with `replace` false an existing file is
/// kept as it is.
fn write_in_root(root: &OwnedFd, path: &str, bytes: &[u8], replace: bool) -> io::Result<()> {
    let (parent, _) = split(path)?;
    dir_in_root(root, parent)?;
    let mut flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    flags |= if replace { OFlags::TRUNC } else { OFlags::EXCL };
    let fd = match rustix::fs::openat2(
        root,
        relative(path),
        flags,
        Mode::from_raw_mode(0o644),
        IN_ROOT,
    ) {
        Ok(fd) => fd,
        Err(Errno::EXIST) if !replace => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_round_trip_and_bad_ones_are_refused_by_name() {
        let p = Prepare {
            links: vec![("libcuda.so.1.1".into(), "/usr/lib/x/libcuda.so".into())],
            folders: vec!["/usr/lib/x".into()],
            ldconfig: Some("/sbin/ldconfig".into()),
        };
        assert_eq!(Prepare::parse(&p.args()).unwrap(), p);
        for (bad, why) in [
            (&["--link", "t::../etc/x"][..], "absolute path"),
            (&["--link", "t::/usr/../../etc"][..], "'..'"),
            (&["--link", "nolink"][..], "TARGET::LINK"),
            (&["--folder", "lib"][..], "absolute path"),
            (
                &["--frobnicate", "x"][..],
                "unknown argument \"--frobnicate\"",
            ),
            (&["--folder"][..], "--folder needs a value"),
        ] {
            let e = Prepare::parse(&args(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn links_and_conf_stay_inside_the_root_even_through_an_absolute_symlink() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // The image points /usr/lib at an absolute path: inside the root it
        // means <root>/lib-elsewhere, never the host's directory of that name.
        std::os::unix::fs::symlink(&outside, root.join("usr/lib")).unwrap();
        let inside = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let p = Prepare {
            links: vec![
                ("libcuda.so.1.1".into(), "/usr/lib/tegra/libcuda.so".into()),
                ("b".into(), "/opt/a".into()),
            ],
            folders: vec!["/usr/lib/tegra".into()],
            ldconfig: None,
        };
        prepare(&p, &root).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_link(inside.join("tegra/libcuda.so")).unwrap(),
            Path::new("libcuda.so.1.1")
        );
        assert_eq!(
            std::fs::read_link(root.join("opt/a")).unwrap(),
            Path::new("b")
        );
        let conf = std::fs::read_to_string(root.join(relative(LD_CONF))).unwrap();
        assert!(conf.ends_with("/usr/lib/tegra\n"), "{conf}");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/ld.so.conf")).unwrap(),
            "include /etc/ld.so.conf.d/*.conf\n"
        );
        // Again: nothing fails on what is already there, an image's own
        // ld.so.conf is kept.
        std::fs::write(root.join("etc/ld.so.conf"), "mine\n").unwrap();
        prepare(&p, &root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/ld.so.conf")).unwrap(),
            "mine\n"
        );
    }

    #[test]
    fn the_state_names_the_bundle_and_the_config_its_root() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        let mut root = oci_spec::runtime::Root::default();
        root.set_path("merged".into());
        spec.set_root(Some(root));
        spec.save(t.path().join("config.json")).unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"x","status":"creating","pid":1,"bundle":{:?}}}"#,
            t.path()
        );
        assert_eq!(
            rootfs_from_state(state.as_bytes()).unwrap(),
            t.path().join("merged")
        );
        assert!(matches!(
            rootfs_from_state(&b"{}"[..]),
            Err(HookError::State(_))
        ));
    }
}
