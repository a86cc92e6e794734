//! The daemon's transport identity: enrollment on a first start (with
//! `enroll_token`), then renewal in the background. A renewed certificate
//! reaches the HTTP client at once and the MQTT link at its next
//! connection.

use std::sync::Arc;

use fleet_protocol::enroll::EnrollToken;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::DaemonError;
use crate::config::Config;
use crate::deploy::unix_now;
use crate::fetch::Client;
use crate::identity::{self, EnrollOptions, Identity, Renewer};

/// The identity to run with: the stored one, or (with `enroll_token`, when
/// there is none or it expired) a new one from enrollment. `None`: the
/// device runs without a certificate (a server with `[tls] insecure`).
pub(super) async fn at_start(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Identity>, DaemonError> {
    let stored = identity::load(&config.state_dir)?;
    let now = unix_now();
    let token = config.enroll_token.expose();
    match stored {
        Some(id) if !id.expired(now) => return Ok(Some(id)),
        Some(id) if token.is_empty() => {
            error!(device = %id.device, not_after = id.not_after,
                "the device certificate expired: enroll again (`fleet-agent enroll` with a token made by `fleetctl enroll create --reenroll`)");
            return Ok(Some(id));
        }
        None if token.is_empty() => return Ok(None),
        _ => {}
    }
    let token = EnrollToken::parse(token).map_err(|_| {
        DaemonError::Config(crate::config::ConfigError::Invalid {
            field: "enroll_token",
            reason: "is not an enrollment token",
        })
    })?;
    let server = config.server.clone().unwrap_or_default();
    let opts = EnrollOptions::new(
        &server,
        token,
        config.device_id()?,
        config.state_dir.clone(),
    );
    info!(device = %opts.device, %server, "no device certificate yet: enrolling");
    Ok(Some(identity::enroll::enroll(&opts, shutdown).await?))
}

/// The renewal task and what follows it: the HTTP client's TLS at once, and
/// newer link TLS configurations for the link's next connection.
pub(super) struct Renewal {
    pub link_updates: watch::Receiver<Arc<rustls::ClientConfig>>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Renewal {
    /// Starts renewing `identity` at `config.server` (without one there is
    /// nothing to renew against: `None`, and a warning).
    pub(super) fn start(config: &Config, identity: &Identity, http: Client) -> Option<Renewal> {
        let Some(server) = config
            .server
            .as_deref()
            .filter(|s| s.starts_with("https://"))
        else {
            warn!(
                not_after = identity.not_after,
                "no https:// server configured: the device certificate will not be renewed"
            );
            return None;
        };
        let link_tls = identity.tls_config(false).ok()?;
        let stop = CancellationToken::new();
        let renewer = Renewer::new(server, config.state_dir.clone());
        let (mut renewed, renew_task) = renewer.spawn(identity.clone(), stop.child_token());
        let (link_tx, link_updates) = watch::channel(link_tls);
        let follow = {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = renewed.changed() => if changed.is_err() { return },
                    }
                    let current = renewed.borrow_and_update().clone();
                    follow_identity(&current, &http, &link_tx);
                }
            })
        };
        Some(Renewal {
            link_updates,
            tasks: vec![renew_task, follow],
            stop,
        })
    }

    pub(super) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Hands a renewed identity to the HTTP client and the link.
fn follow_identity(
    current: &Identity,
    http: &Client,
    link: &watch::Sender<Arc<rustls::ClientConfig>>,
) {
    match current.tls_config(true) {
        Ok(tls) => {
            if let Err(e) = http.set_tls(&tls) {
                error!(error = %e, "the HTTP client cannot take the renewed certificate");
            }
        }
        Err(e) => error!(error = %e, "the renewed identity makes no TLS configuration"),
    }
    match current.tls_config(false) {
        Ok(tls) => {
            link.send_replace(tls);
            info!(serial = %current.serial, "renewed certificate in use (the MQTT link takes it at its next connection)");
        }
        Err(e) => error!(error = %e, "the renewed identity makes no TLS configuration"),
    }
}
