//! The pull-through hook: where the content endpoint asks an upstream
//! registry for what the store does not have.
//!
//! Nothing here talks to a registry: the distribution client lives in
//! `fleet_agent::fetch`, and an adapter implementing [`PullThrough`] over it
//! is what [`super::http::router_with_pull_through`] takes.

use std::future::Future;
use std::pin::Pin;

use fleet_protocol::Digest;

use super::ContentStore;

/// A boxed, sendable future (the trait stays object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches missing content from an upstream registry into the store.
///
/// Implementations verify what they fetch (digests, sizes) exactly as the
/// importers do, write blobs with [`ContentStore::put_file`] /
/// [`ContentStore::put_bytes`] and record manifests and tags with
/// [`ContentStore::commit`]. The content endpoint calls them on a miss and
/// then looks the store up again.
pub trait PullThrough: Send + Sync + 'static {
    /// Fetches manifest `reference` (a tag or a digest) of `repository`,
    /// with the manifests it points to (an index's children), and records
    /// it. `Ok(false)`: upstream does not have it either.
    fn fetch_manifest<'a>(
        &'a self,
        store: &'a ContentStore,
        repository: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<bool, UpstreamError>>;

    /// Fetches blob `digest` of `repository` into the store.
    /// `Ok(false)`: upstream does not have it either.
    fn fetch_blob<'a>(
        &'a self,
        store: &'a ContentStore,
        repository: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, UpstreamError>>;
}

/// A pull-through failure (upstream unreachable, refused, or sent content
/// that does not verify).
#[derive(Debug, thiserror::Error)]
#[error("upstream fetch of {repository}:{reference} failed: {source}")]
pub struct UpstreamError {
    pub repository: String,
    pub reference: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}
