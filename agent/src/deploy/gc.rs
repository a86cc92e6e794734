//! Garbage collection after a commit or an app's removal: containers,
//! images, blobs and snapshots that no app keeps (target, current and
//! previous release of every app) are removed; the rollback target never is.

use std::collections::HashSet;

use fleet_protocol::Digest;

use super::{DeployError, Inner, crash};
use crate::runtime::ContainerId;
use crate::state::ReleaseRecord;
use crate::store::{GcOptions, StoreError};

impl Inner {
    /// Removes containers, images and snapshots that no app keeps.
    pub(super) async fn gc(&self) -> Result<(), DeployError> {
        let apps = self.state.apps()?;
        let kept: Vec<ReleaseRecord> = apps.iter().flat_map(|a| a.kept()).cloned().collect();
        let kept_ids: HashSet<ContainerId> = kept.iter().map(|r| r.container.clone()).collect();
        self.containers.gc(&kept_ids).await?;
        crash::point("during-gc");
        let kept_images: HashSet<String> = kept.iter().map(|r| r.image.clone()).collect();
        for image in self.state.images()? {
            if !kept_images.contains(&image) {
                self.store.remove_image(&image)?;
                self.state.remove_image(&image)?;
            }
        }
        match self.store.gc(&GcOptions::default()) {
            Ok(report) => tracing::info!(removed = report.blobs_removed, "content gc"),
            Err(StoreError::Busy) => tracing::info!("content gc skipped: a pull is running"),
            Err(e) => return Err(e.into()),
        }
        let keep: HashSet<Digest> = kept
            .iter()
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || snapshots.gc(&keep))
            .await
            .map_err(|source| DeployError::Blocking {
                what: "snapshot gc",
                source,
            })??;
        Ok(())
    }
}
