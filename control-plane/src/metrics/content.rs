//! Content families summed over the devices' own monotonic counters (from
//! their latest telemetry): bytes fetched, bytes saved by dedup, and layer
//! deltas (bytes fetched, whole-layer bytes they replaced, fallbacks).

use fleet_protocol::{DeviceId, Telemetry};

use super::Out;

type Field = fn(&Telemetry) -> Option<u64>;

const SUMS: [(&str, &str, Field); 5] = [
    (
        "fleet_content_fetched_bytes_total",
        "Content bytes devices downloaded (sum over devices of their own counters).",
        |t| t.fetched_bytes_total,
    ),
    (
        "fleet_content_reused_bytes_total",
        "Content bytes devices did not download because they already had them (bytes saved by dedup).",
        |t| t.reused_bytes_total,
    ),
    (
        "fleet_content_device_delta_fetched_bytes_total",
        "Layer delta bytes devices downloaded and applied (sum over devices).",
        |t| t.delta_fetched_bytes_total,
    ),
    (
        "fleet_content_device_delta_replaced_bytes_total",
        "Whole-layer bytes devices did not download because a delta replaced them (sum over devices).",
        |t| t.delta_replaced_bytes_total,
    ),
    (
        "fleet_content_device_delta_fallbacks_total",
        "Deltas devices could not use and replaced by the whole layer (sum over devices).",
        |t| t.delta_fallbacks_total,
    ),
];

/// One counter per content family: the sum over `devices`.
pub(super) fn device_sums(o: &mut Out, devices: &[(&DeviceId, &Telemetry)]) {
    for (name, help, field) in SUMS {
        let total: u64 = devices.iter().filter_map(|(_, t)| field(t)).sum();
        o.family(name, "counter", help);
        o.sample(name, &[], total as f64);
    }
}
