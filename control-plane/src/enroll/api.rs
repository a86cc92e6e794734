//! The enrollment routes.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/enroll/v1/ca` | anyone (rate-limited) | the fleet CA, PEM |
//! | POST | `/enroll/v1` | a device with a token (rate-limited) | enroll |
//! | POST | `/enroll/v1/renew` | a device with its certificate | renew |
//! | GET, POST | `/api/v1/enroll/tokens` | admin | list, make a token |
//! | POST | `/api/v1/enroll/tokens/{id}/revoke` | admin | revoke a token |
//! | GET | `/api/v1/enroll/pending` | admin | enrollments waiting |
//! | POST | `/api/v1/enroll/pending/{device}/{approve,reject}` | admin | decide |
//! | POST | `/api/v1/devices/{id}/revoke` | admin | revoke a device |
//!
//! The public routes take a token from the buckets before anything else
//! (429 with `Retry-After` when empty) and read at most
//! [`MAX_BODY_BYTES`] of body.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_protocol::DeviceId;
use fleet_protocol::enroll::{
    CA_PATH, ENROLL_PATH, EnrollRequest, MAX_BODY_BYTES, Pending, RENEW_PATH, RenewRequest,
};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::admin::{self, CreateEnrollToken};
use super::service::{self, Enrolled};
use super::{EnrollError, EnrollState};
use crate::api::{ApiError, ErrorCode};
use crate::pki::PeerCert;

/// The public enrollment routes and the admin routes (behind the API's
/// bearer tokens), to merge into the server's app.
pub fn router(state: EnrollState) -> Router {
    let public = Router::new()
        .route(CA_PATH, get(ca))
        .route(ENROLL_PATH, post(enroll))
        .route(RENEW_PATH, post(renew))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limit))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/api/v1/enroll/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/enroll/tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/enroll/pending", get(pending))
        .route("/api/v1/enroll/pending/{device}/{decision}", post(decide))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device));
    let admin = crate::api::access::restrict(admin, crate::api::access::ADMIN).with_state(state);
    public.merge(admin)
}

/// The peer's address, as the server's accept loop recorded it.
fn peer_addr(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Middleware: a token from the renewal or the enrollment buckets, or 429.
async fn limit(State(s): State<EnrollState>, request: Request, next: Next) -> Response {
    let ip = peer_addr(&request).map(|a| a.ip());
    let limiter = if request.uri().path() == RENEW_PATH {
        &s.renew_limit
    } else {
        &s.enroll_limit
    };
    match limiter.check(ip, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            tracing::debug!(peer = ?ip, path = %request.uri().path(), "enrollment request rate-limited");
            EnrollError::RateLimited(wait).into_response()
        }
    }
}

impl EnrollError {
    fn status(&self) -> (StatusCode, ErrorCode) {
        match self {
            EnrollError::UnknownToken | EnrollError::OtherCa | EnrollError::NoClientCertificate => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized)
            }
            EnrollError::TokenUnusable { .. }
            | EnrollError::DeviceRevoked { .. }
            | EnrollError::UnknownCertificate { .. } => {
                (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
            }
            EnrollError::OtherKey { .. } | EnrollError::PendingOtherKey { .. } => {
                (StatusCode::CONFLICT, ErrorCode::Conflict)
            }
            EnrollError::TooManyPending { .. } | EnrollError::RateLimited(_) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
            }
            EnrollError::BadDevice { .. } | EnrollError::BadCsr(_) | EnrollError::Invalid(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::Invalid)
            }
            EnrollError::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            EnrollError::Issue(_) | EnrollError::Fleet(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }
}

impl IntoResponse for EnrollError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            EnrollError::RateLimited(wait) => Some(wait.secs()),
            EnrollError::TooManyPending { .. } => Some(60),
            _ => None,
        };
        let mut response = match self {
            EnrollError::Fleet(e) => ApiError::from(e).into_response(),
            e => {
                let (status, code) = e.status();
                if status.is_server_error() {
                    tracing::error!(error = %e, "enrollment failed");
                }
                ApiError::new(status, code, e.to_string()).into_response()
            }
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The body of `request` as JSON of `T` (400 if it is not, or too large).
async fn json_body<T: DeserializeOwned>(request: Request) -> Result<T, EnrollError> {
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            EnrollError::Invalid(format!(
                "the body is not readable or over {MAX_BODY_BYTES} bytes"
            ))
        })?;
    serde_json::from_slice(&bytes).map_err(|e| EnrollError::Invalid(format!("body: {e}")))
}

async fn ca(State(s): State<EnrollState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.ca.cert_pem().to_owned(),
    )
        .into_response()
}

/// A refusal worth a line in the log (never the token).
fn log_refusal(what: &str, device: &str, peer: Option<SocketAddr>, e: &EnrollError) {
    if !matches!(e, EnrollError::Fleet(_) | EnrollError::Issue(_)) {
        let device: String = device.chars().take(64).collect();
        tracing::info!(%device, peer = ?peer, reason = %e, "{what} refused");
    }
}

async fn enroll(State(s): State<EnrollState>, request: Request) -> Response {
    let peer = peer_addr(&request);
    let req: EnrollRequest = match json_body(request).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let device = req.device.clone();
    match service::enroll(&s, req, peer).await {
        Ok(Enrolled::Issued(issued)) => Json(issued).into_response(),
        Ok(Enrolled::Pending) => {
            (StatusCode::ACCEPTED, Json(Pending { pending: true })).into_response()
        }
        Err(e) => {
            log_refusal("enrollment", &device, peer, &e);
            e.into_response()
        }
    }
}

async fn renew(State(s): State<EnrollState>, request: Request) -> Response {
    let peer = peer_addr(&request);
    let cert = request.extensions().get::<PeerCert>().cloned();
    let device = cert
        .as_ref()
        .map(|c| c.device.to_string())
        .unwrap_or_default();
    let req: RenewRequest = match json_body(request).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match service::renew(&s, cert, req).await {
        Ok(issued) => Json(issued).into_response(),
        Err(e) => {
            log_refusal("renewal", &device, peer, &e);
            e.into_response()
        }
    }
}

fn device_id(given: &str) -> Result<DeviceId, EnrollError> {
    DeviceId::new(given).map_err(|e| EnrollError::BadDevice {
        given: given.chars().take(80).collect(),
        reason: e.to_string(),
    })
}

async fn create_token(State(s): State<EnrollState>, request: Request) -> Response {
    let req: CreateEnrollToken = match json_body(request).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match admin::create_token(&s, req).await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_tokens(State(s): State<EnrollState>) -> Response {
    admin::list_tokens(&s).await.map(Json).into_response()
}

async fn revoke_token(State(s): State<EnrollState>, Path(id): Path<String>) -> Response {
    admin::revoke_token(&s, id).await.map(Json).into_response()
}

async fn pending(State(s): State<EnrollState>) -> Response {
    admin::pending(&s).await.map(Json).into_response()
}

async fn decide(
    State(s): State<EnrollState>,
    Path((device, decision)): Path<(String, String)>,
) -> Response {
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return EnrollError::NotFound {
                what: "decision (approve or reject)",
                key: other.chars().take(32).collect(),
            }
            .into_response();
        }
    };
    match device_id(&device) {
        Ok(d) => admin::decide(&s, d, approve)
            .await
            .map(Json)
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revoke_device(State(s): State<EnrollState>, Path(id): Path<String>) -> Response {
    match device_id(&id) {
        Ok(d) => admin::revoke_device(&s, d).await.map(Json).into_response(),
        Err(e) => e.into_response(),
    }
}
