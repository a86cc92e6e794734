//! Channels: a release published to a channel starts a rollout, on its own,
//! to every group that follows the channel for the release's app; a device
//! that joins such a group is given the group's current release.
//!
//! Rules (all decided here, under the engine's write lock, and persisted in
//! the group's [`Follow`] and the rollouts):
//! - one unfinished rollout per (group, app) started by a channel: a newer
//!   release either waits ([`Supersede::Queue`], only the newest waiting one
//!   is kept) or aborts the running one ([`Supersede::Replace`]);
//! - when a rollout of a following group becomes final, a completed one makes
//!   its release the group's `current`; an undone one clears it if it was
//!   current; then the queued release, if any, starts;
//! - a device given nothing yet by the newest rollout of (group, app), and in
//!   no unfinished rollout of the app, is given `current` (catch-up): devices
//!   that enroll, are added, or are relabelled into the group.

use std::collections::BTreeMap;

use fleet_protocol::{AppName, DeviceId, GroupName};
use serde::{Deserialize, Serialize};

use super::engine::{Inner, Staged, event};
use super::groups::GroupView;
use super::{Fleet, FleetError, not_found};
use crate::store::{
    Channel, EventKind, Follow, ReleaseRecord, RolloutId, RolloutRecord, RolloutState, Safety,
    Supersede, Write,
};

/// `POST /api/v1/groups/{name}/follow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowChannel {
    pub app: AppName,
    pub channel: Channel,
    /// Wave sizes of each rollout (counts or percentages); empty: one wave.
    #[serde(default)]
    pub waves: Vec<crate::store::WaveSize>,
    #[serde(default)]
    pub supersede: Supersede,
    #[serde(default)]
    pub safety: Safety,
}

/// What publishing a release to a channel did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishView {
    pub release: super::ReleaseView,
    pub channel: Channel,
    /// Rollouts started by it.
    pub rollouts: Vec<RolloutId>,
    /// Groups where it waits for a running rollout (queue policy).
    pub queued: Vec<GroupName>,
}

/// How one following group took a release.
enum Offer {
    Started(RolloutId),
    Queued,
    /// Already current or already rolling out, or the group is empty (the
    /// release became current: devices joining later get it).
    Nothing,
}

impl Fleet {
    /// Verifies and keeps `envelope_json`, adds it to `channel`, and starts a
    /// rollout to every group following the channel for its app.
    pub async fn publish_release(
        &self,
        channel: Channel,
        envelope_json: Vec<u8>,
    ) -> Result<PublishView, FleetError> {
        self.change(move |i, now| i.publish_release(channel, &envelope_json, now))
            .await
    }

    /// Makes `group` follow a channel for an app; the channel's newest release
    /// of the app (if any, and not current yet) starts rolling out.
    pub async fn follow(
        &self,
        group: GroupName,
        req: FollowChannel,
    ) -> Result<GroupView, FleetError> {
        self.change(move |i, now| i.follow(group, req, now)).await
    }
}

impl Inner {
    fn publish_release(
        &self,
        channel: Channel,
        envelope_json: &[u8],
        now: u64,
    ) -> Result<(PublishView, Vec<DeviceId>), FleetError> {
        let verified = self.verify_release(envelope_json, now)?;
        let mut record = self.store.release(&verified.digest)?.unwrap_or(verified);
        record.channels.insert(channel.clone());
        let msg = format!(
            "{} {} published to channel {channel}",
            record.release.app, record.release.version
        );
        // Kept first: the director reads releases from the store.
        self.store.commit(vec![
            Write::Release(record.clone()),
            event(EventKind::ReleasePublished, &record.digest, msg, now),
        ])?;
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let mut view = PublishView {
            release: super::ReleaseView::from(&record),
            channel: channel.clone(),
            rollouts: vec![],
            queued: vec![],
        };
        for group in self.store.groups()? {
            let follows = group
                .follows
                .get(&record.release.app)
                .is_some_and(|f| f.channel == channel);
            if !follows {
                continue;
            }
            let name = group.name.clone();
            match self.offer(&name, &record, &mut staged, &mut writes, now)? {
                Offer::Started(id) => view.rollouts.push(id),
                Offer::Queued => view.queued.push(name),
                Offer::Nothing => {}
            }
        }
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        Ok((view, devices))
    }

    fn follow(
        &self,
        name: GroupName,
        req: FollowChannel,
        now: u64,
    ) -> Result<(GroupView, Vec<DeviceId>), FleetError> {
        self.check_safety(&req.safety, &req.waves)?;
        let mut group = self
            .store
            .group(&name)?
            .ok_or_else(|| not_found("group", &name))?;
        let current = group.follows.get(&req.app).and_then(|f| f.current.clone());
        group.follows.insert(
            req.app.clone(),
            Follow {
                channel: req.channel.clone(),
                waves: req.waves.clone(),
                supersede: req.supersede,
                safety: req.safety,
                queued: None,
                current,
            },
        );
        let mut staged = Staged::default();
        let mut writes = vec![event(
            EventKind::GroupFollow,
            &name,
            format!(
                "follows channel {} for {} (waves {}, supersede {:?})",
                req.channel,
                req.app,
                crate::store::wave_sizes(&req.waves),
                req.supersede
            ),
            now,
        )];
        staged.groups.insert(name.clone(), group);
        let newest = self
            .store
            .releases()?
            .into_iter()
            .filter(|r| r.release.app == req.app && r.channels.contains(&req.channel))
            .max_by_key(|r| r.added_at);
        if let Some(release) = newest {
            self.offer(&name, &release, &mut staged, &mut writes, now)?;
        }
        self.settle_follows(&mut staged, &mut writes, now)?;
        let group = staged
            .group(self.store.as_ref(), &name)?
            .ok_or_else(|| not_found("group", &name))?;
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        let members = self
            .store
            .devices()?
            .into_iter()
            .filter(|d| group.contains(d))
            .map(|d| d.id)
            .collect();
        Ok((
            GroupView {
                group,
                devices: members,
            },
            devices,
        ))
    }

    /// Offers `release` to the following group `name` by its policy.
    fn offer(
        &self,
        name: &GroupName,
        release: &ReleaseRecord,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<Offer, FleetError> {
        let Some(mut group) = staged.group(self.store.as_ref(), name)? else {
            return Ok(Offer::Nothing);
        };
        let app = &release.release.app;
        let Some(follow) = group.follows.get_mut(app) else {
            return Ok(Offer::Nothing);
        };
        if follow.current.as_ref() == Some(&release.digest) {
            return Ok(Offer::Nothing);
        }
        let running = unfinished(&staged.rollouts(self.store.as_ref())?, name, app);
        if let Some(r) = &running {
            if r.release_digest == release.digest {
                return Ok(Offer::Nothing);
            }
            if follow.supersede == Supersede::Queue {
                follow.queued = Some(release.digest.clone());
                writes.push(event(
                    EventKind::GroupFollow,
                    name,
                    format!(
                        "{app} {} queued behind rollout {}",
                        release.release.version, r.id
                    ),
                    now,
                ));
                staged.groups.insert(name.clone(), group);
                return Ok(Offer::Queued);
            }
        }
        follow.queued = None;
        let (waves, safety) = (follow.waves.clone(), follow.safety.clone());
        match self.begin_rollout(
            release,
            &group,
            super::rollouts::Policy {
                waves: &waves,
                safety,
            },
            staged,
            writes,
            now,
        ) {
            Ok(r) => {
                staged.groups.insert(name.clone(), group);
                Ok(Offer::Started(r.id))
            }
            Err(FleetError::GroupWithoutDevices { .. }) => {
                if let Some(f) = group.follows.get_mut(app) {
                    f.current = Some(release.digest.clone());
                }
                staged.groups.insert(name.clone(), group);
                Ok(Offer::Nothing)
            }
            Err(FleetError::NoCompatibleDevices { .. }) => {
                tracing::info!(group = %name, "no compatible device; nothing rolled out");
                Ok(Offer::Nothing)
            }
            Err(e) => Err(e),
        }
    }

    /// Looks at the rollouts that became final in this step: a following
    /// group's `current` moves, and its queued release starts.
    pub(super) fn settle_follows(
        &self,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<(), FleetError> {
        while let Some(id) = staged.finished.pop() {
            let Some(r) = staged.rollouts.get(&id).cloned() else {
                continue;
            };
            let Some(mut group) = staged.group(self.store.as_ref(), &r.group)? else {
                continue;
            };
            let Some(follow) = group.follows.get_mut(&r.app) else {
                continue;
            };
            match r.state {
                RolloutState::Completed => follow.current = Some(r.release_digest.clone()),
                RolloutState::RolledBack if follow.current.as_ref() == Some(&r.release_digest) => {
                    follow.current = None;
                }
                _ => {}
            }
            let queued = follow.queued.take();
            staged.groups.insert(r.group.clone(), group);
            let Some(digest) = queued else { continue };
            match self.store.release(&digest)? {
                Some(release) => {
                    self.offer(&r.group, &release, staged, writes, now)?;
                }
                None => tracing::warn!(%digest, "queued release not kept; dropped"),
            }
        }
        Ok(())
    }

    /// Gives each of `devices` its following groups' current releases where
    /// it has not got them (see the module doc), and commits.
    pub(super) fn catch_up_commit(
        &self,
        devices: &[DeviceId],
        now: u64,
    ) -> Result<Vec<DeviceId>, FleetError> {
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        for device in devices {
            self.catch_up(device, &mut staged, &mut writes, now)?;
        }
        let changed = staged.into_writes(&mut writes);
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok(changed)
    }

    fn catch_up(
        &self,
        id: &DeviceId,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<(), FleetError> {
        let Some(mut device) = self.store.device(id)? else {
            return Ok(());
        };
        if let Some(l) = self.live.get(id) {
            l.overlay(&mut device);
        }
        let rollouts = staged.rollouts(self.store.as_ref())?;
        for group in staged.groups(self.store.as_ref())? {
            if !group.contains(&device) {
                continue;
            }
            for (app, follow) in &group.follows {
                let Some(digest) = &follow.current else {
                    continue;
                };
                if reached_by_rollouts(&rollouts, &group.name, app, id) {
                    continue;
                }
                let compatible = self
                    .store
                    .release(digest)?
                    .is_some_and(|r| device.unmet(&r.release.runtime).is_empty());
                if !compatible {
                    continue;
                }
                let current = staged.current(self.store.as_ref(), id)?;
                let mut apps = current.as_ref().map(|c| c.apps.clone()).unwrap_or_default();
                if apps.get(app) == Some(digest) {
                    continue;
                }
                apps.insert(app.clone(), digest.clone());
                let next =
                    self.director
                        .next(self.store.as_ref(), id, current.as_ref(), apps, now)?;
                staged.desired.insert(id.clone(), next);
                writes.push(event(
                    EventKind::GroupCatchUp,
                    id,
                    format!("joined group {}: given {app} {digest}", group.name),
                    now,
                ));
            }
        }
        Ok(())
    }
}

/// The unfinished rollout of `app` to `group`, if any.
fn unfinished(
    rollouts: &[RolloutRecord],
    group: &GroupName,
    app: &AppName,
) -> Option<RolloutRecord> {
    rollouts
        .iter()
        .find(|r| !r.state.is_final() && &r.group == group && &r.app == app)
        .cloned()
}

/// Whether rollouts decide what `device` runs of `app`: it is in the newest
/// rollout of `app` to `group`, or in any unfinished rollout of `app`.
fn reached_by_rollouts(
    rollouts: &[RolloutRecord],
    group: &GroupName,
    app: &AppName,
    device: &DeviceId,
) -> bool {
    let newest = rollouts
        .iter()
        .filter(|r| &r.group == group && &r.app == app)
        .max_by_key(|r| r.id);
    let in_newest = newest.is_some_and(|r| r.devices().any(|d| d == device));
    in_newest
        || rollouts
            .iter()
            .any(|r| !r.state.is_final() && &r.app == app && r.devices().any(|d| d == device))
}

/// What a rollout would do, computed before anything is kept or sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanView {
    pub app: AppName,
    pub version: String,
    pub release_digest: fleet_protocol::Digest,
    pub group: GroupName,
    /// The devices of each wave, in order.
    pub waves: Vec<Vec<DeviceId>>,
    /// Group devices left out, and why.
    pub excluded: Vec<crate::store::Excluded>,
    /// Devices of the waves that are offline now: they get the release when
    /// they return.
    pub offline: Vec<DeviceId>,
    /// Per device, the bytes it will fetch given the release it runs now
    /// (deltas counted where already computed); absent when the images are
    /// not in this server's content store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fetch: BTreeMap<DeviceId, super::ports::FetchEstimate>,
}

impl Fleet {
    /// The waves, exclusions and offline devices a rollout request would
    /// have; nothing is kept, signed or sent.
    pub async fn plan_rollout(&self, req: super::CreateRollout) -> Result<PlanView, FleetError> {
        self.blocking(move |i| i.plan_rollout(&req, super::now()))
            .await
    }
}

impl Inner {
    fn plan_rollout(&self, req: &super::CreateRollout, now: u64) -> Result<PlanView, FleetError> {
        let release = match (&req.release, &req.release_digest) {
            (Some(envelope), _) => self.verify_release(&envelope.to_json(), now)?,
            (None, Some(digest)) => self
                .store
                .release(digest)?
                .ok_or_else(|| not_found("release", digest))?,
            (None, None) => return Err(FleetError::ReleaseMissing),
        };
        let group = self
            .store
            .group(&req.group)?
            .ok_or_else(|| not_found("group", &req.group))?;
        let mut members = self.store.devices()?;
        members.retain(|d| group.contains(d));
        for d in &mut members {
            if let Some(l) = self.live.get(&d.id) {
                l.overlay(d);
            }
        }
        let offline_set: std::collections::BTreeSet<DeviceId> = members
            .iter()
            .filter(|d| !d.online)
            .map(|d| d.id.clone())
            .collect();
        let (devices, excluded) = super::rollouts::compatible(&release.release.runtime, members);
        let waves = super::rollout::plan_waves(devices, &req.waves);
        let offline = waves
            .iter()
            .flat_map(|w| w.devices.iter())
            .filter(|d| offline_set.contains(*d))
            .cloned()
            .collect();
        let fetch = self.plan_fetch(&waves, &release);
        Ok(PlanView {
            app: release.release.app.clone(),
            version: release.release.version.clone(),
            release_digest: release.digest,
            group: group.name,
            waves: waves.into_iter().map(|w| w.devices).collect(),
            excluded,
            offline,
            fetch,
        })
    }

    /// What each planned device will fetch, from the release it reports
    /// running for the app (else the one it was last given).
    fn plan_fetch(
        &self,
        waves: &[crate::store::Wave],
        release: &ReleaseRecord,
    ) -> BTreeMap<DeviceId, super::ports::FetchEstimate> {
        let app = &release.release.app;
        let to = &release.release.manifest_digest;
        let mut by_image = BTreeMap::new();
        let mut out = BTreeMap::new();
        for device in waves.iter().flat_map(|w| w.devices.iter()) {
            let running = self.live.status(device).and_then(|s| {
                s.apps
                    .iter()
                    .find(|a| &a.app == app)
                    .and_then(|a| a.running.as_ref().map(|r| r.release_digest.clone()))
            });
            let given = || {
                self.store
                    .desired(device)
                    .ok()
                    .flatten()
                    .and_then(|d| d.apps.get(app).cloned())
            };
            let from = running
                .or_else(given)
                .and_then(|r| self.store.release(&r).ok().flatten())
                .map(|r| r.release.manifest_digest);
            let estimate = by_image
                .entry(from.clone())
                .or_insert_with(|| self.preparer.estimate(from.as_ref(), to));
            if let Some(e) = estimate {
                out.insert(device.clone(), *e);
            }
        }
        out
    }
}
