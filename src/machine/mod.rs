//! The replication state machine: what phase a run is in, and which phase comes next.
//!
//! Everything here is pure: no clock, no disk, no network. The driver (`engine/`) does the
//! IO of each phase, turns its outcome into an [`Event`], and asks [`transition`] for the next
//! [`Run`], which it persists *before* starting the next step. Keeping the decisions pure is
//! what lets the property tests (`tests.rs`) drive thousands of event sequences through it.
//!
//! The state diagram, with the event of each edge, is in `docs/architecture.md` (its one
//! copy). What the driver does next in each state, and which event a failed step is, is
//! [`next_step`] and [`failure_event`] (`next_step.rs`): the driver only executes. The
//! decisions around a run that are not one transition (skip, too old, disk budget,
//! interrupted, abandon, recover) are pure functions too, in `rules.rs`.
//!
//! # Invariants (checked by the property tests)
//!
//! 1. `Done` is reached only through `Dropping`, then `Restoring{PreData}`, then
//!    `Restoring{DataAndPostData}`, in that order, with no `Dropping` in between: rows are
//!    never loaded on top of another run's load (the rows' section of one run may take several
//!    attempts; each skips what the target records as loaded by this run).
//! 2. `Dropping` is entered only after `Extracting` succeeded in this run (the dump passed
//!    `pg_restore --list` and the target answered): a run bound to fail leaves the target as it
//!    was.
//! 3. `attempt` never exceeds `max_attempts` (`MAX_RETRY_COUNT + 1`); only transient failures
//!    consume attempts, and a permanent failure ends the run at once.
//! 4. A resumed or retried run never skips a phase whose effects may be lost: `Dropping`,
//!    `Restoring{PreData}` and `Unlogging` go back to `Dropping`; `Restoring{DataAndPostData}`
//!    stays (each table's rows commit with their record in the target); a live source goes back
//!    to `Downloading` (a new snapshot); a download keeps its bytes (they are on disk, the driver
//!    checks them); extraction is redone. A run taken over from the target's records by a new
//!    container (`ResumedFromTarget`) keeps its rows' section and starts anything earlier again
//!    from the archive.
//! 8. `Planned`, `LoadStarted`, `TableLoaded` and `TablesAnalyzed` change what they say and
//!    never the phase; a `StreamCut` applies to a streaming run only.
//! 9. The refresh a run records is the one `Checked` said; a switch time is set only by
//!    `Switched`, out of `Switching`, and a wipe time only by leaving `Dropping` in wipe mode:
//!    a run that never reached them says so.
//! 5. `Done` and `Failed` absorb every event: a finished run is never changed.
//! 6. No variant carries a secret: tokens, passwords and download URLs never enter a [`Run`].
//! 7. Every [`Run`] round-trips through its JSON form unchanged (that is what the store keeps).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod load;
mod masking_counts;
mod next_step;
mod refresh;
mod rules;
pub mod start;

pub use load::{LoadCounts, TableLoad, WorkMode};
pub use masking_counts::MaskingCounts;
pub use next_step::{NextStep, failure_event, next_step, will_retry};
pub use refresh::{ReaderKept, RefreshMode, RunRefresh};
pub use rules::{
    DiskTooSmall, MIN_WORK_DISK, TARGET_CONFIRM_VAR, TargetContents, TooOld, UnconfirmedWipe,
    abandon, adopt, already_restored, disk_needed, dump_cap, dump_estimate, enough_disk,
    first_wipe, interrupted, recover, target_is_source, too_old, work_mode,
};

/// The backup a run restores, as Scalingo describes it (or as a local file is described).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Scalingo's backup id (24 hex characters), or `local` for a file given on the command line.
    pub id: String,
    /// `YYYYMMDDHHMMSS_<resource_id>` for Scalingo, the file name for a local file.
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    /// Bytes of the `.tar.gz` as Scalingo announces them (the download is checked against it).
    pub size: Option<u64>,
}

/// The two `pg_restore` passes. The split is what lets `Unlogging` sit between the schema
/// and the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// `--section=pre-data`: types, tables, functions, sequences.
    PreData,
    /// `--section=data --section=post-data`: rows, then indexes, constraints and triggers.
    DataAndPostData,
}

impl Section {
    pub fn label(self) -> &'static str {
        match self {
            Section::PreData => "pre-data",
            Section::DataAndPostData => "data+post-data",
        }
    }
}

/// Where the dump of a run comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// The newest `done` backup of the app's PostgreSQL addon.
    Scalingo,
    /// A Scalingo-style `.tar.gz` already on disk (`replicator restore --archive`).
    Archive { path: PathBuf },
    /// A `pg_dump -Fc` file already on disk (`replicator restore --dump`).
    Dump { path: PathBuf },
    /// `pg_dump -Fc` of a live database (`SOURCE_DATABASE_URL`); `source` names it without
    /// its password (`user@host:port/db`).
    Live { source: String },
}

/// The phase of a run. Each variant carries what its step needs, and never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum Phase {
    Idle,
    FetchingUrl,
    Downloading {
        backup: Backup,
        /// Bytes on disk when this was persisted; the file's length is the truth on resume.
        bytes_done: u64,
    },
    Extracting {
        backup: Backup,
    },
    Dropping {
        backup: Backup,
    },
    Restoring {
        backup: Backup,
        section: Section,
    },
    Unlogging {
        backup: Backup,
    },
    /// Swap mode (`REFRESH_MODE=swap`): tonight's schemas, built under shadow names, take the
    /// live names in one transaction; yesterday's are dropped after it. A no-op in wipe mode.
    Switching {
        backup: Backup,
    },
    PostRestoreSql {
        backup: Backup,
    },
    Done {
        backup: Backup,
    },
    Failed {
        /// The phase whose step failed.
        failed_in: PhaseName,
        backup: Option<Backup>,
    },
}

/// The name of a phase, without its data: what `status --json` prints as `phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PhaseName {
    Idle,
    FetchingUrl,
    Downloading,
    Extracting,
    Dropping,
    Restoring,
    Unlogging,
    Switching,
    PostRestoreSql,
    Done,
    Failed,
}

impl PhaseName {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Idle => "Idle",
            PhaseName::FetchingUrl => "FetchingUrl",
            PhaseName::Downloading => "Downloading",
            PhaseName::Extracting => "Extracting",
            PhaseName::Dropping => "Dropping",
            PhaseName::Restoring => "Restoring",
            PhaseName::Unlogging => "Unlogging",
            PhaseName::Switching => "Switching",
            PhaseName::PostRestoreSql => "PostRestoreSql",
            PhaseName::Done => "Done",
            PhaseName::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time spent in one step, added up over attempts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepDuration {
    pub step: String,
    pub seconds: f64,
}

/// How far the current step is, for `status` and the logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "snake_case")]
pub enum Progress {
    Bytes { done: u64, total: Option<u64> },
    Items { done: u64, total: u64 },
}

/// One replication, as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub origin: Origin,
    pub phase: Phase,
    /// 1 for the first try; each transient failure adds one.
    pub attempt: u32,
    /// `MAX_RETRY_COUNT + 1`.
    pub max_attempts: u32,
    /// When the next attempt may start (set by a transient failure, persisted so that a crash
    /// during the wait neither resets the count nor restarts the wait from zero).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the first transient failure of this run happened (for `RETRIES_TIMEOUT_MINUTES`).
    pub retrying_since: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub phase_started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub durations: Vec<StepDuration>,
    /// The last error: the reason of `Failed`, or of the last retry.
    pub error: Option<String>,
    /// Set when a process found this run abandoned by a process that died.
    pub interrupted: bool,
    pub progress: Option<Progress>,
    /// What of the dump the restore leaves out (decided in `Extracting`, before the wipe):
    /// never silently, so that a replica never looks whole when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
    /// What `REPLICA_RULES` did (set when the rows are in; absent without rules, and in
    /// records written before masking existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<MaskingCounts>,
    /// Whole or streamed (decided before the first byte; absent in records written before
    /// streaming existed, which were whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkMode>,
    /// How far the load of the rows is (from `Restoring{DataAndPostData}` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadCounts>,
    /// Swap or wipe, the readers carried over, and when the switch (or the wipe) happened
    /// (from `Checked` on; absent in records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RunRefresh>,
}

/// A kind of dump entry the restore leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The entry kind, as `pg_restore --list` prints it (`EVENT TRIGGER`, `TABLE DATA`,
    /// `SCHEMA`...).
    pub kind: String,
    pub count: u64,
    /// The names (schema-qualified where they have a schema), at most 20.
    pub names: Vec<String>,
    pub why: String,
}

/// What happened to the current step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Leave `Idle`.
    Start,
    /// `FetchingUrl` found the backup to restore.
    Fetched(Backup),
    /// The current step did all its work.
    Succeeded,
    /// `Restoring{DataAndPostData}` did all its work (a success), and `REPLICA_RULES` did
    /// this to the rows (`None`: no rules), which the run keeps.
    RowsLoaded { masking: Option<MaskingCounts> },
    /// `Extracting` did all its work, and the restore will leave out these (the dump's
    /// entries a replica does not get); `refresh` is how the run replaces yesterday's copy,
    /// and whose privileges it carries over (`None`: not said).
    Checked {
        left_out: Vec<LeftOut>,
        #[serde(default)]
        refresh: Option<RunRefresh>,
    },
    /// Swap mode: `Switching` did its work, and the switch to tonight's copy committed at `at`
    /// (as the target recorded it: a resumed step reads it back).
    Switched { at: DateTime<Utc> },
    /// The current step moved on (bytes downloaded, items restored); the phase does not change.
    Progress(Progress),
    /// The step failed in a way that may work later; the driver chose when (backoff).
    TransientFailure {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// The step failed in a way that no retry can fix.
    PermanentFailure { error: String },
    /// The process that ran this step is gone (seen by a later process: lock free, phase not
    /// terminal).
    Crashed,
    /// Continue an interrupted run from its resume point.
    Resume,
    /// Before the first byte of the archive (in `Downloading`, or `Extracting` for a local
    /// file): whole or streamed. Once per run; the phase does not change.
    Planned(WorkMode),
    /// `Restoring{DataAndPostData}` started: the tables it loads, and those the target's
    /// records say an earlier attempt already loaded (not loaded again).
    LoadStarted(LoadCounts),
    /// One table's rows were committed in the target, with the record that says so.
    TableLoaded(TableLoad),
    /// This many more relations were `ANALYZE`d (their rows and indexes in).
    TablesAnalyzed(u64),
    /// The archive's stream broke while streaming (the download cut for good, the dump cut
    /// short or corrupt): what the target holds stays, the next attempt downloads again.
    StreamCut {
        error: String,
        retry_at: DateTime<Utc>,
    },
    /// A process whose state directory is empty (a new container) took this run over from
    /// the target's record: its files are gone, the target's records are not.
    ResumedFromTarget,
}

/// Why an event could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("event {event} does not apply to phase {phase}")]
    NotApplicable {
        phase: PhaseName,
        event: &'static str,
    },
}

impl Event {
    fn label(&self) -> &'static str {
        match self {
            Event::Start => "Start",
            Event::Fetched(_) => "Fetched",
            Event::Succeeded => "Succeeded",
            Event::RowsLoaded { .. } => "RowsLoaded",
            Event::Checked { .. } => "Checked",
            Event::Switched { .. } => "Switched",
            Event::Progress(_) => "Progress",
            Event::TransientFailure { .. } => "TransientFailure",
            Event::PermanentFailure { .. } => "PermanentFailure",
            Event::Crashed => "Crashed",
            Event::Resume => "Resume",
            Event::Planned(_) => "Planned",
            Event::LoadStarted(_) => "LoadStarted",
            Event::TableLoaded(_) => "TableLoaded",
            Event::TablesAnalyzed(_) => "TablesAnalyzed",
            Event::StreamCut { .. } => "StreamCut",
            Event::ResumedFromTarget => "ResumedFromTarget",
        }
    }
}

impl Run {
    /// A new run, in `Idle`, that has not started any step yet.
    pub fn new(run_id: String, origin: Origin, max_retry_count: u32, now: DateTime<Utc>) -> Run {
        Run {
            run_id,
            origin,
            phase: Phase::Idle,
            attempt: 1,
            max_attempts: max_retry_count.saturating_add(1),
            next_attempt_at: None,
            retrying_since: None,
            started_at: now,
            updated_at: now,
            phase_started_at: now,
            finished_at: None,
            durations: Vec::new(),
            error: None,
            interrupted: false,
            progress: None,
            left_out: Vec::new(),
            masking: None,
            mode: None,
            load: None,
            refresh: None,
        }
    }

    /// Where this run starts again after a crash, a stop or a transient failure, in the same
    /// process or state directory (see [`Event::ResumedFromTarget`] for a new one).
    pub fn resume_point(&self) -> Phase {
        self.phase.resume_point(&self.origin)
    }

    /// Where a run taken over from the target's record starts: its working files are gone.
    /// The rows resume where the target's records say; anything before them starts again at
    /// the download (or, for a file the user gave, at its extraction).
    fn resume_point_from_target(&self) -> Phase {
        let point = self.resume_point();
        match (&point, &self.origin) {
            (
                Phase::Restoring {
                    section: Section::DataAndPostData,
                    ..
                }
                | Phase::Switching { .. }
                | Phase::PostRestoreSql { .. }
                | Phase::Idle
                | Phase::FetchingUrl,
                _,
            ) => point,
            (_, Origin::Archive { path } | Origin::Dump { path }) => Phase::Extracting {
                backup: local_backup(path),
            },
            (p, _) => match p.backup() {
                Some(backup) => Phase::Downloading {
                    backup: backup.clone(),
                    bytes_done: 0,
                },
                None => Phase::FetchingUrl,
            },
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.phase.is_terminal()
    }

    pub fn backup(&self) -> Option<&Backup> {
        self.phase.backup()
    }

    /// Seconds spent in a step, summed over attempts.
    pub fn duration_of(&self, step: &str) -> Option<f64> {
        self.durations
            .iter()
            .find(|d| d.step == step)
            .map(|d| d.seconds)
    }

    fn add_duration(&mut self, now: DateTime<Utc>) {
        let label = self.phase.step_label();
        if label == "idle" {
            return;
        }
        let secs = (now - self.phase_started_at).num_milliseconds().max(0) as f64 / 1000.0;
        match self.durations.iter_mut().find(|d| d.step == label) {
            Some(d) => d.seconds += secs,
            None => self.durations.push(StepDuration {
                step: label.to_string(),
                seconds: secs,
            }),
        }
    }

    fn enter(&mut self, phase: Phase, now: DateTime<Utc>) {
        self.add_duration(now);
        self.phase = phase;
        self.phase_started_at = now;
        self.progress = None;
        if self.phase.is_terminal() {
            self.finished_at = Some(now);
            self.next_attempt_at = None;
        }
    }
}

/// The next phase of `run` after `event`, at time `now`. Pure: the same inputs always give the
/// same output, and `run` is not changed.
pub fn transition(run: &Run, event: Event, now: DateTime<Utc>) -> Result<Run, TransitionError> {
    let mut next = run.clone();
    next.updated_at = now;
    let not_applicable = || TransitionError::NotApplicable {
        phase: run.phase.name(),
        event: event.label(),
    };

    if run.is_terminal() {
        return Err(not_applicable());
    }
    // The rows' success, with what the rules did to them.
    if let Event::RowsLoaded { masking } = &event {
        if !matches!(
            run.phase,
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            }
        ) {
            return Err(not_applicable());
        }
        let mut after = transition(run, Event::Succeeded, now)?;
        after.masking = masking.clone();
        return Ok(after);
    }

    match (&run.phase, &event) {
        (Phase::Idle, Event::Start) => {
            let first = match &run.origin {
                Origin::Scalingo => Phase::FetchingUrl,
                // The source is there: its head is read as the first step.
                Origin::Live { .. } => Phase::Downloading {
                    backup: live_backup(),
                    bytes_done: 0,
                },
                Origin::Archive { path } | Origin::Dump { path } => Phase::Extracting {
                    backup: local_backup(path),
                },
            };
            next.enter(first, now);
        }
        (Phase::Idle, _) => return Err(not_applicable()),
        (_, Event::Start) => return Err(not_applicable()),

        (Phase::FetchingUrl, Event::Fetched(backup)) => {
            next.enter(
                Phase::Downloading {
                    backup: backup.clone(),
                    bytes_done: 0,
                },
                now,
            );
            next.interrupted = false;
        }
        (_, Event::Fetched(_)) | (Phase::FetchingUrl, Event::Succeeded) => {
            return Err(not_applicable());
        }

        (Phase::Extracting { backup }, Event::Checked { left_out, refresh }) => {
            next.left_out = left_out.clone();
            next.refresh = refresh.clone();
            next.enter(
                Phase::Dropping {
                    backup: backup.clone(),
                },
                now,
            );
            next.interrupted = false;
        }
        (_, Event::Checked { .. }) => return Err(not_applicable()),

        (Phase::Switching { backup }, Event::Switched { at }) => {
            next.refresh
                .get_or_insert_with(|| RunRefresh::new(RefreshMode::Swap))
                .switched_at = Some(*at);
            next.enter(
                Phase::PostRestoreSql {
                    backup: backup.clone(),
                },
                now,
            );
            next.interrupted = false;
        }
        (_, Event::Switched { .. }) => return Err(not_applicable()),

        (Phase::Downloading { .. } | Phase::Extracting { .. }, Event::Planned(mode)) => {
            next.mode = Some(mode.clone());
        }
        (_, Event::Planned(_)) => return Err(not_applicable()),

        (
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            },
            Event::LoadStarted(counts),
        ) => {
            next.load = Some(counts.clone());
        }
        (
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            },
            Event::TableLoaded(table),
        ) => {
            let load = next.load.get_or_insert_with(LoadCounts::default);
            load.tables_done += 1;
            load.tables_total = load.tables_total.max(load.tables_done);
            load.rows += table.rows;
            load.bytes += table.bytes;
        }
        (
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            },
            Event::TablesAnalyzed(n),
        ) => {
            next.load.get_or_insert_with(LoadCounts::default).analyzed += n;
        }
        (_, Event::LoadStarted(_) | Event::TableLoaded(_) | Event::TablesAnalyzed(_)) => {
            return Err(not_applicable());
        }
        (_, Event::StreamCut { .. }) if !run.mode.as_ref().is_some_and(WorkMode::streams) => {
            return Err(not_applicable());
        }

        (_, Event::ResumedFromTarget) => {
            let point = run.resume_point_from_target();
            if !matches!(
                point,
                Phase::Restoring {
                    section: Section::DataAndPostData,
                    ..
                } | Phase::Switching { .. }
                    | Phase::PostRestoreSql { .. }
            ) {
                // A new container plans again: its disk is not the one that chose.
                next.mode = None;
            }
            next.enter(point, now);
            next.interrupted = false;
        }

        (_, Event::RowsLoaded { .. }) => unreachable!("handled above"),

        (phase, Event::Succeeded) => {
            let after = match phase {
                Phase::Downloading { backup, .. } => Phase::Extracting {
                    backup: backup.clone(),
                },
                Phase::Extracting { backup } => Phase::Dropping {
                    backup: backup.clone(),
                },
                Phase::Dropping { backup } => Phase::Restoring {
                    backup: backup.clone(),
                    section: Section::PreData,
                },
                Phase::Restoring {
                    backup,
                    section: Section::PreData,
                } => Phase::Unlogging {
                    backup: backup.clone(),
                },
                Phase::Unlogging { backup } => Phase::Restoring {
                    backup: backup.clone(),
                    section: Section::DataAndPostData,
                },
                Phase::Restoring {
                    backup,
                    section: Section::DataAndPostData,
                } => Phase::Switching {
                    backup: backup.clone(),
                },
                Phase::Switching { backup } => Phase::PostRestoreSql {
                    backup: backup.clone(),
                },
                Phase::PostRestoreSql { backup } => Phase::Done {
                    backup: backup.clone(),
                },
                _ => return Err(not_applicable()),
            };
            // The wipe is `Dropping`'s work in wipe mode: readers lost yesterday's copy now.
            if matches!(phase, Phase::Dropping { .. })
                && let Some(r) = next
                    .refresh
                    .as_mut()
                    .filter(|r| r.mode == RefreshMode::Wipe)
            {
                r.wiped_at = Some(now);
            }
            next.enter(after, now);
            next.interrupted = false;
            if next.is_terminal() {
                next.error = None;
            }
        }

        (phase, Event::Progress(progress)) => {
            if let (Phase::Downloading { backup, .. }, Progress::Bytes { done, .. }) =
                (phase, progress)
            {
                next.phase = Phase::Downloading {
                    backup: backup.clone(),
                    bytes_done: *done,
                };
            }
            next.progress = Some(progress.clone());
        }

        (
            phase,
            Event::TransientFailure { error, retry_at } | Event::StreamCut { error, retry_at },
        ) => {
            next.error = Some(error.clone());
            if run.attempt >= run.max_attempts {
                let failed = Phase::Failed {
                    failed_in: phase.name(),
                    backup: phase.backup().cloned(),
                };
                next.error = Some(format!(
                    "{error} (gave up after {} attempts: raise MAX_RETRY_COUNT to try longer)",
                    run.attempt
                ));
                next.enter(failed, now);
            } else {
                next.attempt += 1;
                next.next_attempt_at = Some(*retry_at);
                next.retrying_since.get_or_insert(now);
                let point = run.resume_point();
                next.enter(point, now);
            }
        }

        (phase, Event::PermanentFailure { error }) => {
            next.error = Some(error.clone());
            let failed = Phase::Failed {
                failed_in: phase.name(),
                backup: phase.backup().cloned(),
            };
            next.enter(failed, now);
        }

        (_, Event::Crashed) => {
            next.interrupted = true;
        }

        (_, Event::Resume) => {
            let point = run.resume_point();
            next.enter(point, now);
        }
    }
    Ok(next)
}

/// The "backup" of a live source: a `pg_dump` taken when the run reads it.
fn live_backup() -> Backup {
    Backup {
        id: "live".to_string(),
        name: "pg_dump of SOURCE_DATABASE_URL".to_string(),
        created_at: None,
        size: None,
    }
}

fn local_backup(path: &std::path::Path) -> Backup {
    Backup {
        id: "local".to_string(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        created_at: None,
        size: None,
    }
}

mod phase;

#[cfg(test)]
mod tests;
