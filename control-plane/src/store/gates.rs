//! Gates on what the devices of a baking wave report, as operators set
//! them ([`TelemetryGates`]), and the record of a gate that did not hold
//! ([`GateFailure`]). Plain serde types, stored with the rollouts and the
//! groups' follows inside [`super::Safety`]; the evaluation is
//! `fleet::gates`.

use fleet_protocol::DeviceId;
use serde::{Deserialize, Serialize};

/// How many times the baseline a measurement may be: `1.5` (at least 1,
/// finite). Stored as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Factor(f64);

// Only finite factors are constructed (`TryFrom<f64>`), so equality is total.
impl Eq for Factor {}

impl Factor {
    pub fn get(self) -> f64 {
        self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{given:?} is no factor: give how many times the baseline median is tolerated, \
     a number of at least 1 (e.g. 1.5)"
)]
pub struct BadFactor {
    pub given: String,
}

impl TryFrom<f64> for Factor {
    type Error = BadFactor;
    fn try_from(v: f64) -> Result<Self, Self::Error> {
        if v.is_finite() && v >= 1.0 {
            Ok(Factor(v))
        } else {
            Err(BadFactor {
                given: v.to_string(),
            })
        }
    }
}

impl From<Factor> for f64 {
    fn from(f: Factor) -> f64 {
        f.0
    }
}

impl std::str::FromStr for Factor {
    type Err = BadFactor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_end_matches(['x', '×']);
        t.parse::<f64>()
            .ok()
            .and_then(|v| Factor::try_from(v).ok())
            .ok_or_else(|| BadFactor {
                given: s.to_owned(),
            })
    }
}

impl std::fmt::Display for Factor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×", self.0)
    }
}

/// Built-in gates, checked while a settled wave bakes (all along, and once
/// more when the bake time is over): the wave's devices that committed the
/// release, by what they reported during the bake, against the rollout's
/// devices still on their previous release (the baseline). A gate that does
/// not hold halts the rollout like a crossed failure threshold; a gate
/// without the data to decide at the end of the bake pauses it for a human.
/// No gate set: nothing is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryGates {
    /// The app's memory: the wave's median may be at most this many times
    /// the baseline median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Factor>,
    /// The app's CPU: the wave's median may be at most this many times the
    /// baseline median.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Factor>,
    /// App restarts tolerated in all, over the wave's updated devices, since
    /// each started the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Updated devices of the wave whose app reports unhealthy (a failing
    /// health check) tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<u32>,
    /// Any device of the wave whose app crash-looped on the release halts
    /// (whatever the failure thresholds tolerate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_loop: bool,
}

impl TelemetryGates {
    pub fn is_empty(&self) -> bool {
        *self == TelemetryGates::default()
    }

    /// The gates set, by name (for messages).
    pub fn names(&self) -> Vec<GateName> {
        let mut names = Vec::new();
        if self.memory.is_some() {
            names.push(GateName::Memory);
        }
        if self.cpu.is_some() {
            names.push(GateName::Cpu);
        }
        if self.restarts.is_some() {
            names.push(GateName::Restarts);
        }
        if self.unhealthy.is_some() {
            names.push(GateName::Unhealthy);
        }
        if self.crash_loop {
            names.push(GateName::CrashLoop);
        }
        names
    }
}

/// A gate, as metrics and messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateName {
    Memory,
    Cpu,
    Restarts,
    Unhealthy,
    CrashLoop,
    Promql,
}

impl GateName {
    pub const ALL: [GateName; 6] = [
        GateName::Memory,
        GateName::Cpu,
        GateName::Restarts,
        GateName::Unhealthy,
        GateName::CrashLoop,
        GateName::Promql,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GateName::Memory => "memory",
            GateName::Cpu => "cpu",
            GateName::Restarts => "restarts",
            GateName::Unhealthy => "unhealthy",
            GateName::CrashLoop => "crash_loop",
            GateName::Promql => "promql",
        }
    }
}

impl std::fmt::Display for GateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate that did not hold and halted a rollout: which, in which wave,
/// what was measured against what threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateFailure {
    /// The wave (0-based) whose devices were measured.
    pub wave: usize,
    pub gate: GateName,
    pub measured: f64,
    /// The value the measurement may not exceed (for the crash-loop
    /// gate: 0).
    pub threshold: f64,
    /// The same in words, with the baseline where there is one.
    pub detail: String,
    /// The wave's devices on the release that the gate judged: a halt
    /// that rolls back failed devices rolls these back too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
}

// Measurements are finite: the evaluation never produces NaN (a PromQL
// result that is not a number is inconclusive, not a failure).
impl Eq for GateFailure {}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gate {} failed in wave {}: {}",
            self.gate,
            self.wave + 1,
            self.detail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_below_one_or_not_numbers_are_refused_by_name() {
        assert_eq!("1.5".parse::<Factor>().unwrap().get(), 1.5);
        assert_eq!("2x".parse::<Factor>().unwrap().get(), 2.0);
        for bad in ["0.5", "-1", "NaN", "inf", "many", ""] {
            let e = bad.parse::<Factor>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?} is no factor")), "{e}");
        }
        assert!(serde_json::from_str::<Factor>("0.9").is_err());
    }

    #[test]
    fn a_rollout_stored_before_gates_loads_with_none_and_writes_back_the_same() {
        // As the store held it before gates, PromQL and max_unavailable.
        let old = r#"{"id":4,"release_digest":"sha256:2b2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a","app":"model","version":"v2","group":"cameras","state":"halted","waves":[{"devices":["cam-1"],"state":"active","started_at":10,"settled_at":20}],"previous":{"cam-1":null},"safety":{"wave_failures":{"count":0},"on_halt":"failed","bake_secs":60,"max_restarts":2},"halt_reason":"wave 1: 1 of 1 devices failed (tolerated: 0)","created_at":10,"updated_at":30}"#;
        let r: super::super::RolloutRecord = serde_json::from_str(old).unwrap();
        assert!(r.safety.gates.is_empty());
        assert_eq!(
            (r.safety.promql.clone(), r.safety.max_unavailable),
            (None, None)
        );
        assert_eq!(
            (r.gate_failure.clone(), r.pause_reason.clone()),
            (None, None)
        );
        assert!(r.waves[0].held.is_empty() && r.waves[0].prom.is_empty());
        assert!(!r.waves[0].gates_waived);
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );
    }

    #[test]
    fn records_without_gates_load_and_empty_gates_are_not_written() {
        let g: TelemetryGates = serde_json::from_str("{}").unwrap();
        assert!(g.is_empty());
        assert_eq!(serde_json::to_string(&g).unwrap(), "{}");
        let g = TelemetryGates {
            memory: Some("1.5".parse().unwrap()),
            crash_loop: true,
            ..TelemetryGates::default()
        };
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, r#"{"memory":1.5,"crash_loop":true}"#);
        assert_eq!(serde_json::from_str::<TelemetryGates>(&json).unwrap(), g);
        assert_eq!(g.names(), vec![GateName::Memory, GateName::CrashLoop]);
    }
}
