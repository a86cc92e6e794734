//! What enrollment keeps (protocol/SECURITY.md): bootstrap tokens (only
//! their secret's SHA-256), enrollments waiting for an admin's approval,
//! the certificates issued to each device, and revoked devices. Plain serde
//! types; the rules over them are `crate::enroll`.

use fleet_protocol::{DeviceId, GroupName};
use serde::{Deserialize, Serialize};

/// Certificates remembered per device (newest last): a renewal is accepted
/// from any of them still valid, so a device that missed the answer to its
/// last renewal can renew again with its previous certificate.
pub const ISSUED_KEPT: usize = 8;

/// A bootstrap token. Keyed by `secret_sha256`; its public `id` is the
/// first 16 hex digits of that hash (what `fleetctl enroll list` shows and
/// `fleetctl enroll revoke` takes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the token's secret part.
    pub secret_sha256: String,
    /// The group every device enrolled with it joins.
    pub group: GroupName,
    /// Enrollments allowed.
    pub uses: u32,
    /// Enrollments done.
    pub used: u32,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// Enrollments wait for `fleetctl enroll approve`.
    pub approve: bool,
    /// A device id already enrolled under another key may enroll again with
    /// this token (the operator's path for a device offline past its
    /// certificate's expiry, or one whose key was lost).
    pub reenroll: bool,
    pub created_at: u64,
    pub revoked: bool,
}

impl EnrollTokenRecord {
    /// Why the token cannot enroll a device at `now`, if it cannot.
    pub fn unusable(&self, now: u64) -> Option<TokenUnusable> {
        if self.revoked {
            Some(TokenUnusable::Revoked)
        } else if now >= self.expires_at {
            Some(TokenUnusable::Expired)
        } else if self.used >= self.uses {
            Some(TokenUnusable::UsedUp)
        } else {
            None
        }
    }
}

/// Why a known token enrolls no device (answered 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUnusable {
    Revoked,
    Expired,
    UsedUp,
}

impl std::fmt::Display for TokenUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenUnusable::Revoked => "revoked",
            TokenUnusable::Expired => "expired",
            TokenUnusable::UsedUp => "used up",
        })
    }
}

/// An enrollment waiting for an admin (its token requires approval). The
/// device repeats its request with the same CSR until it is approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrollment {
    pub device: DeviceId,
    pub csr: String,
    /// Hex SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo): what
    /// the device shows while it waits, for the admin to compare.
    pub key_sha256: String,
    pub token_id: String,
    pub requested_at: u64,
    /// The address the request came from, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub approved: bool,
}

/// One certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedSerial {
    /// Hex of the certificate's serial number.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
}

/// The certificates issued to a device: the current key and the newest
/// [`ISSUED_KEPT`] certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertRecord {
    pub device: DeviceId,
    /// Hex SHA-256 of the current key (DER SubjectPublicKeyInfo).
    pub key_sha256: String,
    /// Oldest first; the last is the current certificate.
    pub issued: Vec<IssuedSerial>,
    /// The token that enrolled it last.
    pub token_id: String,
    pub enrolled_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<u64>,
}

impl DeviceCertRecord {
    /// The current certificate.
    pub fn current(&self) -> Option<&IssuedSerial> {
        self.issued.last()
    }

    /// Whether `serial` was issued to this device and is valid at `now`.
    pub fn holds(&self, serial: &str, now: u64) -> bool {
        self.issued
            .iter()
            .any(|c| c.serial.eq_ignore_ascii_case(serial) && now < c.not_after)
    }

    /// Records a new certificate for `key_sha256`, forgetting the oldest
    /// beyond [`ISSUED_KEPT`].
    pub fn push(&mut self, key_sha256: String, cert: IssuedSerial) {
        self.key_sha256 = key_sha256;
        self.issued.push(cert);
        let extra = self.issued.len().saturating_sub(ISSUED_KEPT);
        self.issued.drain(..extra);
    }
}

/// A revoked device: no certificate issued to it is accepted again, and it
/// is never issued another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedDevice {
    pub device: DeviceId,
    pub revoked_at: u64,
    /// The serials issued to it that were still remembered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(uses: u32, used: u32) -> EnrollTokenRecord {
        EnrollTokenRecord {
            id: "0123456789abcdef".into(),
            secret_sha256: "00".repeat(32),
            group: GroupName::new("cameras").unwrap(),
            uses,
            used,
            expires_at: 100,
            approve: false,
            reenroll: false,
            created_at: 10,
            revoked: false,
        }
    }

    #[test]
    fn a_token_is_unusable_once_revoked_expired_or_used_up() {
        assert_eq!(token(2, 1).unusable(99), None);
        assert_eq!(token(2, 2).unusable(99), Some(TokenUnusable::UsedUp));
        assert_eq!(token(2, 1).unusable(100), Some(TokenUnusable::Expired));
        let mut revoked = token(2, 0);
        revoked.revoked = true;
        assert_eq!(revoked.unusable(0), Some(TokenUnusable::Revoked));
    }

    #[test]
    fn a_device_keeps_its_newest_certificates_and_renews_from_any_valid_one() {
        let mut r = DeviceCertRecord {
            device: DeviceId::new("cam-01").unwrap(),
            key_sha256: "k0".into(),
            issued: vec![],
            token_id: "t".into(),
            enrolled_at: 0,
            renewed_at: None,
        };
        for i in 0..(ISSUED_KEPT as u64 + 3) {
            let cert = IssuedSerial {
                serial: format!("{i:02x}"),
                not_before: i * 10,
                not_after: i * 10 + 30,
            };
            r.push(format!("k{i}"), cert);
        }
        assert_eq!(r.issued.len(), ISSUED_KEPT);
        assert_eq!(r.current().unwrap().serial, "0a");
        assert_eq!(r.key_sha256, "k10");
        // The previous certificate is still valid at 101; 0a's too.
        assert!(r.holds("09", 101) && r.holds("0A", 101));
        // Expired, or forgotten.
        assert!(!r.holds("09", 120) && !r.holds("00", 1));
    }
}
