//! fsck of the snapshots: metadata, and the whole content replayed from
//! the skeleton against the diff_id.

use std::io::BufReader;

use fleet_protocol::Digest;
use fleet_protocol::delta::{DirBases, replay_skeleton};

use super::{Damaged, Fsck, FsckError, FsckReport, Needs, Problem, ProblemKind};

impl Fsck<'_> {
    pub(super) fn check_snapshots(
        &self,
        needs: &Needs,
        damaged: &mut Damaged,
        report: &mut FsckReport,
    ) -> Result<(), FsckError> {
        for diff_id in self.snapshots.list()? {
            let Some(detail) = self.snapshot_damage(&diff_id, report) else {
                continue;
            };
            damaged.snapshots.insert(diff_id.clone());
            let repair = if self.repair {
                let dest = self.quarantine("snapshots", report)?.join(diff_id.hex());
                self.snapshots.move_out(&diff_id, &dest)?;
                Some(format!("moved to {}", dest.display()))
            } else {
                None
            };
            report.problems.push(Problem {
                kind: ProblemKind::Snapshot,
                subject: diff_id.to_string(),
                detail,
                needed_by: needs.of(&diff_id),
                repair,
            });
        }
        Ok(())
    }

    /// What is wrong with the snapshot of `diff_id`, if anything.
    fn snapshot_damage(&self, diff_id: &Digest, report: &mut FsckReport) -> Option<String> {
        match self.snapshots.info(diff_id) {
            Ok(Some(info)) if &info.diff_id == diff_id => {}
            Ok(Some(info)) => {
                return Some(format!(
                    "snapshot.json names another layer, {}",
                    info.diff_id
                ));
            }
            Ok(None) => return Some("snapshot.json is gone".into()),
            Err(e) => return Some(e.to_string()),
        }
        let fs_dir = self.snapshots.path(diff_id);
        if !fs_dir.is_dir() {
            return Some(format!(
                "its content directory {} is gone",
                fs_dir.display()
            ));
        }
        let Some(skeleton) = self.snapshots.skeleton(diff_id) else {
            report.snapshots_metadata_only.push(diff_id.clone());
            return None;
        };
        let file = match std::fs::File::open(&skeleton) {
            Ok(f) => f,
            Err(e) => return Some(format!("its skeleton is unreadable: {e}")),
        };
        let mut files = DirBases::new();
        files.insert(diff_id.clone(), fs_dir);
        let reader = BufReader::with_capacity(64 << 10, file);
        match replay_skeleton(reader, diff_id, &files, std::io::sink()) {
            Ok(_) => {
                report.snapshots_verified += 1;
                None
            }
            Err(e) => Some(format!(
                "its content does not rebuild the layer: {}",
                fleet_protocol::report(&e)
            )),
        }
    }
}
