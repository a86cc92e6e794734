//! TLS client configurations for the fleet CA (protocol/SECURITY.md).
//!
//! Everything a Fleet component connects to with TLS is verified against
//! the fleet CA alone (the broker) or the CA besides the public web roots
//! (HTTP, where images may come from public registries); a device presents
//! its certificate when it has one.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the CA certificate is not valid PEM: {0}")]
    Ca(String),
    #[error("the client certificate is not valid PEM: {0}")]
    Cert(String),
    #[error("the client key is not a valid PEM private key: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A certificate chain and its key, as PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The CA certificates in `pem`.
pub fn ca_roots(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Ca("no certificate".into()));
    }
    Ok(certs)
}

/// A client configuration trusting the CA in `ca_pem` (and, with
/// `web_roots`, the public web roots too), presenting `identity` if given.
pub fn client_config(
    ca_pem: &str,
    web_roots: bool,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if web_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for ca in ca_roots(ca_pem)? {
        roots.add(ca)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Cert(e.to_string()))?;
            if chain.is_empty() {
                return Err(TlsError::Cert("no certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .map_err(|e| TlsError::Key(e.to_string()))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}
