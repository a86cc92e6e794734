//! Prometheus text exposition (format 0.0.4) of `/metrics`.
//!
//! Gauges are computed at scrape time from the store (devices, groups,
//! rollouts) and the in-memory latest state of every device; counters and the
//! update-duration histogram are kept on ingest. The catalogue, with the
//! cardinality budget, is `control-plane/METRICS.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use fleet_protocol::{DeviceId, Telemetry};

use crate::fleet::rollout::ProgressState;
use crate::fleet::{Fleet, FleetError, FleetSnapshot, RolloutView};
use crate::store::{DeviceRecord, GroupRecord};
use crate::telemetry::updates::{BUCKETS, RESULTS, UpdatesSnapshot};
use crate::telemetry::{DeviceLive, IngestCounters, MessageKind};

mod content;
pub mod gates;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Final (completed, aborted, rolled back) rollouts still exposed, newest
/// first; every unfinished rollout is exposed.
pub const FINAL_ROLLOUTS_KEPT: usize = 10;

/// What one scrape is computed from.
pub struct Input<'a> {
    /// Registered devices, with the live state overlaid.
    pub devices: Vec<DeviceRecord>,
    pub live: HashMap<DeviceId, DeviceLive>,
    pub groups: Vec<GroupRecord>,
    /// Rollouts (already limited), with per-device progress.
    pub rollouts: Vec<RolloutView>,
    pub counters: &'a IngestCounters,
    pub updates: UpdatesSnapshot,
    pub gates: crate::telemetry::gates::GateCounts,
}

impl<'a> Input<'a> {
    /// One scrape's input from the engine's snapshot and ingest state.
    pub fn new(
        snapshot: FleetSnapshot,
        counters: &'a IngestCounters,
        updates: UpdatesSnapshot,
        gates: crate::telemetry::gates::GateCounts,
    ) -> Self {
        let FleetSnapshot {
            devices,
            live,
            groups,
            rollouts,
        } = snapshot;
        Self {
            devices,
            live,
            groups,
            rollouts,
            counters,
            updates,
            gates,
        }
    }
}

/// The exposition of `fleet` now: asks the engine for its state and the
/// ingest counters, then renders them.
pub async fn scrape(fleet: &Fleet) -> Result<String, FleetError> {
    let snapshot = fleet.snapshot(FINAL_ROLLOUTS_KEPT).await?;
    Ok(render(&Input::new(
        snapshot,
        fleet.counters(),
        fleet.updates(),
        fleet.gate_counts(),
    )))
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// The exposition being written.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A gauge family with one sample per device that has the value.
    fn per_device(
        &mut self,
        name: &str,
        help: &str,
        devices: &[(&DeviceId, &Telemetry)],
        value: impl Fn(&Telemetry) -> Option<f64>,
    ) {
        self.family(name, "gauge", help);
        for (id, t) in devices {
            if let Some(v) = value(t) {
                self.sample(name, &[("device", id.as_str())], v);
            }
        }
    }
}

fn rollout_state_label(s: ProgressState) -> &'static str {
    match s {
        ProgressState::Waiting => "pending",
        ProgressState::Sent | ProgressState::Updating => "updating",
        ProgressState::Committed => "done",
        ProgressState::Failed => "failed",
    }
}

fn temperature_max(t: &Telemetry) -> Option<f64> {
    t.temperatures
        .values()
        .map(|v| f64::from(*v))
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

/// Renders the whole exposition.
pub fn render(input: &Input<'_>) -> String {
    let mut o = Out {
        text: String::with_capacity(256 + input.devices.len() * 1024),
    };
    inventory(&mut o, input);
    apps(&mut o, input);
    rollouts(&mut o, input);
    gates::render(&mut o, &input.gates, &input.rollouts);
    updates(&mut o, input);
    telemetry(&mut o, input);
    server(&mut o, input);
    o.text
}

fn presence(live: Option<&DeviceLive>) -> &'static str {
    match live.and_then(|l| l.online) {
        Some(true) => "online",
        Some(false) => "offline",
        None => "unknown",
    }
}

fn inventory(o: &mut Out, input: &Input<'_>) {
    let membership: Vec<Vec<&GroupRecord>> = input
        .devices
        .iter()
        .map(|d| input.groups.iter().filter(|g| g.contains(d)).collect())
        .collect();
    presence_counts(o, input, &membership);
    per_device(o, input, &membership);
}

/// Devices per (group, presence), all devices, online devices.
fn presence_counts(o: &mut Out, input: &Input<'_>, membership: &[Vec<&GroupRecord>]) {
    let states = ["online", "offline", "unknown"];
    let mut per_group: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for g in &input.groups {
        per_group.insert(g.name.as_str(), [0; 3]);
    }
    per_group.insert("", [0; 3]);
    let mut online = 0u64;
    for (d, groups) in input.devices.iter().zip(membership) {
        let state = presence(input.live.get(&d.id));
        let i = states.iter().position(|s| *s == state).unwrap_or(2);
        if i == 0 {
            online += 1;
        }
        if groups.is_empty()
            && let Some(c) = per_group.get_mut("")
        {
            c[i] += 1;
        }
        for g in groups {
            if let Some(c) = per_group.get_mut(g.name.as_str()) {
                c[i] += 1;
            }
        }
    }
    o.family(
        "fleet_devices",
        "gauge",
        "Registered devices per group and presence state (group=\"\": in no group; a device in two groups counts in both).",
    );
    for (group, counts) in &per_group {
        for (state, n) in states.iter().zip(counts) {
            o.sample(
                "fleet_devices",
                &[("group", group), ("state", state)],
                *n as f64,
            );
        }
    }
    o.family(
        "fleet_devices_total",
        "counter",
        "All registered devices (devices are never removed, so this only grows).",
    );
    o.sample("fleet_devices_total", &[], input.devices.len() as f64);
    o.family(
        "fleet_devices_online",
        "gauge",
        "Devices whose presence is online.",
    );
    o.sample("fleet_devices_online", &[], online as f64);
}

/// One series per device: its groups, what it is, presence, last seen.
fn per_device(o: &mut Out, input: &Input<'_>, membership: &[Vec<&GroupRecord>]) {
    o.family(
        "fleet_device_group",
        "gauge",
        "Group membership of each device (always 1).",
    );
    for (d, groups) in input.devices.iter().zip(membership) {
        for g in groups {
            o.sample(
                "fleet_device_group",
                &[("device", d.id.as_str()), ("group", g.name.as_str())],
                1.0,
            );
        }
    }
    o.family(
        "fleet_device_info",
        "gauge",
        "What each device is (always 1); l4t_version is empty when it is not a Jetson.",
    );
    for d in &input.devices {
        o.sample(
            "fleet_device_info",
            &[
                ("device", d.id.as_str()),
                ("architecture", &d.architecture),
                ("agent_version", &d.agent_version),
                ("l4t_version", d.l4t_version.as_deref().unwrap_or("")),
            ],
            1.0,
        );
    }
    o.family(
        "fleet_device_online",
        "gauge",
        "1 when the device's presence is online, else 0.",
    );
    for d in &input.devices {
        let on = presence(input.live.get(&d.id)) == "online";
        o.sample(
            "fleet_device_online",
            &[("device", d.id.as_str())],
            if on { 1.0 } else { 0.0 },
        );
    }
    o.family(
        "fleet_device_last_seen_timestamp_seconds",
        "gauge",
        "Unix time (server clock) of the last message that showed the device alive.",
    );
    for d in &input.devices {
        o.sample(
            "fleet_device_last_seen_timestamp_seconds",
            &[("device", d.id.as_str())],
            d.last_seen as f64,
        );
    }
}

fn apps(o: &mut Out, input: &Input<'_>) {
    let mut versions: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut phases: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut restarts: BTreeMap<&str, u64> = BTreeMap::new();
    for d in &input.devices {
        let Some(status) = &d.last_status else {
            continue;
        };
        for a in &status.apps {
            if let Some(r) = &a.running {
                *versions
                    .entry((a.app.as_str(), r.version.as_str()))
                    .or_default() += 1;
            }
            *phases.entry((a.app.as_str(), a.phase.name())).or_default() += 1;
            *restarts.entry(a.app.as_str()).or_default() += u64::from(a.restarts);
        }
    }
    o.family(
        "fleet_app_version_devices",
        "gauge",
        "Devices whose running release of the app is this version.",
    );
    for ((app, version), n) in &versions {
        o.sample(
            "fleet_app_version_devices",
            &[("app", app), ("version", version)],
            *n as f64,
        );
    }
    o.family(
        "fleet_app_phase_devices",
        "gauge",
        "Devices per update lifecycle phase of the app.",
    );
    for ((app, phase), n) in &phases {
        o.sample(
            "fleet_app_phase_devices",
            &[("app", app), ("phase", phase)],
            *n as f64,
        );
    }
    o.family(
        "fleet_app_restarts",
        "gauge",
        "Sum over devices of the app's container restarts (as the devices report them).",
    );
    for (app, n) in &restarts {
        o.sample("fleet_app_restarts", &[("app", app)], *n as f64);
    }
}

fn rollouts(o: &mut Out, input: &Input<'_>) {
    o.family(
        "fleet_rollout_info",
        "gauge",
        "Each exposed rollout (always 1): every unfinished one and the newest finished ones.",
    );
    for r in &input.rollouts {
        let id = r.id.to_string();
        o.sample(
            "fleet_rollout_info",
            &[
                ("rollout", &id),
                ("app", r.app.as_str()),
                ("version", &r.version),
                ("state", r.state.as_str()),
            ],
            1.0,
        );
    }
    o.family(
        "fleet_rollout_devices",
        "gauge",
        "Devices of the rollout per state: pending (wave not started), updating, done (committed), failed.",
    );
    for r in &input.rollouts {
        let id = r.id.to_string();
        let mut counts: BTreeMap<&str, u64> = ["pending", "updating", "done", "failed"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
        for p in &r.devices {
            *counts.entry(rollout_state_label(p.state)).or_default() += 1;
        }
        for (state, n) in counts {
            o.sample(
                "fleet_rollout_devices",
                &[("rollout", &id), ("state", state)],
                n as f64,
            );
        }
    }
    o.family(
        "fleet_rollout_failed_devices",
        "gauge",
        "Devices of the rollout whose update failed or rolled back.",
    );
    for r in &input.rollouts {
        let id = r.id.to_string();
        o.sample(
            "fleet_rollout_failed_devices",
            &[("rollout", &id)],
            r.counts.failed as f64,
        );
    }
}

/// Update durations (histogram per app) and results.
fn updates(o: &mut Out, input: &Input<'_>) {
    o.family(
        "fleet_update_duration_seconds",
        "histogram",
        "Seconds from the server publishing a desired state with a new release to the device reporting the app running it, committed.",
    );
    for (app, h) in &input.updates.durations {
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.counts[i];
            o.sample(
                "fleet_update_duration_seconds_bucket",
                &[("app", app.as_str()), ("le", &number(*bound))],
                cumulative as f64,
            );
        }
        o.sample(
            "fleet_update_duration_seconds_bucket",
            &[("app", app.as_str()), ("le", "+Inf")],
            h.count as f64,
        );
        o.sample(
            "fleet_update_duration_seconds_sum",
            &[("app", app.as_str())],
            h.sum,
        );
        o.sample(
            "fleet_update_duration_seconds_count",
            &[("app", app.as_str())],
            h.count as f64,
        );
    }
    o.family(
        "fleet_updates_total",
        "counter",
        "Update results from status transitions: committed, rolled_back, failed.",
    );
    let apps: BTreeSet<_> = input.updates.results.keys().map(|(a, _)| a).collect();
    for app in apps {
        for result in RESULTS {
            let n = input
                .updates
                .results
                .get(&(app.clone(), result))
                .copied()
                .unwrap_or(0);
            o.sample(
                "fleet_updates_total",
                &[("app", app.as_str()), ("result", result)],
                n as f64,
            );
        }
    }
}

fn telemetry(o: &mut Out, input: &Input<'_>) {
    let devices: Vec<(&DeviceId, &Telemetry)> = input
        .devices
        .iter()
        .filter_map(|d| {
            let t = input.live.get(&d.id)?.telemetry.as_deref()?;
            Some((&d.id, t))
        })
        .collect();
    content::device_sums(o, &devices);
    device_gauges(o, &devices);
    fleet_aggregates(o, &devices);
}

/// One series per device and telemetry field the device reports.
fn device_gauges(o: &mut Out, devices: &[(&DeviceId, &Telemetry)]) {
    let f32v = |v: Option<f32>| v.map(f64::from);
    let u64v = |v: Option<u64>| v.map(|v| v as f64);
    o.per_device(
        "fleet_device_cpu_percent",
        "CPU use of the device, percent of all cores.",
        devices,
        |t| f32v(t.cpu_percent),
    );
    o.per_device(
        "fleet_device_memory_used_bytes",
        "Memory in use on the device.",
        devices,
        |t| u64v(t.memory_used_bytes),
    );
    o.per_device(
        "fleet_device_memory_total_bytes",
        "Memory of the device.",
        devices,
        |t| u64v(t.memory_total_bytes),
    );
    o.per_device(
        "fleet_device_disk_free_bytes",
        "Free bytes on the agent's data file system.",
        devices,
        |t| u64v(t.disk_free_bytes),
    );
    o.per_device(
        "fleet_device_store_used_bytes",
        "Bytes used by the agent's content store.",
        devices,
        |t| u64v(t.store_used_bytes),
    );
    o.per_device(
        "fleet_device_uptime_seconds",
        "Seconds since the device booted.",
        devices,
        |t| u64v(t.uptime_secs),
    );
    o.per_device(
        "fleet_device_temperature_max_celsius",
        "Highest temperature over the device's thermal zones.",
        devices,
        temperature_max,
    );
    o.per_device(
        "fleet_device_gpu_load_percent",
        "GPU load (Tegra).",
        devices,
        |t| f32v(t.gpu_load_percent),
    );
    o.per_device(
        "fleet_device_gpu_freq_hz",
        "GPU clock (Tegra).",
        devices,
        |t| u64v(t.gpu_freq_hz),
    );
    o.per_device(
        "fleet_device_emc_load_percent",
        "External memory controller load (Tegra).",
        devices,
        |t| f32v(t.emc_load_percent),
    );
    o.family(
        "fleet_device_power_mw",
        "gauge",
        "Power per rail in milliwatts (Tegra).",
    );
    for (id, t) in devices {
        for (rail, mw) in &t.power_mw {
            o.sample(
                "fleet_device_power_mw",
                &[("device", id.as_str()), ("rail", rail)],
                *mw as f64,
            );
        }
    }
    o.per_device(
        "fleet_device_net_rx_bytes",
        "Bytes the device received on its network interfaces (the device's own counter).",
        devices,
        |t| u64v(t.net_rx_bytes),
    );
    o.per_device(
        "fleet_device_net_tx_bytes",
        "Bytes the device sent on its network interfaces (the device's own counter).",
        devices,
        |t| u64v(t.net_tx_bytes),
    );
}

/// Fleet-wide aggregates over the devices' telemetry.
fn fleet_aggregates(o: &mut Out, devices: &[(&DeviceId, &Telemetry)]) {
    let f32v = |v: Option<f32>| v.map(f64::from);
    o.family(
        "fleet_telemetry_temperature_celsius_max",
        "gauge",
        "Highest temperature over every device's thermal zones.",
    );
    if let Some(max) = devices
        .iter()
        .filter_map(|(_, t)| temperature_max(t))
        .reduce(f64::max)
    {
        o.sample("fleet_telemetry_temperature_celsius_max", &[], max);
    }
    o.family(
        "fleet_telemetry_gpu_load_percent_avg",
        "gauge",
        "Mean GPU load over the devices that report one (Tegra).",
    );
    let loads: Vec<f64> = devices
        .iter()
        .filter_map(|(_, t)| f32v(t.gpu_load_percent))
        .collect();
    if !loads.is_empty() {
        o.sample(
            "fleet_telemetry_gpu_load_percent_avg",
            &[],
            loads.iter().sum::<f64>() / loads.len() as f64,
        );
    }
}

fn server(o: &mut Out, input: &Input<'_>) {
    o.family(
        "fleet_ingest_messages_total",
        "counter",
        "Device messages ingested, per kind.",
    );
    for k in MessageKind::ALL {
        o.sample(
            "fleet_ingest_messages_total",
            &[("kind", k.as_str())],
            input.counters.ingested_count(k) as f64,
        );
    }
    o.family(
        "fleet_ingest_rejected_total",
        "counter",
        "Device messages rejected (malformed, or naming another device than their topic), per kind.",
    );
    for k in MessageKind::ALL {
        o.sample(
            "fleet_ingest_rejected_total",
            &[("kind", k.as_str())],
            input.counters.rejected_count(k) as f64,
        );
    }
    o.family(
        "fleet_store_batch_writes_total",
        "counter",
        "Batched writes of the devices' latest state to the store.",
    );
    o.sample(
        "fleet_store_batch_writes_total",
        &[],
        input.counters.batch_writes() as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut o = Out {
            text: String::new(),
        };
        o.sample("m", &[("rail", "VDD \"IN\"\n")], 1.5);
        assert_eq!(o.text, "m{rail=\"VDD \\\"IN\\\"\\n\"} 1.5\n");
    }

    #[test]
    fn numbers_render_as_prometheus_floats() {
        assert_eq!(number(5.0), "5");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
