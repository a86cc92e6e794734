//! Durable state of the control plane behind one [`Store`] trait.
//!
//! Reads are per record type; every write goes through [`Store::commit`],
//! which applies a batch atomically and durably (on return it is on disk), so
//! that the fleet engine can persist a change (a new generation, a rollout
//! step) before it publishes anything. The one exception is the audit log
//! ([`Store::audit_append`]): it records an API call whatever that call
//! wrote, after it was answered. The sled backend is [`SledStore`]; a
//! SQL backend implements the same trait with one transaction per commit.
//!
//! Methods are blocking: async callers run them in `spawn_blocking`.

mod audit;
mod enroll;
mod gates;
mod model;
mod policy;
mod promql;
mod sled_store;

pub use audit::*;
pub use enroll::*;
pub use gates::*;
pub use model::*;
pub use policy::*;
pub use promql::*;
pub use sled_store::SledStore;

use fleet_protocol::{DeviceId, Digest, GroupName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store I/O on {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("stored {what} record {key:?} is corrupt: {source}")]
    Corrupt {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {what} record: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// One write of a [`Store::commit`] batch.
#[derive(Debug, Clone)]
pub enum Write {
    Device(DeviceRecord),
    Group(GroupRecord),
    DeleteGroup(GroupName),
    Release(ReleaseRecord),
    Rollout(RolloutRecord),
    Desired(DesiredRecord),
    /// Appended with the next sequence number.
    Event(EventRecord),
    Token(TokenRecord),
    /// Removes the token with this hash (revocation).
    DeleteToken(String),
    /// A device's latest telemetry (replaces the previous one).
    Telemetry(TelemetryRecord),
    /// An enrollment token (created, used once more, or revoked).
    EnrollToken(EnrollTokenRecord),
    /// An enrollment waiting for approval (added or approved).
    Pending(PendingEnrollment),
    /// The device's pending enrollment is done with.
    DeletePending(DeviceId),
    /// The certificates issued to a device.
    DeviceCert(DeviceCertRecord),
    /// A device revoked, for good.
    Revoke(RevokedDevice),
}

pub trait Store: Send + Sync + 'static {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    fn group(&self, name: &GroupName) -> Result<Option<GroupRecord>, StoreError>;
    fn groups(&self) -> Result<Vec<GroupRecord>, StoreError>;

    fn release(&self, digest: &Digest) -> Result<Option<ReleaseRecord>, StoreError>;
    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError>;

    fn rollout(&self, id: RolloutId) -> Result<Option<RolloutRecord>, StoreError>;
    /// All rollouts, oldest first.
    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;
    /// A new rollout id, never handed out before (also across restarts).
    fn next_rollout_id(&self) -> Result<RolloutId, StoreError>;

    fn desired(&self, device: &DeviceId) -> Result<Option<DesiredRecord>, StoreError>;
    fn desired_all(&self) -> Result<Vec<DesiredRecord>, StoreError>;

    /// The newest `limit` events, oldest first.
    fn events(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn token_count(&self) -> Result<usize, StoreError>;
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Appends `record` to the audit log with the next sequence number
    /// (returned), durably, and drops the oldest records beyond
    /// [`AUDIT_RETENTION`].
    fn audit_append(&self, record: AuditRecord) -> Result<u64, StoreError>;
    /// Audit records oldest first: those after sequence number `after`
    /// (the first `limit` of them), or without `after` the newest `limit`.
    fn audit(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// The latest telemetry of every device that sent some.
    fn telemetry_all(&self) -> Result<Vec<TelemetryRecord>, StoreError>;

    /// The enrollment token whose secret hashes to `secret_sha256`.
    fn enroll_token(&self, secret_sha256: &str) -> Result<Option<EnrollTokenRecord>, StoreError>;
    /// Every enrollment token, by hash.
    fn enroll_tokens(&self) -> Result<Vec<EnrollTokenRecord>, StoreError>;
    fn pending(&self, device: &DeviceId) -> Result<Option<PendingEnrollment>, StoreError>;
    fn pendings(&self) -> Result<Vec<PendingEnrollment>, StoreError>;
    fn device_cert(&self, device: &DeviceId) -> Result<Option<DeviceCertRecord>, StoreError>;
    fn revoked(&self, device: &DeviceId) -> Result<Option<RevokedDevice>, StoreError>;
    /// Every revoked device (loaded into `pki::Revoked` at start).
    fn revoked_all(&self) -> Result<Vec<RevokedDevice>, StoreError>;

    /// Applies `writes` atomically and makes them durable before returning.
    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError>;
}
