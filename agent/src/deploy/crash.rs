//! Crash points for tests: `FLEET_AGENT_CRASH_AT=<point>` makes the agent
//! abort (no unwinding, no flushing beyond what was already flushed) when it
//! reaches that point, as a power cut would. Inert unless the variable is
//! set; compiled in always so the tested binary is the shipped one.
//!
//! Points are named `before-<phase>` / `after-<phase>` around each persisted
//! phase change, plus the named points of [`POINTS`] inside effects.

/// Named points inside effects (the phase points are generated).
pub const POINTS: &[&str] = &[
    "fetched",
    "after-stop-old",
    "after-start-new",
    "during-probation",
    "after-commit-record",
    "during-gc",
    "mid-rollback",
    "after-rollback-start",
];

/// Aborts the process if `FLEET_AGENT_CRASH_AT` names `point`.
pub fn point(point: &str) {
    if let Some(want) = std::env::var_os("FLEET_AGENT_CRASH_AT")
        && want == point
    {
        eprintln!("fleet-agent: crash point {point} reached, aborting");
        std::process::abort();
    }
}
