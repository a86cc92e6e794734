//! Releases: signed by the release key, verified against the trust root,
//! kept by their release digest.

use fleet_protocol::{AppName, Digest, verify};
use serde::{Deserialize, Serialize};

use super::engine::{Inner, event};
use super::{Fleet, FleetError};
use crate::store::{EventKind, ReleaseRecord, Write};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    pub digest: Digest,
    pub app: AppName,
    pub version: String,
    pub repository: String,
    pub manifest_digest: Digest,
    pub added_at: u64,
    /// What the release runs with (signed with it): args, env, GPU,
    /// devices, requirements, restart and health policy.
    #[serde(default)]
    pub runtime: fleet_protocol::message::RuntimeSettings,
}

impl From<&ReleaseRecord> for ReleaseView {
    fn from(r: &ReleaseRecord) -> Self {
        Self {
            digest: r.digest.clone(),
            app: r.release.app.clone(),
            version: r.release.version.clone(),
            repository: r.release.repository.clone(),
            manifest_digest: r.release.manifest_digest.clone(),
            added_at: r.added_at,
            runtime: r.release.runtime.clone(),
        }
    }
}

impl Fleet {
    /// Verifies and keeps a signed release (a release already kept is not
    /// added again).
    pub async fn add_release(&self, envelope_json: Vec<u8>) -> Result<ReleaseView, FleetError> {
        self.change(move |i, now| {
            let record = i.verify_release(&envelope_json, now)?;
            let view = ReleaseView::from(&record);
            let msg = format!(
                "{} {} ({}@{})",
                record.release.app,
                record.release.version,
                record.release.repository,
                record.release.manifest_digest
            );
            i.keep_release(record, msg, now)?;
            Ok((view, vec![]))
        })
        .await
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseView>, FleetError> {
        self.blocking(|i| Ok(i.store.releases()?.iter().map(ReleaseView::from).collect()))
            .await
    }
}

impl Inner {
    /// Commits `record` with an event saying `message`, unless a release of
    /// the same digest is kept already (idempotent).
    pub(super) fn keep_release(
        &self,
        record: ReleaseRecord,
        message: String,
        now: u64,
    ) -> Result<(), FleetError> {
        if self.store.release(&record.digest)?.is_none() {
            self.store.commit(vec![
                event(EventKind::ReleaseAdded, &record.digest, message, now),
                Write::Release(record),
            ])?;
        }
        Ok(())
    }

    pub(super) fn verify_release(
        &self,
        envelope_json: &[u8],
        now: u64,
    ) -> Result<ReleaseRecord, FleetError> {
        let verified = verify::verify_release(&self.trust, envelope_json, now)
            .map_err(|source| FleetError::Untrusted { source })?;
        let digest = verified.payload_digest().clone();
        let envelope =
            fleet_protocol::dsse::Envelope::from_json(envelope_json, verify::MAX_RELEASE_BYTES)
                .map_err(|source| FleetError::Untrusted {
                    source: verify::VerifyError::MalformedEnvelope { source },
                })?;
        Ok(ReleaseRecord {
            digest,
            release: verified.into_inner(),
            envelope,
            added_at: now,
            channels: Default::default(),
        })
    }
}
