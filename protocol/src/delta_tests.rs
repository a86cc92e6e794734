use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::format::{Header, OP_COPY};
use super::*;
use crate::Digest;

/// Deterministic pseudo-random bytes (xorshift), compressible like nothing.
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

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A file whose name travels in a pax `path` record.
    Pax(&'a str, &'a [u8]),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let result = match e {
            E::File(p, data) => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data)
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..])
            }
            E::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, t)
            }
            E::Hardlink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t)
            }
            E::Pax(p, data) => {
                b.append_pax_extensions([("path", p.as_bytes())]).unwrap();
                h.set_size(data.len() as u64);
                h.set_path("pax-placeholder").unwrap();
                h.set_cksum();
                b.append(&h, *data)
            }
        };
        result.unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(bytes: &[u8]) -> Digest {
    Digest::from_sha256(Sha256::digest(bytes).into())
}

const LONG: &str = "usr/share/a-directory-with-a-rather-long-name/and-another-one-below-it/file-name-well-over-one-hundred-bytes.txt";

struct Fixture {
    base: Vec<u8>,
    target: Vec<u8>,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let big = noise(3 << 20, 7);
    let mut big2 = big.clone();
    for i in (0..big2.len()).step_by(100) {
        big2[i] ^= 0x5a; // 1% of bytes changed in place
    }
    let meta = noise(20_000, 3);
    let mut meta2 = meta.clone();
    meta2[100..120].copy_from_slice(b"Version: 1.3 changed");
    let keep = noise(5_000, 9);
    let data = noise(50_000, 17);
    let mut data2 = data.clone();
    data2[10_000..10_050].fill(0);
    let base = tar_of(&[
        E::Dir("usr/"),
        E::File("usr/bin/tool", &big),
        E::File("usr/lib/pkg-1.2.dist-info/METADATA", &meta),
        E::File("etc/keep.conf", &keep),
        E::File("etc/deleted", b"gone in v2"),
        E::File("srv/old/data.bin", &data),
        E::File("etc/empty", b""),
        E::Symlink("usr/bin/t", "tool"),
        E::File(LONG, &noise(1000, 5)),
    ]);
    let target = tar_of(&[
        E::Dir("usr/"),
        E::File("usr/bin/tool", &big2),
        E::File("usr/lib/pkg-1.3.dist-info/METADATA", &meta2),
        E::File("etc/keep.conf", &keep),
        E::File("opt/moved.conf", &keep),
        E::File("etc/empty", b""),
        E::File("etc/added", &noise(3000, 11)),
        E::File("srv/renamed/data.bin", &data2),
        E::Symlink("usr/bin/t", "tool"),
        E::Hardlink("usr/bin/tool2", "usr/bin/tool"),
        E::File(LONG, &noise(1000, 5)),
        E::Pax(
            "usr/share/pax/another-directory-name-that-is-long/and-a-file-name-that-is-longer-than-a-hundred.bin",
            &noise(700, 13),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(&base[..])
        .unpack(dir.path().join("base"))
        .unwrap();
    Fixture { base, target, dir }
}

fn small_opts() -> EncodeOptions {
    EncodeOptions {
        level: 3,
        probe_level: 1,
        large_frame: 32 << 10,
        segment: 64 << 10,
        slack: 16 << 10,
        min_patch: 256,
        group_file_max: 24 << 10,
        inline_max: 8 << 10,
        max_prefix: 1 << 20,
    }
}

/// Writes the skeleton of `tar` to `file`, as the agent does on unpack.
fn write_skeleton(tar: &[u8], file: &Path) {
    let out = std::fs::File::create(file).unwrap();
    skeleton(tar, out).unwrap();
}

fn encode_fixture(f: &Fixture) -> (Vec<u8>, Encoded) {
    let mut delta = Vec::new();
    let mut bases = [Cursor::new(f.base.clone())];
    let encoded = encode(
        &mut bases,
        Cursor::new(&f.target),
        &mut delta,
        &small_opts(),
    )
    .unwrap();
    (delta, encoded)
}

fn bases_of(f: &Fixture) -> DirBases {
    let mut b = DirBases::new();
    b.insert(sha(&f.base), f.dir.path().join("base"));
    let skel = f.dir.path().join("base.skeleton");
    if !skel.exists() {
        write_skeleton(&f.base, &skel);
    }
    b.set_skeleton(sha(&f.base), skel);
    b
}

fn run(
    delta: &[u8],
    bases: &DirBases,
    expected: &Digest,
    limits: &Limits,
) -> (Result<Applied, DeltaError>, Vec<u8>) {
    let mut out = Vec::new();
    let r = apply(delta, bases, &mut out, expected, limits);
    (r, out)
}

#[test]
fn round_trip_rebuilds_the_exact_target_tar() {
    let f = fixture();
    let (delta, encoded) = encode_fixture(&f);
    assert_eq!(encoded.target, sha(&f.target));
    assert_eq!(encoded.bases, vec![sha(&f.base)]);
    assert_eq!(encoded.delta_bytes, delta.len() as u64);
    assert_eq!(
        encoded.copied, 11_000,
        "keep.conf, moved.conf (renamed, same SHA-256) and the long name copied: {encoded:?}"
    );
    assert_eq!(
        encoded.patched,
        (3 << 20) + 20_000 + 50_000,
        "tool, METADATA (same shape) and data.bin (same name) patched: {encoded:?}"
    );
    let (r, out) = run(&delta, &bases_of(&f), &sha(&f.target), &Limits::default());
    let applied = r.unwrap();
    assert!(out == f.target, "rebuilt tar differs from the target");
    assert_eq!(applied.bytes, f.target.len() as u64);
    assert_eq!(applied.sha256, sha(&f.target));
    // 1% of a 3 MiB incompressible file changed: the delta is far below it.
    assert!(
        delta.len() < f.target.len() / 4,
        "delta {} of {}",
        delta.len(),
        f.target.len()
    );
}

#[test]
fn identical_layer_costs_only_headers() {
    let f = fixture();
    let mut delta = Vec::new();
    let mut bases = [Cursor::new(f.base.clone())];
    let e = encode(&mut bases, Cursor::new(&f.base), &mut delta, &small_opts()).unwrap();
    assert_eq!(e.patched, 0);
    // Every entry is matched against the base's skeleton: the header and a
    // few bytes of control stream.
    assert!(delta.len() < 400, "{} bytes", delta.len());
    let (r, out) = run(&delta, &bases_of(&f), &sha(&f.base), &Limits::default());
    assert_eq!(r.unwrap().sha256, sha(&f.base));
    assert!(out == f.base);
}

/// 300 small files, 20 of them changed a little, 2 added, 2 removed: the
/// unchanged entries cost a few bytes each (matched against the base's
/// skeleton), the changed ones are patched together in one group.
#[test]
fn many_small_files_cost_little_per_entry() {
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let text = format!(
                "# module {i}\n{}",
                "def f(x):\n    return x + 1\n".repeat(40)
            );
            (
                format!("usr/lib/python3/site-packages/pkg/mod_{i:03}.py"),
                text.into_bytes(),
            )
        })
        .collect();
    let mut changed = files.clone();
    for (i, (_, bytes)) in changed.iter_mut().enumerate().filter(|(i, _)| i % 15 == 0) {
        bytes.extend_from_slice(format!("VERSION = '2.{i}'\n").as_bytes());
    }
    changed.remove(7);
    changed.remove(100);
    changed.push((
        "usr/lib/python3/site-packages/pkg/new.py".into(),
        b"print('new')\n".to_vec(),
    ));
    let base = tar_of(&files.iter().map(|(p, b)| E::File(p, b)).collect::<Vec<_>>());
    let target = tar_of(
        &changed
            .iter()
            .map(|(p, b)| E::File(p, b))
            .collect::<Vec<_>>(),
    );
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(&base[..])
        .unpack(dir.path().join("fs"))
        .unwrap();
    write_skeleton(&base, &dir.path().join("skeleton"));
    let mut bases = DirBases::new();
    bases.insert(sha(&base), dir.path().join("fs"));
    bases.set_skeleton(sha(&base), dir.path().join("skeleton"));
    let mut delta = Vec::new();
    let opts = EncodeOptions {
        level: 19,
        ..small_opts()
    };
    let e = encode(
        &mut [Cursor::new(base.clone())],
        Cursor::new(&target),
        &mut delta,
        &opts,
    )
    .unwrap();
    // 20 changed files patched, the 278 others copied.
    assert!(e.patched > 20 * 1000 && e.copied > 278 * 1000, "{e:?}");
    let (r, out) = run(&delta, &bases, &sha(&target), &Limits::default());
    r.unwrap();
    assert!(out == target);
    assert!(
        delta.len() < 1500,
        "{} bytes for {} entries",
        delta.len(),
        changed.len()
    );
}

/// A base skeleton over `max_prefix` is left out of the prefix: the delta
/// still rebuilds the target, without asking the device for it.
#[test]
fn a_skeleton_over_the_prefix_cap_is_left_out() {
    let f = fixture();
    let mut delta = Vec::new();
    let opts = EncodeOptions {
        max_prefix: 100,
        ..small_opts()
    };
    let e = encode(
        &mut [Cursor::new(f.base.clone())],
        Cursor::new(&f.target),
        &mut delta,
        &opts,
    )
    .unwrap();
    assert_eq!(e.prefix_len, 0);
    let mut bases = DirBases::new();
    bases.insert(sha(&f.base), f.dir.path().join("base"));
    let (r, out) = run(&delta, &bases, &sha(&f.target), &Limits::default());
    assert_eq!(r.unwrap().sha256, sha(&f.target));
    assert!(out == f.target);
}

#[test]
fn tampered_base_file_is_refused_by_name() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    let tool = f.dir.path().join("base/usr/bin/tool");
    let mut bytes = std::fs::read(&tool).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(&tool, bytes).unwrap();
    let (r, _) = run(&delta, &bases_of(&f), &sha(&f.target), &Limits::default());
    match r {
        Err(DeltaError::BaseMismatch { path, .. }) => assert_eq!(path, "usr/bin/tool"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tampered_copied_file_is_refused() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    std::fs::write(f.dir.path().join("base/etc/keep.conf"), noise(5_000, 1)).unwrap();
    let (r, _) = run(&delta, &bases_of(&f), &sha(&f.target), &Limits::default());
    assert!(
        matches!(r, Err(DeltaError::BaseMismatch { ref path, .. }) if path == "etc/keep.conf"),
        "{r:?}"
    );
}

#[test]
fn truncated_delta_is_refused_as_truncated() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    for cut in [5, 40, delta.len() / 2, delta.len() - 10, delta.len() - 1] {
        let (r, _) = run(
            &delta[..cut],
            &bases_of(&f),
            &sha(&f.target),
            &Limits::default(),
        );
        assert!(
            matches!(r, Err(DeltaError::Truncated { .. })),
            "cut at {cut}: {r:?}"
        );
    }
}

#[test]
fn flipped_byte_never_yields_success() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    for at in (60..delta.len()).step_by(delta.len() / 97 + 1) {
        let mut bad = delta.clone();
        bad[at] ^= 0x40;
        let (r, _) = run(&bad, &bases_of(&f), &sha(&f.target), &Limits::default());
        assert!(r.is_err(), "flip at {at} accepted");
    }
}

#[test]
fn delta_for_another_target_is_refused_before_writing() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    let (r, out) = run(&delta, &bases_of(&f), &sha(b"other"), &Limits::default());
    assert!(matches!(r, Err(DeltaError::WrongTarget { .. })), "{r:?}");
    assert!(out.is_empty());
}

#[test]
fn window_over_the_device_cap_is_refused_as_memory_bomb() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    let limits = Limits {
        max_window: 32 << 10,
        ..Limits::default()
    };
    let (r, out) = run(&delta, &bases_of(&f), &sha(&f.target), &limits);
    match r {
        Err(e @ DeltaError::WindowOverCap { .. }) => assert!(e.to_string().contains("memory bomb")),
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
}

#[test]
fn unknown_version_and_magic_are_refused() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    for version in [1u16, 3] {
        let mut other = delta.clone();
        other[8..10].copy_from_slice(&version.to_le_bytes());
        let (r, _) = run(&other, &bases_of(&f), &sha(&f.target), &Limits::default());
        assert!(
            matches!(r, Err(DeltaError::UnsupportedVersion { version: v }) if v == version),
            "v{version}: {r:?}"
        );
    }
    let mut magic = delta;
    magic[0] = b'X';
    let (r, _) = run(&magic, &bases_of(&f), &sha(&f.target), &Limits::default());
    assert!(matches!(r, Err(DeltaError::BadMagic)), "{r:?}");
}

#[test]
fn missing_base_layer_is_refused() {
    let f = fixture();
    let (delta, _) = encode_fixture(&f);
    let (r, _) = run(
        &delta,
        &DirBases::new(),
        &sha(&f.target),
        &Limits::default(),
    );
    assert!(matches!(r, Err(DeltaError::UnknownBase { .. })), "{r:?}");
}

/// A hand-made delta (no prefix) whose control stream is `ops`, in one
/// chunk.
fn hand_delta(base: &[u8; 32], ops: &[u8]) -> Vec<u8> {
    let header = Header {
        target: [0; 32],
        target_size: 10,
        bases: vec![*base],
        window_cap: 1 << 20,
        prefix_bases: Vec::new(),
        prefix_len: 0,
        prefix_sha: Sha256::digest(b"").into(),
    };
    let mut d = header.encode();
    let frame = zstd::bulk::compress(ops, 3).unwrap();
    d.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    d.extend_from_slice(&frame);
    d
}

/// A hand-made delta whose one op copies `path` from base 0.
fn copy_delta(base: &[u8; 32], path: &str) -> Vec<u8> {
    let mut ops = vec![OP_COPY];
    ops.extend_from_slice(&(path.len() as u16).to_le_bytes());
    ops.extend_from_slice(path.as_bytes());
    ops.extend_from_slice(&10u64.to_le_bytes());
    ops.extend_from_slice(&[0; 32]);
    hand_delta(base, &ops)
}

#[test]
fn paths_escaping_the_base_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layer");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("secret"), b"outside!!!").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
    let mut bases = DirBases::new();
    let id = [1u8; 32];
    bases.insert(Digest::from_sha256(id), &root);
    let target = Digest::from_sha256([0; 32]);
    for path in ["../secret", "/etc/passwd", "a/./b", "a//b", ""] {
        let (r, _) = run(&copy_delta(&id, path), &bases, &target, &Limits::default());
        assert!(
            matches!(r, Err(DeltaError::UnsafePath { .. })),
            "{path:?}: {r:?}"
        );
    }
    let (r, _) = run(
        &copy_delta(&id, "escape"),
        &bases,
        &target,
        &Limits::default(),
    );
    assert!(
        matches!(r, Err(DeltaError::BaseOpen { .. })),
        "symlink escape: {r:?}"
    );
}

#[test]
fn ratio_decides_between_delta_and_whole_layer() {
    assert!(worth_sending(79, 100, DEFAULT_RATIO));
    assert!(!worth_sending(80, 100, DEFAULT_RATIO));
    assert!(!worth_sending(1, 0, DEFAULT_RATIO));
    assert!(worth_sending(49, 100, 0.5));
    assert!(
        !worth_sending(90, 100, f64::NAN),
        "a bad ratio falls back to the default"
    );
}

#[test]
fn path_rule() {
    assert!(path_is_safe("usr/bin/tool"));
    for bad in ["", "/x", "../x", "a/../b", "a/", "a\0b"] {
        assert!(!path_is_safe(bad), "{bad:?}");
    }
    assert!(!Path::new("x").is_absolute());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn mutated_deltas_never_panic_nor_pass_with_a_wrong_result(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let f = small_fixture();
        let (mut delta, target) = (f.0.clone(), f.1.clone());
        for (at, x) in flips {
            let i = at.index(delta.len());
            delta[i] ^= x;
        }
        if let Some(c) = cut {
            delta.truncate(c.index(delta.len()));
        }
        let mut out = Vec::new();
        if let Ok(applied) = apply(&delta[..], &f.2, &mut out, &sha(&target), &Limits::default()) {
            prop_assert_eq!(applied.sha256, sha(&target));
            prop_assert!(out == target);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Any control stream (ops from the real tags with arbitrary fields)
    /// is refused or rebuilds exactly its target: never a panic.
    #[test]
    fn arbitrary_control_streams_never_panic(
        ops in proptest::collection::vec(
            (prop::sample::select(vec![1u8, 2, 3, 4, 5, 6, 7, 0xFF, 9]),
             proptest::collection::vec(any::<u8>(), 0..24)),
            0..12,
        ),
    ) {
        let f = small_fixture();
        let mut control = Vec::new();
        for (tag, fields) in ops {
            control.push(tag);
            if matches!(tag, 3 | 4 | 6) {
                // A real path now and then, so base files open.
                control.extend_from_slice(&1u16.to_le_bytes());
                control.push(b'f');
            }
            control.extend_from_slice(&fields);
        }
        let delta = hand_delta(&f.4, &control);
        let mut out = Vec::new();
        let expected = Digest::from_sha256([0; 32]);
        let r = apply(&delta[..], &f.2, &mut out, &expected, &Limits::default());
        prop_assert!(r.is_err());
    }
}

/// (delta, target tar, bases, their directory, the base's diff_id), built
/// once for the property tests.
type SmallFixture = (Vec<u8>, Vec<u8>, DirBases, tempfile::TempDir, [u8; 32]);

fn small_fixture() -> &'static SmallFixture {
    static ONCE: std::sync::OnceLock<SmallFixture> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let a = noise(200_000, 21);
        let mut b = a.clone();
        b[50_000..50_100].fill(7);
        let base = tar_of(&[
            E::File("f", &a),
            E::File("g", b"same content here, long enough to copy it"),
        ]);
        let target = tar_of(&[
            E::File("f", &b),
            E::File("g", b"same content here, long enough to copy it"),
            E::File("h", b"new"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(&base[..])
            .unpack(dir.path().join("fs"))
            .unwrap();
        let opts = EncodeOptions {
            min_patch: 16,
            ..small_opts()
        };
        let mut delta = Vec::new();
        encode(
            &mut [Cursor::new(base.clone())],
            Cursor::new(&target),
            &mut delta,
            &opts,
        )
        .unwrap();
        let mut bases = DirBases::new();
        bases.insert(sha(&base), dir.path().join("fs"));
        write_skeleton(&base, &dir.path().join("skeleton"));
        bases.set_skeleton(sha(&base), dir.path().join("skeleton"));
        let base_sha = Sha256::digest(&base).into();
        (delta, target, bases, dir, base_sha)
    })
}

#[test]
fn a_skeleton_replayed_over_its_unpacked_files_is_the_exact_layer() {
    let f = fixture();
    let bases = bases_of(&f);
    let skel = std::fs::read(f.dir.path().join("base.skeleton")).unwrap();
    let layer = sha(&f.base);
    let mut out = Vec::new();
    let done = replay_skeleton(&skel[..], &layer, &bases, &mut out).unwrap();
    assert_eq!(out, f.base);
    assert_eq!(done.sha256, layer);
    assert_eq!(done.bytes, f.base.len() as u64);
}

#[test]
fn replay_names_the_damaged_file_and_refuses_a_damaged_skeleton() {
    let f = fixture();
    let bases = bases_of(&f);
    let skel = std::fs::read(f.dir.path().join("base.skeleton")).unwrap();
    let layer = sha(&f.base);
    let replay = |skel: &[u8]| replay_skeleton(skel, &layer, &bases, std::io::sink());

    // A header byte of the skeleton's own (Raw) bytes changed.
    let mut bad = skel.clone();
    bad[10] ^= 1;
    assert!(matches!(replay(&bad), Err(DeltaError::HashMismatch { .. })));
    assert!(matches!(
        replay(&skel[..skel.len() - 3]),
        Err(DeltaError::Truncated { .. })
    ));

    let keep = f.dir.path().join("base/etc/keep.conf");
    let mut bytes = std::fs::read(&keep).unwrap();
    bytes[7] ^= 0x80;
    std::fs::write(&keep, &bytes).unwrap();
    assert!(matches!(
        replay(&skel),
        Err(DeltaError::BaseMismatch { path, .. }) if path == "etc/keep.conf"
    ));
    bytes[7] ^= 0x80;
    bytes.push(0);
    std::fs::write(&keep, &bytes).unwrap();
    assert!(matches!(
        replay(&skel),
        Err(DeltaError::BaseMismatch { path, .. }) if path == "etc/keep.conf"
    ));

    std::fs::remove_file(&keep).unwrap();
    assert!(matches!(
        replay(&skel),
        Err(DeltaError::BaseOpen { path, .. }) if path == "etc/keep.conf"
    ));
}
