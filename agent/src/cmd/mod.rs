//! The subcommands of the `fleet-agent` binary, one module each.

pub mod deploy;
pub mod enroll;
pub mod fsck;
pub mod oci_hook;
pub mod pull;
pub mod run;
pub mod telemetry;
pub mod verify;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
