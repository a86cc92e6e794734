//! JSON bodies of the REST API, shared by the server and the typed client.
//! The engine's requests and views are the fleet module's own types,
//! re-exported here; only what is the API's alone is defined here.

use fleet_protocol::{Digest, VerifyError};
use serde::{Deserialize, Serialize};

use crate::store::TokenRole;

pub use crate::fleet::{
    AddMembers, CreateGroup, CreateRollout, DesiredSummary, DeviceView, FollowChannel, GroupView,
    PlanView, PublishView, ReleaseView, RolloutView, SetLabels, TelemetryView, WaveView,
};

/// Every error answer: a stable code and a message saying what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// The stable code of an API error answer. The server writes it; a client
/// reads codes it does not know (added later) as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    Conflict,
    Invalid,
    /// An image reference that does not resolve to a digest.
    Unresolved,
    Unauthorized,
    /// A valid caller without the right to this call (e.g. a viewer token
    /// on a mutating route, a device on an operator route).
    Forbidden,
    /// Too many requests: the answer's `Retry-After` says when to come back.
    RateLimited,
    Store,
    Director,
    Internal,
    /// A release the verifier refused, with its precise reason as the
    /// verifier names it (`bad_signature`, `unknown_key`, ...).
    Refused {
        reason: &'static str,
    },
    /// A code this side does not know.
    Unknown(String),
}

impl ErrorCode {
    /// The wire form, e.g. `not_found`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unresolved => "unresolved",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Store => "store",
            ErrorCode::Director => "director",
            ErrorCode::Internal => "internal",
            ErrorCode::Refused { reason } => reason,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// Reads a wire code; one not listed here is [`ErrorCode::Unknown`].
    pub fn parse(code: &str) -> Self {
        match code {
            "not_found" => ErrorCode::NotFound,
            "conflict" => ErrorCode::Conflict,
            "invalid" => ErrorCode::Invalid,
            "unresolved" => ErrorCode::Unresolved,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "rate_limited" => ErrorCode::RateLimited,
            "store" => ErrorCode::Store,
            "director" => ErrorCode::Director,
            "internal" => ErrorCode::Internal,
            other => match VerifyError::code_named(other) {
                Some(reason) => ErrorCode::Refused { reason },
                None => ErrorCode::Unknown(other.to_owned()),
            },
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|code| ErrorCode::parse(&code))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveView {
    /// The reference as given, normalised.
    pub image: String,
    pub repository: String,
    pub digest: Digest,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: TokenRole,
}

/// An API token as listed: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub name: String,
    pub role: TokenRole,
    /// Unix seconds.
    pub created_at: u64,
}

/// The answer to a token creation: the only time the token is shown.
/// (Its `Debug` leaves the token out.)
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: TokenRole,
    pub created_at: u64,
    pub token: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .field("token", &"(hidden)")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_keep_their_wire_strings_and_unknown_ones_come_through() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Invalid,
            ErrorCode::Unresolved,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Store,
            ErrorCode::Director,
            ErrorCode::Internal,
            ErrorCode::Refused {
                reason: "bad_signature",
            },
            ErrorCode::Unknown("added_later".into()),
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"code":"not_found","message":"no such device"}"#).unwrap();
        assert_eq!(body.code, ErrorCode::NotFound);
    }
}
