//! The records the control plane keeps. They are plain serde types so that
//! any backend (sled today, SQL later) stores them as it likes.

use std::collections::{BTreeMap, BTreeSet};

use fleet_protocol::dsse::Envelope;
use fleet_protocol::{AppName, DeviceId, Digest, GroupName, Release, StatusReport, Telemetry};
use serde::{Deserialize, Serialize};

use super::policy::{Safety, WaveSize};
use super::promql::PromTally;

pub type Labels = BTreeMap<String, String>;

/// A device, as it registered itself (first `StatusReport` with `info`) and
/// as the operator labelled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    /// Labels the device reports about itself.
    #[serde(default)]
    pub reported_labels: Labels,
    /// Labels set by the operator (`fleetctl groups label`); they win over
    /// reported labels of the same key.
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub l4t_version: Option<String>,
    /// Tegra SoC, e.g. `t234` (as reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc: Option<String>,
    /// Host CUDA version (as reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    /// The CDI devices the device reported (`None`: it never said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdi_devices: Option<Vec<String>>,
    #[serde(default)]
    pub agent_version: String,
    pub first_seen: u64,
    pub last_seen: u64,
    #[serde(default)]
    pub online: bool,
    #[serde(default)]
    pub last_status: Option<StatusReport>,
}

impl DeviceRecord {
    /// What the device lacks of what a release needs: its `requires`, and
    /// the CDI devices it asks for when the device reported its own (empty:
    /// compatible, or not known to be otherwise).
    pub fn unmet(
        &self,
        settings: &fleet_protocol::message::RuntimeSettings,
    ) -> Vec<fleet_protocol::requires::Unmet> {
        let mut unmet = settings.requires.unmet(&self.facts());
        if let Some(reported) = &self.cdi_devices {
            unmet.extend(fleet_protocol::requires::unmet_devices(
                &settings.requested_devices(),
                reported,
            ));
        }
        unmet
    }

    /// What a release's `requires` is checked against.
    pub fn facts(&self) -> fleet_protocol::requires::DeviceFacts {
        fleet_protocol::requires::DeviceFacts {
            l4t: self.l4t_version.clone(),
            cuda: self.cuda_version.clone(),
            soc: self.soc.clone(),
        }
    }

    pub fn new(id: DeviceId, now: u64) -> Self {
        Self {
            id,
            reported_labels: Labels::new(),
            labels: Labels::new(),
            architecture: String::new(),
            variant: None,
            l4t_version: None,
            soc: None,
            cuda_version: None,
            cdi_devices: None,
            agent_version: String::new(),
            first_seen: now,
            last_seen: now,
            online: false,
            last_status: None,
        }
    }

    /// Reported labels overlaid with the operator's.
    pub fn effective_labels(&self) -> Labels {
        let mut all = self.reported_labels.clone();
        all.extend(self.labels.clone());
        all
    }
}

/// A group: devices matching every `selector` label, plus explicit members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: GroupName,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub members: BTreeSet<DeviceId>,
    pub created_at: u64,
    /// The channel each app follows (see [`Follow`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub follows: BTreeMap<AppName, Follow>,
}

/// A release channel's name, e.g. `stable`: 1 to 64 of `a-z 0-9 - _ .`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "{given:?} is no channel name: use 1 to 64 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
)]
pub struct BadChannel {
    pub given: String,
}

impl Channel {
    pub fn new(name: &str) -> Result<Channel, BadChannel> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
        let ok = (1..=64).contains(&name.len())
            && name.chars().all(ok_char)
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if ok {
            Ok(Channel(name.to_owned()))
        } else {
            Err(BadChannel {
                given: name.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Channel {
    type Error = BadChannel;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Channel::new(&s)
    }
}

impl From<Channel> for String {
    fn from(c: Channel) -> String {
        c.0
    }
}

impl std::str::FromStr for Channel {
    type Err = BadChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::new(s)
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a newer release on a followed channel does to a rollout of the same
/// (group, app) still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Supersede {
    /// Waits until the running rollout is final, then starts (only the
    /// newest waiting release is kept).
    #[default]
    Queue,
    /// Aborts the running rollout and starts at once.
    Replace,
}

/// A group following a channel for one app: every release published to the
/// channel starts a rollout to the group with this policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    pub channel: Channel,
    /// Wave sizes (as `CreateRollout::waves`).
    #[serde(default)]
    pub waves: Vec<WaveSize>,
    #[serde(default)]
    pub supersede: Supersede,
    #[serde(default)]
    pub safety: Safety,
    /// The newest release waiting for the running rollout (queue policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Digest>,
    /// The release the group committed last (its last followed rollout
    /// completed): what a device joining the group is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Digest>,
}

impl GroupRecord {
    pub fn contains(&self, device: &DeviceRecord) -> bool {
        if self.members.contains(&device.id) {
            return true;
        }
        if self.selector.is_empty() {
            return false;
        }
        let labels = device.effective_labels();
        self.selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

/// A verified, signed release, keyed by its release digest (sha256 of the
/// signed payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub digest: Digest,
    pub release: Release,
    pub envelope: Envelope,
    pub added_at: u64,
    /// The channels the release was published to.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub channels: BTreeSet<Channel>,
}

pub type RolloutId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    Aborted,
    Completed,
    RolledBack,
    /// A failure threshold was crossed: no further wave goes out (undo is
    /// still possible).
    Halted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Halted => "halted",
        }
    }

    /// No further change happens by itself (undo is still possible).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Aborted
                | RolloutState::Completed
                | RolloutState::RolledBack
                | RolloutState::Halted
        )
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Its devices have not been given the release yet.
    Pending,
    /// Its devices have the release in their desired state.
    Active,
    /// Every device of the wave settled (committed or failed).
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub devices: Vec<DeviceId>,
    pub state: WaveState,
    #[serde(default)]
    pub started_at: Option<u64>,
    /// When every device of the wave settled (its bake time starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
    /// The operator resumed the rollout after its gates could not decide
    /// on this wave: missing data no longer pauses it (a gate that fails
    /// still halts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gates_waived: bool,
    /// Devices of the active wave not given the release yet
    /// (`max_unavailable` feeds them as others settle).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held: BTreeSet<DeviceId>,
    /// The measurements of the rollout's PromQL gate while it baked.
    #[serde(default, skip_serializing_if = "PromTally::is_empty")]
    pub prom: PromTally,
}

/// A rollout of one release to a group, in waves. The device set of each wave
/// is fixed when the rollout is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: RolloutId,
    pub release_digest: Digest,
    pub app: AppName,
    pub version: String,
    pub group: GroupName,
    pub state: RolloutState,
    pub waves: Vec<Wave>,
    /// What each device ran for this app before its wave started (`None`: the
    /// app was not deployed there): the target of `undo`.
    #[serde(default)]
    pub previous: BTreeMap<DeviceId, Option<Digest>>,
    /// Devices a halt gave their previous release back: a device of a
    /// started wave that fails after the halt is given it too, once.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub reverted: BTreeSet<DeviceId>,
    /// Failure thresholds and what a halt rolls back.
    #[serde(default)]
    pub safety: Safety,
    /// Group devices left out of the waves, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Excluded>,
    /// Why the rollout halted (the threshold crossed, in words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_reason: Option<String>,
    /// The gate that halted it, with what was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_failure: Option<super::GateFailure>,
    /// Why it paused by itself (its gates could not decide), for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A device of the group a rollout leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub device: DeviceId,
    /// Why, e.g. `incompatible: requires l4t >=36.3, <37, device has 35.4.1`.
    pub reason: String,
}

impl RolloutRecord {
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.waves.iter().flat_map(|w| w.devices.iter())
    }
}

/// The last desired state the director made for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    pub device: DeviceId,
    /// Strictly increasing; persisted before the envelope is published.
    pub generation: u64,
    /// App → release digest.
    pub apps: BTreeMap<AppName, Digest>,
    pub issued_at: u64,
    pub expires_at: u64,
    /// The signed envelope (compact JSON), exactly as published.
    pub envelope: Vec<u8>,
    /// Whether the link accepted this generation (the outbox flag).
    pub published: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Assigned by the store; increasing.
    #[serde(default)]
    pub seq: u64,
    pub at: u64,
    /// What happened, e.g. `device.registered`, `release.added`.
    pub kind: EventKind,
    /// What it is about: a device id, a digest, `rollout/7`.
    pub subject: String,
    pub message: String,
}

/// What an [`EventRecord`] says happened; serialised as the dotted names
/// the event log has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "device.registered")]
    DeviceRegistered,
    #[serde(rename = "device.labels")]
    DeviceLabels,
    #[serde(rename = "group.created")]
    GroupCreated,
    #[serde(rename = "group.members")]
    GroupMembers,
    #[serde(rename = "release.added")]
    ReleaseAdded,
    #[serde(rename = "rollout.started")]
    RolloutStarted,
    #[serde(rename = "rollout.wave")]
    RolloutWave,
    #[serde(rename = "rollout.completed")]
    RolloutCompleted,
    /// Superseded by a newer rollout of the same app.
    #[serde(rename = "rollout.aborted")]
    RolloutAborted,
    #[serde(rename = "rollout.pause")]
    RolloutPause,
    #[serde(rename = "rollout.resume")]
    RolloutResume,
    #[serde(rename = "rollout.abort")]
    RolloutAbort,
    #[serde(rename = "rollout.undo")]
    RolloutUndo,
    #[serde(rename = "token.created")]
    TokenCreated,
    #[serde(rename = "token.revoked")]
    TokenRevoked,
    #[serde(rename = "rollout.halted")]
    RolloutHalted,
    #[serde(rename = "release.published")]
    ReleasePublished,
    #[serde(rename = "group.follow")]
    GroupFollow,
    /// A device joined a following group and was given its current release.
    #[serde(rename = "group.catch_up")]
    GroupCatchUp,
    /// A gate's verdict on a baking wave: held, or could not decide.
    #[serde(rename = "rollout.gate")]
    RolloutGate,
    /// A device got its certificate with an enrollment token.
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled,
    /// A device was revoked (for good).
    #[serde(rename = "device.revoked")]
    DeviceRevoked,
    /// An enrollment token was made or revoked.
    #[serde(rename = "enroll.token")]
    EnrollToken,
    /// A pending enrollment was approved or rejected.
    #[serde(rename = "enroll.pending")]
    EnrollPending,
}

impl EventKind {
    /// The wire form, e.g. `rollout.undo`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DeviceRegistered => "device.registered",
            EventKind::DeviceLabels => "device.labels",
            EventKind::GroupCreated => "group.created",
            EventKind::GroupMembers => "group.members",
            EventKind::ReleaseAdded => "release.added",
            EventKind::RolloutStarted => "rollout.started",
            EventKind::RolloutWave => "rollout.wave",
            EventKind::RolloutCompleted => "rollout.completed",
            EventKind::RolloutAborted => "rollout.aborted",
            EventKind::RolloutPause => "rollout.pause",
            EventKind::RolloutResume => "rollout.resume",
            EventKind::RolloutAbort => "rollout.abort",
            EventKind::RolloutUndo => "rollout.undo",
            EventKind::TokenCreated => "token.created",
            EventKind::TokenRevoked => "token.revoked",
            EventKind::RolloutHalted => "rollout.halted",
            EventKind::ReleasePublished => "release.published",
            EventKind::GroupFollow => "group.follow",
            EventKind::GroupCatchUp => "group.catch_up",
            EventKind::RolloutGate => "rollout.gate",
            EventKind::DeviceEnrolled => "device.enrolled",
            EventKind::DeviceRevoked => "device.revoked",
            EventKind::EnrollToken => "enroll.token",
            EventKind::EnrollPending => "enroll.pending",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API token may do; each role may do everything the roles before
/// it may (`viewer < operator < admin`, the derived order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Reads: devices, groups, releases, rollouts, events.
    Viewer,
    /// Rollouts (start, plan, pause, resume, abort, undo), labels,
    /// releases, image imports.
    Operator,
    /// Groups, tokens, the audit log (and enrollment, device revocation).
    Admin,
}

impl TokenRole {
    pub const ALL: [TokenRole; 3] = [TokenRole::Viewer, TokenRole::Operator, TokenRole::Admin];

    /// The wire form: `viewer`, `operator`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Operator => "operator",
            TokenRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{given:?} is no role: give viewer, operator or admin")]
pub struct UnknownRole {
    pub given: String,
}

impl std::str::FromStr for TokenRole {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole {
                given: s.to_owned(),
            })
    }
}

/// An API token; only its sha256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Hex sha256 of the token.
    pub hash: String,
    pub name: String,
    pub role: TokenRole,
    pub created_at: u64,
}

/// A device's latest telemetry, as the batched flusher last wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    pub device: DeviceId,
    /// Unix seconds (server clock) it arrived.
    pub received_at: u64,
    pub telemetry: Telemetry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_keep_their_dotted_wire_names() {
        let all = [
            EventKind::DeviceRegistered,
            EventKind::DeviceLabels,
            EventKind::GroupCreated,
            EventKind::GroupMembers,
            EventKind::ReleaseAdded,
            EventKind::RolloutStarted,
            EventKind::RolloutWave,
            EventKind::RolloutCompleted,
            EventKind::RolloutAborted,
            EventKind::RolloutPause,
            EventKind::RolloutResume,
            EventKind::RolloutAbort,
            EventKind::RolloutUndo,
            EventKind::TokenCreated,
            EventKind::TokenRevoked,
            EventKind::RolloutHalted,
            EventKind::ReleasePublished,
            EventKind::GroupFollow,
            EventKind::GroupCatchUp,
            EventKind::RolloutGate,
            EventKind::DeviceEnrolled,
            EventKind::DeviceRevoked,
            EventKind::EnrollToken,
            EventKind::EnrollPending,
        ];
        for kind in all {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn roles_are_ordered_and_keep_their_wire_names() {
        assert!(TokenRole::Viewer < TokenRole::Operator);
        assert!(TokenRole::Operator < TokenRole::Admin);
        for role in TokenRole::ALL {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
            assert_eq!(role.as_str().parse::<TokenRole>().unwrap(), role);
        }
        let e = "root".parse::<TokenRole>().unwrap_err();
        assert!(e.to_string().contains("\"root\""), "{e}");
    }

    #[test]
    fn rollout_and_wave_states_keep_their_wire_names() {
        for (state, name) in [
            (RolloutState::Running, "running"),
            (RolloutState::Paused, "paused"),
            (RolloutState::Aborted, "aborted"),
            (RolloutState::Completed, "completed"),
            (RolloutState::RolledBack, "rolled_back"),
            (RolloutState::Halted, "halted"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(state.as_str(), name);
        }
        for (state, name) in [
            (WaveState::Pending, "pending"),
            (WaveState::Active, "active"),
            (WaveState::Done, "done"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{name}\"")
            );
        }
    }
}
