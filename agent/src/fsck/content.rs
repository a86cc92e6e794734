//! fsck of the content store: blob files against their names and records,
//! and the downloads in progress under `tmp/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::Path;

use fleet_protocol::Digest;
use sha2::{Digest as _, Sha256};

use super::{Damaged, Fsck, FsckError, FsckReport, Needs, Problem, ProblemKind, io_err};
use crate::store::BlobInfo;

/// Hashes a file whole: (bytes, sha256).
fn hash_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, Digest::from_sha256(hasher.finalize().into())))
}

/// Whether process `pid` is alive (its `/proc` entry exists).
fn process_alive(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists())
}

impl Fsck<'_> {
    pub(super) fn check_blobs(
        &self,
        needs: &Needs,
        damaged: &mut Damaged,
        report: &mut FsckReport,
    ) -> Result<(), FsckError> {
        let mut records: BTreeMap<String, BlobInfo> =
            self.store.blob_records()?.into_iter().collect();
        let dir = self.store.blobs_dir();
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err("list", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("list", &dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy().into_owned();
            let Ok(digest) = Digest::new(format!("sha256:{name}")) else {
                report.problems.push(Problem {
                    kind: ProblemKind::BlobRecord,
                    subject: path.display().to_string(),
                    detail: "not a blob: its name is not a sha256 digest (left alone)".into(),
                    needed_by: Vec::new(),
                    repair: None,
                });
                continue;
            };
            let record = records.remove(digest.as_str());
            let detail = match hash_file(&path) {
                Ok((len, hash)) => {
                    report.blobs_checked += 1;
                    report.blob_bytes_checked += len;
                    if hash != digest {
                        Some(format!("{len} bytes hash to {hash}"))
                    } else {
                        match record {
                            Some(r) if r.size != len => Some(format!(
                                "{len} bytes on disk, {} recorded when it entered the store",
                                r.size
                            )),
                            _ => None,
                        }
                    }
                }
                Err(e) => Some(format!("unreadable: {e}")),
            };
            let Some(detail) = detail else { continue };
            damaged.blobs.insert(digest.clone());
            let repair = if self.repair {
                Some(self.quarantine_blob(&digest, &path, report)?)
            } else {
                None
            };
            report.problems.push(Problem {
                kind: ProblemKind::Blob,
                subject: digest.to_string(),
                detail,
                needed_by: needs.of(&digest),
                repair,
            });
        }
        // Records left have no file.
        for key in records.into_keys() {
            let digest = Digest::new(key.clone()).ok();
            if let Some(d) = &digest {
                damaged.blobs.insert(d.clone());
            }
            let repair = if self.repair {
                self.store.remove_blob_record(&key)?;
                Some("record removed".to_owned())
            } else {
                None
            };
            report.problems.push(Problem {
                kind: ProblemKind::BlobRecord,
                subject: key,
                detail: "recorded in the store but its file is gone".into(),
                needed_by: digest.map(|d| needs.of(&d)).unwrap_or_default(),
                repair,
            });
        }
        Ok(())
    }

    fn quarantine_blob(
        &self,
        digest: &Digest,
        path: &Path,
        report: &mut FsckReport,
    ) -> Result<String, FsckError> {
        let dest = self.quarantine("blobs", report)?.join(digest.hex());
        fs::rename(path, &dest).map_err(io_err("move to quarantine", path))?;
        self.store.remove_blob(digest)?;
        Ok(format!("moved to {}", dest.display()))
    }

    pub(super) fn check_tmp(&self, report: &mut FsckReport) -> Result<(), FsckError> {
        let tmp = self.store.tmp_dir();
        let mut names: Vec<String> = fs::read_dir(&tmp)
            .map_err(io_err("list", &tmp))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(io_err("list", &tmp))?;
        names.sort();
        for name in names {
            let path = tmp.join(&name);
            let verdict = self.tmp_entry(&name);
            let (kind, detail) = match verdict {
                Verdict::Resumable => {
                    report.downloads_resumable += 1;
                    continue;
                }
                Verdict::Companion => continue,
                Verdict::Debris(detail) => (ProblemKind::Download, detail),
                Verdict::Unknown => (
                    ProblemKind::Unknown,
                    "not made by this agent (left alone)".to_owned(),
                ),
            };
            let repair = if self.repair && kind == ProblemKind::Download {
                remove_any(&path)?;
                Some("removed".to_owned())
            } else {
                None
            };
            report.problems.push(Problem {
                kind,
                subject: path.display().to_string(),
                detail,
                needed_by: Vec::new(),
                repair,
            });
        }
        Ok(())
    }

    /// What one entry of `tmp/` is.
    fn tmp_entry(&self, name: &str) -> Verdict {
        if let Some(pid) = name.strip_prefix("oci-archive-") {
            return if process_alive(pid) {
                Verdict::Companion
            } else {
                Verdict::Debris(format!(
                    "an unpacked oci-archive of process {pid}, which is gone"
                ))
            };
        }
        let (hex, suffix) = name.split_once('.').unwrap_or((name, ""));
        let Ok(digest) = Digest::new(format!("sha256:{hex}")) else {
            return Verdict::Unknown;
        };
        let partial = self.store.partial(&digest);
        if self.store.has_blob(&digest) && (suffix == "partial" || suffix == "journal") {
            return Verdict::Debris("a download of a blob the store already holds".into());
        }
        match suffix {
            "partial" => self.partial_verdict(&digest, &partial),
            "journal" if !partial.data.exists() => {
                Verdict::Debris("a journal without its partial download".into())
            }
            "journal" => match self.partial_verdict(&digest, &partial) {
                Verdict::Resumable => Verdict::Companion,
                _ => Verdict::Debris("the journal of an unusable partial download".into()),
            },
            "journal.new" => Verdict::Debris("an interrupted journal write".into()),
            s if s.starts_with("put.") => match s.strip_prefix("put.") {
                Some(pid) if process_alive(pid) => Verdict::Companion,
                _ => Verdict::Debris("an interrupted blob write of a process that is gone".into()),
            },
            _ => Verdict::Unknown,
        }
    }

    fn partial_verdict(&self, digest: &Digest, partial: &crate::fetch::Partial) -> Verdict {
        let Some(size) = partial.journaled_size(digest) else {
            // A verified download drops its journal just before it moves
            // into the store: a pull stopped in between leaves this.
            if hash_file(&partial.data).is_ok_and(|(_, hash)| &hash == digest) {
                return Verdict::Debris(
                    "a complete download never moved into the store: no resume uses it \
                     (the next pull fetches it again)"
                        .into(),
                );
            }
            return Verdict::Debris(
                "a partial download whose journal is missing or unreadable: no resume can use it"
                    .into(),
            );
        };
        let len = fs::metadata(&partial.data).map(|m| m.len()).unwrap_or(0);
        if len > size {
            return Verdict::Debris(format!(
                "a partial download of {len} bytes, longer than the {size}-byte blob"
            ));
        }
        if len == size {
            return match hash_file(&partial.data) {
                Ok((_, hash)) if &hash == digest => Verdict::Resumable,
                Ok((_, hash)) => Verdict::Debris(format!(
                    "a complete download that hashes to {hash}, not to its digest"
                )),
                Err(e) => Verdict::Debris(format!("an unreadable partial download: {e}")),
            };
        }
        Verdict::Resumable
    }
}

enum Verdict {
    /// A partial download a resume can use.
    Resumable,
    /// Belongs to a resumable download or a live process.
    Companion,
    Debris(String),
    Unknown,
}

/// Removes a file or a directory tree.
fn remove_any(path: &Path) -> Result<(), FsckError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let result = if meta.is_dir() {
        crate::unpack::remove_tree(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_err("remove", path))
}
