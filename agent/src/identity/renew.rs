//! Renewal: at two thirds of the certificate's life, a new key and a CSR go
//! to `POST /enroll/v1/renew` over TLS with the current certificate as the
//! client certificate; the answer replaces the identity files as a set.
//!
//! [`Renewer`] is the daemon's task. Each new identity is announced on a
//! `watch` channel: the HTTP clients present it from then on, the MQTT link
//! at its next connection (TLS checks certificates at the handshake only,
//! so the connection up now stays up). A refusal (`403`: the device is
//! revoked, or the server does not know the certificate) is logged as an
//! error and asked again only after [`Renewer::refused_wait`]; a server
//! that cannot be reached is asked again with backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::enroll::{Issued, RENEW_PATH, RenewRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::enroll::{Backoff, EnrollError, accept, csr, new_key, transient};
use super::http;
use super::{Identity, IdentityError};
use crate::deploy::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("{url} refused the renewal: {message} (HTTP {status})")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} did not renew now: {reason}")]
    Transient {
        url: String,
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "the certificate expired at {not_after}: enroll again with a token (`fleetctl enroll create --reenroll`)"
    )]
    Expired { not_after: u64 },
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl RenewError {
    /// A refusal that asking again soon will not change.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RenewError::Refused { .. } | RenewError::Expired { .. }
        )
    }
}

/// Renews `current` once at `server` and stores the result under
/// `state_dir`.
pub async fn renew_once(
    server: &str,
    state_dir: &Path,
    current: &Identity,
) -> Result<Identity, RenewError> {
    if current.expired(unix_now()) {
        return Err(RenewError::Expired {
            not_after: current.not_after,
        });
    }
    let server = server.trim_end_matches('/');
    if !server.starts_with("https://") {
        return Err(EnrollError::NotHttps {
            url: server.to_owned(),
        }
        .into());
    }
    let url = format!("{server}{RENEW_PATH}");
    let tls = current.tls_config(false).map_err(EnrollError::from)?;
    let client = http::client(&tls).map_err(EnrollError::Client)?;
    let key = new_key()?;
    let request = RenewRequest {
        csr: csr(&key, &current.device)?,
    };
    let answer = http::post(&client, &url, &request)
        .await
        .map_err(|e| RenewError::Transient {
            url: url.clone(),
            reason: fleet_protocol::report(&e),
            retry_after: None,
        })?;
    if answer.status != 200 {
        return Err(if transient(answer.status) {
            RenewError::Transient {
                url,
                reason: format!("HTTP {}: {}", answer.status, answer.message()),
                retry_after: answer.retry_after,
            }
        } else {
            RenewError::Refused {
                url,
                status: answer.status,
                message: answer.message(),
            }
        });
    }
    let issued: Issued =
        serde_json::from_slice(&answer.body).map_err(|e| EnrollError::BadAnswer {
            url: url.clone(),
            what: e.to_string(),
        })?;
    let renewed = accept(
        &url,
        &current.ca_pem,
        current.device.clone(),
        issued,
        key.serialize_pem(),
    )?;
    super::store(state_dir, &renewed)?;
    Ok(renewed)
}

/// The daemon's renewal task.
#[derive(Debug, Clone)]
pub struct Renewer {
    /// The server's base URL, `https://host:port`.
    pub server: String,
    pub state_dir: PathBuf,
    /// First wait after a server that did not answer; doubled up to
    /// `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Wait after a refusal (revoked, unknown certificate, expired).
    pub refused_wait: Duration,
}

/// The longest single sleep: the wall clock is looked at again after it
/// (a device's clock may jump, e.g. when NTP first syncs).
const MAX_SLEEP: Duration = Duration::from_secs(600);

impl Renewer {
    pub fn new(server: &str, state_dir: PathBuf) -> Self {
        Self {
            server: server.to_owned(),
            state_dir,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            refused_wait: Duration::from_secs(3600),
        }
    }

    /// Starts renewing `identity` until `cancel`; each new identity is
    /// sent on the returned channel.
    pub fn spawn(
        self,
        identity: Identity,
        cancel: CancellationToken,
    ) -> (watch::Receiver<Arc<Identity>>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(Arc::new(identity));
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.run(tx) => {}
            }
        });
        (rx, task)
    }

    async fn run(self, tx: watch::Sender<Arc<Identity>>) {
        let mut backoff = Backoff::new(self.retry_initial, self.retry_max);
        loop {
            let current = tx.borrow().clone();
            // Enrolled again meanwhile (`fleet-agent enroll`): take it.
            if let Ok(Some(stored)) = super::load(&self.state_dir)
                && stored.serial != current.serial
                && stored.issued_at >= current.issued_at
            {
                tracing::info!(serial = %stored.serial, "a newer identity was stored; using it");
                tx.send_replace(Arc::new(stored));
                continue;
            }
            let now = unix_now();
            let due = current.renew_at();
            if now < due {
                let wait = Duration::from_secs(due - now).min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
                continue;
            }
            match renew_once(&self.server, &self.state_dir, &current).await {
                Ok(renewed) => {
                    tracing::info!(device = %renewed.device, serial = %renewed.serial,
                        not_after = renewed.not_after, renew_at = renewed.renew_at(),
                        "device certificate renewed");
                    backoff = Backoff::new(self.retry_initial, self.retry_max);
                    tx.send_replace(Arc::new(renewed));
                }
                Err(e) if e.is_refusal() => {
                    tracing::error!(device = %current.device, error = %e,
                        wait_secs = self.refused_wait.as_secs(),
                        "device certificate renewal refused; not asking again before the wait");
                    tokio::time::sleep(self.refused_wait).await;
                }
                Err(e) => {
                    let retry_after = match &e {
                        RenewError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let wait = backoff.next(retry_after);
                    tracing::warn!(device = %current.device, error = %e, wait_secs = wait.as_secs(),
                        "device certificate renewal failed; trying again");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
