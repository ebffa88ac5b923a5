//! Hooks for the reliability suite (`tests/it/crash.rs`, `docs/reliability.md`): they let a
//! test kill the real binary inside a phase whose step is too short to be caught otherwise.
//! Unset, they cost one environment lookup per step and change nothing.

use std::time::Duration;

use crate::machine::Run;

/// `REPLICATOR_TEST_PAUSE_AT=<step_label>[:<seconds>]` (e.g. `dropping:30`): before the step
/// of that phase starts, and after the phase is persisted, the driver sleeps (30 s unless
/// told). A shutdown still interrupts the sleep, since the driver races the step with it.
pub const PAUSE_AT_VAR: &str = "REPLICATOR_TEST_PAUSE_AT";

/// Sleeps if [`PAUSE_AT_VAR`] names the step of `run`'s phase.
pub async fn pause_before_step(run: &Run) {
    let Ok(spec) = std::env::var(PAUSE_AT_VAR) else {
        return;
    };
    let (label, secs) = match spec.split_once(':') {
        Some((l, s)) => (l.trim(), s.trim().parse().unwrap_or(30)),
        None => (spec.trim(), 30),
    };
    if label == run.phase.step_label() {
        tracing::warn!(
            phase = %run.phase.name(),
            seconds = secs,
            "{PAUSE_AT_VAR}: pausing {secs}s before the step of {}",
            run.phase.name()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}
