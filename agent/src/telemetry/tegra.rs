//! NVIDIA Tegra (Jetson) detection and its sensors, read through a
//! [`HostRoot`].
//!
//! - Detection: [`crate::gpu::detect`], the one detector that device info,
//!   telemetry and the GPU module share.
//! - GPU load: the devfreq device whose `device/of_node/name` is `gpu`,
//!   its `device/load` (per-mille); else `/sys/devices/gpu.0/load` (JP4).
//!   GPU frequency: that devfreq device's `cur_freq` (Hz).
//! - EMC load: `/sys/kernel/actmon_avg_activity/mc_all` is the activity
//!   monitor's average memory-controller activity expressed as a clock in
//!   kHz; load % = mc_all × 100 / EMC clock (kHz), the clock read from debugfs
//!   (`/sys/kernel/debug/bpmp/debug/clk/emc/rate` on T186+, or
//!   `/sys/kernel/debug/clk/emc/clk_rate` on T210, both in Hz; root only).
//!   Without a readable clock the load is omitted.
//! - Power rails: I²C devices named `ina3221*`: JP5+ hwmon
//!   `in{k}_label` + `in{k}_input` (mV) × `curr{k}_input` (mA), skipping
//!   `NC` and the "sum of shunt voltages" channel; JP4 iio
//!   `rail_name_{k}` + `in_power{k}_input` (mW).

use std::collections::BTreeMap;
use std::path::Path;

use super::host::{HostRoot, entries, parse_u64, read_small, read_u64};
pub use crate::gpu::detect::{TegraInfo, detect, l4t_from_dpkg_status, parse_nv_tegra_release};

/// GPU readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub load_percent: Option<f32>,
    pub freq_hz: Option<u64>,
}

/// GPU load and frequency.
pub fn gpu(host: &HostRoot) -> GpuReading {
    let mut reading = GpuReading::default();
    for dev in host.entries("/sys/class/devfreq") {
        let is_gpu = read_small(&dev.join("device/of_node/name"))
            .is_some_and(|n| n.trim_matches(|c: char| c == '\0' || c.is_whitespace()) == "gpu");
        if !is_gpu {
            continue;
        }
        reading.freq_hz = read_u64(&dev.join("cur_freq"));
        reading.load_percent = read_u64(&dev.join("device/load")).map(per_mille);
        break;
    }
    if reading.load_percent.is_none() {
        reading.load_percent = host
            .read("/sys/devices/gpu.0/load")
            .and_then(|s| parse_u64(&s))
            .map(per_mille);
    }
    reading
}

fn per_mille(v: u64) -> f32 {
    v as f32 / 10.0
}

/// EMC (memory controller) load in %, when activity and clock are readable.
pub fn emc_load(host: &HostRoot) -> Option<f32> {
    let activity_khz = host
        .read("/sys/kernel/actmon_avg_activity/mc_all")
        .and_then(|s| parse_u64(&s))?;
    let rate_hz = host
        .read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")
        .or_else(|| host.read("/sys/kernel/debug/clk/emc/clk_rate"))
        .and_then(|s| parse_u64(&s))?;
    emc_percent(activity_khz, rate_hz)
}

/// `mc_all` (kHz) against the EMC clock (Hz) → %.
pub fn emc_percent(activity_khz: u64, rate_hz: u64) -> Option<f32> {
    let rate_khz = rate_hz / 1000;
    (rate_khz > 0).then(|| (activity_khz as f64 * 100.0 / rate_khz as f64) as f32)
}

/// Power per rail in mW from every INA3221 monitor.
pub fn power_rails(host: &HostRoot) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for dev in host.entries("/sys/bus/i2c/devices") {
        let is_ina = read_small(&dev.join("name")).is_some_and(|n| n.contains("ina3221"));
        if !is_ina {
            continue;
        }
        for hwmon in entries(&dev.join("hwmon")) {
            hwmon_rails(&hwmon, &mut out);
        }
        for iio in entries(&dev) {
            let is_iio = iio
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("iio:device"));
            if is_iio {
                iio_rails(&iio, &mut out);
            }
        }
    }
    out
}

/// Whether an INA3221 channel label names a real rail.
pub fn is_rail_label(label: &str) -> bool {
    let l = label.trim();
    !l.is_empty() && l != "NC" && !l.to_ascii_lowercase().contains("sum of shunt")
}

/// mV × mA → mW.
pub fn milliwatts(millivolts: u64, milliamps: u64) -> u64 {
    millivolts.saturating_mul(milliamps) / 1000
}

fn hwmon_rails(dir: &Path, out: &mut BTreeMap<String, u64>) {
    for k in 0..=8 {
        let Some(label) = read_small(&dir.join(format!("in{k}_label"))) else {
            continue;
        };
        if !is_rail_label(&label) {
            continue;
        }
        let (Some(mv), Some(ma)) = (
            read_u64(&dir.join(format!("in{k}_input"))),
            read_u64(&dir.join(format!("curr{k}_input"))),
        ) else {
            continue;
        };
        out.entry(label.trim().to_owned())
            .or_insert_with(|| milliwatts(mv, ma));
    }
}

fn iio_rails(dir: &Path, out: &mut BTreeMap<String, u64>) {
    for k in 0..=8 {
        let Some(name) = read_small(&dir.join(format!("rail_name_{k}"))) else {
            continue;
        };
        if !is_rail_label(&name) {
            continue;
        }
        if let Some(mw) = read_u64(&dir.join(format!("in_power{k}_input"))) {
            out.entry(name.trim().to_owned()).or_insert(mw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rails_and_loads_compute() {
        assert!(is_rail_label("VDD_IN\n"));
        assert!(!is_rail_label("NC"));
        assert!(!is_rail_label("sum of shunt voltages"));
        assert_eq!(milliwatts(5072, 1264), 6411);
        assert_eq!(emc_percent(639_800, 3_199_000_000), Some(20.0));
        assert_eq!(emc_percent(1, 0), None);
        assert_eq!(per_mille(523), 52.3);
    }
}
