//! Runs a replication: asks the machine what to do next (`machine::next_step`), does it,
//! turns its outcome into the action's event (or the failure's, `machine::failure_event`),
//! asks the machine for the next state, persists it, and goes on until `Done` or `Failed`.
//!
//! This is the only module that knows both the machine and the steps: the steps (Scalingo,
//! fetch, postgres) take inputs and return results, the machine decides, the store keeps.
//! The driver decides nothing about the order of the steps: it executes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RetryConfig;
use crate::error::{FailureKind, StepError};
use crate::machine::{
    Backup, Event, LeftOut, MaskingCounts, NextStep, Progress, Run, Section, WorkMode,
    failure_event, next_step, transition, will_retry,
};
use crate::replica::LockHandle;
use crate::state::remote::{RemoteWriter, Write};
use crate::state::store::{Store, StoreError};

mod attempt;
mod bar;
pub mod planning;
mod progress;
mod refresh;
mod retry;
mod steps;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub(crate) mod workdir;

pub use attempt::Attempt;
use progress::{ProgressLogger, log_phase, log_summary};
pub use steps::{RealSteps, live_feed, pg_dump_connection, target_is_source_message};
use workdir::WorkDir;

/// How often progress is persisted while a step runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0} (please report it)")]
    Machine(#[from] crate::machine::TransitionError),
}

/// How a drive ended.
#[derive(Debug)]
pub enum Outcome {
    /// The run reached `Done` or `Failed`.
    Finished(Run),
    /// Shutdown was asked; the run is persisted at a resumable point.
    Interrupted(Run),
    /// The newest backup is the one the last `Done` run restored: nothing was done, and the
    /// last run stays the current one.
    AlreadyRestored(Backup),
}

/// The IO of each phase. [`RealSteps`] talks to Scalingo, the disk and PostgreSQL; the
/// model-based tests substitute one that injects faults and crashes. Steps know neither the
/// store nor the machine: they take inputs and return results. What a process holds while it
/// drives a run (the stream, the lock, the work dir) is the driver's [`Attempt`], lent to
/// each step; the steps keep nothing of a run between two calls.
pub trait Steps: Send + Sync {
    /// The newest `done` backup (and any check that must pass before downloading it).
    fn fetch_backup(&self) -> impl Future<Output = Result<Backup, StepError>> + Send;
    /// The archive of `backup`, continuing what is on disk.
    fn download(
        &self,
        run: &Run,
        backup: &Backup,
        attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// The dump out of the archive, read by `pg_restore --list`; the target answers.
    /// Returns what the restore will leave out of the dump, and how it refreshes the target.
    fn extract_and_check(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> impl Future<Output = Result<DumpChecked, StepError>> + Send;
    /// `DROP OWNED BY CURRENT_USER CASCADE` (after ending leftover restore sessions).
    fn drop_target(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Whole or streamed, for `run` (before its first byte).
    fn plan(&self, run: &Run) -> impl Future<Output = Result<WorkMode, StepError>> + Send;
    /// One section. `events` gets the run's events of the rows' section as they happen
    /// (`LoadStarted`, `TableLoaded`). Returns what `REPLICA_RULES` did to the rows (`None`
    /// without rules, and for the schema).
    fn restore(
        &self,
        run: &Run,
        section: Section,
        attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
        events: &(dyn Fn(Event) + Send + Sync),
    ) -> impl Future<Output = Result<Option<MaskingCounts>, StepError>> + Send;
    fn unlog(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// Swap mode: tonight's schemas take the live names in one transaction, then yesterday's
    /// are dropped; returns when the switch committed (`None`: nothing was switched, wipe
    /// mode, the default here).
    fn switch(
        &self,
        _run: &Run,
        _attempt: &mut Attempt,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StepError>> + Send {
        async { Ok(None) }
    }
    fn post_restore(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// `run` just became `Done` or `Failed` (notifications). Must not fail, nor take long.
    fn finished(&self, _run: &Run) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Shutdown in the middle of `run`'s current step: end what the step left running.
    fn on_interrupt(&self, run: &Run) -> impl Future<Output = ()> + Send;
    /// Just before the step of `run`'s phase starts (the reliability suite's pause).
    fn before_step(&self, _run: &Run) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What `Extracting` found: what the restore leaves out of the dump, and how the run replaces
/// yesterday's copy (`None`: not said, as by a test's steps).
#[derive(Clone, Debug, Default)]
pub struct DumpChecked {
    pub left_out: Vec<LeftOut>,
    pub refresh: Option<crate::machine::RunRefresh>,
}

/// Runs runs: the policy (retries, skip, age) around a [`Steps`].
pub struct Driver<S: Steps = RealSteps> {
    pub state_dir: PathBuf,
    pub store: Store,
    pub steps: S,
    pub retry: RetryConfig,
    /// Restore the newest backup even when the last `Done` run restored it.
    pub force: bool,
    /// A newest `done` backup older than this is not the night's yet (transient).
    pub max_backup_age: Option<Duration>,
    pub shutdown: CancellationToken,
    /// Records each run in the target too, for `status` in containers that cannot see this
    /// disk (`None`: only the local store).
    pub remote: Option<RemoteWriter>,
}

/// What a step produced.
enum StepOutcome {
    Event(Event),
    AlreadyRestored(Backup),
}

/// The latest progress a step reported, and the events it sent (a table loaded); the driver
/// persists them on its own clock. A terminal's bar sees them as they come.
#[derive(Clone, Default)]
struct ProgressCell(
    Arc<Mutex<(Option<Progress>, Vec<Event>)>>,
    Option<bar::TerminalBar>,
);

impl ProgressCell {
    fn new(bar: Option<bar::TerminalBar>) -> ProgressCell {
        ProgressCell(Arc::default(), bar)
    }
    fn set(&self, p: Progress) {
        if let Some(bar) = &self.1 {
            bar.progress(&p);
        }
        self.0.lock().expect("progress lock").0 = Some(p);
    }
    fn take(&self) -> Option<Progress> {
        self.0.lock().expect("progress lock").0.take()
    }
    fn event(&self, e: Event) {
        if let Some(bar) = &self.1 {
            bar.event(&e);
        }
        self.0.lock().expect("progress lock").1.push(e);
    }
    fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.0.lock().expect("progress lock").1)
    }
}

/// A new run id: sortable by time, unique enough for one state directory.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let salt = (std::process::id() as u64) ^ (now.timestamp_subsec_nanos() as u64);
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), salt & 0xffff)
}

impl<S: Steps> Driver<S> {
    fn apply(&self, run: &Run, event: Event) -> Result<Run, DriverError> {
        // An error leaves the process from here (the store, `status`, the webhooks, the
        // target's records): without the row data PostgreSQL may quote in it.
        let event = match event {
            Event::TransientFailure { error, retry_at } => Event::TransientFailure {
                error: crate::secret::redact_row_data(&error),
                retry_at,
            },
            Event::PermanentFailure { error } => Event::PermanentFailure {
                error: crate::secret::redact_row_data(&error),
            },
            Event::StreamCut { error, retry_at } => Event::StreamCut {
                error: crate::secret::redact_row_data(&error),
                retry_at,
            },
            other => other,
        };
        let next = transition(run, event, Utc::now())?;
        self.store.save(&next)?;
        Ok(next)
    }

    /// [`Self::apply`] of the events a step told since the last tick, saved once: a rows'
    /// section tells a `TableLoaded` per table, a dozen a second on small tables, and each
    /// save of the store is several fsyncs on the cores the restore needs.
    fn apply_all(&self, run: &Run, events: Vec<Event>) -> Result<Run, DriverError> {
        if events.is_empty() {
            return Ok(run.clone());
        }
        let mut next = run.clone();
        for event in events {
            next = transition(&next, event, Utc::now())?;
        }
        self.store.save(&next)?;
        Ok(next)
    }

    /// The best-effort copy of `run` in the target (never fails the run).
    async fn publish(&self, run: &Run, why: Write) {
        if let Some(remote) = &self.remote {
            remote.publish(run, why).await;
        }
    }

    /// Drives `run` until it finishes or shutdown is asked. `run` may be new (`Idle`) or
    /// resumed; every transition is persisted before its step starts. `lock`: the target's
    /// lock this process holds (`app::lock`), proven before each step that touches the
    /// target and watched during every step (`None`: no lock to watch).
    pub async fn drive(
        &self,
        mut run: Run,
        lock: Option<LockHandle>,
    ) -> Result<Outcome, DriverError> {
        // What `status` showed before this run, put back if the run turns out to be a skip.
        let previous_current = self.store.current()?.filter(|r| r.run_id != run.run_id);
        if next_step(&run) == Some(NextStep::Start) {
            self.store.save(&run)?;
            run = self.apply(&run, Event::Start)?;
        } else {
            self.store.save(&run)?;
        }
        if let Some(remote) = &self.remote {
            remote
                .prepare(&self.store.history().unwrap_or_default())
                .await;
        }
        let mut warned_retrying = false;
        let mut phase_clock = Instant::now();
        log_phase(&run, None);
        // In a terminal, a bar instead of the progress lines (cleared when the drive ends).
        let mut bar = bar::BarGuard(bar::TerminalBar::start());
        if let Some(b) = &bar.0 {
            b.phase(&run);
        }
        self.publish(&run, Write::Transition).await;
        // What this process holds of the run while it drives it: never persisted.
        let mut attempt = Attempt::new(WorkDir::of(&self.state_dir, &run.run_id), lock);

        loop {
            let Some(action) = next_step(&run) else {
                drop(std::mem::replace(&mut bar, bar::BarGuard(None)));
                // A stream kept for a later step ends with its run: a live source's pg_dump
                // would otherwise keep its snapshot open, and its locks on every table of the
                // source (a download, its task).
                drop(attempt);
                self.remove_working_files(&run);
                log_summary(&run);
                self.steps.finished(&run).await;
                return Ok(Outcome::Finished(run));
            };
            if let Some(at) = run.next_attempt_at {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                if !wait.is_zero() {
                    info!(
                        attempt = run.attempt,
                        max_attempts = run.max_attempts,
                        next_attempt_at = %at.to_rfc3339(),
                        "waiting {}s before attempt {}/{}",
                        wait.as_secs(),
                        run.attempt,
                        run.max_attempts
                    );
                    // The RETRIES_TIMEOUT_MINUTES warning fires on time, in the middle of the
                    // wait if it falls there.
                    let warn_at = run
                        .retrying_since
                        .filter(|_| !warned_retrying)
                        .map(|since| {
                            since
                                + chrono::Duration::from_std(self.retry.timeout).unwrap_or_default()
                        })
                        .filter(|w| *w < at);
                    if let Some(warn_at) = warn_at {
                        let first = (warn_at - Utc::now()).to_std().unwrap_or_default();
                        tokio::select! {
                            _ = tokio::time::sleep(first) => {}
                            _ = self.shutdown.cancelled() => return self.interrupt(run).await,
                        }
                        self.warn_retrying(&run, &mut warned_retrying);
                    }
                    let rest = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        _ = tokio::time::sleep(rest) => {}
                        _ = self.shutdown.cancelled() => return self.interrupt(run).await,
                    }
                }
            }
            self.warn_retrying(&run, &mut warned_retrying);

            let cell = ProgressCell::new(bar.0.clone());
            // The step works on a snapshot: progress updates replace `run` meanwhile.
            let snapshot = run.clone();
            // Completes when another replicator took the target's lock: the step is dropped
            // at once and the run retries later.
            let lost = attempt.lock.as_ref().map(LockHandle::lost);
            let target_lost = async move {
                match lost {
                    Some(lost) => lost.await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(target_lost);
            let result = {
                let step = self.step(&snapshot, &action, &mut attempt, &cell);
                tokio::pin!(step);
                let mut ticker = tokio::time::interval(PROGRESS_EVERY);
                ticker.tick().await;
                let mut logger = ProgressLogger::default();
                loop {
                    tokio::select! {
                        r = &mut step => break Some(r),
                        e = &mut target_lost => break Some(Err(e)),
                        _ = ticker.tick() => {
                            let events = cell.take_events();
                            let progressed = cell.take();
                            run = self.apply_all(&run, events)?;
                            if let Some(p) = progressed {
                                if bar.0.is_none() {
                                    logger.log(&run, &p);
                                }
                                run = self.apply(&run, Event::Progress(p))?;
                                self.publish(&run, Write::Progress).await;
                            }
                        }
                        _ = self.shutdown.cancelled() => break None,
                    }
                }
            };
            // What the step told before it ended is the run's, whatever its outcome.
            run = self.apply_all(&run, cell.take_events())?;
            let Some(result) = result else {
                return self.interrupt(run).await;
            };

            let event = match result {
                Ok(StepOutcome::Event(event)) => event,
                Ok(StepOutcome::AlreadyRestored(backup)) => {
                    // Put the last run back as the current one: a skip is not a run.
                    match &previous_current {
                        Some(prev) => self.store.save(prev)?,
                        None => self.store.clear_current()?,
                    }
                    self.remove_working_files(&run);
                    return Ok(Outcome::AlreadyRestored(backup));
                }
                Err(e) => {
                    let kind = e.kind();
                    let message = crate::secret::redact_row_data(&e.to_string());
                    let delay = retry::delay_after(&self.retry, run.attempt, e.retry_after());
                    if kind != FailureKind::Permanent && will_retry(&run) {
                        warn!(
                            phase = %run.phase.name(),
                            attempt = run.attempt,
                            max_attempts = run.max_attempts,
                            retry_in_seconds = delay.as_secs(),
                            "{} in {}: {}; retrying in {}s",
                            if kind == FailureKind::StreamCut { "stream cut" } else { "transient failure" },
                            run.phase.name(), message, delay.as_secs()
                        );
                    }
                    let retry_at =
                        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    failure_event(&run, kind, message, retry_at)
                }
            };
            let before = run.phase.clone();
            let elapsed = phase_clock.elapsed();
            run = self.apply(&run, event)?;
            self.publish(&run, Write::Transition).await;
            if run.phase != before {
                phase_clock = Instant::now();
                log_phase(&run, Some((&before, elapsed)));
                if let Some(b) = &bar.0 {
                    b.phase(&run);
                }
            }
        }
    }

    /// The run has been retrying for longer than `RETRIES_TIMEOUT_MINUTES`: said once.
    fn warn_retrying(&self, run: &Run, warned: &mut bool) {
        if let Some(since) = run.retrying_since
            && !*warned
            && (Utc::now() - since).to_std().unwrap_or_default() >= self.retry.timeout
        {
            *warned = true;
            warn!(
                run_id = %run.run_id,
                retrying_since = %since.to_rfc3339(),
                "the run has been retrying for more than RETRIES_TIMEOUT_MINUTES ({} min); last error: {}",
                self.retry.timeout.as_secs() / 60,
                run.error.as_deref().unwrap_or("-")
            );
        }
    }

    /// Shutdown: the step future is already dropped (which kills `pg_restore`); end its
    /// sessions and persist a state the next start resumes from.
    async fn interrupt(&self, run: Run) -> Result<Outcome, DriverError> {
        self.steps.on_interrupt(&run).await;
        let run = self.apply(&run, Event::Crashed)?;
        self.publish(&run, Write::Transition).await;
        warn!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            "stopped on request in {}; `replicator resume` (or the daemon's next start) continues it",
            run.phase.name()
        );
        Ok(Outcome::Interrupted(run))
    }

    fn remove_working_files(&self, run: &Run) {
        let work = WorkDir::of(&self.state_dir, &run.run_id);
        let dir = work.path();
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            warn!(
                "could not remove the working files in {}: {e}",
                dir.display()
            );
        }
    }

    /// Does `action` (what the machine said `run` needs next) and returns its outcome.
    async fn step(
        &self,
        run: &Run,
        action: &NextStep,
        attempt: &mut Attempt,
        progress: &ProgressCell,
    ) -> Result<StepOutcome, StepError> {
        if action.is_step() {
            self.steps.before_step(run).await;
        }
        if action.touches_target() {
            hold_target(attempt).await?;
        }
        let report = |p: Progress| progress.set(p);
        let events = |e: Event| progress.event(e);
        let event = match action {
            NextStep::Start => Event::Start,
            NextStep::FetchBackup => return self.fetch_backup().await,
            NextStep::Plan => Event::Planned(self.steps.plan(run).await?),
            NextStep::Download { backup } => {
                self.steps.download(run, backup, attempt, &report).await?;
                Event::Succeeded
            }
            NextStep::ExtractAndCheck => {
                let checked = self.steps.extract_and_check(run, attempt).await?;
                Event::Checked {
                    left_out: checked.left_out,
                    refresh: checked.refresh,
                }
            }
            NextStep::Drop => {
                self.steps.drop_target(run, attempt).await?;
                Event::Succeeded
            }
            NextStep::Restore { section } => {
                let masking = (self.steps)
                    .restore(run, *section, attempt, &report, &events)
                    .await?;
                match section {
                    Section::DataAndPostData => Event::RowsLoaded { masking },
                    Section::PreData => Event::Succeeded,
                }
            }
            NextStep::Unlog => {
                self.steps.unlog(run, attempt).await?;
                Event::Succeeded
            }
            NextStep::Switch => match self.steps.switch(run, attempt).await? {
                Some(at) => Event::Switched { at },
                None => Event::Succeeded,
            },
            NextStep::PostRestore => {
                self.steps.post_restore(run, attempt).await?;
                Event::Succeeded
            }
        };
        if action.proves_lock_after() {
            hold_target(attempt).await?;
        }
        Ok(StepOutcome::Event(event))
    }

    /// The backup to restore, unless it is the one already restored or not tonight's yet.
    async fn fetch_backup(&self) -> Result<StepOutcome, StepError> {
        let backup = self.steps.fetch_backup().await?;
        info!(
            backup_id = %backup.id,
            backup_name = %backup.name,
            size = backup.size.unwrap_or(0),
            created_at = %backup.created_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "newest done backup: {}", backup.name
        );
        // This state directory's history first; a new container (Scalingo's disk does not
        // survive a restart) knows the last restore from the records kept in the target.
        let mut last_done = self.store.last_done()?;
        if last_done.is_none()
            && let Some(remote) = &self.remote
        {
            last_done = remote.last_done().await;
        }
        if crate::machine::already_restored(last_done.as_ref(), &backup, self.force).is_some() {
            info!(
                backup_id = %backup.id,
                "backup {} was already restored by the last run: nothing to do (use `replicator run --force` to restore it again)",
                backup.name
            );
            return Ok(StepOutcome::AlreadyRestored(backup));
        }
        if let Some(old) = crate::machine::too_old(&backup, self.max_backup_age, Utc::now()) {
            return Err(StepError::transient(format!(
                "the newest done backup ({}, created {}) is {}h old, more than MAX_BACKUP_AGE_HOURS ({}h): the backup of the night is not finished yet",
                backup.name,
                backup
                    .created_at
                    .map(|c| c.to_rfc3339())
                    .unwrap_or_default(),
                old.age.as_secs() / 3600,
                old.max_age.as_secs() / 3600
            )));
        }
        Ok(StepOutcome::Event(Event::Fetched(backup)))
    }
}

/// Proves this run still holds the target's lock (taking it again on a new session if its
/// session was lost): before the wipe, each section and `Done`. Another replicator holding
/// it is a transient failure.
async fn hold_target(attempt: &mut Attempt) -> Result<(), StepError> {
    match &attempt.lock {
        Some(lock) => lock.ensure().await,
        None => Ok(()),
    }
}
