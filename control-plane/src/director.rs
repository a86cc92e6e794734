//! The director: builds and signs each device's desired state with the
//! director key. It only computes; the fleet engine persists the record
//! (generation first) and then publishes it.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_protocol::trust::Role;
use fleet_protocol::{AppName, DeviceId, Digest};

use crate::keys::{KeyError, KeyFile};
use crate::sign::{self, SignError, SignedRelease};
use crate::store::{DesiredRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error("director key: {source}")]
    Key {
        #[source]
        source: Box<KeyError>,
    },
    #[error("device {device}: release {digest} of app {app} is not in the store")]
    MissingRelease {
        device: DeviceId,
        app: AppName,
        digest: Digest,
    },
    #[error("device {device}: cannot sign the desired state: {source}")]
    Sign {
        device: DeviceId,
        #[source]
        source: Box<SignError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Director {
    key: KeyFile,
    lifetime_secs: u64,
    renew_margin_secs: u64,
}

impl Director {
    pub fn load(
        key_path: &Path,
        lifetime_secs: u64,
        renew_margin_secs: u64,
    ) -> Result<Self, DirectorError> {
        let key =
            KeyFile::load_for(key_path, Role::Director).map_err(|source| DirectorError::Key {
                source: Box::new(source),
            })?;
        Ok(Self::new(key, lifetime_secs, renew_margin_secs))
    }

    pub fn new(key: KeyFile, lifetime_secs: u64, renew_margin_secs: u64) -> Self {
        Self {
            key,
            lifetime_secs,
            renew_margin_secs,
        }
    }

    pub fn keyid(&self) -> fleet_protocol::dsse::KeyId {
        self.key.keyid()
    }

    /// The next desired state of `device` running `apps`: generation one more
    /// than `previous`'s, valid from `now` for the configured lifetime. The
    /// record is not yet published.
    pub fn next(
        &self,
        store: &dyn Store,
        device: &DeviceId,
        previous: Option<&DesiredRecord>,
        apps: BTreeMap<AppName, Digest>,
        now: u64,
    ) -> Result<DesiredRecord, DirectorError> {
        let generation = previous.map_or(1, |p| p.generation.saturating_add(1));
        let mut releases = Vec::with_capacity(apps.len());
        for (app, digest) in &apps {
            let record = store
                .release(digest)?
                .ok_or_else(|| DirectorError::MissingRelease {
                    device: device.clone(),
                    app: app.clone(),
                    digest: digest.clone(),
                })?;
            releases.push(SignedRelease {
                app: app.clone(),
                release_digest: digest.clone(),
                envelope: record.envelope,
            });
        }
        let expires_at = now.saturating_add(self.lifetime_secs);
        let envelope = sign::sign_desired_state(
            device.clone(),
            generation,
            now,
            expires_at,
            releases,
            &self.key,
        )
        .map_err(|source| DirectorError::Sign {
            device: device.clone(),
            source: Box::new(source),
        })?;
        Ok(DesiredRecord {
            device: device.clone(),
            generation,
            apps,
            issued_at: now,
            expires_at,
            envelope: envelope.to_json(),
            published: false,
        })
    }

    /// Whether `record` is within the renewal margin of its expiry.
    pub fn needs_renewal(&self, record: &DesiredRecord, now: u64) -> bool {
        now.saturating_add(self.renew_margin_secs) >= record.expires_at
    }
}
