//! The one Tegra (Jetson) detector, read through a [`HostRoot`]: device
//! info, telemetry and the GPU module's compatibility check all use it.
//!
//! - Tegra (NVIDIA's own rule, then enriched): `/etc/nv_tegra_release` is a
//!   file, or `/sys/devices/soc0/family` starts with "tegra", or
//!   `/proc/device-tree/compatible` lists an `nvidia,tegra*` entry.
//! - SoC: the `nvidia,tegraNNN` compatible entry; else the chip id in
//!   `/sys/devices/soc0/soc_id` or (older kernels)
//!   `/sys/module/tegra_fuse/parameters/tegra_chip_id`.
//! - L4T: `/etc/nv_tegra_release`, else dpkg's `nvidia-l4t-core` version.
//! - JetPack: dpkg's `nvidia-jetpack` version, else the JetPack that shipped
//!   with that L4T release (table below).
//! - CUDA: `/usr/local/cuda/version.json` (CUDA 11+), else
//!   `/usr/local/cuda/version.txt` (CUDA 10, JetPack 4).

use crate::host_root::HostRoot;

/// What the host's Tegra identity files say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TegraInfo {
    /// Jetson Linux release, e.g. `R36.4.3`.
    pub l4t_version: Option<String>,
    /// The SoC, e.g. `tegra234`.
    pub soc: Option<String>,
    /// The chip id (`soc0/soc_id`, else `tegra_chip_id`; 35 = T234).
    pub soc_id: Option<u32>,
    /// `/proc/device-tree/model`.
    pub model: Option<String>,
    /// e.g. `6.2`.
    pub jetpack_version: Option<String>,
    /// e.g. `12.6.68`.
    pub cuda_version: Option<String>,
}

/// The Tegra identity of the host, or `None` when it is not a Tegra.
pub fn detect(host: &HostRoot) -> Option<TegraInfo> {
    let release = host.read("/etc/nv_tegra_release");
    let family = host.read("/sys/devices/soc0/family").map(clean);
    let compatible = host
        .read("/proc/device-tree/compatible")
        .unwrap_or_default();
    let dt_soc = compatible
        .split('\0')
        .filter_map(|c| c.trim().strip_prefix("nvidia,"))
        .find(|c| c.starts_with("tegra") && c[5..].chars().all(|d| d.is_ascii_digit()))
        .map(str::to_owned);
    let is_tegra = release.is_some()
        || family
            .as_deref()
            .is_some_and(|f| f.to_ascii_lowercase().starts_with("tegra"))
        || dt_soc.is_some();
    if !is_tegra {
        return None;
    }
    let dpkg = host.read("/var/lib/dpkg/status").unwrap_or_default();
    let l4t_version = release
        .as_deref()
        .and_then(parse_nv_tegra_release)
        .or_else(|| l4t_from_dpkg_status(&dpkg));
    let soc_id = host
        .read("/sys/devices/soc0/soc_id")
        .or_else(|| host.read("/sys/module/tegra_fuse/parameters/tegra_chip_id"))
        .and_then(|s| clean(s).parse().ok());
    let jetpack_version = dpkg_version(&dpkg, "nvidia-jetpack")
        .map(|v| upstream(&v).to_owned())
        .or_else(|| l4t_version.as_deref().and_then(jetpack_for_l4t));
    Some(TegraInfo {
        l4t_version,
        soc: dt_soc.or_else(|| soc_id.and_then(soc_for_chip_id).map(str::to_owned)),
        soc_id,
        model: host
            .read("/proc/device-tree/model")
            .map(clean)
            .filter(|m| !m.is_empty()),
        jetpack_version,
        cuda_version: cuda_version(host),
    })
}

fn clean(s: String) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_owned()
}

/// Chip ids as the fuse driver reports them (decimal in sysfs).
fn soc_for_chip_id(id: u32) -> Option<&'static str> {
    Some(match id {
        0x21 => "tegra210",
        0x18 => "tegra186",
        0x19 => "tegra194",
        0x23 => "tegra234",
        // Thor: inferred from the T264 fuse id; verify on hardware.
        0x26 => "tegra264",
        _ => return None,
    })
}

/// The JetPack that shipped with an L4T release (NVIDIA's release notes, as
/// tabulated by jetson_stats). Unknown releases give `None`.
fn jetpack_for_l4t(l4t: &str) -> Option<String> {
    const TABLE: [(&str, &str); 16] = [
        ("32.7.1", "4.6.1"),
        ("32.7.2", "4.6.2"),
        ("32.7.3", "4.6.3"),
        ("32.7.4", "4.6.4"),
        ("32.7.5", "4.6.5"),
        ("32.7.6", "4.6.6"),
        ("35.3.1", "5.1.1"),
        ("35.4.1", "5.1.2"),
        ("35.5.0", "5.1.3"),
        ("35.6.0", "5.1.4"),
        ("36.3.0", "6.0"),
        ("36.4.0", "6.1"),
        ("36.4.3", "6.2"),
        ("36.4.4", "6.2.1"),
        ("38.2.0", "7.0"),
        ("39.2.0", "7.2"),
    ];
    let v = l4t.trim_start_matches('R');
    let v = if v.matches('.').count() == 1 {
        format!("{v}.0")
    } else {
        v.to_owned()
    };
    TABLE
        .iter()
        .find(|(l, _)| *l == v)
        .map(|(_, jp)| (*jp).to_owned())
}

fn cuda_version(host: &HostRoot) -> Option<String> {
    if let Some(json) = host.read("/usr/local/cuda/version.json") {
        let v: Option<String> = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|j| j.get("cuda")?.get("version")?.as_str().map(str::to_owned));
        if v.is_some() {
            return v;
        }
    }
    let txt = host.read("/usr/local/cuda/version.txt")?;
    txt.trim()
        .strip_prefix("CUDA Version ")
        .map(|v| v.trim().to_owned())
}

/// `# R36 (release), REVISION: 4.3, GCID: …` → `R36.4.3`.
pub fn parse_nv_tegra_release(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("REVISION"))?;
    let release = line
        .trim_start_matches('#')
        .split_whitespace()
        .next()
        .filter(|r| {
            r.len() > 1 && r.starts_with('R') && r[1..].chars().all(|c| c.is_ascii_digit())
        })?;
    let revision = line
        .split(',')
        .find_map(|part| part.trim().strip_prefix("REVISION:"))?
        .trim();
    if revision.is_empty() || !revision.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    Some(format!("{release}.{revision}"))
}

/// A package's `Version:` in dpkg's status file.
fn dpkg_version(status: &str, package: &str) -> Option<String> {
    let header = format!("Package: {package}");
    let stanza = status
        .split("\n\n")
        .find(|s| s.lines().any(|l| l.trim() == header))?;
    stanza
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
}

/// `36.4.3-20250107174145` → `36.4.3`; `6.2-b77` → `6.2`.
fn upstream(version: &str) -> &str {
    version.split(['-', '+', '~']).next().unwrap_or(version)
}

/// The `nvidia-l4t-core` package version in dpkg's status file
/// (`36.4.3-20250107174145` → `R36.4.3`): the fallback when
/// `/etc/nv_tegra_release` is missing.
pub fn l4t_from_dpkg_status(text: &str) -> Option<String> {
    let version = dpkg_version(text, "nvidia-l4t-core")?;
    let upstream = upstream(&version);
    let parts: Vec<&str> = upstream.split('.').collect();
    let numeric = parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    numeric.then(|| format!("R{upstream}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_parse() {
        assert_eq!(
            parse_nv_tegra_release(
                "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
            )
            .as_deref(),
            Some("R36.4.3")
        );
        assert_eq!(
            parse_nv_tegra_release("# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, DATE: Fri Jun  9 04:25:08 UTC 2023\n").as_deref(),
            Some("R32.7.4")
        );
        assert_eq!(parse_nv_tegra_release("# R (release), REVISION: 1.0"), None);
        assert_eq!(parse_nv_tegra_release("# R36 (release), REVISION: x"), None);
    }

    #[test]
    fn dpkg_status_gives_the_release_when_the_file_is_missing() {
        let status = "Package: bash\nVersion: 5.1\n\nPackage: nvidia-l4t-core\nStatus: install ok installed\nVersion: 36.4.3-20250107174145\n\nPackage: nvidia-jetpack\nVersion: 6.2-b77\n";
        assert_eq!(l4t_from_dpkg_status(status).as_deref(), Some("R36.4.3"));
        assert_eq!(l4t_from_dpkg_status("Package: bash\nVersion: 5.1\n"), None);
        assert_eq!(
            dpkg_version(status, "nvidia-jetpack").as_deref(),
            Some("6.2-b77")
        );
        assert_eq!(upstream("6.2-b77"), "6.2");
    }

    #[test]
    fn jetpack_and_soc_tables() {
        assert_eq!(jetpack_for_l4t("R36.4.3").as_deref(), Some("6.2"));
        assert_eq!(jetpack_for_l4t("R36.3").as_deref(), Some("6.0"));
        assert_eq!(jetpack_for_l4t("R31.1"), None);
        assert_eq!(soc_for_chip_id(35), Some("tegra234"));
        assert_eq!(soc_for_chip_id(33), Some("tegra210"));
        assert_eq!(soc_for_chip_id(7), None);
    }
}
