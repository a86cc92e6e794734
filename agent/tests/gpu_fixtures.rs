//! The GPU module against host trees as the devices have them
//! (`fixtures/tegra/*`, see its README): detection, the compatibility
//! decision, CDI and CSV resolution; and bad specs in temp trees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use fleet_agent::gpu::{self, CdiError, GpuError, Incompatible, Tools, detect};
use fleet_agent::telemetry::HostRoot;
use fleet_protocol::message::{GpuRequest, RuntimeSettings};

fn tree(name: &str) -> HostRoot {
    HostRoot::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tegra")
            .join(name),
    )
}

fn release(requires: &str, devices: &[&str]) -> RuntimeSettings {
    RuntimeSettings {
        requires: serde_json::from_str(requires).unwrap(),
        devices: devices.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn detection_on_each_jetson() {
    let cases = [
        ("nano-r32", "R32.7.4", "tegra210", "4.6.4", "10.2.300"),
        ("orin-r35", "R35.4.1", "tegra234", "5.1.2", "11.4.315"),
        ("orin-r36", "R36.4.3", "tegra234", "6.2", "12.6.68"),
        ("thor-r38", "R38.2.0", "tegra264", "7.0", "13.0.48"),
    ];
    for (name, l4t, soc, jetpack, cuda) in cases {
        let info = detect::detect(&tree(name)).unwrap_or_else(|| panic!("{name}: not a Tegra"));
        assert_eq!(info.l4t_version.as_deref(), Some(l4t), "{name}");
        assert_eq!(info.soc.as_deref(), Some(soc), "{name}");
        assert_eq!(info.jetpack_version.as_deref(), Some(jetpack), "{name}");
        assert_eq!(info.cuda_version.as_deref(), Some(cuda), "{name}");
        assert!(info.model.is_some(), "{name}");
    }
    assert_eq!(detect::detect(&tree("x86-none")), None);
    let info = fleet_agent::link::info::device_info(Default::default(), tree("thor-r38").root());
    assert_eq!(info.soc.as_deref(), Some("tegra264"));
    assert_eq!(info.cuda_version.as_deref(), Some("13.0.48"));
    assert_eq!(info.cdi_devices, ["nvidia.com/gpu=0", "nvidia.com/gpu=all"]);
}

#[test]
fn compatibility_decisions_on_each_jetson() {
    let jp6 = release(r#"{"l4t":">=36.3, <37","soc":"t234"}"#, &[]);
    let ok = |name: &str, s: &RuntimeSettings| gpu::check(&tree(name), Tools::NONE, s).is_ok();
    assert!(ok("orin-r36", &jp6));
    for name in ["nano-r32", "orin-r35", "thor-r38", "x86-none"] {
        assert!(!ok(name, &jp6), "{name}");
    }
    let msg = gpu::check(&tree("orin-r35"), Tools::NONE, &jp6)
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "requires l4t >=36.3, <37, device has R35.4.1");
    let msg = gpu::check(&tree("thor-r38"), Tools::NONE, &jp6)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "requires l4t >=36.3, <37, device has R38.2.0; requires soc t234, device has tegra264"
    );
    let msg = gpu::check(&tree("x86-none"), Tools::NONE, &jp6)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("device has none"), "{msg}");
    let cuda13 = release(r#"{"cuda":">=13"}"#, &["nvidia.com/gpu=all"]);
    assert!(ok("thor-r38", &cuda13));
    assert!(!ok("orin-r36", &cuda13));
    // A release asking for the GPU on a host without one is incompatible too.
    let gpu_only = RuntimeSettings {
        gpu: Some(GpuRequest::All),
        ..Default::default()
    };
    for name in ["nano-r32", "orin-r35", "orin-r36", "thor-r38"] {
        assert!(ok(name, &gpu_only), "{name}");
    }
    assert!(matches!(
        gpu::check(&tree("x86-none"), Tools::NONE, &gpu_only),
        Err(Incompatible::Devices {
            source: GpuError::Cdi(CdiError::Unresolvable(_)),
            ..
        })
    ));
}

#[test]
fn cdi_specs_as_nvidia_ctk_writes_them_resolve() {
    let s = RuntimeSettings {
        gpu: Some(GpuRequest::All),
        devices: vec!["nvidia.com/gpu=all".into()],
        ..Default::default()
    };
    assert_eq!(gpu::requested(&s), ["nvidia.com/gpu=all"]);
    let r36 = gpu::resolve(&tree("orin-r36"), Tools::NONE, &s)
        .unwrap()
        .unwrap();
    assert_eq!(r36.device_nodes.len(), 11);
    assert!(
        r36.device_nodes
            .iter()
            .any(|n| n.path == "/dev/dri/renderD128")
    );
    assert_eq!(r36.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
    assert_eq!(r36.hooks.len(), 3);
    assert_eq!(r36.hooks[2].args[1], "update-ldcache");
    assert!(
        r36.mounts
            .iter()
            .any(|m| m.container_path == "/etc/nv_tegra_release")
    );
    let r35 = gpu::resolve(&tree("orin-r35"), Tools::NONE, &s)
        .unwrap()
        .unwrap();
    assert_eq!(r35.device_nodes.len(), 12);
    assert_eq!(r35.hooks[0].path, "/usr/bin/nvidia-ctk");
    let thor = gpu::resolve(&tree("thor-r38"), Tools::NONE, &s)
        .unwrap()
        .unwrap();
    assert_eq!(thor.additional_gids, [44, 992]);
    assert_eq!(thor.hooks[0].env, ["NVIDIA_CTK_DEBUG=false"]);
    // Device "0" alone: same nodes, spec edits once.
    let zero = release("{}", &["nvidia.com/gpu=0"]);
    let z = gpu::resolve(&tree("thor-r38"), Tools::NONE, &zero)
        .unwrap()
        .unwrap();
    assert_eq!(z.device_nodes.len(), 8);
    assert_eq!(z.mounts.len(), 5);
    // No devices asked: nothing to resolve.
    assert!(
        gpu::resolve(&tree("orin-r36"), Tools::NONE, &RuntimeSettings::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn csv_fallback_on_the_nano() {
    let host = tree("nano-r32");
    let spec = gpu::csv::generate(&host, None).unwrap();
    assert_eq!(spec.kind, "nvidia.com/gpu");
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["0", "all"]);
    let nodes: Vec<&str> = spec.devices[1]
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(nodes.len(), 15, "{nodes:?}");
    assert!(nodes.contains(&"/dev/nvidiactl"), "relative dev name");
    assert!(
        nodes.contains(&"/dev/fb0") && nodes.contains(&"/dev/fb1"),
        "glob"
    );
    let edits = &spec.container_edits;
    let mounts: Vec<&str> = edits.mounts.iter().map(|m| m.host_path.as_str()).collect();
    assert_eq!(
        mounts,
        [
            "/usr/lib/aarch64-linux-gnu/tegra/libcuda.so.1.1",
            "/usr/lib/aarch64-linux-gnu/tegra/libnvrm_gpu.so",
            "/usr/lib/aarch64-linux-gnu/tegra/libnvrm.so",
            "/usr/lib/aarch64-linux-gnu/tegra/libnvos.so",
            "/usr/lib/aarch64-linux-gnu/tegra/libnvrm_graphics.so",
            "/usr/lib/aarch64-linux-gnu/tegra/firmware",
            "/etc/nv_tegra_release",
        ],
        "deduplicated, `//` normalised, missing entries skipped"
    );
    assert_eq!(
        edits.mounts[0].options,
        ["ro", "nosuid", "nodev", "rbind", "rprivate"]
    );
    // No nvidia-ctk on this host: the ldcache step becomes LD_LIBRARY_PATH.
    assert_eq!(
        edits.env,
        [
            "NVIDIA_VISIBLE_DEVICES=void",
            "LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu/tegra"
        ]
    );
    assert!(edits.hooks.is_empty());
    // The registry uses it because no CDI spec defines nvidia.com/gpu.
    let r = gpu::resolve(&host, Tools::NONE, &release("{}", &["nvidia.com/gpu=all"]))
        .unwrap()
        .unwrap();
    assert_eq!(r.device_nodes.len(), 15);
}

#[test]
fn csv_with_nvidia_cdi_hook_gets_symlink_and_ldcache_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let w = |p: &str, text: &str| {
        let path = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    w(
        "/etc/nvidia-container-runtime/host-files-for-container.d/drivers.csv",
        "lib, /usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1\nsym, /usr/lib/aarch64-linux-gnu/nvidia/libcuda.so\n",
    );
    w(
        "/etc/nvidia-container-runtime/host-files-for-container.d/devices.csv",
        "dev, /dev/nvmap\n",
    );
    w("/dev/nvmap", "");
    w("/usr/bin/nvidia-cdi-hook", "");
    w("/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1.1", "");
    std::os::unix::fs::symlink(
        "libcuda.so.1.1",
        root.join("usr/lib/aarch64-linux-gnu/nvidia/libcuda.so"),
    )
    .unwrap();
    let spec = gpu::csv::generate(&HostRoot::new(root), None).unwrap();
    let hooks = &spec.container_edits.hooks;
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0].path, "/usr/bin/nvidia-cdi-hook");
    assert_eq!(
        hooks[0].args,
        [
            "nvidia-cdi-hook",
            "create-symlinks",
            "--link",
            "libcuda.so.1.1::/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so"
        ]
    );
    assert_eq!(
        hooks[1].args,
        [
            "nvidia-cdi-hook",
            "update-ldcache",
            "--folder",
            "/usr/lib/aarch64-linux-gnu/nvidia"
        ]
    );
}

#[test]
fn csv_without_nvidia_hooks_makes_the_agent_its_own_ldcache_hook() {
    // The Nano's tree, plus the agent binary and glibc's ldconfig.
    let tmp = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tegra/nano-r32");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["usr/bin/fleet-agent", "sbin/ldconfig"] {
        let p = tmp.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
    let host = HostRoot::new(tmp.path());
    let agent = Path::new("/usr/bin/fleet-agent");
    let spec = gpu::csv::generate(&host, Some(agent)).unwrap();
    let edits = &spec.container_edits;
    assert_eq!(
        edits.env,
        ["NVIDIA_VISIBLE_DEVICES=void"],
        "the ld.so cache, not LD_LIBRARY_PATH"
    );
    assert_eq!(edits.hooks.len(), 1);
    let hook = &edits.hooks[0];
    assert_eq!(
        (hook.hook_name.as_str(), hook.path.as_str()),
        ("createContainer", "/usr/bin/fleet-agent")
    );
    let ldconfig = tmp.path().join("sbin/ldconfig");
    assert_eq!(
        hook.args,
        [
            "fleet-agent",
            "oci-hook",
            "tegra-prepare",
            "--link",
            "libcuda.so.1.1::/usr/lib/aarch64-linux-gnu/tegra/libcuda.so",
            "--folder",
            "/usr/lib/aarch64-linux-gnu/tegra",
            "--ldconfig",
            ldconfig.to_str().unwrap(),
        ]
    );
    // What the hook parses is what the spec says.
    let parsed = gpu::hook::Prepare::parse(&hook.args[3..]).unwrap();
    assert_eq!(parsed.folders, ["/usr/lib/aarch64-linux-gnu/tegra"]);

    // Without ldconfig on the host the links still come from the hook and
    // the folders go into LD_LIBRARY_PATH; an agent binary that is not
    // under the host root is no hook at all.
    std::fs::remove_file(&ldconfig).unwrap();
    let spec = gpu::csv::generate(&host, Some(agent)).unwrap();
    assert_eq!(spec.container_edits.hooks.len(), 1);
    assert!(
        !spec.container_edits.hooks[0]
            .args
            .contains(&"--ldconfig".to_owned())
    );
    assert_eq!(
        spec.container_edits.env[1],
        "LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu/tegra"
    );
    let spec = gpu::csv::generate(&host, Some(Path::new("/nowhere/fleet-agent"))).unwrap();
    assert!(spec.container_edits.hooks.is_empty());
}

/// A temp host whose CDI dirs hold `files` (name, text).
fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, HostRoot) {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = tmp.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let host = HostRoot::new(tmp.path());
    (tmp, host)
}

fn spec_err(files: &[(&str, &str)], devices: &[&str]) -> CdiError {
    let (_tmp, host) = host_with(files);
    match gpu::check(&host, Tools::NONE, &release("{}", devices)) {
        Err(Incompatible::Devices {
            source: GpuError::Cdi(e),
            ..
        }) => e,
        other => panic!("expected a CDI error, got {other:?}"),
    }
}

const GOOD: &str = "cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices:\n- name: a\n  containerEdits:\n    deviceNodes:\n    - path: /dev/a\n";

#[test]
fn bad_specs_are_refused_with_typed_errors() {
    let want = &["example.com/gpu=a"];
    let e = spec_err(&[("etc/cdi/x.yaml", "cdiVersion: [unclosed\n")], want);
    assert!(matches!(e, CdiError::Yaml { .. }), "{e}");
    let e = spec_err(&[("etc/cdi/x.json", "{\"cdiVersion\": ")], want);
    assert!(matches!(e, CdiError::Json { .. }), "{e}");
    let e = spec_err(&[("etc/cdi/x.yaml", &GOOD.replace("0.6.0", "9.9.9"))], want);
    assert!(matches!(e, CdiError::UnknownVersion { .. }), "{e}");
    assert!(e.to_string().contains("9.9.9"));
    let perms = GOOD.replace(
        "- path: /dev/a\n",
        "- path: /dev/a\n      permissions: rwx\n",
    );
    let e = spec_err(&[("etc/cdi/x.yaml", &perms)], want);
    assert!(matches!(e, CdiError::BadPermissions { .. }), "{e}");
    assert!(e.to_string().contains("rwx"), "{e}");
    let host_path = GOOD
        .replace("0.6.0", "0.3.0")
        .replace("- path: /dev/a", "- path: /dev/a\n      hostPath: /dev/b");
    let e = spec_err(&[("etc/cdi/x.yaml", &host_path)], want);
    assert!(
        matches!(e, CdiError::VersionTooLow { needs: "0.5.0", .. }),
        "{e}"
    );
    let e = spec_err(
        &[(
            "etc/cdi/x.yaml",
            &GOOD.replace("    deviceNodes", "    bogusField: 1\n    deviceNodes"),
        )],
        want,
    );
    assert!(e.to_string().contains("bogusField"), "{e}");
    let e = spec_err(&[("etc/cdi/x.yaml", GOOD)], &["example.com/gpu=nope"]);
    assert!(
        matches!(e, CdiError::Unresolvable(ref n) if n == "example.com/gpu=nope"),
        "{e}"
    );
    let e = spec_err(&[("etc/cdi/x.yaml", GOOD)], &["not-qualified"]);
    assert!(matches!(e, CdiError::BadQualifiedName(_)), "{e}");
    let outside = format!(
        "{GOOD}    mounts:\n    - hostPath: /etc/shadow\n      containerPath: /etc/shadow\n"
    );
    let e = spec_err(&[("etc/cdi/x.yaml", &outside)], want);
    assert!(
        matches!(e, CdiError::HostPathNotAllowed { ref host_path, .. } if host_path == "/etc/shadow"),
        "{e}"
    );
    let dotdot =
        format!("{GOOD}    mounts:\n    - hostPath: /usr/lib/../../etc\n      containerPath: /x\n");
    let e = spec_err(&[("etc/cdi/x.yaml", &dotdot)], want);
    assert!(matches!(e, CdiError::BadPath { .. }), "{e}");
    let over_proc =
        format!("{GOOD}    mounts:\n    - hostPath: /usr/lib/x\n      containerPath: /proc/sys\n");
    let e = spec_err(&[("etc/cdi/x.yaml", &over_proc)], want);
    assert!(
        matches!(
            e,
            CdiError::BadPath {
                field: "mounts.containerPath",
                ..
            }
        ),
        "{e}"
    );
    let e = spec_err(
        &[
            ("etc/cdi/a.yaml", GOOD),
            (
                "etc/cdi/b.json",
                r#"{"cdiVersion":"0.6.0","kind":"example.com/gpu","devices":[{"name":"a","containerEdits":{}}]}"#,
            ),
        ],
        want,
    );
    assert!(matches!(e, CdiError::Duplicate { .. }), "{e}");
    let rdt = format!("{GOOD}    intelRdt:\n      closID: x\n");
    let e = spec_err(&[("etc/cdi/x.yaml", &rdt.replace("0.6.0", "0.7.0"))], want);
    assert!(
        matches!(
            e,
            CdiError::Unsupported {
                field: "intelRdt",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn var_run_cdi_wins_over_etc_cdi_and_every_version_parses() {
    let dynamic = GOOD.replace("/dev/a", "/dev/dynamic");
    let (_tmp, host) = host_with(&[("etc/cdi/x.yaml", GOOD), ("var/run/cdi/x.yaml", &dynamic)]);
    let edits = gpu::resolve(&host, Tools::NONE, &release("{}", &["example.com/gpu=a"]))
        .unwrap()
        .unwrap();
    assert_eq!(edits.device_nodes.len(), 1);
    assert_eq!(edits.device_nodes[0].path, "/dev/dynamic");
    // `=all` without an `all` device: every device once, from the winning spec.
    let all = gpu::resolve(&host, Tools::NONE, &release("{}", &["example.com/gpu=all"]))
        .unwrap()
        .unwrap();
    let nodes: Vec<&str> = all.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert!(nodes.contains(&"/dev/dynamic"), "{nodes:?}");
    assert!(!nodes.contains(&"/dev/a"), "{nodes:?}");
    for v in [
        "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
    ] {
        let text = format!(
            "cdiVersion: {v}\nkind: example.com/gpu\ndevices:\n- name: a\n  containerEdits:\n    env: [A=1]\n"
        );
        let spec = gpu::cdi::parse(Path::new("x.yaml"), &text).unwrap();
        assert_eq!(spec.cdi_version, v);
        let json = format!(
            r#"{{"cdiVersion":"{v}","kind":"example.com/gpu","devices":[{{"name":"a","containerEdits":{{"env":["A=1"]}}}}]}}"#
        );
        assert_eq!(gpu::cdi::parse(Path::new("x.json"), &json).unwrap(), spec);
    }
}

#[test]
fn annotations_are_read_and_change_nothing_but_need_version_0_6() {
    // Spec- and device-level annotations (as Intel's and NVIDIA's specs
    // carry them) are accepted from 0.6.0 on and never reach the edits.
    let annotated = "cdiVersion: 0.6.0\nkind: example.com/gpu\nannotations:\n  vendor.example/generator: test\ndevices:\n- name: a\n  annotations:\n    vendor.example/memory: 8G\n  containerEdits:\n    deviceNodes:\n    - path: /dev/a\n    env: [A=1]\n";
    let (_tmp, host) = host_with(&[("etc/cdi/x.yaml", annotated), ("dev/a", "")]);
    let edits = gpu::resolve(&host, Tools::NONE, &release("{}", &["example.com/gpu=a"]))
        .unwrap()
        .unwrap();
    assert_eq!(edits.env, ["A=1"]);
    assert_eq!(edits.device_nodes.len(), 1);
    assert!(edits.mounts.is_empty() && edits.hooks.is_empty());
    let old = spec_err(
        &[("etc/cdi/x.yaml", &annotated.replace("0.6.0", "0.5.0"))],
        &["example.com/gpu=a"],
    );
    assert!(
        matches!(old, CdiError::VersionTooLow { needs: "0.6.0", .. }),
        "{old}"
    );
}
