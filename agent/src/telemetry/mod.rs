//! Device telemetry: a [`Sampler`] turns host, Tegra, container and store
//! readings into a protocol [`Telemetry`] message.
//!
//! Every host read goes through a [`HostRoot`] (`/` in production; a fixture
//! tree in tests and in a local fleet that makes a device look like a
//! Jetson). Exceptions, because they are this machine's and not the host
//! image's: the containers' cgroups ([`CgroupFs`], the real
//! `/sys/fs/cgroup`) and the file system of the agent's store (statvfs on
//! the real state directory). A reading that is not there is omitted, never
//! invented; CPU percentages need two samples, so the first one has none.
//!
//! Sampling reads a few dozen tiny procfs/sysfs files and iterates the
//! store's blob records: call [`Sampler::sample`] from a blocking thread
//! ([`sample_blocking`]).

pub mod cgroup;
pub mod host;
pub mod tegra;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleet_protocol::message::{AppTelemetry, Health, StatusReport, Telemetry};
use fleet_protocol::{AppName, DeviceId};

pub use cgroup::{CgroupFs, CgroupSample};
pub use host::{CpuTimes, HostRoot};
pub use tegra::TegraInfo;

use crate::runtime::ContainerId;
use crate::runtime::bundle::cgroups_path;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the telemetry sampling task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Where readings come from.
#[derive(Clone, Default)]
pub struct Sources {
    pub host: HostRoot,
    pub cgroups: CgroupFs,
    /// The agent's state directory (a real path): free disk space.
    pub state_dir: Option<PathBuf>,
    /// The content store: bytes held and the fetched/reused counters.
    pub store: Option<Arc<Store>>,
}

/// One app as the agent knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSource {
    pub app: AppName,
    pub running: bool,
    pub restarts: u32,
    pub health: Health,
    /// The running container's cgroup path.
    pub cgroup: Option<String>,
}

impl AppSource {
    /// The apps of a status report; containers' cgroups are
    /// `<cgroup_parent>/<container id>` as the runtime places them.
    pub fn from_status(report: &StatusReport, cgroup_parent: &str) -> Vec<AppSource> {
        report
            .apps
            .iter()
            .map(|a| AppSource {
                app: a.app.clone(),
                running: a.running.is_some(),
                restarts: a.restarts,
                health: a.health,
                cgroup: a.running.as_ref().map(|r| {
                    cgroups_path(
                        cgroup_parent,
                        ContainerId::for_release(&a.app, &r.release_digest).as_str(),
                    )
                }),
            })
            .collect()
    }
}

/// Samples telemetry; keeps the previous CPU counters for the percentages.
pub struct Sampler {
    sources: Sources,
    tegra: Option<TegraInfo>,
    prev_cpu: Option<CpuTimes>,
    prev_apps: HashMap<String, (u64, Instant)>,
}

impl Sampler {
    /// Detects whether the host is a Tegra (a few small reads).
    pub fn new(sources: Sources) -> Self {
        let tegra = tegra::detect(&sources.host);
        Sampler {
            sources,
            tegra,
            prev_cpu: None,
            prev_apps: HashMap::new(),
        }
    }

    pub fn tegra(&self) -> Option<&TegraInfo> {
        self.tegra.as_ref()
    }

    /// One sample at `at` (unix seconds). Blocking (small file reads).
    pub fn sample(&mut self, at: u64, device: Option<DeviceId>, apps: &[AppSource]) -> Telemetry {
        let host = &self.sources.host;
        let mut t = Telemetry {
            device,
            at,
            ..Telemetry::default()
        };
        t.uptime_secs = host
            .read("/proc/uptime")
            .and_then(|s| host::parse_uptime(&s));
        let cpu = host
            .read("/proc/stat")
            .and_then(|s| host::parse_proc_stat(&s));
        t.cpu_percent = self
            .prev_cpu
            .zip(cpu)
            .and_then(|(p, n)| host::cpu_percent(p, n));
        if cpu.is_some() {
            self.prev_cpu = cpu;
        }
        if let Some(text) = host.read("/proc/meminfo") {
            (t.memory_used_bytes, t.memory_total_bytes) = host::parse_meminfo(&text);
        }
        if let Some((rx, tx)) = host
            .read("/proc/net/dev")
            .and_then(|s| host::parse_net_dev(&s))
        {
            t.net_rx_bytes = Some(rx);
            t.net_tx_bytes = Some(tx);
        }
        t.temperatures = host::thermal_zones(host);
        if self.tegra.is_some() {
            let gpu = tegra::gpu(host);
            t.gpu_load_percent = gpu.load_percent;
            t.gpu_freq_hz = gpu.freq_hz;
            t.emc_load_percent = tegra::emc_load(host);
            t.power_mw = tegra::power_rails(host);
        }
        t.disk_free_bytes = self.sources.state_dir.as_deref().and_then(host::disk_free);
        if let Some(store) = &self.sources.store {
            t.store_used_bytes = store.used_bytes().ok();
            if let Ok(c) = store.content_counters() {
                t.fetched_bytes_total = Some(c.fetched_bytes);
                t.reused_bytes_total = Some(c.reused_bytes);
                t.delta_fetched_bytes_total = Some(c.delta_fetched_bytes);
                t.delta_replaced_bytes_total = Some(c.delta_replaced_bytes);
                t.delta_fallbacks_total = Some(c.delta_fallbacks);
            }
        }
        t.apps = self.apps(apps);
        t
    }

    fn apps(&mut self, apps: &[AppSource]) -> Vec<AppTelemetry> {
        let now = Instant::now();
        let mut seen = HashMap::new();
        let out = apps
            .iter()
            .map(|a| {
                let mut at = AppTelemetry {
                    app: Some(a.app.clone()),
                    running: a.running,
                    restarts: a.restarts,
                    health: a.health,
                    cpu_percent: None,
                    memory_bytes: None,
                };
                if let Some(path) = a.cgroup.as_deref().filter(|_| a.running) {
                    let s = self.sources.cgroups.sample(path);
                    at.memory_bytes = s.memory_bytes;
                    if let Some(usage) = s.cpu_usage_usec {
                        if let Some((prev, when)) = self.prev_apps.get(path) {
                            let elapsed = now.duration_since(*when).as_micros() as u64;
                            at.cpu_percent = cgroup::usage_percent(*prev, usage, elapsed);
                        }
                        seen.insert(path.to_owned(), (usage, now));
                    }
                }
                at
            })
            .collect();
        self.prev_apps = seen;
        out
    }
}

/// [`Sampler::sample`] on a blocking thread.
pub async fn sample_blocking(
    sampler: Arc<Mutex<Sampler>>,
    at: u64,
    device: Option<DeviceId>,
    apps: Vec<AppSource>,
) -> Result<Telemetry, TelemetryError> {
    Ok(tokio::task::spawn_blocking(move || {
        let mut s = sampler.lock().unwrap_or_else(|p| p.into_inner());
        s.sample(at, device, &apps)
    })
    .await?)
}
