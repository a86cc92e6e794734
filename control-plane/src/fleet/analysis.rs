//! The engine's side of PromQL gates: which measurements are due, and
//! feeding their judged results to the rollouts as
//! [`Event::GateResult`]. The server's gate loop runs the queries in
//! between, through [`super::ports::GateQuery`].

use std::sync::atomic::Ordering;

use fleet_protocol::DeviceId;

use super::engine::{Inner, Staged};
use super::promql::{self, PromOutcome};
use super::rollout::Event;
use super::{Fleet, FleetError, not_found};
use crate::store::{PromGate, RolloutId, RolloutState, Safety, WaveSize};

/// A PromQL measurement due now: of which wave of which rollout.
#[derive(Debug, Clone)]
pub struct DueGate {
    pub rollout: RolloutId,
    pub wave: usize,
    pub gate: PromGate,
}

impl Fleet {
    /// Says that a Prometheus runs the PromQL gates' queries (the server's
    /// gate loop); without, rollouts with a PromQL gate are refused.
    pub fn attach_prometheus(&self) {
        self.inner.prometheus.store(true, Ordering::Relaxed);
    }

    /// The PromQL measurements due now.
    pub async fn gates_due(&self) -> Result<Vec<DueGate>, FleetError> {
        self.blocking(|i| {
            let now = super::now();
            Ok(i.store
                .rollouts()?
                .iter()
                .filter_map(|r| {
                    promql::due(r, now).map(|(wave, gate)| DueGate {
                        rollout: r.id,
                        wave,
                        gate,
                    })
                })
                .collect())
        })
        .await
    }

    /// Feeds a judged measurement of wave `wave` to rollout `rollout`.
    pub async fn gate_result(
        &self,
        rollout: RolloutId,
        wave: usize,
        outcome: PromOutcome,
    ) -> Result<(), FleetError> {
        self.change(move |i, now| i.gate_result(rollout, wave, outcome, now))
            .await
    }
}

impl Inner {
    /// Refuses a rollout policy that cannot work here (with its first
    /// waves' sizes).
    pub(super) fn check_safety(
        &self,
        safety: &Safety,
        waves: &[WaveSize],
    ) -> Result<(), FleetError> {
        safety.check_with_waves(waves)?;
        if safety.promql.is_some() && !self.prometheus.load(Ordering::Relaxed) {
            return Err(FleetError::NoPrometheus);
        }
        Ok(())
    }

    fn gate_result(
        &self,
        id: RolloutId,
        wave: usize,
        outcome: PromOutcome,
        now: u64,
    ) -> Result<((), Vec<DeviceId>), FleetError> {
        let r = self
            .store
            .rollout(id)?
            .ok_or_else(|| not_found("rollout", id))?;
        if r.state != RolloutState::Running {
            return Ok(((), vec![]));
        }
        let seen = self.reports(&r)?;
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let event = Event::GateResult {
            wave,
            outcome,
            seen,
        };
        self.step(r, event, &mut staged, &mut writes, now)?;
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok(((), devices))
    }
}
