//! What the driver does next: given the persisted [`Run`], the machine says which step to run
//! ([`next_step`]), and, when the step failed, which event that failure is
//! ([`failure_event`]). The driver (`engine/`) only does what it is told and reports the
//! outcome as the action's event, in the manner of quinn-proto's pure core and its driver:
//! every decision about the order of the steps is here, pure, and property-tested
//! (`tests.rs`).

use chrono::{DateTime, Utc};

use super::{Backup, Event, Phase, Run, Section, WorkMode};
use crate::error::FailureKind;

/// The step a run needs next. Each names the event its success is (the property tests check
/// that [`super::transition`] accepts it in every state that asks for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// `Idle`: no IO, the run starts (`Event::Start`).
    Start,
    /// `FetchingUrl`: the newest done backup, unless it is the one already restored or not
    /// tonight's yet (`Event::Fetched`).
    FetchBackup,
    /// Before the archive's first byte (`Downloading`, or `Extracting` for a local file,
    /// with no mode decided yet): whole or streamed, on this disk (`Event::Planned`).
    Plan,
    /// The archive of `backup`, continuing what is on disk; a streamed run reads the head
    /// (`Event::Succeeded`).
    Download { backup: Backup },
    /// The dump read and proven, the plan decided and rehearsed on the target, all before
    /// the wipe (`Event::Checked`).
    ExtractAndCheck,
    /// The wipe, or a swap's shadows (`Event::Succeeded`).
    Drop,
    /// One section of the dump (`Event::Succeeded` for the schema, `Event::RowsLoaded` with
    /// what the rules did for the rows).
    Restore { section: Section },
    /// `SET UNLOGGED` when asked (`Event::Succeeded`).
    Unlog,
    /// Readers' grants, and in swap mode the switch (`Event::Switched`, or `Event::Succeeded`
    /// when nothing was switched).
    Switch,
    /// `POST_RESTORE_SQL`, then the lock proven once more: `Done` says the target is this
    /// run's (`Event::Succeeded`).
    PostRestore,
}

impl NextStep {
    /// Whether the target's lock must be proven this run's before the step starts: every
    /// step from the wipe on changes the target.
    pub fn touches_target(&self) -> bool {
        matches!(
            self,
            NextStep::Drop
                | NextStep::Restore { .. }
                | NextStep::Unlog
                | NextStep::Switch
                | NextStep::PostRestore
        )
    }

    /// Whether the lock must be proven again once the step succeeded (the step's success
    /// makes the run `Done`).
    pub fn proves_lock_after(&self) -> bool {
        matches!(self, NextStep::PostRestore)
    }

    /// Whether the step is IO the driver runs (every action but `Start`).
    pub fn is_step(&self) -> bool {
        !matches!(self, NextStep::Start)
    }
}

/// What to do next for `run`; `None` once it is finished (`Done`, `Failed`): nothing runs
/// in a terminal state.
pub fn next_step(run: &Run) -> Option<NextStep> {
    // Whole or streamed is decided once per run, before the archive's first byte.
    let planned = run.mode.is_some();
    Some(match &run.phase {
        Phase::Idle => NextStep::Start,
        Phase::FetchingUrl => NextStep::FetchBackup,
        Phase::Downloading { .. } | Phase::Extracting { .. } if !planned => NextStep::Plan,
        Phase::Downloading { backup, .. } => NextStep::Download {
            backup: backup.clone(),
        },
        Phase::Extracting { .. } => NextStep::ExtractAndCheck,
        Phase::Dropping { .. } => NextStep::Drop,
        Phase::Restoring { section, .. } => NextStep::Restore { section: *section },
        Phase::Unlogging { .. } => NextStep::Unlog,
        Phase::Switching { .. } => NextStep::Switch,
        Phase::PostRestoreSql { .. } => NextStep::PostRestore,
        Phase::Done { .. } | Phase::Failed { .. } => return None,
    })
}

/// The event a failed step of `run` is. `error` is the message (already without row data);
/// `retry_at` when a retry may start (the driver's backoff). A cut stream is its own event
/// only where the run streams: a run on a dump on disk retries as for any transient failure.
pub fn failure_event(
    run: &Run,
    kind: FailureKind,
    error: String,
    retry_at: DateTime<Utc>,
) -> Event {
    match kind {
        FailureKind::Permanent => Event::PermanentFailure { error },
        FailureKind::StreamCut if run.mode.as_ref().is_some_and(WorkMode::streams) => {
            Event::StreamCut { error, retry_at }
        }
        FailureKind::StreamCut | FailureKind::Transient => {
            Event::TransientFailure { error, retry_at }
        }
    }
}

/// Whether a transient failure of `run`'s current step leaves an attempt (else the run
/// fails, retries exhausted): what the driver says before it waits.
pub fn will_retry(run: &Run) -> bool {
    run.attempt < run.max_attempts
}
