//! OCI distribution (pull) client: manifests and indexes, platform selection,
//! anonymous/basic/bearer auth, and verified, resumable, rate-capped blob
//! downloads. Free of agent state: cargo feature `fetch` builds it alone
//! (the fuzz crate does, for the `WWW-Authenticate` parser); the control
//! plane does not use it.

mod auth;
mod blob;
mod client;
mod delta;
mod error;
mod limit;
mod sink;

pub use auth::{Challenge, Credentials, parse_challenge};
pub use blob::{BlobDownload, Partial};
pub use client::{Client, ClientConfig, FetchedManifest, Resolved};
pub use delta::{DeltaOffer, DeltaProbe};
pub use error::{BodyError, FetchError, TokenError};
pub use fleet_protocol::ImageRef;
pub use fleet_protocol::oci::{
    Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError, Platform, PlatformError,
};
pub use limit::{RateLimiter, RetryPolicy};
