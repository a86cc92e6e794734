//! The per-app update lifecycle on a device.

use serde::{Deserialize, Serialize};

/// Where one app is in its update lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    Pending,
    Downloading,
    Verifying,
    Staged,
    Starting,
    Probation { deadline: u64 },
    Committed,
    RollingBack,
    RolledBack,
    Failed { code: String },
}
