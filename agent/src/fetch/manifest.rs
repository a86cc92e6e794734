//! OCI and Docker schema 2 manifests, indexes (manifest lists) and descriptors.

use std::collections::BTreeMap;

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};

use super::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header sent for manifests: every type this client understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
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
    /// The entry that best fits `platform`, if any runs there.
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .filter(|d| d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST)
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
    /// Parses `bytes`, using the registry's `Content-Type` when the document
    /// does not name its own media type.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if probe.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(probe.schema_version));
        }
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| c.starts_with("application/vnd."));
        let media_type = probe.media_type.as_deref().or(content_type);
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(ManifestError::MediaType(other.to_owned())),
            None => probe.manifests.is_some(),
        };
        if is_index {
            serde_json::from_slice(bytes)
                .map(Manifest::Index)
                .map_err(ManifestError::Json)
        } else {
            serde_json::from_slice(bytes)
                .map(Manifest::Image)
                .map_err(ManifestError::Json)
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Manifest::Image(m) => m.media_type.as_deref().unwrap_or(OCI_MANIFEST),
            Manifest::Index(i) => i.media_type.as_deref().unwrap_or(OCI_INDEX),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
