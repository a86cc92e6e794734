//! Rollouts in the engine: starting one (registering the signed release it
//! carries), feeding it device progress and operator actions through the
//! pure [`rollout::step`], and running the effects the step asks for. The
//! stepped rollout, the desired states its effects signed and its events go
//! into one commit before anything is published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleet_protocol::dsse::Envelope;
use fleet_protocol::message::RuntimeSettings;
use fleet_protocol::{AppName, DeviceId, Digest, GroupName, StatusReport, verify};
use serde::{Deserialize, Serialize};

use super::engine::{Inner, Staged, event};
use super::ports::ImageUpdate;
use super::rollout::{
    self, Action, Counts, DeviceProgress, Effect, Event, Observed, ProgressState, Sample,
};
use super::{Fleet, FleetError, not_found};
use crate::store::{
    DeviceRecord, EventKind, Excluded, GroupRecord, ReleaseRecord, RolloutId, RolloutRecord,
    RolloutState, Safety, WaveState, Write,
};

/// Start a rollout of a release already posted (`release_digest`) or of the
/// signed release given here (`release`, registered on the way: one request),
/// to a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRollout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Envelope>,
    pub group: GroupName,
    /// Sizes of the first waves (counts, or percentages of the rollout's
    /// devices); the last wave takes the remaining devices. Empty: one wave.
    #[serde(default)]
    pub waves: Vec<crate::store::WaveSize>,
    /// Failure thresholds that halt the rollout, and what a halt rolls back.
    #[serde(default)]
    pub safety: Safety,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaveView {
    pub state: WaveState,
    pub devices: usize,
    pub started_at: Option<u64>,
    /// When the wave settled; with a bake time the next wave waits until
    /// `settled_at + safety.bake_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
    /// Devices not given the release yet (`max_unavailable`).
    #[serde(default)]
    pub held: usize,
    /// The PromQL gate's measurements while the wave baked.
    #[serde(default, skip_serializing_if = "crate::store::PromTally::is_empty")]
    pub prom: crate::store::PromTally,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: RolloutId,
    pub release_digest: Digest,
    pub app: AppName,
    pub version: String,
    pub group: GroupName,
    pub state: RolloutState,
    pub waves: Vec<WaveView>,
    pub created_at: u64,
    pub updated_at: u64,
    pub counts: Counts,
    pub devices: Vec<DeviceProgress>,
    /// Group devices left out of the waves (incompatible), and why.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
    #[serde(default)]
    pub safety: Safety,
    /// Why it halted (the threshold crossed, or the gate failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_reason: Option<String>,
    /// The gate that halted it: name, wave, measured value, threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_failure: Option<crate::store::GateFailure>,
    /// Why it paused by itself (its gates could not decide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
}

impl RolloutView {
    pub fn new(r: &RolloutRecord, devices: Vec<DeviceProgress>) -> Self {
        Self {
            id: r.id,
            release_digest: r.release_digest.clone(),
            app: r.app.clone(),
            version: r.version.clone(),
            group: r.group.clone(),
            state: r.state,
            waves: r
                .waves
                .iter()
                .map(|w| WaveView {
                    state: w.state,
                    devices: w.devices.len(),
                    started_at: w.started_at,
                    settled_at: w.settled_at,
                    held: w.held.len(),
                    prom: w.prom.clone(),
                })
                .collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            counts: Counts::of(&devices),
            devices,
            excluded: r.excluded.clone(),
            safety: r.safety.clone(),
            halt_reason: r.halt_reason.clone(),
            gate_failure: r.gate_failure.clone(),
            pause_reason: r.pause_reason.clone(),
        }
    }
}

/// How a new rollout goes: its wave sizes and failure thresholds.
#[derive(Debug, Clone)]
pub(super) struct Policy<'a> {
    pub(super) waves: &'a [crate::store::WaveSize],
    pub(super) safety: Safety,
}

/// Splits group members into those that meet `requires` and those left out
/// (with the unmet requirements as the reason).
pub(super) fn compatible(
    settings: &RuntimeSettings,
    members: Vec<DeviceRecord>,
) -> (Vec<DeviceId>, Vec<Excluded>) {
    let mut devices = Vec::new();
    let mut excluded = Vec::new();
    for d in members {
        let unmet = d.unmet(settings);
        if unmet.is_empty() {
            devices.push(d.id);
        } else {
            let why: Vec<String> = unmet.iter().map(ToString::to_string).collect();
            excluded.push(Excluded {
                device: d.id,
                reason: format!("incompatible: {}", why.join("; ")),
            });
        }
    }
    (devices, excluded)
}

impl Fleet {
    pub async fn start_rollout(&self, req: CreateRollout) -> Result<RolloutView, FleetError> {
        self.change(move |i, now| i.start_rollout(req, now)).await
    }

    pub async fn rollout_action(
        &self,
        id: RolloutId,
        action: Action,
    ) -> Result<RolloutView, FleetError> {
        self.change(move |i, now| i.rollout_action(id, action, now))
            .await
    }

    /// Steps every running rollout with a wave deadline by its latest
    /// reports, so that a deadline passes without any report (called by the
    /// server's periodic sweep). Returns how many rollouts changed.
    pub async fn tick(&self) -> Result<usize, FleetError> {
        self.change(|i, now| i.tick(now)).await
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, FleetError> {
        self.blocking(|i| {
            i.store
                .rollouts()?
                .iter()
                .map(|r| i.rollout_view(r))
                .collect()
        })
        .await
    }

    pub async fn rollout(&self, id: RolloutId) -> Result<RolloutView, FleetError> {
        self.blocking(move |i| {
            let r = i
                .store
                .rollout(id)?
                .ok_or_else(|| not_found("rollout", id))?;
            i.rollout_view(&r)
        })
        .await
    }
}

impl Inner {
    /// `devices` reported something new: every running rollout one of them
    /// is part of takes the progress (once). Returns the devices whose
    /// desired state changed.
    pub(super) fn on_progress(
        &self,
        devices: &[DeviceId],
        now: u64,
    ) -> Result<Vec<DeviceId>, FleetError> {
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let reporting: std::collections::HashSet<&DeviceId> = devices.iter().collect();
        for r in self.store.rollouts()? {
            // A halted rollout still hears its devices: one failing after
            // the halt is rolled back like those before it.
            let listening = matches!(r.state, RolloutState::Running | RolloutState::Halted);
            if !listening || !r.devices().any(|d| reporting.contains(d)) {
                continue;
            }
            let reports = self.reports(&r)?;
            self.step(r, Event::Progress(reports), &mut staged, &mut writes, now)?;
        }
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok(devices)
    }

    fn tick(&self, now: u64) -> Result<(usize, Vec<DeviceId>), FleetError> {
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let mut changed = 0;
        for r in self.store.rollouts()? {
            let timed = r.safety.wave_deadline_secs.is_some() || r.safety.bake_secs.is_some();
            if r.state != RolloutState::Running || !timed {
                continue;
            }
            let reports = self.reports(&r)?;
            let before = r.clone();
            let next = self.step(r, Event::Progress(reports), &mut staged, &mut writes, now)?;
            if next != before {
                changed += 1;
            }
        }
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        if !writes.is_empty() {
            self.store.commit(writes)?;
        }
        Ok((changed, devices))
    }

    /// Steps `r` by `event` and runs the effects into `staged` and `writes`
    /// (the stepped rollout is written when it changed). Nothing is
    /// committed here: the caller commits it all at once.
    pub(super) fn step(
        &self,
        r: RolloutRecord,
        happened: Event,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<RolloutRecord, FleetError> {
        let before = r.clone();
        let (mut next, effects) = rollout::step(r, happened, now)?;
        for effect in effects {
            match effect {
                Effect::Deploy { wave: _, devices } => {
                    self.deploy(&mut next, devices, staged, now)?;
                }
                Effect::Revert { previous } => self.revert(&next, &previous, staged, now)?,
                Effect::Record { kind, message } => {
                    writes.push(event(kind, format!("rollout/{}", next.id), message, now));
                }
            }
        }
        if next != before {
            writes.push(Write::Rollout(next.clone()));
        }
        if let (None, Some(g)) = (&before.gate_failure, &next.gate_failure) {
            self.gates.failed(g.gate);
        }
        if before.pause_reason.is_none() && next.pause_reason.is_some() {
            self.gates.undecided();
        }
        if !before.state.is_final() && next.state.is_final() {
            staged.finished.push(next.id);
        }
        staged.rollouts.insert(next.id, next.clone());
        Ok(next)
    }

    /// Gives `devices` the rollout's release, keeping what each ran before.
    fn deploy(
        &self,
        r: &mut RolloutRecord,
        devices: Vec<DeviceId>,
        staged: &mut Staged,
        now: u64,
    ) -> Result<(), FleetError> {
        let to = self.manifest_of(&r.release_digest);
        for device in devices {
            let current = staged.current(self.store.as_ref(), &device)?;
            let mut apps = current.as_ref().map(|c| c.apps.clone()).unwrap_or_default();
            let before = apps.insert(r.app.clone(), r.release_digest.clone());
            if let Some(to) = &to {
                self.note_update(&device, &r.app, before.as_ref(), to);
            }
            r.previous.entry(device.clone()).or_insert(before);
            let next =
                self.director
                    .next(self.store.as_ref(), &device, current.as_ref(), apps, now)?;
            staged.desired.insert(device, next);
        }
        Ok(())
    }

    /// The manifest digest of a kept release (best effort: `None` when it
    /// cannot be read).
    fn manifest_of(&self, release: &Digest) -> Option<Digest> {
        match self.store.release(release) {
            Ok(r) => r.map(|r| r.release.manifest_digest),
            Err(e) => {
                tracing::debug!(%release, error = %e, "cannot read release to prepare its content");
                None
            }
        }
    }

    /// Notes that `device` moves `app` to the image `to`, from the release
    /// it reports running (else the one it was last given), so that the
    /// content it will fetch is prepared once this change commits.
    fn note_update(&self, device: &DeviceId, app: &AppName, given: Option<&Digest>, to: &Digest) {
        let status = self.live.status(device);
        let running = status.as_ref().and_then(|s| {
            s.apps
                .iter()
                .find(|a| &a.app == app)
                .and_then(|a| a.running.as_ref())
                .map(|r| r.release_digest.clone())
        });
        let Some(from) = running.or_else(|| given.cloned()) else {
            return;
        };
        let Some(from) = self.manifest_of(&from) else {
            return;
        };
        if &from != to {
            self.updates_due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ImageUpdate {
                    from,
                    to: to.clone(),
                });
        }
    }

    /// Gives each device its previous release of the app back, where this
    /// rollout's release is still what it should run (a later rollout wins).
    fn revert(
        &self,
        r: &RolloutRecord,
        previous: &BTreeMap<DeviceId, Option<Digest>>,
        staged: &mut Staged,
        now: u64,
    ) -> Result<(), FleetError> {
        for (device, previous) in previous {
            let Some(current) = staged.current(self.store.as_ref(), device)? else {
                continue;
            };
            if current.apps.get(&r.app) != Some(&r.release_digest) {
                continue;
            }
            let mut apps = current.apps.clone();
            match previous {
                Some(digest) => apps.insert(r.app.clone(), digest.clone()),
                None => apps.remove(&r.app),
            };
            let next =
                self.director
                    .next(self.store.as_ref(), device, Some(&current), apps, now)?;
            staged.desired.insert(device.clone(), next);
        }
        Ok(())
    }

    /// The latest status of `device`: in memory, else as stored.
    fn status_of(&self, device: &DeviceId) -> Result<Option<Arc<StatusReport>>, FleetError> {
        if let Some(s) = self.live.status(device) {
            return Ok(Some(s));
        }
        Ok(self
            .store
            .device(device)?
            .and_then(|d| d.last_status)
            .map(Arc::new))
    }

    /// The latest status and telemetry of every device of `r` that sent
    /// some.
    pub(super) fn reports(&self, r: &RolloutRecord) -> Result<Observed, FleetError> {
        let mut seen = Observed::default();
        for d in r.devices() {
            if let Some(s) = self.status_of(d)? {
                seen.status.insert(d.clone(), s);
            }
            if let Some(live) = self.live.get(d)
                && let Some(telemetry) = live.telemetry
            {
                let received_at = live.telemetry_received_at;
                seen.telemetry.insert(
                    d.clone(),
                    Sample {
                        received_at,
                        telemetry,
                    },
                );
            }
        }
        Ok(seen)
    }

    /// The release a rollout request names: the one it carries (verified and
    /// kept, idempotently) or a kept one by digest.
    fn rollout_release(&self, req: &CreateRollout, now: u64) -> Result<ReleaseRecord, FleetError> {
        match (&req.release, &req.release_digest) {
            (Some(envelope), digest) => {
                let record = self.verify_release(&envelope.to_json(), now)?;
                if let Some(d) = digest
                    && d != &record.digest
                {
                    return Err(FleetError::ReleaseDigestMismatch {
                        given: d.clone(),
                        release: record.digest,
                    });
                }
                // Kept first: the director reads releases from the store.
                self.keep_release(record.clone(), "with a rollout".into(), now)?;
                Ok(record)
            }
            (None, Some(digest)) => self.store.release(digest)?.ok_or_else(|| {
                not_found(
                    "release",
                    format!(
                        "{digest} (post it first, or send the signed release with the rollout)"
                    ),
                )
            }),
            (None, None) => Err(FleetError::ReleaseMissing),
        }
    }

    fn start_rollout(
        &self,
        req: CreateRollout,
        now: u64,
    ) -> Result<(RolloutView, Vec<DeviceId>), FleetError> {
        self.check_safety(&req.safety, &req.waves)?;
        let release = self.rollout_release(&req, now)?;
        let group = self.store.group(&req.group)?.ok_or_else(|| {
            not_found(
                "group",
                format!("{} (create it with `fleetctl groups add`)", req.group),
            )
        })?;
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let r = self.begin_rollout(
            &release,
            &group,
            Policy {
                waves: &req.waves,
                safety: req.safety,
            },
            &mut staged,
            &mut writes,
            now,
        )?;
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        tracing::info!(rollout = r.id, app = %r.app, group = %r.group, "rollout started");
        Ok((self.rollout_view(&r)?, devices))
    }

    /// Creates a rollout of `release` to `group` in waves of `waves` and
    /// takes its first step (superseding older unfinished rollouts of the
    /// app on the same devices), into `staged` and `writes`: nothing is
    /// committed here.
    pub(super) fn begin_rollout(
        &self,
        release: &ReleaseRecord,
        group: &GroupRecord,
        policy: Policy<'_>,
        staged: &mut Staged,
        writes: &mut Vec<Write>,
        now: u64,
    ) -> Result<RolloutRecord, FleetError> {
        // The release must still verify (the trust root may have changed).
        verify::verify_release_envelope(&self.trust, &release.envelope, now)
            .map_err(|source| FleetError::Untrusted { source })?;
        let members: Vec<DeviceRecord> = self
            .store
            .devices()?
            .into_iter()
            .filter(|d| group.contains(d))
            .collect();
        if members.is_empty() {
            return Err(FleetError::GroupWithoutDevices {
                group: group.name.clone(),
            });
        }
        let (devices, excluded) = compatible(&release.release.runtime, members);
        if devices.is_empty() {
            return Err(FleetError::NoCompatibleDevices {
                group: group.name.clone(),
                excluded: excluded.len(),
            });
        }
        let member_set: BTreeSet<&DeviceId> = devices.iter().collect();
        let id = self.store.next_rollout_id()?;

        // A newer rollout of the same app supersedes older unfinished ones
        // on the same devices.
        for old in staged.rollouts(self.store.as_ref())? {
            if !old.state.is_final()
                && old.app == release.release.app
                && old.devices().any(|d| member_set.contains(d))
            {
                let by = Event::Superseded { by: id };
                self.step(old, by, staged, writes, now)?;
            }
        }

        let r = RolloutRecord {
            id,
            release_digest: release.digest.clone(),
            app: release.release.app.clone(),
            version: release.release.version.clone(),
            group: group.name.clone(),
            state: RolloutState::Running,
            waves: rollout::plan_waves(devices, policy.waves),
            previous: BTreeMap::new(),
            reverted: Default::default(),
            safety: policy.safety,
            excluded,
            halt_reason: None,
            gate_failure: None,
            pause_reason: None,
            created_at: now,
            updated_at: now,
        };
        writes.push(event(
            EventKind::RolloutStarted,
            format!("rollout/{id}"),
            format!(
                "{} {} to group {} ({} devices, {} waves, {} excluded)",
                r.app,
                r.version,
                r.group,
                r.devices().count(),
                r.waves.len(),
                r.excluded.len()
            ),
            now,
        ));
        let created = r.clone();
        let r = self.step(r, Event::Start, staged, writes, now)?;
        if r == created {
            // Written whether or not the first step changed it.
            writes.push(Write::Rollout(created));
        }
        Ok(r)
    }

    fn rollout_action(
        &self,
        id: RolloutId,
        action: Action,
        now: u64,
    ) -> Result<(RolloutView, Vec<DeviceId>), FleetError> {
        let r = self
            .store
            .rollout(id)?
            .ok_or_else(|| not_found("rollout", id))?;
        let reports = self.reports(&r)?;
        let event = Event::operator(action, reports);
        let mut staged = Staged::default();
        let mut writes = Vec::new();
        let r = self.step(r, event, &mut staged, &mut writes, now)?;
        self.settle_follows(&mut staged, &mut writes, now)?;
        let devices = staged.into_writes(&mut writes);
        self.store.commit(writes)?;
        tracing::info!(rollout = id, %action, state = %r.state, "rollout action");
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
