//! What each phase is: its name, whether it touches the target, its step's label, and where a
//! run stopped in it starts again.

use super::{Backup, Origin, Phase, PhaseName, Section};

impl Phase {
    pub fn name(&self) -> PhaseName {
        match self {
            Phase::Idle => PhaseName::Idle,
            Phase::FetchingUrl => PhaseName::FetchingUrl,
            Phase::Downloading { .. } => PhaseName::Downloading,
            Phase::Extracting { .. } => PhaseName::Extracting,
            Phase::Dropping { .. } => PhaseName::Dropping,
            Phase::Restoring { .. } => PhaseName::Restoring,
            Phase::Unlogging { .. } => PhaseName::Unlogging,
            Phase::Switching { .. } => PhaseName::Switching,
            Phase::PostRestoreSql { .. } => PhaseName::PostRestoreSql,
            Phase::Done { .. } => PhaseName::Done,
            Phase::Failed { .. } => PhaseName::Failed,
        }
    }

    /// The phases whose step changes the target (from the wipe on): each needs the target's
    /// lock to be this run's.
    pub fn touches_target(&self) -> bool {
        matches!(
            self,
            Phase::Dropping { .. }
                | Phase::Restoring { .. }
                | Phase::Unlogging { .. }
                | Phase::Switching { .. }
                | Phase::PostRestoreSql { .. }
        )
    }

    /// The key under which the time spent in this phase is added up: the two restore
    /// sections are told apart because they are the two halves of the night.
    pub fn step_label(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::FetchingUrl => "fetching_url",
            Phase::Downloading { .. } => "downloading",
            Phase::Extracting { .. } => "extracting",
            Phase::Dropping { .. } => "dropping",
            Phase::Restoring {
                section: Section::PreData,
                ..
            } => "restoring_pre_data",
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            } => "restoring_data",
            Phase::Unlogging { .. } => "unlogging",
            Phase::Switching { .. } => "switching",
            Phase::PostRestoreSql { .. } => "post_restore_sql",
            Phase::Done { .. } => "done",
            Phase::Failed { .. } => "failed",
        }
    }

    pub fn backup(&self) -> Option<&Backup> {
        match self {
            Phase::Idle | Phase::FetchingUrl => None,
            Phase::Downloading { backup, .. }
            | Phase::Extracting { backup }
            | Phase::Dropping { backup }
            | Phase::Restoring { backup, .. }
            | Phase::Unlogging { backup }
            | Phase::Switching { backup }
            | Phase::PostRestoreSql { backup }
            | Phase::Done { backup } => Some(backup),
            Phase::Failed { backup, .. } => backup.as_ref(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Done { .. } | Phase::Failed { .. })
    }

    /// Where a run that stopped in this phase (crash, transient failure, shutdown) starts
    /// again, in this process: the earliest phase whose effects can still be trusted. See
    /// [`Run::resume_point`], which knows the run's origin.
    pub(super) fn resume_point(&self, origin: &Origin) -> Phase {
        match self {
            // A live source cannot give the same snapshot twice: after the wipe, anything
            // interrupted starts again from a new `pg_dump` (its head read in `Downloading`).
            Phase::Dropping { backup }
            | Phase::Restoring { backup, .. }
            | Phase::Unlogging { backup }
                if matches!(origin, Origin::Live { .. }) =>
            {
                Phase::Downloading {
                    backup: backup.clone(),
                    bytes_done: 0,
                }
            }
            // The schema is in once `Unlogging` succeeded, and each table's rows are committed
            // with their record in the target: the rows resume where they stopped.
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            } => self.clone(),
            Phase::Restoring { backup, .. } | Phase::Unlogging { backup } => Phase::Dropping {
                backup: backup.clone(),
            },
            // The switch is one transaction, done or not: it is tried again, and knows which
            // (replica::swap). Each SQL file runs in its own transaction, so running them again
            // is safe.
            other => other.clone(),
        }
    }
}
