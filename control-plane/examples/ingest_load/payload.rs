//! The simulated devices' messages: a status report with device info and
//! telemetry, a quarter of the devices Jetson-like.

use std::collections::BTreeMap;

use anyhow::Context;
use fleet_protocol::message::{AppStatus, AppTelemetry, DeviceInfo, Health, ReleaseRef};
use fleet_protocol::{AppName, DeviceId, Digest, Phase, StatusReport, Telemetry};

pub fn device_id(prefix: &str, i: usize) -> anyhow::Result<DeviceId> {
    DeviceId::new(format!("{prefix}-{i:05}")).context("device id")
}

pub fn jetson(i: usize) -> bool {
    i.is_multiple_of(4)
}

pub fn telemetry(i: usize, round: usize, now: u64) -> Telemetry {
    let f = (i % 97) as f32;
    let r = round as u64;
    let mut t = Telemetry {
        at: now + r * 30,
        uptime_secs: Some(86_400 + r * 30 + i as u64),
        cpu_percent: Some(5.0 + f / 3.0),
        memory_used_bytes: Some(1_800_000_000 + (i as u64 % 1000) * 1_000_000),
        memory_total_bytes: Some(8_000_000_000),
        store_used_bytes: Some(3_200_000_000),
        disk_free_bytes: Some(41_000_000_000 - r * 4096),
        net_rx_bytes: Some(912_345_678 + r * 150_000),
        net_tx_bytes: Some(123_456_789 + r * 40_000),
        fetched_bytes_total: Some(1_234_567_890),
        reused_bytes_total: Some(456_789_012),
        apps: vec![AppTelemetry {
            app: AppName::new("camera").ok(),
            running: true,
            restarts: 0,
            health: Health::Healthy,
            cpu_percent: Some(3.5 + f / 10.0),
            memory_bytes: Some(180_000_000),
        }],
        ..Telemetry::default()
    };
    if jetson(i) {
        t.temperatures = [
            ("cpu-thermal", 48.5),
            ("gpu-thermal", 46.0),
            ("cv0-thermal", 45.3),
            ("soc0-thermal", 47.1),
            ("soc1-thermal", 46.8),
            ("tj-thermal", 49.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v + f / 20.0))
        .collect();
        t.power_mw = [
            ("VDD_IN", 7_340),
            ("VDD_CPU_GPU_CV", 2_150),
            ("VDD_SOC", 1_620),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v + (i as u64 % 50)))
        .collect::<BTreeMap<_, _>>();
        t.gpu_load_percent = Some(35.0 + f / 4.0);
        t.gpu_freq_hz = Some(918_000_000);
        t.emc_load_percent = Some(18.0);
    } else {
        t.temperatures = [("x86_pkg_temp".to_owned(), 52.0 + f / 10.0)].into();
    }
    t
}

pub fn status(device: &DeviceId, i: usize, now: u64) -> anyhow::Result<StatusReport> {
    let digest = Digest::new(format!("sha256:{:064x}", i as u128 * 7919 + 1)).context("digest")?;
    Ok(StatusReport {
        schema: fleet_protocol::SCHEMA_VERSION,
        device: device.clone(),
        reported_at: now,
        generation: None,
        apps: vec![AppStatus {
            app: AppName::new("camera").context("app")?,
            phase: Phase::Committed,
            running: Some(ReleaseRef {
                version: "1.4.2".to_owned(),
                release_digest: digest,
            }),
            target: None,
            previous: None,
            health: Health::Healthy,
            restarts: 0,
            progress: None,
            error: None,
            delta_fallbacks: vec![],
        }],
        rejected: None,
        info: Some(DeviceInfo {
            labels: [
                ("site".to_owned(), format!("site-{}", i % 40)),
                (
                    "model".to_owned(),
                    if jetson(i) { "orin-nx" } else { "nuc" }.to_owned(),
                ),
            ]
            .into(),
            architecture: if jetson(i) { "arm64" } else { "amd64" }.to_owned(),
            variant: jetson(i).then(|| "v8".to_owned()),
            l4t_version: jetson(i).then(|| "R36.4.0".to_owned()),
            agent_version: "0.1.0".to_owned(),
            ..Default::default()
        }),
    })
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
