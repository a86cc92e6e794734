//! A checker for the Grafana dashboards in `grafana/`: it reads the dashboard
//! JSON itself (no copied list of queries), checks its structure, and sends
//! every panel query — template variables filled in from their own queries —
//! to a real Prometheus.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod dashboard;
pub mod live;
pub mod prometheus;
pub mod template;

use std::path::PathBuf;

/// The repository's `grafana/` directory.
pub fn grafana_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana")
}
