//! Update durations and results, from the server's side.
//!
//! When the server publishes a desired state that gives a device a release of
//! an app it does not run committed yet, the time is noted per (device, app).
//! When a later status shows that app running that release in the
//! `committed` phase, the elapsed time is observed in the histogram
//! `fleet_update_duration_seconds{app}`. Results (`committed`,
//! `rolled_back`, `failed`) are counted from status transitions: an app's
//! phase entering one of those (or `committed` with a different running
//! release) since the device's previous report.
//!
//! In memory only: an update in flight while the server restarts is not
//! timed (its result is still counted).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use fleet_protocol::{AppName, DeviceId, Digest, Phase, StatusReport};

/// Upper bounds of the histogram buckets, seconds.
pub const BUCKETS: [f64; 9] = [5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// The `result` label values.
pub const RESULTS: [&str; 3] = ["committed", "rolled_back", "failed"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Non-cumulative counts per bucket of [`BUCKETS`], then `+Inf`.
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdatesSnapshot {
    pub durations: BTreeMap<AppName, Histogram>,
    /// (app, result) → count.
    pub results: BTreeMap<(AppName, &'static str), u64>,
    pub in_flight: usize,
}

#[derive(Default)]
struct State {
    /// (device, app) → (release digest, unix seconds it was published).
    pending: HashMap<(DeviceId, AppName), (Digest, f64)>,
    snapshot: UpdatesSnapshot,
}

#[derive(Default)]
pub struct Updates {
    state: Mutex<State>,
}

fn committed_with<'a>(status: Option<&'a StatusReport>, app: &AppName) -> Option<&'a Digest> {
    let a = status?.apps.iter().find(|a| &a.app == app)?;
    match a.phase {
        Phase::Committed => a.running.as_ref().map(|r| &r.release_digest),
        _ => None,
    }
}

impl Updates {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The server published `apps` to `device` at `at`; `status` is the
    /// device's latest report.
    pub fn published(
        &self,
        device: &DeviceId,
        apps: &BTreeMap<AppName, Digest>,
        status: Option<&StatusReport>,
        at: f64,
    ) {
        let mut st = self.state();
        st.pending
            .retain(|(d, app), _| d != device || apps.contains_key(app));
        for (app, digest) in apps {
            if committed_with(status, app) == Some(digest) {
                continue;
            }
            let key = (device.clone(), app.clone());
            match st.pending.get(&key) {
                Some((d, _)) if d == digest => {}
                _ => {
                    st.pending.insert(key, (digest.clone(), at));
                }
            }
        }
        st.snapshot.in_flight = st.pending.len();
    }

    /// A new status `report` arrived at `at` after `previous`.
    pub fn on_status(&self, previous: Option<&StatusReport>, report: &StatusReport, at: f64) {
        let mut st = self.state();
        for a in &report.apps {
            if let Some(prev) = previous {
                let before = prev.apps.iter().find(|p| p.app == a.app);
                let running = |s: &fleet_protocol::AppStatus| {
                    s.running.as_ref().map(|r| r.release_digest.clone())
                };
                let entered = before
                    .is_none_or(|p| p.phase.name() != a.phase.name() || running(p) != running(a));
                let result = match a.phase {
                    Phase::Committed => Some("committed"),
                    Phase::RolledBack { .. } => Some("rolled_back"),
                    Phase::Failed { .. } => Some("failed"),
                    _ => None,
                };
                if entered && let Some(result) = result {
                    *st.snapshot
                        .results
                        .entry((a.app.clone(), result))
                        .or_default() += 1;
                }
            }
            let key = (report.device.clone(), a.app.clone());
            let Some((digest, since)) = st.pending.get(&key).cloned() else {
                continue;
            };
            let running = a.running.as_ref().map(|r| &r.release_digest);
            let target = a.target.as_ref().map(|r| &r.release_digest);
            match a.phase {
                Phase::Committed if running == Some(&digest) => {
                    st.pending.remove(&key);
                    st.snapshot
                        .durations
                        .entry(a.app.clone())
                        .or_default()
                        .observe((at - since).max(0.0));
                }
                Phase::RolledBack { .. } | Phase::Failed { .. }
                    if target == Some(&digest) || running != Some(&digest) =>
                {
                    st.pending.remove(&key);
                }
                _ => {}
            }
        }
        st.snapshot.in_flight = st.pending.len();
    }

    pub fn snapshot(&self) -> UpdatesSnapshot {
        self.state().snapshot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::message::ReleaseRef;
    use fleet_protocol::{AppStatus, ErrorCode};

    fn app() -> AppName {
        AppName::new("model").unwrap()
    }

    fn report(phase: Phase, running: Option<&Digest>, target: Option<&Digest>) -> StatusReport {
        let r = |d: &Digest| ReleaseRef {
            version: "v".into(),
            release_digest: d.clone(),
        };
        StatusReport {
            schema: 1,
            device: DeviceId::new("cam-1").unwrap(),
            reported_at: 0,
            generation: None,
            apps: vec![AppStatus {
                app: app(),
                phase,
                running: running.map(r),
                target: target.map(r),
                previous: None,
                health: Default::default(),
                restarts: 0,
                progress: None,
                error: None,
                delta_fallbacks: vec![],
            }],
            rejected: None,
            info: None,
        }
    }

    #[test]
    fn a_published_release_committed_later_is_timed_once() {
        let u = Updates::new();
        let (v1, v2) = (Digest::of(b"v1"), Digest::of(b"v2"));
        let dev = DeviceId::new("cam-1").unwrap();
        let before = report(Phase::Committed, Some(&v1), None);
        u.published(
            &dev,
            &BTreeMap::from([(app(), v2.clone())]),
            Some(&before),
            100.0,
        );
        // A renewal of the same state keeps the first time.
        u.published(
            &dev,
            &BTreeMap::from([(app(), v2.clone())]),
            Some(&before),
            150.0,
        );
        assert_eq!(u.snapshot().in_flight, 1);
        let downloading = report(Phase::Downloading, Some(&v1), Some(&v2));
        u.on_status(Some(&before), &downloading, 110.0);
        let done = report(Phase::Committed, Some(&v2), None);
        u.on_status(Some(&downloading), &done, 145.0);
        let s = u.snapshot();
        let h = &s.durations[&app()];
        assert_eq!((h.count, h.sum), (1, 45.0));
        assert_eq!(h.counts[3], 1, "45 s falls in the le=60 bucket");
        assert_eq!(s.results[&(app(), "committed")], 1);
        assert_eq!(s.in_flight, 0);
        // The same report again counts nothing.
        u.on_status(Some(&done), &done, 200.0);
        assert_eq!(u.snapshot(), s);
    }

    #[test]
    fn rollbacks_and_failures_are_counted_and_not_timed() {
        let u = Updates::new();
        let (v1, v2) = (Digest::of(b"v1"), Digest::of(b"v2"));
        let dev = DeviceId::new("cam-1").unwrap();
        let before = report(Phase::Committed, Some(&v1), None);
        u.published(&dev, &BTreeMap::from([(app(), v2.clone())]), None, 1.0);
        let starting = report(Phase::Starting, Some(&v1), Some(&v2));
        u.on_status(Some(&before), &starting, 2.0);
        let back = report(
            Phase::RolledBack {
                reason: ErrorCode::HealthCheckFailed,
            },
            Some(&v1),
            Some(&v2),
        );
        u.on_status(Some(&starting), &back, 3.0);
        let failed = report(
            Phase::Failed {
                code: ErrorCode::DownloadFailed,
            },
            Some(&v1),
            Some(&v2),
        );
        u.on_status(Some(&back), &failed, 4.0);
        let s = u.snapshot();
        assert!(s.durations.is_empty());
        assert_eq!(s.results[&(app(), "rolled_back")], 1);
        assert_eq!(s.results[&(app(), "failed")], 1);
        assert_eq!(s.in_flight, 0);
    }
}
