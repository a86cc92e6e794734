use oci_spec::runtime::{Process, Spec};

use super::*;
use crate::gpu::cdi::{Hook as CdiHook, Mount as CdiMount};

fn base() -> Spec {
    let mut spec = Spec::default();
    let mut process = Process::default();
    process.set_env(Some(vec!["PATH=/bin".into(), "A=old".into()]));
    spec.set_process(Some(process));
    let mut old = oci_spec::runtime::Mount::default();
    old.set_destination("/usr/lib/x".into());
    old.set_typ(Some("tmpfs".into()));
    spec.set_mounts(Some(vec![old]));
    spec
}

fn mount(host: &str, container: &str) -> CdiMount {
    CdiMount {
        host_path: host.into(),
        container_path: container.into(),
        kind: None,
        options: vec!["ro".into(), "rbind".into()],
    }
}

#[test]
fn env_mounts_hooks_and_gids_follow_the_cdi_rules() {
    let mut spec = base();
    let edits = ContainerEdits {
        env: vec!["A=new".into(), "B=1".into()],
        mounts: vec![
            mount("/usr/lib/x/y/libz.so", "/usr/lib/x/y/libz.so"),
            mount("/usr/lib/x", "/usr/lib/x"),
            mount("/usr/lib/other", "/opt"),
        ],
        hooks: vec![
            CdiHook {
                hook_name: "createContainer".into(),
                path: "/usr/bin/h".into(),
                args: vec!["h".into(), "update-ldcache".into()],
                env: vec![],
                timeout: Some(5),
            },
            CdiHook {
                hook_name: "poststop".into(),
                path: "/usr/bin/h".into(),
                args: vec![],
                env: vec!["X=1".into()],
                timeout: None,
            },
        ],
        additional_gids: vec![0, 44, 44, 992],
        ..ContainerEdits::default()
    };
    let host = HostRoot::new("/srv/host");
    apply(&mut spec, &edits, &host).unwrap();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(env, ["PATH=/bin", "A=new", "B=1"]);
    let mounts = spec.mounts().clone().unwrap();
    let dests: Vec<String> = mounts
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    assert_eq!(
        dests,
        ["/opt", "/usr/lib/x", "/usr/lib/x/y/libz.so"],
        "replaced, then parents first"
    );
    assert_eq!(
        mounts[1].source().as_deref(),
        Some(Path::new("/srv/host/usr/lib/x"))
    );
    assert_eq!(mounts[1].typ().as_deref(), Some("bind"));
    let hooks = spec.hooks().clone().unwrap();
    let cc = hooks.create_container().clone().unwrap();
    assert_eq!(cc[0].path(), Path::new("/srv/host/usr/bin/h"));
    assert_eq!(cc[0].timeout(), Some(5));
    assert_eq!(
        hooks.poststop().clone().unwrap()[0].env().clone().unwrap(),
        ["X=1"]
    );
    let gids = spec
        .process()
        .as_ref()
        .unwrap()
        .user()
        .additional_gids()
        .clone();
    assert_eq!(gids.unwrap(), [44, 992]);
}

#[test]
fn device_nodes_come_from_the_host_node_at_apply_time() {
    let mut spec = base();
    let edits = ContainerEdits {
        device_nodes: vec![
            DeviceNode {
                path: "/dev/nvhost-ctrl-gpu".into(),
                host_path: Some("/dev/null".into()),
                ..DeviceNode::default()
            },
            DeviceNode {
                path: "/dev/fixed".into(),
                kind: Some("c".into()),
                major: Some(195),
                minor: Some(255),
                permissions: Some("rw".into()),
                ..DeviceNode::default()
            },
        ],
        ..ContainerEdits::default()
    };
    apply(&mut spec, &edits, &HostRoot::new("/")).unwrap();
    let linux = spec.linux().clone().unwrap();
    let devices = linux.devices().clone().unwrap();
    assert_eq!(devices[0].path(), Path::new("/dev/nvhost-ctrl-gpu"));
    assert_eq!((devices[0].major(), devices[0].minor()), (1, 3));
    assert_eq!(devices[0].typ(), LinuxDeviceType::C);
    assert_eq!(devices[0].file_mode(), Some(0o666));
    assert_eq!((devices[1].major(), devices[1].minor()), (195, 255));
    let rules = linux
        .resources()
        .clone()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!rules[0].allow(), "deny-all first");
    assert!(rules[1].allow() && rules[1].major() == Some(1) && rules[1].minor() == Some(3));
    assert_eq!(rules[2].access().as_deref(), Some("rw"));

    let missing = ContainerEdits {
        device_nodes: vec![DeviceNode {
            path: "/dev/nvmap".into(),
            ..DeviceNode::default()
        }],
        ..ContainerEdits::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = apply(&mut base(), &missing, &HostRoot::new(tmp.path())).unwrap_err();
    assert!(matches!(err, ApplyError::Stat { .. }), "{err}");
    std::fs::create_dir_all(tmp.path().join("dev")).unwrap();
    std::fs::write(tmp.path().join("dev/nvmap"), "").unwrap();
    let err = apply(&mut base(), &missing, &HostRoot::new(tmp.path())).unwrap_err();
    assert!(matches!(err, ApplyError::NotADevice { .. }), "{err}");
    let block = ContainerEdits {
        device_nodes: vec![DeviceNode {
            path: "/dev/null".into(),
            kind: Some("b".into()),
            ..DeviceNode::default()
        }],
        ..ContainerEdits::default()
    };
    let err = apply(&mut base(), &block, &HostRoot::new("/")).unwrap_err();
    assert!(matches!(err, ApplyError::TypeMismatch { .. }), "{err}");
}
