//! The engine's steps driven by device status and operator actions: status
//! intake, wave progress, starting a rollout and acting on one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleet_protocol::{DeviceId, StatusReport, verify};

use super::rollout::{self, Action, ProgressState};
use super::{FleetError, Inner, Staged, event, not_found};
use crate::api::types::{CreateRollout, RolloutView};
use crate::store::{DeviceRecord, RolloutId, RolloutRecord, RolloutState, WaveState, Write};

impl Inner {
    /// A status changed what `id` runs (its latest state is already in
    /// memory): registers the device on its first report with info, then
    /// moves on the running rollouts it is part of.
    pub(super) fn on_status(
        &self,
        id: &DeviceId,
        now: u64,
    ) -> Result<((), Vec<DeviceId>), FleetError> {
        if self.store.device(id)?.is_none() {
            let Some(live) = self.live.get(id).filter(|l| l.info.is_some()) else {
                tracing::debug!(device = %id, "status from an unregistered device without info; ignored");
                return Ok(((), vec![]));
            };
            let mut device = DeviceRecord::new(id.clone(), now);
            live.overlay(&mut device);
            self.store.commit(vec![
                event("device.registered", id, "first status report", now),
                Write::Device(device),
            ])?;
            self.live.mark_registered(id);
        }

        let mut staged = Staged::default();
        let mut writes = Vec::new();
        for mut r in self.store.rollouts()? {
            if r.state != RolloutState::Running || !r.devices().any(|d| d == id) {
                continue;
            }
            if self.advance(&mut r, &mut staged, &mut writes, now)? {
                r.updated_at = now;
                writes.push(Write::Rollout(r));
            }
        }
        let devices = staged.into_writes(&mut writes);
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok(((), devices))
    }

    /// The latest status of `device`: in memory, else as stored.
    pub(super) fn status_of(
        &self,
        device: &DeviceId,
    ) -> Result<Option<Arc<StatusReport>>, FleetError> {
        if let Some(s) = self.live.status(device) {
            return Ok(Some(s));
        }
        Ok(self
            .store
            .device(device)?
            .and_then(|d| d.last_status)
            .map(Arc::new))
    }

    /// Moves a running rollout on: starts the first pending wave, closes
    /// waves whose devices all settled, completes the rollout after the last.
    /// Returns whether the record changed.
    pub(super) fn advance(
        &self,
        r: &mut RolloutRecord,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<bool, FleetError> {
        let mut changed = false;
        while r.state == RolloutState::Running {
            let Some(i) = r.waves.iter().position(|w| w.state != WaveState::Done) else {
                r.state = RolloutState::Completed;
                writes.push(event(
                    "rollout.completed",
                    format!("rollout/{}", r.id),
                    "every wave settled",
                    now,
                ));
                return Ok(true);
            };
            match r.waves[i].state {
                WaveState::Pending => {
                    self.activate_wave(r, i, staged, now)?;
                    writes.push(event(
                        "rollout.wave",
                        format!("rollout/{}", r.id),
                        format!(
                            "wave {} started ({} devices)",
                            i + 1,
                            r.waves[i].devices.len()
                        ),
                        now,
                    ));
                    return Ok(true);
                }
                WaveState::Active => {
                    let mut settled = true;
                    for d in &r.waves[i].devices {
                        let p = rollout::device_progress(r, i, d, self.status_of(d)?.as_deref());
                        settled &= p.state.settled();
                    }
                    if !settled {
                        return Ok(changed);
                    }
                    r.waves[i].state = WaveState::Done;
                    changed = true;
                }
                WaveState::Done => {}
            }
        }
        Ok(changed)
    }

    pub(super) fn activate_wave(
        &self,
        r: &mut RolloutRecord,
        wave: usize,
        staged: &mut Staged,
        now: u64,
    ) -> Result<(), FleetError> {
        for device in r.waves[wave].devices.clone() {
            let current = staged.current(self.store.as_ref(), &device)?;
            let mut apps = current.as_ref().map(|c| c.apps.clone()).unwrap_or_default();
            let before = apps.insert(r.app.clone(), r.release_digest.clone());
            r.previous.entry(device.clone()).or_insert(before);
            let next =
                self.director
                    .next(self.store.as_ref(), &device, current.as_ref(), apps, now)?;
            staged.desired.insert(device, next);
        }
        r.waves[wave].state = WaveState::Active;
        r.waves[wave].started_at = Some(now);
        Ok(())
    }

    pub(super) fn start_rollout(
        &self,
        req: CreateRollout,
        now: u64,
    ) -> Result<(RolloutView, Vec<DeviceId>), FleetError> {
        let mut writes = Vec::new();
        let release =
            match (&req.release, &req.release_digest) {
                (Some(envelope), digest) => {
                    let record = self.verify_release(&envelope.to_json(), now)?;
                    if let Some(d) = digest
                        && d != &record.digest
                    {
                        return Err(FleetError::Invalid {
                            message: format!(
                                "release_digest {d} does not match the given release ({})",
                                record.digest
                            ),
                        });
                    }
                    // Stored first: the director reads releases from the store.
                    if self.store.release(&record.digest)?.is_none() {
                        self.store.commit(vec![
                            event("release.added", &record.digest, "with a rollout", now),
                            Write::Release(record.clone()),
                        ])?;
                    }
                    record
                }
                (None, Some(digest)) => self.store.release(digest)?.ok_or_else(|| {
                    FleetError::NotFound {
                        what: "release",
                        key: format!(
                            "{digest} (post it first, or send the signed release with the rollout)"
                        ),
                    }
                })?,
                (None, None) => {
                    return Err(FleetError::Invalid {
                        message: "give release_digest or release".into(),
                    });
                }
            };
        // The release must still verify (the trust root may have changed).
        verify::verify_release_envelope(&self.trust, &release.envelope, now)
            .map_err(|source| FleetError::Untrusted { source })?;
        let group = self.store.group(&req.group)?.ok_or_else(|| {
            not_found(
                "group",
                format!("{} (create it with `fleetctl groups add`)", req.group),
            )
        })?;
        let devices: Vec<DeviceId> = self
            .store
            .devices()?
            .into_iter()
            .filter(|d| group.contains(d))
            .map(|d| d.id)
            .collect();
        if devices.is_empty() {
            return Err(FleetError::Conflict {
                message: format!(
                    "group {} has no devices; label devices (`fleetctl groups label`) or add members first",
                    req.group
                ),
            });
        }
        let member_set: BTreeSet<&DeviceId> = devices.iter().collect();

        // A newer rollout of the same app supersedes older unfinished ones
        // on the same devices.
        for mut old in self.store.rollouts()? {
            if !old.state.is_final()
                && old.app == release.release.app
                && old.devices().any(|d| member_set.contains(d))
            {
                old.state = RolloutState::Aborted;
                old.updated_at = now;
                writes.push(event(
                    "rollout.aborted",
                    format!("rollout/{}", old.id),
                    "superseded by a newer rollout of the same app",
                    now,
                ));
                writes.push(Write::Rollout(old));
            }
        }

        let id = self.store.next_rollout_id()?;
        let mut r = RolloutRecord {
            id,
            release_digest: release.digest.clone(),
            app: release.release.app.clone(),
            version: release.release.version.clone(),
            group: req.group.clone(),
            state: RolloutState::Running,
            waves: rollout::plan_waves(devices, &req.waves),
            previous: BTreeMap::new(),
            created_at: now,
            updated_at: now,
        };
        writes.push(event(
            "rollout.started",
            format!("rollout/{id}"),
            format!(
                "{} {} to group {} ({} devices, {} waves)",
                r.app,
                r.version,
                r.group,
                r.devices().count(),
                r.waves.len()
            ),
            now,
        ));
        let mut staged = Staged::default();
        self.advance(&mut r, &mut staged, &mut writes, now)?;
        writes.push(Write::Rollout(r.clone()));
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        tracing::info!(rollout = id, app = %r.app, group = %r.group, "rollout started");
        Ok((self.rollout_view(&r)?, devices))
    }

    pub(super) fn rollout_action(
        &self,
        id: RolloutId,
        action: Action,
        now: u64,
    ) -> Result<(RolloutView, Vec<DeviceId>), FleetError> {
        let mut r = self
            .store
            .rollout(id)?
            .ok_or_else(|| not_found("rollout", id))?;
        let next = rollout::apply(r.state, action).ok_or_else(|| FleetError::Conflict {
            message: format!("rollout {id} is {}; it cannot {}", r.state, action.as_str()),
        })?;
        r.state = next;
        r.updated_at = now;
        let mut writes = vec![event(
            &format!("rollout.{}", action.as_str()),
            format!("rollout/{id}"),
            format!("now {next}"),
            now,
        )];
        let mut staged = Staged::default();
        match action {
            Action::Resume => {
                self.advance(&mut r, &mut staged, &mut writes, now)?;
            }
            Action::Undo => {
                for (device, previous) in &r.previous {
                    let Some(current) = staged.current(self.store.as_ref(), device)? else {
                        continue;
                    };
                    // Only where this rollout's release is still what the
                    // device should run: a later rollout wins.
                    if current.apps.get(&r.app) != Some(&r.release_digest) {
                        continue;
                    }
                    let mut apps = current.apps.clone();
                    match previous {
                        Some(digest) => apps.insert(r.app.clone(), digest.clone()),
                        None => apps.remove(&r.app),
                    };
                    let next = self.director.next(
                        self.store.as_ref(),
                        device,
                        Some(&current),
                        apps,
                        now,
                    )?;
                    staged.desired.insert(device.clone(), next);
                }
            }
            Action::Pause | Action::Abort => {}
        }
        writes.push(Write::Rollout(r.clone()));
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        tracing::info!(rollout = id, action = action.as_str(), state = %r.state, "rollout action");
        Ok((self.rollout_view(&r)?, devices))
    }

    pub(super) fn rollout_view(&self, r: &RolloutRecord) -> Result<RolloutView, FleetError> {
        let mut progress = Vec::new();
        for (i, wave) in r.waves.iter().enumerate() {
            for d in &wave.devices {
                let mut p = rollout::device_progress(r, i, d, self.status_of(d)?.as_deref());
                // After undo, what the device does is no longer this release.
                if r.state == RolloutState::RolledBack && p.state == ProgressState::Sent {
                    p.state = ProgressState::Waiting;
                }
                progress.push(p);
            }
        }
        Ok(RolloutView::new(r, progress))
    }
}
