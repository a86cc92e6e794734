use super::media_type::*;
use super::*;

fn d(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn index_json() -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
        {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
        {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v6"}}}},
        {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}},
        {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
        {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"unknown","os":"unknown"}}}}
        ]}}"#,
        d(1),
        d(2),
        d(3),
        d(4),
        d(5)
    )
}

#[test]
fn index_selects_each_platform() {
    let Manifest::Index(idx) = Manifest::parse(index_json().as_bytes(), None).unwrap() else {
        panic!("not an index")
    };
    let pick = |p: &str| {
        idx.select(&Platform::parse(p).unwrap())
            .map(|d| d.digest.to_string())
    };
    assert_eq!(pick("linux/amd64"), Some(d(1)));
    assert_eq!(pick("linux/arm/v6"), Some(d(2)));
    assert_eq!(pick("linux/arm/v7"), Some(d(3)));
    assert_eq!(pick("linux/arm64"), Some(d(4)));
    assert_eq!(pick("linux/riscv64"), None);
    assert_eq!(idx.platforms().len(), 5);
}

#[test]
fn image_manifest_parses_with_media_type_from_header() {
    let json = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":7}},
        "layers":[{{"mediaType":"{OCI_LAYER_ZSTD}","digest":"{}","size":9}},{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":9}}]}}"#,
        d(1),
        d(2),
        d(2)
    );
    let m = Manifest::parse(json.as_bytes(), Some(OCI_MANIFEST)).unwrap();
    let Manifest::Image(m) = m else {
        panic!("not an image manifest")
    };
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.blobs().len(), 2, "duplicate layers are listed once");
}

#[test]
fn schema1_and_unknown_types_are_rejected() {
    let v1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
    assert!(matches!(
        Manifest::parse(v1, None),
        Err(ManifestError::SchemaVersion(1))
    ));
    let odd = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json","layers":[]}"#;
    assert!(matches!(
        Manifest::parse(odd, None),
        Err(ManifestError::MediaType(_))
    ));
    assert!(Manifest::parse(b"not json", None).is_err());
}

#[test]
fn an_undeclared_media_type_comes_from_the_hint_else_the_shape() {
    let image = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":7}},"layers":[]}}"#,
        d(1)
    );
    let parsed = Manifest::parse(image.as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
    assert_eq!(parsed.media_type(), DOCKER_MANIFEST);
    // A `Content-Type` with parameters is a hint too.
    let parsed = Manifest::parse(
        image.as_bytes(),
        Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
    )
    .unwrap();
    assert_eq!(parsed.media_type(), DOCKER_MANIFEST);
    // Generic types say nothing.
    let parsed = Manifest::parse(image.as_bytes(), Some("application/json")).unwrap();
    assert_eq!(parsed.media_type(), OCI_MANIFEST);
    let index = r#"{"schemaVersion":2,"manifests":[]}"#.to_string();
    let parsed = Manifest::parse(index.as_bytes(), None).unwrap();
    assert!(matches!(parsed, Manifest::Index(_)));
    assert_eq!(parsed.media_type(), OCI_INDEX);
    // A declared type wins over the hint.
    let declared = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    let parsed = Manifest::parse(declared.as_bytes(), Some(DOCKER_MANIFEST_LIST)).unwrap();
    assert_eq!(parsed.media_type(), OCI_INDEX);
}

#[test]
fn media_type_predicates_cover_the_four_manifest_types() {
    for m in [OCI_INDEX, DOCKER_MANIFEST_LIST] {
        assert!(is_index(m) && is_manifest(m) && !is_image_manifest(m));
    }
    for m in [OCI_MANIFEST, DOCKER_MANIFEST] {
        assert!(!is_index(m) && is_manifest(m) && is_image_manifest(m));
    }
    for m in [
        OCI_CONFIG,
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        DOCKER_LAYER_GZIP,
        "",
    ] {
        assert!(!is_manifest(m), "{m}");
    }
    for m in MANIFEST_ACCEPT.split(", ") {
        assert!(is_manifest(m), "{m}");
    }
}

#[test]
fn descriptors_round_trip_with_their_optional_fields() {
    let mut desc = Descriptor::new(OCI_LAYER_TAR, Digest::of(b"x"), 1);
    let bare = serde_json::to_string(&desc).unwrap();
    assert_eq!(
        bare,
        format!(
            r#"{{"mediaType":"{OCI_LAYER_TAR}","digest":"{}","size":1}}"#,
            Digest::of(b"x")
        )
    );
    desc.urls.push("https://example.com/x".into());
    desc.platform = Some(Platform::parse("linux/arm64").unwrap());
    desc.annotations
        .insert(ANNOTATION_REF_NAME.into(), "v1".into());
    let json = serde_json::to_vec(&desc).unwrap();
    assert_eq!(serde_json::from_slice::<Descriptor>(&json).unwrap(), desc);
}

#[test]
fn config_labels_are_read_leniently() {
    let labels = config_labels(
        br#"{"architecture":"arm64","config":{"Labels":{"io.fleet.requires.l4t":">=36"}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    assert_eq!(labels["io.fleet.requires.l4t"], ">=36");
    assert!(
        config_labels(br#"{"config":{"Labels":null}}"#)
            .unwrap()
            .is_empty()
    );
    assert!(
        config_labels(br#"{"architecture":"amd64"}"#)
            .unwrap()
            .is_empty()
    );
    assert!(config_labels(b"[").is_err());
}
