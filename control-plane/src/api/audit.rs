//! The guard in front of every HTTP route, and the audit log it writes.
//!
//! [`guard`] identifies the caller (see [`super::access`]), lets the request
//! through, and appends an [`AuditRecord`] for every call that may change
//! something (any method but GET and HEAD), allowed or not, and for every
//! refused call (401, 403): who, with which role, method, route pattern and
//! path, peer address, status, why it was refused. Never the token, its
//! hash or the body. The record is durable before the answer leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;

use super::access::{Caller, MatchedRoute, Refused};
use super::auth::TOKEN_PREFIX;
use super::{ApiResult, ApiState};
use crate::store::{AuditCaller, AuditRecord, Store};

/// Puts [`guard`] in front of every route of `app` (and its fallback).
pub fn guarded(app: Router, store: Arc<dyn Store>) -> Router {
    app.layer(middleware::from_fn_with_state(store, guard))
}

/// Identifies the caller, runs the request, audits it (see the module).
pub async fn guard(
    State(store): State<Arc<dyn Store>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = redact(request.uri().path());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let caller = match request.extensions().get::<Caller>() {
        // Put there by the TLS layer from the client certificate.
        Some(device @ Caller::Device(_)) => Ok(device.clone()),
        _ => super::auth::identify(&store, request.headers()).await,
    };
    let (caller, response) = match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller.clone());
            (caller, next.run(request).await)
        }
        Err(e) => {
            let caller = Caller::Anonymous(super::access::Unidentified::UnknownToken);
            let mut response = e.into_response();
            response
                .extensions_mut()
                .insert(Refused("the token could not be checked".into()));
            (caller, response)
        }
    };
    let status = response.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if refused || !matches!(method, Method::GET | Method::HEAD) {
        let (kind, who, role) = match caller {
            Caller::Operator { token_name, role } => {
                (AuditCaller::Operator, token_name, Some(role))
            }
            Caller::Device(id) => (AuditCaller::Device, id.to_string(), None),
            Caller::Anonymous(_) => (AuditCaller::Anonymous, "anonymous".to_owned(), None),
        };
        let record = AuditRecord {
            seq: 0,
            at: crate::fleet::now(),
            caller: kind,
            who,
            role,
            method: method.to_string(),
            route: response
                .extensions()
                .get::<MatchedRoute>()
                .map(|r| r.0.clone()),
            path,
            peer,
            status: status.as_u16(),
            refusal: response.extensions().get::<Refused>().map(|r| r.0.clone()),
        };
        if refused {
            tracing::info!(
                who = %record.who,
                method = %record.method,
                path = %record.path,
                status = record.status,
                reason = record.refusal.as_deref().unwrap_or("-"),
                "request refused"
            );
        }
        append(store, record).await;
    }
    response
}

/// Writes `record` (off the async threads); a failure is logged, and the
/// answer (whose effect has happened) goes out anyway.
async fn append(store: Arc<dyn Store>, record: AuditRecord) {
    match tokio::task::spawn_blocking(move || store.audit_append(record)).await {
        Ok(Ok(_seq)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "writing an audit record failed"),
        Err(e) => tracing::error!(error = %e, "writing an audit record failed"),
    }
}

/// `path` with every segment that looks like an API token replaced by
/// `(redacted)`: a token pasted into a URL stays out of the audit log.
fn redact(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with(TOKEN_PREFIX) {
                "(redacted)"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    limit: Option<usize>,
    after: Option<u64>,
}

/// `GET /api/v1/audit?limit=&after=`: the newest `limit` records (100 by
/// default, at most 10,000), or with `after` the first `limit` records
/// after that sequence number; oldest first.
pub(super) async fn list(
    State(s): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Vec<AuditRecord>> {
    let store = s.fleet.store().clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let records = tokio::task::spawn_blocking(move || store.audit(q.after, limit))
        .await
        .map_err(|e| {
            super::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                super::ErrorCode::Internal,
                e.to_string(),
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "reading the audit log failed");
            super::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                super::ErrorCode::Store,
                e.to_string(),
            )
        })?;
    Ok(Json(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shaped_path_segments_are_redacted() {
        assert_eq!(
            redact("/api/v1/tokens/fleet_0123abcd"),
            "/api/v1/tokens/(redacted)"
        );
        assert_eq!(
            redact("/api/v1/rollouts/7/pause"),
            "/api/v1/rollouts/7/pause"
        );
    }
}
