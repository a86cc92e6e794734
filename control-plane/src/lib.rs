//! The Fleet control plane.

pub mod broker;
pub mod keys;
pub mod link;
pub mod sign;

/// The control plane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
