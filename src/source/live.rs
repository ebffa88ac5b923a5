//! `pg_dump` of a live database (`SOURCE_DATABASE_URL`) as a [`Feed`]: one session, so one
//! consistent snapshot; its standard output is the archive the engine streams, and nothing of
//! the dump is ever written to disk (the engine keeps only its head).
//!
//! The password never reaches a command line: it is in a password file of the run's work
//! directory (mode 0600), named by `PGPASSFILE`, and removed as soon as `pg_dump` has
//! connected (its first byte of output comes after its connection and its catalog reads), or
//! when the feed ends. Nothing else of the replicator's environment reaches `pg_dump`
//! ([`crate::secret::child_std_command`]).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::thread::JoinHandle;

use crate::dump::feed::{CutKind, CutReason, Feed};
use crate::secret::Secret;

/// How many lines of `pg_dump`'s stderr a failure keeps.
const STDERR_TAIL: usize = 12;

/// The longest `pg_dump` waits for the share lock of one table (a session holding an
/// exclusive lock, an `ALTER TABLE` queued): past it, the attempt fails and is retried later,
/// instead of hanging the night (and queueing the source's own queries behind it).
const LOCK_WAIT_TIMEOUT: &str = "300s";

/// The name of the password file in the work directory.
const PASSFILE: &str = "source.pgpass";

/// How `pg_dump` reaches the source: everything but the password is in the clear (it is on
/// its command line and in its environment), the password only in `password`.
pub struct PgDumpConnection {
    /// `user@host:port/db`: how messages name the source.
    pub describe: String,
    /// A libpq connection string without the password.
    pub conninfo: String,
    /// `PG*` variables (TLS, options, connect timeout), without the password.
    pub env: Vec<(&'static str, String)>,
    pub password: Option<Secret>,
    /// Tables of schema public whose rows `pg_dump` does not read (`EXCLUDE_TABLE_DATA`):
    /// the production database is spared their scan, the network their bytes.
    pub exclude_table_data: Vec<String>,
}

impl PgDumpConnection {
    /// `pg_dump of SOURCE_DATABASE_URL (user@host:port/db)`: the feed's name in messages.
    pub fn what(&self) -> String {
        format!("pg_dump of SOURCE_DATABASE_URL ({})", self.describe)
    }
}

/// Why `pg_dump` could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "cannot run pg_dump: {source}; install the PostgreSQL client tools (pg_dump of the source server's major version, or newer) and put them on PATH"
    )]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write pg_dump's password file in {}: {source}; check the disk of REPLICATOR_STATE_DIR",
        dir.display()
    )]
    PassFile {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl crate::error::Classify for LiveError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            LiveError::Spawn { .. } => crate::error::FailureKind::Permanent,
            // A full disk may be freed before the next attempt.
            LiveError::PassFile { .. } => crate::error::FailureKind::Transient,
        }
    }
}

/// The arguments of `pg_dump`: the custom format (what the engine streams), without
/// compression (measured faster end to end: see `docs/operations.md`), never asking for a
/// password on a terminal, without `--jobs` (one session is one snapshot; `--jobs` also
/// cannot write to a pipe), and without the rows of `exclude` (tables of schema public).
fn pg_dump_args(conninfo: &str, exclude: &[String]) -> Vec<String> {
    let mut args = vec![
        "--format=custom".to_string(),
        "--compress=0".to_string(),
        "--no-password".to_string(),
        format!("--lock-wait-timeout={LOCK_WAIT_TIMEOUT}"),
    ];
    args.extend(
        exclude
            .iter()
            .map(|t| format!("--exclude-table-data={}", exact_table_pattern(t))),
    );
    args.push(format!("--dbname={conninfo}"));
    args
}

/// A `pg_dump` pattern that matches exactly the table `name` of schema public: in double
/// quotes, case is kept and `*`, `?` and `.` are plain characters; a quote is doubled.
fn exact_table_pattern(name: &str) -> String {
    format!("public.\"{}\"", name.replace('"', "\"\""))
}

/// Starts `pg_dump` of `conn`, its password file in `dir`, and gives its output as a feed.
/// The child is the feed's: it is killed when the feed is dropped, and dies with the
/// replicator.
pub fn pg_dump_feed(conn: &PgDumpConnection, dir: &Path) -> Result<Feed, LiveError> {
    let passfile = dir.join(PASSFILE);
    // A run killed while pg_dump connected left one: it is this run's, and stale.
    let _ = std::fs::remove_file(&passfile);
    let mut cmd = crate::secret::child_std_command("pg_dump");
    cmd.args(pg_dump_args(&conn.conninfo, &conn.exclude_table_data));
    for (k, v) in &conn.env {
        cmd.env(k, v);
    }
    let mut written = None;
    if let Some(password) = &conn.password {
        match passfile_line(password) {
            Some(line) => {
                write_passfile(&passfile, &line).map_err(|source| LiveError::PassFile {
                    dir: dir.to_path_buf(),
                    source,
                })?;
                cmd.env("PGPASSFILE", &passfile);
                written = Some(passfile.clone());
            }
            // A password file cannot hold a line break: the child's environment (readable
            // only by this user, like the file) carries that password instead.
            None => {
                cmd.env("PGPASSWORD", password.expose());
            }
        }
    }
    let guard = PassFile(written);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::secret::bind_to_this_process(&mut cmd);
    let (mut child, stderr) =
        spawn_on_own_thread(cmd).map_err(|source| LiveError::Spawn { source })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let cut = CutReason::default();
    let output = PgDumpOutput {
        stdout,
        pid: child.id() as libc::pid_t,
        stderr: Some(stderr),
        cut: cut.clone(),
        passfile: guard,
        ended: false,
    };
    Ok(Feed::of_reader(conn.what(), Box::new(output), cut).with_producer(child))
}

/// Spawns `cmd` from a thread of its own, which then reads the child's stderr to its end and
/// returns its last lines. `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child
/// ends: this thread lives exactly as long as the child (its stderr closes when it exits),
/// where a runtime's thread might end under a child that must live for the whole run.
fn spawn_on_own_thread(mut cmd: std::process::Command) -> io::Result<(Child, JoinHandle<String>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = std::thread::Builder::new()
        // Not "pg_dump": the child is named after this thread until it execs.
        .name("pg_dump-stderr".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return String::new();
                }
            };
            let mut err = child.stderr.take().expect("stderr is piped");
            let _ = tx.send(Ok(child));
            let mut text = Vec::new();
            let _ = err.read_to_end(&mut text);
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
        })?;
    let child = rx
        .recv()
        .map_err(|_| io::Error::other("the thread that starts pg_dump ended"))??;
    Ok((child, stderr))
}

/// `*:*:*:*:password`, escaped as libpq reads it (`\` and `:`); `None` for a password with a
/// line break, which the format cannot hold. The file serves this one `pg_dump` only, so
/// every host, port, database and user match.
fn passfile_line(password: &Secret) -> Option<String> {
    let p = password.expose();
    if p.contains(['\n', '\r']) {
        return None;
    }
    Some(format!(
        "*:*:*:*:{}\n",
        p.replace('\\', "\\\\").replace(':', "\\:")
    ))
}

fn write_passfile(path: &Path, line: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // 0600 from its creation (libpq ignores a password file others can read).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// The password file, removed at the latest when dropped.
struct PassFile(Option<PathBuf>);

impl PassFile {
    fn remove(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for PassFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `pg_dump`'s standard output; at its end, `pg_dump`'s exit says whether the archive is
/// whole, and a failure becomes the feed's [`CutReason`] with what `pg_dump` said.
struct PgDumpOutput {
    stdout: ChildStdout,
    pid: libc::pid_t,
    /// The thread reading `pg_dump`'s stderr: its last lines.
    stderr: Option<JoinHandle<String>>,
    cut: CutReason,
    passfile: PassFile,
    ended: bool,
}

impl Read for PgDumpOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let n = match self.stdout.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.cut.set_as(
                    format!("reading pg_dump's output: {e}"),
                    CutKind::NewSnapshot,
                );
                return Err(e);
            }
        };
        // pg_dump writes nothing before it has connected: its password is no longer needed.
        self.passfile.remove();
        if n > 0 {
            return Ok(n);
        }
        self.ended = true;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some((why, kind)) = failure(peek_exit(self.pid), &stderr) {
            self.cut.set_as(why, kind);
        }
        Ok(0)
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

/// The exit of child `pid`, once it has exited, without reaping it: the feed that owns the
/// child waits for it (and kills it first if the feed ends early).
fn peek_exit(pid: libc::pid_t) -> Option<Exit> {
    // SAFETY: zeroed siginfo_t is a valid out-parameter; waitid only writes it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain syscall on our own child; WNOWAIT leaves it to be reaped by its owner.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
    // SAFETY: waitid filled `info` for a child that exited (si_code CLD_*).
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => Exit::Code(status),
        _ => Exit::Signal(status),
    })
}

/// Why the dump is not whole, and what a new attempt can do, from `pg_dump`'s exit and the
/// last lines of its stderr (`None`: it exited 0). pg_dump gives no SQLSTATE: the few refusals
/// no retry can fix are told by their words, anything else is retried (bounded by
/// `MAX_RETRY_COUNT`).
fn failure(exit: Option<Exit>, stderr: &str) -> Option<(String, CutKind)> {
    let said = if stderr.is_empty() {
        String::new()
    } else {
        format!(": {}", crate::secret::redact_row_data(stderr))
    };
    let how = match exit {
        Some(Exit::Code(0)) => return None,
        Some(Exit::Code(c)) => format!("pg_dump exited with status {c}"),
        Some(Exit::Signal(s)) => format!("pg_dump was killed by signal {s}"),
        None => "pg_dump's exit status could not be read".to_string(),
    };
    let lower = stderr.to_ascii_lowercase();
    let refusal = if lower.contains("permission denied") {
        Some(
            "; SOURCE_DATABASE_URL's role must be able to read everything pg_dump dumps (the database's owner, or a member of pg_read_all_data)",
        )
    } else if lower.contains("server version mismatch") {
        Some(
            "; the pg_dump on PATH is older than the source's server: install the PostgreSQL client of the source's major version (or newer) and put it first on PATH",
        )
    } else if lower.contains("password authentication failed")
        || lower.contains("no password supplied")
        || (lower.contains("role") && lower.contains("does not exist"))
        || (lower.contains("database") && lower.contains("does not exist"))
    {
        Some(
            "; check the role, password and database name in SOURCE_DATABASE_URL (and the source server's pg_hba.conf)",
        )
    } else {
        None
    };
    Some(match refusal {
        Some(hint) => (format!("{how}{said}{hint}"), CutKind::Permanent),
        None => (format!("{how}{said}"), CutKind::NewSnapshot),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_file_escapes_what_libpq_reads_and_holds_no_line_break() {
        assert_eq!(
            passfile_line(&Secret::new(r"a:b\c")).unwrap(),
            "*:*:*:*:a\\:b\\\\c\n"
        );
        assert!(passfile_line(&Secret::new("a\nb")).is_none());
    }

    #[test]
    fn the_command_line_holds_no_password() {
        let args = pg_dump_args("host='h' port=5432 user='u' dbname='d'", &[]).join(" ");
        assert!(args.contains("--format=custom") && args.contains("--no-password"));
        assert!(!args.contains("password="), "{args}");
        assert!(!args.contains("--jobs"), "{args}");
    }

    #[test]
    fn excluded_tables_are_exact_names_of_schema_public() {
        let args = pg_dump_args(
            "dbname='d'",
            &["Audit.Log*".to_string(), "we\"ird".to_string()],
        );
        assert_eq!(
            &args[4..6],
            [
                r#"--exclude-table-data=public."Audit.Log*""#,
                r#"--exclude-table-data=public."we""ird""#
            ]
        );
        // The connection string stays last: options after it would still be read, but a
        // reader of the command line finds it where it always is.
        assert_eq!(args.last().unwrap(), "--dbname=dbname='d'");
    }

    #[test]
    fn refusals_are_permanent_and_the_rest_is_retried_with_a_new_snapshot() {
        assert_eq!(failure(Some(Exit::Code(0)), ""), None);
        let (why, kind) = failure(
            Some(Exit::Code(1)),
            "pg_dump: error: query failed: ERROR:  permission denied for table secrets",
        )
        .unwrap();
        assert_eq!(kind, CutKind::Permanent);
        assert!(
            why.contains("permission denied for table secrets") && why.contains("pg_read_all_data"),
            "{why}"
        );
        let (why, kind) = failure(
            Some(Exit::Code(1)),
            "pg_dump: error: connection to server at \"h\" failed: Connection refused",
        )
        .unwrap();
        assert_eq!(kind, CutKind::NewSnapshot);
        assert!(why.starts_with("pg_dump exited with status 1: "), "{why}");
        let (why, kind) = failure(Some(Exit::Signal(9)), "").unwrap();
        assert_eq!(
            (why.as_str(), kind),
            ("pg_dump was killed by signal 9", CutKind::NewSnapshot)
        );
    }
}
