//! A PromQL gate, in the manner of Argo Rollouts' analysis: a query run
//! against the server's Prometheus every `interval_secs` while a wave
//! bakes, and a success condition on its result (`result < 0.05`). More
//! failed measurements than `failure_limit` halt the rollout; more
//! inconclusive ones (no data, Prometheus unreachable) than the same limit
//! pause it for a human. Plain serde types, stored inside
//! [`super::Safety`] and with each wave's tally ([`PromTally`]).
//!
//! The condition grammar: one or more comparisons of `result` with a
//! number, joined by `&&` (or `and`):
//!
//! ```text
//! condition  = comparison { ("&&" | "and") comparison }
//! comparison = "result" op number
//! op         = "<" | "<=" | ">" | ">=" | "==" | "!="
//! ```
//!
//! A query that returns several series passes only if every value does.

use serde::{Deserialize, Serialize};

/// A comparison operator of a [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    const ALL: [(&'static str, Op); 6] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Eq => left == right,
            Op::Ne => left != right,
        }
    }
}

/// `result OP number`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub op: Op,
    pub bound: f64,
}

/// A success condition on a query's result: every comparison must hold.
/// Written and stored as its text (`result < 0.05 && result >= 0`).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub all: Vec<Comparison>,
}

// Bounds are finite (the parser refuses others), so equality is total.
impl Eq for Condition {}

impl Condition {
    /// The first comparison `value` fails, if any.
    pub fn fails(&self, value: f64) -> Option<Comparison> {
        self.all
            .iter()
            .copied()
            .find(|c| !c.op.holds(value, c.bound))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BadCondition {
    #[error(
        "success condition {given:?}: empty; write e.g. \"result < 0.05\" or \"result >= 0.99\""
    )]
    Empty { given: String },
    #[error(
        "success condition {given:?}: {part:?} does not start with `result`; write e.g. \"result < 0.05\""
    )]
    NoResult { given: String, part: String },
    #[error(
        "success condition {given:?}: {part:?} has no operator; use <, <=, >, >=, == or != (e.g. \"result < 0.05\")"
    )]
    NoOperator { given: String, part: String },
    #[error("success condition {given:?}: {number:?} is not a finite number")]
    BadNumber { given: String, number: String },
}

impl std::str::FromStr for Condition {
    type Err = BadCondition;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let given = s.to_owned();
        if s.trim().is_empty() {
            return Err(BadCondition::Empty { given });
        }
        let mut all = Vec::new();
        for part in s.split("&&").flat_map(|p| p.split(" and ")) {
            let part = part.trim();
            let Some(rest) = part.strip_prefix("result") else {
                return Err(BadCondition::NoResult {
                    given,
                    part: part.to_owned(),
                });
            };
            let rest = rest.trim_start();
            let Some((op, number)) = Op::ALL
                .iter()
                .find_map(|(text, op)| rest.strip_prefix(text).map(|n| (*op, n.trim())))
            else {
                return Err(BadCondition::NoOperator {
                    given,
                    part: part.to_owned(),
                });
            };
            match number.parse::<f64>() {
                Ok(bound) if bound.is_finite() => all.push(Comparison { op, bound }),
                _ => {
                    return Err(BadCondition::BadNumber {
                        given,
                        number: number.to_owned(),
                    });
                }
            }
        }
        Ok(Condition { all })
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "result {} {}", self.op.as_str(), self.bound)
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.all.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(" && "))
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn default_interval() -> u64 {
    10
}

/// A PromQL gate of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromGate {
    /// The PromQL expression, run as an instant query.
    pub query: String,
    /// What its result must satisfy.
    pub success: Condition,
    /// Seconds between two measurements while a wave bakes.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Failed measurements tolerated per wave (and, separately,
    /// inconclusive ones): one more halts (pauses).
    #[serde(default)]
    pub failure_limit: u32,
}

/// The measurements of a wave's PromQL gate so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromTally {
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
    /// When the last measurement was taken (the next is due
    /// `interval_secs` later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<u64>,
    /// The last measurement, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

impl Eq for PromTally {}

impl PromTally {
    pub fn is_empty(&self) -> bool {
        *self == PromTally::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_print_and_judge() {
        let c: Condition = "result < 0.05".parse().unwrap();
        assert_eq!(c.to_string(), "result < 0.05");
        assert_eq!(c.fails(0.01), None);
        assert_eq!(c.fails(0.05).unwrap().to_string(), "result < 0.05");
        let c: Condition = "result>=0 && result <= 1 and result != 0.5"
            .parse()
            .unwrap();
        assert_eq!(c.to_string(), "result >= 0 && result <= 1 && result != 0.5");
        assert_eq!(c.fails(0.2), None);
        assert_eq!(c.fails(0.5).unwrap().to_string(), "result != 0.5");
        assert_eq!(c.fails(-1.0).unwrap().to_string(), "result >= 0");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Condition>(&json).unwrap(), c);
    }

    #[test]
    fn unparsable_conditions_are_refused_by_name() {
        for (given, says) in [
            ("", "empty"),
            ("value < 3", "does not start with `result`"),
            ("result ~ 3", "has no operator"),
            ("result < x", "\"x\" is not a finite number"),
            ("result < 1 &&", "does not start with `result`"),
            ("result < NaN", "is not a finite number"),
        ] {
            let e = given.parse::<Condition>().unwrap_err().to_string();
            assert!(e.contains(says), "{given:?}: {e}");
            assert!(e.contains(&format!("{given:?}")), "{e}");
        }
        assert!(serde_json::from_str::<Condition>("\"result <\"").is_err());
    }

    #[test]
    fn a_gate_without_interval_or_limit_takes_the_defaults() {
        let g: PromGate =
            serde_json::from_str(r#"{"query":"up","success":"result == 1"}"#).unwrap();
        assert_eq!((g.interval_secs, g.failure_limit), (10, 0));
    }
}
