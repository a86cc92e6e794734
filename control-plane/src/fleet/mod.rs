//! The fleet engine: devices, groups, releases and rollouts.
//!
//! [`Fleet`] is a cloneable handle. Every change runs as one blocking step
//! (under a write lock, in `spawn_blocking`) that computes the new records,
//! signs desired states and commits everything in one durable batch; only
//! then are the affected devices' desired states published (the `published`
//! flag of each record is the outbox: what a crash left unpublished is sent
//! at the next start or sweep).
//!
//! - [`engine`]: the handle, its write path, the outbox, device messages.
//! - [`devices`], [`groups`], [`releases`], [`rollouts`]: each concern's
//!   requests, views and steps.
//! - [`rollout`]: the pure rollout state machine; [`gates`]: its bake and
//!   the gates on what a baking wave's devices report.
//! - [`ports`]: what the engine needs from the outside (link, content,
//!   Prometheus); [`analysis`]: the engine's side of PromQL gates.
//!
//! Nothing here imports the REST layer: `api` serves these views.

pub mod action;
pub mod analysis;
pub mod channels;
pub mod devices;
pub mod engine;
pub mod enroll;
pub mod feed;
pub mod gates;
pub mod groups;
pub mod ports;
pub mod progress;
pub mod promql;
pub mod releases;
pub mod rollout;
pub mod rollouts;
#[cfg(test)]
mod test_fixtures;

use fleet_protocol::{Digest, verify};

use crate::director::DirectorError;
use crate::store::StoreError;

pub use channels::{FollowChannel, PlanView, PublishView};
pub use devices::{DesiredSummary, DeviceView, SetLabels, TelemetryView};
pub use engine::{Fleet, FleetSnapshot};
pub use groups::{AddMembers, CreateGroup, GroupView};
pub use releases::ReleaseView;
pub use rollout::StepError;
pub use rollouts::{CreateRollout, RolloutView, WaveView};

/// What the engine's operations fail with. [`FleetError::kind`] sorts them
/// into the few outcomes an API answers with.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("group {group} exists; add devices with `fleetctl groups add-members`")]
    GroupExists { group: fleet_protocol::GroupName },
    #[error("a group needs a label selector (e.g. role=camera) or members")]
    GroupSpecEmpty,
    #[error(
        "group {group} has no devices; label devices (`fleetctl groups label`) or add members first"
    )]
    GroupWithoutDevices { group: fleet_protocol::GroupName },
    #[error(
        "no device of group {group} meets the release's requirements ({excluded} incompatible; see --plan)"
    )]
    NoCompatibleDevices {
        group: fleet_protocol::GroupName,
        excluded: usize,
    },
    #[error("give release_digest or release")]
    ReleaseMissing,
    #[error("release_digest {given} does not match the given release ({release})")]
    ReleaseDigestMismatch { given: Digest, release: Digest },
    #[error("release refused: {source}")]
    Untrusted {
        #[source]
        source: verify::VerifyError,
    },
    #[error(transparent)]
    Rollout(#[from] StepError),
    #[error(transparent)]
    Safety(#[from] crate::store::BadSafety),
    #[error(
        "this server has no Prometheus to run the PromQL gate: set prometheus.url \
         (or FLEET_PROMETHEUS_URL) in its configuration, or drop --gate-promql"
    )]
    NoPrometheus,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Director(Box<DirectorError>),
    #[error("the engine's write lock is poisoned (a step panicked)")]
    LockPoisoned,
    #[error("an engine task failed: {source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The outcome class of a [`FleetError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What the request names does not exist.
    NotFound,
    /// The request does not fit the current state.
    Conflict,
    /// The request itself is malformed.
    Invalid,
    /// A release did not verify against the trust root.
    Untrusted,
    /// The server failed (store, director, task).
    Internal,
}

impl From<DirectorError> for FleetError {
    fn from(e: DirectorError) -> Self {
        FleetError::Director(Box::new(e))
    }
}

impl FleetError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FleetError::NotFound { .. } => ErrorKind::NotFound,
            FleetError::GroupExists { .. }
            | FleetError::GroupWithoutDevices { .. }
            | FleetError::NoCompatibleDevices { .. }
            | FleetError::Rollout(_) => ErrorKind::Conflict,
            FleetError::GroupSpecEmpty
            | FleetError::ReleaseMissing
            | FleetError::ReleaseDigestMismatch { .. }
            | FleetError::Safety(_)
            | FleetError::NoPrometheus => ErrorKind::Invalid,
            FleetError::Untrusted { .. } => ErrorKind::Untrusted,
            FleetError::Store(_)
            | FleetError::Director(_)
            | FleetError::LockPoisoned
            | FleetError::Task { .. } => ErrorKind::Internal,
        }
    }
}

fn not_found(what: &'static str, key: impl ToString) -> FleetError {
    FleetError::NotFound {
        what,
        key: key.to_string(),
    }
}

/// The unix time now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The unix time now, with fractions of a second.
pub fn now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Digest helper for tests and tools: the release digest of a signed release.
pub fn release_digest(envelope: &fleet_protocol::dsse::Envelope) -> Option<Digest> {
    envelope.payload_bytes().ok().map(|p| Digest::of(&p))
}
