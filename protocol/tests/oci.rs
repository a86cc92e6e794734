//! One OCI rule set for both sides: the agent's registry client and the
//! server's importer each had their own manifest types before; these check
//! that what each relied on still holds with the shared ones (index
//! resolution by platform, media type checks, size limits), over fixtures
//! shaped like what registries and tools write, and over generated input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use fleet_protocol::Digest;
use fleet_protocol::oci::media_type::*;
use fleet_protocol::oci::{
    ANNOTATION_REF_NAME, Descriptor, ImageIndex, LayoutIndex, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
    Manifest, ManifestError, Platform,
};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oci_fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn index(name: &str) -> ImageIndex {
    match Manifest::parse(&fixture(name), None).unwrap() {
        Manifest::Index(i) => i,
        Manifest::Image(_) => panic!("{name} parsed as an image manifest"),
    }
}

fn pick(index: &ImageIndex, platform: &str) -> Option<Descriptor> {
    index.select(&Platform::parse(platform).unwrap()).cloned()
}

#[test]
fn a_docker_manifest_list_resolves_every_device_platform() {
    let list = index("docker_manifest_list.json");
    let platform_of = |p: &str| {
        pick(&list, p)
            .and_then(|d| d.platform)
            .map(|p| p.to_string())
    };
    assert_eq!(platform_of("linux/amd64").as_deref(), Some("linux/amd64"));
    assert_eq!(
        platform_of("linux/arm64").as_deref(),
        Some("linux/arm64/v8")
    );
    assert_eq!(platform_of("linux/arm/v7").as_deref(), Some("linux/arm/v7"));
    assert_eq!(platform_of("linux/arm/v6").as_deref(), Some("linux/arm/v6"));
    assert_eq!(
        platform_of("linux/aarch64").as_deref(),
        Some("linux/arm64/v8")
    );
    assert_eq!(platform_of("windows/amd64"), None);
    assert_eq!(list.platforms().len(), 10);
}

#[test]
fn attestation_entries_of_an_oci_index_are_never_chosen() {
    let idx = index("oci_index_with_attestations.json");
    for p in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        let d = pick(&idx, p).unwrap();
        assert!(d.annotations.is_empty(), "{p}: chose {d:?}");
    }
    // An armv6 device cannot run the v7 image.
    assert_eq!(pick(&idx, "linux/arm/v6"), None);
    // The server's importer walks every child, attestations included.
    assert_eq!(idx.manifests.len(), 6);
    assert!(idx.manifests.iter().all(|d| is_manifest(&d.media_type)));
}

#[test]
fn fixtures_parse_to_their_kind_and_media_type() {
    let cases = [
        ("docker_manifest_list.json", None, DOCKER_MANIFEST_LIST),
        ("oci_index_with_attestations.json", None, OCI_INDEX),
        ("oci_index_no_media_type.json", None, OCI_INDEX),
        // The importer passes the descriptor's type; the client the Content-Type.
        (
            "oci_index_no_media_type.json",
            Some(DOCKER_MANIFEST_LIST),
            DOCKER_MANIFEST_LIST,
        ),
        ("oci_manifest.json", None, OCI_MANIFEST),
        ("oci_manifest.json", Some(DOCKER_MANIFEST), OCI_MANIFEST),
        ("oci_manifest_no_media_type.json", None, OCI_MANIFEST),
        (
            "oci_manifest_no_media_type.json",
            Some(DOCKER_MANIFEST),
            DOCKER_MANIFEST,
        ),
        (
            "docker_manifest.json",
            Some(DOCKER_MANIFEST),
            DOCKER_MANIFEST,
        ),
    ];
    for (name, hint, want) in cases {
        let m = Manifest::parse(&fixture(name), hint).unwrap();
        assert_eq!(m.media_type(), want, "{name} with {hint:?}");
        assert_eq!(
            matches!(m, Manifest::Index(_)),
            is_index(want),
            "{name} with {hint:?}"
        );
    }
    let Manifest::Image(image) = Manifest::parse(&fixture("oci_manifest.json"), None).unwrap()
    else {
        panic!("not an image manifest")
    };
    assert_eq!(image.blobs().len(), 3);
    assert_eq!(image.layers[1].media_type, OCI_LAYER_ZSTD);
}

#[test]
fn schema1_artifacts_and_mislabelled_documents_are_refused() {
    assert!(matches!(
        Manifest::parse(&fixture("schema1.json"), None),
        Err(ManifestError::SchemaVersion(1))
    ));
    assert!(matches!(
        Manifest::parse(&fixture("artifact.json"), None),
        Err(ManifestError::MediaType(m)) if m == "application/vnd.oci.artifact.manifest.v1+json"
    ));
    // An image manifest served or described as an index does not parse as one.
    assert!(matches!(
        Manifest::parse(&fixture("oci_manifest_no_media_type.json"), Some(OCI_INDEX)),
        Err(ManifestError::Json(_))
    ));
    // A vendor type that is not a manifest type is refused, not guessed around.
    assert!(matches!(
        Manifest::parse(&fixture("oci_manifest_no_media_type.json"), Some(OCI_LAYER_TAR)),
        Err(ManifestError::MediaType(m)) if m == OCI_LAYER_TAR
    ));
}

#[test]
fn a_layout_index_names_its_manifests() {
    let layout: LayoutIndex = serde_json::from_slice(&fixture("layout_index.json")).unwrap();
    assert_eq!(layout.manifests.len(), 1);
    assert_eq!(
        layout.manifests[0]
            .annotations
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str),
        Some("latest")
    );
    // The importer reads index.json leniently: no manifests is an empty layout.
    let empty: LayoutIndex = serde_json::from_slice(b"{}").unwrap();
    assert!(empty.manifests.is_empty());
}

#[test]
fn size_limits_are_the_ones_both_sides_used() {
    // The agent's default `max_manifest_bytes` and the importer's limit for
    // manifests and layout JSON were both 4 MiB; configs 16 MiB.
    assert_eq!(MAX_MANIFEST_BYTES, 4 * 1024 * 1024);
    assert_eq!(MAX_CONFIG_BYTES, 16 * 1024 * 1024);
    for name in [
        "docker_manifest_list.json",
        "oci_index_with_attestations.json",
        "oci_manifest.json",
    ] {
        assert!((fixture(name).len() as u64) < MAX_MANIFEST_BYTES);
    }
}

const ARCHES: [&str; 5] = ["amd64", "arm64", "arm", "riscv64", "unknown"];
const VARIANTS: [Option<&str>; 5] = [None, Some("v6"), Some("v7"), Some("v8"), Some("v3")];
const TYPES: [&str; 4] = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, OCI_CONFIG];

fn entry() -> impl Strategy<Value = Descriptor> {
    (
        0..ARCHES.len(),
        0..VARIANTS.len(),
        0..TYPES.len(),
        any::<u8>(),
    )
        .prop_map(|(a, v, t, n)| {
            let mut d = Descriptor::new(TYPES[t], Digest::of(&[n]), 1);
            d.platform = Some(Platform {
                os: "linux".into(),
                architecture: ARCHES[a].into(),
                variant: VARIANTS[v].map(str::to_owned),
            });
            d
        })
}

proptest! {
    /// The chosen entry is an image manifest that runs on the platform, and
    /// no entry fits better; nothing is chosen only when nothing fits.
    #[test]
    fn selection_picks_a_best_runnable_image_manifest(
        manifests in proptest::collection::vec(entry(), 0..12),
        want in prop::sample::select(vec!["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"]),
    ) {
        let platform = Platform::parse(want).unwrap();
        let idx = ImageIndex { schema_version: 2, media_type: None, manifests };
        let score = |d: &Descriptor| platform.score(d.platform.as_ref()?);
        let best = idx.manifests.iter()
            .filter(|d| is_image_manifest(&d.media_type))
            .filter_map(score)
            .max();
        match idx.select(&platform) {
            Some(d) => {
                prop_assert!(is_image_manifest(&d.media_type));
                prop_assert_eq!(score(d), best);
            }
            None => prop_assert_eq!(best, None),
        }
    }

    /// Whatever the bytes and the hint, parsing does not panic, and what
    /// parses carries a manifest media type of its own kind.
    #[test]
    fn parsed_manifests_carry_a_media_type_of_their_kind(
        doc in prop::sample::select(vec![
            "docker_manifest_list.json", "oci_index_no_media_type.json",
            "oci_manifest.json", "oci_manifest_no_media_type.json", "schema1.json",
        ]),
        hint in prop::option::of(prop_oneof![
            prop::sample::select(vec![OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG]).prop_map(str::to_owned),
            "application/[a-z.+;= -]{0,30}",
        ]),
        cut in 0usize..4096,
    ) {
        let bytes = fixture(doc);
        for input in [&bytes[..], &bytes[..cut.min(bytes.len())]] {
            if let Ok(m) = Manifest::parse(input, hint.as_deref()) {
                match &m {
                    Manifest::Index(_) => prop_assert!(is_index(m.media_type())),
                    Manifest::Image(_) => prop_assert!(is_image_manifest(m.media_type())),
                }
            }
        }
    }
}
