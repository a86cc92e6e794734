//! The Fleet control plane.

/// The control plane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
