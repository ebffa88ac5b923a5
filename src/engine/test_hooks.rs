//! Hooks for the reliability suite (`tests/it/crash.rs`, `docs/reliability.md`): they let a
//! test kill the real binary inside a phase whose step is too short to be caught otherwise.
//! The variable is read once, when the steps are built (`app`); unset, nothing changes.
//!
//! Compiled only with the `test-hooks` feature: the tests enable it (`Cargo.toml`'s
//! dev-dependency on this crate), a release build has neither the variable nor the pause.

use std::time::Duration;

use crate::machine::Run;

/// `REPLICATOR_TEST_PAUSE_AT=<step_label>[:<seconds>]` (e.g. `dropping:30`): before the step
/// of that phase starts, and after the phase is persisted, the driver sleeps (30 s unless
/// told). A shutdown still interrupts the sleep, since the driver races the step with it.
pub const PAUSE_AT_VAR: &str = "REPLICATOR_TEST_PAUSE_AT";

/// A parsed [`PAUSE_AT_VAR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseAt {
    label: String,
    secs: u64,
}

impl PauseAt {
    /// [`PAUSE_AT_VAR`] from the environment, if set.
    pub fn from_env() -> Option<PauseAt> {
        let spec = std::env::var(PAUSE_AT_VAR).ok()?;
        let (label, secs) = match spec.split_once(':') {
            Some((l, s)) => (l.trim(), s.trim().parse().unwrap_or(30)),
            None => (spec.trim(), 30),
        };
        Some(PauseAt {
            label: label.to_string(),
            secs,
        })
    }

    /// Sleeps if this names the step of `run`'s phase.
    pub async fn before_step(&self, run: &Run) {
        if self.label == run.phase.step_label() {
            let secs = self.secs;
            tracing::warn!(
                phase = %run.phase.name(),
                seconds = secs,
                "{PAUSE_AT_VAR}: pausing {secs}s before the step of {}",
                run.phase.name()
            );
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
    }
}

/// `REPLICATOR_TEST_SLEEP_IN_SWITCH=<seconds>`: the switch's transaction sleeps that long
/// (`pg_sleep`) after its renames and before its commit, so that a test can kill the process
/// in the middle of it (`tests/it/swap.rs`).
pub const SLEEP_IN_SWITCH_VAR: &str = "REPLICATOR_TEST_SLEEP_IN_SWITCH";

/// The statement [`SLEEP_IN_SWITCH_VAR`] asks for, if set.
pub fn sleep_in_switch() -> Option<String> {
    let secs: f64 = std::env::var(SLEEP_IN_SWITCH_VAR)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    tracing::warn!("{SLEEP_IN_SWITCH_VAR}: the switch sleeps {secs}s before its commit");
    Some(format!("SELECT pg_sleep({secs})"))
}
