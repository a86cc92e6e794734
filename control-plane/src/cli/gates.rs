//! The gate flags shared by `fleetctl rollout` and `fleetctl groups
//! follow`: built-in gates on what a baking wave's devices report.

use clap::Args;

use crate::store::{Condition, Factor, PromGate, TelemetryGates};

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
    /// Gate: a PromQL query run against the server's Prometheus
    /// (`prometheus.url`) every --gate-interval seconds while a wave bakes,
    /// e.g. 'max(model_error_ratio)'; with --gate-success.
    #[arg(long, value_name = "QUERY", requires = "gate_success")]
    pub gate_promql: Option<String>,
    /// What the PromQL result must satisfy: comparisons of `result` with a
    /// number joined by &&, e.g. 'result < 0.05' (every series must).
    #[arg(long, value_name = "CONDITION", requires = "gate_promql")]
    pub gate_success: Option<Condition>,
    /// Seconds between two PromQL measurements.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        requires = "gate_promql"
    )]
    pub gate_interval: u64,
    /// Failed PromQL measurements tolerated per wave (one more halts);
    /// also inconclusive ones (no data, Prometheus unreachable: one more
    /// pauses).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "gate_promql")]
    pub gate_failure_limit: u32,
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

    pub fn promql(&self) -> Option<PromGate> {
        let (query, success) = self.gate_promql.clone().zip(self.gate_success.clone())?;
        Some(PromGate {
            query,
            success,
            interval_secs: self.gate_interval,
            failure_limit: self.gate_failure_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        gates: GateArgs,
    }

    fn parse(args: &[&str]) -> Result<GateArgs, String> {
        Cmd::try_parse_from(std::iter::once("fleetctl").chain(args.iter().copied()))
            .map(|c| c.gates)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn gate_flags_make_the_policy_and_bad_ones_are_refused_by_name() {
        let none = parse(&[]).unwrap();
        assert!(none.gates().is_empty() && none.promql().is_none());
        let g = parse(&[
            "--gate-memory",
            "1.5",
            "--gate-crash-loop",
            "--gate-promql",
            "max(model_error_ratio)",
            "--gate-success",
            "result < 0.05",
            "--gate-failure-limit",
            "2",
        ])
        .unwrap();
        assert_eq!(g.gates().memory.map(Factor::get), Some(1.5));
        assert!(g.gates().crash_loop);
        let p = g.promql().unwrap();
        assert_eq!(
            (
                p.query.as_str(),
                p.success.to_string(),
                p.interval_secs,
                p.failure_limit
            ),
            ("max(model_error_ratio)", "result < 0.05".to_owned(), 10, 2)
        );
        let e = parse(&["--gate-promql", "up"]).unwrap_err();
        assert!(e.contains("--gate-success"), "{e}");
        let e = parse(&["--gate-promql", "up", "--gate-success", "result ~ 1"]).unwrap_err();
        assert!(e.contains("has no operator"), "{e}");
        let e = parse(&["--gate-memory", "0.5"]).unwrap_err();
        assert!(e.contains("\"0.5\" is no factor"), "{e}");
        let e = parse(&["--gate-interval", "5"]).unwrap_err();
        assert!(e.contains("--gate-promql"), "{e}");
    }
}
