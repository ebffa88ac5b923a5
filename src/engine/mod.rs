//! Runs a replication: does the IO of the current phase, turns its outcome into an event,
//! asks the machine for the next phase, persists it, and goes on until `Done` or `Failed`.
//!
//! This is the only module that knows both the machine and the steps: the steps (Scalingo,
//! fetch, postgres) take inputs and return results, the machine decides, the store keeps.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{RestoreConfig, RetryConfig};
use crate::error::StepError;
use crate::machine::{Backup, Event, Origin, Phase, Progress, Run, Section, transition};
use crate::source::scalingo::ScalingoClient;
use crate::source::{download, extract};
use crate::state::remote::{RemoteWriter, Write};
use crate::state::store::{Store, StoreError};
use crate::target;
use crate::target::Target;
mod retry;
pub mod test_hooks;

/// How often progress is persisted while a step runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Progress is logged at most this often, or at each 5% step.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(30);

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
/// store nor the machine: they take inputs and return results.
pub trait Steps: Send + Sync {
    /// The newest `done` backup (and any check that must pass before downloading it).
    fn fetch_backup(&self) -> impl Future<Output = Result<Backup, StepError>> + Send;
    /// The archive of `backup`, continuing what is on disk.
    fn download(
        &self,
        run: &Run,
        backup: &Backup,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    /// The dump out of the archive, read by `pg_restore --list`; the target answers.
    fn extract_and_check(&self, run: &Run) -> impl Future<Output = Result<(), StepError>> + Send;
    /// `DROP OWNED BY CURRENT_USER CASCADE` (after ending leftover restore sessions).
    fn drop_target(&self, run: &Run) -> impl Future<Output = Result<(), StepError>> + Send;
    fn restore(
        &self,
        run: &Run,
        section: Section,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> impl Future<Output = Result<(), StepError>> + Send;
    fn unlog(&self, run: &Run) -> impl Future<Output = Result<(), StepError>> + Send;
    fn post_restore(&self, run: &Run) -> impl Future<Output = Result<(), StepError>> + Send;
    /// `run` just became `Done` or `Failed` (notifications). Must not fail, nor take long.
    fn finished(&self, _run: &Run) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Shutdown in the middle of `run`'s current step: end what the step left running.
    fn on_interrupt(&self, run: &Run) -> impl Future<Output = ()> + Send;
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

/// The real steps.
pub struct RealSteps {
    pub state_dir: PathBuf,
    pub scalingo: Option<ScalingoClient>,
    pub http: reqwest::Client,
    pub target: Target,
    pub restore: RestoreConfig,
}

/// What a step produced.
enum StepOutcome {
    Event(Event),
    AlreadyRestored(Backup),
}

/// The latest progress a step reported; the driver persists it on its own clock.
#[derive(Clone, Default)]
struct ProgressCell(Arc<Mutex<Option<Progress>>>);

impl ProgressCell {
    fn set(&self, p: Progress) {
        *self.0.lock().expect("progress lock") = Some(p);
    }
    fn take(&self) -> Option<Progress> {
        self.0.lock().expect("progress lock").take()
    }
}

/// A new run id: sortable by time, unique enough for one state directory.
pub fn new_run_id(now: DateTime<Utc>) -> String {
    let salt = (std::process::id() as u64) ^ (now.timestamp_subsec_nanos() as u64);
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), salt & 0xffff)
}

/// The directory of a run's working files (archive and dump).
pub fn work_dir(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join("work").join(run_id)
}

impl<S: Steps> Driver<S> {
    fn apply(&self, run: &Run, event: Event) -> Result<Run, DriverError> {
        let next = transition(run, event, Utc::now())?;
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
    /// resumed; every transition is persisted before its step starts.
    pub async fn drive(&self, mut run: Run) -> Result<Outcome, DriverError> {
        // What `status` showed before this run, put back if the run turns out to be a skip.
        let previous_current = self.store.current()?.filter(|r| r.run_id != run.run_id);
        if matches!(run.phase, Phase::Idle) {
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
        self.publish(&run, Write::Transition).await;

        loop {
            if run.is_terminal() {
                self.remove_working_files(&run);
                log_summary(&run);
                self.steps.finished(&run).await;
                return Ok(Outcome::Finished(run));
            }
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
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return self.interrupt(run).await,
                    }
                }
            }
            if let Some(since) = run.retrying_since
                && !warned_retrying
                && (Utc::now() - since).to_std().unwrap_or_default() > self.retry.timeout
            {
                warned_retrying = true;
                warn!(
                    run_id = %run.run_id,
                    retrying_since = %since.to_rfc3339(),
                    "the run has been retrying for more than RETRIES_TIMEOUT_MINUTES ({} min); last error: {}",
                    self.retry.timeout.as_secs() / 60,
                    run.error.as_deref().unwrap_or("-")
                );
            }

            let cell = ProgressCell::default();
            // The step works on a snapshot: progress updates replace `run` meanwhile.
            let snapshot = run.clone();
            let result = {
                let step = self.step(&snapshot, &cell);
                tokio::pin!(step);
                let mut ticker = tokio::time::interval(PROGRESS_EVERY);
                ticker.tick().await;
                let mut logger = ProgressLogger::default();
                loop {
                    tokio::select! {
                        r = &mut step => break Some(r),
                        _ = ticker.tick() => {
                            if let Some(p) = cell.take() {
                                logger.log(&run, &p);
                                run = self.apply(&run, Event::Progress(p))?;
                                self.publish(&run, Write::Progress).await;
                            }
                        }
                        _ = self.shutdown.cancelled() => break None,
                    }
                }
            };
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
                Err(StepError::Transient(t)) => {
                    let delay = retry::delay_after(&self.retry, run.attempt, t.retry_after);
                    if run.attempt < run.max_attempts {
                        warn!(
                            phase = %run.phase.name(),
                            attempt = run.attempt,
                            max_attempts = run.max_attempts,
                            retry_in_seconds = delay.as_secs(),
                            "transient failure in {}: {}; retrying in {}s",
                            run.phase.name(), t.message, delay.as_secs()
                        );
                    }
                    Event::TransientFailure {
                        error: t.message,
                        retry_at: Utc::now()
                            + chrono::Duration::from_std(delay).unwrap_or_default(),
                    }
                }
                Err(StepError::Permanent(p)) => Event::PermanentFailure { error: p.message },
            };
            let before = run.phase.clone();
            let elapsed = phase_clock.elapsed();
            run = self.apply(&run, event)?;
            self.publish(&run, Write::Transition).await;
            if run.phase != before {
                phase_clock = Instant::now();
                log_phase(&run, Some((&before, elapsed)));
            }
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
        let dir = work_dir(&self.state_dir, &run.run_id);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            warn!(
                "could not remove the working files in {}: {e}",
                dir.display()
            );
        }
    }

    async fn step(&self, run: &Run, progress: &ProgressCell) -> Result<StepOutcome, StepError> {
        crate::engine::test_hooks::pause_before_step(run).await;
        let report = |p: Progress| progress.set(p);
        match &run.phase {
            Phase::FetchingUrl => return self.fetch_backup().await,
            Phase::Downloading { backup, .. } => {
                self.steps.download(run, backup, &report).await?;
            }
            Phase::Extracting { .. } => self.steps.extract_and_check(run).await?,
            Phase::Dropping { .. } => self.steps.drop_target(run).await?,
            Phase::Restoring { section, .. } => {
                self.steps.restore(run, *section, &report).await?;
            }
            Phase::Unlogging { .. } => self.steps.unlog(run).await?,
            Phase::PostRestoreSql { .. } => self.steps.post_restore(run).await?,
            Phase::Idle | Phase::Done { .. } | Phase::Failed { .. } => {
                unreachable!("no step runs in {:?}", run.phase.name())
            }
        }
        Ok(StepOutcome::Event(Event::Succeeded))
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
        let mut last_done = self
            .store
            .last_done()
            .map_err(|e| StepError::permanent(e.to_string()))?;
        if last_done.is_none()
            && let Some(remote) = &self.remote
        {
            last_done = remote.last_done().await;
        }
        if !self.force
            && let Some(last) = last_done.as_ref().and_then(|r| r.backup())
            && last.id == backup.id
        {
            info!(
                backup_id = %backup.id,
                "backup {} was already restored by the last run: nothing to do (use `replicator run --force` to restore it again)",
                backup.name
            );
            return Ok(StepOutcome::AlreadyRestored(backup));
        }
        if let (Some(max_age), Some(created)) = (self.max_backup_age, backup.created_at) {
            let age = (Utc::now() - created).to_std().unwrap_or_default();
            if age > max_age {
                return Err(StepError::transient(format!(
                    "the newest done backup ({}, created {}) is {}h old, more than MAX_BACKUP_AGE_HOURS ({}h): the backup of the night is not finished yet",
                    backup.name,
                    created.to_rfc3339(),
                    age.as_secs() / 3600,
                    max_age.as_secs() / 3600
                )));
            }
        }
        Ok(StepOutcome::Event(Event::Fetched(backup)))
    }
}

impl RealSteps {
    fn archive_path(&self, run: &Run) -> PathBuf {
        match &run.origin {
            Origin::Archive { path } => path.clone(),
            _ => work_dir(&self.state_dir, &run.run_id).join("archive.tar.gz"),
        }
    }

    /// Where the dump of `run` is (a file the user gave, or the one extracted in the state dir).
    pub fn dump_path(&self, run: &Run) -> PathBuf {
        match &run.origin {
            Origin::Dump { path } => path.clone(),
            _ => work_dir(&self.state_dir, &run.run_id).join("dump.pgsql"),
        }
    }

    /// Writes the `--use-list` that leaves out the rows of `EXCLUDE_TABLE_DATA` (and the
    /// foreign keys that point at them), warning about names that match no table.
    async fn exclusion_list(&self, run: &Run, dump: &Path) -> Result<PathBuf, StepError> {
        let toc = crate::dump::toc::Toc::read(dump).await?;
        let fks = crate::dump::toc::foreign_key_targets(dump).await?;
        let plan = crate::dump::toc::plan_exclusion(&toc, &self.restore.exclude_table_data, &fks);
        for name in &plan.unmatched {
            warn!(
                table = %name,
                "EXCLUDE_TABLE_DATA names {name:?}, but the dump has no table of that exact name in schema public: nothing is excluded for it; check the spelling (names are exact, case and hyphens included)"
            );
        }
        for (table, fk, referenced) in &plan.dropped_foreign_keys {
            warn!(
                table = %table,
                constraint = %fk,
                references = %referenced,
                "foreign key {fk:?} of {table:?} is not restored: it references {referenced:?}, whose rows EXCLUDE_TABLE_DATA leaves out"
            );
        }
        if !plan.excluded.is_empty() {
            info!(
                tables = %plan.excluded.join(","),
                "rows left out (EXCLUDE_TABLE_DATA): {}",
                plan.excluded.join(", ")
            );
        }
        let list = work_dir(&self.state_dir, &run.run_id).join("restore.list");
        let mut skip = plan.skip;
        let fk_list = work_dir(&self.state_dir, &run.run_id).join("fk.list");
        skip.extend(crate::target::fk::defer(
            &toc,
            self.restore.fk_mode,
            &skip,
            &fk_list,
        )?);
        toc.write_list(&list, &skip)?;
        Ok(list)
    }

    fn scalingo(&self) -> Result<&ScalingoClient, StepError> {
        self.scalingo.as_ref().ok_or_else(|| {
            StepError::permanent(
                "this run needs Scalingo but no Scalingo configuration was given: set SCALINGO_APP and SCALINGO_API_TOKEN",
            )
        })
    }
}

fn create_dir_for(path: &Path) -> Result<(), StepError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StepError::permanent(format!(
                "cannot create the working directory {}: {e}; check REPLICATOR_STATE_DIR",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

impl Steps for RealSteps {
    async fn fetch_backup(&self) -> Result<Backup, StepError> {
        let backup = self.scalingo()?.newest_done_backup().await?;
        check_free_disk(&self.state_dir, backup.size)?;
        Ok(backup)
    }

    async fn download(
        &self,
        run: &Run,
        backup: &Backup,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        let archive = self.archive_path(run);
        create_dir_for(&archive)?;
        let url = self.scalingo()?.download_url(&backup.id).await?;
        let total = backup.size;
        let report = |done: u64| progress(Progress::Bytes { done, total });
        let dump = self.dump_path(run);
        let fetched =
            download::download_extracting(&self.http, &url, &archive, &dump, backup.size, &report)
                .await?;
        let got = fetched.download;
        if let Some(bytes) = fetched.dump_bytes {
            info!(
                bytes,
                "extracted the dump during the download ({bytes} bytes)"
            );
        }
        info!(
            bytes = got.bytes,
            resumed_from = got.resumed_from,
            "downloaded {} ({} bytes{})",
            backup.name,
            got.bytes,
            if got.resumed_from > 0 {
                format!(", resumed from byte {}", got.resumed_from)
            } else {
                String::new()
            }
        );
        Ok(())
    }

    async fn extract_and_check(&self, run: &Run) -> Result<(), StepError> {
        let dump = self.dump_path(run);
        if !matches!(run.origin, Origin::Dump { .. }) {
            let archive = self.archive_path(run);
            create_dir_for(&dump)?;
            // A dump from the download step (or an earlier attempt of this one) is used only
            // when its marker proves it whole; a file the user gave is always extracted.
            let scalingo = matches!(run.origin, Origin::Scalingo);
            let expected = run.backup().and_then(|b| b.size);
            match extract::complete_dump(&dump, &archive, expected).filter(|_| scalingo) {
                Some(bytes) => info!(
                    bytes,
                    "the dump is already extracted and whole ({bytes} bytes, during the download or by an earlier attempt): not extracting it again"
                ),
                None => {
                    extract::discard_extracted(&dump);
                    let (a, d) = (archive.clone(), dump.clone());
                    let bytes = tokio::task::spawn_blocking(move || {
                        let bytes = extract::extract_dump(&a, &d)?;
                        if scalingo {
                            // Lets a retry of this step after the archive's removal go on.
                            let len = std::fs::metadata(&a).map(|m| m.len()).unwrap_or(0);
                            if let Err(e) = extract::record_complete_dump(&d, len, bytes) {
                                warn!("could not write the marker of {}: {e}", d.display());
                            }
                        }
                        Ok::<_, StepError>(bytes)
                    })
                    .await
                    .map_err(|e| StepError::transient(format!("extraction task failed: {e}")))??;
                    info!(bytes, "extracted the dump ({bytes} bytes)");
                }
            }
            // Only our own download goes: a file the user gave is theirs.
            if matches!(run.origin, Origin::Scalingo) {
                let _ = std::fs::remove_file(&archive);
            }
        }
        target::check_dump(&dump).await?;
        target::check_target(&self.target).await?;
        // Before Dropping: a dump cut in its data, or objects the wipe cannot remove, would
        // fail the restore only after the target is gone (docs/reliability.md).
        crate::target::preflight::check_dump_complete(&dump).await?;
        crate::target::preflight::check_target_can_take(&self.target, &dump).await?;
        Ok(())
    }

    async fn drop_target(&self, _run: &Run) -> Result<(), StepError> {
        let ended = target::terminate_leftover_restores(&self.target).await?;
        if ended > 0 {
            info!("ended {ended} leftover pg_restore session(s) on the target");
        }
        target::drop_owned(&self.target).await?;
        Ok(())
    }

    async fn restore(
        &self,
        run: &Run,
        section: Section,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        let report = |done: u64, total: u64| progress(Progress::Items { done, total });
        let dump = self.dump_path(run);
        // Rows are left out of the data section only: the tables' schema is pre-data.
        let use_list = match section {
            Section::DataAndPostData
                if !self.restore.exclude_table_data.is_empty()
                    || self.restore.fk_mode != crate::target::fk::FkMode::Validate =>
            {
                Some(self.exclusion_list(run, &dump).await?)
            }
            _ => None,
        };
        target::restore_section_with_list(
            &self.target,
            &dump,
            section,
            self.restore.jobs,
            use_list.as_deref(),
            &report,
        )
        .await?;
        // FK_MODE=trust: the keys left out of the list, now that the rows are in.
        if section == Section::DataAndPostData
            && self.restore.fk_mode == crate::target::fk::FkMode::Trust
        {
            let fk_list = work_dir(&self.state_dir, &run.run_id).join("fk.list");
            let (not_valid, validated) =
                crate::target::fk::add_not_valid(&self.target, &dump, &fk_list).await?;
            info!(
                not_valid,
                validated,
                "{not_valid} foreign key(s) added NOT VALID (FK_MODE=trust){}",
                if validated > 0 {
                    format!(", {validated} validated (partitioned tables)")
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    async fn unlog(&self, run: &Run) -> Result<(), StepError> {
        if self.restore.use_unlogged_tables {
            let n = target::set_unlogged_with_dump(&self.target, &self.dump_path(run)).await?;
            info!(tables = n, "{n} table(s) set UNLOGGED before loading rows");
        }
        Ok(())
    }

    async fn post_restore(&self, _run: &Run) -> Result<(), StepError> {
        if let Some(path) = &self.restore.post_restore_sql {
            let n = crate::target::post_restore::run(&self.target, path).await?;
            info!(files = n, "post-restore SQL: {n} file(s) applied");
        }
        Ok(())
    }

    async fn finished(&self, run: &Run) {
        crate::notify::notify(&self.http, &self.restore.notify, run).await;
    }

    async fn on_interrupt(&self, run: &Run) {
        if matches!(
            run.phase,
            Phase::Dropping { .. }
                | Phase::Restoring { .. }
                | Phase::Unlogging { .. }
                | Phase::PostRestoreSql { .. }
        ) {
            let ended = tokio::time::timeout(
                Duration::from_secs(10),
                target::terminate_leftover_restores(&self.target),
            )
            .await;
            if let Ok(Err(e)) = ended {
                warn!("could not end the restore's sessions on the target: {e}");
            }
        }
    }
}

/// Refuses a download that cannot fit: the archive, then the dump extracted beside it. A
/// custom-format dump is already compressed, so gzip barely shrinks it: the dump is budgeted
/// at the archive's size, plus 10% for the gzip and tar overhead and 64 MiB of slack.
fn check_free_disk(state_dir: &Path, size: Option<u64>) -> Result<(), StepError> {
    let Some(size) = size else { return Ok(()) };
    let needed = disk_needed(size);
    std::fs::create_dir_all(state_dir).ok();
    let Some(free) = free_bytes(state_dir) else {
        return Ok(());
    };
    if free < needed {
        return Err(StepError::permanent(format!(
            "not enough free disk in {}: the backup is {} MiB, and the archive plus the dump need about {} MiB (twice the archive, plus 10% and 64 MiB), but only {} MiB are free; free some space or point REPLICATOR_STATE_DIR at a larger disk",
            state_dir.display(),
            size >> 20,
            needed >> 20,
            free >> 20
        )));
    }
    Ok(())
}

/// Free disk a run needs for a backup of `size` bytes (see [`check_free_disk`]).
pub fn disk_needed(size: u64) -> u64 {
    size + size + size / 10 + 64 * 1024 * 1024
}

/// Bytes free for an unprivileged user on the file system of `path` (`None`: unknown).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Logs progress at each 5% step, or every 30 s when there is no total.
#[derive(Default)]
struct ProgressLogger {
    last_bucket: Option<u64>,
    last_at: Option<Instant>,
    first: Option<(Instant, u64)>,
}

impl ProgressLogger {
    fn log(&mut self, run: &Run, p: &Progress) {
        let now = Instant::now();
        let (done, total) = match p {
            Progress::Bytes { done, total } => (*done, *total),
            Progress::Items { done, total } => (*done, Some(*total)),
        };
        let (t0, d0) = *self.first.get_or_insert((now, done));
        let bucket = total.filter(|t| *t > 0).map(|t| done * 20 / t);
        let due = self
            .last_at
            .is_none_or(|at| now.duration_since(at) >= PROGRESS_LOG_EVERY)
            || bucket != self.last_bucket;
        if !due {
            return;
        }
        self.last_bucket = bucket;
        self.last_at = Some(now);
        let pct = total
            .filter(|t| *t > 0)
            .map(|t| format!("{:.1}%", done as f64 * 100.0 / t as f64))
            .unwrap_or_else(|| "?%".into());
        match p {
            Progress::Bytes { .. } => {
                let secs = now.duration_since(t0).as_secs_f64();
                let rate = if secs > 0.0 {
                    (done.saturating_sub(d0)) as f64 / secs
                } else {
                    0.0
                };
                let eta = match total {
                    Some(t) if rate > 0.0 && t > done => {
                        format!("{}s", ((t - done) as f64 / rate) as u64)
                    }
                    _ => "?".into(),
                };
                info!(
                    phase = %run.phase.name(),
                    bytes_done = done,
                    bytes_total = total,
                    rate_bytes_per_second = rate as u64,
                    "downloading: {} / {} MiB ({pct}), {:.1} MiB/s, ETA {eta}",
                    done >> 20,
                    total.map(|t| (t >> 20).to_string()).unwrap_or_else(|| "?".into()),
                    rate / 1048576.0
                );
            }
            Progress::Items { .. } => {
                info!(
                    phase = %run.phase.name(),
                    items_done = done,
                    items_total = total,
                    "restoring {}: {done} / {} items ({pct})",
                    run.phase.step_label(),
                    total.unwrap_or(0)
                );
            }
        }
    }
}

fn log_phase(run: &Run, ended: Option<(&Phase, Duration)>) {
    let section = match &run.phase {
        Phase::Restoring { section, .. } => section.label(),
        _ => "",
    };
    match ended {
        Some((before, took)) => info!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            section,
            previous_phase = %before.name(),
            previous_phase_seconds = took.as_secs_f64(),
            attempt = run.attempt,
            "{} -> {}{} ({} took {:.1}s)",
            before.name(),
            run.phase.name(),
            if section.is_empty() { String::new() } else { format!(" ({section})") },
            before.step_label(),
            took.as_secs_f64()
        ),
        None => info!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            section,
            attempt = run.attempt,
            "run {} in {}{}",
            run.run_id,
            run.phase.name(),
            if section.is_empty() { String::new() } else { format!(" ({section})") }
        ),
    }
}

fn log_summary(run: &Run) {
    let total = run
        .finished_at
        .map(|f| (f - run.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    let phases = run
        .durations
        .iter()
        .map(|d| format!("{}={:.1}s", d.step, d.seconds))
        .collect::<Vec<_>>()
        .join(" ");
    let backup = run.backup().map(|b| b.name.clone()).unwrap_or_default();
    let outcome = run.phase.name();
    if matches!(run.phase, Phase::Done { .. }) {
        info!(
            run_id = %run.run_id, outcome = %outcome, backup = %backup,
            total_seconds = total, attempts = run.attempt,
            "run {} Done: backup {backup} restored in {total:.1}s ({phases})", run.run_id
        );
    } else {
        error!(
            run_id = %run.run_id, outcome = %outcome, backup = %backup,
            total_seconds = total, attempts = run.attempt,
            error = run.error.as_deref().unwrap_or(""),
            "run {} Failed after {total:.1}s ({phases}): {}", run.run_id,
            run.error.as_deref().unwrap_or("")
        );
    }
}
