//! Gate verdicts counted as rollouts step (in memory, since the server
//! started): rollouts halted by each gate, and rollouts paused because
//! their gates could not decide. `/metrics` renders them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::GateName;

/// Gate verdicts counted by the engine as rollouts step.
#[derive(Debug, Default)]
pub struct GateCounters {
    failed: [AtomicU64; GateName::ALL.len()],
    undecided: AtomicU64,
}

/// What [`GateCounters`] counted, for one scrape.
#[derive(Debug, Clone, Default)]
pub struct GateCounts {
    pub failed: Vec<(GateName, u64)>,
    pub undecided: u64,
}

impl GateCounters {
    /// A gate failed and halted a rollout.
    pub fn failed(&self, gate: GateName) {
        self.failed[gate as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Gates could not decide and paused a rollout.
    pub fn undecided(&self) {
        self.undecided.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> GateCounts {
        GateCounts {
            failed: GateName::ALL
                .iter()
                .map(|g| (*g, self.failed[*g as usize].load(Ordering::Relaxed)))
                .collect(),
            undecided: self.undecided.load(Ordering::Relaxed),
        }
    }
}
