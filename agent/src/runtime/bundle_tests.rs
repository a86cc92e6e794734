use super::*;
use fleet_protocol::message::{Mount as ReleaseMount, Resources};
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str], user: &str) -> ImageConfiguration {
    let config = ConfigBuilder::default()
        .entrypoint(entrypoint.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .user(user.to_owned())
        .working_dir("/srv".to_owned())
        .build()
        .unwrap();
    ImageConfigurationBuilder::default()
        .config(config)
        .build()
        .unwrap()
}

fn rootfs_with_users() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\napp:x:1001:\nvideo:x:44:app,other\n",
    )
    .unwrap();
    dir
}

fn build(settings: &RuntimeSettings, img: &ImageConfiguration, rootfs: &Path) -> Spec {
    build_spec(&BundleParams {
        id: "fleet-app-0123456789ab",
        cgroup_parent: "/fleet",
        hostname: "app",
        image: img,
        settings,
        rootfs,
        allow_privileged: false,
        annotations: BTreeMap::from([("fleet.app".to_owned(), "app".to_owned())]),
    })
    .unwrap()
}

#[test]
fn image_entrypoint_cmd_env_and_workdir_are_used() {
    let root = rootfs_with_users();
    let img = image(
        &["/bin/server"],
        &["--port", "80"],
        &["A=1", "PATH=/bin"],
        "",
    );
    let spec = build(&RuntimeSettings::default(), &img, root.path());
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &["/bin/server", "--port", "80"]
    );
    assert_eq!(process.env().as_ref().unwrap(), &["A=1", "PATH=/bin"]);
    assert_eq!(process.cwd(), Path::new("/srv"));
    assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(spec.hostname().as_deref(), Some("app"));
    assert_eq!(spec.root().as_ref().unwrap().path(), root.path());
    assert_eq!(
        spec.annotations().as_ref().unwrap().get("fleet.app"),
        Some(&"app".to_owned())
    );
}

#[test]
fn release_settings_override_the_image() {
    let root = rootfs_with_users();
    let img = image(&["/bin/server"], &["--port", "80"], &["A=1", "B=2"], "root");
    let settings = RuntimeSettings {
        args: Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]),
        env: BTreeMap::from([("B".into(), "3".into()), ("C".into(), "4".into())]),
        working_dir: Some("/data".into()),
        user: Some("app".into()),
        read_only_rootfs: true,
        ..Default::default()
    };
    let spec = build(&settings, &img, root.path());
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &["/bin/sh", "-c", "echo hi"]
    );
    let env = process.env().as_ref().unwrap();
    assert_eq!(env[1..], ["A=1", "B=3", "C=4"]);
    assert!(env[0].starts_with("PATH="));
    assert_eq!(process.cwd(), Path::new("/data"));
    assert_eq!((process.user().uid(), process.user().gid()), (1000, 1001));
    assert_eq!(
        process.user().additional_gids().as_deref(),
        Some(&[44u32][..])
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
}

#[test]
fn users_resolve_numerically_by_name_and_with_groups() {
    let root = rootfs_with_users();
    let r = |s: &str| {
        let u = resolve_user(s, root.path()).unwrap();
        (u.uid(), u.gid())
    };
    assert_eq!(r(""), (0, 0));
    assert_eq!(r("1000"), (1000, 1001));
    assert_eq!(r("4242"), (4242, 0));
    assert_eq!(r("4242:7"), (4242, 7));
    assert_eq!(r("app:video"), (1000, 44));
    assert!(matches!(
        resolve_user("nobody-here", root.path()),
        Err(BundleError::BadUser { .. })
    ));
    assert!(resolve_user("app:nogroup", root.path()).is_err());
}

#[test]
fn default_security_is_dockers_capability_set_with_masked_paths() {
    let root = rootfs_with_users();
    let img = image(&["/bin/sh"], &[], &[], "");
    let spec = build(&RuntimeSettings::default(), &img, root.path());
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let expected: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    assert_eq!(caps.bounding().as_ref(), Some(&expected));
    assert_eq!(caps.effective().as_ref(), Some(&expected));
    assert!(!expected.contains(&Capability::SysAdmin));
    assert!(caps.ambient().as_ref().unwrap().is_empty());
    let linux = spec.linux().as_ref().unwrap();
    assert!(
        linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_owned())
    );
    assert!(
        linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_owned())
    );
    let devices = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!devices[0].allow());
}

#[test]
fn privileged_needs_the_release_and_the_trust_metadata() {
    let root = rootfs_with_users();
    let img = image(&["/bin/sh"], &[], &[], "");
    let settings = RuntimeSettings {
        privileged: true,
        ..Default::default()
    };
    let params = BundleParams {
        id: "c",
        cgroup_parent: "/fleet",
        hostname: "c",
        image: &img,
        settings: &settings,
        rootfs: root.path(),
        allow_privileged: false,
        annotations: BTreeMap::new(),
    };
    let err = build_spec(&params).unwrap_err();
    assert!(matches!(err, BundleError::PrivilegedNotAllowed));
    assert!(err.to_string().contains("trust metadata"));
    let spec = build_spec(&BundleParams {
        allow_privileged: true,
        ..params
    })
    .unwrap();
    let process = spec.process().as_ref().unwrap();
    let caps = process.capabilities().clone().unwrap();
    assert!(
        caps.bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin)
    );
    assert_eq!(process.no_new_privileges(), Some(false));
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
}

#[test]
fn network_mode_selects_the_network_namespace() {
    let root = rootfs_with_users();
    let img = image(&["/bin/sh"], &[], &[], "");
    let has_netns = |spec: &Spec| {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::Network)
    };
    let host = build(&RuntimeSettings::default(), &img, root.path());
    assert!(!has_netns(&host));
    let none = build(
        &RuntimeSettings {
            network: NetworkMode::None,
            ..Default::default()
        },
        &img,
        root.path(),
    );
    assert!(has_netns(&none));
}

#[test]
fn resources_and_mounts_are_rendered() {
    let root = rootfs_with_users();
    let img = image(&["/bin/sh"], &[], &[], "");
    let settings = RuntimeSettings {
        resources: Resources {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(100),
        },
        mounts: vec![ReleaseMount {
            source: "/var/lib/data".into(),
            destination: "/data".into(),
            read_only: true,
        }],
        ..Default::default()
    };
    let spec = build(&settings, &img, root.path());
    let linux = spec.linux().as_ref().unwrap();
    let res = linux.resources().as_ref().unwrap();
    assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
    let cpu = res.cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
    assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/fleet/fleet-app-0123456789ab"))
    );
    let mount = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert_eq!(mount.typ().as_deref(), Some("bind"));
    assert!(mount.options().as_ref().unwrap().contains(&"ro".to_owned()));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let root = rootfs_with_users();
    let img = image(&[], &[], &[], "");
    let params = |settings: &RuntimeSettings| {
        build_spec(&BundleParams {
            id: "c",
            cgroup_parent: "/fleet",
            hostname: "c",
            image: &img,
            settings,
            rootfs: root.path(),
            allow_privileged: false,
            annotations: BTreeMap::new(),
        })
    };
    assert!(matches!(
        params(&RuntimeSettings::default()),
        Err(BundleError::NoCommand)
    ));
    let with_args = |f: &dyn Fn(&mut RuntimeSettings)| {
        let mut s = RuntimeSettings {
            args: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        f(&mut s);
        params(&s)
    };
    assert!(matches!(
        with_args(&|s| s.working_dir = Some("rel".into())),
        Err(BundleError::RelativeWorkingDir(_))
    ));
    assert!(matches!(
        with_args(&|s| s.mounts = vec![ReleaseMount {
            source: "/a/../etc".into(),
            destination: "/x".into(),
            read_only: false
        }]),
        Err(BundleError::BadMountPath { .. })
    ));
    assert!(matches!(
        with_args(&|s| s.resources.pids = Some(0)),
        Err(BundleError::BadLimit { .. })
    ));
    // Devices are no longer refused here: the GPU module applies them
    // after the bundle is built (crate::gpu::inject).
    assert!(with_args(&|s| s.devices = vec!["nvidia.com/gpu=all".into()]).is_ok());
}
