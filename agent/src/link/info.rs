//! What the device is: reported in the first status after the agent starts.

use std::collections::BTreeMap;
use std::path::Path;

use fleet_protocol::message::DeviceInfo;

use crate::gpu::detect as tegra;
pub use crate::gpu::detect::parse_nv_tegra_release;
use crate::host_root::HostRoot;

/// Builds the device description: labels from the config, the architecture
/// this agent was compiled for, and, on a Tegra host, what
/// [`crate::gpu::detect`] finds under `host_root` (L4T, SoC, model, JetPack,
/// CUDA) and the CDI devices the host describes.
pub fn device_info(labels: BTreeMap<String, String>, host_root: &Path) -> DeviceInfo {
    let (architecture, variant) = architecture();
    let host = HostRoot::new(host_root);
    let tegra = tegra::detect(&host).unwrap_or_default();
    DeviceInfo {
        labels,
        architecture: architecture.to_owned(),
        variant: variant.map(str::to_owned),
        l4t_version: tegra.l4t_version,
        soc: tegra.soc,
        model: tegra.model,
        jetpack_version: tegra.jetpack_version,
        cuda_version: tegra.cuda_version,
        cdi_devices: crate::gpu::device_names(&host),
        agent_version: crate::VERSION.to_owned(),
    }
}

/// OCI architecture and variant names of the compile target.
pub fn architecture() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetson_release_files_parse() {
        assert_eq!(
            parse_nv_tegra_release(
                "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
            )
            .as_deref(),
            Some("R36.4.0")
        );
        assert_eq!(
            parse_nv_tegra_release(
                "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n"
            )
            .as_deref(),
            Some("R32.7.1")
        );
        assert_eq!(parse_nv_tegra_release(""), None);
        assert_eq!(parse_nv_tegra_release("garbage REVISION"), None);
    }

    #[test]
    fn info_reads_the_release_under_the_host_root() {
        let root = tempfile::tempdir().unwrap();
        let labels = BTreeMap::from([("site".to_owned(), "lab".to_owned())]);
        let info = device_info(labels.clone(), root.path());
        assert_eq!(info.l4t_version, None);
        assert_eq!(info.labels, labels);
        assert!(!info.architecture.is_empty());
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/nv_tegra_release"),
            "# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64, DATE: x\n",
        )
        .unwrap();
        let info = device_info(labels, root.path());
        assert_eq!(info.l4t_version.as_deref(), Some("R35.5.0"));
        assert_eq!(info.agent_version, crate::VERSION);
    }
}
