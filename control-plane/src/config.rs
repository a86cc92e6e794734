//! `fleet-server` configuration: one serde tree read from TOML, then
//! environment overrides (`FLEET_*`), then validated.
//!
//! Every field has a default that works out of the box next to a key
//! directory made by `fleetctl keys init` (`fleet-keys/`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_protocol::TopicScheme;
use fleet_protocol::broker::BrokerAddr;
use fleet_protocol::env::{EnvError, Overrides};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("config: {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the store (sled) and content live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub broker: BrokerConfig,
    pub director: DirectorConfig,
    pub desired: DesiredConfig,
    pub telemetry: TelemetryConfig,
    pub content: ContentConfig,
    pub prometheus: PrometheusConfig,
    pub tls: TlsConfig,
    /// `[enroll]`: rate limits of the enrollment endpoints.
    pub enroll: crate::enroll::EnrollConfig,
}

/// Transport security (protocol/SECURITY.md): the fleet CA, the server's
/// TLS certificate, device certificates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Plain TCP for MQTT and HTTP, devices authenticated by tokens; logs a
    /// warning at every start. Environment: `FLEET_TLS_INSECURE`.
    pub insecure: bool,
    /// DNS names and IP addresses in the server's certificate (what devices
    /// and fleetctl connect to). Environment: `FLEET_TLS_NAMES`
    /// (comma-separated).
    pub names: Vec<String>,
    /// An operator-provided CA (PEM certificate and PKCS#8 key, the key
    /// 0600); both or neither. Unset: `<data_dir>/pki/`, made on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of a device certificate (days, 1..=397); devices renew at
    /// two thirds of it.
    pub device_cert_days: u64,
    /// Lifetime of a device certificate in seconds, overriding
    /// `device_cert_days` when set (for tests of rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_cert_secs: Option<u64>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            insecure: false,
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            ca_cert: None,
            ca_key: None,
            device_cert_days: 30,
            device_cert_secs: None,
        }
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason| ConfigError::Invalid { field, reason };
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err(invalid(
                "tls.ca_cert",
                "tls.ca_cert and tls.ca_key are given together or not at all",
            ));
        }
        if !(1..=397).contains(&self.device_cert_days) {
            return Err(invalid("tls.device_cert_days", "must be 1 to 397"));
        }
        if self.device_cert_secs.is_some_and(|s| s < 30) {
            return Err(invalid("tls.device_cert_secs", "must be at least 30"));
        }
        if !self.insecure && self.names.is_empty() {
            return Err(invalid(
                "tls.names",
                "the server certificate needs at least one name",
            ));
        }
        Ok(())
    }

    /// The lifetime of a device certificate, in seconds.
    pub fn device_cert_lifetime_secs(&self) -> u64 {
        self.device_cert_secs.unwrap_or(self.device_cert_days * DAY)
    }
}

/// The Prometheus that PromQL gates query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Its base URL, e.g. `http://127.0.0.1:9090`. Unset: rollouts with a
    /// PromQL gate are refused. Environment: `FLEET_PROMETHEUS_URL` (empty
    /// unsets it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds one query may take before it counts as inconclusive.
    pub timeout_secs: u64,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// A layer delta is served only when smaller than this fraction of the
    /// whole layer blob (0 < ratio <= 1); otherwise devices pull the layer.
    pub delta_ratio: f64,
    /// Layer delta computations running at once (each takes a core and
    /// tens of MB); more wait their turn. Unset: half the cores, at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_max_concurrent: Option<usize>,
    /// How long a failed delta computation is remembered before a request
    /// or a rollout may try it again (seconds).
    pub delta_retry_failed_secs: u64,
    /// Serve images (`/v2/`) to anyone who can reach the server. Off: a
    /// device certificate or an API token (any role) is needed, when TLS is
    /// on (without TLS devices have no certificate to show, and pulls are
    /// anonymous). Environment: `FLEET_CONTENT_ANONYMOUS_PULL`.
    pub anonymous_pull: bool,
}

/// Most delta computations a server may run at once.
pub const MAX_DELTA_CONCURRENT: usize = 64;

impl ContentConfig {
    /// [`ContentConfig::delta_max_concurrent`], or its default.
    pub fn delta_max_concurrent(&self) -> usize {
        self.delta_max_concurrent.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        })
    }
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            delta_ratio: fleet_protocol::delta::DEFAULT_RATIO,
            delta_max_concurrent: None,
            delta_retry_failed_secs: 60,
            anonymous_pull: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the REST API (and the content endpoint `/v2`, and
    /// `/metrics`).
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `/metrics` (no token). Environment:
    /// `FLEET_HTTP_METRICS`.
    pub metrics: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How often the devices' latest state (status, presence, telemetry) is
    /// written to the store, in one batch (seconds). It is also written at
    /// shutdown. Environment: `FLEET_TELEMETRY_FLUSH_SECS`.
    pub flush_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { flush_secs: 5 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run the embedded MQTT broker.
    pub embedded: bool,
    /// Where the embedded broker listens.
    pub listen: SocketAddr,
    /// An external broker (`mqtt://host:1883`; TLS is not supported yet),
    /// parsed when the file or `FLEET_BROKER_URL` is read; with it,
    /// `embedded` must be false.
    pub url: Option<BrokerAddr>,
    /// MQTT topic prefix, checked when the file or `FLEET_TOPIC_PREFIX` is read.
    pub topic_prefix: TopicScheme,
    /// The server's MQTT client id.
    pub client_id: String,
    /// The server's MQTT password on an external broker (the embedded one
    /// makes its own at every start). Environment: `FLEET_BROKER_PASSWORD`.
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorConfig {
    /// The director key file (`fleetctl keys init` makes `director.key`).
    pub key: PathBuf,
    /// The devices' trust root; releases are verified against its release role.
    pub trust: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DesiredConfig {
    /// How long a signed desired state is valid (seconds).
    pub lifetime_secs: u64,
    /// Re-sign a desired state this long before it expires (seconds).
    pub renew_margin_secs: u64,
    /// How often the renewal task looks for states to renew (seconds).
    pub renew_check_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("fleet-data"),
            http: HttpConfig::default(),
            broker: BrokerConfig::default(),
            director: DirectorConfig::default(),
            desired: DesiredConfig::default(),
            telemetry: TelemetryConfig::default(),
            content: ContentConfig::default(),
            prometheus: PrometheusConfig::default(),
            tls: TlsConfig::default(),
            enroll: Default::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics: true,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            url: None,
            topic_prefix: TopicScheme::default(),
            client_id: "fleet-server".to_owned(),
            password: None,
        }
    }
}

impl Default for DirectorConfig {
    fn default() -> Self {
        Self {
            key: PathBuf::from("fleet-keys/director.key"),
            trust: PathBuf::from("fleet-keys/trust.json"),
        }
    }
}

const DAY: u64 = 86_400;

impl Default for DesiredConfig {
    fn default() -> Self {
        Self {
            lifetime_secs: 7 * DAY,
            renew_margin_secs: 2 * DAY,
            renew_check_secs: 60,
        }
    }
}

impl Config {
    /// Reads `path` (if given) over the defaults, applies `FLEET_*` overrides
    /// from `env`, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies the environment overrides. Recognised variables:
    /// `FLEET_DATA_DIR`, `FLEET_HTTP_LISTEN`, `FLEET_BROKER_EMBEDDED`,
    /// `FLEET_BROKER_LISTEN`, `FLEET_BROKER_URL`, `FLEET_TOPIC_PREFIX`,
    /// `FLEET_DIRECTOR_KEY`, `FLEET_TRUST`, `FLEET_DESIRED_LIFETIME_SECS`,
    /// `FLEET_DESIRED_RENEW_MARGIN_SECS`, `FLEET_DESIRED_RENEW_CHECK_SECS`,
    /// `FLEET_HTTP_METRICS`, `FLEET_TELEMETRY_FLUSH_SECS`,
    /// `FLEET_BROKER_PASSWORD`, `FLEET_PROMETHEUS_URL`,
    /// `FLEET_TLS_INSECURE`, `FLEET_TLS_NAMES`, `FLEET_CONTENT_ANONYMOUS_PULL`.
    /// An empty
    /// `FLEET_BROKER_URL`, `FLEET_BROKER_PASSWORD` or
    /// `FLEET_PROMETHEUS_URL` unsets it.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let vars: HashMap<String, String> = env.into_iter().collect();
        let env = Overrides::new(|k| vars.get(k).cloned());
        let non_empty = |v: String| Some(v).filter(|v| !v.is_empty());
        env.set("FLEET_DATA_DIR", &mut self.data_dir, PathBuf::from);
        env.parse("FLEET_HTTP_LISTEN", &mut self.http.listen)?;
        env.parse("FLEET_HTTP_METRICS", &mut self.http.metrics)?;
        env.parse("FLEET_TELEMETRY_FLUSH_SECS", &mut self.telemetry.flush_secs)?;
        env.parse("FLEET_BROKER_EMBEDDED", &mut self.broker.embedded)?;
        env.parse("FLEET_BROKER_LISTEN", &mut self.broker.listen)?;
        env.try_set("FLEET_BROKER_URL", &mut self.broker.url, |v| match v {
            "" => Ok(None),
            v => BrokerAddr::parse(v).map(Some),
        })?;
        env.set(
            "FLEET_BROKER_PASSWORD",
            &mut self.broker.password,
            non_empty,
        );
        env.parse("FLEET_TOPIC_PREFIX", &mut self.broker.topic_prefix)?;
        env.set("FLEET_DIRECTOR_KEY", &mut self.director.key, PathBuf::from);
        env.set("FLEET_TRUST", &mut self.director.trust, PathBuf::from);
        env.parse(
            "FLEET_DESIRED_LIFETIME_SECS",
            &mut self.desired.lifetime_secs,
        )?;
        env.parse(
            "FLEET_DESIRED_RENEW_MARGIN_SECS",
            &mut self.desired.renew_margin_secs,
        )?;
        env.parse(
            "FLEET_DESIRED_RENEW_CHECK_SECS",
            &mut self.desired.renew_check_secs,
        )?;
        env.set("FLEET_PROMETHEUS_URL", &mut self.prometheus.url, non_empty);
        env.parse("FLEET_TLS_INSECURE", &mut self.tls.insecure)?;
        env.parse(
            "FLEET_CONTENT_ANONYMOUS_PULL",
            &mut self.content.anonymous_pull,
        )?;
        env.set("FLEET_TLS_NAMES", &mut self.tls.names, |v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Ok(())
    }

    /// Checks what can be checked without touching files (the key and trust
    /// files are loaded, with their own errors, when the server starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason| ConfigError::Invalid { field, reason };
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.desired.lifetime_secs == 0 {
            return Err(invalid("desired.lifetime_secs", "must be greater than 0"));
        }
        if self.desired.renew_margin_secs >= self.desired.lifetime_secs {
            return Err(invalid(
                "desired.renew_margin_secs",
                "must be less than desired.lifetime_secs, or every state is renewed at once",
            ));
        }
        if self.desired.renew_check_secs == 0 {
            return Err(invalid(
                "desired.renew_check_secs",
                "must be greater than 0",
            ));
        }
        let ratio = self.content.delta_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(invalid(
                "content.delta_ratio",
                "must be greater than 0 and at most 1",
            ));
        }
        if let Some(n) = self.content.delta_max_concurrent
            && !(1..=MAX_DELTA_CONCURRENT).contains(&n)
        {
            return Err(invalid(
                "content.delta_max_concurrent",
                // MAX_DELTA_CONCURRENT
                "must be 1 to 64 (unset: half the cores)",
            ));
        }
        if self.content.delta_retry_failed_secs == 0 {
            return Err(invalid(
                "content.delta_retry_failed_secs",
                "must be greater than 0 (a failed delta would be recomputed at every request)",
            ));
        }
        if self.telemetry.flush_secs == 0 {
            return Err(invalid("telemetry.flush_secs", "must be greater than 0"));
        }
        if self.broker.embedded && self.broker.url.is_some() {
            return Err(invalid(
                "broker.url",
                "an external broker URL is set while broker.embedded = true; set embedded = false to use it",
            ));
        }
        if !self.broker.embedded && self.broker.url.is_none() {
            return Err(invalid(
                "broker.url",
                "must be set when broker.embedded = false",
            ));
        }
        if self.broker.client_id.is_empty() {
            return Err(invalid("broker.client_id", "must not be empty"));
        }
        if let Some(url) = &self.prometheus.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "prometheus.url",
                "must be an http:// or https:// URL, e.g. http://127.0.0.1:9090",
            ));
        }
        if self.prometheus.timeout_secs == 0 {
            return Err(invalid("prometheus.timeout_secs", "must be greater than 0"));
        }
        self.enroll
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "enroll",
                reason,
            })?;
        self.tls.validate()
    }

    /// The store's directory.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The fleet CA certificate devices and fleetctl trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.tls
            .ca_cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki").join("ca.crt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_an_empty_file() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::from_toml("").unwrap());
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert!(c.broker.embedded);
        assert_eq!(c.desired.lifetime_secs, 7 * DAY);
        assert!(c.content.delta_max_concurrent() >= 1);
        let c = Config::from_toml("[content]\ndelta_max_concurrent = 3\n").unwrap();
        assert_eq!(c.content.delta_max_concurrent(), 3);
    }

    #[test]
    fn file_values_then_env_overrides_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/fleet\"\n[http]\nlisten = \"0.0.0.0:9000\"\n[desired]\nlifetime_secs = 7200\nrenew_margin_secs = 600\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("FLEET_HTTP_LISTEN", "127.0.0.1:9001"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/fleet"));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.desired.lifetime_secs, 7200);
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[http]\nlisten = \"nope\"", &[], "not valid"),
            ("unknown = 1", &[], "unknown field"),
            (
                "[desired]\nlifetime_secs = 10\nrenew_margin_secs = 10",
                &[],
                "renew_margin_secs",
            ),
            ("[broker]\nurl = \"mqtt://x:1883\"", &[], "embedded"),
            (
                "[prometheus]\nurl = \"127.0.0.1:9090\"",
                &[],
                "prometheus.url",
            ),
            (
                "",
                &[("FLEET_PROMETHEUS_URL", "localhost:9090")],
                "prometheus.url",
            ),
            (
                "[prometheus]\ntimeout_secs = 0",
                &[],
                "prometheus.timeout_secs",
            ),
            // The URL is parsed as the file is read: TOML names the line.
            (
                "[broker]\nembedded = false\nurl = \"http://x\"",
                &[],
                "url = \"http://x\"",
            ),
            ("[broker]\nembedded = false", &[], "broker.url"),
            (
                "[broker]\nembedded = false",
                &[("FLEET_BROKER_URL", "ftp://x")],
                "FLEET_BROKER_URL",
            ),
            (
                "",
                &[("FLEET_DESIRED_LIFETIME_SECS", "soon")],
                "FLEET_DESIRED_LIFETIME_SECS",
            ),
            ("[broker]\ntopic_prefix = \"a/+/b\"", &[], "topic_prefix"),
            (
                "[content]\ndelta_max_concurrent = 0",
                &[],
                "content.delta_max_concurrent",
            ),
            (
                "[content]\ndelta_retry_failed_secs = 0",
                &[],
                "content.delta_retry_failed_secs",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (toml, vars, needle)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            let err = Config::load(Some(&path), env(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "case {i}: {err}");
        }
    }

    #[test]
    fn every_variable_overrides_its_field() {
        let mut c = Config::default();
        c.broker.url = Some(BrokerAddr::parse("mqtt://file:1883").unwrap());
        c.apply_env(env(&[
            ("FLEET_DATA_DIR", "/d"),
            ("FLEET_HTTP_LISTEN", "0.0.0.0:1"),
            ("FLEET_HTTP_METRICS", "false"),
            ("FLEET_TELEMETRY_FLUSH_SECS", "9"),
            ("FLEET_BROKER_EMBEDDED", "false"),
            ("FLEET_BROKER_LISTEN", "0.0.0.0:2"),
            ("FLEET_BROKER_URL", ""),
            ("FLEET_BROKER_PASSWORD", "pw"),
            ("FLEET_TOPIC_PREFIX", "t/v9"),
            ("FLEET_DIRECTOR_KEY", "/k"),
            ("FLEET_TRUST", "/t"),
            ("FLEET_DESIRED_LIFETIME_SECS", "100"),
            ("FLEET_DESIRED_RENEW_MARGIN_SECS", "10"),
            ("FLEET_DESIRED_RENEW_CHECK_SECS", "3"),
        ]))
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:1");
        assert!(!c.http.metrics);
        assert_eq!(c.telemetry.flush_secs, 9);
        assert!(!c.broker.embedded);
        assert_eq!(c.broker.listen.to_string(), "0.0.0.0:2");
        assert_eq!(c.broker.url, None, "an empty URL unsets the file's");
        assert_eq!(c.broker.password.as_deref(), Some("pw"));
        assert_eq!(c.broker.topic_prefix.prefix(), "t/v9");
        assert_eq!(c.director.key, PathBuf::from("/k"));
        assert_eq!(c.director.trust, PathBuf::from("/t"));
        assert_eq!(
            (
                c.desired.lifetime_secs,
                c.desired.renew_margin_secs,
                c.desired.renew_check_secs
            ),
            (100, 10, 3)
        );
        let err = c
            .apply_env(env(&[("FLEET_BROKER_EMBEDDED", "yes")]))
            .unwrap_err();
        assert!(matches!(&err, ConfigError::Env(e) if e.var == "FLEET_BROKER_EMBEDDED"));
        assert!(
            err.to_string().contains("FLEET_BROKER_EMBEDDED=\"yes\""),
            "{err}"
        );
    }
}
