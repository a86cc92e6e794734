//! The sled backend: one tree per record type, JSON values.

use std::path::Path;

use fleet_protocol::{DeviceId, Digest, GroupName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{
    AUDIT_RETENTION, AuditRecord, DesiredRecord, DeviceCertRecord, DeviceRecord, EnrollTokenRecord,
    EventRecord, GroupRecord, PendingEnrollment, ReleaseRecord, RevokedDevice, RolloutId,
    RolloutRecord, Store, StoreError, TelemetryRecord, TokenRecord, Write,
};

const NEXT_ROLLOUT: &[u8] = b"next_rollout_id";
/// The last audit sequence number handed out (contiguous: 1, 2, 3, ...).
const LAST_AUDIT: &[u8] = b"last_audit_seq";

pub struct SledStore {
    db: sled::Db,
    devices: sled::Tree,
    groups: sled::Tree,
    releases: sled::Tree,
    rollouts: sled::Tree,
    desired: sled::Tree,
    events: sled::Tree,
    tokens: sled::Tree,
    telemetry: sled::Tree,
    meta: sled::Tree,
    audit: sled::Tree,
    audit_retention: u64,
    enroll_tokens: sled::Tree,
    pending: sled::Tree,
    device_certs: sled::Tree,
    revoked: sled::Tree,
}

fn io(what: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(io(what))? {
        Some(bytes) => decode(what, key, &bytes).map(Some),
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, what: &'static str) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|item| {
            let (k, v) = item.map_err(io(what))?;
            decode(what, &k, &v)
        })
        .collect()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: dir.to_owned(),
            source,
        };
        // A small cache: the server keeps little hot data.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(open_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        Ok(SledStore {
            devices: tree("devices")?,
            groups: tree("groups")?,
            releases: tree("releases")?,
            rollouts: tree("rollouts")?,
            desired: tree("desired")?,
            events: tree("events")?,
            tokens: tree("tokens")?,
            telemetry: tree("telemetry")?,
            meta: tree("meta")?,
            audit: tree("audit")?,
            audit_retention: AUDIT_RETENTION,
            enroll_tokens: tree("enroll_tokens")?,
            pending: tree("enroll_pending")?,
            device_certs: tree("device_certs")?,
            revoked: tree("revoked_devices")?,
            db,
        })
    }

    /// Keeps only the newest `n` audit records (instead of
    /// [`AUDIT_RETENTION`]); for tests of the retention.
    pub fn with_audit_retention(mut self, n: u64) -> SledStore {
        self.audit_retention = n.max(1);
        self
    }

    /// Drops the audit records older than the newest `retention` ones,
    /// `last` being the newest sequence number (they are contiguous).
    fn trim_audit(&self, last: u64) -> Result<(), StoreError> {
        let keep_from = last.saturating_sub(self.audit_retention).saturating_add(1);
        while let Some((key, _)) = self.audit.first().map_err(io("audit"))? {
            let seq = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if seq >= keep_from {
                break;
            }
            self.audit.remove(key).map_err(io("audit"))?;
        }
        Ok(())
    }
}

/// A corrupt token record's error without its key: the key is the token's
/// hash, which no log line or error may show.
fn hide_token_key(e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt { what, source, .. } => StoreError::Corrupt {
            what,
            key: "(hidden)".into(),
            source,
        },
        e => e,
    }
}

/// A corrupt enrollment token's error without its key: the key is the
/// secret's hash, which no log line or error shows.
fn hide_key(e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt { what, source, .. } => StoreError::Corrupt {
            what,
            key: "(hidden)".into(),
            source,
        },
        e => e,
    }
}

/// One write of a commit, encoded: a put or a delete in the tree at an
/// index of the commit's tuple of trees, or an event (numbered in the
/// transaction).
enum Op {
    Put(usize, Vec<u8>, Vec<u8>),
    Del(usize, Vec<u8>),
    Event(EventRecord),
}

fn op(w: Write) -> Result<Op, StoreError> {
    Ok(match w {
        Write::Device(r) => Op::Put(0, r.id.as_str().into(), encode("device", &r)?),
        Write::Group(r) => Op::Put(1, r.name.as_str().into(), encode("group", &r)?),
        Write::DeleteGroup(name) => Op::Del(1, name.as_str().into()),
        Write::Release(r) => Op::Put(2, r.digest.as_str().into(), encode("release", &r)?),
        Write::Rollout(r) => Op::Put(3, r.id.to_be_bytes().into(), encode("rollout", &r)?),
        Write::Desired(r) => Op::Put(4, r.device.as_str().into(), encode("desired", &r)?),
        Write::Event(r) => Op::Event(r),
        Write::Token(r) => Op::Put(6, r.hash.as_bytes().into(), encode("token", &r)?),
        Write::DeleteToken(hash) => Op::Del(6, hash.into_bytes()),
        Write::Telemetry(r) => Op::Put(7, r.device.as_str().into(), encode("telemetry", &r)?),
        Write::EnrollToken(r) => Op::Put(
            8,
            r.secret_sha256.as_bytes().into(),
            encode("enroll token", &r)?,
        ),
        Write::Pending(r) => Op::Put(
            9,
            r.device.as_str().into(),
            encode("pending enrollment", &r)?,
        ),
        Write::DeletePending(d) => Op::Del(9, d.as_str().into()),
        Write::DeviceCert(r) => Op::Put(
            10,
            r.device.as_str().into(),
            encode("device certificate", &r)?,
        ),
        Write::Revoke(r) => Op::Put(11, r.device.as_str().into(), encode("revoked device", &r)?),
    })
}

impl Store for SledStore {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        get(&self.devices, "device", id.as_str().as_bytes())
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        all(&self.devices, "device")
    }

    fn group(&self, name: &GroupName) -> Result<Option<GroupRecord>, StoreError> {
        get(&self.groups, "group", name.as_str().as_bytes())
    }

    fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        all(&self.groups, "group")
    }

    fn release(&self, digest: &Digest) -> Result<Option<ReleaseRecord>, StoreError> {
        get(&self.releases, "release", digest.as_str().as_bytes())
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        all(&self.releases, "release")
    }

    fn rollout(&self, id: RolloutId) -> Result<Option<RolloutRecord>, StoreError> {
        get(&self.rollouts, "rollout", &id.to_be_bytes())
    }

    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        all(&self.rollouts, "rollout")
    }

    fn next_rollout_id(&self) -> Result<RolloutId, StoreError> {
        let next = self
            .meta
            .update_and_fetch(NEXT_ROLLOUT, |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some(n.saturating_add(1).to_be_bytes().to_vec())
            })
            .map_err(io("rollout id"))?;
        self.db.flush().map_err(io("rollout id"))?;
        Ok(next
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }

    fn desired(&self, device: &DeviceId) -> Result<Option<DesiredRecord>, StoreError> {
        get(&self.desired, "desired", device.as_str().as_bytes())
    }

    fn desired_all(&self) -> Result<Vec<DesiredRecord>, StoreError> {
        all(&self.desired, "desired")
    }

    fn events(&self, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.events.iter().rev().take(limit) {
            let (k, v) = item.map_err(io("event"))?;
            out.push(decode("event", &k, &v)?);
        }
        out.reverse();
        Ok(out)
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        get(&self.tokens, "token", hash.as_bytes()).map_err(hide_token_key)
    }

    fn token_count(&self) -> Result<usize, StoreError> {
        Ok(self.tokens.len())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        all(&self.tokens, "token").map_err(hide_token_key)
    }

    fn audit_append(&self, record: AuditRecord) -> Result<u64, StoreError> {
        let result: Result<u64, TransactionError<StoreError>> = (&self.meta, &self.audit)
            .transaction(|(meta, audit)| {
                let last = meta
                    .get(LAST_AUDIT)?
                    .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let seq = last.saturating_add(1);
                let mut record = record.clone();
                record.seq = seq;
                let bytes =
                    encode("audit", &record).map_err(ConflictableTransactionError::Abort)?;
                meta.insert(LAST_AUDIT, &seq.to_be_bytes())?;
                audit.insert(&seq.to_be_bytes(), bytes)?;
                Ok(seq)
            });
        let seq = match result {
            Ok(seq) => seq,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(source)) => {
                return Err(StoreError::Io {
                    what: "audit",
                    source,
                });
            }
        };
        self.trim_audit(seq)?;
        self.db.flush().map_err(io("audit flush"))?;
        Ok(seq)
    }

    fn audit(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let decode_item = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = item.map_err(io("audit"))?;
            decode("audit", &k, &v)
        };
        match after {
            Some(after) => self
                .audit
                .range(after.saturating_add(1).to_be_bytes()..)
                .take(limit)
                .map(decode_item)
                .collect(),
            None => {
                let mut out = self
                    .audit
                    .iter()
                    .rev()
                    .take(limit)
                    .map(decode_item)
                    .collect::<Result<Vec<_>, _>>()?;
                out.reverse();
                Ok(out)
            }
        }
    }

    fn telemetry_all(&self) -> Result<Vec<TelemetryRecord>, StoreError> {
        all(&self.telemetry, "telemetry")
    }

    fn enroll_token(&self, secret_sha256: &str) -> Result<Option<EnrollTokenRecord>, StoreError> {
        get(
            &self.enroll_tokens,
            "enroll token",
            secret_sha256.as_bytes(),
        )
        .map_err(hide_key)
    }

    fn enroll_tokens(&self) -> Result<Vec<EnrollTokenRecord>, StoreError> {
        all(&self.enroll_tokens, "enroll token").map_err(hide_key)
    }

    fn pending(&self, device: &DeviceId) -> Result<Option<PendingEnrollment>, StoreError> {
        get(
            &self.pending,
            "pending enrollment",
            device.as_str().as_bytes(),
        )
    }

    fn pendings(&self) -> Result<Vec<PendingEnrollment>, StoreError> {
        all(&self.pending, "pending enrollment")
    }

    fn device_cert(&self, device: &DeviceId) -> Result<Option<DeviceCertRecord>, StoreError> {
        get(
            &self.device_certs,
            "device certificate",
            device.as_str().as_bytes(),
        )
    }

    fn revoked(&self, device: &DeviceId) -> Result<Option<RevokedDevice>, StoreError> {
        get(&self.revoked, "revoked device", device.as_str().as_bytes())
    }

    fn revoked_all(&self) -> Result<Vec<RevokedDevice>, StoreError> {
        all(&self.revoked, "revoked device")
    }

    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        // Encode first so the transaction closure cannot fail on serde.
        let ops = writes.into_iter().map(op).collect::<Result<Vec<_>, _>>()?;
        let trees = (
            &self.devices,
            &self.groups,
            &self.releases,
            &self.rollouts,
            &self.desired,
            &self.events,
            &self.tokens,
            &self.telemetry,
            &self.enroll_tokens,
            &self.pending,
            &self.device_certs,
            &self.revoked,
        );
        let result: Result<(), TransactionError<StoreError>> = trees.transaction(
            |(
                devices,
                groups,
                releases,
                rollouts,
                desired,
                events,
                tokens,
                telemetry,
                enroll_tokens,
                pending,
                device_certs,
                revoked,
            )| {
                let trees = [
                    devices,
                    groups,
                    releases,
                    rollouts,
                    desired,
                    events,
                    tokens,
                    telemetry,
                    enroll_tokens,
                    pending,
                    device_certs,
                    revoked,
                ];
                for op in &ops {
                    match op {
                        Op::Put(t, k, v) => {
                            trees[*t].insert(k.as_slice(), v.as_slice())?;
                        }
                        Op::Del(t, k) => {
                            trees[*t].remove(k.as_slice())?;
                        }
                        Op::Event(e) => {
                            let seq = events.generate_id()?;
                            let mut e = e.clone();
                            e.seq = seq;
                            let bytes =
                                encode("event", &e).map_err(ConflictableTransactionError::Abort)?;
                            events.insert(&seq.to_be_bytes(), bytes)?;
                        }
                    }
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(source)) => {
                return Err(StoreError::Io {
                    what: "commit",
                    source,
                });
            }
        }
        self.db.flush().map_err(io("commit flush"))?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "sled_store_tests.rs"]
mod tests;
