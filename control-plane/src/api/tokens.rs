//! The API tokens of operators, managed by admins: create (the token is in
//! the answer, the only time it exists in clear), list (names and roles,
//! never a token or its hash), revoke (never the last admin token).

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::access::Caller;
use super::auth::{TOKEN_PREFIX, generate_token, hash_token};
use super::types::{CreateToken, CreatedToken, TokenView};
use super::{ApiError, ApiResult, ApiState, ErrorCode};
use crate::store::{EventKind, EventRecord, Store, StoreError, TokenRecord, TokenRole, Write};

/// Longest token name.
pub const MAX_NAME_LEN: usize = 64;

/// Token creations and revocations, one at a time (the name and last-admin
/// checks and the write they guard are one step).
static WRITES: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "token name {name:?} is not valid: 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', \
         starting with a letter or digit, not starting with {TOKEN_PREFIX:?}"
    )]
    BadName { name: String },
    #[error("a token named {name:?} exists: revoke it first, or pick another name")]
    NameTaken { name: String },
    #[error("no token named {name:?} (see fleetctl tokens list)")]
    NotFound { name: String },
    #[error(
        "token {name:?} is the last admin token: create another admin token before revoking it"
    )]
    LastAdmin { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let (status, code) = match &e {
            TokenError::BadName { .. } => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            TokenError::NameTaken { .. } | TokenError::LastAdmin { .. } => {
                (StatusCode::CONFLICT, ErrorCode::Conflict)
            }
            TokenError::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            TokenError::Store(source) => {
                tracing::error!(error = %source, "token store failed");
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Store)
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn check_name(name: &str) -> Result<(), TokenError> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(TOKEN_PREFIX);
    if valid {
        Ok(())
    } else {
        Err(TokenError::BadName {
            name: name.to_owned(),
        })
    }
}

fn view(r: &TokenRecord) -> TokenView {
    TokenView {
        name: r.name.clone(),
        role: r.role,
        created_at: r.created_at,
    }
}

/// Creates token `name` with `role`; returns it with the token in clear.
pub fn create(
    store: &dyn Store,
    name: &str,
    role: TokenRole,
    by: &str,
    now: u64,
) -> Result<CreatedToken, TokenError> {
    check_name(name)?;
    let _one_at_a_time = WRITES.lock().unwrap_or_else(|e| e.into_inner());
    if store.tokens()?.iter().any(|t| t.name == name) {
        return Err(TokenError::NameTaken { name: name.into() });
    }
    let token = generate_token();
    let record = TokenRecord {
        hash: hash_token(&token),
        name: name.into(),
        role,
        created_at: now,
    };
    store.commit(vec![
        Write::Token(record.clone()),
        Write::Event(EventRecord {
            seq: 0,
            at: now,
            kind: EventKind::TokenCreated,
            subject: name.into(),
            message: format!("{role} token created by {by}"),
        }),
    ])?;
    Ok(CreatedToken {
        token,
        name: record.name,
        role,
        created_at: now,
    })
}

/// Revokes token `name`, unless it is the last admin token.
pub fn revoke(store: &dyn Store, name: &str, by: &str, now: u64) -> Result<TokenView, TokenError> {
    let _one_at_a_time = WRITES.lock().unwrap_or_else(|e| e.into_inner());
    let all = store.tokens()?;
    let Some(record) = all.iter().find(|t| t.name == name) else {
        return Err(TokenError::NotFound { name: name.into() });
    };
    let admins = all.iter().filter(|t| t.role == TokenRole::Admin).count();
    if record.role == TokenRole::Admin && admins <= 1 {
        return Err(TokenError::LastAdmin { name: name.into() });
    }
    store.commit(vec![
        Write::DeleteToken(record.hash.clone()),
        Write::Event(EventRecord {
            seq: 0,
            at: now,
            kind: EventKind::TokenRevoked,
            subject: name.into(),
            message: format!("{} token revoked by {by}", record.role),
        }),
    ])?;
    Ok(view(record))
}

/// Every token (names, roles, creation times), by name.
pub fn list(store: &dyn Store) -> Result<Vec<TokenView>, TokenError> {
    let mut all: Vec<TokenView> = store.tokens()?.iter().map(view).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

fn caller_name(caller: &Caller) -> String {
    match caller {
        Caller::Operator { token_name, .. } => format!("token {token_name}"),
        Caller::Device(id) => format!("device {id}"),
        Caller::Anonymous(_) => "anonymous".into(),
    }
}

async fn blocking<T: Send + 'static>(
    store: Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, TokenError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?
        .map_err(ApiError::from)
}

pub(super) async fn list_tokens(State(s): State<ApiState>) -> ApiResult<Vec<TokenView>> {
    Ok(Json(blocking(s.fleet.store().clone(), list).await?))
}

pub(super) async fn create_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let by = caller_name(&caller);
    let now = crate::fleet::now();
    let created = blocking(s.fleet.store().clone(), move |store| {
        create(store, &req.name, req.role, &by, now)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn revoke_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<TokenView> {
    let by = caller_name(&caller);
    let now = crate::fleet::now();
    let revoked = blocking(s.fleet.store().clone(), move |store| {
        revoke(store, &name, &by, now)
    })
    .await?;
    Ok(Json(revoked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn names_are_checked_and_unique_and_the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let admin = super::super::auth::ensure_admin_token(&store, 1)
            .unwrap()
            .unwrap();
        for bad in ["", "-x", "a b", "fleet_abc", &"x".repeat(65), "é"] {
            let e = create(&store, bad, TokenRole::Viewer, "t", 2).unwrap_err();
            assert!(matches!(e, TokenError::BadName { .. }), "{bad:?}: {e}");
        }
        let ci = create(&store, "ci", TokenRole::Operator, "t", 2).unwrap();
        assert!(ci.token.starts_with(TOKEN_PREFIX));
        assert_ne!(ci.token, admin);
        let e = create(&store, "ci", TokenRole::Viewer, "t", 2).unwrap_err();
        assert!(matches!(e, TokenError::NameTaken { .. }), "{e}");
        let names: Vec<_> = list(&store).unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["admin", "ci"]);

        let e = revoke(&store, "admin", "t", 3).unwrap_err();
        assert!(matches!(e, TokenError::LastAdmin { .. }), "{e}");
        assert!(e.to_string().contains("create another admin token"), "{e}");
        create(&store, "admin2", TokenRole::Admin, "t", 3).unwrap();
        revoke(&store, "admin", "t", 4).unwrap();
        let e = revoke(&store, "admin2", "t", 4).unwrap_err();
        assert!(matches!(e, TokenError::LastAdmin { .. }), "{e}");
        revoke(&store, "ci", "t", 4).unwrap();
        assert!(store.token(&hash_token(&ci.token)).unwrap().is_none());
        let e = revoke(&store, "ci", "t", 5).unwrap_err();
        assert!(matches!(e, TokenError::NotFound { .. }), "{e}");
    }
}
