//! Enrollment (protocol/SECURITY.md): the bootstrap token's format and the
//! JSON bodies of `/enroll/v1`, shared by the server and the agent.
//!
//! A token reads `fleet-enroll_<64 hex secret>_<64 hex CA fingerprint>`:
//! the secret is what the server checks (it stores only its SHA-256), the
//! fingerprint is what the device pins the server's CA to before it trusts
//! anything the server says.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The token's prefix (lets secret scanners recognise it).
pub const TOKEN_PREFIX: &str = "fleet-enroll_";
/// `GET`: the fleet CA (PEM), fetched before the server is trusted.
pub const CA_PATH: &str = "/enroll/v1/ca";
/// `POST` [`EnrollRequest`].
pub const ENROLL_PATH: &str = "/enroll/v1";
/// `POST` [`RenewRequest`] with the current certificate as client certificate.
pub const RENEW_PATH: &str = "/enroll/v1/renew";
/// The largest request body the enrollment endpoints read.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an enrollment token: expected {TOKEN_PREFIX}<64 hex digits>_<64 hex digits> (as `fleetctl enroll create` prints it)"
)]
pub struct BadToken;

/// A bootstrap token. `Debug` hides the secret; `Display` is the token as
/// given to a device (it contains the secret: never log it).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    secret: String,
    ca_fingerprint: String,
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollToken")
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl EnrollToken {
    /// A token from a 32-byte secret and the CA's fingerprint (lowercase
    /// hex SHA-256 of its DER).
    pub fn new(secret: [u8; 32], ca_fingerprint: &str) -> Result<Self, BadToken> {
        let ca_fingerprint = ca_fingerprint.to_ascii_lowercase();
        if !is_hex64(&ca_fingerprint) {
            return Err(BadToken);
        }
        Ok(Self {
            secret: hex::encode(secret),
            ca_fingerprint,
        })
    }

    pub fn parse(token: &str) -> Result<Self, BadToken> {
        let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or(BadToken)?;
        let (secret, fingerprint) = rest.split_once('_').ok_or(BadToken)?;
        if !is_hex64(secret) || !is_hex64(fingerprint) {
            return Err(BadToken);
        }
        Ok(Self {
            secret: secret.to_owned(),
            ca_fingerprint: fingerprint.to_owned(),
        })
    }

    /// Hex SHA-256 of the secret: what the server stores and looks up.
    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// The public id of the token: the first 16 hex digits of
    /// [`Self::secret_sha256`].
    pub fn id(&self) -> String {
        token_id(&self.secret_sha256())
    }

    /// The CA fingerprint the device pins.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }
}

impl std::fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}_{}", self.secret, self.ca_fingerprint)
    }
}

impl std::str::FromStr for EnrollToken {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        Self::parse(s)
    }
}

/// The public id of the token whose secret hashes to `secret_sha256`.
pub fn token_id(secret_sha256: &str) -> String {
    secret_sha256.chars().take(16).collect()
}

/// The lowercase hex SHA-256 of `der`: a CA's fingerprint, a key's.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// `POST /enroll/v1`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The whole token (see [`EnrollToken`]).
    pub token: String,
    pub device: String,
    /// PKCS#10 CSR, PEM.
    pub csr: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// `POST /enroll/v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// The `200` answer of both: the device's new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// The certificate, PEM.
    pub certificate: String,
    /// The fleet CA, PEM.
    pub ca: String,
    /// Hex of the certificate's serial number.
    pub serial: String,
    /// When the server issued it (unix seconds, the server's clock).
    pub issued_at: u64,
    /// The certificate's validity: `not_before` is set a few minutes before
    /// `issued_at`, for devices whose clocks lag.
    pub not_before: u64,
    pub not_after: u64,
}

/// The `202` answer: waiting for `fleetctl enroll approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub pending: bool,
}

/// When a certificate issued at `issued_at` and valid until `not_after` is
/// renewed: at two thirds of its life. Its life counts from its issue, not
/// from its backdated `not_before` (with a one-minute certificate, five
/// minutes of backdating would make it due at once, forever).
pub fn renew_at(issued_at: u64, not_after: u64) -> u64 {
    let life = not_after.saturating_sub(issued_at);
    issued_at + life - life / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12";

    #[test]
    fn a_token_round_trips_and_keeps_its_secret_out_of_debug() {
        let t = EnrollToken::new([7; 32], FP).unwrap();
        let text = t.to_string();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(EnrollToken::parse(&text).unwrap(), t);
        assert_eq!(t.ca_fingerprint(), FP);
        assert_eq!(t.id().len(), 16);
        assert!(t.secret_sha256().starts_with(&t.id()));
        assert!(!format!("{t:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = EnrollToken::new([1; 32], FP).unwrap().to_string();
        let upper = good.to_uppercase();
        let short = &good[..good.len() - 1];
        let no_fp = good.rsplit_once('_').unwrap().0.to_owned();
        let other_prefix = good.replace(TOKEN_PREFIX, "fleet_");
        for bad in ["", "fleet-enroll_", &upper, short, &no_fp, &other_prefix] {
            assert_eq!(EnrollToken::parse(bad), Err(BadToken), "{bad:?}");
        }
        assert_eq!(EnrollToken::new([1; 32], "xyz"), Err(BadToken));
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life() {
        assert_eq!(renew_at(100, 130), 120);
        assert_eq!(renew_at(0, 30 * 24 * 3600), 20 * 24 * 3600);
        assert_eq!(renew_at(1000, 1060), 1040);
        assert_eq!(renew_at(100, 50), 100);
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let r = serde_json::from_str::<EnrollRequest>(
            r#"{"token":"t","device":"d","csr":"c","group":"x"}"#,
        );
        assert!(r.is_err());
        let dbg = format!(
            "{:?}",
            EnrollRequest {
                token: "secret".into(),
                device: "d".into(),
                csr: "c".into()
            }
        );
        assert!(!dbg.contains("secret"));
    }
}
