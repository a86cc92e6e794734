//! The agent's persisted state: one sled tree (`deploy`) in the agent's one
//! sled database (shared with the content store, see [`crate::store::Store::db`]).
//!
//! Keys:
//!
//! ```text
//! app/<name>          AppRecord (JSON): phase, target, current, previous, restarts, last error
//! generation          the last accepted desired-state generation (decimal)
//! desired             sha256 of the last accepted desired-state envelope bytes
//! rejected            ErrorInfo of the last refused desired state (JSON)
//! trust               the current trust root envelope (trust.json bytes, rotations applied)
//! image/<reference>   content-store images the lifecycle keeps (value unused)
//! ```
//!
//! Every write that the lifecycle depends on is flushed before it returns:
//! a phase is on disk before any of its effects runs.

use std::path::PathBuf;

use fleet_protocol::dsse::Envelope;
use fleet_protocol::message::Health;
use fleet_protocol::{AppName, Digest, ErrorInfo, Phase, Release};
use serde::{Deserialize, Serialize};

use crate::image::Layer;
use crate::runtime::ContainerId;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("agent state database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("agent state record {key:?} is unreadable: {source}")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A release the agent knows: the verified release, where it came from, and
/// (once verified) its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub release: Release,
    /// sha256 of the release envelope's payload (what desired states name).
    pub release_digest: Digest,
    /// The signed release envelope as received.
    pub envelope: Envelope,
    /// The runtime container id of this release.
    pub container: ContainerId,
    /// The content-store image reference (`repository@manifest_digest`).
    pub image: String,
    /// The image config blob, known once the content is verified.
    #[serde(default)]
    pub config: Option<Digest>,
    /// Layers bottom → top, known once the content is verified.
    #[serde(default)]
    pub layers: Vec<Layer>,
}

impl ReleaseRecord {
    pub fn same_release(&self, other: &ReleaseRecord) -> bool {
        self.release_digest == other.release_digest
    }
}

/// Everything the agent remembers about one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub app: AppName,
    pub phase: Phase,
    /// The release being installed, or the last one tried (kept after a
    /// failure or rollback so that it is not retried until a different one
    /// is desired).
    #[serde(default)]
    pub target: Option<ReleaseRecord>,
    /// The last committed release: what runs outside an update, and the
    /// rollback target of an update in progress.
    #[serde(default)]
    pub current: Option<ReleaseRecord>,
    /// The release committed before `current`; its content is kept too.
    #[serde(default)]
    pub previous: Option<ReleaseRecord>,
    /// Restarts of the running container seen during the last probation.
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_error: Option<ErrorInfo>,
    /// Health as last observed by the lifecycle (probation).
    #[serde(default)]
    pub health: Health,
    /// A commit whose garbage collection has not finished yet.
    #[serde(default)]
    pub gc_pending: bool,
    /// Unix seconds of the last phase change.
    #[serde(default)]
    pub updated_at: u64,
}

impl AppRecord {
    pub fn new(app: AppName) -> Self {
        AppRecord {
            app,
            phase: Phase::Committed,
            target: None,
            current: None,
            previous: None,
            restarts: 0,
            last_error: None,
            health: Health::Unknown,
            gc_pending: false,
            updated_at: 0,
        }
    }

    /// The releases whose content must stay: target (while it may still run
    /// or be rolled forward), current and previous.
    pub fn kept(&self) -> impl Iterator<Item = &ReleaseRecord> {
        self.target
            .iter()
            .chain(self.current.iter())
            .chain(self.previous.iter())
    }

    /// The release that should be running in this phase (none on a first
    /// install before its target starts, or after it was rolled back).
    pub fn expected_running(&self) -> Option<&ReleaseRecord> {
        match self.phase {
            Phase::Starting | Phase::Probation { .. } => self.target.as_ref(),
            // Committed is persisted before the commit moves target to current.
            Phase::Committed => self.target.as_ref().or(self.current.as_ref()),
            _ => self.current.as_ref(),
        }
    }
}

const APP_PREFIX: &str = "app/";
const IMAGE_PREFIX: &str = "image/";
const GENERATION: &str = "generation";
const DESIRED: &str = "desired";
const REJECTED: &str = "rejected";
const TRUST: &str = "trust";

/// The agent's state tree. Cheap to clone.
#[derive(Debug, Clone)]
pub struct State {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
}

impl State {
    /// Opens the `deploy` tree of the agent's database (`path` is only for
    /// error messages).
    pub fn open(db: sled::Db, path: PathBuf) -> Result<Self, StateError> {
        let tree = db.open_tree("deploy").map_err(|source| StateError::Db {
            path: path.clone(),
            source,
        })?;
        Ok(State { db, tree, path })
    }

    fn db_err(&self, source: sled::Error) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn put_raw(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.tree
            .insert(key.as_bytes(), value)
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key.as_bytes())
            .map_err(|e| self.db_err(e))?
            .map(|v| v.to_vec()))
    }

    fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StateError::Record {
            key: key.to_owned(),
            source,
        })?;
        self.put_raw(key, &bytes)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StateError> {
        let Some(bytes) = self.get_raw(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Record {
                key: key.to_owned(),
                source,
            })
    }

    fn remove(&self, key: &str) -> Result<(), StateError> {
        self.tree
            .remove(key.as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), StateError> {
        self.tree.flush().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Writes an app's record and flushes it.
    pub fn put_app(&self, record: &AppRecord) -> Result<(), StateError> {
        self.put_json(&format!("{APP_PREFIX}{}", record.app), record)
    }

    pub fn app(&self, app: &AppName) -> Result<Option<AppRecord>, StateError> {
        self.get_json(&format!("{APP_PREFIX}{app}"))
    }

    pub fn remove_app(&self, app: &AppName) -> Result<(), StateError> {
        self.remove(&format!("{APP_PREFIX}{app}"))
    }

    /// Every app record, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(APP_PREFIX.as_bytes()) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push(
                serde_json::from_slice(&v).map_err(|source| StateError::Record {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// The last accepted generation.
    pub fn generation(&self) -> Result<Option<u64>, StateError> {
        Ok(self
            .get_raw(GENERATION)?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok()))
    }

    /// Records an accepted desired state (generation and envelope digest)
    /// and clears the last rejection.
    pub fn accept(&self, generation: u64, desired: &Digest) -> Result<(), StateError> {
        self.tree
            .insert(GENERATION.as_bytes(), generation.to_string().as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.tree
            .insert(DESIRED.as_bytes(), desired.as_str().as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.tree
            .remove(REJECTED.as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// The digest of the last accepted desired-state envelope.
    pub fn desired_digest(&self) -> Result<Option<Digest>, StateError> {
        Ok(self
            .get_raw(DESIRED)?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| Digest::new(s).ok()))
    }

    pub fn set_rejected(&self, error: &ErrorInfo) -> Result<(), StateError> {
        self.put_json(REJECTED, error)
    }

    pub fn rejected(&self) -> Result<Option<ErrorInfo>, StateError> {
        self.get_json(REJECTED)
    }

    /// The current trust root envelope bytes.
    pub fn trust(&self) -> Result<Option<Vec<u8>>, StateError> {
        self.get_raw(TRUST)
    }

    pub fn set_trust(&self, bytes: &[u8]) -> Result<(), StateError> {
        self.put_raw(TRUST, bytes)
    }

    /// Content-store image references the lifecycle recorded.
    pub fn images(&self) -> Result<Vec<String>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(IMAGE_PREFIX.as_bytes()) {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            if let Some(r) = String::from_utf8_lossy(&k).strip_prefix(IMAGE_PREFIX) {
                out.push(r.to_owned());
            }
        }
        Ok(out)
    }

    pub fn add_image(&self, reference: &str) -> Result<(), StateError> {
        self.put_raw(&format!("{IMAGE_PREFIX}{reference}"), b"")
    }

    pub fn remove_image(&self, reference: &str) -> Result<(), StateError> {
        self.remove(&format!("{IMAGE_PREFIX}{reference}"))
    }

    /// The database (shared with the content store).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::ErrorCode;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("meta"))
            .open()
            .unwrap();
        let state = State::open(db, dir.path().join("meta")).unwrap();
        (dir, state)
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let app = AppName::new("web").unwrap();
        {
            let db = sled::Config::new().path(&path).open().unwrap();
            let state = State::open(db, path.clone()).unwrap();
            let mut rec = AppRecord::new(app.clone());
            rec.phase = Phase::Probation { deadline: 42 };
            rec.last_error = Some(ErrorInfo::new(ErrorCode::CrashLoop, "boom"));
            state.put_app(&rec).unwrap();
            state.accept(7, &Digest::of(b"desired")).unwrap();
            state.add_image("r@sha256:00").unwrap();
        }
        // Reopening right after a drop waits for sled's lock (bounded, in
        // sled's open: third_party/sled/PATCHES.md).
        let db = sled::Config::new().path(&path).open().unwrap();
        let state = State::open(db, path).unwrap();
        let rec = state.app(&app).unwrap().unwrap();
        assert_eq!(rec.phase, Phase::Probation { deadline: 42 });
        assert_eq!(rec.last_error.unwrap().code, ErrorCode::CrashLoop);
        assert_eq!(state.generation().unwrap(), Some(7));
        assert_eq!(
            state.desired_digest().unwrap(),
            Some(Digest::of(b"desired"))
        );
        assert_eq!(state.images().unwrap(), vec!["r@sha256:00".to_owned()]);
        assert_eq!(state.apps().unwrap().len(), 1);
    }

    #[test]
    fn accepting_clears_the_last_rejection() {
        let (_dir, state) = state();
        state
            .set_rejected(&ErrorInfo::new(ErrorCode::Expired, "old"))
            .unwrap();
        assert!(state.rejected().unwrap().is_some());
        state.accept(1, &Digest::of(b"x")).unwrap();
        assert!(state.rejected().unwrap().is_none());
    }
}
