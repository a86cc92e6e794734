//! The agent's configuration: one serde tree, read from a TOML file, then
//! overridden by `FLEET_AGENT_*` environment variables, then validated.
//! Every field has a default that works on a device.
//!
//! ```toml
//! device_id = "cam-01"                  # default: the host name
//! state_dir = "/var/lib/fleet-agent"
//! trust = "/etc/fleet-agent/trust.json"
//!
//! [runtime]
//! kind = "crun"                         # or "runc"
//! binary = "/usr/bin/crun"              # default: looked up in PATH
//! root = "/run/crun"                    # the runtime's --root
//! backoff_initial_ms = 500
//! backoff_max_ms = 60000
//!
//! [deploy]
//! probation_secs = 60                   # when a release does not say
//! crash_loop_restarts = 3               # restarts within probation = crash loop
//!
//! [store]
//! reserve_bytes = 268435456             # disk space downloads leave free
//! cache_bytes = 1048576                 # sled page cache
//! ```
//!
//! Environment overrides: `FLEET_AGENT_DEVICE_ID`, `FLEET_AGENT_STATE_DIR`,
//! `FLEET_AGENT_TRUST`, `FLEET_AGENT_RUNTIME`, `FLEET_AGENT_RUNTIME_BINARY`,
//! `FLEET_AGENT_RUNTIME_ROOT`, `FLEET_AGENT_PROBATION_SECS`,
//! `FLEET_AGENT_CRASH_LOOP_RESTARTS`, `FLEET_AGENT_RESERVE_BYTES`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use crate::runtime::{BackoffConfig, DriverConfig, RuntimeConfig, RuntimeKind};
use crate::store::StoreConfig;

/// Where the configuration file is looked for when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet-agent/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This device's id (its MQTT client id); defaults to the host name.
    pub device_id: Option<DeviceId>,
    pub state_dir: PathBuf,
    /// The trust root the device was provisioned with (`trust.json`).
    pub trust: PathBuf,
    pub runtime: RuntimeSection,
    pub deploy: DeploySection,
    pub store: StoreSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    pub kind: RuntimeKind,
    pub binary: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploySection {
    /// Probation of a release that does not set `probation_secs`.
    pub probation_secs: u64,
    /// Restarts (or exits in a row) during probation that count as a crash loop.
    pub crash_loop_restarts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub reserve_bytes: u64,
    pub cache_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: None,
            state_dir: PathBuf::from("/var/lib/fleet-agent"),
            trust: PathBuf::from("/etc/fleet-agent/trust.json"),
            runtime: RuntimeSection::default(),
            deploy: DeploySection::default(),
            store: StoreSection::default(),
        }
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            kind: RuntimeKind::Crun,
            binary: None,
            root: None,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
        }
    }
}

impl Default for DeploySection {
    fn default() -> Self {
        DeploySection {
            probation_secs: 60,
            crash_loop_restarts: 3,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            reserve_bytes: 256 * 1024 * 1024,
            cache_bytes: 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads `path` (or [`DEFAULT_CONFIG_PATH`] if it exists, or defaults),
    /// applies the process environment's overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Applies `FLEET_AGENT_*` overrides read through `var`.
    pub fn apply_env(
        &mut self,
        var: impl Fn(&'static str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                value,
                reason: e.to_string(),
            })
        }
        if let Some(v) = var("FLEET_AGENT_DEVICE_ID") {
            self.device_id = Some(parse("FLEET_AGENT_DEVICE_ID", v)?);
        }
        if let Some(v) = var("FLEET_AGENT_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = var("FLEET_AGENT_TRUST") {
            self.trust = PathBuf::from(v);
        }
        if let Some(v) = var("FLEET_AGENT_RUNTIME") {
            self.runtime.kind = match v.as_str() {
                "crun" => RuntimeKind::Crun,
                "runc" => RuntimeKind::Runc,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FLEET_AGENT_RUNTIME",
                        value: v,
                        reason: "expected crun or runc".into(),
                    });
                }
            };
        }
        if let Some(v) = var("FLEET_AGENT_RUNTIME_BINARY") {
            self.runtime.binary = Some(PathBuf::from(v));
        }
        if let Some(v) = var("FLEET_AGENT_RUNTIME_ROOT") {
            self.runtime.root = Some(PathBuf::from(v));
        }
        if let Some(v) = var("FLEET_AGENT_PROBATION_SECS") {
            self.deploy.probation_secs = parse("FLEET_AGENT_PROBATION_SECS", v)?;
        }
        if let Some(v) = var("FLEET_AGENT_CRASH_LOOP_RESTARTS") {
            self.deploy.crash_loop_restarts = parse("FLEET_AGENT_CRASH_LOOP_RESTARTS", v)?;
        }
        if let Some(v) = var("FLEET_AGENT_RESERVE_BYTES") {
            self.store.reserve_bytes = parse("FLEET_AGENT_RESERVE_BYTES", v)?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("state_dir is empty".into()));
        }
        if self.deploy.crash_loop_restarts == 0 {
            return Err(ConfigError::Invalid(
                "deploy.crash_loop_restarts must be at least 1".into(),
            ));
        }
        if self.runtime.backoff_initial_ms == 0
            || self.runtime.backoff_max_ms < self.runtime.backoff_initial_ms
        {
            return Err(ConfigError::Invalid(
                "runtime.backoff_initial_ms must be > 0 and <= backoff_max_ms".into(),
            ));
        }
        Ok(())
    }

    /// The configured device id, or the host name.
    pub fn device_id(&self) -> Result<DeviceId, ConfigError> {
        if let Some(id) = &self.device_id {
            return Ok(id.clone());
        }
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        DeviceId::new(host.trim()).map_err(|e| {
            ConfigError::Invalid(format!(
                "no device_id configured and the host name {:?} is not a device id: {e}",
                host.trim()
            ))
        })
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        let mut driver = DriverConfig::new(self.runtime.kind);
        if let Some(b) = &self.runtime.binary {
            driver = driver.with_binary(b);
        }
        if let Some(r) = &self.runtime.root {
            driver = driver.with_root(r);
        }
        let mut config = RuntimeConfig::new(driver, &self.state_dir);
        config.backoff = BackoffConfig {
            initial: Duration::from_millis(self.runtime.backoff_initial_ms),
            max: Duration::from_millis(self.runtime.backoff_max_ms),
            ..BackoffConfig::default()
        };
        config
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            reserve_bytes: self.store.reserve_bytes,
            cache_bytes: self.store.cache_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_env_overrides_the_file() {
        Config::default().validate().unwrap();
        let mut c: Config = toml::from_str(
            "state_dir = \"/tmp/s\"\n[runtime]\nkind = \"runc\"\n[deploy]\nprobation_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.runtime.kind, RuntimeKind::Runc);
        assert_eq!(c.deploy.crash_loop_restarts, 3);
        c.apply_env(|k| match k {
            "FLEET_AGENT_RUNTIME" => Some("crun".into()),
            "FLEET_AGENT_PROBATION_SECS" => Some("2".into()),
            "FLEET_AGENT_DEVICE_ID" => Some("cam-01".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.runtime.kind, RuntimeKind::Crun);
        assert_eq!(c.deploy.probation_secs, 2);
        assert_eq!(c.device_id().unwrap().as_str(), "cam-01");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn bad_values_are_reported_with_their_source() {
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "FLEET_AGENT_PROBATION_SECS").then(|| "soon".into()))
            .unwrap_err();
        assert!(
            err.to_string().contains("FLEET_AGENT_PROBATION_SECS"),
            "{err}"
        );
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        c.deploy.crash_loop_restarts = 0;
        assert!(c.validate().is_err());
    }
}
