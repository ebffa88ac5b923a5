//! The `pg_restore` process: its arguments and environment, its process group, its progress
//! and the sorting of its failures.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::checks::{DumpInfo, check_dump};
use super::sqlstate::PostgresError;
use super::url::Target;
use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::machine::Section;

/// `application_name` (`PGAPPNAME`) of `pg_restore`'s sessions: what
/// [`super::terminate_leftover_restores`] looks for after a crash.
pub const RESTORE_APPLICATION_NAME: &str = "replicator-restore";

/// How many `pg_restore` stderr lines an error message keeps.
const STDERR_TAIL: usize = 20;

/// The `pg_restore` arguments for one section (no secret in them: the connection comes from
/// the environment of [`Target::child_env`]).
///
/// - `--no-owner`, `--no-privileges`: the production roles do not exist on the target; every
///   object belongs to the target role, which is what `DROP OWNED` wipes the next night.
/// - `--no-comments`: `COMMENT ON EXTENSION` needs ownership of the extension.
/// - `--schema public`: extensions and other schemas are the platform's, not the app's.
/// - `--no-tablespaces`: production tablespaces do not exist on the target.
/// - `--exit-on-error`: with the filters above, the errors left all mean a copy that is not
///   complete; without it `pg_restore` would go on for hours and exit 1 anyway, and the
///   driver could not tell "harmless" from "half the rows missing".
pub fn restore_args(
    dbname: &str,
    dump: &Path,
    section: Section,
    jobs: u32,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "--no-owner",
        "--no-privileges",
        "--no-comments",
        "--no-tablespaces",
        "--schema=public",
        "--exit-on-error",
        "--verbose",
    ]
    .iter()
    .map(Into::into)
    .collect();
    match section {
        Section::PreData => args.push("--section=pre-data".into()),
        Section::DataAndPostData => {
            args.push("--section=data".into());
            args.push("--section=post-data".into());
        }
    }
    args.push(format!("--jobs={}", jobs.max(1)).into());
    // Host, port, role and password come from the environment; the name is no secret.
    args.push(format!("--dbname={dbname}").into());
    args.push(dump.as_os_str().to_owned());
    args
}

/// Builds the `pg_restore` command of a section: environment-only secrets, its own process
/// group, killed with the replicator.
pub fn restore_command(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
) -> tokio::process::Command {
    restore_command_with_list(target, dump, section, jobs, None)
}

/// [`restore_command`] restricted to the entries of a `--use-list` file (see `toc.rs`): the
/// other filters still apply, and what the list comments out is never read.
pub fn restore_command_with_list(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("pg_restore");
    let mut args = restore_args(&target.dbname, dump, section, jobs);
    if let Some(list) = use_list {
        let mut arg = std::ffi::OsString::from("--use-list=");
        arg.push(list);
        // Before the dump, which stays the last argument.
        args.insert(args.len() - 1, arg);
    }
    cmd.args(args);
    // A PGSERVICE or PGOPTIONS of the replicator's own environment must not redirect the restore.
    for var in ["PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGPASSFILE"] {
        cmd.env_remove(var);
    }
    cmd.envs(target.child_env(RESTORE_APPLICATION_NAME));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, raise) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // Own group: the driver can signal pg_restore and its parallel workers at once.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Dies with the replicator, even on kill -9 (the kernel sends it).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal would ever come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    cmd
}

/// Kills the whole process group of a `pg_restore` (its `--jobs` workers are forked children
/// that `kill_on_drop` would not reach) when the restore future is dropped or fails.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall; the group is ours (setpgid in pre_exec).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Does this stderr line report one TOC item being run? Items run by the leader print one of
/// these; with `--jobs`, workers' lines can come out interleaved and garbled (a line may lose
/// its `pg_restore: ` prefix or merge with a NOTICE), so they under-count there.
fn is_item_line(line: &str) -> bool {
    let l = line.strip_prefix("pg_restore: ").unwrap_or(line);
    l.starts_with("creating ")
        || l.starts_with("processing data for table ")
        || l.starts_with("executing ")
}

/// How many `finished item N ...` reports a line holds: the leader prints one per item a
/// parallel worker completed, the exact count in parallel mode. Processes write the
/// `pg_restore: ` prefix and the message separately, so a report can land in the middle of
/// another line: count occurrences, not line starts.
fn finished_items_in(line: &str) -> u64 {
    line.matches("finished item ").count() as u64
}

fn stderr_says_transient(tail: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "Connection refused",
        "could not connect to server",
        "connection to server at",
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "connection timed out",
        "Connection reset by peer",
        "could not receive data from server",
        "could not send data to server",
        "SSL SYSCALL error",
        "no connection to the server",
        "deadlock detected",
        "could not serialize access",
        "too many connections",
        "canceling statement due to lock timeout",
    ];
    const PERMANENT: &[&str] = &[
        "password authentication failed",
        "no password supplied",
        "permission denied",
        "must be owner",
        "could not read from input file",
        "unsupported version",
        "input file",
    ];
    if PERMANENT.iter().any(|p| tail.contains(p)) {
        return false;
    }
    TRANSIENT.iter().any(|p| tail.contains(p))
}

/// Runs `pg_restore` for one section into the target. `progress(done, total)` is called as
/// items complete; `total` comes from the dump's table of contents.
pub async fn restore_section(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    restore_section_with_list(target, dump, section, jobs, None, progress).await
}

/// [`restore_section`] restricted to the entries of a `--use-list` file (`toc.rs`). The
/// progress total counts what this restore runs: the list's entries, not those it comments
/// out (rows of `EXCLUDE_TABLE_DATA`, foreign keys `FK_MODE` defers), so that it ends at 100%.
pub async fn restore_section_with_list(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    let total = match use_list {
        None => check_dump(dump).await?.items(section),
        // Written from this dump's `--list` in the same step: the dump is already read.
        Some(list) => DumpInfo::from_toc(&Toc::read_list(list)?).items(section),
    };
    restore_section_counted(target, dump, section, jobs, use_list, total, progress).await
}

/// [`restore_section_with_list`] when the caller knows the progress `total` (the driver counts
/// it from the table of contents it read once).
pub async fn restore_section_counted(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
    total: u64,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    let mut cmd = restore_command_with_list(target, dump, section, jobs, use_list);
    let mut child = cmd.spawn().map_err(|source| PostgresError::Spawn {
        program: "pg_restore".into(),
        source,
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|p| p as libc::pid_t),
    };
    tracing::info!(
        target = %target.describe(),
        section = section.label(),
        jobs,
        pid = ?child.id(),
        items = total,
        "pg_restore started"
    );
    progress(0, total);
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL + 1);
    let mut done = 0u64;
    let (mut serial_done, mut parallel_done) = (0u64, 0u64);
    let password = target.password.as_ref().map(|p| p.expose().to_string());
    loop {
        match lines.next_line().await {
            Ok(Some(mut line)) => {
                if let Some(p) = password.as_deref().filter(|p| p.len() >= 3) {
                    line = line.replace(p, "[redacted]");
                }
                tracing::debug!(section = section.label(), "{line}");
                // Items run before the workers start print only the serial lines, those run by
                // workers print both kinds: the larger count is the true one in both modes.
                if is_item_line(&line) {
                    serial_done += 1;
                }
                parallel_done += finished_items_in(&line);
                let now = serial_done.max(parallel_done);
                if now > done {
                    done = now;
                    progress(done.min(total), total);
                }
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pg_restore's stderr");
                break;
            }
        }
    }
    let status = child.wait().await.map_err(|e| PostgresError::Restore {
        target: target.describe(),
        section: section.label(),
        status: format!("waiting for it failed: {e}"),
        stderr: String::new(),
        hint: "",
        transient: true,
    })?;
    if status.success() {
        // Its workers exited before it did; nothing left to kill.
        guard.pgid = None;
        progress(total, total);
        tracing::info!(target = %target.describe(), section = section.label(), "pg_restore finished");
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    let tail = tail.join("\n");
    let transient = if status.signal().is_some() {
        // Killed (OOM killer, an operator): nothing says the next attempt fails too.
        true
    } else {
        stderr_says_transient(&tail)
    };
    let hint = if transient {
        "\nthe run goes back to Dropping and retries"
    } else if tail.contains("password authentication failed") {
        "\ncheck the password in DATABASE_URL"
    } else if tail.contains("permission denied") || tail.contains("must be owner") {
        "\nDATABASE_URL must name the role that owns the target database"
    } else {
        ""
    };
    Err(PostgresError::Restore {
        target: target.describe(),
        section: section.label(),
        status: status.to_string(),
        stderr: tail,
        hint,
        transient,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_restore_failures() {
        assert!(stderr_says_transient(
            "pg_restore: error: could not execute query: FATAL:  terminating connection due to administrator command"
        ));
        assert!(stderr_says_transient(
            "pg_restore: error: connection to server at \"127.0.0.1\", port 5 failed: Connection refused"
        ));
        assert!(!stderr_says_transient(
            "connection to server at \"h\" failed: FATAL:  password authentication failed for user \"u\""
        ));
        assert!(!stderr_says_transient(
            "pg_restore: error: could not execute query: ERROR:  relation \"x\" already exists"
        ));
    }
}
