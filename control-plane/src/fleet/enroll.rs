//! The engine's side of enrollment: a step under the write lock that
//! commits the enrollment's records together with the device joining its
//! group (a group is read, changed and written back only under this lock,
//! as every other group change), then gives the device what its groups
//! follow. `crate::enroll` decides what to write.

use fleet_protocol::{DeviceId, GroupName};

use super::engine::event;
use super::{Fleet, FleetError, not_found};
use crate::store::{EventKind, Store, Write};

/// What a locked enrollment step commits.
pub struct Locked<T> {
    /// What the step answers.
    pub value: T,
    /// Its writes (committed in one batch with the group change).
    pub writes: Vec<Write>,
    /// The device joins this group's explicit members.
    pub join: Option<(GroupName, DeviceId)>,
}

impl<T> Locked<T> {
    /// A step that writes nothing.
    pub fn answer(value: T) -> Self {
        Self {
            value,
            writes: Vec::new(),
            join: None,
        }
    }
}

impl Fleet {
    /// Runs `f` under the engine's write lock with the store and the time;
    /// commits what it returns in one batch, the device joining its group
    /// with it; then gives a device that joined its groups' current
    /// releases. An error from `f` commits nothing.
    pub async fn locked<T, E>(
        &self,
        f: impl FnOnce(&dyn Store, u64) -> Result<Locked<T>, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<FleetError> + Send + 'static,
    {
        let done = self
            .blocking(move |inner| {
                let _guard = inner.lock()?;
                let now = super::now();
                let step = match f(inner.store.as_ref(), now) {
                    Ok(step) => step,
                    Err(e) => return Ok(Err(e)),
                };
                let mut writes = step.writes;
                let mut joined = Vec::new();
                if let Some((name, device)) = step.join {
                    let mut group = inner
                        .store
                        .group(&name)?
                        .ok_or_else(|| not_found("group", &name))?;
                    if group.members.insert(device.clone()) {
                        let msg = format!("members added [{device}] (enrolled)");
                        writes.push(Write::Group(group));
                        writes.push(event(EventKind::GroupMembers, &name, msg, now));
                    }
                    joined.push(device);
                }
                if !writes.is_empty() {
                    inner.store.commit(writes)?;
                }
                // The enrollment is committed: a failed catch-up does not
                // undo it (the device catches up at its first status).
                let changed = inner.catch_up_commit(&joined, now).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "catching an enrolled device up with its groups failed");
                    Vec::new()
                });
                // As `change` does: the catch-up's deploys are prepared for.
                let due = std::mem::take(
                    &mut *inner.updates_due.lock().unwrap_or_else(|e| e.into_inner()),
                );
                if !due.is_empty() {
                    inner.preparer.prepare(due.into_iter().collect());
                }
                Ok(Ok((step.value, changed)))
            })
            .await
            .map_err(E::from)?;
        let (value, changed) = done?;
        self.publish(changed).await;
        Ok(value)
    }
}
