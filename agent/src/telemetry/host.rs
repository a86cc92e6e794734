//! Host readings from `/proc` and `/sys`, all through a [`HostRoot`], with
//! the parsers kept pure.

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::host_root::{HostRoot, entries, parse_u64, read_small, read_u64};

/// Temperatures at or below this (m°C) are a sensor saying "offline"
/// (Tegra reports −256000 for a rail-gated GPU), not a reading.
const OFFLINE_MILLICELSIUS: i64 = -100_000;

/// `/proc/uptime` (`"12345.67 23456.78"`) → whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// Aggregate CPU time from `/proc/stat` (in USER_HZ ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The `cpu ` line of `/proc/stat`: user nice system idle iowait irq softirq
/// steal (guest time is already inside user/nice). Idle = idle + iowait.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// CPU busy % between two samples; `None` when no time passed.
pub fn cpu_percent(prev: CpuTimes, now: CpuTimes) -> Option<f32> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 * 100.0 / total as f64) as f32)
}

/// `/proc/meminfo` → (used, total) bytes, used = MemTotal − MemAvailable.
pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let kib = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            let n: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(n.saturating_mul(1024))
        })
    };
    let total = kib("MemTotal");
    let used = total
        .zip(kib("MemAvailable"))
        .map(|(t, a)| t.saturating_sub(a));
    (used, total)
}

/// `/proc/net/dev` → (rx, tx) bytes summed over every interface but `lo`.
pub fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut sum: Option<(u64, u64)> = None;
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" || name.contains('|') {
            continue;
        }
        let f: Vec<&str> = counters.split_whitespace().collect();
        let (Some(rx), Some(tx)) = (
            f.first().and_then(|v| v.parse::<u64>().ok()),
            f.get(8).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let (r, t) = sum.unwrap_or((0, 0));
        sum = Some((r.saturating_add(rx), t.saturating_add(tx)));
    }
    sum
}

/// A thermal zone's `temp` (m°C) → °C; `None` for an offline sensor.
pub fn parse_millicelsius(text: &str) -> Option<f32> {
    let m: i64 = text.trim().parse().ok()?;
    (m > OFFLINE_MILLICELSIUS).then(|| m as f32 / 1000.0)
}

/// `/sys/devices/virtual/thermal/thermal_zone*/{type,temp}` → name → °C.
/// Offline sensors are left out; a repeated name gets the zone's number.
pub fn thermal_zones(host: &HostRoot) -> BTreeMap<String, f32> {
    let mut out = BTreeMap::new();
    for zone in host.entries("/sys/devices/virtual/thermal") {
        let Some(n) = zone
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("thermal_zone"))
            .map(str::to_owned)
        else {
            continue;
        };
        let (Some(kind), Some(temp)) = (
            read_small(&zone.join("type")),
            read_small(&zone.join("temp")).and_then(|t| parse_millicelsius(&t)),
        ) else {
            continue;
        };
        let kind = kind.trim().trim_end_matches('\0').to_owned();
        if kind.is_empty() {
            continue;
        }
        let key = if out.contains_key(&kind) {
            format!("{kind}_{n}")
        } else {
            kind
        };
        out.insert(key, temp);
    }
    out
}

/// Bytes available to unprivileged users on the file system holding `path`
/// (a real path: the agent's store is not under the host root).
pub fn disk_free(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350735));
        assert_eq!(parse_uptime("x"), None);
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\nintr 5\n";
        assert_eq!(
            parse_proc_stat(stat),
            Some(CpuTimes {
                busy: 150,
                total: 1000
            })
        );
        let later = CpuTimes {
            busy: 250,
            total: 1400,
        };
        let first = parse_proc_stat(stat).unwrap();
        assert_eq!(cpu_percent(first, later), Some(25.0));
        assert_eq!(cpu_percent(later, later), None);
        assert_eq!(cpu_percent(later, first), None);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        let mem = "MemTotal:        7990000 kB\nMemFree:  100 kB\nMemAvailable:    5990000 kB\n";
        assert_eq!(
            parse_meminfo(mem),
            (Some(2_000_000 * 1024), Some(7_990_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), (None, Some(10240)));
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo: 9999 10 0 0 0 0 0 0 9999 10 0 0 0 0 0 0\n  \
 eth0: 1000 10 0 0 0 0 0 0 200 5 0 0 0 0 0 0\n \
 wlan0: 30 1 0 0 0 0 0 0 4 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), Some((1030, 204)));
        assert_eq!(parse_net_dev("garbage"), None);
    }

    #[test]
    fn offline_sensors_are_not_readings() {
        assert_eq!(parse_millicelsius("45500\n"), Some(45.5));
        assert_eq!(parse_millicelsius("-5000"), Some(-5.0));
        assert_eq!(parse_millicelsius("-256000\n"), None);
        assert_eq!(parse_millicelsius(""), None);
    }
}
