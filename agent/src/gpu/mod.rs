//! Tegra GPU access for containers, without Docker or NVIDIA's runtime
//! wrapper: crun/runc stay the runtime and the agent, being the engine,
//! applies CDI edits to `config.json` itself.
//!
//! - [`detect`]: what the device is (model, SoC, L4T, JetPack, CUDA).
//! - [`cdi`]: CDI specs from `/etc/cdi` and `/var/run/cdi` (host root).
//! - [`ctk`]: without a CDI spec for `nvidia.com/gpu`, `nvidia-ctk cdi
//!   generate` run once (when installed) and its spec cached in the state dir.
//! - [`csv`]: without either, the L4T CSV files give the same spec; its
//!   links and ld.so cache made by NVIDIA's hook or, without it, by the
//!   agent as its own hook ([`hook`]).
//! - [`apply`]: edits → OCI spec; only the requested devices are allowed.
//! - [`check`]: the release's `requires` and devices against the device,
//!   before anything is downloaded.

pub mod apply;
pub mod cdi;
pub mod csv;
pub mod ctk;
pub mod detect;
pub mod hook;
pub mod spec;
mod validate;
mod yaml;

use fleet_protocol::message::RuntimeSettings;
use fleet_protocol::requires::{DeviceFacts, Unmet};

pub use apply::ApplyError;
pub use cdi::{CdiError, ContainerEdits, Registry};
pub use detect::TegraInfo;

use std::path::Path;

use crate::host_root::HostRoot;

/// The kind the CSV fallback defines.
pub const NVIDIA_GPU_KIND: &str = "nvidia.com/gpu";

/// Why a release's devices cannot be given to its container.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Why a release cannot run on this device; reported as `incompatible`
/// before anything is downloaded.
#[derive(Debug, thiserror::Error)]
pub enum Incompatible {
    #[error("{}", join(.0))]
    Requirements(Vec<Unmet>),
    #[error("devices {devices:?}: {source}")]
    Devices {
        devices: Vec<String>,
        #[source]
        source: GpuError,
    },
}

fn join(unmet: &[Unmet]) -> String {
    let parts: Vec<String> = unmet.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// The CDI devices a release asks for: `gpu` first, then `devices`, each once.
pub fn requested(settings: &RuntimeSettings) -> Vec<String> {
    settings.requested_devices()
}

/// What the agent brings besides the host's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tools<'a> {
    /// Where a spec `nvidia-ctk` generates is cached (`None`: never run it).
    pub cdi_cache: Option<&'a Path>,
    /// The agent binary, a path under the host root: the CSV fallback's
    /// `createContainer` hook when NVIDIA's is not installed (`None`: the
    /// library folders go into `LD_LIBRARY_PATH`).
    pub agent: Option<&'a Path>,
}

impl<'a> Tools<'a> {
    /// Neither: CDI specs and the CSV files only.
    pub const NONE: Tools<'static> = Tools {
        cdi_cache: None,
        agent: None,
    };

    /// A spec cache for `nvidia-ctk`.
    pub fn cache(dir: &'a Path) -> Self {
        Tools {
            cdi_cache: Some(dir),
            agent: None,
        }
    }
}

/// The host's device registry: its CDI specs; when none defines
/// `nvidia.com/gpu`, the spec `nvidia-ctk` generated into the cache
/// (generated now if the tool is installed and nothing is cached), else the
/// CSV fallback's spec.
pub fn registry(host: &HostRoot, tools: Tools<'_>) -> Result<Registry, CdiError> {
    let mut registry = Registry::load(host)?;
    if registry.has_kind(NVIDIA_GPU_KIND) {
        return Ok(registry);
    }
    if let Some(dir) = tools.cdi_cache {
        match ctk::cached_spec(host, dir) {
            Ok(Some(path)) => {
                registry.push_file_fallback(&path)?;
                if registry.has_kind(NVIDIA_GPU_KIND) {
                    return Ok(registry);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "nvidia-ctk gave no CDI spec; using the CSV files")
            }
        }
    }
    if let Some(spec) = csv::generate(host, tools.agent) {
        registry.push_fallback(csv::spec_path(host), spec);
    }
    Ok(registry)
}

/// The edits for the release's devices (`None`: it asks for none).
pub fn resolve(
    host: &HostRoot,
    tools: Tools<'_>,
    settings: &RuntimeSettings,
) -> Result<Option<ContainerEdits>, GpuError> {
    let names = requested(settings);
    if names.is_empty() {
        return Ok(None);
    }
    Ok(Some(registry(host, tools)?.resolve(&names)?))
}

/// Applies the release's devices to its OCI spec (device nodes stat'ed
/// now, at create time).
pub fn inject(
    host: &HostRoot,
    tools: Tools<'_>,
    settings: &RuntimeSettings,
    spec: &mut oci_spec::runtime::Spec,
) -> Result<(), GpuError> {
    if let Some(edits) = resolve(host, tools, settings)? {
        apply::apply(spec, &edits, host)?;
    }
    Ok(())
}

/// What the requirements are checked against.
pub fn facts(info: Option<&TegraInfo>) -> DeviceFacts {
    DeviceFacts {
        l4t: info.and_then(|i| i.l4t_version.clone()),
        cuda: info.and_then(|i| i.cuda_version.clone()),
        soc: info.and_then(|i| i.soc.clone()),
    }
}

/// Whether the release can run here: its `requires` against the detected
/// device, and its devices resolvable from the host's specs.
pub fn check(
    host: &HostRoot,
    tools: Tools<'_>,
    settings: &RuntimeSettings,
) -> Result<(), Incompatible> {
    if !settings.requires.is_empty() {
        let info = detect::detect(host);
        let unmet = settings.requires.unmet(&facts(info.as_ref()));
        if !unmet.is_empty() {
            return Err(Incompatible::Requirements(unmet));
        }
    }
    resolve(host, tools, settings)
        .map(|_| ())
        .map_err(|source| Incompatible::Devices {
            devices: requested(settings),
            source,
        })
}

/// The fully qualified devices the host describes (for device info; a
/// spec `nvidia-ctk` generated earlier counts, none is generated here).
pub fn device_names(host: &HostRoot) -> Vec<String> {
    match registry(host, Tools::NONE) {
        Ok(r) => r.device_names(),
        Err(e) => {
            tracing::warn!(error = %e, "CDI specs unreadable; no devices reported");
            Vec::new()
        }
    }
}
