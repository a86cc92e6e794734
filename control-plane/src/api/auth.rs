//! Bearer tokens: random, shown once, stored as their sha256.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::{ApiError, ErrorCode};
use crate::store::{Store, StoreError, TokenRecord, TokenRole, Write};

/// Prefix of every token (lets secret scanners recognise them).
pub const TOKEN_PREFIX: &str = "fleet_";

/// Hex sha256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Creates the admin token if the store has no token yet; returns it (the
/// only time it exists in clear).
pub fn ensure_admin_token(store: &dyn Store, now: u64) -> Result<Option<String>, StoreError> {
    if store.token_count()? > 0 {
        return Ok(None);
    }
    let token = generate_token();
    store.commit(vec![
        Write::Token(TokenRecord {
            hash: hash_token(&token),
            name: "admin".into(),
            role: TokenRole::Admin,
            created_at: now,
        }),
        Write::Event(crate::store::EventRecord {
            seq: 0,
            at: now,
            kind: crate::store::EventKind::TokenCreated,
            subject: "admin".into(),
            message: "initial admin token".into(),
        }),
    ])?;
    Ok(Some(token))
}

/// Middleware: a valid `Authorization: Bearer <token>` or 401.
pub async fn require_token(
    State(store): State<Arc<dyn Store>>,
    request: Request,
    next: Next,
) -> Response {
    let unauthorized = |message: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).into_response()
    };
    let Some(token) = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthorized(
            "missing bearer token: run `fleetctl login --server URL --token TOKEN`",
        );
    };
    let hash = hash_token(token);
    let found = tokio::task::spawn_blocking(move || store.token(&hash)).await;
    match found {
        Ok(Ok(Some(_record))) => next.run(request).await,
        Ok(Ok(None)) => {
            unauthorized("invalid token: check it, or log in again with `fleetctl login`")
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "token lookup failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Store,
                e.to_string(),
            )
            .into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
        .into_response(),
    }
}
