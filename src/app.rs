//! Wiring: a validated configuration ([`EngineConfig`]) becomes a [`Driver`] over the real
//! steps, and a run takes its [`Locks`]. `run`, `resume`, `restore` and `daemon` build their
//! driver here; `check` reads the same configuration and calls the same rules
//! ([`crate::machine`]) without building one.
//!
//! Also the failure of a command itself (not of a run), with its exit code: [`CliError`].

use std::path::{Path, PathBuf};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{ConfigError, ConfigErrors, EngineConfig};
use crate::engine::new_run_id;
use crate::engine::workdir::WorkDir;
use crate::engine::{Driver, RealSteps};
use crate::machine::start::{self, Asked, Choice, Recorded, Refusal};
use crate::machine::{Origin, Run};
use crate::replica::{self, LockOutcome, PgEndpoint};
use crate::source::http::http_client;
use crate::state::liveness;
use crate::state::remote::RemoteWriter;
use crate::state::store::Store;

/// Exit codes (also in `docs/operations.md`).
pub mod exit {
    /// The run ended `Done`, was skipped (backup already restored), or stopped on SIGTERM.
    pub const OK: u8 = 0;
    /// The run ended `Failed`.
    pub const FAILED: u8 = 1;
    /// Invalid configuration or command line: nothing was touched.
    pub const CONFIG: u8 = 2;
    /// Refused: another replicator holds the target or this state directory, or there is
    /// nothing to resume.
    pub const REFUSED: u8 = 3;
}

/// A failure of the command itself (not of a run), with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Every problem of the configuration ([`crate::config::EngineConfig::from_args`]).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// `SCHEDULE` or `SCHEDULE_TIMEZONE` (its message names the variable).
    #[error("{0}")]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Fatal(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Schedule(_) => exit::CONFIG,
            CliError::Refused(_) => exit::REFUSED,
            CliError::Fatal(_) => exit::FAILED,
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError::Config(e.into())
    }
}

pub fn fatal(e: impl std::fmt::Display) -> CliError {
    CliError::Fatal(e.to_string())
}

/// The driver of `config`'s runs. `force`: restore the newest backup even when the last `Done`
/// run restored it (`run --force`).
pub fn driver(
    state_dir: PathBuf,
    config: EngineConfig,
    force: bool,
    shutdown: CancellationToken,
) -> Driver {
    Driver {
        store: Store::new(&state_dir),
        steps: RealSteps {
            state_dir: state_dir.clone(),
            scalingo: config.scalingo.map(std::sync::Arc::new),
            http: http_client(config.download_idle_timeout),
            target: config.target.clone(),
            source: config.source,
            restore: config.restore,
            #[cfg(feature = "test-hooks")]
            pause_at: crate::engine::test_hooks::PauseAt::from_env(),
        },
        state_dir,
        retry: config.retry,
        force,
        max_backup_age: config.max_backup_age,
        shutdown,
        remote: Some(RemoteWriter::new(config.target)),
    }
}

/// Both locks of a run: this state directory (liveness) and the target (advisory lock on a
/// dedicated connection, watched for the whole run: [`replica::LockWatch`]). Dropping it
/// releases both.
pub struct Locks {
    pub _live: liveness::LiveLock,
    pub _target_lock: replica::LockWatch,
}

impl Locks {
    /// What the driver holds of the target's lock while it drives a run
    /// ([`Driver::drive`]).
    pub fn target(&self) -> replica::LockHandle {
        self._target_lock.handle()
    }
}

/// Takes the two locks of `driver`'s runs. Nothing in the target is touched before both are
/// held; the driver is given the target's ([`Locks::target`]) with the run it drives.
pub async fn lock(driver: &Driver) -> Result<Locks, CliError> {
    lock_target(&driver.state_dir, &driver.steps.target).await
}

async fn lock_target(state_dir: &Path, target: &PgEndpoint) -> Result<Locks, CliError> {
    let live = match liveness::acquire(state_dir).map_err(fatal)? {
        Ok(l) => l,
        Err(holder) => {
            return Err(CliError::Refused(format!(
                "another replicator process{} is running a replication with the state directory {}; \
                 `replicator status` shows it",
                holder
                    .pid
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                state_dir.display()
            )));
        }
    };
    let target_lock = match replica::lock_target(target).await {
        Ok(LockOutcome::Acquired(l)) => l,
        Ok(LockOutcome::Held { since, holder }) => {
            return Err(CliError::Refused(format!(
                "another replication holds the target {}{}{}: two replicators must not restore into one \
                 database at once; wait for it to finish (or stop it) and retry",
                target.describe(),
                since.map(|s| format!(" since {s}")).unwrap_or_default(),
                holder.map(|h| format!(" ({h})")).unwrap_or_default(),
            )));
        }
        Err(e) => {
            return Err(CliError::Fatal(format!(
                "cannot take the replication lock on the target: {e}"
            )));
        }
    };
    Ok(Locks {
        _live: live,
        _target_lock: replica::LockWatch::start(target, target_lock),
    })
}

/// The run `asked` starts now, by the rule [`start::choose_run`], from this state directory's
/// current run and, when the rule needs it, the target's record of its current run. Reads
/// only. `locked`: this process holds the target's lock ([`lock`]), so a lock held on the
/// target is its own, not a run going on elsewhere.
pub async fn choose_run(
    store: &Store,
    target: &PgEndpoint,
    asked: Asked,
    locked: bool,
) -> Result<Choice, CliError> {
    let local = store.current().map_err(fatal)?;
    let needs_record =
        asked == Asked::Resume && crate::machine::interrupted(local.as_ref()).is_none();
    let record = if needs_record {
        match crate::state::remote::read(target).await {
            Ok(r) => Some(r),
            Err(e) => {
                warn!("could not read the runs recorded in the target: {e}");
                None
            }
        }
    } else {
        None
    };
    let recorded = record.as_ref().and_then(|r| {
        let held = r.lock_held && !locked;
        r.current
            .as_ref()
            .map(|run| Recorded::of(run, held, Path::exists))
    });
    Ok(start::choose_run(asked, local.as_ref(), recorded))
}

/// The run `driver` drives for `asked`, with both locks held ([`lock`]): what
/// [`choose_run`] chose, done. A new run (from `origin`); an interrupted run abandoned first
/// (`run --restart`, its working files removed) or moved to its resume point
/// ([`crate::machine::recover`]); the target's record of an unfinished run taken over
/// ([`crate::machine::adopt`], saved here). `Err(Refused)` when no run starts.
///
/// On Scalingo a restart or a deploy empties the state directory: without the takeover, the
/// night's run would be lost with its container, and the next one would wipe and start again.
pub async fn run_to_drive(driver: &Driver, asked: Asked, origin: Origin) -> Result<Run, CliError> {
    let now = Utc::now();
    let new = |origin| Run::new(new_run_id(now), origin, driver.retry.max_retry_count, now);
    match choose_run(&driver.store, &driver.steps.target, asked, true).await? {
        Choice::New => Ok(new(origin)),
        Choice::AbandonThenNew(run) => {
            warn!(
                "abandoning interrupted run {} (was in {})",
                run.run_id,
                run.phase.name()
            );
            let abandoned =
                crate::machine::abandon(&run, "abandoned by `replicator run --restart`", now)
                    .map_err(fatal)?;
            driver.store.save(&abandoned).map_err(fatal)?;
            let _ = std::fs::remove_dir_all(WorkDir::of(&driver.state_dir, &run.run_id).path());
            Ok(new(origin))
        }
        Choice::Resume(run) => {
            tracing::info!(
                run_id = %run.run_id,
                phase = %run.phase.name(),
                attempt = run.attempt,
                "resuming run {} interrupted in {} (attempt {}/{})",
                run.run_id,
                run.phase.name(),
                run.attempt,
                run.max_attempts
            );
            crate::machine::recover(run, now).map_err(fatal)
        }
        Choice::Adopt(run) => {
            let adopted = crate::machine::adopt(run, now).map_err(|e| {
                fatal(format!(
                    "cannot take over the run recorded in the target: {e}"
                ))
            })?;
            tracing::info!(
                run_id = %adopted.run_id,
                phase = %adopted.phase.name(),
                "taking over run {} from the target's records (its process and its files are gone): it goes on in {}",
                adopted.run_id,
                adopted.phase.name()
            );
            driver.store.save(&adopted).map_err(|e| {
                fatal(format!(
                    "could not save the run taken over from the target: {e}"
                ))
            })?;
            Ok(adopted)
        }
        Choice::Refused(why) => Err(refused(&why, &driver.state_dir)),
    }
}

/// Why no run starts, said to the operator, with what to do.
pub fn refused(why: &Refusal, state_dir: &Path) -> CliError {
    CliError::Refused(match why {
        Refusal::Interrupted(run) => format!(
            "run {} was interrupted in {}: `replicator resume` continues it, \
             `replicator run --restart` abandons it and starts afresh",
            run.run_id,
            run.phase.name()
        ),
        Refusal::NothingRecorded => format!(
            "nothing to resume: no run was ever recorded in {}, and the target records no unfinished run",
            state_dir.display()
        ),
        Refusal::Finished(run) => format!(
            "nothing to resume: the last run ({}) ended {}; `replicator run` starts a new one",
            run.run_id,
            run.phase.name()
        ),
        Refusal::GoingOn(run) => format!(
            "run {} is going on right now on the target, in another replicator (`replicator status --from-target` shows it): nothing to resume",
            run.run_id
        ),
        Refusal::FileGone(run) => format!(
            "the target records run {} unfinished, but its file {} is not on this machine: it cannot be taken over; `replicator run` starts a new one",
            run.run_id,
            match &run.origin {
                Origin::Archive { path } | Origin::Dump { path } => path.display().to_string(),
                _ => String::new(),
            }
        ),
    })
}
