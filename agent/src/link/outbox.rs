//! Status reports waiting for the broker, kept on disk so that neither an
//! outage nor a restart loses them.
//!
//! One file per report, `{seq:016x}.json`, written to a temporary name,
//! fsynced and renamed (a power cut leaves either the whole report or none).
//! Reports are sent in sequence order and a file is removed once the broker
//! has acknowledged it. Only the newest status really matters (it is
//! retained), so past `limit` entries the oldest are dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot create the outbox directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the outbox directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write outbox entry {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The on-disk queue. Its methods do blocking file I/O: call them from
/// `spawn_blocking`.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    limit: usize,
    entries: BTreeMap<u64, Vec<u8>>,
}

impl Outbox {
    /// Opens (creating) `dir` and loads the entries left from a previous run.
    /// Unreadable or partial entries (`.tmp`) are removed.
    pub fn open(dir: &Path, limit: usize) -> Result<Self, OutboxError> {
        fs::create_dir_all(dir).map_err(|source| OutboxError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut entries = BTreeMap::new();
        let read = fs::read_dir(dir).map_err(|source| OutboxError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        for entry in read.flatten() {
            let path = entry.path();
            let seq = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            match seq.map(|s| (s, fs::read(&path))) {
                Some((seq, Ok(bytes))) => {
                    entries.insert(seq, bytes);
                }
                Some((_, Err(e))) => {
                    warn!(path = %path.display(), error = %e, "unreadable outbox entry removed");
                    let _ = fs::remove_file(&path);
                }
                None => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let mut outbox = Self {
            dir: dir.to_owned(),
            limit: limit.max(1),
            entries,
        };
        outbox.trim();
        Ok(outbox)
    }

    /// Appends a report durably and returns its sequence number.
    pub fn push(&mut self, payload: Vec<u8>) -> Result<u64, OutboxError> {
        let seq = self.entries.keys().next_back().map_or(0, |s| s + 1);
        let path = self.path(seq);
        let tmp = self.dir.join(format!("{seq:016x}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&payload)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| OutboxError::Write {
            path: path.clone(),
            source,
        })?;
        self.entries.insert(seq, payload);
        self.trim();
        Ok(seq)
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<(u64, &[u8])> {
        self.entries.iter().next().map(|(s, p)| (*s, p.as_slice()))
    }

    /// Removes an acknowledged entry.
    pub fn remove(&mut self, seq: u64) {
        if self.entries.remove(&seq).is_some()
            && let Err(e) = fs::remove_file(self.path(seq))
        {
            warn!(seq, error = %e, "cannot remove an acknowledged outbox entry");
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn trim(&mut self) {
        while self.entries.len() > self.limit {
            if let Some((&seq, _)) = self.entries.iter().next() {
                warn!(seq, "status outbox full; oldest report dropped");
                self.remove(seq);
            }
        }
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016x}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_in_order_and_acked_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 10).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.push(b"a".to_vec()).unwrap(), 0);
        assert_eq!(o.push(b"b".to_vec()).unwrap(), 1);
        o.remove(0);
        assert_eq!(o.push(b"c".to_vec()).unwrap(), 2);
        fs::write(dir.path().join("0000000000000009.tmp"), b"partial").unwrap();
        drop(o);
        let o = Outbox::open(dir.path(), 10).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.front(), Some((1, &b"b"[..])));
        assert!(!dir.path().join("0000000000000009.tmp").exists());
    }

    #[test]
    fn the_oldest_entries_are_dropped_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 2).unwrap();
        for p in [b"1", b"2", b"3"] {
            o.push(p.to_vec()).unwrap();
        }
        assert_eq!(o.len(), 2);
        assert_eq!(o.front(), Some((1, &b"2"[..])));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
