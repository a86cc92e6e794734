//! Garbage collection: blobs that no kept image reaches (index → manifest →
//! config + layers) go, and so do stale downloads in `tmp/`.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, SystemTime};

use fleet_protocol::Digest;
use fleet_protocol::oci::{MAX_MANIFEST_BYTES, Manifest};
use serde::Serialize;

use super::{Store, StoreError, io};

/// Garbage-collection settings.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Temp files untouched for this long are removed (a download that has
    /// not resumed in a day is abandoned).
    pub tmp_max_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            tmp_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub blobs_kept: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub temp_files_removed: u64,
}

impl Store {
    /// Collects garbage. Fails with [`StoreError::Busy`] while a pull holds a lease.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let _exclusive = self.lease.try_write().map_err(|_| StoreError::Busy)?;
        let live = self.mark()?;
        let mut report = GcReport::default();

        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&name) {
                report.blobs_kept += 1;
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
            let _ = self.blobs.remove(format!("sha256:{name}").as_bytes());
            report.blobs_removed += 1;
            report.bytes_freed += len;
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &dir))?;

        let tmp = self.tmp_dir();
        let now = SystemTime::now();
        for entry in fs::read_dir(&tmp).map_err(io("list", &tmp))? {
            let entry = entry.map_err(io("list", &tmp))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or_default();
            let done = Digest::new(format!("sha256:{hex}")).is_ok_and(|d| self.has_blob(&d));
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if done || age >= opts.tmp_max_age {
                fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
                report.temp_files_removed += 1;
            }
        }
        self.flush()?;
        Ok(report)
    }

    /// Hex digests of every blob a kept image reaches.
    fn mark(&self) -> Result<HashSet<String>, StoreError> {
        let mut live = HashSet::new();
        for rec in self.images()?.into_iter().filter(|r| r.kept) {
            if let Some(index) = &rec.index {
                live.insert(index.hex().to_owned());
            }
            live.insert(rec.manifest.hex().to_owned());
            let bytes = match self.read_blob(&rec.manifest, MAX_MANIFEST_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(image = %rec.reference, error = %e, "kept image has no readable manifest");
                    continue;
                }
            };
            match Manifest::parse(&bytes, None) {
                Ok(Manifest::Image(m)) => {
                    for d in m.blobs() {
                        live.insert(d.digest.hex().to_owned());
                    }
                }
                Ok(Manifest::Index(_)) | Err(_) => {
                    tracing::warn!(image = %rec.reference, "kept image's manifest is not an image manifest");
                }
            }
        }
        Ok(live)
    }
}
