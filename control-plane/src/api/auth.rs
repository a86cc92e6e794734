//! Bearer tokens: random, shown once, stored as their sha256; the caller a
//! request's token names.

use std::sync::Arc;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use rand_core::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::access::{Caller, Unidentified};
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

/// The caller a request's `Authorization` header names: the token's holder,
/// or an anonymous caller with the reason (none, not a bearer token, an
/// unknown or revoked token). Fails only when the store cannot be read.
pub async fn identify(store: &Arc<dyn Store>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(Caller::Anonymous(Unidentified::NoToken));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Ok(Caller::Anonymous(Unidentified::NotBearer));
    };
    let hash = hash_token(token);
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.token(&hash)).await {
        Ok(Ok(Some(record))) => Ok(Caller::Operator {
            token_name: record.name,
            role: record.role,
        }),
        Ok(Ok(None)) => Ok(Caller::Anonymous(Unidentified::UnknownToken)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "token lookup failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Store,
                e.to_string(),
            ))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )),
    }
}
