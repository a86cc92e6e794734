//! The trust root in force: loaded at start (the stored one, rotated to a
//! newer `trust.json` provisioned on disk), rotated on request, persisted.

use std::path::PathBuf;

use fleet_protocol::TrustedRoot;

use super::{DeployError, Inner, unix_now};
use crate::config::Config;
use crate::state::State;

/// The trust root at start: the stored one (rotated to a newer `trust.json`
/// on disk if there is one), or the one on disk on a first start.
pub(super) fn load(config: &Config, state: &State, now: u64) -> Result<TrustedRoot, DeployError> {
    let trust_err = |source| DeployError::Trust {
        path: config.trust.clone(),
        source,
    };
    let on_disk = std::fs::read(&config.trust).ok();
    match state.trust()? {
        Some(stored) => {
            let root = TrustedRoot::bootstrap(&stored, now).map_err(trust_err)?;
            // A newer trust.json provisioned on disk is a rotation.
            if let Some(bytes) = on_disk
                && bytes != stored
                && let Ok(next) = root.rotate(&bytes, now)
            {
                state.set_trust(&bytes)?;
                return Ok(next);
            }
            Ok(root)
        }
        None => {
            let bytes = on_disk.ok_or_else(|| DeployError::Read {
                path: config.trust.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no trust root"),
            })?;
            let root = TrustedRoot::bootstrap(&bytes, now).map_err(trust_err)?;
            state.set_trust(&bytes)?;
            Ok(root)
        }
    }
}

impl Inner {
    pub(super) fn trust(&self) -> TrustedRoot {
        match self.trust.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn trust_allows_privileged(&self) -> bool {
        self.trust().allow_privileged()
    }

    pub(super) fn rotate_trust(&self, bytes: &[u8]) -> Result<u64, DeployError> {
        let next = self
            .trust()
            .rotate(bytes, unix_now())
            .map_err(|source| DeployError::Trust {
                path: PathBuf::from("(rotation)"),
                source,
            })?;
        self.state.set_trust(bytes)?;
        let version = next.version();
        match self.trust.lock() {
            Ok(mut t) => *t = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(version)
    }
}
