//! Where imported files come from: a directory, or a tar extracted into
//! the store's temporary directory and hashed on the way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use fleet_protocol::Digest;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::ContentError;
use super::store::ContentStore;

/// Where the files being imported are.
pub(super) enum Source {
    /// A directory given by the operator: blobs are copied (and hashed).
    Dir(PathBuf),
    /// A tar extracted into the store's temporary directory, hashed while
    /// extracted: verified blobs are renamed into the store.
    Archive(Extracted),
}

impl Source {
    pub(super) fn display(&self, rel: &str) -> PathBuf {
        match self {
            Self::Dir(root) => root.join(rel),
            Self::Archive(x) => x.tar.join(rel),
        }
    }

    /// Reads a small file whole; `None` when it does not exist.
    pub(super) fn read_small(
        &self,
        rel: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, ContentError> {
        let path = match self {
            Self::Dir(root) => root.join(rel),
            Self::Archive(x) => match x.get(rel) {
                Some(file) => file.path.clone(),
                None => return Ok(None),
            },
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ContentError::io("open", path, e)),
        };
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ContentError::io("read", &path, e))?;
        if bytes.len() as u64 > limit {
            return Err(ContentError::BadLayout {
                path: self.display(rel),
                reason: format!("file is larger than {limit} bytes"),
            });
        }
        Ok(Some(bytes))
    }

    /// Stores the file at `rel`, which must hash to `digest`. Returns
    /// whether the blob was new.
    pub(super) fn store_blob(
        &self,
        store: &ContentStore,
        rel: &str,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<bool, ContentError> {
        let missing = || ContentError::MissingBlob {
            digest: digest.clone(),
            path: self.display(rel),
        };
        match self {
            Self::Dir(root) => {
                let path = root.join(rel);
                if !path.is_file() {
                    return Err(missing());
                }
                store.put_file(&path, digest, size)
            }
            Self::Archive(x) => {
                let file = x.get(rel).ok_or_else(missing)?;
                if &file.digest != digest {
                    return Err(ContentError::DigestMismatch {
                        path: self.display(rel),
                        expected: digest.clone(),
                        actual: file.digest.clone(),
                    });
                }
                if let Some(want) = size
                    && want != file.size
                {
                    return Err(ContentError::SizeMismatch {
                        digest: digest.clone(),
                        expected: want,
                        actual: file.size,
                    });
                }
                store.adopt(&file.path, digest)
            }
        }
    }
}

/// A tar's regular files, extracted under flat names and hashed.
pub(super) struct Extracted {
    pub(super) tar: PathBuf,
    _dir: TempDir,
    pub(super) files: HashMap<String, ExtractedFile>,
    /// Symbolic and hard links: archive path → target archive path.
    pub(super) links: HashMap<String, String>,
}

pub(super) struct ExtractedFile {
    pub(super) path: PathBuf,
    pub(super) digest: Digest,
    pub(super) size: u64,
}

impl Extracted {
    pub(super) fn from_tar(store: &ContentStore, tar: &Path) -> Result<Self, ContentError> {
        let dir = TempDir::new_in(store.tmp_dir())
            .map_err(|e| ContentError::io("create", store.tmp_dir(), e))?;
        let bad = |reason: String| ContentError::BadArchive {
            path: tar.to_owned(),
            reason,
        };
        let file = File::open(tar).map_err(|e| ContentError::io("open", tar, e))?;
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar: {e}")))?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| bad(format!("entry {n}: {e}")))?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_symlink() || kind.is_hard_link()) {
                // Directories and anything else (devices, fifos) are not content.
                continue;
            }
            let raw = entry
                .path()
                .map_err(|e| bad(format!("entry {n}: {e}")))?
                .into_owned();
            let rel = normalize(&raw).ok_or_else(|| bad(format!("unsafe path {raw:?}")))?;
            if kind.is_file() {
                let path = dir.path().join(format!("f{n}"));
                let out = File::create(&path).map_err(|e| ContentError::io("create", &path, e))?;
                let mut writer = HashingWriter::new(out);
                io::copy(&mut entry, &mut writer)
                    .map_err(|e| ContentError::io("extract", tar, e))?;
                let (digest, size) = writer.finish();
                files.insert(rel, ExtractedFile { path, digest, size });
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("entry {n}: {e}")))?
                    .ok_or_else(|| bad(format!("link {raw:?} has no target")))?
                    .into_owned();
                // Symlink targets are relative to the link's directory, hard
                // link targets to the archive's root.
                let base = if kind.is_symlink() {
                    Path::new(&rel)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(&target)
                } else {
                    target.clone()
                };
                let resolved = normalize(&base)
                    .ok_or_else(|| bad(format!("link {raw:?} escapes: {target:?}")))?;
                links.insert(rel, resolved);
            }
        }
        Ok(Self {
            tar: tar.to_owned(),
            _dir: dir,
            files,
            links,
        })
    }

    pub(super) fn get(&self, rel: &str) -> Option<&ExtractedFile> {
        let mut rel = rel.to_owned();
        for _ in 0..8 {
            if let Some(file) = self.files.get(&rel) {
                return Some(file);
            }
            rel = self.links.get(&rel)?.clone();
        }
        None
    }

    pub(super) fn contains(&self, rel: &str) -> bool {
        self.get(rel).is_some()
    }
}

/// `a/./b/../c` → `a/c`; `None` for absolute paths or ones leaving the root.
pub(super) fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

struct HashingWriter {
    out: File,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(out: File) -> Self {
        Self {
            out,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256(self.hasher.finalize().into()),
            self.size,
        )
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_inside_the_archive() {
        assert_eq!(normalize(Path::new("./a/b")).as_deref(), Some("a/b"));
        assert_eq!(normalize(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(normalize(Path::new("../b")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
        assert_eq!(normalize(Path::new(".")), None);
    }

    /// A tar of one entry whose name is written raw (tar's builder refuses
    /// unsafe names, attackers' tools do not).
    fn raw_tar(path: &Path, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(File::create(path).unwrap());
        builder.append(&header, data).unwrap();
        builder.finish().unwrap();
    }

    #[test]
    fn archives_with_escaping_paths_or_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&dir.path().join("data")).unwrap();
        let tar = dir.path().join("evil.tar");
        let cases: [(&[u8], tar::EntryType, &[u8]); 4] = [
            (b"../evil", tar::EntryType::Regular, b""),
            (b"/etc/evil", tar::EntryType::Regular, b""),
            (b"blobs/x", tar::EntryType::Symlink, b"../../../etc/passwd"),
            (b"x", tar::EntryType::Link, b"../outside"),
        ];
        for (name, kind, link) in cases {
            raw_tar(&tar, name, kind, link, b"data");
            let err = Extracted::from_tar(&store, &tar).err();
            assert!(
                matches!(err, Some(ContentError::BadArchive { .. })),
                "{}: {err:?}",
                String::from_utf8_lossy(name)
            );
        }
        // Nothing was left behind in the store's temporary directory.
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        raw_tar(&tar, b"a/b/../c", tar::EntryType::Regular, b"", b"data");
        let ok = Extracted::from_tar(&store, &tar).unwrap();
        assert_eq!(ok.get("a/c").unwrap().digest, Digest::of(b"data"));
    }
}
