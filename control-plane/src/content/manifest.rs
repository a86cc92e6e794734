//! The parts of OCI and Docker schema2 manifests the store needs: media
//! types and the descriptors a manifest points to.

use std::collections::BTreeMap;

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};

/// Media types the store knows.
pub mod media_type {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed layer tar.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

    /// Whether `media_type` names an index (a manifest of manifests).
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }

    /// Whether `media_type` names a manifest the store serves.
    pub fn is_manifest(media_type: &str) -> bool {
        is_index(media_type) || media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }
}

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest or an index, with the fields both may carry.
#[derive(Debug, Deserialize)]
pub struct AnyManifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl AnyManifest {
    /// The media type: the declared one, else (OCI allows it to be absent)
    /// inferred from the shape.
    pub fn effective_media_type(&self, descriptor_type: Option<&str>) -> String {
        match (&self.media_type, descriptor_type) {
            (Some(m), _) => m.clone(),
            (None, Some(d)) if media_type::is_manifest(d) => d.to_owned(),
            (None, _) if self.config.is_none() && !self.manifests.is_empty() => {
                media_type::OCI_INDEX.to_owned()
            }
            (None, _) => media_type::OCI_MANIFEST.to_owned(),
        }
    }
}

/// An OCI image layout's `index.json`.
#[derive(Debug, Deserialize)]
pub struct LayoutIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The annotation naming a manifest in an OCI image layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An image manifest the store writes (for docker archives).
#[derive(Serialize)]
pub struct ImageManifestOut<'a> {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: &'a str,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The part of an image config the docker import checks.
#[derive(Debug, Deserialize)]
pub struct ImageConfig {
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// One entry of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
pub struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}
