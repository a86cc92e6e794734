//! The agent's configuration: one serde tree, read from a TOML file, then
//! overridden by `FLEET_AGENT_*` environment variables, then validated.
//! Every field has a default that works on a device.
//!
//! ```toml
//! device_id = "cam-01"                  # default: the host name
//! state_dir = "/var/lib/fleet-agent"
//! trust = "/etc/fleet-agent/trust.json"
//! server = "http://10.0.0.2:8080"       # the control plane (content endpoint)
//! broker = "mqtt://127.0.0.1:1883"      # the MQTT broker
//! token = "..."                         # the device's MQTT password
//! enroll_token = "fleet-enroll_..."     # first start without an identity:
//!                                       # enroll at `server` (https://)
//! status_interval_secs = 30             # periodic status report
//! supervise_interval_secs = 10          # periodic check that committed apps run
//! telemetry_interval_secs = 60          # telemetry (QoS 0, dropped while offline)
//! host_root = "/"                       # where sensors are read (a fixture tree
//!                                       # makes a test device look like a Jetson)
//! runtime = "crun"                      # short for [runtime] kind = "crun"
//!
//! [labels]                              # reported to the server on start
//! site = "north"
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
//! deltas = true                         # ask the content endpoint for layer deltas
//! ```
//!
//! Environment overrides: `FLEET_AGENT_DEVICE_ID`, `FLEET_AGENT_STATE_DIR`,
//! `FLEET_AGENT_TRUST`, `FLEET_AGENT_SERVER`, `FLEET_AGENT_BROKER`,
//! `FLEET_AGENT_TOKEN`, `FLEET_AGENT_ENROLL_TOKEN`,
//! `FLEET_AGENT_STATUS_INTERVAL_SECS`,
//! `FLEET_AGENT_TELEMETRY_INTERVAL_SECS`, `FLEET_AGENT_HOST_ROOT`,
//! `FLEET_AGENT_RUNTIME`, `FLEET_AGENT_RUNTIME_BINARY`,
//! `FLEET_AGENT_RUNTIME_ROOT`, `FLEET_AGENT_PROBATION_SECS`,
//! `FLEET_AGENT_CRASH_LOOP_RESTARTS`, `FLEET_AGENT_RESERVE_BYTES`,
//! `FLEET_AGENT_DELTAS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_protocol::broker::BrokerAddr;
use fleet_protocol::env::{EnvError, Overrides};
use fleet_protocol::{DeviceId, IdError};
use serde::{Deserialize, Serialize};

use crate::runtime::{BackoffConfig, DriverConfig, RuntimeConfig, RuntimeKind};
use crate::store::StoreConfig;

/// The broker when none is configured.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

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
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("config: {field} {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("config: server {url:?} must start with http:// or https://")]
    ServerUrl { url: String },
    #[error("config: no device_id configured and the host name {host:?} is not a device id")]
    HostName {
        host: String,
        #[source]
        source: IdError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This device's id (its MQTT client id); defaults to the host name.
    pub device_id: Option<DeviceId>,
    pub state_dir: PathBuf,
    /// The trust root the device was provisioned with (`trust.json`).
    pub trust: PathBuf,
    /// The control plane's base URL. Release images name their registry
    /// themselves (`<server host:port>/<repo>`); an `http://` server here
    /// makes its host reachable over plain HTTP even when not on loopback.
    pub server: Option<String>,
    /// The MQTT broker: `mqtt://host:port` (TLS is not supported yet),
    /// parsed when the file (or `FLEET_AGENT_BROKER`) is read.
    pub broker: BrokerAddr,
    /// The device's MQTT password (its user name is the device id).
    pub token: Secret,
    /// A bootstrap token (`fleetctl enroll create`): on a start without an
    /// identity under `<state_dir>/identity/` (or with an expired one), the
    /// agent enrolls at `server` with it first (protocol/SECURITY.md).
    pub enroll_token: Secret,
    /// Labels reported to the server with the device info.
    pub labels: BTreeMap<String, String>,
    /// Seconds between periodic status reports.
    pub status_interval_secs: u64,
    /// Seconds between checks that every committed app's container runs.
    pub supervise_interval_secs: u64,
    /// Seconds between telemetry messages (at least 1).
    pub telemetry_interval_secs: u64,
    /// Where the host's `/` is for sensor reads (`/proc`, `/sys`, `/etc`)
    /// only; containers, cgroups and the store stay on the real paths.
    pub host_root: PathBuf,
    pub runtime: RuntimeSection,
    pub deploy: DeploySection,
    pub store: StoreSection,
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// `runtime = "crun"` or a `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeSection {
    pub kind: RuntimeKind,
    pub binary: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

/// The table form of [`RuntimeSection`].
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RuntimeTable {
    kind: RuntimeKind,
    binary: Option<PathBuf>,
    root: Option<PathBuf>,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
}

impl Default for RuntimeTable {
    fn default() -> Self {
        let d = RuntimeSection::default();
        RuntimeTable {
            kind: d.kind,
            binary: d.binary,
            root: d.root,
            backoff_initial_ms: d.backoff_initial_ms,
            backoff_max_ms: d.backoff_max_ms,
        }
    }
}

impl<'de> Deserialize<'de> for RuntimeSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RuntimeSection;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"crun\", \"runc\" or a [runtime] table")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuntimeSection, E> {
                let kind =
                    RuntimeKind::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                Ok(RuntimeSection {
                    kind,
                    ..RuntimeSection::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RuntimeSection, A::Error> {
                let t =
                    RuntimeTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RuntimeSection {
                    kind: t.kind,
                    binary: t.binary,
                    root: t.root,
                    backoff_initial_ms: t.backoff_initial_ms,
                    backoff_max_ms: t.backoff_max_ms,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
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
    /// Whether an update asks the registry for byte-level deltas of its
    /// changed layers against the running release's (protocol/DELTA.md);
    /// only Fleet's content endpoint serves them, others cost one HEAD per
    /// changed layer.
    pub deltas: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: None,
            state_dir: PathBuf::from("/var/lib/fleet-agent"),
            trust: PathBuf::from("/etc/fleet-agent/trust.json"),
            server: None,
            broker: BrokerAddr {
                host: "127.0.0.1".to_owned(),
                port: 1883,
                tls: false,
            },
            token: Secret::default(),
            enroll_token: Secret::default(),
            labels: BTreeMap::new(),
            status_interval_secs: 30,
            supervise_interval_secs: 10,
            telemetry_interval_secs: 60,
            host_root: PathBuf::from("/"),
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
            deltas: true,
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
        let env = Overrides::new(var);
        env.try_set("FLEET_AGENT_DEVICE_ID", &mut self.device_id, |v| {
            v.parse().map(Some)
        })?;
        env.set("FLEET_AGENT_STATE_DIR", &mut self.state_dir, PathBuf::from);
        env.set("FLEET_AGENT_TRUST", &mut self.trust, PathBuf::from);
        env.set("FLEET_AGENT_SERVER", &mut self.server, Some);
        env.parse("FLEET_AGENT_BROKER", &mut self.broker)?;
        env.set("FLEET_AGENT_TOKEN", &mut self.token, Secret);
        env.set("FLEET_AGENT_ENROLL_TOKEN", &mut self.enroll_token, Secret);
        env.parse(
            "FLEET_AGENT_STATUS_INTERVAL_SECS",
            &mut self.status_interval_secs,
        )?;
        env.parse(
            "FLEET_AGENT_TELEMETRY_INTERVAL_SECS",
            &mut self.telemetry_interval_secs,
        )?;
        env.set("FLEET_AGENT_HOST_ROOT", &mut self.host_root, PathBuf::from);
        env.try_set("FLEET_AGENT_RUNTIME", &mut self.runtime.kind, |v| match v {
            "crun" => Ok(RuntimeKind::Crun),
            "runc" => Ok(RuntimeKind::Runc),
            _ => Err("expected crun or runc"),
        })?;
        env.set(
            "FLEET_AGENT_RUNTIME_BINARY",
            &mut self.runtime.binary,
            |v| Some(v.into()),
        );
        env.set("FLEET_AGENT_RUNTIME_ROOT", &mut self.runtime.root, |v| {
            Some(v.into())
        });
        env.parse(
            "FLEET_AGENT_PROBATION_SECS",
            &mut self.deploy.probation_secs,
        )?;
        env.parse(
            "FLEET_AGENT_CRASH_LOOP_RESTARTS",
            &mut self.deploy.crash_loop_restarts,
        )?;
        env.parse("FLEET_AGENT_RESERVE_BYTES", &mut self.store.reserve_bytes)?;
        env.parse("FLEET_AGENT_DELTAS", &mut self.store.deltas)?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason| Err(ConfigError::Invalid { field, reason });
        if self.state_dir.as_os_str().is_empty() {
            return invalid("state_dir", "is empty");
        }
        if self.status_interval_secs == 0
            || self.supervise_interval_secs == 0
            || self.telemetry_interval_secs == 0
        {
            return invalid(
                "status_interval_secs, supervise_interval_secs and telemetry_interval_secs",
                "must be at least 1",
            );
        }
        if self.host_root.as_os_str().is_empty() {
            return invalid("host_root", "is empty");
        }
        if let Some(server) = &self.server
            && !(server.starts_with("http://") || server.starts_with("https://"))
        {
            return Err(ConfigError::ServerUrl {
                url: server.clone(),
            });
        }
        if !self.enroll_token.expose().is_empty() {
            if fleet_protocol::enroll::EnrollToken::parse(self.enroll_token.expose()).is_err() {
                return invalid(
                    "enroll_token",
                    "is not an enrollment token (fleet-enroll_<64 hex>_<64 hex>, as `fleetctl enroll create` prints it)",
                );
            }
            if !self
                .server
                .as_deref()
                .is_some_and(|s| s.starts_with("https://"))
            {
                return invalid(
                    "enroll_token",
                    "needs `server` set to the server's https:// URL",
                );
            }
        }
        if self.deploy.crash_loop_restarts == 0 {
            return invalid("deploy.crash_loop_restarts", "must be at least 1");
        }
        if self.runtime.backoff_initial_ms == 0
            || self.runtime.backoff_max_ms < self.runtime.backoff_initial_ms
        {
            return invalid(
                "runtime.backoff_initial_ms",
                "must be > 0 and <= backoff_max_ms",
            );
        }
        Ok(())
    }

    /// The configured device id, or the host name.
    pub fn device_id(&self) -> Result<DeviceId, ConfigError> {
        if let Some(id) = &self.device_id {
            return Ok(id.clone());
        }
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        DeviceId::new(host.trim()).map_err(|source| ConfigError::HostName {
            host: host.trim().to_owned(),
            source,
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
        config.host_root = self.host_root.clone();
        // This binary, as the CSV fallback's ld.so cache hook (used only
        // when it is found under the host root, i.e. on a real device).
        config.gpu_hook = std::env::current_exe().ok();
        if let Ok(device) = self.device_id() {
            config.cgroup_parent = format!("/fleet/{device}");
        }
        config.backoff = BackoffConfig {
            initial: Duration::from_millis(self.runtime.backoff_initial_ms),
            max: Duration::from_millis(self.runtime.backoff_max_ms),
            ..BackoffConfig::default()
        };
        config
    }

    /// The `host:port` of an `http://` server, which the registry client
    /// then reaches over plain HTTP.
    /// The `host:port` of an `https://` server (its content endpoint is
    /// reached over TLS even on loopback).
    pub fn https_server(&self) -> Option<String> {
        let rest = self.server.as_deref()?.strip_prefix("https://")?;
        let host = rest.split('/').next().unwrap_or(rest);
        (!host.is_empty()).then(|| host.to_owned())
    }

    pub fn plain_http_server(&self) -> Option<String> {
        let rest = self.server.as_deref()?.strip_prefix("http://")?;
        let host = rest.split('/').next().unwrap_or(rest);
        (!host.is_empty()).then(|| host.to_owned())
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            reserve_bytes: self.store.reserve_bytes,
            cache_bytes: self.store.cache_bytes,
        }
    }
}

#[cfg(test)]
mod tests;
