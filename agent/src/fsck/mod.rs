//! `fleet-agent fsck`: checks a stopped agent's state directory against
//! the digests it records, and with `--repair` sets aside what is damaged
//! so that it is fetched or unpacked again.
//!
//! The caller opens the store first ([`Store::open`] takes sled's exclusive
//! lock on `<state>/meta`, the lock the daemon holds while it runs), so
//! fsck never runs beside an agent. Opening the store and the snapshot
//! store does what every agent start does: modes repaired
//! ([`crate::state_dir`]) and unpacks a crash left in `snapshots/tmp`
//! removed.
//!
//! # What is checked
//!
//! - **Blobs** (`blobs/sha256/<hex>`): every file is hashed whole and must
//!   hash to its name; its size must be the one recorded when it entered
//!   the store. A record whose file is gone, and a file whose name is not a
//!   digest, are problems too.
//! - **Snapshots** (`snapshots/sha256/<hex>`): `snapshot.json` must be
//!   readable and name the same diff_id. A snapshot with a skeleton (every
//!   snapshot unpacked by this agent since delta format v2) is re-verified
//!   in full: the layer's tar is rebuilt from the skeleton and the files of
//!   `fs/` ([`fleet_protocol::delta::replay_skeleton`]) and must hash to the
//!   diff_id, so every regular file's content and size are checked, and
//!   the first missing or changed file is named. What the skeleton cannot
//!   see is not checked: metadata on disk (modes, owners, times, xattrs),
//!   symlink targets, directories, whiteouts, empty files, and files added
//!   to `fs/` that the layer does not have. A snapshot without a skeleton
//!   (made by an older agent) is checked for its metadata only and listed
//!   as not re-verifiable.
//! - **Downloads in progress** (`tmp/`): a `<hex>.partial` is kept only if
//!   a resume can use it: its journal is readable and names that digest,
//!   and it is not longer than the journal's size (a complete one must hash
//!   to the digest). The bytes of an incomplete partial cannot be checked
//!   before the download ends; the download checks them then and starts
//!   over if they were wrong. A journal without its partial, a partial
//!   without a usable journal or of a blob already stored, and leftovers of
//!   interrupted writes (`*.journal.new`, `*.put.<pid>`, `oci-archive-<pid>`
//!   of a process that is gone) are debris. Anything else in `tmp/` is
//!   reported and left alone.
//! - **References**: every image record's manifest and config are readable
//!   and verified, and each layer has its blob or its snapshot; every kept
//!   release (target, current and previous of every app) has its config
//!   blob and, per layer, a snapshot or the blob to unpack it from —
//!   exactly what staging the release needs. Damaged content counts as
//!   missing.
//!
//! # What `--repair` does
//!
//! Damaged blobs and snapshots are never deleted: they are moved to
//! `<state>/quarantine/<unix time>/{blobs,snapshots}/<hex>` (one rename, on
//! the same filesystem) and their records dropped, so the agent treats them
//! as absent. Debris in `tmp/` is deleted. Nothing else is changed:
//! unknown files are left alone, and missing content cannot be fetched by
//! fsck.
//!
//! Damaged content is set aside even when a kept release needs it — a
//! damaged copy is unusable anyway (blobs are verified as they are read,
//! and an overlay stacked on a damaged snapshot runs damaged files) — and
//! the report names each release that needs it. A container that runs on a
//! moved snapshot keeps running (its overlay holds the moved tree). The
//! next time the agent stages that release it unpacks the layer again from
//! its blob if the store has an intact one; otherwise staging fails naming
//! the missing blob, and the content must come again (the release's image
//! pulled, or the desired state re-applied). Remove a quarantine directory
//! by hand once no container uses it.

mod content;
mod refs;
mod snapshots;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use fleet_protocol::Digest;
use serde::Serialize;

use crate::snapshot::{SnapshotError, SnapshotStore};
use crate::state::{State, StateError};
use crate::store::{Store, StoreError};

/// Why fsck could not run (damage it finds is a [`Problem`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("fsck: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FsckError + use<> {
    let path = path.to_owned();
    move |source| FsckError::Io { op, path, source }
}

/// What a problem concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A blob file that does not match its digest or its record.
    Blob,
    /// A blob record without its file, or a file that is not a blob.
    BlobRecord,
    /// A snapshot whose files or metadata do not match its diff_id.
    Snapshot,
    /// A download in `tmp/` that no resume can use, or its debris.
    Download,
    /// Something in `tmp/` this agent did not make.
    Unknown,
    /// An image record whose content is missing or damaged.
    Image,
    /// A kept release whose content is missing or damaged.
    Release,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The digest or path concerned.
    pub subject: String,
    pub detail: String,
    /// The kept releases that need it (`app cam: current release 1.2`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needed_by: Vec<String>,
    /// What `--repair` did about it; `None` when not repairing or when
    /// nothing can be done here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

/// What fsck checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub blob_bytes_checked: u64,
    /// Snapshots whose whole content was re-verified against the diff_id.
    pub snapshots_verified: u64,
    /// Snapshots without a skeleton: metadata checked only.
    pub snapshots_metadata_only: Vec<Digest>,
    /// Partial downloads a resume can use.
    pub downloads_resumable: u64,
    pub images_checked: u64,
    pub releases_checked: u64,
    pub problems: Vec<Problem>,
    /// Where `--repair` moved damaged content, if it moved any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<PathBuf>,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The parts of one (stopped) agent's state directory.
pub struct Fsck<'a> {
    pub store: &'a Store,
    pub snapshots: &'a SnapshotStore,
    pub state: &'a State,
    pub repair: bool,
    /// Unix seconds, naming the quarantine directory.
    pub now: u64,
}

/// Kept releases by the digests they need: blobs (manifest, config,
/// layer blobs) and snapshots (diff_ids).
#[derive(Default)]
struct Needs {
    by_digest: BTreeMap<Digest, Vec<String>>,
}

impl Needs {
    fn of(&self, digest: &Digest) -> Vec<String> {
        self.by_digest.get(digest).cloned().unwrap_or_default()
    }
}

/// What the checks found unusable, for the reference checks.
#[derive(Default)]
struct Damaged {
    blobs: HashSet<Digest>,
    snapshots: HashSet<Digest>,
}

impl Fsck<'_> {
    /// Runs every check (repairing as it goes with `repair`).
    pub fn run(&self) -> Result<FsckReport, FsckError> {
        let mut report = FsckReport::default();
        let needs = refs::needs(self.state)?;
        let mut damaged = Damaged::default();
        self.check_blobs(&needs, &mut damaged, &mut report)?;
        self.check_snapshots(&needs, &mut damaged, &mut report)?;
        self.check_tmp(&mut report)?;
        self.check_images(&damaged, &mut report)?;
        self.check_releases(&damaged, &mut report)?;
        if self.repair {
            self.store.flush()?;
        }
        Ok(report)
    }

    /// `<state>/quarantine/<now>/<what>`, created private.
    fn quarantine(&self, what: &str, report: &mut FsckReport) -> Result<PathBuf, FsckError> {
        let base = self
            .store
            .root()
            .join("quarantine")
            .join(self.now.to_string());
        let dir = base.join(what);
        // Missing parents are created private too.
        crate::state_dir::create_private(&dir).map_err(io_err("create", &dir))?;
        report.quarantine = Some(base);
        Ok(dir)
    }
}
