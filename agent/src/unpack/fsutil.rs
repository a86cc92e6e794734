//! Path checks and descriptor-relative filesystem helpers that never follow
//! symlinks.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::UnpackError;

/// Linux `NAME_MAX`.
const NAME_MAX: usize = 255;

/// A tar path as text, for error messages.
pub(super) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// `a/b/c` from components.
pub(super) fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

pub(super) fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

/// Splits a tar entry path into safe components: `./` and empty components
/// are dropped, an absolute path or a `..` anywhere is refused.
pub(super) fn normalize(raw: &[u8], max_len: usize) -> Result<Vec<Vec<u8>>, UnpackError> {
    if raw.len() > max_len {
        return Err(UnpackError::PathTooLong {
            len: raw.len(),
            max: max_len,
        });
    }
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::AbsolutePath { path: shown(raw) });
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(UnpackError::ParentComponent { path: shown(raw) }),
            c if c.len() > NAME_MAX || c.contains(&0) => {
                return Err(UnpackError::BadPath { path: shown(raw) });
            }
            c => comps.push(c.to_vec()),
        }
    }
    Ok(comps)
}

pub(super) fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens the directory `name` inside `parent` without following a symlink.
pub(super) fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The type of `name` inside `parent` (not following a symlink), or `None`
/// when it does not exist.
pub(super) fn type_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<Option<(FileType, u64)>, Errno> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((FileType::from_raw_mode(st.st_mode), st.st_rdev))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` inside `parent`, recursively when it is a directory,
/// without following symlinks.
pub(super) fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let dir = open_dir(parent, name)?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_at(dir.as_fd(), os(&n))?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Removes a whole tree (a snapshot, a partial destination) without
/// following symlinks. Directories left read-only for an unprivileged agent
/// are made writable first. A missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            std::fs::remove_dir_all(path)
        }
        Err(e) => match std::fs::symlink_metadata(path) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(path),
            _ => Err(e),
        },
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(path)? {
        make_dirs_writable(&entry?.path())?;
    }
    Ok(())
}
