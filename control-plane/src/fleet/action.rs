//! An operator's action on a rollout, as the API and `fleetctl` name it.

use serde::{Deserialize, Serialize};

use crate::store::EventKind;

/// An operator's action on a rollout (the last segment of
/// `POST /api/v1/rollouts/{id}/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Undo,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Pause, Action::Resume, Action::Abort, Action::Undo];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Undo => "undo",
        }
    }

    /// The event log's kind for this action (`rollout.pause`, ...).
    pub fn event_kind(self) -> EventKind {
        match self {
            Action::Pause => EventKind::RolloutPause,
            Action::Resume => EventKind::RolloutResume,
            Action::Abort => EventKind::RolloutAbort,
            Action::Undo => EventKind::RolloutUndo,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction {
                given: s.to_owned(),
            })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no rollout action {given:?}; use pause, resume, abort or undo")]
pub struct UnknownAction {
    pub given: String,
}
