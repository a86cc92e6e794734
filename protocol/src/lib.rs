//! The Fleet protocol: everything the agent and the control plane must agree on.
//!
//! This crate is pure: it does no I/O and reads no clock. Functions that depend
//! on time take `now` (seconds since the Unix epoch) as a parameter.

pub mod broker;
#[cfg(feature = "delta")]
pub mod delta;
pub mod dsse;
pub mod enroll;
pub mod env;
pub mod id;
pub mod image_ref;
pub mod lifecycle;
pub mod message;
pub mod oci;
mod rejection;
mod report;
pub mod requires;
pub mod root;
pub mod session;
mod signature;
pub mod topic;
pub mod trust;
pub mod verify;

pub use id::{AppName, DeviceId, Digest, GroupName, IdError};
pub use image_ref::{ImageRef, ImageRefError};
pub use lifecycle::{Effect, ErrorCode, Event, LifecycleError, Phase, Transition};
pub use message::{
    AppStatus, Command, CommandKind, DecodeError, DesiredApp, DesiredState, ErrorInfo,
    MAX_MESSAGE_BYTES, Presence, Release, SCHEMA_VERSION, StatusReport, Telemetry, decode, encode,
};
pub use report::report;
pub use topic::{
    Delivery, Publication, Qos, Subscription, Topic, TopicError, TopicKind, TopicScheme,
};
pub use trust::{Role, Root, TrustedRoot};
pub use verify::{
    Verified, VerifiedDesiredState, VerifyError, verify_command, verify_desired_state,
    verify_release,
};
