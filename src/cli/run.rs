//! `replicator run`, `restore` and `resume`: one run, from Scalingo (or a live database,
//! `SOURCE_DATABASE_URL`), from a file, or from where an interrupted one stopped.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{CliError, EngineArgs, RestoreCmdArgs, RunArgs, exit};
use crate::app::{self, fatal};
use crate::config::{EngineConfig, Settings, Wants};
use crate::engine::Outcome;
use crate::machine::start::{Asked, Choice};
use crate::machine::{Origin, Phase, Run};
use crate::state::store::Store;

/// `replicator run`.
pub async fn run(
    state_dir: PathBuf,
    args: RunArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let config = EngineConfig::from_args(&args.engine, Wants::Backups)?;
    // A live source has no "already restored": each run takes a new snapshot.
    let origin = config.origin();
    let asked = if args.restart {
        Asked::Restart
    } else {
        Asked::New
    };
    start(state_dir, config, origin, args.force, asked, shutdown).await
}

/// `replicator restore --archive F` / `--dump F`.
pub async fn restore(
    state_dir: PathBuf,
    args: RestoreCmdArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    // A file on disk: no Scalingo, no backup age, nothing downloaded.
    let config = EngineConfig::for_file(&args.target, &args.restore, &args.retry)?;
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
    start(state_dir, config, origin, false, Asked::New, shutdown).await
}

/// A run of `config` as `asked` ([`app::run_to_drive`]: new from `origin`, or after the
/// interrupted one is abandoned), with both locks held.
async fn start(
    state_dir: PathBuf,
    config: EngineConfig,
    origin: Origin,
    force: bool,
    asked: Asked,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let driver = Arc::new(app::driver(state_dir, config, force, shutdown));
    let locks = app::lock(&driver).await?;
    let run = app::run_to_drive(&driver, asked, origin).await?;
    let outcome = drive_in_task(driver, run, &locks).await?;
    Ok(finish(outcome))
}

/// `replicator resume`.
pub async fn resume(
    state_dir: PathBuf,
    args: EngineArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    // Which run, read first without the locks: its origin says which settings it needs. A
    // new container knows no run: the target's records may hold one its process left.
    let found = {
        // Every problem but Scalingo's first (whether the run needs Scalingo is not known
        // yet): nothing is read before the configuration is valid.
        let settings = Settings::read(&args, Wants::NoScalingo);
        let target = match settings.config() {
            Ok(config) => config.target,
            Err(errors) => return Err(CliError::Config(errors)),
        };
        match app::choose_run(&Store::new(&state_dir), &target, Asked::Resume, false).await? {
            Choice::Resume(run) | Choice::Adopt(run) => run,
            Choice::Refused(why) => return Err(app::refused(&why, &state_dir)),
            Choice::New | Choice::AbandonThenNew(_) => unreachable!("resume starts no new run"),
        }
    };
    let wants = match found.origin {
        Origin::Scalingo => Wants::Backups,
        _ => Wants::NoScalingo,
    };
    let config = EngineConfig::from_args(&args, wants)?;
    if wants == Wants::Backups && config.source.is_some() {
        return Err(CliError::Refused(format!(
            "run {} restores a Scalingo backup, but SOURCE_DATABASE_URL is set (and SCALINGO_APP is not): set SCALINGO_APP and SCALINGO_API_TOKEN and unset SOURCE_DATABASE_URL to continue it, or `replicator run --restart` to abandon it and copy the live database",
            found.run_id
        )));
    }
    let origin = found.origin.clone();
    let driver = Arc::new(app::driver(state_dir, config, false, shutdown));
    let locks = app::lock(&driver).await?;
    // Chosen again under the locks: the run may have moved since.
    let run = app::run_to_drive(&driver, Asked::Resume, origin).await?;
    let outcome = drive_in_task(driver, run, &locks).await?;
    Ok(finish(outcome))
}

/// Drives `run` on a spawned task (a runtime worker thread, not the main thread): the
/// `pg_restore` children are then spawned from worker threads, and their `PR_SET_PDEATHSIG`
/// (which fires when the spawning *thread* ends) must still tie them to the process alone
/// (`hardening::pg_restore_children_die_with_a_killed_replicator`).
async fn drive_in_task(
    driver: Arc<crate::engine::Driver>,
    run: Run,
    locks: &app::Locks,
) -> Result<Outcome, CliError> {
    let lock = locks.target();
    tokio::spawn(async move { driver.drive(run, Some(lock)).await })
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
