//! Wiring: a validated configuration ([`EngineConfig`]) becomes a [`Driver`] over the real
//! steps, and a run takes its [`Locks`]. `run`, `resume`, `restore` and `daemon` build their
//! driver here; `check` reads the same configuration and calls the same rules
//! ([`crate::machine`]) without building one.
//!
//! Also the failure of a command itself (not of a run), with its exit code: [`CliError`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{ConfigError, RestoreConfig, RetryConfig};
use crate::engine::test_hooks::PauseAt;
use crate::engine::workdir::WorkDir;
use crate::engine::{Driver, LockSlot, RealSteps};
use crate::machine::{Origin, Run};
use crate::replica::{self, LockOutcome, Target};
use crate::secret::Secret;
use crate::source::http::http_client;
use crate::source::scalingo::ScalingoClient;
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
    #[error("{0}")]
    Config(#[from] ConfigError),
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

pub fn fatal(e: impl std::fmt::Display) -> CliError {
    CliError::Fatal(e.to_string())
}

/// The read timeout of downloads when no `DOWNLOAD_IDLE_TIMEOUT_SECONDS` applies (`restore`
/// downloads nothing; its HTTP client only notifies).
pub const DEFAULT_DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command that restores needs, validated.
pub struct EngineConfig {
    pub target: Target,
    /// `SOURCE_DATABASE_URL`: runs copy this live database instead of a Scalingo backup.
    pub source: Option<Target>,
    pub restore: RestoreConfig,
    pub retry: RetryConfig,
    /// `None` for a restore from a file.
    pub scalingo: Option<ScalingoClient>,
    pub max_backup_age: Option<Duration>,
    pub download_idle_timeout: Duration,
}

impl EngineConfig {
    /// Where a new run's dump comes from ([`origin_of`]).
    pub fn origin(&self) -> Origin {
        origin_of(self.source.as_ref())
    }
}

/// Where a new run's dump comes from: the live source when one is set (named without its
/// password), else Scalingo.
pub fn origin_of(source: Option<&Target>) -> Origin {
    match source {
        Some(source) => Origin::Live {
            source: source.describe(),
        },
        None => Origin::Scalingo,
    }
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
            pause_at: PauseAt::from_env(),
            masking: std::sync::Mutex::new(None),
            lock: LockSlot::default(),
            feed: std::sync::Mutex::new(None),
        },
        state_dir,
        retry: config.retry,
        force,
        max_backup_age: config.max_backup_age,
        shutdown,
        remote: Some(RemoteWriter::new(config.target)),
    }
}

/// The target of `DATABASE_URL`; a URL it cannot use is a configuration error (the URL may
/// hold a password: it is never repeated).
pub fn parse_target(url: &Secret) -> Result<Target, CliError> {
    Target::parse(url).map_err(invalid_url("DATABASE_URL"))
}

/// The live source of `SOURCE_DATABASE_URL`, by the rules of `DATABASE_URL`; a URL it cannot
/// use is a configuration error (never repeated: it may hold a password).
pub fn parse_source(url: &Secret) -> Result<Target, CliError> {
    Target::parse_source(url).map_err(invalid_url("SOURCE_DATABASE_URL"))
}

/// The configuration error of a database URL in `var` that cannot be used, without the URL.
fn invalid_url<E: std::fmt::Display>(var: &'static str) -> impl FnOnce(E) -> CliError {
    move |e| {
        CliError::Config(ConfigError::Invalid {
            var,
            value: "(hidden)".into(),
            expected: e.to_string(),
        })
    }
}

/// Both locks of a run: this state directory (liveness) and the target (advisory lock on a
/// dedicated connection, watched for the whole run: [`replica::LockWatch`]). Dropping it
/// releases both.
pub struct Locks {
    pub _live: liveness::LiveLock,
    pub _target_lock: replica::LockWatch,
}

/// Takes the two locks of `driver`'s runs and gives the driver the target lock's watch.
/// Nothing in the target is touched before both are held.
pub async fn lock(driver: &Driver) -> Result<Locks, CliError> {
    let locks = lock_target(&driver.state_dir, &driver.steps.target).await?;
    driver.steps.lock.set(Some(locks._target_lock.handle()));
    Ok(locks)
}

async fn lock_target(state_dir: &Path, target: &Target) -> Result<Locks, CliError> {
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

/// What stands in the way of a new run ([`crate::machine::interrupted`]): refused, unless
/// `restart` abandons it ([`crate::machine::abandon`]) and removes its working files.
pub fn refuse_interrupted(store: &Store, state_dir: &Path, restart: bool) -> Result<(), CliError> {
    let current = store.current().map_err(fatal)?;
    let Some(run) = crate::machine::interrupted(current.as_ref()) else {
        return Ok(());
    };
    if !restart {
        return Err(CliError::Refused(format!(
            "run {} was interrupted in {}: `replicator resume` continues it, \
             `replicator run --restart` abandons it and starts afresh",
            run.run_id,
            run.phase.name()
        )));
    }
    warn!(
        "abandoning interrupted run {} (was in {})",
        run.run_id,
        run.phase.name()
    );
    let abandoned =
        crate::machine::abandon(run, "abandoned by `replicator run --restart`", Utc::now())
            .map_err(fatal)?;
    store.save(&abandoned).map_err(fatal)?;
    let _ = std::fs::remove_dir_all(WorkDir::of(state_dir, &run.run_id).path());
    Ok(())
}

/// An interrupted run moved to its resume point ([`crate::machine::recover`]).
pub fn resumable(run: Run) -> Result<Run, CliError> {
    crate::machine::recover(run, Utc::now()).map_err(fatal)
}

/// The run a new container takes over: the target's record of an unfinished run, when this
/// state directory knows no unfinished run and no replicator holds the target. Call it under
/// the locks ([`lock`]): the target's lock is then this process's own.
///
/// On Scalingo a restart or a deploy empties the state directory: without this, the night's
/// run would be lost with its container, and the next one would wipe and start again.
pub async fn adopt_from_target(driver: &Driver, target: &Target) -> Option<Run> {
    let local = driver.store.current().ok().flatten();
    if crate::machine::interrupted(local.as_ref()).is_some() {
        return None;
    }
    let remote = match crate::state::remote::read(target).await {
        Ok(r) => r,
        Err(e) => {
            warn!("could not read the runs recorded in the target: {e}");
            return None;
        }
    };
    let run = remote.current.filter(|r| !r.is_terminal())?;
    if local.as_ref().is_some_and(|l| l.run_id == run.run_id) {
        return None;
    }
    if let crate::machine::Origin::Archive { path } | crate::machine::Origin::Dump { path } =
        &run.origin
        && !path.exists()
    {
        warn!(
            run_id = %run.run_id,
            "the target records run {} unfinished, but its file {} is not here: it cannot be taken over (`replicator run` starts a new one)",
            run.run_id,
            path.display()
        );
        return None;
    }
    let adopted = match crate::machine::adopt(run, Utc::now()) {
        Ok(r) => r,
        Err(e) => {
            warn!("cannot take over the run recorded in the target: {e}");
            return None;
        }
    };
    tracing::info!(
        run_id = %adopted.run_id,
        phase = %adopted.phase.name(),
        written_by = %remote.current_written_by.unwrap_or_default(),
        "taking over run {} from the target's records (its process and its files are gone): it goes on in {}",
        adopted.run_id,
        adopted.phase.name()
    );
    if let Err(e) = driver.store.save(&adopted) {
        warn!("could not save the run taken over: {e}");
        return None;
    }
    Some(adopted)
}
