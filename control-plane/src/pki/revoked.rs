//! The revoked devices, in memory: what the broker and the API check on
//! every connection and request. The store is the durable copy; the server
//! loads this at start and every revocation goes to the store first, then
//! here. Listeners (the embedded broker) are told at once so they can cut
//! live connections.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use fleet_protocol::DeviceId;
use tokio::sync::broadcast;

/// The set of revoked devices; cheap to clone (shared).
#[derive(Clone)]
pub struct Revoked {
    inner: Arc<Inner>,
}

struct Inner {
    devices: RwLock<HashSet<DeviceId>>,
    events: broadcast::Sender<DeviceId>,
}

impl std::fmt::Debug for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revoked")
            .field("devices", &self.len())
            .finish()
    }
}

impl Default for Revoked {
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl Revoked {
    /// The set, starting with `devices` (from the store).
    pub fn new(devices: impl IntoIterator<Item = DeviceId>) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            inner: Arc::new(Inner {
                devices: RwLock::new(devices.into_iter().collect()),
                events,
            }),
        }
    }

    pub fn contains(&self, device: &DeviceId) -> bool {
        self.inner
            .devices
            .read()
            .map(|d| d.contains(device))
            // A poisoned lock: fail closed.
            .unwrap_or(true)
    }

    pub fn len(&self) -> usize {
        self.inner.devices.read().map(|d| d.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `device` revoked (after the store has it) and tells listeners.
    pub fn insert(&self, device: DeviceId) {
        if let Ok(mut d) = self.inner.devices.write() {
            d.insert(device.clone());
        }
        // No listener is fine (no embedded broker).
        let _ = self.inner.events.send(device);
    }

    /// Revocations from now on (a lagging listener should re-check every
    /// connection with [`Revoked::contains`]).
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceId> {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_are_seen_and_announced() {
        let a = DeviceId::new("cam-01").unwrap();
        let b = DeviceId::new("cam-02").unwrap();
        let r = Revoked::new([a.clone()]);
        let mut events = r.subscribe();
        assert!(r.contains(&a) && !r.contains(&b));
        r.clone().insert(b.clone());
        assert!(r.contains(&b));
        assert_eq!(events.recv().await.unwrap(), b);
    }
}
