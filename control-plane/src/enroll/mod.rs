//! Device enrollment, certificate renewal and revocation
//! (protocol/SECURITY.md).
//!
//! - [`service`]: `POST /enroll/v1` and `/enroll/v1/renew`: a bootstrap
//!   token (or the device's current certificate) and a CSR in, a device
//!   certificate out. The token's use, the device's certificate record and
//!   its group membership commit together under the engine's write lock,
//!   so a token is never spent twice and a device id never gets two keys
//!   by accident.
//! - [`admin`]: what `fleetctl enroll ...` and `fleetctl devices revoke`
//!   ask for (admin routes under `/api/v1`).
//! - [`api`]: the routes of both; [`limit`]: the token buckets in front of
//!   the public ones.
//!
//! The router is self-contained ([`router`]): the server merges it and
//! provides, per request, the verified client certificate as an
//! `Extension<PeerCert>` and the peer's address as
//! `ConnectInfo<SocketAddr>` (without it, only the global bucket limits).

pub mod admin;
pub mod api;
pub mod limit;
pub mod service;

use std::sync::Arc;

use fleet_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::fleet::{Fleet, FleetError};
use crate::pki::{FleetCa, PkiError, Revoked};
use crate::store::{Store, StoreError, TokenUnusable};
use limit::{Limiter, Rate, RetryAfter};

pub use api::router;

/// `[enroll]`: how fast the public enrollment endpoints answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollConfig {
    /// Enrollment requests (and CA fetches) per second, all peers together.
    pub rate: f64,
    pub burst: f64,
    /// Enrollment requests per second from one address (an IPv6 one: its
    /// /64).
    pub peer_rate: f64,
    pub peer_burst: f64,
    /// Renewal requests per second, all devices together (a bucket of its
    /// own, so a flood of enrollment attempts does not hold renewals back).
    pub renew_rate: f64,
    pub renew_burst: f64,
    /// Enrollments waiting for approval, at most (over every token).
    pub max_pending: usize,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 50.0,
            peer_rate: 1.0,
            peer_burst: 10.0,
            renew_rate: 50.0,
            renew_burst: 200.0,
            max_pending: 1000,
        }
    }
}

impl EnrollConfig {
    /// Each rate positive and each burst at least 1.
    pub fn validate(&self) -> Result<(), &'static str> {
        let rates = [self.rate, self.peer_rate, self.renew_rate];
        let bursts = [self.burst, self.peer_burst, self.renew_burst];
        if rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err("enroll.rate, peer_rate and renew_rate must be positive numbers");
        }
        if bursts.iter().any(|b| !(b.is_finite() && *b >= 1.0)) {
            return Err("enroll.burst, peer_burst and renew_burst must be at least 1");
        }
        if self.max_pending == 0 {
            return Err("enroll.max_pending must be at least 1");
        }
        Ok(())
    }
}

/// What the enrollment handlers share; cheap to clone.
#[derive(Clone)]
pub struct EnrollState {
    pub fleet: Fleet,
    pub ca: Arc<FleetCa>,
    pub revoked: Revoked,
    /// Lifetime of the certificates issued (`[tls]`).
    pub cert_lifetime_secs: u64,
    pub max_pending: usize,
    pub(crate) enroll_limit: Arc<Limiter>,
    pub(crate) renew_limit: Arc<Limiter>,
}

impl EnrollState {
    pub fn new(
        fleet: Fleet,
        ca: Arc<FleetCa>,
        revoked: Revoked,
        config: &EnrollConfig,
        cert_lifetime_secs: u64,
    ) -> Self {
        let now = Instant::now();
        let rate = |per_sec, burst| Rate { per_sec, burst };
        Self {
            fleet,
            ca,
            revoked,
            cert_lifetime_secs,
            max_pending: config.max_pending,
            enroll_limit: Arc::new(Limiter::new(
                rate(config.rate, config.burst),
                rate(config.peer_rate, config.peer_burst),
                now,
            )),
            renew_limit: Arc::new(Limiter::new(
                rate(config.renew_rate, config.renew_burst),
                rate(config.renew_rate, config.renew_burst),
                now,
            )),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.fleet.store()
    }
}

/// The revoked devices in the store, as the in-memory set the broker and
/// the API check (at the server's start; blocking).
pub fn revoked_from_store(store: &dyn Store) -> Result<Revoked, StoreError> {
    Ok(Revoked::new(
        store.revoked_all()?.into_iter().map(|r| r.device),
    ))
}

/// Why an enrollment, a renewal or an admin request failed. The message
/// never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrollment token (check it, or ask an admin for a new one)")]
    UnknownToken,
    #[error("the token was made for another fleet CA than this server's")]
    OtherCa,
    #[error("enrollment token {id} is {why}")]
    TokenUnusable { id: String, why: TokenUnusable },
    #[error("device {device} is revoked; it is never issued a certificate again")]
    DeviceRevoked { device: DeviceId },
    #[error(
        "device {device} is enrolled already under another key; an admin can allow it to enroll again with a token made with `fleetctl enroll create --reenroll`"
    )]
    OtherKey { device: DeviceId },
    #[error(
        "device {device} waits for approval with another key; an admin can `fleetctl enroll reject` it"
    )]
    PendingOtherKey { device: DeviceId },
    #[error("too many enrollments wait for approval ({max}); approve or reject some first")]
    TooManyPending { max: usize },
    #[error("renewal needs the device's current certificate as TLS client certificate")]
    NoClientCertificate,
    #[error("certificate {serial} is not one issued to {device} and still valid; enroll again")]
    UnknownCertificate { device: DeviceId, serial: String },
    #[error("device id {given:?}: {reason}")]
    BadDevice { given: String, reason: String },
    #[error("CSR refused: {0}")]
    BadCsr(#[source] PkiError),
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{0}")]
    Invalid(String),
    #[error("rate limited: try again in {} s", .0.secs())]
    RateLimited(RetryAfter),
    #[error("cannot issue the certificate: {0}")]
    Issue(#[source] PkiError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

impl From<StoreError> for EnrollError {
    fn from(e: StoreError) -> Self {
        EnrollError::Fleet(FleetError::Store(e))
    }
}

#[cfg(test)]
mod tests;
