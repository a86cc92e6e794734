//! Imports into the content store: OCI image layouts (a directory or a tar
//! of one) and `docker save` archives.
//!
//! Every blob is hashed and checked against the digest (and size) that
//! refers to it before it is stored; the repository's tags move only after
//! all the content they point to is stored. A `docker save` image becomes an
//! OCI image manifest whose layers are the archive's uncompressed layer tars
//! as they are, so each layer's digest is its diff_id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::source::{Extracted, Source, normalize};
use super::store::{ContentStore, ManifestEntry};
use super::{ContentError, validate_repository, validate_tag};
use fleet_protocol::oci::{
    ANNOTATION_REF_NAME, Descriptor, ImageConfig, ImageManifest, LayoutIndex, MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES, Manifest, ManifestError, media_type,
};
use fleet_protocol::{Digest, ImageRef};
use serde::{Deserialize, Serialize};

/// Manifests, indexes and the layout's own JSON files are read whole; they
/// may not be larger than this.
const MAX_JSON: u64 = MAX_MANIFEST_BYTES;
/// Image configs may be larger (long histories).
const MAX_CONFIG: u64 = MAX_CONFIG_BYTES;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 4;

/// What an import stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// The tags set, in import order.
    pub images: Vec<ImportedImage>,
    /// Blobs (manifests included) that were new to the store.
    pub blobs_added: usize,
    /// Blobs the store had already (verified in the source all the same).
    pub blobs_present: usize,
}

/// One tag an import set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
}

/// Imports an OCI image layout directory into `repository`.
///
/// With `tag`, the layout's manifest named `tag` (or its only manifest) is
/// tagged `tag`; without, every named manifest is imported under its name.
pub async fn import_oci_layout(
    store: &ContentStore,
    dir: &Path,
    repository: &str,
    tag: Option<&str>,
) -> Result<ImportSummary, ContentError> {
    let (store, dir, repository, tag) = owned(store, dir, Some(repository), tag);
    tokio::task::spawn_blocking(move || {
        let repository = repository.unwrap_or_default();
        let source = Source::Dir(dir);
        Importer::new(&store, &source).oci_layout(&repository, tag.as_deref())
    })
    .await?
}

/// Imports a tar of an OCI image layout (`skopeo copy ... oci-archive:`).
pub async fn import_oci_archive(
    store: &ContentStore,
    tar: &Path,
    repository: &str,
    tag: Option<&str>,
) -> Result<ImportSummary, ContentError> {
    let (store, tar, repository, tag) = owned(store, tar, Some(repository), tag);
    tokio::task::spawn_blocking(move || {
        let repository = repository.unwrap_or_default();
        let source = Source::Archive(Extracted::from_tar(&store, &tar)?);
        Importer::new(&store, &source).oci_layout(&repository, tag.as_deref())
    })
    .await?
}

/// Imports a `docker save` archive. Names come from the archive's
/// `RepoTags` unless `repository` / `tag` override them (`tag` needs an
/// archive of one image).
pub async fn import_docker_archive(
    store: &ContentStore,
    tar: &Path,
    repository: Option<&str>,
    tag: Option<&str>,
) -> Result<ImportSummary, ContentError> {
    let (store, tar, repository, tag) = owned(store, tar, repository, tag);
    tokio::task::spawn_blocking(move || {
        let source = Source::Archive(Extracted::from_tar(&store, &tar)?);
        Importer::new(&store, &source).docker(repository.as_deref(), tag.as_deref())
    })
    .await?
}

/// Imports a tar that is either an OCI archive or a `docker save` archive.
/// An OCI layout inside is preferred when `repository` is given (it keeps
/// the image's own digests); a `docker save` archive may name its images.
pub async fn import_archive(
    store: &ContentStore,
    tar: &Path,
    repository: Option<&str>,
    tag: Option<&str>,
) -> Result<ImportSummary, ContentError> {
    let (store, tar, repository, tag) = owned(store, tar, repository, tag);
    tokio::task::spawn_blocking(move || {
        let extracted = Extracted::from_tar(&store, &tar)?;
        let is_layout = extracted.contains("oci-layout") && extracted.contains("index.json");
        let is_docker = extracted.contains("manifest.json");
        let source = Source::Archive(extracted);
        let mut importer = Importer::new(&store, &source);
        match (repository, is_layout, is_docker) {
            (Some(repo), true, _) => importer.oci_layout(&repo, tag.as_deref()),
            (repo, _, true) => importer.docker(repo.as_deref(), tag.as_deref()),
            (None, true, false) => Err(ContentError::RepositoryRequired { path: tar }),
            (_, false, false) => Err(ContentError::BadLayout {
                path: tar,
                reason: "neither oci-layout + index.json nor manifest.json found".into(),
            }),
        }
    })
    .await?
}

fn owned(
    store: &ContentStore,
    path: &Path,
    repository: Option<&str>,
    tag: Option<&str>,
) -> (ContentStore, PathBuf, Option<String>, Option<String>) {
    (
        store.clone(),
        path.to_owned(),
        repository.map(str::to_owned),
        tag.map(str::to_owned),
    )
}

fn blob_rel(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The tag an OCI layout's `ref.name` annotation gives: the name itself
/// (`latest`) or the tag of a full reference (`docker.io/x/y:1`).
fn ref_name_tag(name: &str) -> Option<String> {
    if validate_tag(name).is_ok() {
        return Some(name.to_owned());
    }
    ImageRef::parse(name).ok()?.tag().map(str::to_owned)
}

/// A `docker save` `RepoTags` entry split into repository and tag, the
/// registry host (if any) dropped: `localhost:5000/edge/x:1` → (`edge/x`, `1`).
fn split_repo_tag(value: &str) -> Option<(String, String)> {
    let slash = value.rfind('/');
    let colon = value.rfind(':').filter(|c| slash.is_none_or(|s| *c > s))?;
    let (name, tag) = (&value[..colon], &value[colon + 1..]);
    let name = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => name,
    };
    Some((name.to_owned(), tag.to_owned()))
}

/// One entry of a `docker save` archive's `manifest.json` (Docker's own
/// format, not OCI: only the importer reads it).
#[derive(Debug, Deserialize)]
struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// What one repository gets from an import.
#[derive(Default)]
struct RepoCommit {
    manifests: Vec<(Digest, ManifestEntry)>,
    tags: Vec<(String, Digest)>,
}

struct Importer<'a> {
    store: &'a ContentStore,
    source: &'a Source,
    added: usize,
    present: usize,
    /// Manifests stored for the repository being imported.
    manifests: Vec<(Digest, ManifestEntry)>,
}

impl<'a> Importer<'a> {
    fn new(store: &'a ContentStore, source: &'a Source) -> Self {
        Self {
            store,
            source,
            added: 0,
            present: 0,
            manifests: Vec::new(),
        }
    }

    fn count(&mut self, added: bool) {
        if added {
            self.added += 1;
        } else {
            self.present += 1;
        }
    }

    fn summary(&self, images: Vec<ImportedImage>) -> ImportSummary {
        ImportSummary {
            images,
            blobs_added: self.added,
            blobs_present: self.present,
        }
    }

    fn oci_layout(
        &mut self,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<ImportSummary, ContentError> {
        validate_repository(repository)?;
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let layout_err = |reason: &str| ContentError::BadLayout {
            path: self.source.display(""),
            reason: reason.to_owned(),
        };
        if self.source.read_small("oci-layout", MAX_JSON)?.is_none() {
            return Err(layout_err("no oci-layout file"));
        }
        let bytes = self
            .source
            .read_small("index.json", MAX_JSON)?
            .ok_or_else(|| layout_err("no index.json"))?;
        let index: LayoutIndex =
            serde_json::from_slice(&bytes).map_err(|source| ContentError::BadJson {
                what: "index.json",
                path: self.source.display("index.json"),
                source,
            })?;
        let named: Vec<(String, &Descriptor)> = index
            .manifests
            .iter()
            .filter_map(|d| Some((ref_name_tag(d.annotations.get(ANNOTATION_REF_NAME)?)?, d)))
            .collect();
        let selected: Vec<(String, &Descriptor)> = match tag {
            Some(tag) => {
                let chosen = named
                    .iter()
                    .find(|(name, _)| name == tag)
                    .map(|(_, d)| *d)
                    .or(match index.manifests.as_slice() {
                        [only] => Some(only),
                        _ => None,
                    })
                    .ok_or_else(|| ContentError::TagRequired {
                        path: self.source.display("index.json"),
                        reason: format!(
                            "the layout holds {} manifests and none is named {tag:?}",
                            index.manifests.len()
                        ),
                    })?;
                vec![(tag.to_owned(), chosen)]
            }
            None if named.is_empty() => {
                return Err(ContentError::TagRequired {
                    path: self.source.display("index.json"),
                    reason: "no manifest in the layout is named: pass --tag".into(),
                });
            }
            None => named,
        };

        let mut images = Vec::new();
        for (tag, desc) in &selected {
            let media_type = self.manifest_tree(desc, 0)?;
            images.push(ImportedImage {
                repository: repository.to_owned(),
                tag: tag.clone(),
                digest: desc.digest.clone(),
                media_type,
            });
        }
        let tags = images.iter().map(|i| (i.tag.clone(), i.digest.clone()));
        self.store
            .commit(repository, std::mem::take(&mut self.manifests), tags)?;
        Ok(self.summary(images))
    }

    /// Stores a manifest and, depth first, everything it points to (the
    /// manifest itself last). Returns its media type.
    fn manifest_tree(&mut self, desc: &Descriptor, depth: usize) -> Result<String, ContentError> {
        let rel = blob_rel(&desc.digest);
        if depth > MAX_DEPTH {
            return Err(ContentError::BadLayout {
                path: self.source.display(&rel),
                reason: format!("indexes nest deeper than {MAX_DEPTH}"),
            });
        }
        if desc.size > MAX_JSON {
            return Err(ContentError::BadLayout {
                path: self.source.display(&rel),
                reason: format!("manifest of {} bytes is too large", desc.size),
            });
        }
        let bytes =
            self.source
                .read_small(&rel, MAX_JSON)?
                .ok_or_else(|| ContentError::MissingBlob {
                    digest: desc.digest.clone(),
                    path: self.source.display(&rel),
                })?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(ContentError::DigestMismatch {
                path: self.source.display(&rel),
                expected: desc.digest.clone(),
                actual,
            });
        }
        if bytes.len() as u64 != desc.size {
            return Err(ContentError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let manifest = Manifest::parse(&bytes, Some(&desc.media_type)).map_err(|e| match e {
            ManifestError::MediaType(media_type) => ContentError::UnsupportedMediaType {
                digest: desc.digest.clone(),
                media_type,
            },
            other => ContentError::BadManifest {
                path: self.source.display(&rel),
                source: other,
            },
        })?;
        let media = manifest.media_type().to_owned();
        match &manifest {
            Manifest::Index(index) => {
                for child in &index.manifests {
                    if media_type::is_manifest(&child.media_type) {
                        self.manifest_tree(child, depth + 1)?;
                    } else {
                        self.blob(child)?;
                    }
                }
            }
            Manifest::Image(image) => {
                self.blob(&image.config)?;
                for layer in &image.layers {
                    // Non-distributable layers live elsewhere (their urls).
                    if !layer.urls.is_empty() && !self.source_has(&layer.digest) {
                        continue;
                    }
                    self.blob(layer)?;
                }
            }
        }
        let added = self.store.blob_size(&desc.digest).is_none();
        self.store.put_bytes(&bytes)?;
        self.count(added);
        self.manifests.push((
            desc.digest.clone(),
            ManifestEntry {
                media_type: media.clone(),
                size: desc.size,
            },
        ));
        Ok(media)
    }

    fn source_has(&self, digest: &Digest) -> bool {
        let rel = blob_rel(digest);
        match self.source {
            Source::Dir(root) => root.join(rel).is_file(),
            Source::Archive(x) => x.contains(&rel),
        }
    }

    fn blob(&mut self, desc: &Descriptor) -> Result<(), ContentError> {
        let added = self.source.store_blob(
            self.store,
            &blob_rel(&desc.digest),
            &desc.digest,
            Some(desc.size),
        )?;
        self.count(added);
        Ok(())
    }

    fn docker(
        &mut self,
        repository: Option<&str>,
        tag: Option<&str>,
    ) -> Result<ImportSummary, ContentError> {
        let Source::Archive(archive) = self.source else {
            return Err(ContentError::BadLayout {
                path: self.source.display(""),
                reason: "docker archives are imported from a tar".into(),
            });
        };
        let path = archive.tar.clone();
        if let Some(repository) = repository {
            validate_repository(repository)?;
        }
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        let bytes = self
            .source
            .read_small("manifest.json", MAX_JSON)?
            .ok_or_else(|| ContentError::BadLayout {
                path: path.clone(),
                reason: "no manifest.json".into(),
            })?;
        let entries: Vec<DockerArchiveEntry> =
            serde_json::from_slice(&bytes).map_err(|source| ContentError::BadJson {
                what: "manifest.json",
                path: self.source.display("manifest.json"),
                source,
            })?;
        if tag.is_some() && entries.len() != 1 {
            return Err(ContentError::TagRequired {
                path,
                reason: format!(
                    "the archive holds {} images; a tag names exactly one",
                    entries.len()
                ),
            });
        }

        // Repository → (manifests, tags), committed once all are stored.
        let mut commits: BTreeMap<String, RepoCommit> = BTreeMap::new();
        let mut images = Vec::new();
        for entry in &entries {
            let names: Vec<(String, String)> = match tag {
                Some(tag) => {
                    let from_archive = entry
                        .repo_tags
                        .iter()
                        .flatten()
                        .find_map(|rt| split_repo_tag(rt))
                        .map(|(repo, _)| repo);
                    let repo = repository
                        .map(str::to_owned)
                        .or(from_archive)
                        .ok_or_else(|| ContentError::RepositoryRequired { path: path.clone() })?;
                    vec![(repo, tag.to_owned())]
                }
                None => {
                    let names: Vec<_> = entry
                        .repo_tags
                        .iter()
                        .flatten()
                        .filter_map(|rt| split_repo_tag(rt))
                        .map(|(repo, t)| (repository.map_or(repo, str::to_owned), t))
                        .collect();
                    if names.is_empty() {
                        return Err(ContentError::TagRequired {
                            path,
                            reason: format!("image {} has no RepoTags: pass --tag", entry.config),
                        });
                    }
                    names
                }
            };
            for (repo, t) in &names {
                validate_repository(repo)?;
                validate_tag(t)?;
            }

            let (digest, manifest_entry) = self.docker_image(archive, entry)?;
            for (repo, t) in names {
                let slot = commits.entry(repo.clone()).or_default();
                slot.manifests
                    .push((digest.clone(), manifest_entry.clone()));
                slot.tags.push((t.clone(), digest.clone()));
                images.push(ImportedImage {
                    repository: repo,
                    tag: t,
                    digest: digest.clone(),
                    media_type: manifest_entry.media_type.clone(),
                });
            }
        }
        for (repo, c) in commits {
            self.store.commit(&repo, c.manifests, c.tags)?;
        }
        Ok(self.summary(images))
    }

    /// Stores one `docker save` image: its config, its layers (checked
    /// against the config's diff_ids) and a new OCI manifest for them.
    fn docker_image(
        &mut self,
        archive: &Extracted,
        entry: &DockerArchiveEntry,
    ) -> Result<(Digest, ManifestEntry), ContentError> {
        let config_rel = normalize(Path::new(&entry.config)).unwrap_or_default();
        let config_file = archive
            .get(&config_rel)
            .ok_or_else(|| ContentError::BadLayout {
                path: archive.tar.join(&entry.config),
                reason: "the config named in manifest.json is missing".into(),
            })?;
        let config_digest = config_file.digest.clone();
        // Docker names configs by their digest: `<hex>.json` or `blobs/sha256/<hex>`.
        let named_hex = Path::new(&config_rel)
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".json"))
            .filter(|n| n.len() == 64);
        if let Some(hex) = named_hex
            && hex != config_digest.hex()
        {
            return Err(ContentError::DigestMismatch {
                path: archive.tar.join(&config_rel),
                expected: Digest::new(format!("sha256:{hex}")).unwrap_or(config_digest.clone()),
                actual: config_digest,
            });
        }
        let config_bytes = self
            .source
            .read_small(&config_rel, MAX_CONFIG)?
            .unwrap_or_default();
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| ContentError::BadJson {
                what: "image config",
                path: archive.tar.join(&config_rel),
                source,
            })?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ContentError::BadLayout {
                path: archive.tar.join(&config_rel),
                reason: format!(
                    "{} layers in manifest.json but {} diff_ids in the config",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }

        let mut layers = Vec::new();
        for (layer, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let rel = normalize(Path::new(layer)).unwrap_or_default();
            let file = archive.get(&rel).ok_or_else(|| ContentError::MissingBlob {
                digest: diff_id.clone(),
                path: archive.tar.join(layer),
            })?;
            if &file.digest != diff_id {
                return Err(ContentError::BadDockerLayer {
                    path: archive.tar.join(layer),
                    reason: format!(
                        "its sha256 is {} but the config's diff_id is {diff_id} \
                         (only uncompressed layer tars are supported)",
                        file.digest
                    ),
                });
            }
            let size = file.size;
            let added = self
                .source
                .store_blob(self.store, &rel, diff_id, Some(size))?;
            self.count(added);
            layers.push(Descriptor::new(
                media_type::OCI_LAYER_TAR,
                diff_id.clone(),
                size,
            ));
        }
        let config_size = config_bytes.len() as u64;
        let added =
            self.source
                .store_blob(self.store, &config_rel, &config_digest, Some(config_size))?;
        self.count(added);

        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            config: Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|source| ContentError::BadJson {
            what: "generated manifest",
            path: archive.tar.clone(),
            source,
        })?;
        let digest = Digest::of(&bytes);
        let added = self.store.blob_size(&digest).is_none();
        self.store.put_bytes(&bytes)?;
        self.count(added);
        Ok((
            digest,
            ManifestEntry {
                media_type: media_type::OCI_MANIFEST.to_owned(),
                size: bytes.len() as u64,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_drop_the_registry_host() {
        let s = split_repo_tag;
        assert_eq!(
            s("busybox:latest"),
            Some(("busybox".into(), "latest".into()))
        );
        assert_eq!(
            s("localhost:5000/edge/x:1"),
            Some(("edge/x".into(), "1".into()))
        );
        assert_eq!(
            s("docker.io/library/busybox:1.36"),
            Some(("library/busybox".into(), "1.36".into()))
        );
        assert_eq!(s("localhost:5000/edge/x"), None);
    }

    #[test]
    fn ref_names_give_tags() {
        assert_eq!(ref_name_tag("latest").as_deref(), Some("latest"));
        assert_eq!(
            ref_name_tag("docker.io/library/busybox:1.36").as_deref(),
            Some("1.36")
        );
        assert_eq!(ref_name_tag("no tag/").as_deref(), None);
    }
}
