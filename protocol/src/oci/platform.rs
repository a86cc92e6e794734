//! The platform an image must run on, and how index entries are matched to it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OCI platform: `os/architecture[/variant]` in Go's naming (`amd64`, `arm64`, `arm`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Why a platform string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: expected os/architecture[/variant], e.g. linux/arm64/v8")]
pub struct PlatformError {
    pub value: String,
}

impl Platform {
    /// Builds a platform, normalising architecture aliases (`x86_64` → `amd64`,
    /// `aarch64` → `arm64`, `armhf` → `arm`/`v7`) and the arm64 variant (`v8`).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (arch, implied) = match architecture {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" | "armv7l" | "armv7" => ("arm", Some("v7")),
            "armel" | "armv6l" | "armv6" => ("arm", Some("v6")),
            other => (other, None),
        };
        let variant = variant.or(implied).map(str::to_owned);
        let variant = match (arch, variant) {
            ("arm64", None) => Some("v8".to_owned()),
            ("arm", None) => Some("v7".to_owned()),
            (_, v) => v,
        };
        Self {
            os: os.to_owned(),
            architecture: arch.to_owned(),
            variant,
        }
    }

    /// The platform this binary was built for (`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`).
    pub fn host() -> Self {
        Self::new(std::env::consts::OS, std::env::consts::ARCH, None)
    }

    pub fn parse(value: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = value.split('/').collect();
        let ok = |s: &&str| !s.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self::new(os, arch, None)),
            [os, arch, var] if ok(os) && ok(arch) && ok(var) => Ok(Self::new(os, arch, Some(var))),
            _ => Err(PlatformError {
                value: value.to_owned(),
            }),
        }
    }

    /// How well an index entry's platform fits this one: `None` if it cannot
    /// run here, otherwise higher is better (an exact variant beats an older
    /// compatible one, which beats an entry that names no variant).
    pub fn score(&self, candidate: &Platform) -> Option<u32> {
        let cand = Platform::new(
            &candidate.os,
            &candidate.architecture,
            candidate.variant.as_deref(),
        );
        if cand.os != self.os || cand.architecture != self.architecture {
            return None;
        }
        // `new` fills in a default variant for arm/arm64; tell apart an
        // entry that named none.
        let named = candidate.variant.is_some();
        match (&self.variant, &cand.variant) {
            (Some(want), Some(have)) if want == have => Some(if named { 100 } else { 50 }),
            (Some(want), Some(have)) if self.architecture == "arm" => {
                // armv7 runs v6 and v5 code.
                let (w, h) = (arm_level(want)?, arm_level(have)?);
                (h < w).then_some(10 + h)
            }
            (None, None) => Some(100),
            (None, Some(have)) if have == "v1" => Some(90),
            _ => None,
        }
    }
}

fn arm_level(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, PlatformError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn raw(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn aliases_normalise_to_go_names() {
        assert_eq!(p("linux/aarch64"), p("linux/arm64/v8"));
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert_eq!(p("linux/arm64").to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//v7").is_err());
    }

    #[test]
    fn host_platform_is_linux_with_a_known_architecture() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(["amd64", "arm64", "arm"].contains(&h.architecture.as_str()));
    }

    #[test]
    fn arm64_matches_entries_with_or_without_v8() {
        let me = p("linux/arm64/v8");
        assert_eq!(me.score(&raw("linux", "arm64", Some("v8"))), Some(100));
        assert_eq!(me.score(&raw("linux", "arm64", None)), Some(50));
        assert_eq!(me.score(&raw("linux", "amd64", None)), None);
        assert_eq!(me.score(&raw("windows", "arm64", None)), None);
    }

    #[test]
    fn armv7_prefers_v7_and_accepts_older_variants_only() {
        let me = p("linux/arm/v7");
        let v7 = me.score(&raw("linux", "arm", Some("v7"))).unwrap();
        let v6 = me.score(&raw("linux", "arm", Some("v6"))).unwrap();
        assert!(v7 > v6);
        assert_eq!(me.score(&raw("linux", "arm", Some("v8"))), None);
        assert_eq!(
            p("linux/arm/v6").score(&raw("linux", "arm", Some("v7"))),
            None
        );
    }

    #[test]
    fn amd64_rejects_newer_micro_architecture_levels() {
        let me = p("linux/amd64");
        assert_eq!(me.score(&raw("linux", "amd64", None)), Some(100));
        assert_eq!(me.score(&raw("linux", "amd64", Some("v3"))), None);
        assert_eq!(me.score(&raw("unknown", "unknown", None)), None);
    }
}
