//! The host as an attacker on the device sees it: an image carrying a
//! setuid-root binary, pulled and unpacked by the real `fleet-agent pull
//! --unpack` as root, must not be reachable by another local user through
//! its host path under the state directory; and a state directory left
//! open (0755) is repaired at the next start, with a warning.
//!
//! Needs root (ownership and setuid bits are only kept by a root unpack, and
//! switching to `nobody` needs it), `setpriv` (util-linux) and
//! `docker-registry`; says SKIPPED otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fleet_protocol::Digest;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
/// `nobody` on Debian.
const NOBODY: &str = "65534";

fn prerequisites() -> bool {
    if !is_root() {
        skip("host hardening tests need root (a root unpack keeps setuid bits; setpriv to nobody)");
        return false;
    }
    if !have("setpriv") {
        skip("setpriv is not installed (apt-get install util-linux)");
        return false;
    }
    true
}

/// A layer with `bin/busybox`, owned by root, mode 4755.
fn setuid_layer() -> Layer {
    use std::io::Write as _;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_else(|| b"#!/bin/sh\nid\n".to_vec());
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(0);
    dir.set_size(0);
    dir.set_cksum();
    b.append_data(&mut dir, "bin/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    Layer {
        media_type: LAYER_GZIP,
        blob: enc.finish().unwrap(),
        diff_id: Digest::of(&tar),
    }
}

/// Runs `argv` from a shell of nobody's (no supplementary groups). Through
/// a shell because setpriv itself finds and opens the program before it
/// drops root (it would run a binary nobody cannot reach).
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            "exec \"$@\"",
            "sh",
        ])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// A parent that everyone may traverse (as `/var/lib` is), so that only the
/// state directory's own modes protect what is inside.
fn open_parent() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn agent(args: &[&str], state: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_setuid_binary_of_an_unpacked_image_is_out_of_reach_of_other_users() {
    if !prerequisites() {
        return;
    }
    let Some(reg) = Registry::start().await else {
        return;
    };
    let layer = setuid_layer();
    push_image(
        &reg.base(),
        "edge/suid",
        "1",
        std::slice::from_ref(&layer),
        "amd64",
    )
    .await;
    let parent = open_parent();
    let state = parent.path().join("fleet-agent");
    let reference = format!("{}/edge/suid:1", reg.addr);
    let out = agent(&["pull", &reference, "--reserve", "0", "--unpack"], &state);
    assert!(out.status.success(), "pull: {out:?}");

    let binary: PathBuf = state
        .join("snapshots/sha256")
        .join(layer.diff_id.hex())
        .join("fs/bin/busybox");
    // The attack surface is real: the binary is there, root's, setuid.
    let meta = std::fs::metadata(&binary).unwrap();
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        meta.mode() & 0o4000,
        0o4000,
        "setuid bit kept in the snapshot"
    );
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&state.join("snapshots")), 0o700, "snapshot tree");

    let path = binary.to_str().unwrap();
    let stat = as_nobody(&["stat", path]);
    assert!(!stat.status.success(), "nobody could stat {path}: {stat:?}");
    assert!(
        String::from_utf8_lossy(&stat.stderr).contains("Permission denied"),
        "{stat:?}"
    );
    let exec = as_nobody(&[path, "id", "-u"]);
    assert!(!exec.status.success(), "nobody ran {path}: {exec:?}");
    assert!(
        String::from_utf8_lossy(&exec.stderr).contains("Permission denied"),
        "{exec:?}"
    );
    let list = as_nobody(&["ls", state.to_str().unwrap()]);
    assert!(!list.status.success(), "nobody listed the state directory");

    // The checks above can fail: with the modes the agent used to create
    // (0755), nobody reaches the setuid-root binary and may run it (busybox
    // itself drops the privilege for most applets; another binary would not).
    for dir in [&state, &state.join("snapshots")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let stat = as_nobody(&["stat", "-c", "%a %u", path]);
    assert!(stat.status.success(), "{stat:?}");
    assert_eq!(String::from_utf8_lossy(&stat.stdout).trim(), "4755 0");
    assert!(as_nobody(&[path, "true"]).status.success());

    // The next start of any agent command closes it again.
    let out = agent(&["gc"], &state);
    assert!(out.status.success(), "gc: {out:?}");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("snapshots")), 0o700);
    assert!(!as_nobody(&["stat", path]).status.success());
}

#[test]
fn an_open_state_directory_is_repaired_at_start_with_a_warning() {
    if !prerequisites() {
        return;
    }
    let parent = open_parent();
    let state = parent.path().join("fleet-agent");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let containers = state.join("containers");
    std::fs::create_dir(&containers).unwrap();
    std::fs::set_permissions(&containers, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert!(as_nobody(&["ls", state.to_str().unwrap()]).status.success());

    let out = agent(&["gc"], &state);
    assert!(out.status.success(), "gc: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (dir, old) in [(&state, "0755"), (&containers, "0775")] {
        assert!(
            stderr.lines().any(|l| l.contains("WARN")
                && l.contains(&format!("path={}", dir.display()))
                && l.contains(&format!("old_mode={old}"))),
            "no WARN naming {} and {old}:\n{stderr}",
            dir.display()
        );
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    assert!(!stderr.contains('\x1b'), "colour on a pipe:\n{stderr}");
    assert!(!as_nobody(&["ls", state.to_str().unwrap()]).status.success());

    // Nothing to repair: nothing said.
    let again = agent(&["gc"], &state);
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("WARN"),
        "{again:?}"
    );
}
