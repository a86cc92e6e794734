//! Applying a verified desired state: verify (or recognise the one already
//! accepted), accept its generation, run one lifecycle per app (in
//! parallel), remove apps it no longer lists, reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleet_protocol::lifecycle::{self, Event};
use fleet_protocol::{Digest, Phase, VerifiedDesiredState, verify_desired_state};
use tokio::task::JoinSet;

use super::preempt::preemptible;
use super::report::outcome_of;
use super::{AppOutcome, ApplyOutcome, ContentSource, DeployError, Inner, content, unix_now};
use crate::runtime::ContainerId;
use crate::state::{AppRecord, ReleaseRecord};

type AppTasks = JoinSet<Result<(AppOutcome, bool), DeployError>>;

impl Inner {
    pub(super) async fn apply(
        self: &Arc<Self>,
        bytes: &[u8],
        source: &ContentSource,
    ) -> Result<ApplyOutcome, DeployError> {
        let now = unix_now();
        let digest = Digest::of(bytes);
        let last = self.state.generation()?;
        // The desired state already accepted (a retained message seen again,
        // or `apply` run again after a crash) is not a replay: it resumes,
        // and whatever of it was not started yet is started.
        let again = self.state.desired_digest()?.as_ref() == Some(&digest);
        let checked_generation = if again { None } else { last };
        let verified = match verify_desired_state(
            &self.trust(),
            bytes,
            &self.device,
            checked_generation,
            now,
        ) {
            Ok(v) => v,
            Err(_) if again => {
                let outcomes = self.recover(source, &|_| false).await?;
                return Ok(ApplyOutcome {
                    generation: last.unwrap_or(0),
                    apps: outcomes,
                    removed: Vec::new(),
                });
            }
            Err(e) => {
                let info = e.to_error_info();
                tracing::warn!(code = %info.code, message = %info.message, "desired state rejected");
                self.state.set_rejected(&info)?;
                return Err(DeployError::Rejected(info));
            }
        };
        // Finish whatever an earlier run left in progress first, except the
        // targets this desired state replaces (an interrupted download or
        // probation): their lifecycles take the new target from where they
        // stopped.
        let superseded = |rec: &AppRecord| {
            preemptible(&rec.phase)
                && rec.target.as_ref().is_some_and(|t| {
                    verified
                        .releases()
                        .iter()
                        .any(|r| r.app == rec.app && r.payload_digest() != &t.release_digest)
                })
        };
        self.recover(source, &superseded).await?;
        let generation = verified.generation;
        self.state.accept(generation, &digest)?;
        tracing::info!(
            generation,
            apps = verified.releases().len(),
            "desired state accepted"
        );
        let (wanted, mut tasks) = self.start_lifecycles(&verified, source, now)?;
        let mut changed = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (outcome, did) = joined.map_err(DeployError::AppTask)??;
            changed.insert(outcome.app.clone(), did);
        }
        let removed = self.remove_unlisted(&wanted).await?;
        self.reconcile().await?;
        let mut apps = self.outcomes().await?;
        for a in &mut apps {
            a.changed = changed.get(&a.app).copied().unwrap_or(false);
        }
        Ok(ApplyOutcome {
            generation,
            apps,
            removed,
        })
    }

    /// One task per listed app: a lifecycle for each release not already
    /// current or tried; the others report their phase as it is.
    fn start_lifecycles(
        self: &Arc<Self>,
        verified: &VerifiedDesiredState,
        source: &ContentSource,
        now: u64,
    ) -> Result<(BTreeSet<fleet_protocol::AppName>, AppTasks), DeployError> {
        let mut wanted = BTreeSet::new();
        let mut tasks = JoinSet::new();
        for release in verified.releases() {
            let app = release.app.clone();
            wanted.insert(app.clone());
            let envelope = verified
                .apps
                .iter()
                .find(|a| a.app == app)
                .map(|a| a.release.clone())
                .ok_or_else(|| DeployError::MissingEnvelope { app: app.clone() })?;
            let record = ReleaseRecord {
                release: (**release).clone(),
                release_digest: release.payload_digest().clone(),
                envelope,
                container: ContainerId::for_release(&app, release.payload_digest()),
                image: content::image_reference(&release.repository, &release.manifest_digest)?,
                config: None,
                layers: Vec::new(),
            };
            let mut rec = self
                .state
                .app(&app)?
                .unwrap_or_else(|| AppRecord::new(app.clone()));
            let same =
                |r: &Option<ReleaseRecord>| r.as_ref().is_some_and(|r| r.same_release(&record));
            // Already running it with no other update in progress, or it is
            // the target in progress (or tried and failed): nothing to do.
            if same(&rec.target) || (same(&rec.current) && rec.phase.is_terminal()) {
                let phase: Phase = rec.phase.clone();
                tasks.spawn(async move { Ok((outcome_of(&app, phase), false)) });
                continue;
            }
            let me = self.clone();
            let source = source.clone();
            if matches!(rec.phase, Phase::Starting | Phase::Probation { .. }) {
                // The target in progress may run: roll it back first, then
                // take the new target from `RolledBack`.
                let t = self.step(&rec, &Event::DesiredReceived, now)?;
                self.transition(&mut rec, t.next)?;
                tasks.spawn(async move {
                    me.drive(&mut rec, t.effects, &source).await?;
                    if !matches!(rec.phase, Phase::RolledBack { .. }) {
                        return Ok((outcome_of(&rec.app, rec.phase.clone()), true));
                    }
                    me.begin_target(&mut rec, record, unix_now(), &source)
                        .await?;
                    Ok((outcome_of(&rec.app, rec.phase.clone()), true))
                });
                continue;
            }
            tasks.spawn(async move {
                me.begin_target(&mut rec, record, now, &source).await?;
                Ok((outcome_of(&rec.app, rec.phase.clone()), true))
            });
        }
        Ok((wanted, tasks))
    }

    /// Makes `record` the app's target (`DesiredReceived` from a terminal
    /// phase, or switching a target not started yet) and drives it.
    async fn begin_target(
        self: &Arc<Self>,
        rec: &mut AppRecord,
        record: ReleaseRecord,
        now: u64,
        source: &ContentSource,
    ) -> Result<(), DeployError> {
        let t = self.step(rec, &Event::DesiredReceived, now)?;
        rec.target = Some(record);
        rec.last_error = None;
        rec.restarts = 0;
        self.transition(rec, t.next)?;
        self.drive(rec, t.effects, source).await
    }

    /// The lifecycle's next phase for `event`, or why it refuses it.
    pub(super) fn step(
        &self,
        rec: &AppRecord,
        event: &Event,
        now: u64,
    ) -> Result<lifecycle::Transition, DeployError> {
        lifecycle::step(&rec.phase, event, now).map_err(|source| DeployError::Lifecycle {
            app: rec.app.clone(),
            phase: rec.phase.clone(),
            source,
        })
    }
}
