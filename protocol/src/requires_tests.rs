use super::*;

fn facts(l4t: Option<&str>, cuda: Option<&str>, soc: Option<&str>) -> DeviceFacts {
    DeviceFacts {
        l4t: l4t.map(str::to_owned),
        cuda: cuda.map(str::to_owned),
        soc: soc.map(str::to_owned),
    }
}

#[test]
fn ranges_match_as_jetson_releases_are_numbered() {
    let r = VersionRange::parse(">=36.3, <37").unwrap();
    for ok in ["R36.3", "36.3.0", "36.4.3", "R36.4.4"] {
        assert!(r.matches(&Version::parse(ok).unwrap()), "{ok}");
    }
    for no in ["R35.4.1", "36.2.9", "37", "38.2.0"] {
        assert!(!r.matches(&Version::parse(no).unwrap()), "{no}");
    }
    let exact = VersionRange::parse("36.4").unwrap();
    assert!(exact.matches(&Version::parse("36.4.3").unwrap()));
    assert!(!exact.matches(&Version::parse("36.3.0").unwrap()));
    let le = VersionRange::parse("<=36.4").unwrap();
    assert!(le.matches(&Version::parse("36.4.3").unwrap()));
    assert!(!le.matches(&Version::parse("36.5").unwrap()));
    assert_eq!(r.to_string(), ">=36.3, <37");
}

#[test]
fn bad_ranges_and_socs_are_refused() {
    assert!(matches!(
        VersionRange::parse(">=thirty-six"),
        Err(RequirementError::BadVersion(_))
    ));
    assert!(matches!(
        VersionRange::parse(" , "),
        Err(RequirementError::EmptyRange(_))
    ));
    assert!(matches!(
        Soc::parse("orin"),
        Err(RequirementError::BadSoc(_))
    ));
    assert_eq!(Soc::parse("tegra234").unwrap().as_str(), "t234");
    assert_eq!(Soc::parse("T264").unwrap().as_str(), "t264");
}

#[test]
fn unknown_requirement_names_are_refused_by_name() {
    let err = serde_json::from_str::<Requirements>(r#"{"l4t":">=36","tensorrt":">=10"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tensorrt"), "{err}");
    let err = serde_json::from_str::<Requirements>(r#"{"l4t":">=banana"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("banana"), "{err}");
}

#[test]
fn unmet_says_what_was_required_and_what_the_device_has() {
    let req: Requirements =
        serde_json::from_str(r#"{"l4t":">=36.3, <37","cuda":">=12.2","soc":"t234"}"#).unwrap();
    assert!(
        req.unmet(&facts(Some("R36.4.3"), Some("12.6.68"), Some("tegra234")))
            .is_empty()
    );
    let unmet = req.unmet(&facts(Some("R35.4.1"), None, Some("tegra194")));
    let text: Vec<String> = unmet.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "requires l4t >=36.3, <37, device has R35.4.1",
            "requires cuda >=12.2, device has none",
            "requires soc t234, device has tegra194",
        ]
    );
    assert!(
        Requirements::default()
            .unmet(&DeviceFacts::default())
            .is_empty()
    );
    let json = serde_json::to_string(&req).unwrap();
    assert_eq!(
        json,
        r#"{"l4t":">=36.3, <37","cuda":">=12.2","soc":"t234"}"#
    );
}

#[test]
fn image_labels_fill_requirements_and_flags_override_them() {
    let labels: std::collections::BTreeMap<String, String> = [
        (LABEL_L4T, ">=36.3, <37"),
        (LABEL_SOC, "t234"),
        ("org.opencontainers.image.title", "model"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let from_labels = Requirements::from_labels(&labels).unwrap();
    assert_eq!(from_labels.l4t.as_ref().unwrap().to_string(), ">=36.3, <37");
    assert_eq!(from_labels.soc.as_ref().unwrap().as_str(), "t234");
    assert!(from_labels.cuda.is_none());
    let flags = Requirements {
        l4t: Some(VersionRange::parse(">=38").unwrap()),
        cuda: Some(VersionRange::parse(">=12.2").unwrap()),
        soc: None,
    };
    let merged = flags.or(from_labels);
    assert_eq!(merged.l4t.unwrap().to_string(), ">=38");
    assert_eq!(merged.cuda.unwrap().to_string(), ">=12.2");
    assert_eq!(merged.soc.unwrap().as_str(), "t234");
    assert!(
        Requirements::from_labels(&Default::default())
            .unwrap()
            .is_empty()
    );

    let bad: std::collections::BTreeMap<String, String> =
        [(LABEL_CUDA.to_owned(), "twelve".to_owned())].into();
    let err = Requirements::from_labels(&bad).unwrap_err().to_string();
    assert!(err.contains("io.fleet.requires.cuda"), "{err}");
    assert!(err.contains("twelve"), "{err}");
}

#[test]
fn requested_cdi_devices_are_met_by_name_or_by_kind_for_all() {
    use crate::requires::unmet_devices;
    let v = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let orin = v(&["nvidia.com/gpu=0", "nvidia.com/gpu=all"]);
    let custom = v(&["example.com/dev=a", "example.com/dev=b"]);
    assert!(unmet_devices(&v(&["nvidia.com/gpu=all"]), &orin).is_empty());
    assert!(unmet_devices(&v(&["nvidia.com/gpu=0"]), &orin).is_empty());
    // `=all` without an `all` device: any device of the kind.
    assert!(unmet_devices(&v(&["example.com/dev=all"]), &custom).is_empty());
    let missing = unmet_devices(&v(&["nvidia.com/gpu=1", "example.com/dev=a"]), &orin);
    assert_eq!(missing.len(), 2);
    assert_eq!(
        missing[0].to_string(),
        "requires device nvidia.com/gpu=1, device has nvidia.com/gpu=0, nvidia.com/gpu=all"
    );
    assert_eq!(
        unmet_devices(&v(&["nvidia.com/gpu=all"]), &[])[0].to_string(),
        "requires device nvidia.com/gpu=all, device has none"
    );
    assert!(unmet_devices(&[], &[]).is_empty());
}
