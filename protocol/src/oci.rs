//! OCI image types both sides read: media types, content descriptors, image
//! manifests and indexes (OCI and Docker schema 2), the platform an index
//! entry is for, an image layout's `index.json` and the part of an image
//! config that names the layers' diff_ids.
//!
//! The agent's registry client and the server's content store and importers
//! parse manifests here, with one rule set: [`Manifest::parse`].

mod platform;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::Digest;

pub use platform::{Platform, PlatformError};

/// Media types of manifests, configs and layers.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// An uncompressed layer tar.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// An uncompressed Docker layer tar.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// A Docker "foreign" layer (e.g. Windows base layers), gzip.
    pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI non-distributable layers (deprecated by the image spec, still met).
    pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

    /// The `Accept` header sent for manifests: every manifest type understood here.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

    /// Whether `media_type` names an index (a manifest of manifests).
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }

    /// Whether `media_type` names an image manifest (one config, its layers).
    pub fn is_image_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }

    /// Whether `media_type` names a manifest of either kind.
    pub fn is_manifest(media_type: &str) -> bool {
        is_index(media_type) || is_image_manifest(media_type)
    }
}

/// Manifests and indexes are read whole; larger ones are refused (the
/// agent's default download limit and the importer's limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Image configs may be larger than manifests (long histories).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The annotation naming a manifest in an OCI image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of a known shape")]
    Json(#[source] serde_json::Error),
    #[error("unsupported manifest media type {0:?} (schema 1 and others are not supported)")]
    MediaType(String),
    #[error("unsupported manifest schemaVersion {0}")]
    SchemaVersion(u32),
}

/// A content descriptor: what a manifest says about a blob or a child manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Where a non-distributable blob may be fetched from instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor with only the three required fields.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest,
            size,
            urls: Vec::new(),
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2): one config and its layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// The config followed by the layers, each digest once.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        let mut out: Vec<&Descriptor> = Vec::with_capacity(self.layers.len() + 1);
        for d in std::iter::once(&self.config).chain(&self.layers) {
            if !out.iter().any(|o| o.digest == d.digest) {
                out.push(d);
            }
        }
        out
    }
}

/// An image index (OCI) or manifest list (Docker): one manifest per platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// The image manifest entry that best fits `platform`, if any runs there.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .filter(|d| media_type::is_image_manifest(&d.media_type))
            .filter_map(|d| Some((platform.score(d.platform.as_ref()?)?, d)))
            .fold(
                None,
                |best: Option<(u32, &Descriptor)>, (s, d)| match best {
                    Some((bs, _)) if bs >= s => best,
                    _ => Some((s, d)),
                },
            )
            .map(|(_, d)| d)
    }

    /// The platforms the index offers, for error messages.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
            .collect()
    }
}

/// A parsed manifest of either kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: u32,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses `bytes`. `hint` is what the document was served or referred to
    /// as (a registry's `Content-Type`, the descriptor pointing at it); it
    /// decides the kind when the document does not name its own media type,
    /// and is then recorded as the manifest's media type. Without either,
    /// the shape decides (`manifests` present: an index). Only schema 2
    /// manifests and indexes of the four known media types are accepted.
    pub fn parse(bytes: &[u8], hint: Option<&str>) -> Result<Self, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if probe.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(probe.schema_version));
        }
        let hint = hint
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| c.starts_with("application/vnd."));
        let declared = probe.media_type.is_some();
        let media_type = probe.media_type.as_deref().or(hint);
        let is_index = match media_type {
            Some(m) if media_type::is_index(m) => true,
            Some(m) if media_type::is_image_manifest(m) => false,
            Some(other) => return Err(ManifestError::MediaType(other.to_owned())),
            None => probe.manifests.is_some(),
        };
        let recorded = (!declared).then(|| media_type.map(str::to_owned)).flatten();
        if is_index {
            let mut index: ImageIndex =
                serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
            index.media_type = index.media_type.or(recorded);
            Ok(Manifest::Index(index))
        } else {
            let mut image: ImageManifest =
                serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
            image.media_type = image.media_type.or(recorded);
            Ok(Manifest::Image(image))
        }
    }

    /// The media type: declared, hinted, or the OCI type of its kind.
    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => m.media_type.as_deref().unwrap_or(media_type::OCI_MANIFEST),
            Manifest::Index(i) => i.media_type.as_deref().unwrap_or(media_type::OCI_INDEX),
        }
    }
}

/// An OCI image layout's `index.json`, read leniently: only the manifests
/// it lists (and their `ref.name` annotations) matter to an importer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LayoutIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The part of an image config that names the layers' uncompressed digests.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

/// The labels of an image config (`config.Labels`; absent or `null`
/// labels are none).
pub fn config_labels(config: &[u8]) -> Result<BTreeMap<String, String>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(rename = "Labels", default)]
        labels: Option<BTreeMap<String, String>>,
    }
    let c: Config = serde_json::from_slice(config)?;
    Ok(c.config.and_then(|i| i.labels).unwrap_or_default())
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
#[path = "oci_tests.rs"]
mod tests;
