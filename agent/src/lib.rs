//! The Fleet device agent.

/// The agent's version, as reported to the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "fetch")]
pub mod fetch;

#[cfg(feature = "agent")]
pub mod config;
#[cfg(feature = "agent")]
pub mod daemon;
#[cfg(feature = "agent")]
pub mod deploy;
#[cfg(feature = "agent")]
pub mod fsck;
#[cfg(feature = "agent")]
pub mod gpu;
#[cfg(feature = "agent")]
pub mod health;
/// The host's files under `host_root` (`/`, or a fixture tree).
#[cfg(feature = "agent")]
pub mod host_root;
/// The device's key and certificate: enrollment and renewal.
#[cfg(feature = "agent")]
pub mod identity;
#[cfg(feature = "agent")]
pub mod image;
#[cfg(feature = "link")]
pub mod link;
/// Pulling an image from a registry into the content store.
#[cfg(feature = "agent")]
pub mod pull;
#[cfg(feature = "agent")]
pub mod runtime;
#[cfg(feature = "agent")]
pub mod snapshot;
#[cfg(feature = "agent")]
pub mod state;
#[cfg(feature = "agent")]
pub mod state_dir;
#[cfg(feature = "agent")]
pub mod store;
#[cfg(feature = "agent")]
pub mod telemetry;
#[cfg(any(feature = "link", feature = "fetch"))]
pub mod tls;
#[cfg(feature = "agent")]
pub mod unpack;
