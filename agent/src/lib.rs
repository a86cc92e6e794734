//! The Fleet device agent.

/// The agent's version, as reported to the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod health;
pub mod link;
pub mod runtime;
pub mod snapshot;
pub mod unpack;
