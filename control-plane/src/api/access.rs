//! Who may call what: the [`Caller`] of a request, the [`Access`] each API
//! route needs, and [`Routes`], through which every API route is added with
//! its access (a route cannot be added without one).
//!
//! The guard ([`super::audit::guard`]) puts the [`Caller`] into the request's
//! extensions before routing: a [`Caller::Device`] already there (put by the
//! TLS layer from the client certificate) is kept, anything else comes from
//! the bearer token. After routing, each route's check ([`check`]) answers
//! 401 (no valid credentials) or 403 (not allowed) before the handler runs,
//! and leaves the matched route pattern and the refusal in the response's
//! extensions for the audit log.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use fleet_protocol::DeviceId;

use super::{ApiError, ErrorCode};
use crate::store::TokenRole;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (e.g. enrollment, whose handler checks
    /// its own bootstrap token).
    Public,
    /// An API token of at least this role.
    Role(TokenRole),
    /// Only a device, by its client certificate.
    Device,
    /// A device (certificate) or an API token of any role: reading content.
    Reader,
}

pub const VIEWER: Access = Access::Role(TokenRole::Viewer);
pub const OPERATOR: Access = Access::Role(TokenRole::Operator);
pub const ADMIN: Access = Access::Role(TokenRole::Admin);

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Role(role) => f.write_str(role.as_str()),
            Access::Device => f.write_str("device"),
            Access::Reader => f.write_str("device or any token"),
        }
    }
}

/// Who made a request; in the request's extensions for every handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The holder of a valid API token.
    Operator { token_name: String, role: TokenRole },
    /// A device authenticated by its TLS client certificate.
    Device(DeviceId),
    /// No valid credentials, and why.
    Anonymous(Unidentified),
}

/// Why a request has no identified caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unidentified {
    /// No `Authorization` header.
    NoToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// A bearer token the server does not know (never issued, or revoked).
    UnknownToken,
}

/// A refused request: 401 or 403, the message of the answer, and the short
/// reason the audit log keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    pub message: String,
}

impl Refusal {
    fn unauthorized(reason: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn forbidden(reason: String, message: String) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            reason,
            message,
        }
    }
}

/// Whether `caller` may call a route that needs `access`.
pub fn decide(access: Access, caller: &Caller) -> Result<(), Refusal> {
    match (access, caller) {
        (Access::Public, _) => Ok(()),
        (Access::Role(_), Caller::Anonymous(why)) => Err(unidentified(*why)),
        (Access::Role(needed), Caller::Operator { token_name, role }) if *role < needed => {
            Err(Refusal::forbidden(
                format!("needs the {needed} role, token has {role}"),
                format!(
                    "this needs the {needed} role; token {token_name:?} has the {role} role \
                     (an admin can create one: fleetctl tokens create --name NAME --role {needed})"
                ),
            ))
        }
        (Access::Role(_), Caller::Operator { .. }) => Ok(()),
        (Access::Role(needed), Caller::Device(id)) => Err(Refusal::forbidden(
            "devices may not call operator routes".into(),
            format!("device {id} may not call this: it needs an API token with the {needed} role"),
        )),
        (Access::Reader, Caller::Device(_) | Caller::Operator { .. }) => Ok(()),
        (Access::Reader, Caller::Anonymous(why)) => Err(unidentified(*why)),
        (Access::Device, Caller::Device(_)) => Ok(()),
        (Access::Device, Caller::Anonymous(_)) => Err(Refusal::unauthorized(
            "no device certificate",
            "only a device may call this, with its client certificate",
        )),
        (Access::Device, Caller::Operator { .. }) => Err(Refusal::forbidden(
            "operators may not call device routes".into(),
            "only a device may call this, with its client certificate; not an API token".into(),
        )),
    }
}

fn unidentified(why: Unidentified) -> Refusal {
    match why {
        Unidentified::NoToken => Refusal::unauthorized(
            "no token",
            "missing bearer token: run `fleetctl login --server URL --token TOKEN`",
        ),
        Unidentified::NotBearer => Refusal::unauthorized(
            "not a bearer token",
            "the Authorization header is not `Bearer TOKEN`",
        ),
        Unidentified::UnknownToken => Refusal::unauthorized(
            "unknown or revoked token",
            "invalid token (unknown or revoked): check it, or log in again with `fleetctl login`",
        ),
    }
}

/// In a response's extensions: the route pattern that matched.
#[derive(Debug, Clone)]
pub(crate) struct MatchedRoute(pub String);

/// In a response's extensions: why the request was refused.
#[derive(Debug, Clone)]
pub(crate) struct Refused(pub String);

/// The check in front of every route: the caller (from the guard; none is
/// an anonymous caller) against the route's `access`.
pub async fn check(State(access): State<Access>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous(Unidentified::NoToken));
    let mut response = match decide(access, &caller) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let code = if refusal.status == StatusCode::FORBIDDEN {
                ErrorCode::Forbidden
            } else {
                ErrorCode::Unauthorized
            };
            let mut response = ApiError::new(refusal.status, code, refusal.message).into_response();
            response.extensions_mut().insert(Refused(refusal.reason));
            response
        }
    };
    if let Some(route) = route {
        response.extensions_mut().insert(MatchedRoute(route));
    }
    response
}

/// Puts every route of `router` behind `access` (for routes built outside
/// [`Routes`], e.g. the content module's image import). A router without
/// routes stays as it is.
pub fn restrict<S: Clone + Send + Sync + 'static>(router: Router<S>, access: Access) -> Router<S> {
    if !router.has_routes() {
        return router;
    }
    router.route_layer(middleware::from_fn_with_state(access, check))
}

/// One route of a [`Routes`] table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    /// The path pattern, relative to where the router is nested.
    pub path: &'static str,
    pub access: Access,
}

/// A router whose every route was added with the [`Access`] it needs, and
/// the table of those routes.
pub struct Routes<S> {
    router: Router<S>,
    table: Vec<RouteInfo>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &'static str, a: Access, h: H) -> Self {
        self.add(Method::GET, MethodFilter::GET, path, a, h)
    }

    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &'static str, a: Access, h: H) -> Self {
        self.add(Method::POST, MethodFilter::POST, path, a, h)
    }

    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &'static str, a: Access, h: H) -> Self {
        self.add(Method::DELETE, MethodFilter::DELETE, path, a, h)
    }

    fn add<H: Handler<T, S>, T: 'static>(
        mut self,
        method: Method,
        filter: MethodFilter,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        let route = on(filter, handler).route_layer(middleware::from_fn_with_state(access, check));
        self.router = self.router.route(path, route);
        self.table.push(RouteInfo {
            method,
            path,
            access,
        });
        self
    }

    /// Every route with its access, in the order they were added.
    pub fn table(&self) -> &[RouteInfo] {
        &self.table
    }

    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(role: TokenRole) -> Caller {
        Caller::Operator {
            token_name: "ci".into(),
            role,
        }
    }

    #[test]
    fn every_access_against_every_caller() {
        let device = Caller::Device(DeviceId::new("cam-01").unwrap());
        let anonymous = [
            Unidentified::NoToken,
            Unidentified::NotBearer,
            Unidentified::UnknownToken,
        ]
        .map(Caller::Anonymous);
        for caller in anonymous
            .iter()
            .chain([&device, &operator(TokenRole::Viewer)])
        {
            assert_eq!(decide(Access::Public, caller), Ok(()));
        }
        for needed in TokenRole::ALL {
            let access = Access::Role(needed);
            for caller in &anonymous {
                let r = decide(access, caller).unwrap_err();
                assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            }
            let r = decide(access, &device).unwrap_err();
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            assert!(r.message.contains("cam-01"), "{}", r.message);
            for role in TokenRole::ALL {
                match decide(access, &operator(role)) {
                    Ok(()) => assert!(role >= needed),
                    Err(r) => {
                        assert!(role < needed);
                        assert_eq!(r.status, StatusCode::FORBIDDEN);
                        let named = format!("needs the {needed} role");
                        assert!(r.message.contains(&named), "{}", r.message);
                    }
                }
            }
        }
        assert_eq!(decide(Access::Device, &device), Ok(()));
        let r = decide(Access::Device, &operator(TokenRole::Admin)).unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        for caller in &anonymous {
            let r = decide(Access::Device, caller).unwrap_err();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn the_api_module_doc_lists_every_route_with_its_role() {
        let rows: Vec<Vec<&str>> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! |"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        for route in crate::api::routes().table() {
            let path = format!("/api/v1{}", route.path);
            let listed = rows.iter().any(|cells| {
                let [methods, paths, role, ..] = cells.as_slice() else {
                    return false;
                };
                methods.split(", ").any(|m| m == route.method.as_str())
                    && paths
                        .split(", ")
                        .any(|p| p.trim_matches('`').split('?').next() == Some(path.as_str()))
                    && *role == route.access.to_string()
            });
            assert!(
                listed,
                "{} {path} ({}) is not in the table of api/mod.rs",
                route.method, route.access
            );
        }
    }
}
