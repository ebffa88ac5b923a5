//! `replicator run`, `restore` and `resume`: one run, from Scalingo (or a live database,
//! `SOURCE_DATABASE_URL`), from a file, or from where an interrupted one stopped.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{CliError, EngineArgs, RestoreCmdArgs, RunArgs, exit};
use crate::app::{self, DEFAULT_DOWNLOAD_IDLE_TIMEOUT, EngineConfig, fatal, parse_target};
use crate::engine::{Outcome, new_run_id};
use crate::machine::{Origin, Phase, Run};
use crate::state::store::Store;

/// `replicator run`.
pub async fn run(
    state_dir: PathBuf,
    args: RunArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let config = args.engine.validate(true)?;
    // A live source has no "already restored": each run takes a new snapshot.
    let origin = config.origin();
    start(
        state_dir,
        config,
        origin,
        args.force,
        args.restart,
        shutdown,
    )
    .await
}

/// `replicator restore --archive F` / `--dump F`.
pub async fn restore(
    state_dir: PathBuf,
    args: RestoreCmdArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let origin = match (args.source.archive, args.source.dump) {
        (Some(path), _) => Origin::Archive { path },
        (_, Some(path)) => Origin::Dump { path },
        _ => unreachable!("clap requires one of --archive and --dump"),
    };
    let path = match &origin {
        Origin::Archive { path } | Origin::Dump { path } => path.clone(),
        Origin::Scalingo | Origin::Live { .. } => unreachable!(),
    };
    if !path.is_file() {
        return Err(CliError::Fatal(format!(
            "{} is not a readable file: give the path of a backup archive (--archive) or a pg_dump -Fc dump (--dump)",
            path.display()
        )));
    }
    let path = std::fs::canonicalize(&path).map_err(fatal)?;
    let origin = match origin {
        Origin::Archive { .. } => Origin::Archive { path },
        _ => Origin::Dump { path },
    };
    // A file on disk: no Scalingo, no backup age, nothing downloaded.
    let database_url = args.target.validate()?;
    let restore = args.restore.validate()?;
    let retry = args.retry.validate()?;
    let config = EngineConfig {
        target: parse_target(&database_url)?.confirmed(args.target.target_confirm.clone()),
        source: None,
        restore,
        retry,
        scalingo: None,
        max_backup_age: None,
        download_idle_timeout: DEFAULT_DOWNLOAD_IDLE_TIMEOUT,
    };
    start(state_dir, config, origin, false, false, shutdown).await
}

/// A new run from `origin`, with both locks held, unless an interrupted run stands in the way
/// (`restart` abandons it).
async fn start(
    state_dir: PathBuf,
    config: EngineConfig,
    origin: Origin,
    force: bool,
    restart: bool,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let driver = Arc::new(app::driver(state_dir, config, force, shutdown));
    let _locks = app::lock(&driver).await?;
    app::refuse_interrupted(&driver.store, &driver.state_dir, restart)?;
    let run = Run::new(
        new_run_id(Utc::now()),
        origin,
        driver.retry.max_retry_count,
        Utc::now(),
    );
    let outcome = drive_in_task(driver, run).await?;
    Ok(finish(outcome))
}

/// `replicator resume`.
pub async fn resume(
    state_dir: PathBuf,
    args: EngineArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let store = Store::new(&state_dir);
    let current = store.current().map_err(fatal)?;
    drop(store);
    // A new container knows no run: the target's records may hold one its process left.
    let from_target = match &current {
        Some(r) if !r.is_terminal() => None,
        _ => remote_unfinished(&args).await?,
    };
    let run = match (current, from_target) {
        (_, Some(r)) => r,
        (None, None) => {
            return Err(CliError::Refused(format!(
                "nothing to resume: no run was ever recorded in {}, and the target records no unfinished run",
                state_dir.display()
            )));
        }
        (Some(r), None) if r.is_terminal() => {
            return Err(CliError::Refused(format!(
                "nothing to resume: the last run ({}) ended {}; `replicator run` starts a new one",
                r.run_id,
                r.phase.name()
            )));
        }
        (Some(r), None) => r,
    };
    let needs_scalingo = matches!(run.origin, Origin::Scalingo);
    let config = args.validate(needs_scalingo)?;
    if needs_scalingo && config.source.is_some() {
        return Err(CliError::Refused(format!(
            "run {} restores a Scalingo backup, but SOURCE_DATABASE_URL is set (and SCALINGO_APP is not): set SCALINGO_APP and SCALINGO_API_TOKEN and unset SOURCE_DATABASE_URL to continue it, or `replicator run --restart` to abandon it and copy the live database",
            run.run_id
        )));
    }
    let target = config.target.clone();
    let driver = app::driver(state_dir, config, false, shutdown);
    let _locks = app::lock(&driver).await?;
    // Read again under the lock: the run may have moved since.
    if let Some(adopted) = app::adopt_from_target(&driver, &target).await {
        let outcome = drive_in_task(Arc::new(driver), adopted).await?;
        return Ok(finish(outcome));
    }
    let current = driver.store.current().map_err(fatal)?;
    let run = crate::machine::interrupted(current.as_ref())
        .cloned()
        .ok_or_else(|| CliError::Refused("nothing to resume: the run has finished".into()))?;
    info!(
        run_id = %run.run_id,
        phase = %run.phase.name(),
        "resuming run {} interrupted in {}",
        run.run_id,
        run.phase.name()
    );
    let run = app::resumable(run)?;
    let outcome = drive_in_task(Arc::new(driver), run).await?;
    Ok(finish(outcome))
}

/// The target's record of an unfinished run no replicator holds (read without the locks,
/// to learn its origin; taken over under them).
async fn remote_unfinished(args: &EngineArgs) -> Result<Option<Run>, CliError> {
    let url = args.target.validate()?;
    let target = crate::cli::parse_target(&url)?;
    match crate::state::remote::read(&target).await {
        Ok(r) if !r.lock_held => Ok(r.current.filter(|r| !r.is_terminal())),
        Ok(r) => match r.current.filter(|r| !r.is_terminal()) {
            Some(run) => Err(CliError::Refused(format!(
                "run {} is going on right now on the target (written by {}): nothing to resume",
                run.run_id,
                r.current_written_by.unwrap_or_default()
            ))),
            None => Ok(None),
        },
        Err(_) => Ok(None),
    }
}

/// Drives `run` on a spawned task (a runtime worker thread, not the main thread): the
/// `pg_restore` children are then spawned from worker threads, and their `PR_SET_PDEATHSIG`
/// (which fires when the spawning *thread* ends) must still tie them to the process alone
/// (`hardening::pg_restore_children_die_with_a_killed_replicator`).
async fn drive_in_task(driver: Arc<crate::engine::Driver>, run: Run) -> Result<Outcome, CliError> {
    tokio::spawn(async move { driver.drive(run).await })
        .await
        .map_err(|e| fatal(format!("the run's task failed: {e}")))?
        .map_err(fatal)
}

fn finish(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Finished(run) if matches!(run.phase, Phase::Done { .. }) => exit::OK,
        Outcome::Finished(run) => {
            crate::logging::print_final_error(
                &format!(
                    "run {} failed in {}: {}",
                    run.run_id,
                    match &run.phase {
                        Phase::Failed { failed_in, .. } => failed_in.as_str(),
                        _ => "?",
                    },
                    run.error.as_deref().unwrap_or("unknown error")
                ),
                exit::FAILED,
            );
            exit::FAILED
        }
        Outcome::Interrupted(_) => exit::OK,
        Outcome::AlreadyRestored(_) => exit::OK,
    }
}
