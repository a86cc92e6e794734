//! rustls server configurations for the broker and the HTTP listener.
//!
//! Both ask for a client certificate and verify any that is presented
//! against the fleet CA (chain, validity, client-auth usage), but let a
//! client without one finish the handshake: the server's own MQTT account
//! and operators (bearer tokens) have none. What a connection may do is then
//! decided from the verified certificate, never from a name the client
//! claims: the broker refuses a device CONNECT without one, the API refuses
//! device routes without one.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{FleetCa, PeerCert, PkiError, ServerIdentity, peer_device};

/// The crypto provider everywhere in Fleet (ring, as the agent uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `identity`, verifying client
/// certificates against `ca`. TLS 1.3, and 1.2 for peers that need it.
pub fn server_config(
    ca: &FleetCa,
    identity: &ServerIdentity,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, PkiError> {
    let tls = |e: &dyn std::fmt::Display| PkiError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).map_err(|e| tls(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The device a TLS connection authenticated as, if it presented a
/// certificate (already verified by the handshake).
pub fn peer_of(certs: Option<&[CertificateDer<'_>]>) -> Option<Result<PeerCert, PkiError>> {
    certs.and_then(|c| c.first()).map(|leaf| peer_device(leaf))
}
