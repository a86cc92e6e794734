//! The Fleet control plane.

pub mod content;
pub mod keys;
pub mod sign;

/// The control plane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
