#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Layer unpacking and snapshots against the fixtures in
//! `tests/fixtures/tar/` (made by `gen.py` with Python's tarfile, GNU tar and
//! the zstd CLI) and an image made by umoci.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_agent::snapshot::{SnapshotError, SnapshotStore};
use fleet_agent::unpack::{
    Compression, Limits, UnpackError, WhiteoutFormat, apply_snapshots_to_dir, unpack_layer,
    unpack_layer_as,
};
use fleet_protocol::Digest;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tar")
        .join(name)
}

fn diff_id(name: &str) -> Digest {
    let list = fs::read_to_string(fixture("diff_ids.txt")).unwrap();
    let line = list
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in diff_ids.txt"));
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

// ---- layers that must unpack ----------------------------------------------

fn assert_base_layer(root: &Path) {
    assert_eq!(read(&root.join("bin/tool")), "#!/bin/sh\necho tool\n");
    assert_eq!(mode(&root.join("bin/tool")), 0o755);
    assert_eq!(mode(&root.join("bin/su")), 0o4755, "setuid bit kept");
    assert_eq!(mode(&root.join("tmp")), 0o1777, "sticky bit kept");
    assert_eq!(mode(&root.join("etc/private")), 0o600);
    assert_eq!(mode(&root.join("etc/opq/sub")), 0o700);
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(root.join("bin/rel")).unwrap(),
        Path::new("tool")
    );
    let a = fs::metadata(root.join("data/a")).unwrap();
    let b = fs::metadata(root.join("data/b")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link kept as a hard link");
    assert_eq!(a.nlink(), 2);
    assert_eq!(
        fs::symlink_metadata(root.join("etc/keep")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::symlink_metadata(root.join("etc")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::symlink_metadata(root.join("bin/sh")).unwrap().mtime(),
        1_600_000_000
    );
    if is_root() {
        let m = fs::metadata(root.join("etc/private")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_to_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let mut trees = Vec::new();
    for (file, media, comp) in [
        ("base.tar", TAR, Compression::None),
        ("base.tar.gz", GZIP, Compression::Gzip),
        ("base.tar.gz", DOCKER_GZIP, Compression::Gzip),
        ("base.tar.zst", ZSTD, Compression::Zstd),
        // Generic media types: the magic bytes decide.
        (
            "base.tar.zst",
            "application/octet-stream",
            Compression::Zstd,
        ),
        ("base.tar.gz", "", Compression::Gzip),
    ] {
        let dest = tmp.path().join(format!("{file}-{}", trees.len()));
        let stats = unpack_layer(
            &fixture(file),
            media,
            &diff_id(file),
            &dest,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(stats.compression, comp, "{file} as {media}");
        assert_eq!(stats.diff_id, diff_id("base.tar"));
        assert_eq!(
            stats.tar_bytes,
            fs::metadata(fixture("base.tar")).unwrap().len()
        );
        assert_eq!((stats.files, stats.symlinks, stats.hardlinks), (9, 2, 1));
        assert_base_layer(&dest);
        trees.push(tree(&dest));
    }
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn a_layer_made_by_gnu_tar_and_the_zstd_cli_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("gnu");
    let stats = unpack_layer(
        &fixture("gnu.tar.zst"),
        ZSTD,
        &diff_id("gnu.tar.zst"),
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(stats.compression, Compression::Zstd);
    let long = dest.join("usr/share/doc/some-package-with-a-rather-long-name/changelog.Debian.with-a-file-name-long-enough-to-need-gnu-longname-records.gz");
    assert_eq!(read(&long), "changes\n".repeat(100));
    assert_eq!(read(&dest.join("usr/bin/hello")), "#!/bin/sh\necho hello\n");
    assert_eq!(mode(&dest.join("usr/bin/hello")), 0o755);
    assert_eq!(
        fs::metadata(dest.join("usr/bin/hello")).unwrap().ino(),
        fs::metadata(dest.join("usr/bin/hello-again"))
            .unwrap()
            .ino()
    );
    assert_eq!(
        fs::read_link(dest.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
}

#[test]
fn a_diff_id_mismatch_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let wrong = Digest::of(b"not this layer");
    let err = unpack_layer(
        &fixture("base.tar.gz"),
        GZIP,
        &wrong,
        &dest,
        &Limits::default(),
    )
    .unwrap_err();
    match err {
        UnpackError::DiffIdMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, diff_id("base.tar"));
        }
        other => panic!("expected DiffIdMismatch, got {other:?}"),
    }
    assert!(!dest.exists(), "partial destination removed");
}

#[test]
fn a_media_type_that_contradicts_the_blob_or_is_not_a_layer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = diff_id("base.tar");
    let err = unpack_layer(
        &fixture("base.tar.zst"),
        GZIP,
        &d,
        &tmp.path().join("a"),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::CompressionMismatch {
                declared: Compression::Gzip,
                found: Compression::Zstd,
                ..
            }
        ),
        "{err:?}"
    );
    let err = unpack_layer(
        &fixture("base.tar"),
        "application/vnd.oci.image.config.v1+json",
        &d,
        &tmp.path().join("b"),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::UnsupportedMediaType { .. }),
        "{err:?}"
    );
    assert!(!tmp.path().join("a").exists() && !tmp.path().join("b").exists());
}

// ---- hostile layers ----------------------------------------------------------

/// Unpacks a hostile fixture into `<tmp>/deep/dest` and checks that it failed
/// and left nothing, neither at the destination nor in `<tmp>`.
fn refuse(name: &str, media: &str, limits: &Limits) -> UnpackError {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("deep");
    fs::create_dir(&deep).unwrap();
    let dest = deep.join("dest");
    let err = unpack_layer(&fixture(name), media, &diff_id(name), &dest, limits)
        .expect_err(&format!("{name} must be refused"));
    assert!(!dest.exists(), "{name}: partial destination left behind");
    assert_eq!(
        tree(tmp.path()),
        vec!["deep".to_string()],
        "{name}: something written outside dest"
    );
    err
}

#[test]
fn parent_directory_escape_is_refused() {
    let err = refuse("dotdot.tar", TAR, &Limits::default());
    assert!(
        matches!(&err, UnpackError::ParentComponent { path } if path == "a/../../escaped-dotdot"),
        "{err:?}"
    );
}

#[test]
fn absolute_paths_are_refused() {
    let err = refuse("absolute.tar", TAR, &Limits::default());
    assert!(matches!(err, UnpackError::AbsolutePath { .. }), "{err:?}");
    assert!(!Path::new("/tmp/fleet-fixture-absolute-escape").exists());
}

#[test]
fn writing_through_a_relative_symlink_is_refused() {
    let err = refuse("symlink-escape-relative.tar", TAR, &Limits::default());
    assert!(
        matches!(&err, UnpackError::SymlinkInPath { path, through } if path == "evil/escaped-symlink" && through == "evil"),
        "{err:?}"
    );
}

#[test]
fn writing_through_an_absolute_symlink_is_refused() {
    let err = refuse("symlink-escape-absolute.tar", TAR, &Limits::default());
    assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err:?}");
    assert!(!Path::new("/tmp/fleet-fixture-symlink-escape").exists());
}

#[test]
fn hard_links_out_of_the_layer_are_refused() {
    let before = fs::metadata("/etc/passwd").unwrap().nlink();
    let err = refuse("hardlink-escape-absolute.tar", TAR, &Limits::default());
    assert!(
        matches!(&err, UnpackError::HardlinkEscape { target, .. } if target == "/etc/passwd"),
        "{err:?}"
    );
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), before);
    let err = refuse("hardlink-escape-relative.tar", TAR, &Limits::default());
    assert!(matches!(err, UnpackError::HardlinkEscape { .. }), "{err:?}");
}

#[test]
fn hard_links_to_symlinks_or_missing_files_are_refused() {
    let err = refuse("hardlink-to-symlink.tar", TAR, &Limits::default());
    assert!(
        matches!(&err, UnpackError::HardlinkTarget { target, .. } if target == "s"),
        "{err:?}"
    );
    let err = refuse("hardlink-missing.tar", TAR, &Limits::default());
    assert!(matches!(err, UnpackError::HardlinkTarget { .. }), "{err:?}");
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    for (name, kind) in [
        ("chardev.tar", "character device"),
        ("blockdev.tar", "block device"),
        ("fifo.tar", "FIFO"),
    ] {
        let err = refuse(name, TAR, &Limits::default());
        assert!(
            matches!(&err, UnpackError::SpecialFile { kind: k, .. } if *k == kind),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn decompression_bombs_stop_at_the_total_size_cap() {
    let limits = Limits {
        max_total_bytes: 4 << 20,
        ..Limits::default()
    };
    for (name, media) in [("bomb.tar.gz", GZIP), ("bomb.tar.zst", ZSTD)] {
        let blob = fs::metadata(fixture(name)).unwrap().len();
        assert!(
            blob < 100 << 10,
            "{name} is a small blob ({blob} bytes) expanding to 64 MiB"
        );
        let err = refuse(name, media, &limits);
        assert!(
            matches!(err, UnpackError::TooLarge { max } if max == 4 << 20),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn an_oversized_pax_header_is_refused_before_it_is_buffered() {
    let err = refuse("pax-bomb.tar.gz", GZIP, &Limits::default());
    assert!(
        matches!(err, UnpackError::MetadataTooLarge { max } if max == 1 << 20),
        "{err:?}"
    );
}

#[test]
fn a_file_over_the_single_file_cap_is_refused() {
    let limits = Limits {
        max_file_size: 1 << 20,
        ..Limits::default()
    };
    let err = refuse("bomb.tar.zst", ZSTD, &limits);
    assert!(
        matches!(&err, UnpackError::FileTooLarge { path, max } if path == "zeros" && *max == 1 << 20),
        "{err:?}"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let limits = Limits {
        max_entries: 1000,
        ..Limits::default()
    };
    let err = refuse("many-entries.tar.gz", GZIP, &limits);
    assert!(
        matches!(err, UnpackError::TooManyEntries { max: 1000 }),
        "{err:?}"
    );
    // Under the default limits the same layer is fine.
    let tmp = tempfile::tempdir().unwrap();
    let stats = unpack_layer(
        &fixture("many-entries.tar.gz"),
        GZIP,
        &diff_id("many-entries.tar.gz"),
        &tmp.path().join("d"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(stats.files, 3000);
}

#[test]
fn overlong_paths_are_refused() {
    let err = refuse("long-path.tar", TAR, &Limits::default());
    assert!(
        matches!(err, UnpackError::PathTooLong { max: 4096, .. }),
        "{err:?}"
    );
}

// ---- whiteouts and stacking --------------------------------------------------

/// The view of base.tar with upper.tar.gz on top.
fn assert_stacked_view(root: &Path) {
    assert!(!root.join("etc/gone").exists(), "whiteout removed etc/gone");
    assert!(
        !root.join("dir-gone").exists(),
        "whiteout removed dir-gone/"
    );
    assert_eq!(read(&root.join("etc/keep")), "keep2");
    assert_eq!(read(&root.join("etc/private")), "secret");
    let opq: Vec<_> = tree(&root.join("etc/opq"));
    assert_eq!(
        opq,
        vec!["new".to_string()],
        "opaque dir hides the lower content"
    );
    assert_eq!(
        tree(&root.join("data")),
        vec!["c".to_string()],
        "data/ deleted then re-created"
    );
    assert_eq!(read(&root.join("newdir/file")), "file");
    assert_eq!(mode(&root.join("newdir")), 0o750);
    assert_eq!(read(&root.join("bin/tool")), "#!/bin/sh\necho tool\n");
    assert_eq!(mode(&root.join("bin/su")), 0o4755);
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    for p in tree(root) {
        assert!(
            !p.rsplit('/').next().unwrap().starts_with(".wh."),
            "marker {p} leaked into the view"
        );
        let m = fs::symlink_metadata(root.join(&p)).unwrap();
        assert!(
            !m.file_type().is_char_device(),
            "whiteout device {p} leaked into the view"
        );
    }
}

fn unpack_pair(dir: &Path, format: WhiteoutFormat) -> (PathBuf, PathBuf) {
    let lower = dir.join("lower");
    let upper = dir.join("upper");
    unpack_layer_as(
        &fixture("base.tar"),
        TAR,
        &diff_id("base.tar"),
        &lower,
        &Limits::default(),
        format,
    )
    .unwrap();
    let stats = unpack_layer_as(
        &fixture("upper.tar.gz"),
        GZIP,
        &diff_id("upper.tar.gz"),
        &upper,
        &Limits::default(),
        format,
    )
    .unwrap();
    assert_eq!(stats.whiteout_format, format);
    assert_eq!(stats.whiteouts, 4);
    (lower, upper)
}

#[test]
fn oci_marker_snapshots_keep_whiteouts_as_files_and_flatten_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper) = unpack_pair(tmp.path(), WhiteoutFormat::OciMarkers);
    assert_eq!(fs::metadata(upper.join("etc/.wh.gone")).unwrap().len(), 0);
    assert!(upper.join(".wh.dir-gone").is_file());
    assert!(upper.join("etc/opq/.wh..wh..opq").is_file());
    let dest = tmp.path().join("rootfs");
    apply_snapshots_to_dir(&[&lower, &upper], &dest).unwrap();
    assert_stacked_view(&dest);
    // Hard links within a snapshot stay hard links in the copy.
    let lower_only = tmp.path().join("lower-only");
    apply_snapshots_to_dir(&[&lower], &lower_only).unwrap();
    assert_base_layer(&lower_only);
}

#[test]
fn overlay_format_snapshots_use_devices_and_xattrs_and_flatten_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    if WhiteoutFormat::detect(tmp.path()) != WhiteoutFormat::Overlay {
        eprintln!("SKIPPED: overlay whiteout format needs root (mknod, trusted.* xattrs)");
        return;
    }
    let (lower, upper) = unpack_pair(tmp.path(), WhiteoutFormat::Overlay);
    let wh = fs::symlink_metadata(upper.join("etc/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "0/0 whiteout device"
    );
    assert!(
        fs::symlink_metadata(upper.join("dir-gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(!upper.join("etc/.wh.gone").exists());
    assert!(!upper.join("etc/opq/.wh..wh..opq").exists());
    for opaque in ["etc/opq", "data"] {
        let mut buf = [0u8; 4];
        let n = rustix::fs::lgetxattr(upper.join(opaque), "trusted.overlay.opaque", &mut buf[..])
            .unwrap();
        assert_eq!(&buf[..n], b"y", "{opaque} is opaque");
    }
    let dest = tmp.path().join("rootfs");
    apply_snapshots_to_dir(&[&lower, &upper], &dest).unwrap();
    assert_stacked_view(&dest);
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlay_format_snapshots_stack_as_overlayfs_lowerdirs() {
    let tmp = tempfile::tempdir().unwrap();
    if WhiteoutFormat::detect(tmp.path()) != WhiteoutFormat::Overlay {
        eprintln!("SKIPPED: overlayfs stacking needs root");
        return;
    }
    let store = SnapshotStore::open(tmp.path()).unwrap();
    assert_eq!(store.whiteout_format(), WhiteoutFormat::Overlay);
    let lower = store
        .ensure(&diff_id("base.tar"), &fixture("base.tar.zst"), ZSTD)
        .unwrap();
    let upper = store
        .ensure(&diff_id("upper.tar.gz"), &fixture("upper.tar.gz"), GZIP)
        .unwrap();
    let (work, up, merged) = (
        tmp.path().join("work"),
        tmp.path().join("up"),
        tmp.path().join("merged"),
    );
    for d in [&work, &up, &merged] {
        fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        upper.display(),
        lower.display(),
        up.display(),
        work.display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .output()
        .unwrap();
    if !out.status.success() {
        panic!(
            "mount -t overlay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _unmount = Unmount(merged.clone());
    assert_stacked_view(&merged);
    // Writes go to the container's upper dir, never into a snapshot.
    let before = tree(&lower);
    fs::write(merged.join("etc/keep"), "changed").unwrap();
    fs::remove_file(merged.join("bin/tool")).unwrap();
    assert_eq!(read(&lower.join("etc/keep")), "keep");
    assert_eq!(read(&upper.join("etc/keep")), "keep2");
    assert_eq!(tree(&lower), before);
}

// ---- snapshot store ------------------------------------------------------------

#[test]
fn the_store_unpacks_once_and_reuses_the_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_with(tmp.path(), Limits::default(), WhiteoutFormat::OciMarkers)
        .unwrap();
    let d = diff_id("base.tar");
    assert!(store.get(&d).is_none());
    let p = store.ensure(&d, &fixture("base.tar.gz"), GZIP).unwrap();
    assert_eq!(p, store.root().join("sha256").join(d.hex()).join("fs"));
    assert_base_layer(&p);
    let info = store.info(&d).unwrap().unwrap();
    assert_eq!(info.stats.diff_id, d);
    assert_eq!(info.whiteout_format(), WhiteoutFormat::OciMarkers);
    // A second ensure does no work: it does not even look at the blob.
    fs::write(p.join("proof-of-reuse"), "").unwrap();
    let again = store
        .ensure(&d, Path::new("/nonexistent/blob"), GZIP)
        .unwrap();
    assert_eq!(again, p);
    assert!(again.join("proof-of-reuse").exists());
    assert_eq!(store.list().unwrap(), vec![d.clone()]);
    assert!(tree(&store.root().join("tmp")).is_empty());
}

#[test]
fn a_failed_unpack_leaves_no_snapshot_and_no_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_with(tmp.path(), Limits::default(), WhiteoutFormat::OciMarkers)
        .unwrap();
    let d = diff_id("symlink-escape-relative.tar");
    let err = store
        .ensure(&d, &fixture("symlink-escape-relative.tar"), TAR)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SnapshotError::Unpack {
                source: UnpackError::SymlinkInPath { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // The wrong diff_id for a good layer.
    let err = store
        .ensure(&diff_id("upper.tar.gz"), &fixture("base.tar"), TAR)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SnapshotError::Unpack {
                source: UnpackError::DiffIdMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(tree(&store.root().join("tmp")).is_empty());
    assert!(tree(&store.root().join("sha256")).is_empty());
    assert!(!tmp.path().join("escaped-symlink").exists());
}

#[test]
fn opening_the_store_removes_what_a_crash_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_with(tmp.path(), Limits::default(), WhiteoutFormat::OciMarkers)
        .unwrap();
    let d = diff_id("base.tar");
    store.ensure(&d, &fixture("base.tar"), TAR).unwrap();
    drop(store);
    // A crash mid-unpack (a read-only dir inside, as an unprivileged agent
    // would leave it), and a snapshot dir without its completion marker.
    let half = tmp.path().join("snapshots/tmp/0123456789ab-1-0/fs/ro");
    fs::create_dir_all(&half).unwrap();
    fs::set_permissions(&half, fs::Permissions::from_mode(0o555)).unwrap();
    let incomplete = Digest::of(b"incomplete");
    fs::create_dir_all(
        tmp.path()
            .join("snapshots/sha256")
            .join(incomplete.hex())
            .join("fs"),
    )
    .unwrap();
    let store = SnapshotStore::open_with(tmp.path(), Limits::default(), WhiteoutFormat::OciMarkers)
        .unwrap();
    assert!(tree(&store.root().join("tmp")).is_empty());
    assert_eq!(store.list().unwrap(), vec![d.clone()]);
    assert!(store.get(&incomplete).is_none());
    assert!(!store.root().join("sha256").join(incomplete.hex()).exists());
    assert_base_layer(&store.get(&d).unwrap());
}

#[test]
fn remove_and_gc_delete_exactly_the_unwanted_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_with(tmp.path(), Limits::default(), WhiteoutFormat::OciMarkers)
        .unwrap();
    let base = diff_id("base.tar");
    let upper = diff_id("upper.tar.gz");
    let gnu = diff_id("gnu.tar.zst");
    store.ensure(&base, &fixture("base.tar"), TAR).unwrap();
    store
        .ensure(&upper, &fixture("upper.tar.gz"), GZIP)
        .unwrap();
    store.ensure(&gnu, &fixture("gnu.tar.zst"), ZSTD).unwrap();
    let mut all = vec![base.clone(), upper.clone(), gnu.clone()];
    all.sort();
    assert_eq!(store.list().unwrap(), all);
    assert!(store.remove(&gnu).unwrap());
    assert!(!store.remove(&gnu).unwrap());
    assert!(store.get(&gnu).is_none());
    let keep: HashSet<Digest> = [base.clone()].into();
    assert_eq!(store.gc(&keep).unwrap(), vec![upper.clone()]);
    assert_eq!(store.list().unwrap(), vec![base.clone()]);
    assert_base_layer(&store.get(&base).unwrap());
    assert!(tree(&store.root().join("tmp")).is_empty());
}

// ---- an image made by umoci ----------------------------------------------------

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_busybox_layer_made_by_umoci_unpacks_and_flattens() {
    let busybox = Path::new("/bin/busybox");
    if Command::new("umoci").arg("--version").output().is_err() || !busybox.exists() {
        eprintln!("SKIPPED: needs umoci and busybox-static (scripts/setup.sh installs them)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let bundle = tmp.path().join("bundle");
    let rootless: &[&str] = if is_root() { &[] } else { &["--rootless"] };
    run(Command::new("umoci").args(["init", "--layout"]).arg(&img));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:latest", img.display())));
    run(Command::new("umoci")
        .arg("unpack")
        .args(rootless)
        .arg("--image")
        .arg(format!("{}:latest", img.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", rootfs.join("bin/ls")).unwrap();
    run(Command::new("umoci")
        .arg("repack")
        .arg("--image")
        .arg(format!("{}:latest", img.display()))
        .arg(&bundle));

    // Walk the OCI layout: index → manifest → last layer + config diff_id.
    let blob = |d: &str| {
        img.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    };
    let index = json(img.join("index.json"));
    let manifest = json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let media = layer["mediaType"].as_str().unwrap();
    let diff: Digest = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let store = SnapshotStore::open(tmp.path()).unwrap();
    let snap = store
        .ensure(&diff, &blob(layer["digest"].as_str().unwrap()), media)
        .unwrap();
    assert_eq!(
        fs::read(snap.join("bin/busybox")).unwrap(),
        fs::read(busybox).unwrap()
    );
    assert_eq!(mode(&snap.join("bin/busybox")), mode(busybox));
    assert_eq!(
        fs::read_link(snap.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(snap.join("bin/ls")).unwrap(),
        Path::new("/bin/busybox")
    );

    let flat = tmp.path().join("flat");
    apply_snapshots_to_dir(&[&snap], &flat).unwrap();
    let out = Command::new(flat.join("bin/busybox"))
        .arg("echo")
        .arg("from the snapshot")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the snapshot\n");
}
