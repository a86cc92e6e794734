use std::sync::Arc;

use fleet_agent::link::tls::{ClientIdentity, client_config};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const NOW: u64 = 1_800_000_000;

fn device(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap()
}

/// A device key and a CSR asking for a name the CA must ignore.
fn csr(asks_for: &str) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![asks_for.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, asks_for.to_owned());
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn identity(ca: &FleetCa, id: &str, lifetime: u64, now: u64) -> ClientIdentity {
    let (key, csr) = csr(id);
    let cert = ca
        .sign_device_csr(&csr, &device(id), lifetime, now)
        .unwrap();
    ClientIdentity {
        cert_pem: cert.pem,
        key_pem: key.serialize_pem(),
    }
}

#[test]
fn the_ca_is_made_once_with_a_private_key_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(dir.path(), NOW).unwrap();
    let again = FleetCa::open_or_create(dir.path(), NOW + 10).unwrap();
    assert_eq!(ca.fingerprint(), again.fingerprint());
    assert_eq!(ca.not_after(), NOW + CA_LIFETIME_SECS);
    assert!(!ca.expires_soon(NOW));
    assert!(ca.expires_soon(NOW + CA_LIFETIME_SECS - 100 * 24 * 3600));
    let key = dir.path().join(CA_KEY);
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = FleetCa::open_or_create(dir.path(), NOW).unwrap_err();
    assert!(
        matches!(err, PkiError::KeyMode { mode: 0o644, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("PRIVATE KEY"));
}

#[test]
fn a_ca_with_the_wrong_key_or_expired_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    FleetCa::open_or_create(a.path(), NOW).unwrap();
    FleetCa::open_or_create(b.path(), NOW).unwrap();
    let err = FleetCa::load(&a.path().join(CA_CERT), &b.path().join(CA_KEY), NOW).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = FleetCa::load(
        &a.path().join(CA_CERT),
        &a.path().join(CA_KEY),
        NOW + CA_LIFETIME_SECS + 1,
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
}

#[test]
fn a_device_certificate_carries_the_ca_chosen_identity_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(dir.path(), NOW).unwrap();
    let (_key, csr) = csr("fleet-server");
    let cert = ca
        .sign_device_csr(&csr, &device("cam-01"), 3600, NOW)
        .unwrap();
    assert_eq!(cert.not_after, NOW + 3600);
    let der = CertificateDer::pem_slice_iter_first(&cert.pem);
    let peer = peer_device(&der).unwrap();
    assert_eq!(peer.device, device("cam-01"));
    assert_eq!(peer.serial, cert.serial);
    assert_eq!(peer.not_after, NOW + 3600);
    // Never past the CA.
    let long = ca
        .sign_device_csr(&csr, &device("cam-01"), 2 * CA_LIFETIME_SECS, NOW)
        .unwrap();
    assert_eq!(long.not_after, ca.not_after());
}

#[test]
fn bad_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(dir.path(), NOW).unwrap();
    let d = device("cam-01");
    let (_key, good) = csr("cam-01");
    // A flipped byte in the signed body breaks the CSR's self-signature.
    let mut der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let mid = der.len() / 2;
    der[mid] ^= 1;
    let tampered = pem("CERTIFICATE REQUEST", &der);
    for bad in ["", "not a csr", &tampered, &"x".repeat(MAX_CSR_BYTES + 1)] {
        let err = ca.sign_device_csr(bad, &d, 3600, NOW).unwrap_err();
        assert!(
            matches!(err, PkiError::BadCsr(_) | PkiError::CsrTooLarge),
            "{err}"
        );
    }
}

#[test]
fn a_server_certificate_is_not_a_device_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FleetCa::open_or_create(dir.path(), NOW).unwrap();
    let server = ca.issue_server(&["localhost".into()], NOW).unwrap();
    let err = peer_device(&server.chain[0]).unwrap_err();
    assert!(err.to_string().contains("common name") || err.to_string().contains("device"));
}

trait FirstPem {
    fn pem_slice_iter_first(pem: &str) -> CertificateDer<'static>;
}

impl FirstPem for CertificateDer<'static> {
    fn pem_slice_iter_first(pem: &str) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}

/// Runs one TLS handshake over an in-memory pipe; returns what the server
/// saw of the client (its device identity) or the error.
async fn handshake(
    ca: &FleetCa,
    server_ca_for_client: &str,
    client: Option<&ClientIdentity>,
) -> Result<Option<PeerCert>, String> {
    let identity = ca.issue_server(&["localhost".into()], now()).unwrap();
    let server = tls::server_config(ca, &identity, &[]).unwrap();
    let client = client_config(server_ca_for_client, false, client).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = async move {
        let mut s = tokio_rustls::TlsAcceptor::from(server)
            .accept(a)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls::peer_of(s.get_ref().1.peer_certificates())
            .transpose()
            .map_err(|e| e.to_string())?;
        s.write_all(b"ok").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let connect = async move {
        let mut c = tokio_rustls::TlsConnector::from(Arc::clone(&client))
            .connect(ServerName::try_from("localhost").unwrap(), b)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let (server, client) = tokio::join!(accept, connect);
    client?;
    server
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tls_handshakes_verify_both_sides_against_the_fleet_ca() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = FleetCa::open_or_create(d1.path(), now()).unwrap();
    let other = FleetCa::open_or_create(d2.path(), now()).unwrap();

    // A device certificate: the server sees the device.
    let cam = identity(&ca, "cam-01", 3600, now());
    let peer = handshake(&ca, ca.cert_pem(), Some(&cam)).await.unwrap();
    assert_eq!(peer.unwrap().device, device("cam-01"));
    // No certificate: allowed at the TLS layer, no identity.
    assert_eq!(handshake(&ca, ca.cert_pem(), None).await.unwrap(), None);
    // A certificate from another CA: refused by the handshake.
    let stranger = identity(&other, "cam-01", 3600, now());
    let err = handshake(&ca, ca.cert_pem(), Some(&stranger))
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("UnknownCA"),
        "{err}"
    );
    // An expired certificate: refused, and the reason says so.
    let expired = identity(&ca, "cam-01", 60, now() - 3600);
    let err = handshake(&ca, ca.cert_pem(), Some(&expired))
        .await
        .unwrap_err();
    assert!(err.contains("Expired"), "{err}");
    // A client that trusts another CA refuses the server.
    let err = handshake(&ca, other.cert_pem(), None).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("UnknownCA"),
        "{err}"
    );
}
