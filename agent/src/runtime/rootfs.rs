//! A container's root filesystem: read-only layer snapshots stacked with
//! overlayfs (`lowerdir=top:...:bottom`) plus a per-container upper and work
//! directory, or — where overlayfs is not available — a private copy.
//!
//! Layout under a container directory:
//!
//! ```text
//! <container>/rootfs   the merged view (overlay mount point, or the copy)
//! <container>/upper    overlay upper dir (the container's writes)
//! <container>/work     overlay work dir
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::{MntFlags, MsFlags};

/// Why a rootfs could not be prepared or removed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no layer snapshots given for {container:?}")]
    NoSnapshots { container: PathBuf },
    #[error("layer snapshot {path:?} is not a directory")]
    MissingSnapshot { path: PathBuf },
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("overlay mount on {target:?} failed: {source}")]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmounting {target:?} failed: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "overlay options for {target:?} are {len} bytes, more than the kernel's page-sized limit"
    )]
    OptionsTooLong { target: PathBuf, len: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to build a rootfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootfsMode {
    /// Overlayfs when the kernel and filesystem allow it (probed once), a copy
    /// otherwise.
    #[default]
    Auto,
    Overlay,
    Copy,
}

/// How a prepared rootfs was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

/// A prepared rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The directory the container sees as `/`.
    pub path: PathBuf,
    pub kind: RootfsKind,
}

/// Mount options longer than this do not fit the kernel's one page.
const MAX_OPTIONS: usize = 4000;
const COPY_DONE: &str = ".fleet-copy-complete";

static OVERLAY_SUPPORTED: OnceLock<bool> = OnceLock::new();

/// Whether overlayfs mounts work with upper dirs under `scratch_parent`.
/// Probed once per process with a real mount, then cached.
pub fn overlay_supported(scratch_parent: &Path) -> bool {
    *OVERLAY_SUPPORTED.get_or_init(|| {
        let supported = probe_overlay(scratch_parent).unwrap_or(false);
        tracing::info!(supported, "overlayfs probe");
        supported
    })
}

fn probe_overlay(parent: &Path) -> Result<bool, RootfsError> {
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let dir = parent.join(format!(".overlay-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["lower", "upper", "work", "merged"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    std::fs::write(dir.join("lower/probe"), b"x").map_err(io_err(&dir))?;
    let merged = dir.join("merged");
    let ok = match mount_overlay(
        &[dir.join("lower")],
        &dir.join("upper"),
        &dir.join("work"),
        &merged,
    ) {
        Ok(()) => {
            let visible = merged.join("probe").exists();
            let _ = nix::mount::umount2(&merged, MntFlags::MNT_DETACH);
            visible
        }
        Err(err) => {
            tracing::warn!(error = %err, "overlayfs is not usable; rootfs will be copied");
            false
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

fn overlay_options(
    lowers_bottom_to_top: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> Result<String, String> {
    let mut lower = String::new();
    for dir in lowers_bottom_to_top.iter().rev() {
        let text = dir.to_str().ok_or_else(|| format!("{dir:?}"))?;
        if text.contains([':', ',']) {
            return Err(text.to_owned());
        }
        if !lower.is_empty() {
            lower.push(':');
        }
        lower.push_str(text);
    }
    let upper = upper.to_str().ok_or_else(|| format!("{upper:?}"))?;
    let work = work.to_str().ok_or_else(|| format!("{work:?}"))?;
    Ok(format!("lowerdir={lower},upperdir={upper},workdir={work}"))
}

fn mount_overlay(
    lowers_bottom_to_top: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let options =
        overlay_options(lowers_bottom_to_top, upper, work).map_err(|bad| RootfsError::Io {
            path: PathBuf::from(bad),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "path cannot be used in overlay options (non-UTF-8, ':' or ',')",
            ),
        })?;
    if options.len() > MAX_OPTIONS {
        return Err(RootfsError::OptionsTooLong {
            target: target.to_owned(),
            len: options.len(),
        });
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_owned(),
        source,
    })
}

/// Whether `path` is a mount point (per `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = canonical.to_string_lossy().into_owned();
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mount_point| unescape_mountinfo(mount_point) == wanted)
    })
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(oct, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds (or finds already built) the rootfs of one container from read-only
/// snapshot directories, bottom → top. Idempotent: an overlay already mounted
/// or a finished copy is reused, so a restarted agent finds its containers'
/// root filesystems where they were.
pub fn prepare(
    container_dir: &Path,
    snapshots_bottom_to_top: &[PathBuf],
    mode: RootfsMode,
) -> Result<Rootfs, RootfsError> {
    if snapshots_bottom_to_top.is_empty() {
        return Err(RootfsError::NoSnapshots {
            container: container_dir.to_owned(),
        });
    }
    for snapshot in snapshots_bottom_to_top {
        if !snapshot.is_dir() {
            return Err(RootfsError::MissingSnapshot {
                path: snapshot.clone(),
            });
        }
    }
    let target = container_dir.join("rootfs");
    std::fs::create_dir_all(&target).map_err(io_err(&target))?;
    if is_mount_point(&target) {
        return Ok(Rootfs {
            path: target,
            kind: RootfsKind::Overlay,
        });
    }
    if container_dir.join(COPY_DONE).exists() {
        return Ok(Rootfs {
            path: target,
            kind: RootfsKind::Copy,
        });
    }
    let parent = container_dir.parent().unwrap_or(container_dir);
    let use_overlay = match mode {
        RootfsMode::Overlay => true,
        RootfsMode::Copy => false,
        RootfsMode::Auto => overlay_supported(parent),
    };
    if use_overlay {
        let upper = container_dir.join("upper");
        let work = container_dir.join("work");
        for dir in [&upper, &work] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        match mount_overlay(snapshots_bottom_to_top, &upper, &work, &target) {
            Ok(()) => {
                return Ok(Rootfs {
                    path: target,
                    kind: RootfsKind::Overlay,
                });
            }
            Err(err) if mode == RootfsMode::Auto => {
                tracing::warn!(error = %err, "overlay mount failed; copying the rootfs");
            }
            Err(err) => return Err(err),
        }
    }
    // Start from an empty directory: a half-finished earlier copy is redone.
    std::fs::remove_dir_all(&target).map_err(io_err(&target))?;
    std::fs::create_dir_all(&target).map_err(io_err(&target))?;
    flatten_into(snapshots_bottom_to_top, &target)?;
    let done = container_dir.join(COPY_DONE);
    std::fs::write(&done, b"").map_err(io_err(&done))?;
    Ok(Rootfs {
        path: target,
        kind: RootfsKind::Copy,
    })
}

/// The rootfs of `container_dir` if it is ready as it is (overlay mounted,
/// or copy finished); `None` when [`prepare`] has work to do.
pub fn ready(container_dir: &Path) -> Option<Rootfs> {
    let target = container_dir.join("rootfs");
    if is_mount_point(&target) {
        return Some(Rootfs {
            path: target,
            kind: RootfsKind::Overlay,
        });
    }
    container_dir.join(COPY_DONE).exists().then_some(Rootfs {
        path: target,
        kind: RootfsKind::Copy,
    })
}

/// Copies the snapshots bottom → top into `target`.
///
/// Hook: once `unpack::apply_snapshots_to_dir` lands, call it here — it
/// honours overlay whiteouts (0/0 char devices) and opaque directories
/// (`trusted.overlay.opaque=y`), which this plain copy does not interpret.
fn flatten_into(snapshots_bottom_to_top: &[PathBuf], target: &Path) -> Result<(), RootfsError> {
    for snapshot in snapshots_bottom_to_top {
        copy_tree(snapshot, target)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src).map_err(io_err(&src))?;
        let file_type = meta.file_type();
        if file_type.is_dir() {
            if !dst.is_dir() {
                let _ = std::fs::remove_file(&dst);
                std::fs::create_dir(&dst).map_err(io_err(&dst))?;
            }
            copy_tree(&src, &dst)?;
        } else {
            if std::fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
            } else {
                let _ = std::fs::remove_file(&dst);
            }
            if file_type.is_symlink() {
                let link = std::fs::read_link(&src).map_err(io_err(&src))?;
                std::os::unix::fs::symlink(&link, &dst).map_err(io_err(&dst))?;
                let _ = std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()));
                continue;
            } else if file_type.is_file() {
                std::fs::copy(&src, &dst).map_err(io_err(&dst))?;
            } else {
                // Device nodes, FIFOs and sockets (including whiteouts) are
                // left to the snapshot flattener; see `flatten_into`.
                continue;
            }
        }
        std::os::unix::fs::chown(&dst, Some(meta.uid()), Some(meta.gid())).map_err(io_err(&dst))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err(&dst))?;
    }
    Ok(())
}

/// Unmounts (when mounted) and removes a container's rootfs, upper and work
/// directories. Idempotent.
pub fn remove(container_dir: &Path) -> Result<(), RootfsError> {
    let target = container_dir.join("rootfs");
    if is_mount_point(&target) {
        nix::mount::umount2(&target, MntFlags::empty())
            .or_else(|_| nix::mount::umount2(&target, MntFlags::MNT_DETACH))
            .map_err(|source| RootfsError::Unmount {
                target: target.clone(),
                source,
            })?;
    }
    for sub in ["rootfs", "upper", "work"] {
        let path = container_dir.join(sub);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(RootfsError::Io { path, source }),
        }
    }
    let _ = std::fs::remove_file(container_dir.join(COPY_DONE));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_lists_the_top_snapshot_first() {
        let opts = overlay_options(
            &["/s/bottom".into(), "/s/mid".into(), "/s/top".into()],
            Path::new("/c/upper"),
            Path::new("/c/work"),
        )
        .unwrap();
        assert_eq!(
            opts,
            "lowerdir=/s/top:/s/mid:/s/bottom,upperdir=/c/upper,workdir=/c/work"
        );
        assert!(overlay_options(&["/a:b".into()], Path::new("/u"), Path::new("/w")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn copy_fallback_layers_upper_snapshots_over_lower_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let bottom = tmp.path().join("bottom");
        let top = tmp.path().join("top");
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/a"), "old").unwrap();
        std::fs::write(bottom.join("etc/b"), "keep").unwrap();
        std::fs::write(top.join("etc/a"), "new").unwrap();
        std::os::unix::fs::symlink("etc/b", top.join("link")).unwrap();
        let container = tmp.path().join("containers/c1");
        let rootfs = prepare(&container, &[bottom, top], RootfsMode::Copy).unwrap();
        assert_eq!(rootfs.kind, RootfsKind::Copy);
        assert_eq!(
            std::fs::read_to_string(rootfs.path.join("etc/a")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.path.join("etc/b")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_link(rootfs.path.join("link")).unwrap(),
            Path::new("etc/b")
        );
        // Prepared again (agent restart): the finished copy is reused.
        std::fs::write(rootfs.path.join("etc/written-by-app"), "x").unwrap();
        let again = prepare(&container, &[tmp.path().join("bottom")], RootfsMode::Copy).unwrap();
        assert!(again.path.join("etc/written-by-app").exists());
        remove(&container).unwrap();
        assert!(!container.join("rootfs").exists());
    }

    #[test]
    fn missing_snapshots_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare(tmp.path(), &[], RootfsMode::Copy).unwrap_err();
        assert!(matches!(err, RootfsError::NoSnapshots { .. }));
        let err = prepare(tmp.path(), &[tmp.path().join("nope")], RootfsMode::Copy).unwrap_err();
        assert!(matches!(err, RootfsError::MissingSnapshot { .. }));
    }
}
