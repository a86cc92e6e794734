//! Where the device reads base files from while applying a delta.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use crate::Digest;

/// Opens base files by (base layer diff_id, path inside the layer). The
/// agent implements it over its read-only unpacked snapshots. `path` has
/// already passed [`super::path_is_safe`]; an implementation must still not
/// follow a symlink out of the layer's tree.
pub trait BaseFiles {
    type File: Read + Seek;
    /// Whether the layer `diff_id` is available at all (checked for every
    /// base before the first op).
    fn has_layer(&self, diff_id: &Digest) -> bool;
    /// Opens the regular file `path` of layer `diff_id` for reading.
    fn open(&self, diff_id: &Digest, path: &str) -> io::Result<Self::File>;
    /// Opens the skeleton of layer `diff_id` ([`super::skeleton`] of its
    /// tar), as recorded when the layer was unpacked. `NotFound` when there
    /// is none.
    fn skeleton(&self, diff_id: &Digest) -> io::Result<Box<dyn Read + '_>>;
}

/// Base layers unpacked one per directory, keyed by diff_id.
#[derive(Debug, Clone, Default)]
pub struct DirBases {
    dirs: HashMap<Digest, PathBuf>,
    skeletons: HashMap<Digest, PathBuf>,
}

impl DirBases {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `dir` as the unpacked tree of layer `diff_id`.
    pub fn insert(&mut self, diff_id: Digest, dir: impl Into<PathBuf>) {
        self.dirs.insert(diff_id, dir.into());
    }

    /// Registers `file` as the skeleton of layer `diff_id`.
    pub fn set_skeleton(&mut self, diff_id: Digest, file: impl Into<PathBuf>) {
        self.skeletons.insert(diff_id, file.into());
    }
}

impl BaseFiles for DirBases {
    type File = File;

    fn has_layer(&self, diff_id: &Digest) -> bool {
        self.dirs.contains_key(diff_id)
    }

    fn open(&self, diff_id: &Digest, path: &str) -> io::Result<File> {
        let root = self
            .dirs
            .get(diff_id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown base layer"))?;
        open_inside(root, path)
    }

    fn skeleton(&self, diff_id: &Digest) -> io::Result<Box<dyn Read + '_>> {
        let path = self
            .skeletons
            .get(diff_id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no skeleton recorded"))?;
        Ok(Box::new(io::BufReader::new(File::open(path)?)))
    }
}

/// Opens `root/path` after resolving symlinks, refusing anything that
/// resolves outside `root` or is not a regular file.
fn open_inside(root: &Path, path: &str) -> io::Result<File> {
    let root = root.canonicalize()?;
    let resolved = root.join(path).canonicalize()?;
    if !resolved.starts_with(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "base path resolves outside its layer",
        ));
    }
    let file = File::open(&resolved)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "base path is not a regular file",
        ));
    }
    Ok(file)
}
