//! OCI whiteouts in snapshots, and the copy fallback that flattens a stack
//! of snapshots into one directory when overlayfs is not available.
//!
//! In a layer tar, `dir/.wh.name` deletes `dir/name` of the layers below and
//! `dir/.wh..wh..opq` hides everything the layers below have in `dir`.
//! Either representation of [`WhiteoutFormat`](super::WhiteoutFormat) is
//! understood by [`apply_snapshots_to_dir`], so a stack may even mix them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::UnpackError;
use super::fsutil::{errno_io, remove_tree};

/// The prefix of an OCI whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker entry.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs xattr marking an opaque directory (value `y`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub(super) fn set_opaque(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::fs::fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
}

/// Whether a 0/0 character device and an opaque xattr can be made in `dir`.
pub(super) fn overlay_format_works(dir: &Path) -> bool {
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let probe = format!(".fleet-whiteout-probe-{}", std::process::id());
    let dev_ok = rustix::fs::mknodat(
        &fd,
        probe.as_str(),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .is_ok();
    let _ = rustix::fs::unlinkat(&fd, probe.as_str(), AtFlags::empty());
    if !dev_ok {
        return false;
    }
    if rustix::fs::mkdirat(&fd, probe.as_str(), Mode::from_raw_mode(0o700)).is_err() {
        return false;
    }
    let xattr_ok = rustix::fs::openat(
        &fd,
        probe.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .is_ok_and(|d| set_opaque(std::os::fd::AsFd::as_fd(&d)).is_ok());
    let _ = rustix::fs::unlinkat(&fd, probe.as_str(), AtFlags::REMOVEDIR);
    xattr_ok
}

fn is_opaque_dir(path: &Path) -> bool {
    let mut buf = [0u8; 8];
    matches!(rustix::fs::lgetxattr(path, OPAQUE_XATTR, &mut buf[..]), Ok(n) if &buf[..n] == b"y")
}

fn is_whiteout_device(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

struct Flatten<'a> {
    dest: &'a Path,
    is_root: bool,
    /// Directory metadata applied at the end (last layer wins).
    dirs: HashMap<PathBuf, fs::Metadata>,
    /// Hard links of the current layer: (dev, ino) → first copy.
    links: HashMap<(u64, u64), PathBuf>,
}

/// Flattens `snapshots` (bottom → top) into `dest`, honouring whiteouts and
/// opaque directories in either [`WhiteoutFormat`](super::WhiteoutFormat):
/// the result is what an overlayfs mount of the same stack shows, with no
/// whiteout left in it. `dest` is created if missing; content already in it
/// counts as a layer below the first. Symlinks are copied as symlinks and never
/// followed; hard links within one snapshot stay hard links; modes, mtimes
/// and (when root) ownership are kept. This is the copy fallback for rootfs
/// assembly where overlayfs is unavailable.
pub fn apply_snapshots_to_dir(snapshots: &[&Path], dest: &Path) -> Result<(), UnpackError> {
    let mut f = Flatten {
        dest,
        is_root: rustix::process::geteuid().is_root(),
        dirs: HashMap::new(),
        links: HashMap::new(),
    };
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(UnpackError::DestinationNotEmpty {
                path: dest.to_path_buf(),
            });
        }
        Err(_) => fs::create_dir_all(dest).map_err(|e| f.err("create", Path::new(""), e))?,
    }
    for layer in snapshots {
        f.links.clear();
        f.merge_dir(layer, Path::new(""))?;
    }
    let mut dirs: Vec<_> = f.dirs.drain().collect();
    dirs.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, meta) in dirs {
        f.set_meta(&rel, &meta)?;
    }
    Ok(())
}

impl Flatten<'_> {
    fn err(&self, op: &'static str, rel: &Path, source: io::Error) -> UnpackError {
        UnpackError::Io {
            op,
            path: rel.display().to_string(),
            dest: self.dest.to_path_buf(),
            source,
        }
    }

    /// Merges `layer/rel` into `dest/rel`, which is a real directory.
    fn merge_dir(&mut self, layer: &Path, rel: &Path) -> Result<(), UnpackError> {
        let src = layer.join(rel);
        let dst = self.dest.join(rel);
        let mut entries = Vec::new();
        for e in fs::read_dir(&src).map_err(|e| self.err("read layer dir", rel, e))? {
            let e = e.map_err(|e| self.err("read layer dir", rel, e))?;
            let meta = e
                .metadata()
                .map_err(|err| self.err("stat", &rel.join(e.file_name()), err))?;
            entries.push((e.file_name(), meta));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let opaque = is_opaque_dir(&src) || entries.iter().any(|(n, _)| n == OPAQUE_MARKER);
        if opaque {
            for e in fs::read_dir(&dst).map_err(|e| self.err("read dir", rel, e))? {
                let e = e.map_err(|e| self.err("read dir", rel, e))?;
                self.remove(&rel.join(e.file_name()))?;
            }
        }
        // Whiteouts apply to the layers below, so before this layer's content.
        let mut content = Vec::new();
        for (name, meta) in entries {
            let n = name.as_encoded_bytes();
            if let Some(hidden) = n.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if !hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) && !hidden.is_empty() {
                    self.remove(&rel.join(OsStr::from_bytes(hidden)))?;
                }
            } else if is_whiteout_device(&meta) {
                self.remove(&rel.join(&name))?;
            } else {
                content.push((name, meta));
            }
        }
        for (name, meta) in content {
            let r = rel.join(&name);
            let s = src.join(&name);
            let d = dst.join(&name);
            let existing = fs::symlink_metadata(&d).ok();
            let ft = meta.file_type();
            if ft.is_dir() {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    self.remove(&r)?;
                    fs::create_dir(&d).map_err(|e| self.err("mkdir", &r, e))?;
                    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                        .map_err(|e| self.err("chmod", &r, e))?;
                }
                self.dirs.insert(r.clone(), meta);
                self.merge_dir(layer, &r)?;
                continue;
            }
            if existing.is_some() {
                self.remove(&r)?;
            }
            if ft.is_file() {
                let key = (meta.dev(), meta.ino());
                let linked = meta.nlink() > 1
                    && self
                        .links
                        .get(&key)
                        .is_some_and(|first| fs::hard_link(self.dest.join(first), &d).is_ok());
                if !linked {
                    fs::copy(&s, &d).map_err(|e| self.err("copy", &r, e))?;
                    self.set_meta(&r, &meta)?;
                    if meta.nlink() > 1 {
                        self.links.insert(key, r.clone());
                    }
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&s).map_err(|e| self.err("readlink", &r, e))?;
                std::os::unix::fs::symlink(&target, &d).map_err(|e| self.err("symlink", &r, e))?;
                self.set_meta(&r, &meta)?;
            } else {
                return Err(UnpackError::SpecialFile {
                    path: r.display().to_string(),
                    kind: "special file",
                });
            }
        }
        Ok(())
    }

    /// Removes `dest/rel` whatever it is, never following a symlink.
    fn remove(&mut self, rel: &Path) -> Result<(), UnpackError> {
        // Directories below that are gone get no deferred metadata.
        self.dirs.retain(|k, _| !k.starts_with(rel));
        let d = self.dest.join(rel);
        match fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => remove_tree(&d).map_err(|e| self.err("remove", rel, e)),
            Ok(_) => fs::remove_file(&d).map_err(|e| self.err("remove", rel, e)),
            Err(_) => Ok(()),
        }
    }

    fn set_meta(&self, rel: &Path, meta: &fs::Metadata) -> Result<(), UnpackError> {
        let d = self.dest.join(rel);
        let symlink = meta.file_type().is_symlink();
        if self.is_root {
            std::os::unix::fs::lchown(&d, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| self.err("chown", rel, e))?;
        }
        if !symlink {
            // After chown, which clears setuid/setgid.
            fs::set_permissions(&d, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| self.err("chmod", rel, e))?;
        }
        let t = |sec: i64, nsec: i64| Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        let times = Timestamps {
            last_access: t(meta.atime(), meta.atime_nsec()),
            last_modification: t(meta.mtime(), meta.mtime_nsec()),
        };
        rustix::fs::utimensat(rustix::fs::CWD, &d, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("set times of", rel, errno_io(e)))
    }
}
