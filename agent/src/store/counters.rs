//! The store's own accounting: bytes held (from the blob records) and two
//! monotonic counters of content bytes — downloaded, and not downloaded
//! because the store already had them. The counters live in sled (tree
//! `counters`), are bumped once per committed blob or finished pull (never
//! per chunk) and survive restarts.

use serde::Serialize;

use super::{BlobInfo, Store, StoreError};

const COUNTERS_TREE: &str = "counters";
const CONTENT_KEY: &[u8] = b"content";

/// Content byte counters since the store was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContentCounters {
    /// Content bytes received from registries for blobs now in the store.
    pub fetched_bytes: u64,
    /// Content bytes a pull needed and found already in the store.
    pub reused_bytes: u64,
}

impl ContentCounters {
    fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.fetched_bytes.to_be_bytes());
        out[8..].copy_from_slice(&self.reused_bytes.to_be_bytes());
        out
    }

    /// Anything but 16 bytes reads as zero (a fresh store).
    fn decode(bytes: &[u8]) -> Self {
        match (bytes.get(..8), bytes.get(8..16)) {
            (Some(f), Some(r)) if bytes.len() == 16 => Self {
                fetched_bytes: u64::from_be_bytes(f.try_into().unwrap_or([0; 8])),
                reused_bytes: u64::from_be_bytes(r.try_into().unwrap_or([0; 8])),
            },
            _ => Self::default(),
        }
    }
}

impl Store {
    fn counters_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db
            .open_tree(COUNTERS_TREE)
            .map_err(|source| self.db_err(source))
    }

    /// Adds to the content counters (atomically) and returns the new totals.
    pub fn add_content_counters(
        &self,
        fetched: u64,
        reused: u64,
    ) -> Result<ContentCounters, StoreError> {
        if fetched == 0 && reused == 0 {
            return self.content_counters();
        }
        let tree = self.counters_tree()?;
        let new = tree
            .update_and_fetch(CONTENT_KEY, |old| {
                let c = old.map(ContentCounters::decode).unwrap_or_default();
                Some(
                    ContentCounters {
                        fetched_bytes: c.fetched_bytes.saturating_add(fetched),
                        reused_bytes: c.reused_bytes.saturating_add(reused),
                    }
                    .encode()
                    .to_vec(),
                )
            })
            .map_err(|source| self.db_err(source))?;
        Ok(new.map(|v| ContentCounters::decode(&v)).unwrap_or_default())
    }

    /// The content counters now.
    pub fn content_counters(&self) -> Result<ContentCounters, StoreError> {
        let tree = self.counters_tree()?;
        Ok(tree
            .get(CONTENT_KEY)
            .map_err(|source| self.db_err(source))?
            .map(|v| ContentCounters::decode(&v))
            .unwrap_or_default())
    }

    /// Bytes of the blobs the store records (what garbage collection frees).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        for item in self.blobs.iter() {
            let (_, v) = item.map_err(|source| self.db_err(source))?;
            if let Ok(info) = serde_json::from_slice::<BlobInfo>(&v) {
                total = total.saturating_add(info.size);
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use fleet_protocol::Digest;

    #[test]
    fn counters_add_up_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            assert_eq!(
                store.content_counters().unwrap(),
                ContentCounters::default()
            );
            store.add_content_counters(100, 0).unwrap();
            let c = store.add_content_counters(20, 300).unwrap();
            assert_eq!(
                c,
                ContentCounters {
                    fetched_bytes: 120,
                    reused_bytes: 300
                }
            );
            let blob = b"hello blob";
            store
                .put_blob(&Digest::of(blob), blob, "application/octet-stream")
                .unwrap();
            assert_eq!(store.used_bytes().unwrap(), blob.len() as u64);
            store.flush().unwrap();
        }
        let mut store = None;
        // sled releases its file lock shortly after a drop.
        for _ in 0..100 {
            match Store::open(dir.path(), StoreConfig::default()) {
                Ok(s) => {
                    store = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        let store = store.unwrap();
        assert_eq!(
            store.content_counters().unwrap(),
            ContentCounters {
                fetched_bytes: 120,
                reused_bytes: 300
            }
        );
        assert_eq!(store.used_bytes().unwrap(), 10);
    }

    #[test]
    fn odd_records_read_as_zero() {
        assert_eq!(
            ContentCounters::decode(b"short"),
            ContentCounters::default()
        );
        let c = ContentCounters {
            fetched_bytes: 7,
            reused_bytes: u64::MAX,
        };
        assert_eq!(ContentCounters::decode(&c.encode()), c);
    }
}
