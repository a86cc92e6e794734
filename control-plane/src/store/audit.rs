//! The audit log: one [`AuditRecord`] per mutating API call (allowed or
//! refused) and per refused read, appended by the API's guard and kept
//! apart from the event log (which says what happened to the fleet, not who
//! asked). It never holds a token, a token's hash or a request body.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::model::TokenRole;

/// How many audit records the store keeps: the newest 100,000 (about
/// 20 MB of JSON); older ones are dropped as new ones are appended.
pub const AUDIT_RETENTION: u64 = 100_000;

/// Who made an audited call, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditCaller {
    /// An API token's holder; `who` is the token's name.
    Operator,
    /// A device authenticated by its client certificate; `who` is its id.
    Device,
    /// No valid credentials (none, or an unknown or revoked token).
    Anonymous,
}

/// One audited HTTP call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store: 1, 2, 3, ... (never reused).
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds (server clock) the call was answered.
    pub at: u64,
    pub caller: AuditCaller,
    /// The token's name, the device id, or `anonymous`.
    pub who: String,
    /// The role of the caller's token (operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<TokenRole>,
    /// The HTTP method, e.g. `POST`.
    pub method: String,
    /// The route pattern that matched, e.g. `/api/v1/rollouts/{id}/{action}`
    /// (`None`: no API route matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The concrete path (without the query), e.g. `/api/v1/rollouts/7/pause`.
    pub path: String,
    /// The client's address, when the listener knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// Why the call was refused (401/403), e.g. `needs the operator role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}
