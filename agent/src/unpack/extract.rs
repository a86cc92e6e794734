//! The per-entry extraction state machine. Every filesystem call is relative
//! to a directory descriptor opened component by component with
//! `O_NOFOLLOW`, so nothing is ever written through a symlink.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::fsutil::{self, errno_io, join, normalize, open_dir, os, shown, type_at};
use super::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, set_opaque};
use super::{LayerStats, Limits, UnpackError, WhiteoutFormat};

/// Ownership, mode, time and xattrs of a directory, applied once every entry
/// is in place (so a read-only directory can still be filled, and writing
/// children does not disturb its mtime).
pub(super) struct DirMeta {
    comps: Vec<Vec<u8>>,
    meta: Meta,
}

#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

pub(super) struct Extractor<'a> {
    dest: &'a Path,
    root: OwnedFd,
    limits: &'a Limits,
    format: WhiteoutFormat,
    stats: &'a mut LayerStats,
    is_root: bool,
    /// The last parent directory opened, by components.
    cache: Option<(Vec<Vec<u8>>, OwnedFd)>,
    /// Regular files extracted from this layer (hard link targets).
    regular: HashSet<Vec<u8>>,
    /// Whiteout devices created by this layer (overlay format).
    whiteouts: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    buf: Vec<u8>,
}

impl<'a> Extractor<'a> {
    pub(super) fn new(
        dest: &'a Path,
        limits: &'a Limits,
        format: WhiteoutFormat,
        stats: &'a mut LayerStats,
    ) -> Result<Self, UnpackError> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Io {
            op: "open destination",
            path: String::new(),
            dest: dest.to_path_buf(),
            source: errno_io(e),
        })?;
        Ok(Self {
            dest,
            root,
            limits,
            format,
            stats,
            is_root: rustix::process::geteuid().is_root(),
            cache: None,
            regular: HashSet::new(),
            whiteouts: HashSet::new(),
            dirs: Vec::new(),
            buf: vec![0; 64 * 1024],
        })
    }

    fn io(&self, op: &'static str, path: &[u8], e: Errno) -> UnpackError {
        UnpackError::Io {
            op,
            path: shown(path),
            dest: self.dest.to_path_buf(),
            source: errno_io(e),
        }
    }

    pub(super) fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let comps = normalize(&raw, self.limits.max_path_len)?;
        let meta = read_meta(&mut entry)?;
        let Some(name) = comps.last() else {
            // The layer's root directory (`./`).
            if kind.is_dir() {
                self.dirs.push(DirMeta { comps, meta });
                return Ok(());
            }
            return Err(UnpackError::BadPath { path: shown(&raw) });
        };
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            if kind.is_dir() {
                return Err(UnpackError::BadWhiteout { path: shown(&raw) });
            }
            return self.whiteout(&comps, &raw);
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&comps, &raw, meta, &mut entry)
            }
            tar::EntryType::Directory => self.dir(comps, &raw, meta),
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&comps, &raw, target, &meta)
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hardlink(&comps, &raw, target)
            }
            tar::EntryType::Char => Err(special(&raw, "character device")),
            tar::EntryType::Block => Err(special(&raw, "block device")),
            tar::EntryType::Fifo => Err(special(&raw, "FIFO")),
            other => Err(UnpackError::UnsupportedEntry {
                path: shown(&raw),
                kind: other.as_byte(),
            }),
        }
    }

    /// Ends the entry phase; the directory metadata is applied by
    /// [`apply_dir_metadata`] once the stream is verified.
    pub(super) fn finish_entries(self) -> Vec<DirMeta> {
        self.dirs
    }

    /// Opens the parent directory of `comps`, creating missing directories,
    /// refusing symlinks and non-directories on the way.
    fn parent(&mut self, comps: &[Vec<u8>], raw: &[u8]) -> Result<OwnedFd, UnpackError> {
        let parent = &comps[..comps.len().saturating_sub(1)];
        if let Some((c, fd)) = &self.cache
            && c.as_slice() == parent
        {
            return fd.try_clone().map_err(|e| UnpackError::Io {
                op: "dup",
                path: shown(raw),
                dest: self.dest.to_path_buf(),
                source: e,
            });
        }
        let mut cur = self.root.try_clone().map_err(|e| UnpackError::Io {
            op: "dup",
            path: shown(raw),
            dest: self.dest.to_path_buf(),
            source: e,
        })?;
        for (i, c) in parent.iter().enumerate() {
            let through = join(&parent[..=i]);
            let next = match open_dir(cur.as_fd(), os(c)) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(cur.as_fd(), os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io("mkdir", &through, e)),
                    }
                    open_dir(cur.as_fd(), os(c)).map_err(|e| self.io("open", &through, e))?
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    let t =
                        type_at(cur.as_fd(), os(c)).map_err(|e| self.io("stat", &through, e))?;
                    match t {
                        Some((FileType::Symlink, _)) => {
                            return Err(UnpackError::SymlinkInPath {
                                path: shown(raw),
                                through: shown(&through),
                            });
                        }
                        _ if self.whiteouts.remove(&through) => {
                            // A whiteout from this layer, then content under
                            // that name: the directory replaces the lower one.
                            self.replace_whiteout_with_dir(cur.as_fd(), c, &through)?
                        }
                        _ => {
                            return Err(UnpackError::NotADirectory {
                                path: shown(raw),
                                through: shown(&through),
                            });
                        }
                    }
                }
                Err(e) => return Err(self.io("open", &through, e)),
            };
            cur = next;
        }
        let dup = cur.try_clone().map_err(|e| UnpackError::Io {
            op: "dup",
            path: shown(raw),
            dest: self.dest.to_path_buf(),
            source: e,
        })?;
        self.cache = Some((parent.to_vec(), dup));
        Ok(cur)
    }

    fn replace_whiteout_with_dir(
        &mut self,
        parent: std::os::fd::BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<OwnedFd, UnpackError> {
        rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
            .map_err(|e| self.io("unlink", path, e))?;
        rustix::fs::mkdirat(parent, os(name), Mode::from_raw_mode(0o755))
            .map_err(|e| self.io("mkdir", path, e))?;
        let fd = open_dir(parent, os(name)).map_err(|e| self.io("open", path, e))?;
        set_opaque(fd.as_fd()).map_err(|e| self.io("set opaque xattr on", path, e))?;
        self.stats.opaque_dirs += 1;
        Ok(fd)
    }

    /// Makes room for a non-directory at `name`: an existing entry (from an
    /// earlier duplicate in this layer) is removed. Returns whether it was a
    /// whiteout of this layer.
    fn clear(
        &mut self,
        parent: &OwnedFd,
        comps: &[Vec<u8>],
        raw: &[u8],
    ) -> Result<bool, UnpackError> {
        let path = join(comps);
        let Some(name) = comps.last() else {
            return Err(UnpackError::BadPath { path: shown(raw) });
        };
        let existing = type_at(parent.as_fd(), os(name)).map_err(|e| self.io("stat", raw, e))?;
        let Some((t, _)) = existing else {
            return Ok(false);
        };
        fsutil::remove_at(parent.as_fd(), os(name)).map_err(|e| self.io("remove", raw, e))?;
        let was_whiteout = self.whiteouts.remove(&path);
        self.regular.remove(&path);
        if t == FileType::Directory {
            self.cache = None;
            let mut prefix = path.clone();
            prefix.push(b'/');
            self.regular.retain(|p| !p.starts_with(&prefix));
            self.whiteouts.retain(|p| !p.starts_with(&prefix));
        }
        Ok(was_whiteout)
    }

    fn file<R: Read>(
        &mut self,
        comps: &[Vec<u8>],
        raw: &[u8],
        meta: Meta,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let parent = self.parent(comps, raw)?;
        self.clear(&parent, comps, raw)?;
        let name = os(comps.last().map_or(&[][..], |n| n));
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.io("create", raw, e))?;
        let mut file = File::from(fd);
        let mut written: u64 = 0;
        loop {
            let n = entry
                .read(&mut self.buf)
                .map_err(|source| UnpackError::Read { source })?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > self.limits.max_file_size {
                return Err(UnpackError::FileTooLarge {
                    path: shown(raw),
                    max: self.limits.max_file_size,
                });
            }
            self.stats.file_bytes += n as u64;
            if self.stats.file_bytes > self.limits.max_total_bytes {
                return Err(UnpackError::TooLarge {
                    max: self.limits.max_total_bytes,
                });
            }
            file.write_all(&self.buf[..n])
                .map_err(|source| UnpackError::Io {
                    op: "write",
                    path: shown(raw),
                    dest: self.dest.to_path_buf(),
                    source,
                })?;
        }
        if self.is_root {
            rustix::fs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid)))
                .map_err(|e| self.io("chown", raw, e))?;
        }
        // After chown, which clears setuid/setgid.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(|e| self.io("chmod", raw, e))?;
        self.set_xattrs(&file, &meta, raw)?;
        rustix::fs::futimens(&file, &times(meta.mtime))
            .map_err(|e| self.io("set times of", raw, e))?;
        self.regular.insert(join(comps));
        self.stats.files += 1;
        Ok(())
    }

    fn dir(&mut self, comps: Vec<Vec<u8>>, raw: &[u8], meta: Meta) -> Result<(), UnpackError> {
        let parent = self.parent(&comps, raw)?;
        let path = join(&comps);
        let name = os(comps.last().map_or(&[][..], |n| n));
        match type_at(parent.as_fd(), name).map_err(|e| self.io("stat", raw, e))? {
            Some((FileType::Directory, _)) => {}
            Some(_) => {
                let was_whiteout = self.clear(&parent, &comps, raw)?;
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| self.io("mkdir", raw, e))?;
                if was_whiteout {
                    let fd = open_dir(parent.as_fd(), name).map_err(|e| self.io("open", raw, e))?;
                    set_opaque(fd.as_fd()).map_err(|e| self.io("set opaque xattr on", &path, e))?;
                    self.stats.opaque_dirs += 1;
                }
            }
            None => {
                rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| self.io("mkdir", raw, e))?;
            }
        }
        self.stats.dirs += 1;
        self.dirs.push(DirMeta { comps, meta });
        Ok(())
    }

    fn symlink(
        &mut self,
        comps: &[Vec<u8>],
        raw: &[u8],
        target: Option<Vec<u8>>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let target = match target {
            Some(t) if !t.is_empty() && !t.contains(&0) => t,
            _ => return Err(UnpackError::BadPath { path: shown(raw) }),
        };
        let parent = self.parent(comps, raw)?;
        self.clear(&parent, comps, raw)?;
        let name = os(comps.last().map_or(&[][..], |n| n));
        rustix::fs::symlinkat(os(&target), &parent, name)
            .map_err(|e| self.io("symlink", raw, e))?;
        if self.is_root {
            rustix::fs::chownat(
                &parent,
                name,
                Some(uid(meta.uid)),
                Some(gid(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io("chown", raw, e))?;
        }
        rustix::fs::utimensat(&parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io("set times of", raw, e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(
        &mut self,
        comps: &[Vec<u8>],
        raw: &[u8],
        target: Option<Vec<u8>>,
    ) -> Result<(), UnpackError> {
        let Some(target_raw) = target else {
            return Err(UnpackError::BadPath { path: shown(raw) });
        };
        let escape = || UnpackError::HardlinkEscape {
            path: shown(raw),
            target: shown(&target_raw),
        };
        let not_regular = || UnpackError::HardlinkTarget {
            path: shown(raw),
            target: shown(&target_raw),
        };
        let target_comps = match normalize(&target_raw, self.limits.max_path_len) {
            Ok(c) => c,
            Err(UnpackError::AbsolutePath { .. } | UnpackError::ParentComponent { .. }) => {
                return Err(escape());
            }
            Err(e) => return Err(e),
        };
        let target_path = join(&target_comps);
        if target_comps.is_empty() || target_comps == comps || !self.regular.contains(&target_path)
        {
            return Err(not_regular());
        }
        let target_parent = self.parent(&target_comps, &target_raw)?;
        let target_name = os(target_comps.last().map_or(&[][..], |n| n));
        match type_at(target_parent.as_fd(), target_name)
            .map_err(|e| self.io("stat", &target_raw, e))?
        {
            Some((FileType::RegularFile, _)) => {}
            _ => return Err(not_regular()),
        }
        let parent = self.parent(comps, raw)?;
        self.clear(&parent, comps, raw)?;
        let name = os(comps.last().map_or(&[][..], |n| n));
        rustix::fs::linkat(&target_parent, target_name, &parent, name, AtFlags::empty())
            .map_err(|e| self.io("link", raw, e))?;
        self.regular.insert(join(comps));
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout(&mut self, comps: &[Vec<u8>], raw: &[u8]) -> Result<(), UnpackError> {
        let Some(name) = comps.last() else {
            return Err(UnpackError::BadWhiteout { path: shown(raw) });
        };
        if name.as_slice() == OPAQUE_MARKER.as_bytes() {
            self.stats.opaque_dirs += 1;
            return match self.format {
                WhiteoutFormat::OciMarkers => self.marker(comps, raw),
                WhiteoutFormat::Overlay => {
                    let dir_comps = &comps[..comps.len() - 1];
                    let dir = if dir_comps.is_empty() {
                        self.root.try_clone().map_err(|source| UnpackError::Io {
                            op: "dup",
                            path: shown(raw),
                            dest: self.dest.to_path_buf(),
                            source,
                        })?
                    } else {
                        let parent = self.parent(dir_comps, raw)?;
                        let dname = os(&dir_comps[dir_comps.len() - 1]);
                        match open_dir(parent.as_fd(), dname) {
                            Ok(fd) => fd,
                            Err(Errno::NOENT) => {
                                rustix::fs::mkdirat(&parent, dname, Mode::from_raw_mode(0o755))
                                    .map_err(|e| self.io("mkdir", raw, e))?;
                                open_dir(parent.as_fd(), dname)
                                    .map_err(|e| self.io("open", raw, e))?
                            }
                            Err(e) => return Err(self.io("open", raw, e)),
                        }
                    };
                    set_opaque(dir.as_fd()).map_err(|e| self.io("set opaque xattr for", raw, e))
                }
            };
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are AUFS bookkeeping, not content.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::BadWhiteout { path: shown(raw) });
        }
        self.stats.whiteouts += 1;
        match self.format {
            WhiteoutFormat::OciMarkers => self.marker(comps, raw),
            WhiteoutFormat::Overlay => {
                let parent = self.parent(comps, raw)?;
                let mut hidden_comps = comps.to_vec();
                let last = hidden_comps.len() - 1;
                hidden_comps[last] = hidden.to_vec();
                let hidden_path = join(&hidden_comps);
                match type_at(parent.as_fd(), os(hidden)).map_err(|e| self.io("stat", raw, e))? {
                    // This layer deletes the lower directory and brings its
                    // own: an opaque directory says exactly that.
                    Some((FileType::Directory, _)) => {
                        let fd = open_dir(parent.as_fd(), os(hidden))
                            .map_err(|e| self.io("open", raw, e))?;
                        set_opaque(fd.as_fd())
                            .map_err(|e| self.io("set opaque xattr for", raw, e))?;
                        self.stats.opaque_dirs += 1;
                        Ok(())
                    }
                    // A file of this layer already hides the lower one.
                    Some(_) => Ok(()),
                    None => {
                        rustix::fs::mknodat(
                            &parent,
                            os(hidden),
                            FileType::CharacterDevice,
                            Mode::empty(),
                            rustix::fs::makedev(0, 0),
                        )
                        .map_err(|e| self.io("mknod whiteout for", raw, e))?;
                        self.whiteouts.insert(hidden_path);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Keeps an OCI whiteout marker as an empty regular file.
    fn marker(&mut self, comps: &[Vec<u8>], raw: &[u8]) -> Result<(), UnpackError> {
        let parent = self.parent(comps, raw)?;
        self.clear(&parent, comps, raw)?;
        let name = os(comps.last().map_or(&[][..], |n| n));
        rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| self.io("create whiteout marker", raw, e))?;
        Ok(())
    }

    fn set_xattrs(&mut self, fd: &File, meta: &Meta, raw: &[u8]) -> Result<(), UnpackError> {
        for (name, value) in &meta.xattrs {
            if !xattr_allowed(name) {
                self.stats.xattrs_skipped += 1;
                continue;
            }
            match rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP | Errno::PERM | Errno::ACCESS) => self.stats.xattrs_skipped += 1,
                Err(e) => return Err(self.io("set xattr on", raw, e)),
            }
        }
        Ok(())
    }
}

/// Applies the deferred directory metadata, deepest first.
pub(super) fn apply_dir_metadata(
    dest: &Path,
    dirs: Vec<DirMeta>,
    stats: &mut LayerStats,
) -> Result<(), UnpackError> {
    let limits = Limits::default();
    let mut ex = Extractor::new(dest, &limits, stats.whiteout_format, stats)?;
    // The last entry for a directory wins.
    let mut last: HashMap<Vec<Vec<u8>>, Meta> = HashMap::new();
    let mut order = Vec::new();
    for d in dirs {
        if last.insert(d.comps.clone(), d.meta).is_none() {
            order.push(d.comps);
        }
    }
    order.sort_by_key(|c| std::cmp::Reverse(c.len()));
    for comps in order {
        let Some(meta) = last.remove(&comps) else {
            continue;
        };
        let path = join(&comps);
        let fd = match comps.last() {
            None => ex.root.try_clone().map_err(|source| UnpackError::Io {
                op: "dup",
                path: String::new(),
                dest: dest.to_path_buf(),
                source,
            })?,
            Some(name) => {
                let parent = ex.parent(&comps, &path)?;
                open_dir(parent.as_fd(), os(name)).map_err(|e| ex.io("open", &path, e))?
            }
        };
        let file = File::from(fd);
        if ex.is_root {
            rustix::fs::fchown(&file, Some(uid(meta.uid)), Some(gid(meta.gid)))
                .map_err(|e| ex.io("chown", &path, e))?;
        }
        ex.set_xattrs(&file, &meta, &path)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(|e| ex.io("chmod", &path, e))?;
        rustix::fs::futimens(&file, &times(meta.mtime))
            .map_err(|e| ex.io("set times of", &path, e))?;
    }
    Ok(())
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, UnpackError> {
    let h = entry.header();
    let read = |source| UnpackError::Read { source };
    let mut meta = Meta {
        mode: h.mode().map_err(read)?,
        uid: h.uid().map_err(read)?,
        gid: h.gid().map_err(read)?,
        mtime: h.mtime().map_err(read)?,
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry.pax_extensions().map_err(read)? {
        for ext in exts {
            let ext = ext.map_err(read)?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                meta.xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(meta)
}

/// Only these reach the snapshot; in particular `trusted.overlay.*` from a
/// layer could forge overlayfs whiteouts or redirects.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

fn special(raw: &[u8], kind: &'static str) -> UnpackError {
    UnpackError::SpecialFile {
        path: shown(raw),
        kind,
    }
}

fn uid(id: u64) -> Uid {
    Uid::from_raw(u32::try_from(id).unwrap_or(u32::MAX - 1))
}

fn gid(id: u64) -> Gid {
    Gid::from_raw(u32::try_from(id).unwrap_or(u32::MAX - 1))
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}
