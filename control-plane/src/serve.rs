//! The HTTP listener: the axum app served connection by connection, over
//! TLS or (only with `[tls] insecure`) plain TCP.
//!
//! Each request carries the peer's address (`ConnectInfo<SocketAddr>`) and,
//! when the client presented a certificate the handshake verified against
//! the fleet CA, its device identity ([`PeerCert`], and the API's
//! [`Caller::Device`]) in its extensions: what device routes authorise on.
//! A certificate that verifies but is not a device certificate is refused at
//! connection time; a revoked device's requests are answered 403 (checked at
//! every request, so a revocation also ends a kept-alive connection's use).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::api::access::Caller;
use crate::pki::tls::peer_of;
use crate::pki::{PeerCert, Revoked};

/// How long a client may take to finish the TLS handshake, and to send a
/// request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop`, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<(Arc<rustls::ServerConfig>, Revoked)>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let (tls, revoked) = tls.unzip();
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let revoked = revoked.clone().unwrap_or_default();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return connection(stream, peer, None, app, watcher).await;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let device = match peer_of(tls.get_ref().1.peer_certificates()) {
                None => None,
                Some(Ok(device)) => Some(device),
                Some(Err(e)) => return warn!(%peer, error = %e, "client certificate refused"),
            };
            let device = device.map(|d| (d, revoked));
            connection(tls, peer, device, app, watcher).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("HTTP connections did not finish within the grace period");
    }
    Ok(())
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    device: Option<(PeerCert, Revoked)>,
    app: Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut request: axum::extract::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut refused = None;
        if let Some((device, revoked)) = &device {
            if revoked.contains(&device.device) {
                info!(%peer, device = %device.device, "request of a revoked device refused");
                refused = Some(revoked_response(&device.device));
            }
            request.extensions_mut().insert(device.clone());
            request
                .extensions_mut()
                .insert(Caller::Device(device.device.clone()));
        }
        let app = app.clone();
        async move {
            match refused {
                Some(response) => Ok(response),
                None => app.oneshot(request.map(axum::body::Body::new)).await,
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

fn revoked_response(device: &fleet_protocol::DeviceId) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    crate::api::ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        crate::api::ErrorCode::Forbidden,
        format!("device {device} is revoked"),
    )
    .into_response()
}
