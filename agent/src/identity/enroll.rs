//! Enrollment: a bootstrap token in, the device's first certificate out.
//!
//! 1. `GET /enroll/v1/ca` without verifying the server; the CA is used only
//!    if its fingerprint is the one in the token. From then on the server
//!    is verified against that CA alone.
//! 2. The device key (P-256) is made here and kept in `pending.key` until
//!    the certificate arrives, so a device waiting for approval asks again
//!    with the same key after a restart.
//! 3. `POST /enroll/v1` with the token, the device id and a CSR: `200` is
//!    the certificate (stored as the identity), `202` waits for an admin
//!    (asked again with backoff), `429` and unreachable servers are tried
//!    again (after `Retry-After`), any other refusal ends it with the
//!    server's reason.

use std::path::PathBuf;
use std::time::Duration;

use fleet_protocol::DeviceId;
use fleet_protocol::enroll::{
    CA_PATH, ENROLL_PATH, EnrollRequest, EnrollToken, Issued, sha256_hex,
};
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData as _};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_util::sync::CancellationToken;

use super::http::{self, Answer};
use super::{Identity, IdentityError};
use crate::link::tls::{TlsError, client_config};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enrollment needs the server's https:// URL, not {url:?}")]
    NotHttps { url: String },
    #[error(
        "the server at {url} serves the CA {got}, not the CA {want} the token pins: a wrong server, or someone in between"
    )]
    WrongCa {
        url: String,
        got: String,
        want: String,
    },
    #[error("{url} refused: {message} (HTTP {status})")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {what}")]
    BadAnswer { url: String, what: String },
    #[error("cannot make the device key or its CSR: {0}")]
    Key(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot set up HTTPS: {0}")]
    Client(#[source] reqwest::Error),
    #[error("stopped before the enrollment ended")]
    Cancelled,
}

/// What enrollment needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The server's base URL, `https://host:port`.
    pub server: String,
    pub token: EnrollToken,
    pub device: DeviceId,
    pub state_dir: PathBuf,
    /// First wait between tries (approval pending, rate-limited, server
    /// unreachable); doubled up to `poll_max`.
    pub poll_initial: Duration,
    pub poll_max: Duration,
}

impl EnrollOptions {
    pub fn new(server: &str, token: EnrollToken, device: DeviceId, state_dir: PathBuf) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            device,
            state_dir,
            poll_initial: Duration::from_secs(5),
            poll_max: Duration::from_secs(300),
        }
    }
}

/// Waits that double from `initial` to `max`.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    /// The wait now (the server's `Retry-After` if longer), then doubled.
    pub(crate) fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let wait = self
            .next
            .max(retry_after.unwrap_or_default())
            .min(self.max.max(self.next));
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// Sleeps `wait` unless cancelled first.
pub(crate) async fn pause(wait: Duration, cancel: &CancellationToken) -> Result<(), EnrollError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(EnrollError::Cancelled),
        _ = tokio::time::sleep(wait) => Ok(()),
    }
}

/// Whether an answer is worth asking again for (rate limit, server trouble).
pub(crate) fn transient(status: u16) -> bool {
    status == 429 || status >= 500
}

/// The SHA-256 of the first certificate in `pem` (a CA's fingerprint).
pub(crate) fn fingerprint(pem: &str) -> Option<String> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| sha256_hex(&der))
}

/// A new P-256 device key (PKCS#8 PEM) and a CSR for `device`.
pub(crate) fn csr(key: &KeyPair, device: &DeviceId) -> Result<String, EnrollError> {
    let key_err = |e: rcgen::Error| EnrollError::Key(e.to_string());
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(key_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, device.as_str());
    params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(key_err)
}

pub(crate) fn new_key() -> Result<KeyPair, EnrollError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Key(e.to_string()))
}

/// Hex SHA-256 of the key's public half (what `fleetctl enroll pending`
/// shows).
pub fn key_sha256(key: &KeyPair) -> String {
    sha256_hex(&key.subject_public_key_info())
}

/// Fetches the CA and checks it against the token's pin.
async fn pinned_ca(
    opts: &EnrollOptions,
    cancel: &CancellationToken,
) -> Result<String, EnrollError> {
    let tls = http::unverified().map_err(|e| EnrollError::Tls(e.into()))?;
    let client = http::client(&tls).map_err(EnrollError::Client)?;
    let url = format!("{}{CA_PATH}", opts.server);
    let answer = ask(&url, opts, cancel, || http::get(&client, &url)).await?;
    let pem = String::from_utf8_lossy(&answer.body).into_owned();
    let got = fingerprint(&pem).ok_or_else(|| EnrollError::BadAnswer {
        url: url.clone(),
        what: "not a PEM certificate".into(),
    })?;
    if got != opts.token.ca_fingerprint() {
        return Err(EnrollError::WrongCa {
            url,
            got,
            want: opts.token.ca_fingerprint().to_owned(),
        });
    }
    Ok(pem)
}

/// Sends `request` until it is answered with something other than a
/// transient failure (waiting between tries); any other failure status is
/// [`EnrollError::Refused`].
async fn ask<F, Fut>(
    url: &str,
    opts: &EnrollOptions,
    cancel: &CancellationToken,
    request: F,
) -> Result<Answer, EnrollError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Answer, reqwest::Error>>,
{
    let mut backoff = Backoff::new(opts.poll_initial, opts.poll_max);
    loop {
        let (why, retry_after) = match request().await {
            Ok(a) if a.status < 300 => return Ok(a),
            Ok(a) if transient(a.status) => {
                (format!("HTTP {}: {}", a.status, a.message()), a.retry_after)
            }
            Ok(a) => {
                return Err(EnrollError::Refused {
                    url: url.to_owned(),
                    status: a.status,
                    message: a.message(),
                });
            }
            Err(e) => (fleet_protocol::report(&e), None),
        };
        let wait = backoff.next(retry_after);
        tracing::warn!(%url, reason = %why, wait_secs = wait.as_secs(), "enrollment server not answering; trying again");
        pause(wait, cancel).await?;
    }
}

/// Enrolls the device: returns its identity, stored under the state
/// directory. Waits (until `cancel`) while the server asks for approval,
/// rate-limits or cannot be reached.
pub async fn enroll(
    opts: &EnrollOptions,
    cancel: &CancellationToken,
) -> Result<Identity, EnrollError> {
    if !opts.server.starts_with("https://") {
        return Err(EnrollError::NotHttps {
            url: opts.server.clone(),
        });
    }
    let ca_pem = pinned_ca(opts, cancel).await?;
    let tls = client_config(&ca_pem, false, None)?;
    let client = http::client(&tls).map_err(EnrollError::Client)?;
    let key = match super::pending_key(&opts.state_dir)?.map(|pem| KeyPair::from_pem(&pem)) {
        Some(Ok(key)) => key,
        other => {
            if let Some(Err(e)) = other {
                tracing::warn!(error = %e, "the waiting enrollment's key is unreadable; making a new one");
            }
            let key = new_key()?;
            super::keep_pending_key(&opts.state_dir, &key.serialize_pem())?;
            key
        }
    };
    let request = EnrollRequest {
        token: opts.token.to_string(),
        device: opts.device.to_string(),
        csr: csr(&key, &opts.device)?,
    };
    let url = format!("{}{ENROLL_PATH}", opts.server);
    let mut waiting = Backoff::new(opts.poll_initial, opts.poll_max);
    let answer = loop {
        let answer = ask(&url, opts, cancel, || http::post(&client, &url, &request)).await?;
        if answer.status != 202 {
            break answer;
        }
        let wait = waiting.next(answer.retry_after);
        tracing::info!(device = %opts.device, key_sha256 = %key_sha256(&key), wait_secs = wait.as_secs(),
            "enrollment waits for approval: fleetctl enroll approve {}", opts.device);
        pause(wait, cancel).await?;
    };
    let issued: Issued =
        serde_json::from_slice(&answer.body).map_err(|e| EnrollError::BadAnswer {
            url: url.clone(),
            what: e.to_string(),
        })?;
    let identity = accept(
        &url,
        &ca_pem,
        opts.device.clone(),
        issued,
        key.serialize_pem(),
    )?;
    super::store(&opts.state_dir, &identity)?;
    tracing::info!(device = %identity.device, serial = %identity.serial, not_after = identity.not_after,
        "enrolled: device certificate stored");
    Ok(identity)
}

/// The identity an answer makes, if it holds together: the CA is the one
/// trusted (pinned), the certificate is for this key.
pub(crate) fn accept(
    url: &str,
    ca_pem: &str,
    device: DeviceId,
    issued: Issued,
    key_pem: String,
) -> Result<Identity, EnrollError> {
    let bad = |what: &str| EnrollError::BadAnswer {
        url: url.to_owned(),
        what: what.to_owned(),
    };
    if fingerprint(&issued.ca) != fingerprint(ca_pem) {
        return Err(bad("the CA in the answer is not the CA trusted"));
    }
    let identity = Identity::issued(device, issued, key_pem);
    identity
        .tls_config(false)
        .map_err(|e| bad(&format!("the certificate does not fit the key: {e}")))?;
    Ok(identity)
}
