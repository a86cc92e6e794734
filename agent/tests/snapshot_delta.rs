//! `SnapshotStore::ensure_from_delta`: a layer rebuilt from a delta (made
//! with the protocol's encoder) over the snapshot of its base, streamed
//! into the unpacker. Every refusal leaves no snapshot and nothing in
//! `snapshots/tmp/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;

use fleet_agent::snapshot::{SnapshotError, SnapshotStore};
use fleet_agent::unpack::{Limits, WhiteoutFormat};
use fleet_protocol::Digest;
use fleet_protocol::delta::{self, DeltaError, EncodeOptions};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn header(len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut h = header(bytes.len());
        h.set_cksum();
        b.append_data(&mut h, path, *bytes).unwrap();
    }
    b.into_inner().unwrap()
}

fn encode(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    delta::encode(
        &mut [Cursor::new(base)],
        Cursor::new(target),
        &mut out,
        &EncodeOptions::default(),
    )
    .unwrap();
    out
}

struct Case {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    store: SnapshotStore,
    base_diff: Digest,
    delta_file: std::path::PathBuf,
}

/// A snapshot store holding the base layer, and `delta` written to a file.
fn case(base: &[u8], delta: &[u8]) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let store =
        SnapshotStore::open_with(&root, Limits::default(), WhiteoutFormat::OciMarkers).unwrap();
    let base_diff = Digest::of(base);
    let blob = root.join("base.tar");
    std::fs::write(&blob, base).unwrap();
    store.ensure(&base_diff, &blob, LAYER_TAR).unwrap();
    let delta_file = root.join("layer.delta");
    std::fs::write(&delta_file, delta).unwrap();
    Case {
        _dir: dir,
        root,
        store,
        base_diff,
        delta_file,
    }
}

impl Case {
    fn rebuild(&self, target: &Digest) -> Result<std::path::PathBuf, SnapshotError> {
        self.store.ensure_from_delta(
            target,
            &self.delta_file,
            std::slice::from_ref(&self.base_diff),
            LAYER_TAR,
            &delta::Limits::default(),
        )
    }

    fn assert_nothing_half_made(&self, target: &Digest) {
        assert!(self.store.get(target).is_none());
        let tmp = self.root.join("snapshots/tmp");
        assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
        assert_eq!(self.store.list().unwrap(), vec![self.base_diff.clone()]);
    }
}

fn versions() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let model = noise(1 << 20, 5);
    let mut model2 = model.clone();
    for i in (0..model2.len()).step_by(200) {
        model2[i] ^= 0x11;
    }
    let base = tar_of(&[("etc/a.conf", b"a = 1\n"), ("models/m.bin", &model)]);
    let target = tar_of(&[("etc/a.conf", b"a = 2\n"), ("models/m.bin", &model2)]);
    (base, target, model2)
}

#[test]
fn a_delta_rebuilds_the_exact_layer_into_a_snapshot() {
    let (base, target, model2) = versions();
    let delta = encode(&base, &target);
    assert!(delta.len() < target.len() / 5);
    let c = case(&base, &delta);
    let diff_id = Digest::of(&target);
    let fs = c.rebuild(&diff_id).unwrap();
    assert_eq!(std::fs::read(fs.join("models/m.bin")).unwrap(), model2);
    assert_eq!(std::fs::read(fs.join("etc/a.conf")).unwrap(), b"a = 2\n");
    let info = c.store.info(&diff_id).unwrap().unwrap();
    assert_eq!(info.stats.diff_id, diff_id);
    assert_eq!(info.stats.tar_bytes, target.len() as u64);
    // A second call finds it.
    assert_eq!(c.rebuild(&diff_id).unwrap(), fs);
}

#[test]
fn a_tampered_base_file_is_refused_and_leaves_nothing() {
    let (base, target, _) = versions();
    let c = case(&base, &encode(&base, &target));
    let file = c.store.get(&c.base_diff).unwrap().join("models/m.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4096] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let diff_id = Digest::of(&target);
    let err = c.rebuild(&diff_id).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Delta {
                source: DeltaError::BaseMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    c.assert_nothing_half_made(&diff_id);
}

#[test]
fn a_delta_for_another_layer_or_a_missing_base_is_refused() {
    let (base, target, _) = versions();
    let c = case(&base, &encode(&base, &target));
    let other = Digest::of(b"another layer");
    let err = c.rebuild(&other).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Delta {
                source: DeltaError::WrongTarget { .. },
                ..
            }
        ),
        "{err:?}"
    );
    c.assert_nothing_half_made(&other);

    let diff_id = Digest::of(&target);
    let missing = Digest::of(b"no such base");
    let err = c
        .store
        .ensure_from_delta(
            &diff_id,
            &c.delta_file,
            &[missing],
            LAYER_TAR,
            &delta::Limits::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SnapshotError::MissingBase { .. }), "{err:?}");
    c.assert_nothing_half_made(&diff_id);
}

/// The rebuilt tar is checked by the unpacker too: an entry escaping the
/// layer stops it early (with a megabyte still to come through the pipe),
/// and the unpacker's refusal is what is reported.
#[test]
fn an_unsafe_entry_in_the_rebuilt_tar_is_refused_by_the_unpacker() {
    let (base, _, model2) = versions();
    let mut b = tar::Builder::new(Vec::new());
    let evil = b"owned\n";
    let mut h = header(evil.len());
    h.as_old_mut().name[..8].copy_from_slice(b"../evil\0");
    h.set_cksum();
    b.append(&h, &evil[..]).unwrap();
    let mut h = header(model2.len());
    h.set_cksum();
    b.append_data(&mut h, "models/m.bin", model2.as_slice())
        .unwrap();
    let target = b.into_inner().unwrap();
    let c = case(&base, &encode(&base, &target));
    let diff_id = Digest::of(&target);
    let err = c.rebuild(&diff_id).unwrap_err();
    assert!(matches!(err, SnapshotError::Unpack { .. }), "{err:?}");
    c.assert_nothing_half_made(&diff_id);
    assert!(!Path::new(&c.root).join("snapshots/evil").exists());
}

/// A layer with the tar features a skeleton must walk like the server:
/// a pax `path` record, a GNU long name, a hard link, an empty file, a
/// symlink and a directory.
fn rich_tar(model: &[u8], note: &[u8]) -> Vec<u8> {
    let long = "usr/share/a-directory-with-a-rather-long-name/and-another-one-below-it/file-name-well-over-one-hundred-bytes.txt";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(0);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, "models/", &[][..]).unwrap();
    let mut h = header(model.len());
    b.append_data(&mut h, "models/m.bin", model).unwrap();
    let mut h = header(note.len());
    b.append_data(&mut h, long, note).unwrap();
    b.append_pax_extensions([("path", "models/pax-named-notes.txt".as_bytes())])
        .unwrap();
    let mut h = header(note.len());
    h.set_path("placeholder").unwrap();
    h.set_cksum();
    b.append(&h, note).unwrap();
    let mut h = header(0);
    b.append_data(&mut h, "etc/empty", &[][..]).unwrap();
    let mut h = header(0);
    h.set_entry_type(tar::EntryType::Link);
    b.append_link(&mut h, "models/m-link.bin", "models/m.bin")
        .unwrap();
    let mut h = header(0);
    h.set_entry_type(tar::EntryType::Symlink);
    b.append_link(&mut h, "models/current", "m.bin").unwrap();
    b.into_inner().unwrap()
}

fn skeleton_of(tar: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    delta::skeleton(tar, &mut out).unwrap();
    out
}

#[test]
fn snapshots_keep_the_same_skeleton_the_server_computes() {
    let model = noise(300_000, 8);
    let mut model2 = model.clone();
    model2[1000..1100].fill(3);
    let base = rich_tar(&model, b"notes v1\n");
    let target = rich_tar(&model2, b"notes v2, longer\n");
    let c = case(&base, &encode(&base, &target));
    let skel = c
        .store
        .skeleton(&c.base_diff)
        .expect("base snapshot has a skeleton");
    assert_eq!(std::fs::read(skel).unwrap(), skeleton_of(&base));
    // A snapshot rebuilt from a delta gets one too, from the rebuilt tar.
    let diff_id = Digest::of(&target);
    c.rebuild(&diff_id).unwrap();
    let skel = c
        .store
        .skeleton(&diff_id)
        .expect("rebuilt snapshot has a skeleton");
    assert_eq!(std::fs::read(&skel).unwrap(), skeleton_of(&target));
    // The skeleton goes with its snapshot.
    assert!(c.store.remove(&diff_id).unwrap());
    assert!(!skel.exists());
    assert!(c.store.skeleton(&diff_id).is_none());
}

#[test]
fn a_base_whose_skeleton_differs_or_is_missing_is_refused_before_decoding() {
    let (base, target, _) = versions();
    let c = case(&base, &encode(&base, &target));
    let diff_id = Digest::of(&target);
    let skel = c.store.skeleton(&c.base_diff).unwrap();
    let mut bytes = std::fs::read(&skel).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&skel, &bytes).unwrap();
    let err = c.rebuild(&diff_id).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Delta {
                source: DeltaError::SkeletonMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    c.assert_nothing_half_made(&diff_id);

    // A snapshot from an agent before format v2 has no skeleton.
    std::fs::remove_file(&skel).unwrap();
    assert!(c.store.skeleton(&c.base_diff).is_none());
    let err = c.rebuild(&diff_id).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Delta {
                source: DeltaError::NoSkeleton { .. },
                ..
            }
        ),
        "{err:?}"
    );
    c.assert_nothing_half_made(&diff_id);
}
