//! Enrollment and renewal: the checks, then one locked step that issues the
//! certificate and commits the token's use, the device's certificate record
//! and its group membership together.
//!
//! Enrollment, in order: a token of this fleet CA that the store knows
//! (401 otherwise), a device not revoked (403), a key that is the device's
//! own (409 if the device holds another one, unless the token allows
//! re-enrollment), a usable token (403: revoked, expired, used up), the
//! admin's approval if the token asks for it (202 until then). The same
//! request repeated after a lost answer (same device, key and token) is
//! answered again with a fresh certificate without spending another use.

use std::net::SocketAddr;
use std::sync::Arc;

use fleet_protocol::DeviceId;
use fleet_protocol::enroll::{EnrollRequest, EnrollToken, Issued, RenewRequest, sha256_hex};
use rcgen::{CertificateSigningRequestParams, PublicKeyData as _};

use super::{EnrollError, EnrollState};
use crate::fleet::enroll::Locked;
use crate::pki::{FleetCa, PeerCert, PkiError};
use crate::store::{
    DeviceCertRecord, EnrollTokenRecord, EventKind, EventRecord, IssuedSerial, PendingEnrollment,
    Store, TokenUnusable, Write,
};

/// What an enrollment request gets.
#[derive(Debug)]
pub enum Enrolled {
    /// A certificate (`200`).
    Issued(Issued),
    /// Waiting for an admin (`202`).
    Pending,
}

/// A CSR checked (its signature proves the key) with its key's hash.
struct Csr {
    pem: String,
    key_sha256: String,
}

fn check_csr(pem: String) -> Result<Csr, EnrollError> {
    if pem.len() > crate::pki::MAX_CSR_BYTES {
        return Err(EnrollError::BadCsr(PkiError::CsrTooLarge));
    }
    let parsed = CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| EnrollError::BadCsr(PkiError::BadCsr(e.to_string())))?;
    let key_sha256 = sha256_hex(&parsed.public_key.subject_public_key_info());
    Ok(Csr { pem, key_sha256 })
}

fn device_id(given: &str) -> Result<DeviceId, EnrollError> {
    DeviceId::new(given).map_err(|e| EnrollError::BadDevice {
        given: given.chars().take(80).collect(),
        reason: e.to_string(),
    })
}

fn event(kind: EventKind, subject: &DeviceId, message: String, at: u64) -> Write {
    Write::Event(EventRecord {
        seq: 0,
        at,
        kind,
        subject: subject.to_string(),
        message,
    })
}

/// `POST /enroll/v1`.
pub async fn enroll(
    state: &EnrollState,
    req: EnrollRequest,
    peer: Option<SocketAddr>,
) -> Result<Enrolled, EnrollError> {
    let token = EnrollToken::parse(&req.token).map_err(|_| EnrollError::UnknownToken)?;
    if token.ca_fingerprint() != state.ca.fingerprint() {
        return Err(EnrollError::OtherCa);
    }
    let device = device_id(&req.device)?;
    if state.revoked.contains(&device) {
        return Err(EnrollError::DeviceRevoked { device });
    }
    let csr = check_csr(req.csr)?;
    let step = Step {
        ca: state.ca.clone(),
        lifetime: state.cert_lifetime_secs,
        max_pending: state.max_pending,
        secret_sha256: token.secret_sha256(),
        device,
        csr,
        peer: peer.map(|p| p.ip().to_string()),
    };
    let outcome = state
        .fleet
        .locked(move |store, now| step.run(store, now))
        .await;
    if let Ok(Enrolled::Issued(issued)) = &outcome {
        tracing::info!(device = %req.device, token = %token.id(), serial = %issued.serial,
            not_after = issued.not_after, peer = ?peer, "device enrolled");
    }
    outcome
}

/// One enrollment request, decided under the engine's write lock.
struct Step {
    ca: Arc<FleetCa>,
    lifetime: u64,
    max_pending: usize,
    secret_sha256: String,
    device: DeviceId,
    csr: Csr,
    peer: Option<String>,
}

impl Step {
    fn run(self, store: &dyn Store, now: u64) -> Result<Locked<Enrolled>, EnrollError> {
        let Some(mut token) = store.enroll_token(&self.secret_sha256)? else {
            return Err(EnrollError::UnknownToken);
        };
        let device = &self.device;
        if store.revoked(device)?.is_some() {
            return Err(EnrollError::DeviceRevoked {
                device: device.clone(),
            });
        }
        let existing = store.device_cert(device)?;
        let same_key = existing
            .as_ref()
            .is_some_and(|c| c.key_sha256 == self.csr.key_sha256);
        if existing.is_some() && !same_key && !token.reenroll {
            return Err(EnrollError::OtherKey {
                device: device.clone(),
            });
        }
        // The same enrollment again (its answer was lost): no new use.
        let repeat = same_key && existing.as_ref().is_some_and(|c| c.token_id == token.id);
        match token.unusable(now) {
            None => {}
            Some(TokenUnusable::UsedUp) if repeat => {}
            Some(why) => {
                return Err(EnrollError::TokenUnusable { id: token.id, why });
            }
        }
        let mut writes = Vec::new();
        if token.approve && !repeat {
            match self.approval(store, &token, now)? {
                Approval::Wait(write) => {
                    return Ok(Locked {
                        value: Enrolled::Pending,
                        writes: write.into_iter().map(|w| *w).collect(),
                        join: None,
                    });
                }
                Approval::Given => writes.push(Write::DeletePending(device.clone())),
            }
        }
        let cert = self
            .ca
            .sign_device_csr(&self.csr.pem, device, self.lifetime, now)
            .map_err(EnrollError::Issue)?;
        let serial = IssuedSerial {
            serial: cert.serial.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
        };
        let mut record = existing.unwrap_or_else(|| DeviceCertRecord {
            device: device.clone(),
            key_sha256: String::new(),
            issued: Vec::new(),
            token_id: token.id.clone(),
            enrolled_at: now,
            renewed_at: None,
        });
        record.push(self.csr.key_sha256.clone(), serial);
        record.token_id = token.id.clone();
        record.enrolled_at = now;
        let group = token.group.clone();
        let message = format!(
            "enrolled with token {} into group {group}, certificate {}{}",
            token.id,
            cert.serial,
            if repeat { " (repeated request)" } else { "" }
        );
        if !repeat {
            token.used += 1;
            writes.push(Write::EnrollToken(token));
        }
        writes.push(Write::DeviceCert(record));
        writes.push(event(EventKind::DeviceEnrolled, device, message, now));
        Ok(Locked {
            value: Enrolled::Issued(issued(&self.ca, cert, now)),
            writes,
            join: Some((group, device.clone())),
        })
    }

    /// Where an enrollment with a token that needs approval stands.
    fn approval(
        &self,
        store: &dyn Store,
        token: &EnrollTokenRecord,
        now: u64,
    ) -> Result<Approval, EnrollError> {
        if let Some(p) = store.pending(&self.device)? {
            if p.key_sha256 != self.csr.key_sha256 {
                return Err(EnrollError::PendingOtherKey {
                    device: self.device.clone(),
                });
            }
            return Ok(if p.approved {
                Approval::Given
            } else {
                Approval::Wait(None)
            });
        }
        let pendings = store.pendings()?;
        if pendings.len() >= self.max_pending {
            return Err(EnrollError::TooManyPending {
                max: self.max_pending,
            });
        }
        // A token's waiting enrollments count against its uses.
        let waiting = pendings.iter().filter(|p| p.token_id == token.id).count();
        if u64::from(token.used) + waiting as u64 >= u64::from(token.uses) {
            return Err(EnrollError::TokenUnusable {
                id: token.id.clone(),
                why: TokenUnusable::UsedUp,
            });
        }
        tracing::info!(device = %self.device, token = %token.id, key_sha256 = %self.csr.key_sha256,
            peer = ?self.peer, "enrollment waits for approval");
        Ok(Approval::Wait(Some(Box::new(Write::Pending(
            PendingEnrollment {
                device: self.device.clone(),
                csr: self.csr.pem.clone(),
                key_sha256: self.csr.key_sha256.clone(),
                token_id: token.id.clone(),
                requested_at: now,
                peer: self.peer.clone(),
                approved: false,
            },
        )))))
    }
}

enum Approval {
    /// Not approved yet; the write records the request if it is new.
    Wait(Option<Box<Write>>),
    Given,
}

fn issued(ca: &FleetCa, cert: crate::pki::IssuedCert, issued_at: u64) -> Issued {
    Issued {
        certificate: cert.pem,
        ca: ca.cert_pem().to_owned(),
        serial: cert.serial,
        issued_at,
        not_before: cert.not_before,
        not_after: cert.not_after,
    }
}

/// `POST /enroll/v1/renew`, `peer` being the verified client certificate.
pub async fn renew(
    state: &EnrollState,
    peer: Option<PeerCert>,
    req: RenewRequest,
) -> Result<Issued, EnrollError> {
    let peer = peer.ok_or(EnrollError::NoClientCertificate)?;
    let device = peer.device.clone();
    if state.revoked.contains(&device) {
        return Err(EnrollError::DeviceRevoked { device });
    }
    let csr = check_csr(req.csr)?;
    let ca = state.ca.clone();
    let lifetime = state.cert_lifetime_secs;
    let issued = state
        .fleet
        .locked(move |store, now| {
            if store.revoked(&device)?.is_some() {
                return Err(EnrollError::DeviceRevoked { device });
            }
            let mut record = match store.device_cert(&device)? {
                Some(r) if r.holds(&peer.serial, now) => r,
                _ => {
                    return Err(EnrollError::UnknownCertificate {
                        device,
                        serial: peer.serial,
                    });
                }
            };
            let cert = ca
                .sign_device_csr(&csr.pem, &device, lifetime, now)
                .map_err(EnrollError::Issue)?;
            record.push(
                csr.key_sha256,
                IssuedSerial {
                    serial: cert.serial.clone(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                },
            );
            record.renewed_at = Some(now);
            Ok(Locked {
                value: issued(&ca, cert, now),
                writes: vec![Write::DeviceCert(record)],
                join: None,
            })
        })
        .await?;
    tracing::info!(device = %peer.device, serial = %issued.serial, not_after = issued.not_after,
        "device certificate renewed");
    Ok(issued)
}
