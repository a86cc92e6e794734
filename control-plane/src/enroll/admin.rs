//! What admins do about enrollment (`fleetctl enroll ...`, `fleetctl
//! devices revoke`): make, list and revoke bootstrap tokens, approve or
//! reject waiting enrollments, revoke devices. Every change runs under the
//! engine's write lock, as the enrollments it races with.

use fleet_protocol::enroll::EnrollToken;
use fleet_protocol::{DeviceId, GroupName};
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};

use super::{EnrollError, EnrollState};
use crate::fleet::enroll::Locked;
use crate::store::{
    EnrollTokenRecord, EventKind, EventRecord, PendingEnrollment, RevokedDevice, Store, Write,
};

/// Uses one token may have, at most.
pub const MAX_USES: u32 = 1_000_000;
/// How long a token may live, at most: a year.
pub const MAX_EXPIRES_SECS: u64 = 365 * 24 * 3600;

/// `POST /api/v1/enroll/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollToken {
    pub group: GroupName,
    /// Enrollments it allows (1: single-use).
    pub uses: u32,
    /// Seconds from now until it expires.
    pub expires_in_secs: u64,
    /// Enrollments wait for `fleetctl enroll approve`.
    #[serde(default)]
    pub approve: bool,
    /// A device id enrolled already under another key may enroll again.
    #[serde(default)]
    pub reenroll: bool,
}

/// A token as listed: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenView {
    pub id: String,
    pub group: GroupName,
    pub uses: u32,
    pub used: u32,
    pub expires_at: u64,
    pub approve: bool,
    pub reenroll: bool,
    pub created_at: u64,
    pub revoked: bool,
    /// `active`, `used up`, `expired` or `revoked` (when listed).
    pub state: String,
}

impl EnrollTokenView {
    fn of(r: &EnrollTokenRecord, now: u64) -> Self {
        Self {
            id: r.id.clone(),
            group: r.group.clone(),
            uses: r.uses,
            used: r.used,
            expires_at: r.expires_at,
            approve: r.approve,
            reenroll: r.reenroll,
            created_at: r.created_at,
            revoked: r.revoked,
            state: r
                .unusable(now)
                .map_or_else(|| "active".to_owned(), |why| why.to_string()),
        }
    }
}

/// The answer to a token's creation: the only time the token is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedEnrollToken {
    #[serde(flatten)]
    pub view: EnrollTokenView,
    pub token: String,
}

impl std::fmt::Debug for CreatedEnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedEnrollToken")
            .field("view", &self.view)
            .field("token", &"(hidden)")
            .finish()
    }
}

/// An enrollment waiting for approval, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub device: DeviceId,
    /// SHA-256 of the device's public key: the agent shows it while it
    /// waits, so the admin can tell it is that device asking.
    pub key_sha256: String,
    pub token_id: String,
    pub requested_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub approved: bool,
}

impl From<PendingEnrollment> for PendingView {
    fn from(p: PendingEnrollment) -> Self {
        Self {
            device: p.device,
            key_sha256: p.key_sha256,
            token_id: p.token_id,
            requested_at: p.requested_at,
            peer: p.peer,
            approved: p.approved,
        }
    }
}

fn event(kind: EventKind, subject: impl ToString, message: String, at: u64) -> Write {
    Write::Event(EventRecord {
        seq: 0,
        at,
        kind,
        subject: subject.to_string(),
        message,
    })
}

fn invalid(what: &str) -> EnrollError {
    EnrollError::Invalid(what.to_owned())
}

/// Makes a token for an existing group.
pub async fn create_token(
    state: &EnrollState,
    req: CreateEnrollToken,
) -> Result<CreatedEnrollToken, EnrollError> {
    if !(1..=MAX_USES).contains(&req.uses) {
        return Err(invalid("uses must be 1 to 1000000"));
    }
    if !(60..=MAX_EXPIRES_SECS).contains(&req.expires_in_secs) {
        return Err(invalid(
            "expires_in_secs must be 60 (1m) to 31536000 (365d)",
        ));
    }
    let mut secret = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut secret);
    let token = EnrollToken::new(secret, state.ca.fingerprint())
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let created = state
        .fleet
        .locked(move |store, now| {
            if store.group(&req.group)?.is_none() {
                return Err(EnrollError::NotFound {
                    what: "group",
                    key: req.group.to_string(),
                });
            }
            let record = EnrollTokenRecord {
                id: token.id(),
                secret_sha256: token.secret_sha256(),
                group: req.group,
                uses: req.uses,
                used: 0,
                expires_at: now + req.expires_in_secs,
                approve: req.approve,
                reenroll: req.reenroll,
                created_at: now,
                revoked: false,
            };
            let message = format!(
                "token made: group {}, {} uses, expires at {}{}{}",
                record.group,
                record.uses,
                record.expires_at,
                if record.approve { ", approval" } else { "" },
                if record.reenroll {
                    ", re-enrollment"
                } else {
                    ""
                },
            );
            let view = EnrollTokenView::of(&record, now);
            Ok(Locked {
                writes: vec![
                    event(EventKind::EnrollToken, &record.id, message, now),
                    Write::EnrollToken(record),
                ],
                value: CreatedEnrollToken {
                    view,
                    token: token.to_string(),
                },
                join: None,
            })
        })
        .await?;
    tracing::info!(token = %created.view.id, group = %created.view.group, uses = created.view.uses,
        "enrollment token made");
    Ok(created)
}

/// Every token, oldest first.
pub async fn list_tokens(state: &EnrollState) -> Result<Vec<EnrollTokenView>, EnrollError> {
    state
        .fleet
        .locked(|store, now| {
            let mut all = store.enroll_tokens()?;
            all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(Locked::answer(
                all.iter().map(|t| EnrollTokenView::of(t, now)).collect(),
            ))
        })
        .await
}

fn token_by_id(store: &dyn Store, id: &str) -> Result<EnrollTokenRecord, EnrollError> {
    let not_found = || EnrollError::NotFound {
        what: "enrollment token",
        key: id.chars().take(32).collect(),
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let id = id.to_ascii_lowercase();
    store
        .enroll_tokens()?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(not_found)
}

/// Revokes a token: it enrolls nothing from now on (devices it enrolled
/// keep their certificates).
pub async fn revoke_token(state: &EnrollState, id: String) -> Result<EnrollTokenView, EnrollError> {
    state
        .fleet
        .locked(move |store, now| {
            let mut token = token_by_id(store, &id)?;
            let mut writes = Vec::new();
            if !token.revoked {
                token.revoked = true;
                let message = format!("token revoked ({} of {} uses done)", token.used, token.uses);
                writes.push(event(EventKind::EnrollToken, &token.id, message, now));
                writes.push(Write::EnrollToken(token.clone()));
            }
            Ok(Locked {
                value: EnrollTokenView::of(&token, now),
                writes,
                join: None,
            })
        })
        .await
}

/// Enrollments waiting for approval (and approved ones the device has not
/// come back for yet), oldest first.
pub async fn pending(state: &EnrollState) -> Result<Vec<PendingView>, EnrollError> {
    state
        .fleet
        .locked(|store, _| {
            let mut all = store.pendings()?;
            all.sort_by(|a, b| (a.requested_at, &a.device).cmp(&(b.requested_at, &b.device)));
            Ok(Locked::answer(
                all.into_iter().map(PendingView::from).collect(),
            ))
        })
        .await
}

/// Approves (or with `approve` false, rejects: forgets) the enrollment
/// `device` waits with.
pub async fn decide(
    state: &EnrollState,
    device: DeviceId,
    approve: bool,
) -> Result<PendingView, EnrollError> {
    state
        .fleet
        .locked(move |store, now| {
            let mut p = store
                .pending(&device)?
                .ok_or_else(|| EnrollError::NotFound {
                    what: "pending enrollment of device",
                    key: device.to_string(),
                })?;
            let verb = if approve { "approved" } else { "rejected" };
            let message = format!("enrollment {verb} (key sha256 {})", p.key_sha256);
            let mut writes = vec![event(EventKind::EnrollPending, &device, message, now)];
            if approve {
                p.approved = true;
                writes.push(Write::Pending(p.clone()));
            } else {
                writes.push(Write::DeletePending(device.clone()));
            }
            Ok(Locked {
                value: PendingView::from(p),
                writes,
                join: None,
            })
        })
        .await
}

/// Revokes `device` for good: in the store first, then in the in-memory
/// set the broker and the API check (the broker cuts its connection).
/// Revoking a revoked device again changes nothing.
pub async fn revoke_device(
    state: &EnrollState,
    device: DeviceId,
) -> Result<RevokedDevice, EnrollError> {
    let id = device.clone();
    let revoked = state
        .fleet
        .locked(move |store, now| {
            if let Some(r) = store.revoked(&device)? {
                return Ok(Locked::answer(r));
            }
            let certs = store.device_cert(&device)?;
            let pending = store.pending(&device)?;
            if certs.is_none() && pending.is_none() && store.device(&device)?.is_none() {
                return Err(EnrollError::NotFound {
                    what: "device",
                    key: device.to_string(),
                });
            }
            let serials: Vec<String> = certs
                .map(|c| c.issued.into_iter().map(|i| i.serial).collect())
                .unwrap_or_default();
            let record = RevokedDevice {
                device: device.clone(),
                revoked_at: now,
                serials,
            };
            let message = format!("revoked; certificates {:?}", record.serials);
            let mut writes = vec![
                Write::Revoke(record.clone()),
                event(EventKind::DeviceRevoked, &device, message, now),
            ];
            if pending.is_some() {
                writes.push(Write::DeletePending(device.clone()));
            }
            Ok(Locked {
                value: record,
                writes,
                join: None,
            })
        })
        .await?;
    state.revoked.insert(id.clone());
    tracing::warn!(device = %id, "device revoked");
    Ok(revoked)
}
