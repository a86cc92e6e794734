//! Server side: which base file a target file is rebuilt from.

use std::collections::HashMap;

use super::index::{TarFile, TarIndex};

/// Where a base file lives: base layer index and its entry in that index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BaseRef {
    pub base: usize,
    pub file: usize,
}

/// Finds the base file a target file is best rebuilt from.
pub(crate) struct Matcher {
    by_sha: HashMap<[u8; 32], BaseRef>,
    by_path: HashMap<String, BaseRef>,
    by_shape: HashMap<String, Vec<BaseRef>>,
    by_name: HashMap<String, Vec<BaseRef>>,
}

/// The path with every run of digits replaced by `#`: `pkg-1.2.dist-info`
/// and `pkg-1.3.dist-info` share a shape.
fn shape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_digits = false;
    for c in path.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Matcher {
    pub(crate) fn new(indexes: &[TarIndex]) -> Self {
        let mut m = Matcher {
            by_sha: HashMap::new(),
            by_path: HashMap::new(),
            by_shape: HashMap::new(),
            by_name: HashMap::new(),
        };
        // Later (upper) layers win for a path, as in the unpacked rootfs.
        for (base, index) in indexes.iter().enumerate() {
            for (file, f) in index.files.iter().enumerate() {
                let r = BaseRef { base, file };
                m.by_sha.entry(f.sha).or_insert(r);
                m.by_path.insert(f.path.clone(), r);
                m.by_shape.entry(shape(&f.path)).or_default().push(r);
                m.by_name
                    .entry(file_name(&f.path).to_string())
                    .or_default()
                    .push(r);
            }
        }
        m
    }

    /// Identical content anywhere → `(r, true)`; else a similar file to
    /// patch against: same path, same shape, same file name (closest size).
    pub(crate) fn find(&self, indexes: &[TarIndex], f: &TarFile) -> Option<(BaseRef, bool)> {
        if let Some(r) = self.by_path.get(&f.path)
            && indexes[r.base].files[r.file].sha == f.sha
        {
            return Some((*r, true));
        }
        if let Some(r) = self.by_sha.get(&f.sha) {
            return Some((*r, true));
        }
        if let Some(r) = self.by_path.get(&f.path) {
            return Some((*r, false));
        }
        let closest = |refs: &Vec<BaseRef>| {
            refs.iter()
                .min_by_key(|r| indexes[r.base].files[r.file].size.abs_diff(f.size))
                .copied()
        };
        self.by_shape
            .get(&shape(&f.path))
            .and_then(closest)
            .or_else(|| self.by_name.get(file_name(&f.path)).and_then(closest))
            .map(|r| (r, false))
    }
}
