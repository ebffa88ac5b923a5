//! The commands: arguments, dispatch and exit codes. One file per command (`run` holds `run`,
//! `restore` and `resume`, which differ only in where their run comes from); each validates
//! its configuration before touching anything, then hands the work to [`crate::app`]'s driver
//! (or the daemon loop, or the status view).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use crate::app::{CliError, exit};
pub use crate::config::EngineArgs;
use crate::config::{RestoreArgs, RetryArgs, StateArgs, TargetArgs};

mod check;
mod check_dump;
mod check_live;
mod daemon;
mod report;
mod rules;
mod run;
mod status;
mod web;

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
    Check(check::CheckArgs),
    /// Serve the health check, and the status as a page, JSON and Prometheus metrics, on $PORT
    /// (the `web` process)
    Web(WebArgs),
    /// REPLICA_RULES files: `rules init --dump FILE` writes a starting one (docs/masking.md)
    Rules(rules::RulesArgs),
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
    /// `true` to allow a SCHEDULE that fires more often than once a minute (each tick asks
    /// Scalingo's API)
    #[arg(long, env = "SCHEDULE_ALLOW_FREQUENT", default_value = "false", value_parser = crate::config::parse_bool_flag, action = clap::ArgAction::Set)]
    pub schedule_allow_frequent: bool,
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
    /// The token `/`, `/status` and `/metrics` require (environment only); unset, only
    /// `/health` is served
    #[arg(
        long = "web-token",
        env = "WEB_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub web_token: Option<String>,
    /// The target, whose recorded runs are shown when this state directory knows none (a
    /// `web` container does not see the `background` container's disk)
    #[command(flatten)]
    pub target: TargetArgs,
}

impl Command {
    /// The commands that stop cleanly on SIGTERM/SIGINT (a run persists a resumable state);
    /// the others (`status`, `check`) keep the default: the signal ends them.
    fn stops_on_signals(&self) -> bool {
        !matches!(
            self,
            Command::Status(_) | Command::Check(_) | Command::Rules(_)
        )
    }
}

/// The binary's `main`: parses the command line, starts the logs and the runtime, runs the
/// command.
pub fn entry() -> ExitCode {
    // Every file and directory this process creates is its user's only (0600, 0700): the
    // state directory holds production data (the archive, the dump) and the run's records.
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    if let Some(refusal) = secret_flag(std::env::args_os().skip(1)) {
        eprintln!("replicator: {refusal}");
        return ExitCode::from(exit::CONFIG);
    }
    let cli = Cli::parse();
    // These two print a report on stdout: their logs go to stderr, out of its way.
    let report = matches!(
        cli.command,
        Command::Status(_) | Command::Check(_) | Command::Rules(_)
    );
    if let Err(e) = crate::logging::init_to(Some(&cli.log_format), report) {
        eprintln!("replicator: {e}");
        return ExitCode::from(exit::CONFIG);
    }
    cap_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("replicator: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    runtime.block_on(main(cli))
}

/// The one list of secrets: each is read from its variable only, and its flag is refused
/// (a test walks every flag of every command against it).
const SECRET_FLAGS: [(&str, &str); 7] = [
    ("--api-token", "SCALINGO_API_TOKEN"),
    ("--database-url", "DATABASE_URL"),
    ("--source-database-url", "SOURCE_DATABASE_URL"),
    ("--notify-urls", "NOTIFY_URLS"),
    ("--notify-token", "NOTIFY_TOKEN"),
    ("--web-token", "WEB_TOKEN"),
    ("--masking-key", "MASKING_KEY"),
];

/// A secret given as a flag is refused: the command line of a process is readable by every
/// user of the machine (`/proc/PID/cmdline`, `ps`) for the whole life of a daemon. The
/// message names the flag and the variable, never the value.
pub fn secret_flag(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<String> {
    for arg in args {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        for (flag, var) in SECRET_FLAGS {
            if arg == flag || arg.starts_with(&format!("{flag}=")) {
                return Some(format!(
                    "{flag} is refused: a secret on the command line is visible to every user of the machine (ps, /proc/PID/cmdline); set {var} in the environment instead"
                ));
            }
        }
    }
    None
}

/// The library's `main`: runs `cli`'s command, prints its failure once, returns its exit code.
/// The shutdown token is made here, once, and passed to the command.
async fn main(cli: Cli) -> ExitCode {
    let state_dir = cli.state.dir();
    let shutdown = if cli.command.stops_on_signals() {
        shutdown_on_signals()
    } else {
        CancellationToken::new()
    };
    let result = match cli.command {
        Command::Run(args) => run::run(state_dir, args, shutdown).await,
        Command::Restore(args) => run::restore(state_dir, args, shutdown).await,
        Command::Resume(args) => run::resume(state_dir, args, shutdown).await,
        Command::Status(args) => status::run(state_dir, args).await,
        Command::Check(args) => check::run(state_dir, args).await,
        Command::Daemon(args) => daemon::run(state_dir, args, shutdown).await,
        Command::Web(args) => web::run(state_dir, args, shutdown).await,
        Command::Rules(args) => rules::run(args).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::logging::print_final_error(&e.to_string(), e.code());
            // In JSON mode the line above is already the log drain's JSON object; a
            // configuration error is said once, on stderr, before any log line mattered.
            if !crate::logging::is_json()
                && !matches!(e, CliError::Config(_) | CliError::Schedule(_))
            {
                error!("{e}");
            }
            ExitCode::from(e.code())
        }
    }
}

/// Cancelled on SIGTERM or SIGINT: the driver stops its step and persists a resumable state.
fn shutdown_on_signals() -> CancellationToken {
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

/// Two malloc arenas for the process, unless the operator set `MALLOC_ARENA_MAX`. glibc gives
/// threads that allocate at once arenas of their own (up to eight per core), and memory freed
/// stays in the arena that held it: the restore's tasks move between the runtime's workers and
/// blocking threads, so each arena keeps its own high-water. Measured on 2,500 tables (`cargo
/// bench --bench replicate -- --many 25x100 --b-env MALLOC_ARENA_MAX=2`): peak RSS 79-80 MiB
/// with two arenas, 89-105 MiB without (docs/performance.md, Many objects).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of glibc's allocator; called before the
        // runtime starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command, with the path of commands it belongs to.
    fn every_arg(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
        for a in cmd.get_arguments() {
            out.push((path.clone(), a.clone()));
        }
        for sub in cmd.get_subcommands() {
            every_arg(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    /// Issue 22: every flag of every command against the one list of secrets. A flag whose
    /// variable is a secret (its value hidden) is refused on the command line, naming the
    /// variable and never the value; and every secret of the list is such a flag.
    #[test]
    fn secrets_are_environment_only_for_every_flag() {
        let mut args = Vec::new();
        every_arg(&Cli::command(), "replicator".into(), &mut args);
        let mut seen = std::collections::HashSet::new();
        for (path, a) in &args {
            let Some(long) = a.get_long() else { continue };
            let flag = format!("--{long}");
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            let listed = SECRET_FLAGS.iter().find(|(f, _)| *f == flag);
            let secret = a.is_hide_env_values_set();
            assert_eq!(
                secret,
                listed.is_some(),
                "{path} {flag}: a flag whose value is hidden must be in SECRET_FLAGS, and only those"
            );
            let Some((_, var)) = listed else { continue };
            assert_eq!(env.as_deref(), Some(*var), "{path} {flag}");
            for given in [
                vec![flag.clone(), "s3cr3t-value".to_string()],
                vec![format!("{flag}=s3cr3t-value")],
                vec!["run".to_string(), format!("{flag}=s3cr3t-value")],
            ] {
                let refusal = secret_flag(given.iter().map(std::ffi::OsString::from))
                    .unwrap_or_else(|| panic!("{path}: {given:?} is accepted"));
                assert!(
                    refusal.contains(var) && !refusal.contains("s3cr3t"),
                    "{refusal}"
                );
            }
            seen.insert(flag);
        }
        for (flag, _) in SECRET_FLAGS {
            assert!(
                seen.contains(flag),
                "{flag} is listed but no command has it"
            );
        }
        // What is not a secret passes.
        assert_eq!(
            secret_flag(["run", "--force", "--", "--masking-key=x"].map(std::ffi::OsString::from)),
            None
        );
    }
}
