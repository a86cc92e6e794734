//! The fleet CA: the root of transport identity.
//!
//! The server makes a CA on its first start (`<data>/pki/ca.crt`, and
//! `ca.key` 0600), or loads one the operator provides. The CA signs:
//!
//! - the server's own TLS certificate, issued fresh at every start for the
//!   configured names (in memory only: devices trust the CA, not a server
//!   certificate, so nothing on the devices changes when it is reissued);
//! - device certificates, from a CSR the device made with a key that never
//!   leaves it. The identity is the device id, in the subject's common name
//!   and in a `urn:fleet:device:<id>` URI name; anything the CSR asks for
//!   (names, extensions, validity) is ignored: the CA decides all of it.
//!
//! Keys are ECDSA P-256 (the CSR may also carry an Ed25519 key). Transport
//! identity is separate from the release trust root: nothing signed here
//! can make a device run an image (see DESIGN.md, "Trust model").

pub mod mosquitto;
pub mod revoked;
pub mod setup;
pub mod tls;

pub use revoked::Revoked;
pub use setup::Security;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use fleet_protocol::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};

/// How long a CA the server makes is valid: 10 years.
pub const CA_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;
/// Default lifetime of a device certificate: 30 days.
pub const DEVICE_CERT_LIFETIME_SECS: u64 = 30 * 24 * 3600;
/// Lifetime of the server's TLS certificate (reissued at every start).
pub const SERVER_CERT_LIFETIME_SECS: u64 = 397 * 24 * 3600;
/// The CA's expiry is warned about this long before it happens.
pub const CA_EXPIRY_WARNING_SECS: u64 = 365 * 24 * 3600;
/// Certificates are valid from a little before they are made, so a device
/// whose clock lags by minutes does not refuse a fresh one.
const BACKDATE_SECS: u64 = 300;
/// The largest CSR accepted (a P-256 CSR is ~400 bytes of PEM).
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// The common name of the server's own client certificate (not a valid
/// device id: device ids start with a letter or digit).
pub const SERVER_CLIENT_NAME: &str = "_fleet-server";
/// The URI name carrying a device's identity.
pub const DEVICE_URI_PREFIX: &str = "urn:fleet:device:";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: mode {mode:o} lets other users read the CA key; chmod 600 it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{path}: {what}")]
    Load { path: PathBuf, what: String },
    #[error("the CA expired at {not_after} (unix seconds); make or install a new one")]
    CaExpired { not_after: u64 },
    #[error("CSR is larger than {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    #[error("CSR refused: {0}")]
    BadCsr(String),
    #[error("CSR key type refused: {0} (use ECDSA P-256 or Ed25519)")]
    CsrKeyType(String),
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
    #[error("peer certificate: {0}")]
    Peer(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// A certificate the CA issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub pem: String,
    /// Hex of the certificate's serial number.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
}

/// The identity a verified device certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub device: DeviceId,
    pub serial: String,
    pub not_after: u64,
}

/// The server's TLS identity: its certificate chain (leaf, CA) and key.
#[derive(Debug)]
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: u64,
}

impl ServerIdentity {
    /// The chain as PEM (leaf first), e.g. for Mosquitto's `certfile`.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// The key as PKCS#8 PEM, e.g. for Mosquitto's `keyfile`.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_der())
    }
}

/// The fleet CA.
pub struct FleetCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    not_after: u64,
    fingerprint: String,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

impl FleetCa {
    /// Loads the CA in `dir`, making it on first use.
    pub fn open_or_create(dir: &Path, now: u64) -> Result<Self, PkiError> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert.exists() || key.exists() {
            return Self::load(&cert, &key, now);
        }
        let ca = Self::generate(now)?;
        fs::create_dir_all(dir).map_err(io(dir))?;
        write_new(&key, ca.key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert, ca.cert_pem.as_bytes(), 0o644)?;
        sync_dir(dir)?;
        tracing::info!(fingerprint = %ca.fingerprint, path = %cert.display(), "made the fleet CA");
        Ok(ca)
    }

    /// Loads a CA certificate and its key (PEM; the key PKCS#8).
    pub fn load(cert_path: &Path, key_path: &Path, now: u64) -> Result<Self, PkiError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(io(cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io(key_path))?;
        let mode = fs::metadata(key_path)
            .map_err(io(key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyMode {
                path: key_path.into(),
                mode: mode & 0o777,
            });
        }
        let load = |path: &Path, what: String| PkiError::Load {
            path: path.into(),
            what,
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| load(key_path, format!("not a PKCS#8 private key: {e}")))?;
        let cert_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| load(cert_path, format!("not a PEM certificate: {e}")))?;
        let cert_der: CertificateDer<'static> = cert_der;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| load(cert_path, format!("not an X.509 certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(load(cert_path, "not a CA certificate".into()));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(load(
                key_path,
                "the key does not match the CA certificate".into(),
            ));
        }
        let not_after = unix(parsed.validity().not_after.timestamp());
        let ca = Self {
            fingerprint: hex::encode(Sha256::digest(&cert_der)),
            cert_pem,
            cert_der,
            key,
            not_after,
        };
        if not_after <= now {
            return Err(PkiError::CaExpired { not_after });
        }
        Ok(ca)
    }

    fn generate(now: u64) -> Result<Self, PkiError> {
        let issue = |e: rcgen::Error| PkiError::Issue(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Fleet");
        dn.push(
            DnType::CommonName,
            format!("Fleet CA {}", &hex::encode(random_serial())[..8]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.not_before = datetime(now.saturating_sub(BACKDATE_SECS))?;
        params.not_after = datetime(now + CA_LIFETIME_SECS)?;
        let cert = params.self_signed(&key).map_err(issue)?;
        Ok(Self {
            cert_pem: cert.pem(),
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            cert_der: cert.der().clone(),
            key,
            not_after: now + CA_LIFETIME_SECS,
        })
    }

    /// The CA certificate (PEM), what devices trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Hex SHA-256 of the CA certificate (DER): what an enrollment token
    /// pins so a new device can trust the server before it has the CA.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Unix seconds at which the CA expires.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Whether the CA's expiry should be reported now.
    pub fn expires_soon(&self, now: u64) -> bool {
        self.not_after.saturating_sub(now) < CA_EXPIRY_WARNING_SECS
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(|e| PkiError::Issue(e.to_string()))
    }

    /// Issues the server's TLS certificate for `names` (DNS names or IP
    /// addresses), with a fresh key.
    pub fn issue_server(&self, names: &[String], now: u64) -> Result<ServerIdentity, PkiError> {
        let issue = |e: rcgen::Error| PkiError::Issue(e.to_string());
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(issue),
            })
            .collect::<Result<_, _>>()?;
        self.issue_own(
            "fleet-server",
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
        )
    }

    /// Issues the server a client certificate for its own connection to an
    /// external broker (Mosquitto), named [`SERVER_CLIENT_NAME`]: a name no
    /// device id can take.
    pub fn issue_server_client(&self, now: u64) -> Result<ServerIdentity, PkiError> {
        self.issue_own(
            SERVER_CLIENT_NAME,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
        )
    }

    /// A certificate of the server's own, with a fresh key, valid
    /// [`SERVER_CERT_LIFETIME_SECS`] (never past the CA).
    fn issue_own(
        &self,
        name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        now: u64,
    ) -> Result<ServerIdentity, PkiError> {
        let issue = |e: rcgen::Error| PkiError::Issue(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let not_after = (now + SERVER_CERT_LIFETIME_SECS).min(self.not_after);
        params.not_before = datetime(now.saturating_sub(BACKDATE_SECS))?;
        params.not_after = datetime(not_after)?;
        let cert = params.signed_by(&key, &self.issuer()?).map_err(issue)?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after,
        })
    }

    /// A certificate revocation list of `serials` (hex), valid for
    /// `valid_secs`: for brokers that check one (Mosquitto's `crlfile`).
    pub fn crl_pem(
        &self,
        serials: &[String],
        now: u64,
        valid_secs: u64,
    ) -> Result<String, PkiError> {
        let issue = |e: rcgen::Error| PkiError::Issue(e.to_string());
        let revoked_certs = serials
            .iter()
            .map(|s| {
                let bytes = hex::decode(s)
                    .map_err(|_| PkiError::Issue(format!("serial {s:?} is not hex")))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: datetime(now)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: datetime(now.saturating_sub(BACKDATE_SECS))?,
            next_update: datetime(now + valid_secs)?,
            crl_number: SerialNumber::from_slice(&now.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer()?)
            .map_err(issue)?
            .pem()
            .map_err(issue)
    }

    /// Issues `device` a certificate for the public key in `csr_pem` (whose
    /// signature proves the device holds the key). Only the key is taken
    /// from the CSR.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        device: &DeviceId,
        lifetime_secs: u64,
        now: u64,
    ) -> Result<IssuedCert, PkiError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(PkiError::CsrTooLarge);
        }
        if self.not_after <= now {
            return Err(PkiError::CaExpired {
                not_after: self.not_after,
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(PkiError::CsrKeyType(format!("{alg:?}")));
        }
        let issue = |e: rcgen::Error| PkiError::Issue(e.to_string());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device.as_str());
        params.distinguished_name = dn;
        let uri = format!("{DEVICE_URI_PREFIX}{device}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(issue)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_before = now.saturating_sub(BACKDATE_SECS);
        let not_after = (now + lifetime_secs).min(self.not_after);
        params.not_before = datetime(not_before)?;
        params.not_after = datetime(not_after)?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(issue)?;
        Ok(IssuedCert {
            pem: signed.pem(),
            serial: hex::encode(serial),
            not_before,
            not_after,
        })
    }
}

/// The device identity in a certificate the TLS layer already verified
/// against the fleet CA: the common name, which must agree with the
/// certificate's `urn:fleet:device:` URI name.
pub fn peer_device(der: &[u8]) -> Result<PeerCert, PkiError> {
    let peer = |what: &str| PkiError::Peer(what.to_owned());
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| peer("not an X.509 certificate"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| peer("no common name"))?;
    let device = DeviceId::new(cn).map_err(|e| PkiError::Peer(e.to_string()))?;
    let want = format!("{DEVICE_URI_PREFIX}{device}");
    let uri_matches =
        cert.subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want),
                )
            });
    if !uri_matches {
        return Err(peer(
            "not a device certificate (no matching urn:fleet:device name)",
        ));
    }
    Ok(PeerCert {
        device,
        serial: hex::encode(cert.raw_serial()),
        not_after: unix(cert.validity().not_after.timestamp()),
    })
}

fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    // Positive and without a leading zero byte, so DER keeps all 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    serial
}

fn datetime(unix_secs: u64) -> Result<time::OffsetDateTime, PkiError> {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| PkiError::Issue(format!("time {unix_secs} out of range")))
}

fn unix(ts: i64) -> u64 {
    u64::try_from(ts).unwrap_or(0)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.into(),
        source,
    }
}

/// Writes a new file (refusing to replace one) with `mode`, synced.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests;
