//! The Fleet control plane.
//!
//! - [`config`]: the server's configuration (TOML + `FLEET_*` environment).
//! - [`store`]: durable state behind the [`store::Store`] trait (sled).
//! - [`director`]: builds and signs each device's desired state.
//! - [`fleet`]: the engine (devices, groups, releases, rollouts) and the
//!   ports the MQTT link and the content store plug into.
//! - [`telemetry`]: the in-memory latest state of every device, batched
//!   into the store; [`metrics`]: `/metrics` (Prometheus);
//!   [`prometheus`]: the queries of PromQL gates.
//! - [`api`]: the REST API (axum); [`client`]: its typed client.
//! - [`server`]: `run(config, shutdown)`.
//! - [`keys`], [`sign`]: key files and offline signing.
//! - [`pki`]: the fleet CA, device certificates and TLS configurations;
//!   [`enroll`]: enrollment, renewal and revocation of device certificates.

pub mod api;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod content;
pub mod device_token;
pub mod director;
pub mod enroll;
pub mod fleet;
pub mod keys;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod prometheus;
pub mod serve;
pub mod server;
pub mod sign;
pub mod store;
pub mod telemetry;

/// The control plane's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
