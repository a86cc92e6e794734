//! How a rollout goes, as operators set it: wave sizes (counts or
//! percentages), failure thresholds, what a halt rolls back, wave
//! deadlines and bake time. Plain serde types, stored with the rollouts and
//! the groups' follows.

use serde::{Deserialize, Serialize};

use super::{PromGate, TelemetryGates};

/// How many failed devices a rollout tolerates: `{"count": 1}` or
/// `{"percent": 10}` (of the devices counted; rounded down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Threshold {
    Count(usize),
    Percent(u8),
}

impl Threshold {
    /// Whether `failed` of `of` devices crosses the threshold (more failed
    /// than tolerated).
    pub fn crossed(self, failed: usize, of: usize) -> bool {
        let tolerated = match self {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => of.saturating_mul(usize::from(p.min(100))) / 100,
        };
        failed > tolerated
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{given:?} is no threshold: give a count (2) or a percentage (10%, at most 100%)")]
pub struct BadThreshold {
    pub given: String,
}

impl std::str::FromStr for Threshold {
    type Err = BadThreshold;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadThreshold {
            given: s.to_owned(),
        };
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Threshold::Percent(p)),
                _ => Err(bad()),
            },
            None => s.parse().map(Threshold::Count).map_err(|_| bad()),
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The size of a wave: a count of devices (`10`) or a percentage of the
/// rollout's devices (`"25%"`, rounded up, at least one). On the wire a
/// count is a number and a percentage a string, so that the plain counts
/// stored before percentages existed read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Count(usize),
    Percent(u8),
}

impl WaveSize {
    /// How many of `total` devices the wave takes.
    pub fn of(self, total: usize) -> usize {
        match self {
            WaveSize::Count(n) => n,
            WaveSize::Percent(p) => (total.saturating_mul(usize::from(p.min(100)))).div_ceil(100),
        }
    }
}

/// Wave sizes as an operator writes them: `1, 10%, 50%` (`all` for none:
/// one wave).
pub fn wave_sizes(sizes: &[WaveSize]) -> String {
    if sizes.is_empty() {
        return "all".into();
    }
    let parts: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

#[derive(Debug, thiserror::Error)]
#[error("{given:?} is no wave size: give a count (10) or a percentage (25%, 1% to 100%)")]
pub struct BadWaveSize {
    pub given: String,
}

impl std::str::FromStr for WaveSize {
    type Err = BadWaveSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadWaveSize {
            given: s.to_owned(),
        };
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSize::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(WaveSize::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WaveSize::Count(n) => s.serialize_u64(*n as u64),
            WaveSize::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Count(usize),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Count(n) => Ok(WaveSize::Count(n)),
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Which devices a halted rollout gives their previous release back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltRollback {
    /// None: devices keep what they got.
    Nothing,
    /// The devices that failed.
    #[default]
    Failed,
    /// Every device the rollout gave the release.
    Updated,
}

/// A rollout's failure thresholds. No threshold: failures never halt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Safety {
    /// Failed devices tolerated in one wave (of the wave's devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_failures: Option<Threshold>,
    /// Failed devices tolerated in the whole rollout (of all its devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Threshold>,
    #[serde(default)]
    pub on_halt: HaltRollback,
    /// Seconds a wave may stay open: then it closes with its unsettled
    /// devices counted as pending (not failed; offline ones get the release
    /// when they return) and the next wave goes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_deadline_secs: Option<u64>,
    /// Seconds a settled wave is watched before the next goes out (bake
    /// time): a device that fails meanwhile (a crash loop after commit
    /// rolls it back) counts against the thresholds and can halt the
    /// rollout before anyone else gets the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_secs: Option<u64>,
    /// A gate on what devices report: an updated device whose app restarted
    /// more than this many times since the release started (while its wave
    /// bakes, or any time the rollout runs) counts as failed
    /// (`gate_failed`), against the thresholds like a failed install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// Devices of a wave given the release at once, at most (a count, or a
    /// percentage of the rollout's devices, rounded up): more are held back
    /// and fed as the others commit or fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<WaveSize>,
    /// Gates on the telemetry of a baking wave's devices against the
    /// devices still on their previous release (need `bake_secs`).
    #[serde(default, skip_serializing_if = "TelemetryGates::is_empty")]
    pub gates: TelemetryGates,
    /// A PromQL gate run against the server's Prometheus while a wave
    /// bakes (needs `bake_secs` and the server's `prometheus.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promql: Option<PromGate>,
}

/// A [`Safety`] that cannot work as given.
#[derive(Debug, thiserror::Error)]
pub enum BadSafety {
    #[error(
        "gates ({gates}) are checked while a wave bakes, and no bake time is set: \
         give a bake time (--bake SECONDS) or drop the gates"
    )]
    GatesWithoutBake { gates: String },
    #[error(
        "gates ({gates}) are checked while a wave bakes before the next one, and the \
         rollout has a single wave: give a canary or wave sizes (--canary N, --wave N|P%)"
    )]
    GatesWithOneWave { gates: String },
    #[error("the PromQL gate has an empty query; give one (--gate-promql 'QUERY')")]
    EmptyQuery,
    #[error("the PromQL gate's interval is 0 s; give at least 1 (--gate-interval SECONDS)")]
    ZeroInterval,
}

impl Safety {
    /// Refuses what cannot work: gates without a bake time, a PromQL gate
    /// without a query or with a zero interval.
    pub fn check(&self) -> Result<(), BadSafety> {
        if let Some(p) = &self.promql {
            if p.query.trim().is_empty() {
                return Err(BadSafety::EmptyQuery);
            }
            if p.interval_secs == 0 {
                return Err(BadSafety::ZeroInterval);
            }
        }
        let gates = self.gate_names();
        if !gates.is_empty() && self.bake_secs.is_none_or(|b| b == 0) {
            return Err(BadSafety::GatesWithoutBake { gates });
        }
        Ok(())
    }

    /// [`Safety::check`], and refuses gates when `waves` (the sizes of the
    /// first waves) make one wave: there is no bake between waves then.
    pub fn check_with_waves(&self, waves: &[WaveSize]) -> Result<(), BadSafety> {
        self.check()?;
        let gates = self.gate_names();
        if !gates.is_empty() && waves.is_empty() {
            return Err(BadSafety::GatesWithOneWave { gates });
        }
        Ok(())
    }

    /// The gates set, by name, for messages (empty: none).
    fn gate_names(&self) -> String {
        let mut gates = self.gates.names();
        if self.promql.is_some() {
            gates.push(super::GateName::Promql);
        }
        let names: Vec<&str> = gates.iter().map(|g| g.as_str()).collect();
        names.join(", ")
    }
}
