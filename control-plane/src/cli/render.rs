//! Human output of `fleetctl`: tables, summaries, progress bars.

use std::fmt::Display;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::api::types::{DeviceView, GroupView, PlanView, RolloutView, TelemetryView};
use crate::fleet::rollout::ProgressState;
use crate::store::{Labels, RolloutId};

pub fn list<T: Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `fleetctl devices ls` table, one line per device, columns aligned.
pub fn devices(all: &[DeviceView]) -> String {
    let mut out = format!(
        "{:<24} {:<7} {:<8} {:<10} {:<8} {:>5} {:<20} GROUPS\n",
        "ID", "ONLINE", "ARCH", "L4T", "AGENT", "GEN", "LABELS"
    );
    for d in all {
        out.push_str(&format!(
            "{:<24} {:<7} {:<8} {:<10} {:<8} {:>5} {:<20} {}\n",
            d.device.id,
            if d.device.online { "yes" } else { "no" },
            d.device.architecture,
            d.device.l4t_version.as_deref().unwrap_or("-"),
            d.device.agent_version,
            d.desired
                .as_ref()
                .map_or("-".to_owned(), |s| s.generation.to_string()),
            labels(&d.effective_labels),
            list(&d.groups),
        ));
    }
    out
}

pub fn device(d: &DeviceView) {
    let dev = &d.device;
    println!("device       {}", dev.id);
    println!("online       {}", dev.online);
    println!("last seen    {}", dev.last_seen);
    println!(
        "platform     {} {} L4T {}",
        dev.architecture,
        dev.variant.as_deref().unwrap_or(""),
        dev.l4t_version.as_deref().unwrap_or("-")
    );
    println!("agent        {}", dev.agent_version);
    println!("labels       {}", labels(&d.effective_labels));
    println!("groups       {}", list(&d.groups));
    match &d.desired {
        Some(s) => {
            println!(
                "desired      generation {} (expires {}, {})",
                s.generation,
                s.expires_at,
                if s.published {
                    "published"
                } else {
                    "not yet published"
                }
            );
            for (app, digest) in &s.apps {
                println!("  {app:<20} {digest}");
            }
        }
        None => println!("desired      -"),
    }
    if let Some(st) = &dev.last_status {
        println!(
            "status       generation {} at {}",
            st.generation.map_or("-".into(), |g| g.to_string()),
            st.reported_at
        );
        for a in &st.apps {
            println!(
                "  {:<20} {:<12} running {} {}",
                a.app,
                a.phase.name(),
                a.running.as_ref().map_or("-", |r| r.version.as_str()),
                a.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("error: {}", e.message))
            );
            for f in &a.delta_fallbacks {
                println!(
                    "    delta not used, whole layer {} fetched: {}",
                    f.layer, f.reason
                );
            }
        }
        if let Some(r) = &st.rejected {
            println!("  rejected: {}", r.message);
        }
    }
    match &d.telemetry {
        Some(t) => print!("{}", telemetry(t)),
        None => println!("telemetry    -"),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The latest telemetry of a device, one line per reported sensor group.
pub fn telemetry(v: &TelemetryView) -> String {
    let t = &v.telemetry;
    let mut out = format!("telemetry    at {} (received {})\n", t.at, v.received_at);
    let mut line = |label: &str, parts: Vec<String>| {
        if !parts.is_empty() {
            out.push_str(&format!("  {label:<12} {}\n", parts.join(", ")));
        }
    };
    let mut host = Vec::new();
    if let Some(u) = t.uptime_secs {
        host.push(format!("uptime {u} s"));
    }
    if let Some(c) = t.cpu_percent {
        host.push(format!("cpu {c:.1}%"));
    }
    match (t.memory_used_bytes, t.memory_total_bytes) {
        (Some(u), Some(m)) => host.push(format!("memory {} / {}", bytes(u), bytes(m))),
        (Some(u), None) => host.push(format!("memory {}", bytes(u))),
        _ => {}
    }
    line("host", host);
    let mut disk = Vec::new();
    if let Some(f) = t.disk_free_bytes {
        disk.push(format!("free {}", bytes(f)));
    }
    if let Some(s) = t.store_used_bytes {
        disk.push(format!("store {}", bytes(s)));
    }
    line("disk", disk);
    line(
        "temperature",
        t.temperatures
            .iter()
            .map(|(zone, c)| format!("{zone} {c:.1} °C"))
            .collect(),
    );
    let mut gpu = Vec::new();
    if let Some(l) = t.gpu_load_percent {
        gpu.push(format!("load {l:.1}%"));
    }
    if let Some(f) = t.gpu_freq_hz {
        gpu.push(format!("{} MHz", f / 1_000_000));
    }
    if let Some(e) = t.emc_load_percent {
        gpu.push(format!("emc {e:.1}%"));
    }
    line("gpu", gpu);
    line(
        "power",
        t.power_mw
            .iter()
            .map(|(rail, mw)| format!("{rail} {mw} mW"))
            .collect(),
    );
    let mut net = Vec::new();
    if let Some(r) = t.net_rx_bytes {
        net.push(format!("rx {}", bytes(r)));
    }
    if let Some(x) = t.net_tx_bytes {
        net.push(format!("tx {}", bytes(x)));
    }
    line("network", net);
    let mut content = Vec::new();
    if let Some(f) = t.fetched_bytes_total {
        content.push(format!("fetched {}", bytes(f)));
    }
    if let Some(r) = t.reused_bytes_total {
        content.push(format!("reused {}", bytes(r)));
    }
    if let Some(d) = t.delta_fetched_bytes_total {
        let replaced = t.delta_replaced_bytes_total.unwrap_or(0);
        content.push(format!(
            "deltas {} for {} of layers",
            bytes(d),
            bytes(replaced)
        ));
    }
    if let Some(n) = t.delta_fallbacks_total.filter(|n| *n > 0) {
        content.push(format!("{n} delta fallbacks"));
    }
    line("content", content);
    line(
        "apps",
        t.apps
            .iter()
            .map(|a| {
                format!(
                    "{} {} restarts {}",
                    a.app.as_ref().map_or("-", |n| n.as_str()),
                    if a.running { "running" } else { "stopped" },
                    a.restarts
                )
            })
            .collect(),
    );
    out
}

/// The `fleetctl groups ls` table.
pub fn groups(all: &[GroupView]) -> String {
    let mut out = format!("{:<20} {:<24} {:>7} DEVICES\n", "NAME", "SELECTOR", "COUNT");
    for g in all {
        out.push_str(&format!(
            "{:<20} {:<24} {:>7} {}\n",
            g.group.name,
            labels(&g.group.selector),
            g.devices.len(),
            list(&g.devices)
        ));
    }
    out
}

pub fn summary(v: &RolloutView) -> String {
    let c = &v.counts;
    format!(
        "rollout {} {} {} -> {}: {} | committed {}/{} updating {} sent {} waiting {} failed {}",
        v.id,
        v.app,
        v.version,
        v.group,
        v.state,
        c.committed,
        c.total,
        c.updating,
        c.sent,
        c.waiting,
        c.failed
    )
}

/// The `fleetctl rollout status` table.
pub fn rollouts(all: &[RolloutView]) -> String {
    let mut out = format!(
        "{:>4} {:<12} {:<20} {:<12} {:<16} PROGRESS\n",
        "ID", "STATE", "APP", "VERSION", "GROUP"
    );
    for v in all {
        out.push_str(&format!(
            "{:>4} {:<12} {:<20} {:<12} {:<16} {}/{} committed, {} failed\n",
            v.id,
            v.state.as_str(),
            v.app,
            v.version,
            v.group,
            v.counts.committed,
            v.counts.total,
            v.counts.failed
        ));
    }
    out
}

/// The `fleetctl rollout history` table: how each rollout ended, and why
/// it halted. Times are UTC.
pub fn history(all: &[RolloutView]) -> String {
    let mut out = format!(
        "{:>4} {:<12} {:<20} {:<12} {:<16} {:<20} {:<20} OUTCOME\n",
        "ID", "STATE", "APP", "VERSION", "GROUP", "STARTED", "LAST CHANGE"
    );
    for v in all {
        let outcome = match (&v.halt_reason, &v.pause_reason) {
            (Some(reason), _) => format!("halted: {reason}"),
            (None, Some(reason)) => format!("paused: {reason}"),
            (None, None) => format!(
                "{}/{} committed, {} failed, {} excluded",
                v.counts.committed,
                v.counts.total,
                v.counts.failed,
                v.excluded.len()
            ),
        };
        out.push_str(&format!(
            "{:>4} {:<12} {:<20} {:<12} {:<16} {:<20} {:<20} {outcome}\n",
            v.id,
            v.state.as_str(),
            v.app,
            v.version,
            v.group,
            utc(v.created_at),
            utc(v.updated_at),
        ));
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A rollout plan: waves with their devices, then the devices left out and
/// those offline.
pub fn plan(p: &PlanView) -> String {
    let mut out = format!(
        "plan: {} {} ({}) to group {}, {} wave(s)\n",
        p.app,
        p.version,
        p.release_digest,
        p.group,
        p.waves.len()
    );
    for (i, w) in p.waves.iter().enumerate() {
        out.push_str(&format!(
            "wave {}: {} device(s): {}\n",
            i + 1,
            w.len(),
            list(w)
        ));
    }
    for e in &p.excluded {
        out.push_str(&format!("excluded {}: {}\n", e.device, e.reason));
    }
    for (device, f) in &p.fetch {
        out.push_str(&format!(
            "fetch {device}: {} bytes ({} of {} changed layer(s) as deltas; {} bytes whole)\n",
            f.bytes, f.deltas, f.layers, f.whole_bytes
        ));
    }
    if !p.offline.is_empty() {
        out.push_str(&format!(
            "offline now (they get it when they return): {}\n",
            list(&p.offline)
        ));
    }
    out
}

/// One rollout: its summary, waves and per-device progress.
pub fn rollout(v: &RolloutView) -> String {
    let mut out = format!("{}\nrelease {}\n", summary(v), v.release_digest);
    if let Some(reason) = &v.halt_reason {
        out.push_str(&format!("halted: {reason}\n"));
    }
    if let Some(g) = &v.gate_failure {
        out.push_str(&format!(
            "gate {}: measured {} > threshold {} (wave {})\n",
            g.gate,
            g.measured,
            g.threshold,
            g.wave + 1
        ));
    }
    if let Some(reason) = &v.pause_reason {
        out.push_str(&format!(
            "paused: {reason} (resume to promote the wave without them)\n"
        ));
    }
    let gates = v.safety.gates.names();
    if !gates.is_empty() {
        let names: Vec<&str> = gates.iter().map(|g| g.as_str()).collect();
        out.push_str(&format!("gates: {}\n", names.join(", ")));
    }
    for (i, w) in v.waves.iter().enumerate() {
        let baking = match (w.state, w.settled_at, v.safety.bake_secs) {
            (crate::store::WaveState::Active, Some(at), Some(bake)) => {
                format!(", settled, baking until {}", at.saturating_add(bake))
            }
            _ => String::new(),
        };
        let held = if w.held > 0 {
            format!(", {} held back by max_unavailable", w.held)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "wave {}: {:?}, {} device(s){baking}{held}\n",
            i + 1,
            w.state,
            w.devices
        ));
        let p = &w.prom;
        if !p.is_empty() {
            out.push_str(&format!(
                "  promql: {} passed, {} failed, {} inconclusive; last: {}\n",
                p.passed,
                p.failed,
                p.inconclusive,
                p.last.as_deref().unwrap_or("-")
            ));
        }
    }
    for p in &v.devices {
        let bytes = match (p.bytes_done, p.bytes_total) {
            (Some(d), Some(t)) if t > 0 => format!(" {d}/{t} bytes"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {:<24} wave {} {:<10} {}{}{}\n",
            p.device,
            p.wave + 1,
            format!("{:?}", p.state).to_lowercase(),
            p.phase.as_ref().map_or("", |ph| ph.name()),
            bytes,
            p.error.as_ref().map_or(String::new(), |e| format!(
                " error: {}: {}",
                e.code, e.message
            ))
        ));
        for f in &p.delta_fallbacks {
            out.push_str(&format!(
                "    delta not used, whole layer {} fetched: {}\n",
                f.layer, f.reason
            ));
        }
    }
    for e in &v.excluded {
        out.push_str(&format!("  {:<24} excluded: {}\n", e.device, e.reason));
    }
    out
}

/// Per wave of `v`: its devices, and of those the settled (committed or
/// failed), failed and updating ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveCounts {
    pub devices: usize,
    pub settled: usize,
    pub failed: usize,
    pub updating: usize,
}

pub fn wave_counts(v: &RolloutView) -> Vec<WaveCounts> {
    let mut counts: Vec<WaveCounts> = v
        .waves
        .iter()
        .map(|w| WaveCounts {
            devices: w.devices,
            ..WaveCounts::default()
        })
        .collect();
    for p in &v.devices {
        let Some(c) = counts.get_mut(p.wave) else {
            continue;
        };
        match p.state {
            ProgressState::Committed => c.settled += 1,
            ProgressState::Failed => {
                c.settled += 1;
                c.failed += 1;
            }
            ProgressState::Sent | ProgressState::Updating => c.updating += 1,
            ProgressState::Waiting => {}
        }
    }
    counts
}

fn wave_state(s: crate::store::WaveState) -> &'static str {
    match s {
        crate::store::WaveState::Pending => "pending",
        crate::store::WaveState::Active => "active",
        crate::store::WaveState::Done => "done",
    }
}

/// The waves in one line: `w1 done 10/10, w2 active 3/25 (1 failed), ...`.
pub fn wave_line(v: &RolloutView) -> String {
    let parts: Vec<String> = v
        .waves
        .iter()
        .zip(wave_counts(v))
        .enumerate()
        .map(|(i, (w, c))| {
            let failed = if c.failed > 0 {
                format!(" ({} failed)", c.failed)
            } else {
                String::new()
            };
            format!(
                "w{} {} {}/{}{failed}",
                i + 1,
                wave_state(w.state),
                c.settled,
                c.devices
            )
        })
        .collect();
    parts.join(", ")
}

/// A rollout's live view on a terminal: a line with its state, then one
/// progress bar per wave.
pub struct WaveBars {
    multi: MultiProgress,
    head: ProgressBar,
    waves: Vec<ProgressBar>,
}

impl WaveBars {
    pub fn new(id: RolloutId) -> Self {
        let multi = MultiProgress::new();
        let head = multi.add(ProgressBar::new_spinner());
        head.set_prefix(format!("rollout {id}"));
        if let Ok(style) = ProgressStyle::with_template("{prefix} {wide_msg}") {
            head.set_style(style);
        }
        WaveBars {
            multi,
            head,
            waves: Vec::new(),
        }
    }

    pub fn update(&mut self, v: &RolloutView) {
        self.head.set_message(summary(v));
        for (i, (w, c)) in v.waves.iter().zip(wave_counts(v)).enumerate() {
            if self.waves.len() <= i {
                let bar = self.multi.add(ProgressBar::new(0));
                if let Ok(style) =
                    ProgressStyle::with_template("  {prefix:<8} [{bar:40}] {pos}/{len} {wide_msg}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(format!("wave {}", i + 1));
                self.waves.push(bar);
            }
            let bar = &self.waves[i];
            bar.set_length(c.devices as u64);
            bar.set_position(c.settled as u64);
            let mut msg = wave_state(w.state).to_owned();
            if c.updating > 0 {
                msg.push_str(&format!(" | updating {}", c.updating));
            }
            if c.failed > 0 {
                msg.push_str(&format!(" | failed {}", c.failed));
            }
            if w.held > 0 {
                msg.push_str(&format!(" | held {}", w.held));
            }
            bar.set_message(msg);
        }
    }

    /// Leaves the last view on the terminal, with the halt or pause reason.
    pub fn finish(&self, v: &RolloutView) {
        let mut last = summary(v);
        if let Some(why) = v.halt_reason.as_ref().or(v.pause_reason.as_ref()) {
            last.push_str(&format!(" | {why}"));
        }
        for bar in &self.waves {
            bar.abandon();
        }
        self.head.finish_with_message(last);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_598_000), "2026-12-06 23:00:00");
        assert_eq!(super::utc(4_107_542_399), "2100-02-28 23:59:59");
    }
}
