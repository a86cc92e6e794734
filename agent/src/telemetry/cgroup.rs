//! Per-container CPU and memory from the container runtime's cgroups — the
//! real `/sys/fs/cgroup`, never the host root (the containers are this
//! machine's). cgroup v2 (`cpu.stat` `usage_usec`, `memory.current`) first;
//! on a v1/hybrid host the v1 controllers (`cpuacct.usage` in ns,
//! `memory.usage_in_bytes`). Missing files → missing readings.

use std::path::{Path, PathBuf};

use super::host::{read_small, read_u64};

/// The default cgroup mount.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One container's cgroup counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupSample {
    /// CPU time used so far, µs.
    pub cpu_usage_usec: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// A cgroup file system root (`/sys/fs/cgroup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupFs(PathBuf);

impl Default for CgroupFs {
    fn default() -> Self {
        CgroupFs(PathBuf::from(CGROUP_ROOT))
    }
}

impl CgroupFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CgroupFs(root.into())
    }

    /// Reads the cgroup at `path` (as in the OCI spec's `cgroupsPath`,
    /// e.g. `/fleet/cam-01/fleet-web-0123456789ab`).
    pub fn sample(&self, path: &str) -> CgroupSample {
        let rel = path.trim_start_matches('/');
        let v2 = self.0.join(rel);
        let unified = self.0.join("unified").join(rel);
        let cpu = parse_usage_usec_file(&v2.join("cpu.stat"))
            .or_else(|| {
                ["cpuacct", "cpu,cpuacct"]
                    .iter()
                    .find_map(|c| read_u64(&self.0.join(c).join(rel).join("cpuacct.usage")))
                    .map(|ns| ns / 1000)
            })
            .or_else(|| parse_usage_usec_file(&unified.join("cpu.stat")));
        let memory = read_u64(&v2.join("memory.current")).or_else(|| {
            read_u64(
                &self
                    .0
                    .join("memory")
                    .join(rel)
                    .join("memory.usage_in_bytes"),
            )
        });
        CgroupSample {
            cpu_usage_usec: cpu,
            memory_bytes: memory,
        }
    }
}

fn parse_usage_usec_file(path: &Path) -> Option<u64> {
    parse_usage_usec(&read_small(path)?)
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU % of one core between two usage readings `elapsed_usec` apart.
pub fn usage_percent(prev_usec: u64, now_usec: u64, elapsed_usec: u64) -> Option<f32> {
    let used = now_usec.checked_sub(prev_usec)?;
    (elapsed_usec > 0).then(|| (used as f64 * 100.0 / elapsed_usec as f64) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_and_percent() {
        let stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n";
        assert_eq!(parse_usage_usec(stat), Some(1_500_000));
        assert_eq!(parse_usage_usec("user_usec 1\n"), None);
        assert_eq!(usage_percent(1_000_000, 1_500_000, 2_000_000), Some(25.0));
        assert_eq!(usage_percent(5, 4, 10), None);
        assert_eq!(usage_percent(1, 2, 0), None);
    }

    #[test]
    fn v2_then_v1_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fs = CgroupFs::new(dir.path());
        assert_eq!(fs.sample("/fleet/d/c"), CgroupSample::default());
        let v1cpu = dir.path().join("cpuacct/fleet/d/c");
        let v1mem = dir.path().join("memory/fleet/d/c");
        std::fs::create_dir_all(&v1cpu).unwrap();
        std::fs::create_dir_all(&v1mem).unwrap();
        std::fs::write(v1cpu.join("cpuacct.usage"), "2500000000\n").unwrap();
        std::fs::write(v1mem.join("memory.usage_in_bytes"), "4096\n").unwrap();
        assert_eq!(
            fs.sample("/fleet/d/c"),
            CgroupSample {
                cpu_usage_usec: Some(2_500_000),
                memory_bytes: Some(4096)
            }
        );
        let v2 = dir.path().join("fleet/d/c");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 7\n").unwrap();
        std::fs::write(v2.join("memory.current"), "8192\n").unwrap();
        assert_eq!(
            fs.sample("fleet/d/c"),
            CgroupSample {
                cpu_usage_usec: Some(7),
                memory_bytes: Some(8192)
            }
        );
    }
}
