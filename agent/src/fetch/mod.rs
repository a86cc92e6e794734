//! OCI distribution (pull) client: manifests and indexes, platform selection,
//! anonymous/basic/bearer auth, and verified, resumable, rate-capped blob
//! downloads. Free of agent state, so the control plane uses it too
//! (cargo feature `fetch`).

mod auth;
mod blob;
mod client;
mod delta;
mod error;
mod limit;
#[cfg(feature = "agent")]
mod pull;
#[cfg(feature = "agent")]
mod pull_delta;
mod sink;

pub use auth::{Challenge, Credentials, parse_challenge};
pub use blob::{BlobDownload, Partial};
pub use client::{Client, ClientConfig, FetchedManifest, Resolved};
pub use delta::{DeltaOffer, DeltaProbe};
pub use error::FetchError;
pub use fleet_protocol::ImageRef;
pub use fleet_protocol::oci::{
    Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError, Platform, PlatformError,
};
pub use limit::{RateLimiter, RetryPolicy};

/// The OCI types, under the names the agent has always used for them
/// (`fetch::manifest::OCI_MANIFEST`, `super::manifest::Descriptor`).
pub mod manifest {
    pub use fleet_protocol::oci::media_type::*;
    pub use fleet_protocol::oci::*;
}

/// The platform type, where the client looks for it.
mod platform {
    pub use fleet_protocol::oci::Platform;
}
#[cfg(feature = "agent")]
pub use pull::{EventSink, PullError, PullEvent, PullSummary, Puller};
