//! Why signed bytes were rejected: one vocabulary, [`VerifyError`], whose
//! [`VerifyError::code`] is the precise reason and [`VerifyError::error_code`]
//! the wire code it reports as. Where both name the same thing they are
//! spelled the same (tested).

use crate::dsse::{DsseError, KeyId};
use crate::id::{AppName, DeviceId, Digest};
use crate::lifecycle::ErrorCode;
use crate::message::ErrorInfo;
use crate::root::{Role, TrustError};

/// Why signed bytes were rejected.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{what} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("not a valid DSSE envelope: {source}")]
    MalformedEnvelope {
        #[source]
        source: DsseError,
    },
    #[error("payload type is {got:?}, expected {expected:?}")]
    WrongPayloadType { expected: &'static str, got: String },
    #[error(
        "signature by {role} key {keyid} does not verify: the payload or the signature was altered"
    )]
    BadSignature { role: Role, keyid: KeyId },
    #[error("signed by key {keyid:?}, which the trust root does not list")]
    UnknownKey { keyid: String },
    #[error("signed by key {keyid}, which may not sign for the {role} role")]
    WrongRole { keyid: KeyId, role: Role },
    #[error("{have} valid {role} signature(s), {need} needed")]
    BelowThreshold {
        role: Role,
        have: usize,
        need: usize,
    },
    #[error("signed payload is not a valid {payload_type}: {source}")]
    MalformedPayload {
        payload_type: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("addressed to device {got}, this is {expected}")]
    WrongDevice { expected: DeviceId, got: DeviceId },
    #[error("expired at {expires_at}, now is {now}")]
    Expired { expires_at: u64, now: u64 },
    #[error("generation {got} is not greater than the last applied generation {last}")]
    StaleGeneration { got: u64, last: u64 },
    #[error("desired state lists {count} apps, more than the limit of {max}")]
    TooManyApps { count: usize, max: usize },
    #[error("desired state lists app {app} twice")]
    DuplicateApp { app: AppName },
    #[error("app {app}: release digest is {actual}, the desired state says {expected}")]
    ReleaseDigestMismatch {
        app: AppName,
        expected: Digest,
        actual: Digest,
    },
    #[error("desired state entry {expected} carries a release of app {got}")]
    ReleaseAppMismatch { expected: AppName, got: AppName },
    #[error(
        "release of app {app} asks for a privileged container and the trust root does not allow it"
    )]
    PrivilegedNotAllowed { app: AppName },
    #[error("trust root version {version} expired at {expires_at}, now is {now}")]
    RootExpired {
        version: u64,
        expires_at: u64,
        now: u64,
    },
    #[error(
        "trust root version {got} does not follow version {have}: the intermediate versions are needed"
    )]
    RootMissingLink { have: u64, got: u64 },
    #[error("trust root version {got} is not newer than the trusted version {have}")]
    RootRollback { have: u64, got: u64 },
    #[error("trust root is invalid: {source}")]
    InvalidRoot {
        #[source]
        source: TrustError,
    },
}

impl VerifyError {
    /// Every value [`Self::code`] returns.
    pub const CODES: [&'static str; 20] = [
        "too_large",
        "malformed_envelope",
        "wrong_payload_type",
        "bad_signature",
        "unknown_key",
        "wrong_role",
        "below_threshold",
        "malformed_payload",
        "wrong_device",
        "expired",
        "stale_generation",
        "too_many_apps",
        "duplicate_app",
        "release_digest_mismatch",
        "release_app_mismatch",
        "privileged_not_allowed",
        "root_expired",
        "root_missing_link",
        "root_rollback",
        "invalid_root",
    ];

    /// The code named `s`, as the `'static` string [`Self::code`] returns.
    pub fn code_named(s: &str) -> Option<&'static str> {
        Self::CODES.into_iter().find(|c| *c == s)
    }

    /// A stable, machine-readable code (reported in status messages).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::MalformedEnvelope { .. } => "malformed_envelope",
            VerifyError::WrongPayloadType { .. } => "wrong_payload_type",
            VerifyError::BadSignature { .. } => "bad_signature",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::WrongRole { .. } => "wrong_role",
            VerifyError::BelowThreshold { .. } => "below_threshold",
            VerifyError::MalformedPayload { .. } => "malformed_payload",
            VerifyError::WrongDevice { .. } => "wrong_device",
            VerifyError::Expired { .. } => "expired",
            VerifyError::StaleGeneration { .. } => "stale_generation",
            VerifyError::TooManyApps { .. } => "too_many_apps",
            VerifyError::DuplicateApp { .. } => "duplicate_app",
            VerifyError::ReleaseDigestMismatch { .. } => "release_digest_mismatch",
            VerifyError::ReleaseAppMismatch { .. } => "release_app_mismatch",
            VerifyError::PrivilegedNotAllowed { .. } => "privileged_not_allowed",
            VerifyError::RootExpired { .. } => "root_expired",
            VerifyError::RootMissingLink { .. } => "root_missing_link",
            VerifyError::RootRollback { .. } => "root_rollback",
            VerifyError::InvalidRoot { .. } => "invalid_root",
        }
    }

    /// The stable wire code of this rejection (coarser than [`Self::code`]).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            VerifyError::BadSignature { .. }
            | VerifyError::UnknownKey { .. }
            | VerifyError::WrongRole { .. }
            | VerifyError::BelowThreshold { .. } => ErrorCode::BadSignature,
            VerifyError::Expired { .. } | VerifyError::RootExpired { .. } => ErrorCode::Expired,
            VerifyError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            VerifyError::WrongDevice { .. } => ErrorCode::WrongDevice,
            VerifyError::TooLarge { .. }
            | VerifyError::MalformedEnvelope { .. }
            | VerifyError::WrongPayloadType { .. }
            | VerifyError::MalformedPayload { .. } => ErrorCode::Malformed,
            VerifyError::PrivilegedNotAllowed { .. } => ErrorCode::NotAllowed,
            VerifyError::TooManyApps { .. }
            | VerifyError::DuplicateApp { .. }
            | VerifyError::ReleaseDigestMismatch { .. }
            | VerifyError::ReleaseAppMismatch { .. }
            | VerifyError::RootMissingLink { .. }
            | VerifyError::RootRollback { .. }
            | VerifyError::InvalidRoot { .. } => ErrorCode::Rejected,
        }
    }

    /// The wire code and a message that starts with the precise reason
    /// ([`Self::code`]), as reported in a status.
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.error_code(),
            message: format!("{}: {self}", self.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_list_names_each_code_once_and_holds_what_code_returns() {
        let mut codes = VerifyError::CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), VerifyError::CODES.len());
        for e in [
            VerifyError::Expired {
                expires_at: 1,
                now: 2,
            },
            VerifyError::StaleGeneration { got: 1, last: 2 },
            VerifyError::UnknownKey { keyid: "k".into() },
            VerifyError::TooManyApps { count: 9, max: 1 },
        ] {
            assert_eq!(VerifyError::code_named(e.code()), Some(e.code()));
        }
        assert_eq!(VerifyError::code_named("not_a_code"), None);
    }
}
