//! Release requirements end to end through `fleet-agent apply` and `status`
//! against crun, with the host root pointed at the Jetson fixture trees: a
//! release requiring L4T r36 is refused on an r35 host before anything is
//! downloaded (`incompatible`, saying what was required and what the device
//! has) and the running release keeps running; one naming a device no spec
//! defines is refused the same way, and so is any release asking for a
//! device when the host's specs are malformed YAML or JSON, of an unknown
//! version, mount a host path outside the allowed roots or define a device
//! twice; on an r36 host the same requirement
//! passes and the release is committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lifecycle_support;

use std::path::PathBuf;

use fleet_protocol::dsse::{self, Envelope, RELEASE_PAYLOAD_TYPE};
use fleet_protocol::{AppName, Release, SCHEMA_VERSION};
use lifecycle_support::*;

const APP: &str = "cuda";

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tegra")
        .join(name)
        .display()
        .to_string()
}

fn release_with(version: &str, image: &Image, edit: impl FnOnce(&mut Release)) -> Envelope {
    let mut release = Release {
        schema: SCHEMA_VERSION,
        app: AppName::new(APP).unwrap(),
        version: version.into(),
        repository: format!("local/{APP}"),
        manifest_digest: image.manifest.clone(),
        runtime: settings(Behaviour::Good),
    };
    edit(&mut release);
    dsse::sign(
        RELEASE_PAYLOAD_TYPE,
        &serde_json::to_vec(&release).unwrap(),
        &[&release_key()],
    )
}

fn in_store(dev: &Device, image: &Image) -> bool {
    let hex = image.manifest.to_string().replace("sha256:", "");
    walk(&dev.path("state")).iter().any(|p| p.contains(&hex))
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        out.push(p.display().to_string());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn requirements_are_checked_before_download_and_the_running_release_stays() {
    let test = "gpu requirements with crun";
    if !can_run(test) {
        return;
    }
    let Some(binary) = runtime_binary(test, "crun") else {
        return;
    };
    let dev = Device::new("crun", &binary);
    let layout = Layout::new(&dev.path("layout"));
    let exp = now() + 3600;
    let r35 = [("FLEET_AGENT_HOST_ROOT", fixture("orin-r35"))];
    let r35: Vec<(&str, &str)> = r35.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let v1_image = layout.image("v1");
    let v1 = release_with("v1", &v1_image, |_| {});
    let d1 = dev.file("d1.json", &desired(1, exp, &[(APP, v1.clone())]));
    let out = dev.apply(&d1, &layout.dir, &r35);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    dev.assert_one_running(APP, &[&v1]);
    assert!(in_store(&dev, &v1_image), "the store check sees a download");

    let v2_image = layout.image("v2");
    let v2 = release_with("v2", &v2_image, |r| {
        r.runtime.requires = serde_json::from_str(r#"{"l4t":">=36.3, <37"}"#).unwrap();
    });
    let d2 = dev.file("d2.json", &desired(2, exp, &[(APP, v2.clone())]));
    let out = dev.apply(&d2, &layout.dir, &r35);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    dev.assert_one_running(APP, &[&v1]);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["error"]["code"], "incompatible", "{s}");
    assert_eq!(
        a["error"]["message"], "incompatible: requires l4t >=36.3, <37, device has R35.4.1",
        "{s}"
    );
    assert_eq!(a["running"]["version"], "v1", "{s}");
    assert!(!in_store(&dev, &v2_image), "nothing of v2 was downloaded");

    let v3_image = layout.image("v3");
    let v3 = release_with("v3", &v3_image, |r| {
        r.runtime.devices = vec!["nvidia.com/gpu=7".into()];
    });
    let d3 = dev.file("d3.json", &desired(3, exp, &[(APP, v3.clone())]));
    let out = dev.apply(&d3, &layout.dir, &r35);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    dev.assert_one_running(APP, &[&v1]);
    let s = dev.status();
    let a = app_status(&s, APP);
    assert_eq!(a["error"]["code"], "incompatible", "{s}");
    let msg = a["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no CDI spec defines device nvidia.com/gpu=7"),
        "{msg}"
    );
    assert!(!in_store(&dev, &v3_image));

    // Bad specs on the host: refused by name before any download, each time.
    let bad_host = tempfile::tempdir().unwrap();
    let cdi = bad_host.path().join("etc/cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    let root = bad_host.path().display().to_string();
    let good = "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n  containerEdits:\n    env: [A=1]\n";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("nvidia.yaml", "cdiVersion: [unclosed\n")],
            "not valid YAML",
        ),
        (&[("nvidia.json", "{\"cdiVersion\": ")], "not valid JSON"),
        (
            &[("nvidia.yaml", &good.replace("0.6.0", "9.9.9"))],
            "unknown cdiVersion \"9.9.9\"",
        ),
        (
            &[(
                "nvidia.yaml",
                "cdiVersion: 0.6.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n  containerEdits:\n    mounts:\n    - hostPath: /etc/shadow\n      containerPath: /x\n",
            )],
            "outside the allowed roots",
        ),
        (
            &[("nvidia.yaml", good), ("other.yaml", good)],
            "CDI device nvidia.com/gpu=all is defined by both",
        ),
    ];
    for (i, (files, want)) in cases.iter().enumerate() {
        for old in std::fs::read_dir(&cdi).unwrap() {
            std::fs::remove_file(old.unwrap().path()).unwrap();
        }
        for (name, spec) in *files {
            std::fs::write(cdi.join(name), spec).unwrap();
        }
        let version = format!("bad{i}");
        let image = layout.image(&version);
        let rel = release_with(&version, &image, |r| {
            r.runtime.devices = vec!["nvidia.com/gpu=all".into()];
        });
        let d = dev.file(
            &format!("dbad{i}.json"),
            &desired(30 + i as u64, exp, &[(APP, rel)]),
        );
        let out = dev.apply(&d, &layout.dir, &[("FLEET_AGENT_HOST_ROOT", root.as_str())]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        dev.assert_one_running(APP, &[&v1]);
        let s = dev.status();
        let a = app_status(&s, APP);
        assert_eq!(a["error"]["code"], "incompatible", "{s}");
        let msg = a["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg}");
        assert!(!in_store(&dev, &image));
    }

    // The same requirement on an r36 host passes.
    let r36 = fixture("orin-r36");
    let v4 = release_with("v4", &layout.image("v4"), |r| {
        r.runtime.requires = serde_json::from_str(r#"{"l4t":">=36.3, <37","soc":"t234"}"#).unwrap();
    });
    let d4 = dev.file("d4.json", &desired(40, exp, &[(APP, v4.clone())]));
    let out = dev.apply(&d4, &layout.dir, &[("FLEET_AGENT_HOST_ROOT", r36.as_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    dev.assert_one_running(APP, &[&v4]);
    let d5 = dev.file("d5.json", &desired(50, exp, &[]));
    let out = dev.apply(&d5, &layout.dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
