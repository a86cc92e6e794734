use std::path::PathBuf;

use fleet_protocol::Digest;

use fleet_protocol::oci::ManifestError;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("TLS setup failed")]
    Tls(#[source] rustls::Error),
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the download of {digest} was interrupted by a newer desired state; what arrived is kept"
    )]
    Interrupted { digest: Digest },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} was not found (HTTP 404): check the repository, tag or digest")]
    NotFound { url: String },
    #[error("registry {registry} refused access: {reason}")]
    Unauthorized { registry: String, reason: String },
    #[error("token endpoint {realm} failed")]
    Token {
        realm: String,
        #[source]
        source: TokenError,
    },
    #[error("manifest at {url} is larger than the {limit}-byte limit{}", size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    ManifestTooLarge {
        url: String,
        limit: u64,
        size: Option<u64>,
    },
    #[error("manifest at {url} is invalid")]
    Manifest {
        url: String,
        #[source]
        source: ManifestError,
    },
    #[error("{url} is an image index, but an image manifest was expected")]
    UnexpectedIndex { url: String },
    #[error(
        "no manifest for platform {platform} in the index of {reference} (it offers: {available})"
    )]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error(
        "{url} declares Content-Length {declared}, but {digest} has {expected} bytes left to send"
    )]
    LengthMismatch {
        url: String,
        digest: Digest,
        expected: u64,
        declared: u64,
    },
    #[error("{url} sent more than the {expected} bytes of {digest}")]
    TooLong {
        url: String,
        digest: Digest,
        expected: u64,
    },
    #[error("{url} ended after {received} of the {expected} bytes of {digest}")]
    Truncated {
        url: String,
        digest: Digest,
        expected: u64,
        received: u64,
    },
    #[error("content from {url} has digest {actual}, not the expected {expected}")]
    DigestMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url} answered a range request with a bad Content-Range {value:?}")]
    BadRange { url: String, value: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid URL {url}")]
    Url { url: String },
}

/// Why a bearer token could not be had from a token endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Also a realm that is not a URL (a builder error).
    #[error("the request failed")]
    Request(#[source] reqwest::Error),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("reading its response")]
    Body(#[source] BodyError),
    #[error("its response is not a token response")]
    Json(#[source] serde_json::Error),
    #[error("its response holds no token")]
    NoToken,
}

/// Why a small response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the connection failed")]
    Read(#[source] reqwest::Error),
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl FetchError {
    /// Whether trying again (after a pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Http { source, .. } => !source.is_builder() && !source.is_redirect(),
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            FetchError::Truncated { .. } => true,
            _ => false,
        }
    }

    /// Whether the download was stopped by a newer desired state (not a
    /// failure: what arrived is kept for the next attempt).
    pub fn is_interruption(&self) -> bool {
        matches!(self, FetchError::Interrupted { .. })
    }

    /// Whether a partial download is worthless after this error (it cannot be
    /// the prefix of the right content).
    pub fn spoils_partial(&self) -> bool {
        matches!(
            self,
            FetchError::TooLong { .. }
                | FetchError::DigestMismatch { .. }
                | FetchError::LengthMismatch { .. }
                | FetchError::BadRange { .. }
        )
    }
}
