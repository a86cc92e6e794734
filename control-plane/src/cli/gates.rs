//! The gate flags shared by `fleetctl rollout` and `fleetctl groups
//! follow`: built-in gates on what a baking wave's devices report.

use clap::Args;

use crate::store::{Factor, TelemetryGates};

/// Gates checked while a settled wave bakes (they need --bake): a gate that
/// fails halts the rollout (and rolls back by --on-halt); one that cannot
/// decide at the end of the bake (no telemetry) pauses it for a human.
#[derive(Debug, Clone, Args)]
pub struct GateArgs {
    /// Gate: the wave's median app memory may be at most this many times
    /// the median of the devices still on the previous release (e.g. 1.5).
    #[arg(long, value_name = "FACTOR")]
    pub gate_memory: Option<Factor>,
    /// Gate: the wave's median app CPU may be at most this many times the
    /// median of the devices still on the previous release (e.g. 2).
    #[arg(long, value_name = "FACTOR")]
    pub gate_cpu: Option<Factor>,
    /// Gate: app restarts tolerated in all over the wave's updated devices.
    #[arg(long, value_name = "N")]
    pub gate_restarts: Option<u32>,
    /// Gate: updated devices of the wave reporting the app unhealthy
    /// tolerated.
    #[arg(long, value_name = "N")]
    pub gate_unhealthy: Option<u32>,
    /// Gate: any device of the wave whose app crash-looped on the release
    /// halts, whatever the failure thresholds tolerate.
    #[arg(long)]
    pub gate_crash_loop: bool,
}

impl GateArgs {
    pub fn gates(&self) -> TelemetryGates {
        TelemetryGates {
            memory: self.gate_memory,
            cpu: self.gate_cpu,
            restarts: self.gate_restarts,
            unhealthy: self.gate_unhealthy,
            crash_loop: self.gate_crash_loop,
        }
    }
}
