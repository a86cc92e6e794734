//! What a release requires of the device (`requires.l4t`, `requires.cuda`,
//! `requires.soc`), signed with the release, and the check against what a
//! device reports. Both the agent (before it downloads anything) and the
//! server (when it plans a rollout) use [`Requirements::unmet`].
//!
//! A version range is a comma-separated list of comparisons that must all
//! hold: `>=36.3, <37`. Operators: `>=`, `>`, `<=`, `<`, `=` (or none):
//! `=36.4` / `36.4` match every version whose leading components are
//! `36.4` (36.4, 36.4.3). Versions are dot-separated numbers; an `R` prefix
//! (`R36.4.3`, as `/etc/nv_tegra_release` writes it) is accepted. Missing
//! trailing components compare as 0 (`37` = `37.0.0`).

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a requirement could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("version {0:?} is not dot-separated numbers (e.g. 36.4.3)")]
    BadVersion(String),
    #[error("version range {0:?} is empty")]
    EmptyRange(String),
    #[error("SoC {0:?} is not a Tegra SoC name such as t234 or tegra234")]
    BadSoc(String),
}

/// A dotted numeric version: `36.4.3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(Vec<u64>);

impl Version {
    pub fn parse(text: &str) -> Result<Self, RequirementError> {
        let t = text.trim();
        let t = t.strip_prefix(['R', 'r']).unwrap_or(t);
        let parts: Option<Vec<u64>> = t.split('.').map(|p| p.parse().ok()).collect();
        match parts {
            Some(p) if !p.is_empty() && p.len() <= 4 => Ok(Version(p)),
            _ => Err(RequirementError::BadVersion(text.to_owned())),
        }
    }

    fn component(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    fn compare(&self, other: &Version) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| self.component(i).cmp(&other.component(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Whether `self`'s components start with all of `prefix`'s.
    fn starts_with(&self, prefix: &Version) -> bool {
        (0..prefix.0.len()).all(|i| self.component(i) == prefix.0[i])
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// `>=36.3, <37`: every comparison must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    text: String,
    terms: Vec<(Op, Version)>,
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<Self, RequirementError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("==", Op::Eq),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(s, op)| term.strip_prefix(s).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, term));
            terms.push((op, Version::parse(rest)?));
        }
        if terms.is_empty() {
            return Err(RequirementError::EmptyRange(text.to_owned()));
        }
        Ok(VersionRange {
            text: text.trim().to_owned(),
            terms,
        })
    }

    pub fn matches(&self, v: &Version) -> bool {
        self.terms.iter().all(|(op, want)| match op {
            Op::Ge => v.compare(want).is_ge(),
            Op::Gt => v.compare(want).is_gt(),
            Op::Le => v.compare(want).is_le() || v.starts_with(want),
            Op::Lt => v.compare(want).is_lt(),
            Op::Eq => v.starts_with(want),
        })
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for VersionRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for VersionRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        VersionRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A Tegra SoC, normalised to `t234` (accepts `tegra234`, `T234`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Soc(String);

impl Soc {
    pub fn parse(text: &str) -> Result<Self, RequirementError> {
        let lower = text.trim().to_ascii_lowercase();
        let digits = lower
            .strip_prefix("tegra")
            .or_else(|| lower.strip_prefix('t'))
            .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        match digits {
            Some(d) => Ok(Soc(format!("t{d}"))),
            None => Err(RequirementError::BadSoc(text.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Soc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Soc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Soc::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a release requires of the device. An unknown key (a requirement
/// this version cannot check) fails decoding by name rather than being
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Requirements {
    /// Jetson Linux release range, e.g. `>=36.3, <37`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4t: Option<VersionRange>,
    /// Host CUDA range, e.g. `>=12.2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda: Option<VersionRange>,
    /// Tegra SoC, e.g. `t234`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc: Option<Soc>,
}

/// What a device is, as far as requirements go (from its `DeviceInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub l4t: Option<String>,
    pub cuda: Option<String>,
    pub soc: Option<String>,
}

/// One requirement the device does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// `l4t`, `cuda`, `soc` or `device` (a CDI device, [`unmet_devices`]).
    pub what: &'static str,
    pub required: String,
    /// What the device has; `None` when it reports nothing.
    pub found: Option<String>,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "requires {} {}, device has {found}",
                self.what, self.required
            ),
            None => write!(
                f,
                "requires {} {}, device has none",
                self.what, self.required
            ),
        }
    }
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.l4t.is_none() && self.cuda.is_none() && self.soc.is_none()
    }

    /// The requirements `device` does not meet (empty: compatible). A
    /// device that reports a version which is not a number does not meet
    /// a range on it.
    pub fn unmet(&self, device: &DeviceFacts) -> Vec<Unmet> {
        let mut out = Vec::new();
        let ranges = [
            ("l4t", &self.l4t, &device.l4t),
            ("cuda", &self.cuda, &device.cuda),
        ];
        for (what, range, found) in ranges {
            let Some(range) = range else { continue };
            let ok = found
                .as_deref()
                .and_then(|f| Version::parse(f).ok())
                .is_some_and(|v| range.matches(&v));
            if !ok {
                out.push(Unmet {
                    what,
                    required: range.to_string(),
                    found: found.clone(),
                });
            }
        }
        if let Some(soc) = &self.soc {
            let ok = device
                .soc
                .as_deref()
                .and_then(|s| Soc::parse(s).ok())
                .is_some_and(|s| &s == soc);
            if !ok {
                out.push(Unmet {
                    what: "soc",
                    required: soc.as_str().to_owned(),
                    found: device.soc.clone(),
                });
            }
        }
        out
    }
}

/// The requested CDI devices (`vendor/class=name`) a device does not
/// report having: a `…=all` request is met by any device of its kind.
pub fn unmet_devices(requested: &[String], reported: &[String]) -> Vec<Unmet> {
    requested
        .iter()
        .filter(|want| {
            let met = match want.strip_suffix("=all") {
                Some(kind) => reported
                    .iter()
                    .any(|r| r.split_once('=').is_some_and(|(k, _)| k == kind)),
                None => reported.contains(want),
            };
            !met
        })
        .map(|want| Unmet {
            what: "device",
            required: want.clone(),
            found: (!reported.is_empty()).then(|| reported.join(", ")),
        })
        .collect()
}

/// Image config labels that fill a release's `requires` when `fleetctl`
/// creates it (flags override them): the values are written as the flags'.
pub const LABEL_L4T: &str = "io.fleet.requires.l4t";
pub const LABEL_CUDA: &str = "io.fleet.requires.cuda";
pub const LABEL_SOC: &str = "io.fleet.requires.soc";

/// A `io.fleet.requires.*` image label that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("image label {label}={value:?}: {source}")]
pub struct LabelError {
    pub label: &'static str,
    pub value: String,
    #[source]
    pub source: RequirementError,
}

impl Requirements {
    /// The requirements an image's config labels state (absent labels give
    /// none); a malformed label is refused by name.
    pub fn from_labels(
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, LabelError> {
        fn get<T>(
            labels: &std::collections::BTreeMap<String, String>,
            label: &'static str,
            parse: fn(&str) -> Result<T, RequirementError>,
        ) -> Result<Option<T>, LabelError> {
            labels
                .get(label)
                .map(|value| {
                    parse(value).map_err(|source| LabelError {
                        label,
                        value: value.clone(),
                        source,
                    })
                })
                .transpose()
        }
        Ok(Requirements {
            l4t: get(labels, LABEL_L4T, VersionRange::parse)?,
            cuda: get(labels, LABEL_CUDA, VersionRange::parse)?,
            soc: get(labels, LABEL_SOC, Soc::parse)?,
        })
    }

    /// Each requirement from `self` (the flags) where set, else from
    /// `fallback` (the labels).
    pub fn or(self, fallback: Requirements) -> Requirements {
        Requirements {
            l4t: self.l4t.or(fallback.l4t),
            cuda: self.cuda.or(fallback.cuda),
            soc: self.soc.or(fallback.soc),
        }
    }
}

#[cfg(test)]
#[path = "requires_tests.rs"]
mod tests;
