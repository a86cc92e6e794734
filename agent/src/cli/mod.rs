//! The subcommands of the `fleet-agent` binary.

pub mod pull;
pub mod verify;
