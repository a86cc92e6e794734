//! The agent's state directory (`state_dir`, default
//! `/var/lib/fleet-agent`): who may enter it.
//!
//! Snapshots keep the modes of their layers, setuid-root binaries included
//! (see [`crate::unpack`]), and container root filesystems are built from
//! them under `containers/`. Inside a container those bits are confined; on
//! the host, anyone who can reach `snapshots/sha256/<hex>/fs/usr/bin/su`
//! could run it as root. So the state directory and every directory at its
//! top level are `0700`, owned by the agent's user:
//!
//! ```text
//! <state>/            0700  the agent's user only
//!   blobs/ tmp/ meta/ snapshots/ containers/ link/ cdi/ quarantine/   0700
//! ```
//!
//! `0700` rather than containerd's `0711`: containers here run as root
//! (the runtime, crun or runc, runs as root and needs no traversal right
//! on the parents), there are no user namespaces whose mapped root would
//! have to walk down to the rootfs, and a process of the container,
//! whatever its user, only ever sees the rootfs from inside (after the
//! runtime's `pivot_root`), never the host path above it. overlayfs checks
//! access to lower files with the mounter's (root's) credentials.
//!
//! [`secure`] runs whenever a state directory is opened (by
//! [`crate::store::Store::open`], the first thing every command and the
//! daemon open): it creates the directory and the known top-level
//! directories `0700`, refuses a state directory owned by another user,
//! and repairs any top-level directory whose mode lets others in, with a
//! WARN naming the path and its old mode.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The mode of the state directory and of every directory at its top level.
pub const PRIVATE_MODE: u32 = 0o700;

/// The top-level directories the agent's modules keep, created private
/// before any module creates them with default modes.
pub const TOP_LEVEL: &[&str] = &[
    "blobs",
    "tmp",
    "meta",
    "snapshots",
    "containers",
    "link",
    "cdi",
];

/// Why the state directory cannot be made private.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state directory: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "state directory {path} belongs to uid {owner}, not to this agent's uid {uid}: that user \
         could change what the agent runs; chown it to uid {uid} or choose another state_dir"
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
}

/// A directory whose mode [`secure`] tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeRepair {
    pub path: PathBuf,
    /// The permission bits it had (`mode & 0o7777`).
    pub old_mode: u32,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateDirError + use<> {
    let path = path.to_owned();
    move |source| StateDirError::Io { op, path, source }
}

/// Creates `dir` with mode [`PRIVATE_MODE`] if it is missing (its missing
/// parents too), exactly that mode whatever the umask. An existing `dir`
/// is left as it is.
pub fn create_private(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(false)
        .mode(PRIVATE_MODE)
        .create(dir)
    {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private(parent)?;
            }
            create_private(dir)
        }
        Err(e) => Err(e),
    }
}

/// Makes `state_dir` private (see the module documentation): creates it and
/// the [`TOP_LEVEL`] directories `0700`, refuses it when another user owns
/// it, and sets `0700` on the state directory and on every directory at its
/// top level that has any bit for group or others (or a special bit),
/// logging each repair at WARN. Returns the repairs.
pub fn secure(state_dir: &Path) -> Result<Vec<ModeRepair>, StateDirError> {
    create_private(state_dir).map_err(io_err("create", state_dir))?;
    let meta = fs::metadata(state_dir).map_err(io_err("stat", state_dir))?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: state_dir.to_owned(),
        });
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(StateDirError::Owner {
            path: state_dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mut repairs = Vec::new();
    repair(state_dir, meta.mode(), &mut repairs)?;
    for name in TOP_LEVEL {
        let dir = state_dir.join(name);
        create_private(&dir).map_err(io_err("create", &dir))?;
    }
    for entry in fs::read_dir(state_dir).map_err(io_err("list", state_dir))? {
        let entry = entry.map_err(io_err("list", state_dir))?;
        let path = entry.path();
        // Not followed: a symlink's own mode means nothing, and where it
        // points is the operator's choice (e.g. a data partition).
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        if meta.is_dir() {
            repair(&path, meta.mode(), &mut repairs)?;
        }
    }
    Ok(repairs)
}

fn repair(path: &Path, mode: u32, repairs: &mut Vec<ModeRepair>) -> Result<(), StateDirError> {
    let old_mode = mode & 0o7777;
    if old_mode & !PRIVATE_MODE == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_MODE))
        .map_err(io_err("chmod 0700", path))?;
    tracing::warn!(
        path = %path.display(),
        old_mode = %format!("{old_mode:04o}"),
        "state directory was open to other users; mode repaired to 0700"
    );
    repairs.push(ModeRepair {
        path: path.to_owned(),
        old_mode,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_state_dir_and_its_top_level_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("a/b/state");
        let repairs = secure(&state).unwrap();
        assert!(repairs.is_empty(), "{repairs:?}");
        assert_eq!(mode(&state), 0o700);
        for name in TOP_LEVEL {
            assert_eq!(mode(&state.join(name)), 0o700, "{name}");
        }
    }

    #[test]
    fn open_modes_are_repaired_and_reported_with_the_old_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let snapshots = state.join("snapshots");
        fs::create_dir(&snapshots).unwrap();
        fs::set_permissions(&snapshots, fs::Permissions::from_mode(0o1777)).unwrap();
        let private_file = state.join("agent.sock");
        fs::write(&private_file, b"").unwrap();
        fs::set_permissions(&private_file, fs::Permissions::from_mode(0o644)).unwrap();

        let mut repairs = secure(&state).unwrap();
        repairs.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            repairs,
            vec![
                ModeRepair {
                    path: state.clone(),
                    old_mode: 0o755
                },
                ModeRepair {
                    path: snapshots.clone(),
                    old_mode: 0o1777
                },
            ]
        );
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&snapshots), 0o700);
        // Files are left alone: the directory around them is what guards them.
        assert_eq!(mode(&private_file), 0o644);
        assert!(secure(&state).unwrap().is_empty());
    }

    #[test]
    fn a_state_path_that_is_a_file_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        fs::write(&file, b"").unwrap();
        let err = secure(&file).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }
}
