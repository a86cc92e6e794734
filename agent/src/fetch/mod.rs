//! OCI distribution (pull) client: manifests and indexes, platform selection,
//! anonymous/basic/bearer auth, and verified, resumable, rate-capped blob
//! downloads. Free of agent state, so the control plane uses it too
//! (cargo feature `fetch`).

mod auth;
mod blob;
mod client;
mod error;
mod limit;
pub mod manifest;
mod platform;
#[cfg(feature = "agent")]
mod pull;
mod sink;

pub use auth::Credentials;
pub use blob::{BlobDownload, Partial};
pub use client::{Client, ClientConfig, FetchedManifest, Resolved};
pub use error::FetchError;
pub use fleet_protocol::ImageRef;
pub use limit::{RateLimiter, RetryPolicy};
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError};
pub use platform::{Platform, PlatformError};
#[cfg(feature = "agent")]
pub use pull::{EventSink, PullError, PullEvent, PullSummary, Puller};
