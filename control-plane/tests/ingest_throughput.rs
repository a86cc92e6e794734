//! Ingest throughput and memory of the latest-state map with 10,000 devices
//! (a measurement, not a test: `cargo test --release --test
//! ingest_throughput -- --ignored --nocapture` prints the figures and never
//! fails on timing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use fleet_control_plane::link::{Inbound, parse_inbound};
use fleet_control_plane::telemetry::Live;
use fleet_protocol::message::encode;
use fleet_protocol::{Telemetry, TopicScheme};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn parse_and_ingest_telemetry_of_10000_devices() {
    const DEVICES: usize = 10_000;
    const ROUNDS: usize = 10;
    let scheme = TopicScheme::default();
    let t = Telemetry {
        at: 1_700_000_000,
        uptime_secs: Some(3600),
        cpu_percent: Some(12.5),
        memory_used_bytes: Some(2_000_000_000),
        memory_total_bytes: Some(8_000_000_000),
        disk_free_bytes: Some(50_000_000_000),
        store_used_bytes: Some(700_000_000),
        net_rx_bytes: Some(123_456),
        net_tx_bytes: Some(654_321),
        temperatures: (0..6)
            .map(|i| (format!("zone{i}-thermal"), 40.0 + i as f32))
            .collect(),
        gpu_load_percent: Some(45.0),
        gpu_freq_hz: Some(1_300_500_000),
        emc_load_percent: Some(20.0),
        power_mw: (0..4)
            .map(|i| (format!("VDD_RAIL{i}"), 1000 + i))
            .collect::<BTreeMap<_, _>>(),
        fetched_bytes_total: Some(1_000),
        reused_bytes_total: Some(4_000),
        ..Telemetry::default()
    };
    let payload = encode(&t).unwrap();
    let topics: Vec<String> = (0..DEVICES)
        .map(|i| format!("fleet/v1/d/dev-{i:05}/telemetry"))
        .collect();
    let rss0 = rss_kib();
    let live = Live::new();
    let start = Instant::now();
    for round in 0..ROUNDS {
        for topic in &topics {
            match parse_inbound(&scheme, topic, &payload) {
                Some(Inbound::Telemetry(t)) => {
                    let d = t.device.clone().unwrap();
                    live.on_telemetry(&d, t, round as u64);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = (DEVICES * ROUNDS) as f64;
    assert_eq!(live.len(), DEVICES);
    println!(
        "telemetry ingest: {n} messages of {} bytes in {secs:.2} s = {:.0} msgs/s on one thread (parse + ingest); \
         latest state of {DEVICES} devices: +{} MiB RSS",
        payload.len(),
        n / secs,
        rss_kib().saturating_sub(rss0) / 1024
    );
}
