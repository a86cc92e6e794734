//! The store's own accounting: bytes held (from the blob records) and
//! monotonic counters of content bytes — downloaded, and not downloaded
//! because the store already had them — and of layer deltas: delta bytes
//! fetched, the whole-layer bytes they replaced, and deltas that could not
//! be used (fallbacks to the whole layer). The counters live in sled (tree
//! `counters`), are bumped once per committed blob, delta or finished pull
//! (never per chunk) and survive restarts.

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
    /// Bytes of layer deltas fetched and applied (also in `fetched_bytes`).
    pub delta_fetched_bytes: u64,
    /// Bytes of the whole layers those deltas replaced.
    pub delta_replaced_bytes: u64,
    /// Deltas that could not be used; the whole layer was fetched instead.
    pub delta_fallbacks: u64,
}

impl ContentCounters {
    fn fields(self) -> [u64; 5] {
        [
            self.fetched_bytes,
            self.reused_bytes,
            self.delta_fetched_bytes,
            self.delta_replaced_bytes,
            self.delta_fallbacks,
        ]
    }

    fn encode(self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    /// 16 bytes (a store from before deltas) or 40; anything else reads as
    /// zero (a fresh store).
    fn decode(bytes: &[u8]) -> Self {
        if bytes.len() != 16 && bytes.len() != 40 {
            return Self::default();
        }
        let mut v = [0u64; 5];
        for (slot, chunk) in v.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = u64::from_be_bytes(chunk.try_into().unwrap_or([0; 8]));
        }
        Self {
            fetched_bytes: v[0],
            reused_bytes: v[1],
            delta_fetched_bytes: v[2],
            delta_replaced_bytes: v[3],
            delta_fallbacks: v[4],
        }
    }

    fn add(self, other: Self) -> Self {
        let (a, b) = (self.fields(), other.fields());
        let s = |i: usize| a[i].saturating_add(b[i]);
        Self {
            fetched_bytes: s(0),
            reused_bytes: s(1),
            delta_fetched_bytes: s(2),
            delta_replaced_bytes: s(3),
            delta_fallbacks: s(4),
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
        self.add_counters(ContentCounters {
            fetched_bytes: fetched,
            reused_bytes: reused,
            ..ContentCounters::default()
        })
    }

    /// Adds to the delta counters: `fetched` delta bytes that replaced
    /// `replaced` whole-layer bytes, and `fallbacks` unusable deltas.
    pub fn add_delta_counters(
        &self,
        fetched: u64,
        replaced: u64,
        fallbacks: u64,
    ) -> Result<ContentCounters, StoreError> {
        self.add_counters(ContentCounters {
            delta_fetched_bytes: fetched,
            delta_replaced_bytes: replaced,
            delta_fallbacks: fallbacks,
            ..ContentCounters::default()
        })
    }

    fn add_counters(&self, more: ContentCounters) -> Result<ContentCounters, StoreError> {
        if more == ContentCounters::default() {
            return self.content_counters();
        }
        let tree = self.counters_tree()?;
        let new = tree
            .update_and_fetch(CONTENT_KEY, |old| {
                let c = old.map(ContentCounters::decode).unwrap_or_default();
                Some(c.add(more).encode())
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
                    reused_bytes: 300,
                    ..ContentCounters::default()
                }
            );
            let c = store.add_delta_counters(10, 90, 1).unwrap();
            assert_eq!(
                (
                    c.delta_fetched_bytes,
                    c.delta_replaced_bytes,
                    c.delta_fallbacks
                ),
                (10, 90, 1)
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
                reused_bytes: 300,
                delta_fetched_bytes: 10,
                delta_replaced_bytes: 90,
                delta_fallbacks: 1,
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
            delta_fetched_bytes: 1,
            delta_replaced_bytes: 2,
            delta_fallbacks: 3,
        };
        assert_eq!(ContentCounters::decode(&c.encode()), c);
        // A record from before deltas keeps its two counters.
        let old: Vec<u8> = [5u64, 6].iter().flat_map(|v| v.to_be_bytes()).collect();
        let d = ContentCounters::decode(&old);
        assert_eq!(
            (d.fetched_bytes, d.reused_bytes, d.delta_fallbacks),
            (5, 6, 0)
        );
    }
}
