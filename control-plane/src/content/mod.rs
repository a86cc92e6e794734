//! Content: the server's image store and its OCI distribution pull API.
//!
//! - [`ContentStore`]: blobs on disk under `<data>/content/blobs/sha256/<hex>`
//!   (written to a temporary file, fsynced, renamed) and a small JSON index of
//!   repositories: tag → manifest digest, and which manifests each repository
//!   holds.
//! - [`router`]: the OCI distribution *pull* API under `/v2/`, so skopeo,
//!   crane, containerd and the agent can pull from the server.
//! - [`Deltas`]: byte-level layer deltas computed off the request path,
//!   cached in the store, served under `/v2/<name>/deltas/` ([`delta`]),
//!   started when a rollout deploys ([`prepare`]).
//! - [`import_oci_layout`], [`import_archive`] (OCI archive or `docker save`
//!   tar), [`import_docker_archive`]: fill the store; every blob's digest is
//!   verified before it is stored, and tags move only after all the content
//!   they point to is in place.
//! - [`import_router`]: `POST /api/v1/images/import`, the upload endpoint
//!   behind `fleetctl image import` (its client is `crate::cli::image`).

mod code;
pub mod delta;
mod http;
mod import;
pub mod prepare;
pub mod range;
mod resolver;
mod source;
mod store;

pub use code::ContentCode;
pub use delta::{DeltaOptions, Deltas};
pub use fleet_protocol::oci::media_type;
pub use http::{
    DELTA_LAYER_SIZE, DELTA_RETRY_SECS, DELTA_TARGET, MAX_IMPORT_BYTES, import_router, router,
    router_with_deltas,
};
pub use import::{
    ImportSummary, ImportedImage, import_archive, import_docker_archive, import_oci_archive,
    import_oci_layout,
};
pub use resolver::ContentResolver;
pub use store::{ContentStore, ManifestEntry};

use std::path::PathBuf;

use fleet_protocol::Digest;

/// Errors of the content store and of imports.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tag index {path} is corrupt: {source}")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "invalid repository name {name:?} (lowercase path components [a-z0-9._-] separated by '/')"
    )]
    BadRepository { name: String },
    #[error("invalid tag {tag:?} ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")]
    BadTag { tag: String },
    #[error("blob {path} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {digest}: descriptor says {expected} bytes, file has {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is missing from {path}")]
    MissingBlob { digest: Digest, path: PathBuf },
    #[error("{what} in {path} is not valid: {source}")]
    BadJson {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest {path} is not valid: {source}")]
    BadManifest {
        path: PathBuf,
        #[source]
        source: fleet_protocol::oci::ManifestError,
    },
    #[error("{path} is not an OCI image layout or docker archive: {reason}")]
    BadLayout { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("layer {path} of the docker archive: {reason}")]
    BadDockerLayer { path: PathBuf, reason: String },
    #[error("a repository name is needed to import {path} (pass --repository)")]
    RepositoryRequired { path: PathBuf },
    #[error("{path}: {reason}")]
    TagRequired { path: PathBuf, reason: String },
    #[error("unsupported media type {media_type:?} for manifest {digest}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("import exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ContentError {
    /// A stable code for errors that cross the wire (import API answers).
    pub fn code(&self) -> ContentCode {
        match self {
            Self::Io { .. } | Self::CorruptIndex { .. } | Self::Join(_) => ContentCode::Internal,
            Self::BadRepository { .. } => ContentCode::NameInvalid,
            Self::BadTag { .. } => ContentCode::TagInvalid,
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => ContentCode::DigestInvalid,
            Self::MissingBlob { .. } => ContentCode::BlobUnknown,
            Self::BadJson { .. } | Self::BadManifest { .. } | Self::UnsupportedMediaType { .. } => {
                ContentCode::ManifestInvalid
            }
            Self::BadLayout { .. }
            | Self::BadArchive { .. }
            | Self::BadDockerLayer { .. }
            | Self::RepositoryRequired { .. }
            | Self::TagRequired { .. } => ContentCode::ArchiveInvalid,
            Self::TooLarge { .. } => ContentCode::TooLarge,
        }
    }

    /// Whether the error is the client's fault (bad input) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::Io { .. } | Self::CorruptIndex { .. } | Self::Join(_)
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Checks a repository name against the distribution grammar
/// (`component ( "/" component )*`, at most 255 bytes).
pub fn validate_repository(name: &str) -> Result<(), ContentError> {
    // One grammar for image names in the project: ImageRef's. A "localhost/"
    // prefix makes the whole name its path.
    let bad = || ContentError::BadRepository {
        name: name.to_owned(),
    };
    let parsed =
        fleet_protocol::ImageRef::parse(&format!("localhost/{name}")).map_err(|_| bad())?;
    if parsed.repository() != name || name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    Ok(())
}

/// Checks a tag against the distribution grammar.
pub fn validate_tag(tag: &str) -> Result<(), ContentError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    let ok = tag.len() <= 128
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ContentError::BadTag {
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for ok in ["busybox", "edge/busybox", "ns/sub/model-v2", "a.b_c__d"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Edge/busybox",
            "/busybox",
            "busybox/",
            "a//b",
            "a/../b",
            "a:b",
            "a@b",
            "-a",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for ok in ["1", "latest", "v1.2.3-rc_1", "_x"] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", ".x", "-x", "a/b", "a:b", long.as_str()] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }
}
