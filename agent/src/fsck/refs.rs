//! fsck of what the records reference: image records and the releases
//! the agent keeps (target, current and previous of every app).

use fleet_protocol::Digest;

use super::{Damaged, Fsck, FsckError, FsckReport, Needs, Problem, ProblemKind};
use crate::image::{Layer, StoredImage};
use crate::state::{AppRecord, ReleaseRecord, State};

/// Which kept release needs which digest.
pub(super) fn needs(state: &State) -> Result<Needs, FsckError> {
    let mut needs = Needs::default();
    for app in state.apps()? {
        for (role, release) in kept(&app) {
            let who = format!(
                "app {}: {role} release {}",
                app.app, release.release.version
            );
            let digests = std::iter::once(&release.release.manifest_digest)
                .chain(release.config.iter())
                .chain(release.layers.iter().flat_map(|l| [&l.blob, &l.diff_id]));
            for d in digests {
                let list = needs.by_digest.entry(d.clone()).or_default();
                if !list.contains(&who) {
                    list.push(who.clone());
                }
            }
        }
    }
    Ok(needs)
}

fn kept(app: &AppRecord) -> impl Iterator<Item = (&'static str, &ReleaseRecord)> {
    [
        ("target", app.target.as_ref()),
        ("current", app.current.as_ref()),
        ("previous", app.previous.as_ref()),
    ]
    .into_iter()
    .filter_map(|(role, r)| r.map(|r| (role, r)))
}

impl Fsck<'_> {
    /// An intact blob of `digest` is in the store.
    fn blob_ok(&self, damaged: &Damaged, digest: &Digest) -> bool {
        self.store.has_blob(digest) && !damaged.blobs.contains(digest)
    }

    /// A layer can be staged: its snapshot is intact, or its blob is there
    /// to unpack it from.
    fn layer_ok(&self, damaged: &Damaged, layer: &Layer) -> bool {
        let snapshot = self.snapshots.get(&layer.diff_id).is_some()
            && !damaged.snapshots.contains(&layer.diff_id);
        snapshot || self.blob_ok(damaged, &layer.blob)
    }

    pub(super) fn check_images(
        &self,
        damaged: &Damaged,
        report: &mut FsckReport,
    ) -> Result<(), FsckError> {
        for record in self.store.images()? {
            report.images_checked += 1;
            let mut missing = Vec::new();
            for d in record.index.iter().chain([&record.manifest]) {
                if !self.blob_ok(damaged, d) {
                    missing.push(format!("manifest {d}"));
                }
            }
            if missing.is_empty() {
                match StoredImage::load(self.store, &record.manifest) {
                    Ok(image) => {
                        for layer in image.layers.iter().filter(|l| !self.layer_ok(damaged, l)) {
                            missing.push(format!(
                                "layer {} (no snapshot of {}, no blob)",
                                layer.blob, layer.diff_id
                            ));
                        }
                    }
                    Err(e) => missing.push(fleet_protocol::report(&e)),
                }
            }
            if missing.is_empty() {
                continue;
            }
            report.problems.push(Problem {
                kind: ProblemKind::Image,
                subject: record.reference.clone(),
                detail: format!(
                    "content missing or damaged: {}; pulled again when needed",
                    missing.join(", ")
                ),
                needed_by: Vec::new(),
                repair: None,
            });
        }
        Ok(())
    }

    pub(super) fn check_releases(
        &self,
        damaged: &Damaged,
        report: &mut FsckReport,
    ) -> Result<(), FsckError> {
        for app in self.state.apps()? {
            for (role, release) in kept(&app) {
                report.releases_checked += 1;
                // Not verified yet: its content is checked when it is.
                let Some(config) = &release.config else {
                    continue;
                };
                let mut missing = Vec::new();
                if !self.blob_ok(damaged, config) {
                    missing.push(format!("config {config}"));
                }
                for layer in release.layers.iter().filter(|l| !self.layer_ok(damaged, l)) {
                    missing.push(format!(
                        "layer {} (no snapshot of {}, no blob)",
                        layer.blob, layer.diff_id
                    ));
                }
                if missing.is_empty() {
                    continue;
                }
                report.problems.push(Problem {
                    kind: ProblemKind::Release,
                    subject: format!(
                        "app {}: {role} release {}",
                        app.app, release.release.version
                    ),
                    detail: format!(
                        "cannot be staged again: {} missing or damaged; a running container \
                         keeps running, the content must be fetched again (re-apply the \
                         desired state or pull {})",
                        missing.join(", "),
                        release.image
                    ),
                    needed_by: Vec::new(),
                    repair: None,
                });
            }
        }
        Ok(())
    }
}
