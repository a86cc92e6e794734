//! Rollout gate families: gate failures and undecided gates counted as they
//! happen (since the server started, [`crate::telemetry::gates`]), and the
//! measured value and threshold of the gate that halted each exposed
//! rollout.

use super::Out;
use crate::fleet::RolloutView;
use crate::telemetry::gates::GateCounts;

pub(super) fn render(o: &mut Out, counts: &GateCounts, rollouts: &[RolloutView]) {
    let name = "fleet_rollout_gate_failures_total";
    o.family(
        name,
        "counter",
        "Rollouts halted by a failed gate since the server started, per gate.",
    );
    for (gate, n) in &counts.failed {
        o.sample(name, &[("gate", gate.as_str())], *n as f64);
    }
    let name = "fleet_rollout_gate_undecided_total";
    o.family(
        name,
        "counter",
        "Rollouts paused because their gates could not decide (no data) since the server started.",
    );
    o.sample(name, &[], counts.undecided as f64);
    let halted: Vec<(String, &crate::store::GateFailure)> = rollouts
        .iter()
        .filter_map(|r| r.gate_failure.as_ref().map(|g| (r.id.to_string(), g)))
        .collect();
    for (name, help, value) in [
        (
            "fleet_rollout_gate_measured",
            "What the gate that halted the rollout measured (bytes, percent, restarts, devices, or the PromQL result).",
            (|g| g.measured) as fn(&crate::store::GateFailure) -> f64,
        ),
        (
            "fleet_rollout_gate_threshold",
            "The threshold the measurement of the gate that halted the rollout crossed.",
            |g| g.threshold,
        ),
    ] {
        o.family(name, "gauge", help);
        for (id, g) in &halted {
            o.sample(
                name,
                &[("rollout", id), ("gate", g.gate.as_str())],
                value(g),
            );
        }
    }
}
