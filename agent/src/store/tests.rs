use std::time::Duration;

use super::*;
use fleet_protocol::oci::media_type::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};

fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        StoreConfig {
            reserve_bytes: 0,
            cache_bytes: 256 * 1024,
        },
    )
    .unwrap()
}

fn manifest_for(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| desc(OCI_LAYER_GZIP, l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

#[test]
fn schema_version_is_recorded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        // Reopening right after a drop waits for sled's lock (bounded, in
        // sled's open: third_party/sled/PATCHES.md).
        let db = sled::open(dir.path().join("meta")).unwrap();
        assert_eq!(db.get(SCHEMA_KEY).unwrap().unwrap().as_ref(), b"1");
        db.insert(SCHEMA_KEY, b"99".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let err = match Store::open(dir.path(), StoreConfig::default()) {
        Err(e) => e,
        Ok(_) => panic!("a store with schema 99 opened"),
    };
    assert!(
        matches!(err, StoreError::Schema { ref found, .. } if found == "99"),
        "{err}"
    );
}

#[test]
fn put_blob_checks_the_digest_and_lands_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = Digest::of(b"hello");
    assert!(!store.has_blob(&d));
    let wrong = store.put_blob(&d, b"hellO", "x").unwrap_err();
    assert!(matches!(wrong, StoreError::Corrupt { .. }));
    assert!(!store.has_blob(&d));
    store.put_blob(&d, b"hello", "text/plain").unwrap();
    assert!(store.has_blob(&d));
    assert_eq!(store.read_blob(&d, 100).unwrap(), b"hello");
    assert_eq!(store.blob_info(&d).unwrap().unwrap().size, 5);
    assert!(matches!(
        store.read_blob(&d, 2),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn disk_preflight_reports_needed_available_and_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let avail = store.available_bytes().unwrap();
    assert!(avail > 0);
    store.ensure_space(1).unwrap();
    match store.ensure_space(avail + 1) {
        Err(StoreError::DiskFull {
            needed,
            available,
            reserve,
        }) => {
            assert_eq!(needed, avail + 1);
            assert!(available > 0);
            assert_eq!(reserve, 0);
        }
        other => panic!("expected DiskFull, got {other:?}"),
    }
}

#[tokio::test]
async fn gc_keeps_what_kept_images_reach_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (config, l1, l2, stray) = (
        b"{}".as_slice(),
        b"layer1".as_slice(),
        b"layer2".as_slice(),
        b"stray".as_slice(),
    );
    for b in [config, l1, l2, stray] {
        store.put_blob(&Digest::of(b), b, "x").unwrap();
    }
    let m1 = manifest_for(config, &[l1]);
    let m2 = manifest_for(config, &[l1, l2]);
    for m in [&m1, &m2] {
        store.put_blob(&Digest::of(m), m, OCI_MANIFEST).unwrap();
    }
    store
        .put_image(&ImageRecord {
            reference: "r/a:1".into(),
            manifest: Digest::of(&m1),
            index: None,
            kept: true,
        })
        .unwrap();
    store
        .put_image(&ImageRecord {
            reference: "r/a:2".into(),
            manifest: Digest::of(&m2),
            index: None,
            kept: false,
        })
        .unwrap();
    // A finished download's leftovers and a fresh partial.
    let done = store.partial(&Digest::of(l1));
    fs::write(&done.journal, b"{}").unwrap();
    let fresh = store.partial(&Digest::of(b"in progress"));
    fs::write(&fresh.data, b"in").unwrap();

    {
        let _pull = store.lease().await;
        assert!(matches!(
            store.gc(&GcOptions::default()),
            Err(StoreError::Busy)
        ));
    }
    let report = store.gc(&GcOptions::default()).unwrap();
    assert_eq!(report.blobs_kept, 3, "manifest 1, config, layer 1");
    assert_eq!(report.blobs_removed, 3, "manifest 2, layer 2, stray");
    assert_eq!(report.temp_files_removed, 1);
    for kept in [&Digest::of(&m1), &Digest::of(config), &Digest::of(l1)] {
        assert!(store.has_blob(kept));
    }
    for gone in [&Digest::of(&m2), &Digest::of(l2), &Digest::of(stray)] {
        assert!(!store.has_blob(gone));
        assert!(store.blob_info(gone).unwrap().is_none());
    }
    assert!(fresh.data.exists(), "a recent partial survives");
    let all = store
        .gc(&GcOptions {
            tmp_max_age: Duration::ZERO,
        })
        .unwrap();
    assert_eq!(all.temp_files_removed, 1);
    assert!(!fresh.data.exists());

    store.set_kept("r/a:1", false).unwrap();
    assert_eq!(store.gc(&GcOptions::default()).unwrap().blobs_removed, 3);
    assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().count(), 0);
}

#[test]
fn a_store_held_by_another_opener_says_it_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let held = open(dir.path());
    let err = Store::open(
        dir.path(),
        StoreConfig {
            reserve_bytes: 0,
            cache_bytes: 256 * 1024,
        },
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.is_locked(), "{err:?}");
    drop(held);
    let other = StoreError::Db {
        path: dir.path().into(),
        source: sled::Error::Io(std::io::Error::other("disk on fire")),
    };
    assert!(!other.is_locked());
}
