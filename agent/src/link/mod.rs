//! MQTT links.
//!
//! With the `link` feature (what the control plane uses): the one event loop
//! ([`event_loop`]) and its reconnection [`Backoff`], on top of the pure
//! session in `fleet_protocol::session`. With the `agent` feature also the
//! device side ([`AgentLink`]): presence, the on-disk status outbox,
//! telemetry and the downlink of desired states and commands.

pub mod backoff;
pub mod event_loop;
/// TLS client configurations (also used by the registry client).
pub use crate::tls;

#[cfg(feature = "agent")]
mod device;
#[cfg(feature = "agent")]
pub mod info;
#[cfg(feature = "agent")]
pub mod outbox;

pub use backoff::Backoff;
#[cfg(feature = "agent")]
pub use device::{AgentLink, AgentLinkConfig, Downlink, LinkError};
pub use event_loop::MAX_PACKET_BYTES;
pub use fleet_protocol::broker::{BrokerAddr, BrokerAddrError};
