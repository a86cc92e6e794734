//! The host's files as the agent reads them: every read of `/proc`, `/sys`,
//! `/etc` or `/dev` on the host goes through a [`HostRoot`], so a fixture
//! tree can stand in for a Jetson. Telemetry, device detection and the GPU
//! module all read through it; it imports nothing of theirs.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Largest sysfs/procfs file read whole (they are a few hundred bytes).
const SMALL_FILE: u64 = 256 * 1024;

/// Where the host's `/` is: `/` in production, a fixture tree in tests (or
/// to make a device look like a Jetson). Every host read goes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot(PathBuf::from("/"))
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// The host path `abs` (e.g. `/proc/stat`) under this root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }

    /// A small host file as text; `None` when missing or unreadable.
    pub fn read(&self, abs: &str) -> Option<String> {
        read_small(&self.path(abs))
    }

    /// The entries of a host directory, sorted (empty when missing).
    pub fn entries(&self, abs: &str) -> Vec<PathBuf> {
        entries(&self.path(abs))
    }
}

/// A small file as text (at most [`SMALL_FILE`] bytes).
pub fn read_small(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(SMALL_FILE)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// A file holding one unsigned integer.
pub fn read_u64(path: &Path) -> Option<u64> {
    parse_u64(&read_small(path)?)
}

/// The entries of a directory, sorted by name (empty when missing).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// `"  1234\n"` → 1234.
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().trim_end_matches('\0').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_stay_under_the_root() {
        let h = HostRoot::new("/fixture");
        assert_eq!(h.path("/proc/stat"), PathBuf::from("/fixture/proc/stat"));
        assert_eq!(HostRoot::default().path("/proc"), PathBuf::from("/proc"));
    }
}
