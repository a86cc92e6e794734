//! Download progress of the apps fetching content, in memory only (never
//! persisted per byte): filled from the puller's events, read into
//! `AppStatus.progress`, and announced on the deployer's change counter at
//! most once a second (plus once when a download ends), so status reports
//! carry moving progress without flooding the link.
//!
//! The delta fallbacks of an app's last download are kept (in memory) until
//! its next download starts, so the status that reports the release
//! installed from it says which layers came whole and why.
//!
//! `bytes_done` counts the bytes of the image's config and layers present so
//! far, reused ones included, so it ends at `bytes_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_protocol::message::{DeltaFallback, MAX_DELTA_FALLBACKS, Progress};
use fleet_protocol::{AppName, Digest};
use tokio::time::Instant;

use crate::pull::{EventSink, PullEvent};

/// The shortest time between two announcements of progress.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// Progress of every app downloading now. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Downloads {
    apps: Arc<Mutex<HashMap<AppName, Tracker>>>,
    /// Per app, the delta fallbacks of its last download.
    fallbacks: Arc<Mutex<HashMap<AppName, Vec<DeltaFallback>>>>,
}

#[derive(Default)]
struct Tracker {
    total: u64,
    reused: u64,
    blobs: HashMap<Digest, u64>,
    announced: Option<Instant>,
}

impl Tracker {
    fn progress(&self) -> Progress {
        Progress {
            bytes_done: (self.reused + self.blobs.values().sum::<u64>()).min(self.total),
            bytes_total: self.total,
            bytes_reused: self.reused,
        }
    }
}

impl Downloads {
    fn lock(&self) -> MutexGuard<'_, HashMap<AppName, Tracker>> {
        match self.apps.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The progress of `app`'s download, if one runs (or ran last) and its
    /// size is known (before the manifest is read there is nothing to show).
    pub(super) fn get(&self, app: &AppName) -> Option<Progress> {
        self.lock()
            .get(app)
            .filter(|t| t.total > 0)
            .map(Tracker::progress)
    }

    /// The delta fallbacks of `app`'s last download (oldest first).
    pub(super) fn fallbacks(&self, app: &AppName) -> Vec<DeltaFallback> {
        let map = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        map.get(app).cloned().unwrap_or_default()
    }

    fn note_fallback(&self, app: &AppName, fallback: Option<DeltaFallback>) {
        let mut map = self.fallbacks.lock().unwrap_or_else(|p| p.into_inner());
        match fallback {
            // A new download starts: the last one's notes are stale.
            None => {
                map.remove(app);
            }
            Some(f) => {
                let notes = map.entry(app.clone()).or_default();
                if notes.len() < MAX_DELTA_FALLBACKS {
                    notes.push(f);
                }
            }
        }
    }

    /// Forgets `app`'s download.
    pub(super) fn clear(&self, app: &AppName) {
        self.lock().remove(app);
    }

    /// A sink for the puller's events of `app`'s download; `announce` is
    /// called (throttled) when the progress moved.
    pub(super) fn sink(
        &self,
        app: AppName,
        announce: impl Fn() + Send + Sync + 'static,
    ) -> EventSink {
        let me = self.clone();
        Arc::new(move |event| {
            if me.record(&app, event, Instant::now()) {
                announce();
            }
        })
    }

    /// Records one event; true when it should be announced.
    fn record(&self, app: &AppName, event: PullEvent, now: Instant) -> bool {
        match &event {
            PullEvent::Resolved { .. } => self.note_fallback(app, None),
            PullEvent::DeltaFallback { layer, reason } => {
                self.note_fallback(app, Some(DeltaFallback::new(layer.clone(), reason)));
            }
            _ => {}
        }
        let mut apps = self.lock();
        let t = apps.entry(app.clone()).or_default();
        let due = t.announced.is_none_or(|at| now >= at + ANNOUNCE_EVERY);
        let announce = match event {
            PullEvent::Resolved {
                total_bytes,
                reused_bytes,
                ..
            } => {
                *t = Tracker {
                    total: total_bytes,
                    reused: reused_bytes,
                    ..Tracker::default()
                };
                true
            }
            PullEvent::Progress { digest, done, .. } => {
                t.blobs.insert(digest, done);
                due
            }
            PullEvent::BlobDone { digest, size, .. } => {
                t.blobs.insert(digest, size);
                due
            }
            PullEvent::DeltaApplied { .. } => due,
            PullEvent::DeltaFallback { .. } | PullEvent::Done(_) => true,
        };
        if announce {
            t.announced = Some(now);
        }
        announce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::new("cam").unwrap()
    }

    #[test]
    fn progress_adds_up_blobs_and_is_announced_at_most_once_a_second() {
        let d = Downloads::default();
        let t0 = Instant::now();
        let resolved = PullEvent::Resolved {
            reference: "r".into(),
            manifest: Digest::of(b"m"),
            index: None,
            blobs: 2,
            total_bytes: 100,
            reused_bytes: 10,
            needed_bytes: 90,
        };
        assert!(d.record(&app(), resolved, t0));
        assert_eq!(d.get(&app()).unwrap().bytes_done, 10);
        let blob = Digest::of(b"layer");
        let step = |done| PullEvent::Progress {
            digest: blob.clone(),
            done,
            total: 90,
        };
        assert!(!d.record(&app(), step(30), t0 + Duration::from_millis(500)));
        assert_eq!(d.get(&app()).unwrap().bytes_done, 40);
        assert!(d.record(&app(), step(60), t0 + Duration::from_millis(1100)));
        let p = d.get(&app()).unwrap();
        assert_eq!((p.bytes_done, p.bytes_total, p.bytes_reused), (70, 100, 10));
        d.clear(&app());
        assert!(d.get(&app()).is_none());
    }

    #[test]
    fn no_progress_is_shown_before_the_size_of_the_download_is_known() {
        let d = Downloads::default();
        let early = PullEvent::Progress {
            digest: Digest::of(b"config"),
            done: 5,
            total: 5,
        };
        d.record(&app(), early, Instant::now());
        assert!(d.get(&app()).is_none());
    }

    #[test]
    fn delta_fallbacks_outlive_the_download_until_the_next_one_starts() {
        let d = Downloads::default();
        let t0 = Instant::now();
        let resolved = || PullEvent::Resolved {
            reference: "r".into(),
            manifest: Digest::of(b"m"),
            index: None,
            blobs: 1,
            total_bytes: 100,
            reused_bytes: 0,
            needed_bytes: 100,
        };
        assert!(d.record(&app(), resolved(), t0));
        let layer = Digest::of(b"layer");
        for i in 0..20 {
            let fallback = PullEvent::DeltaFallback {
                layer: layer.clone(),
                reason: format!(
                    "base file etc/app.conf does not match ({i}) {}",
                    "x".repeat(600)
                ),
            };
            assert!(
                d.record(&app(), fallback, t0),
                "a fallback is announced at once"
            );
        }
        d.clear(&app());
        let notes = d.fallbacks(&app());
        assert_eq!(notes.len(), MAX_DELTA_FALLBACKS);
        assert_eq!(notes[0].layer, layer);
        assert!(
            notes[0]
                .reason
                .starts_with("base file etc/app.conf does not match (0)")
        );
        assert_eq!(
            notes[0].reason.len(),
            fleet_protocol::message::MAX_FALLBACK_REASON
        );
        assert!(d.fallbacks(&AppName::new("other").unwrap()).is_empty());
        assert!(d.record(&app(), resolved(), t0));
        assert!(
            d.fallbacks(&app()).is_empty(),
            "a new download starts clean"
        );
    }
}
