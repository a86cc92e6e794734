//! Telemetry from hand-written host trees (`tests/fixtures/tegra/*`, see its
//! README): a Jetson Orin Nano on L4T R36 (JP6, hwmon INA3221, devfreq GPU
//! through real sysfs-style symlinks), a Jetson Nano on R32 (JP4, iio
//! INA3221, `gpu.0/load`, plain directories) and a plain x86 host; and the
//! machine running the tests, which must not look like a Jetson.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use fleet_agent::link::info::device_info;
use fleet_agent::telemetry::{HostRoot, Sampler, Sources};
use fleet_protocol::message::Telemetry;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tegra")
        .join(name)
}

fn sample(root: PathBuf) -> (Sampler, Telemetry) {
    let mut s = Sampler::new(Sources {
        host: HostRoot::new(root),
        ..Sources::default()
    });
    let t = s.sample(1_700_000_000, None, &[]);
    (s, t)
}

fn map<V: Copy>(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn assert_no_tegra_fields(t: &Telemetry) {
    assert_eq!(t.gpu_load_percent, None, "{t:?}");
    assert_eq!(t.gpu_freq_hz, None, "{t:?}");
    assert_eq!(t.emc_load_percent, None, "{t:?}");
    assert!(t.power_mw.is_empty(), "{t:?}");
    let json = serde_json::to_string(t).unwrap();
    for field in ["gpu_", "emc_", "power_mw"] {
        assert!(!json.contains(field), "{field} in {json}");
    }
}

#[test]
fn orin_r36_fixture_gives_its_readings() {
    let (sampler, t) = sample(fixture("orin-r36"));
    let tegra = sampler.tegra().expect("the Orin fixture is a Tegra");
    assert_eq!(tegra.l4t_version.as_deref(), Some("R36.4.3"));
    assert_eq!(tegra.soc.as_deref(), Some("tegra234"));
    assert_eq!(tegra.soc_id, Some(35));
    assert_eq!(
        tegra.model.as_deref(),
        Some("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")
    );
    assert_eq!(t.at, 1_700_000_000);
    assert_eq!(t.uptime_secs, Some(8642));
    // One sample: no CPU % yet.
    assert_eq!(t.cpu_percent, None);
    assert_eq!(t.memory_total_bytes, Some(7_802_592 * 1024));
    assert_eq!(t.memory_used_bytes, Some((7_802_592 - 5_321_860) * 1024));
    assert_eq!(t.net_rx_bytes, Some(734_003_200 + 1_048_576));
    assert_eq!(t.net_tx_bytes, Some(52_428_800 + 262_144));
    // cv0 reads −256000 (offline): left out.
    assert_eq!(
        t.temperatures,
        map(&[
            ("cpu-thermal", 48.531),
            ("gpu-thermal", 46.718),
            ("soc0-thermal", 47.125),
            ("tj-thermal", 49.062),
        ])
    );
    assert_eq!(t.gpu_load_percent, Some(52.3));
    assert_eq!(t.gpu_freq_hz, Some(918_000_000));
    assert_eq!(t.emc_load_percent, Some(20.0));
    // mV × mA / 1000; "sum of shunt voltages" is not a rail.
    assert_eq!(
        t.power_mw,
        map(&[
            ("VDD_IN", 5072 * 1264 / 1000),
            ("VDD_CPU_GPU_CV", 5064 * 312 / 1000),
            ("VDD_SOC", 5072 * 368 / 1000),
        ])
    );
    // No store given, no apps: nothing invented.
    assert_eq!(t.store_used_bytes, None);
    assert_eq!(t.disk_free_bytes, None);
    assert_eq!(t.fetched_bytes_total, None);
    assert!(t.apps.is_empty());
    assert_eq!(
        device_info(BTreeMap::new(), &fixture("orin-r36"))
            .l4t_version
            .as_deref(),
        Some("R36.4.3")
    );
}

#[test]
fn nano_r32_fixture_gives_its_readings() {
    let (sampler, t) = sample(fixture("nano-r32"));
    let tegra = sampler.tegra().expect("the Nano fixture is a Tegra");
    assert_eq!(tegra.l4t_version.as_deref(), Some("R32.7.4"));
    assert_eq!(tegra.soc.as_deref(), Some("tegra210"));
    assert_eq!(tegra.soc_id, Some(33));
    assert_eq!(t.uptime_secs, Some(3601));
    assert_eq!(t.memory_total_bytes, Some(4_059_712 * 1024));
    assert_eq!(t.memory_used_bytes, Some((4_059_712 - 2_571_200) * 1024));
    assert_eq!(t.net_rx_bytes, Some(96_468_992 + 512_000));
    assert_eq!(t.net_tx_bytes, Some(8_388_608 + 256_000));
    assert_eq!(
        t.temperatures,
        map(&[
            ("AO-therm", 41.5),
            ("CPU-therm", 38.5),
            ("GPU-therm", 37.0),
            ("PLL-therm", 36.0),
            ("PMIC-Die", 100.0),
            ("thermal-fan-est", 38.1),
        ])
    );
    // The devfreq node has no load file here: the JP4 path gives it.
    assert_eq!(t.gpu_load_percent, Some(36.7));
    assert_eq!(t.gpu_freq_hz, Some(921_600_000));
    assert_eq!(t.emc_load_percent, Some(25.0));
    assert_eq!(
        t.power_mw,
        map(&[
            ("POM_5V_IN", 3712),
            ("POM_5V_GPU", 1147),
            ("POM_5V_CPU", 851)
        ])
    );
}

#[test]
fn plain_x86_fixture_has_no_tegra_fields() {
    let (sampler, t) = sample(fixture("x86-none"));
    assert!(sampler.tegra().is_none());
    assert_eq!(t.uptime_secs, Some(1000));
    assert_eq!(t.memory_used_bytes, Some(4_096_000 * 1024));
    assert_eq!(t.net_rx_bytes, Some(500_000));
    assert_eq!(
        t.temperatures,
        map(&[("acpitz", 27.8), ("x86_pkg_temp", 52.0)])
    );
    assert_no_tegra_fields(&t);
    assert_eq!(
        device_info(BTreeMap::new(), &fixture("x86-none")).l4t_version,
        None
    );
}

#[test]
fn this_machine_reports_host_figures_and_no_tegra_fields() {
    if std::path::Path::new("/etc/nv_tegra_release").exists() {
        eprintln!("SKIPPED: this machine is a Jetson; the non-Tegra check needs another host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut sampler = Sampler::new(Sources {
        state_dir: Some(dir.path().to_owned()),
        ..Sources::default()
    });
    assert!(sampler.tegra().is_none());
    sampler.sample(1, None, &[]);
    // Burn a little CPU so the second /proc/stat differs.
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let t = sampler.sample(2, None, &[]);
    assert!(t.uptime_secs.is_some_and(|u| u > 0), "{t:?}");
    let cpu = t.cpu_percent.expect("two samples give CPU %");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    let (used, total) = (t.memory_used_bytes.unwrap(), t.memory_total_bytes.unwrap());
    assert!(used > 0 && used <= total, "{used} {total}");
    assert!(t.disk_free_bytes.is_some_and(|f| f > 0), "{t:?}");
    assert_no_tegra_fields(&t);
}

#[test]
fn the_telemetry_command_prints_one_sample() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args([
            "telemetry",
            "--cpu-window-ms",
            "10",
            "-o",
            "json",
            "--host-root",
        ])
        .arg(fixture("orin-r36"))
        .env_remove("FLEET_AGENT_HOST_ROOT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t: Telemetry = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t.gpu_load_percent, Some(52.3));
    assert_eq!(t.power_mw.get("VDD_IN"), Some(&6411));
    assert_eq!(t.temperatures.get("tj-thermal"), Some(&49.062));
    let text = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["telemetry", "--cpu-window-ms", "10", "--host-root"])
        .arg(fixture("nano-r32"))
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("tegra: L4T R32.7.4 SoC tegra210"), "{text}");
    assert!(text.contains("power POM_5V_GPU: 1147 mW"), "{text}");
}
