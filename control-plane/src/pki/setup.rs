//! What the server builds from `[tls]` at start: the CA, its TLS
//! configurations, the revoked set.

use std::path::Path;
use std::sync::Arc;

use fleet_agent::link::tls::{ClientIdentity, client_config};

use super::{FleetCa, PkiError, Revoked, tls};
use crate::config::TlsConfig;

/// Transport security of a running server.
pub struct Security {
    pub ca: Arc<FleetCa>,
    /// The HTTP listener's configuration (ALPN http/1.1).
    pub http: Arc<rustls::ServerConfig>,
    /// The embedded broker's listener configuration.
    pub broker: Arc<rustls::ServerConfig>,
    /// What the server's own MQTT link connects to the embedded broker
    /// with (trusting the CA; the link logs in with its internal account).
    pub link: Arc<rustls::ClientConfig>,
    /// The same for an external broker (Mosquitto set up by
    /// `fleet-server mosquitto-config`): with the server's own client
    /// certificate, issued at every start.
    pub link_external: Arc<rustls::ClientConfig>,
    pub revoked: Revoked,
    pub device_cert_lifetime_secs: u64,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Loads or makes the CA and issues the server certificate; `None` (and
    /// a warning, at every start) with `insecure`.
    pub fn from_config(
        config: &TlsConfig,
        data_dir: &Path,
        now: u64,
    ) -> Result<Option<Arc<Self>>, PkiError> {
        if config.insecure {
            tracing::warn!(
                "[tls] insecure = true: MQTT and HTTP are plain TCP and devices authenticate with tokens; anyone on the network can read and forge traffic"
            );
            return Ok(None);
        }
        let ca = match (&config.ca_cert, &config.ca_key) {
            (Some(cert), Some(key)) => FleetCa::load(cert, key, now)?,
            _ => FleetCa::open_or_create(&data_dir.join("pki"), now)?,
        };
        if ca.expires_soon(now) {
            tracing::warn!(
                not_after = ca.not_after(),
                days_left = ca.not_after().saturating_sub(now) / 86_400,
                "the fleet CA expires within a year: plan its replacement (devices must receive the new CA before the old one expires)"
            );
        }
        let identity = ca.issue_server(&config.names, now)?;
        let http = tls::server_config(&ca, &identity, &[b"http/1.1"])?;
        let broker = tls::server_config(&ca, &identity, &[])?;
        let tls_err = |e: fleet_agent::link::tls::TlsError| PkiError::Tls(e.to_string());
        let link = client_config(ca.cert_pem(), false, None).map_err(tls_err)?;
        let own = ca.issue_server_client(now)?;
        let own = ClientIdentity {
            cert_pem: own.chain_pem(),
            key_pem: own.key_pem(),
        };
        let link_external = client_config(ca.cert_pem(), false, Some(&own)).map_err(tls_err)?;
        tracing::info!(
            fingerprint = %ca.fingerprint(),
            names = ?config.names,
            "TLS on (fleet CA)"
        );
        Ok(Some(Arc::new(Self {
            ca: Arc::new(ca),
            http,
            broker,
            link,
            link_external,
            revoked: Revoked::default(),
            device_cert_lifetime_secs: config.device_cert_lifetime_secs(),
        })))
    }
}
