//! `<state dir>/status.json`: the running daemon's last status report, for
//! `fleet-agent status` while the daemon holds the state database (sled
//! allows one process per database).
//!
//! The daemon rewrites it (temp file + rename, so a reader never sees half a
//! report) every time it reports status. It is a view, not state: nothing
//! reads it back to decide anything, so it is not fsynced.

use std::path::{Path, PathBuf};

use fleet_protocol::message::StatusReport;

pub const FILE_NAME: &str = "status.json";

#[derive(Debug, thiserror::Error)]
pub enum StatusFileError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path} (is the agent running, and has it reported yet?): {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a status report: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Replaces the file with `report`.
pub fn write(state_dir: &Path, report: &StatusReport) -> Result<(), StatusFileError> {
    let target = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let err = |source| StatusFileError::Write {
        path: target.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(report).map_err(|e| err(e.into()))?;
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The last report the daemon wrote.
pub fn read(state_dir: &Path) -> Result<StatusReport, StatusFileError> {
    let path = path(state_dir);
    let bytes = std::fs::read(&path).map_err(|source| StatusFileError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StatusFileError::Parse { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::DeviceId;

    #[test]
    fn a_written_report_reads_back_and_a_missing_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is the agent running"), "{err}");

        let report = StatusReport {
            schema: 1,
            device: DeviceId::new("cam-01").unwrap(),
            reported_at: 1_700_000_000,
            generation: Some(7),
            apps: Vec::new(),
            rejected: None,
            info: None,
        };
        write(dir.path(), &report).unwrap();
        write(dir.path(), &report).unwrap();
        assert_eq!(read(dir.path()).unwrap(), report);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(FILE_NAME)],
            "no temp file left"
        );

        std::fs::write(path(dir.path()), b"{").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(StatusFileError::Parse { .. })
        ));
    }
}
