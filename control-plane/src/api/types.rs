//! JSON bodies of the REST API, shared by the server and the typed client.
//! The engine's requests and views are the fleet module's own types,
//! re-exported here; only what is the API's alone is defined here.

use fleet_protocol::Digest;
use serde::{Deserialize, Serialize};

pub use crate::fleet::{
    AddMembers, CreateGroup, CreateRollout, DesiredSummary, DeviceView, FollowChannel, GroupView,
    PlanView, PublishView, ReleaseView, RolloutView, SetLabels, TelemetryView, WaveView,
};

/// Every error answer: a stable code and a message saying what to do.
/// The server writes an [`super::ErrorCode`]; a client reads the code as
/// given, so that codes added later still come through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveView {
    /// The reference as given, normalised.
    pub image: String,
    pub repository: String,
    pub digest: Digest,
}
