//! The commands. Each one validates its configuration before touching anything, then hands
//! the work to the driver (or the daemon, or the report).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{
    ConfigError, RestoreArgs, RetryArgs, ScalingoArgs, StateArgs, TargetArgs, parse_number,
};
use crate::engine::{Driver, Outcome, RealSteps, new_run_id};
use crate::machine::{Event, Origin, Phase, Run};
use crate::state::liveness;
use crate::status::{StatusView, status_json, status_text};
use crate::target::{self, LockOutcome, Target};

pub mod check;
pub mod daemon;
use crate::source::http::http_client;
use crate::source::scalingo::ScalingoClient;
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

#[derive(Parser, Debug)]
#[command(
    name = "replicator",
    version,
    about = "Keeps a PostgreSQL database fed from a production database's Scalingo backups",
    long_about = "Keeps a PostgreSQL database (the target, DATABASE_URL) a fresh copy of a Scalingo app's \
PostgreSQL database by restoring its newest nightly backup: download, extract, wipe the target, pg_restore.\n\n\
Every option also reads the environment variable shown in its command's --help; a flag overrides \
its variable.\n\n\
Exit codes: 0 done (or nothing to do, or stopped by SIGTERM/SIGINT, resumable), 1 the run failed \
(check: a check failed), 2 invalid configuration (nothing touched), 3 refused (another replicator \
holds the target or the state directory, or nothing to resume).\n\n\
Logs: readable lines on stdout (status and check: on stderr, their report is on stdout); \
LOG_FORMAT=json for one JSON object per line; RUST_LOG filters them (default: info)."
)]
pub struct Cli {
    #[command(flatten)]
    pub state: StateArgs,
    /// Log format: `text` (readable lines) or `json` (one object per line, for log drains)
    #[arg(long, env = "LOG_FORMAT", global = true, default_value = "text")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replicate the newest done backup now, once
    Run(RunArgs),
    /// Replicate on a cron schedule (SCHEDULE), forever: the `background` process on Scalingo
    Daemon(DaemonArgs),
    /// Restore a backup already on disk (a Scalingo .tar.gz or a pg_dump -Fc file); no Scalingo needed
    Restore(RestoreCmdArgs),
    /// Show the current or last run and the history (works while a run is live elsewhere)
    Status(StatusArgs),
    /// Continue an interrupted run (crash, kill -9, reboot) from its resume point
    Resume(EngineArgs),
    /// Dry run: check the configuration, Scalingo, the backup a run would take, the target,
    /// pg_restore and the disk, one line each; changes nothing (exit 1 if a check fails, 2
    /// if the configuration is invalid)
    Check(crate::cli::check::CheckArgs),
    /// Serve the health check and this container's status as JSON on $PORT (the `web` process)
    Web(WebArgs),
}

/// What every command that restores needs.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub scalingo: ScalingoArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub restore: RestoreArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// A newest done backup older than this many hours is not the night's yet: wait for it
    /// (transient failure, retried)
    #[arg(long, env = "MAX_BACKUP_AGE_HOURS")]
    pub max_backup_age_hours: Option<String>,
    /// Seconds a download may receive nothing before the attempt is given up (and resumed
    /// with `Range`): a server that stops sending must not hang the night
    #[arg(long, env = "DOWNLOAD_IDLE_TIMEOUT_SECONDS", default_value = "60")]
    pub download_idle_timeout_seconds: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Restore the newest backup even if the last successful run already restored it
    #[arg(long)]
    pub force: bool,
    /// Abandon an interrupted run of this state directory and start a new one
    #[arg(long)]
    pub restart: bool,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// When to replicate: a cron expression, 5 fields (`10 5 * * *` = 05:10 daily) or 6 with
    /// seconds first (`*/30 * * * * *`)
    #[arg(long, env = "SCHEDULE")]
    pub schedule: Option<String>,
    /// IANA time zone of SCHEDULE (e.g. Europe/Paris) [default: UTC]
    #[arg(long, env = "SCHEDULE_TIMEZONE")]
    pub schedule_timezone: Option<String>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RestoreSource {
    /// A Scalingo backup archive (.tar.gz holding one *.pgsql)
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// A pg_dump custom-format file (pg_dump -Fc)
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreCmdArgs {
    #[command(flatten)]
    pub source: RestoreSource,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub restore: RestoreArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON object (schema in docs/status-json.md)
    #[arg(long)]
    pub json: bool,
    /// Read the runs recorded in the target database (DATABASE_URL) even when this state
    /// directory has some [default: only when the state directory knows no run]
    #[arg(long)]
    pub from_target: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct WebArgs {
    /// Port to listen on (Scalingo sets PORT)
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: u16,
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

fn fatal(e: impl std::fmt::Display) -> CliError {
    CliError::Fatal(e.to_string())
}

pub async fn main(cli: Cli) -> ExitCode {
    let state_dir = cli.state.dir();
    let result = match cli.command {
        Command::Run(args) => cmd_run(state_dir, args).await,
        Command::Restore(args) => cmd_restore(state_dir, args).await,
        Command::Resume(args) => cmd_resume(state_dir, args).await,
        Command::Status(args) => cmd_status(state_dir, args).await,
        Command::Check(args) => crate::cli::check::run(state_dir, args).await,
        Command::Daemon(args) => crate::cli::daemon::run(state_dir, args).await,
        Command::Web(args) => cmd_web(state_dir, args).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::logging::print_final_error(&e.to_string(), e.code());
            // In JSON mode the line above is already the log drain's JSON object.
            if !crate::logging::is_json() {
                error!("{e}");
            }
            ExitCode::from(e.code())
        }
    }
}

/// Cancelled on SIGTERM or SIGINT: the driver stops its step and persists a resumable state.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received: stopping"),
            _ = int.recv() => info!("SIGINT received: stopping"),
        }
        t.cancel();
    });
    token
}

/// Both locks of a run: this state directory (liveness) and the target (advisory lock on a
/// dedicated connection). Dropping it releases both.
pub struct Locks {
    pub _live: liveness::LiveLock,
    pub _target_lock: target::TargetLock,
}

pub fn build_driver(
    state_dir: PathBuf,
    engine: &EngineArgs,
    needs_scalingo: bool,
    shutdown: CancellationToken,
) -> Result<Driver, CliError> {
    let database_url = engine.target.validate()?;
    let restore = engine.restore.validate()?;
    let retry = engine.retry.validate()?;
    let scalingo = if needs_scalingo {
        let s = engine.scalingo.validate()?;
        Some(ScalingoClient::new(s.endpoints, s.app, s.api_token))
    } else {
        None
    };
    let max_backup_age = engine
        .max_backup_age_hours
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|v| parse_number(v, "MAX_BACKUP_AGE_HOURS", 1, 24 * 365))
        .transpose()?
        .map(|h| Duration::from_secs(h * 3600));
    let target = parse_target(&database_url)?;
    Ok(Driver {
        store: Store::new(&state_dir),
        steps: RealSteps {
            state_dir: state_dir.clone(),
            scalingo,
            http: http_client(Duration::from_secs(parse_number(
                &engine.download_idle_timeout_seconds,
                "DOWNLOAD_IDLE_TIMEOUT_SECONDS",
                1,
                3600,
            )?)),
            target: target.clone(),
            restore,
        },
        state_dir,
        retry,
        force: false,
        max_backup_age,
        shutdown,
        remote: Some(crate::state::remote::RemoteWriter::new(target)),
    })
}

/// The target of `DATABASE_URL`; a URL it cannot use is a configuration error (the URL may
/// hold a password: it is never repeated).
fn parse_target(url: &crate::secret::Secret) -> Result<Target, CliError> {
    Target::parse(url).map_err(|e| {
        CliError::Config(ConfigError::Invalid {
            var: "DATABASE_URL",
            value: "(hidden)".into(),
            expected: e.to_string(),
        })
    })
}

/// Takes the two locks. Nothing in the target is touched before both are held.
pub async fn lock(driver: &Driver) -> Result<Locks, CliError> {
    let live = match liveness::acquire(&driver.state_dir).map_err(fatal)? {
        Ok(l) => l,
        Err(holder) => {
            return Err(CliError::Refused(format!(
                "another replicator process{} is running a replication with the state directory {}; \
                 `replicator status` shows it",
                holder
                    .pid
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                driver.state_dir.display()
            )));
        }
    };
    let target_lock = match target::lock_target(&driver.steps.target).await {
        Ok(LockOutcome::Acquired(l)) => l,
        Ok(LockOutcome::Held { since, holder }) => {
            return Err(CliError::Refused(format!(
                "another replication holds the target {}{}{}: two replicators must not restore into one \
                 database at once; wait for it to finish (or stop it) and retry",
                driver.steps.target.describe(),
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
        _target_lock: target_lock,
    })
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

/// Refuses to start a new run over an interrupted one, unless told to abandon it.
fn check_no_interrupted(
    store: &Store,
    state_dir: &std::path::Path,
    restart: bool,
) -> Result<(), CliError> {
    if let Some(run) = store.current().map_err(fatal)?
        && !run.is_terminal()
    {
        if restart {
            warn!(
                "abandoning interrupted run {} (was in {})",
                run.run_id,
                run.phase.name()
            );
            let abandoned = crate::machine::transition(
                &run,
                Event::PermanentFailure {
                    error: "abandoned by `replicator run --restart`".into(),
                },
                Utc::now(),
            )
            .map_err(fatal)?;
            store.save(&abandoned).map_err(fatal)?;
            let _ = std::fs::remove_dir_all(crate::engine::work_dir(state_dir, &run.run_id));
        } else {
            return Err(CliError::Refused(format!(
                "run {} was interrupted in {}: `replicator resume` continues it, \
                 `replicator run --restart` abandons it and starts afresh",
                run.run_id,
                run.phase.name()
            )));
        }
    }
    Ok(())
}

async fn cmd_run(state_dir: PathBuf, args: RunArgs) -> Result<u8, CliError> {
    let mut driver = build_driver(state_dir, &args.engine, true, shutdown_on_signals())?;
    driver.force = args.force;
    let _locks = lock(&driver).await?;
    let d = &driver;
    check_no_interrupted(&d.store, &d.state_dir, args.restart)?;
    let run = Run::new(
        new_run_id(Utc::now()),
        Origin::Scalingo,
        d.retry.max_retry_count,
        Utc::now(),
    );
    let outcome = d.drive(run).await.map_err(fatal)?;
    Ok(finish(outcome))
}

async fn cmd_restore(state_dir: PathBuf, args: RestoreCmdArgs) -> Result<u8, CliError> {
    let origin = match (args.source.archive, args.source.dump) {
        (Some(path), _) => Origin::Archive { path },
        (_, Some(path)) => Origin::Dump { path },
        _ => unreachable!("clap requires one of --archive and --dump"),
    };
    let path = match &origin {
        Origin::Archive { path } | Origin::Dump { path } => path.clone(),
        Origin::Scalingo => unreachable!(),
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
    let engine = EngineArgs {
        scalingo: ScalingoArgs {
            app: None,
            region: "osc-fr1".into(),
            api_token: None,
            auth_url: None,
            api_url: None,
            db_url: None,
        },
        target: args.target,
        restore: args.restore,
        retry: args.retry,
        max_backup_age_hours: None,
        download_idle_timeout_seconds: "60".into(),
    };
    let driver = build_driver(state_dir, &engine, false, shutdown_on_signals())?;
    let _locks = lock(&driver).await?;
    let d = &driver;
    check_no_interrupted(&d.store, &d.state_dir, false)?;
    let run = Run::new(
        new_run_id(Utc::now()),
        origin,
        d.retry.max_retry_count,
        Utc::now(),
    );
    let outcome = d.drive(run).await.map_err(fatal)?;
    Ok(finish(outcome))
}

/// Marks an abandoned run as interrupted and moves it to its resume point.
pub fn resumable(run: Run) -> Result<Run, CliError> {
    let now = Utc::now();
    let run = if run.interrupted {
        run
    } else {
        crate::machine::transition(&run, Event::Crashed, now).map_err(fatal)?
    };
    crate::machine::transition(&run, Event::Resume, now).map_err(fatal)
}

async fn cmd_resume(state_dir: PathBuf, args: EngineArgs) -> Result<u8, CliError> {
    let store = Store::new(&state_dir);
    let current = store.current().map_err(fatal)?;
    let run = match current {
        None => {
            return Err(CliError::Refused(format!(
                "nothing to resume: no run was ever recorded in {}",
                state_dir.display()
            )));
        }
        Some(r) if r.is_terminal() => {
            return Err(CliError::Refused(format!(
                "nothing to resume: the last run ({}) ended {}; `replicator run` starts a new one",
                r.run_id,
                r.phase.name()
            )));
        }
        Some(r) => r,
    };
    let needs_scalingo = matches!(run.origin, Origin::Scalingo);
    let driver = build_driver(state_dir, &args, needs_scalingo, shutdown_on_signals())?;
    let _locks = lock(&driver).await?;
    let d = &driver;
    // Read again under the lock: the run may have moved since.
    let run = d
        .store
        .current()
        .map_err(fatal)?
        .filter(|r| !r.is_terminal())
        .ok_or_else(|| CliError::Refused("nothing to resume: the run has finished".into()))?;
    info!(
        run_id = %run.run_id,
        phase = %run.phase.name(),
        "resuming run {} interrupted in {}",
        run.run_id,
        run.phase.name()
    );
    let run = resumable(run)?;
    let outcome = d.drive(run).await.map_err(fatal)?;
    Ok(finish(outcome))
}

async fn cmd_status(state_dir: PathBuf, args: StatusArgs) -> Result<u8, CliError> {
    let store = Store::new(&state_dir);
    let current = store.current().map_err(fatal)?;
    let history = store.history().map_err(fatal)?;
    let holder = liveness::holder(&state_dir).map_err(fatal)?;
    let local_source = format!("state directory {}", state_dir.display());
    let has_url = args
        .target
        .database_url
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    // A container that cannot see the daemon's disk (a `scalingo run`) knows no run: the
    // target database, which every container reaches, does.
    let mut remote = None;
    let mut unreadable = None;
    if args.from_target || (current.is_none() && has_url) {
        let url = args.target.validate()?;
        let target = parse_target(&url)?;
        match crate::state::remote::read(&target).await {
            Ok(runs) => remote = Some((target.describe(), runs)),
            Err(e) if args.from_target => return Err(fatal(e)),
            Err(e) => unreadable = Some(e.to_string()),
        }
    }
    let view = match &remote {
        Some((target, runs)) => StatusView {
            current: runs.current.as_ref(),
            history: &runs.history,
            live: runs.lock_held && runs.current.as_ref().is_some_and(|r| !r.is_terminal()),
            live_pid: None,
            source: crate::status::target_source(target, runs.schema_exists),
            source_kind: crate::status::SourceKind::Target,
            written_by: runs.current_written_by.clone(),
            target_lock_held: Some(runs.lock_held),
        },
        None => StatusView {
            current: current.as_ref(),
            history: &history,
            live: holder.is_some(),
            live_pid: holder.and_then(|h| h.pid),
            source: match &unreadable {
                Some(e) => format!("{local_source} (the target database could not be read: {e})"),
                None => local_source,
            },
            ..Default::default()
        },
    };
    let json = args.json
        || (crate::logging::is_json() && !std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        let value = status_json(&view);
        // One line per JSON object in JSON log mode, so that every line parses.
        if crate::logging::is_json() {
            println!("{value}");
        } else {
            println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
        }
    } else {
        print!("{}", status_text(&view, Utc::now()));
    }
    Ok(exit::OK)
}

async fn cmd_web(state_dir: PathBuf, args: WebArgs) -> Result<u8, CliError> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .map_err(|e| CliError::Fatal(format!("cannot listen on port {} (PORT): {e}", args.port)))?;
    info!("web: serving /health and /status on port {}", args.port);
    let status = std::sync::Arc::new(move || {
        let store = Store::new(&state_dir);
        let current = store.current().ok().flatten();
        let history = store.history().unwrap_or_default();
        let holder = liveness::holder(&state_dir).ok().flatten();
        let view = StatusView {
            current: current.as_ref(),
            history: &history,
            live: holder.is_some(),
            live_pid: holder.and_then(|h| h.pid),
            source: format!("state directory {}", state_dir.display()),
            ..Default::default()
        };
        status_json(&view)
    });
    let shutdown = shutdown_on_signals();
    crate::web::serve(listener, status, async move { shutdown.cancelled().await })
        .await
        .map_err(fatal)?;
    Ok(exit::OK)
}
