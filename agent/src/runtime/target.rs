//! What a health probe runs against: a container, the runtime that runs it,
//! and the network namespace HTTP/TCP probes connect from. Plain data that
//! [`super::Containers`] hands out and `crate::health` consumes.

use std::sync::Arc;

use super::ContainerId;
use super::driver::Driver;

/// Where HTTP/TCP probes connect from.
#[derive(Clone)]
pub enum NetNs {
    /// The agent's own network namespace (container on the host network).
    Host,
    /// The network namespace of the container's current init process.
    Container(Arc<dyn Fn() -> Option<i32> + Send + Sync>),
}

impl std::fmt::Debug for NetNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetNs::Host => f.write_str("Host"),
            NetNs::Container(_) => f.write_str("Container"),
        }
    }
}

/// The container a probe runs against.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub driver: Driver,
    pub container_id: ContainerId,
    pub net: NetNs,
}
