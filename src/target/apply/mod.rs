//! Restores a dump into the target through the replicator's own connections.
//!
//! `pg_restore --file=-` translates the archive into SQL (it reads the dump and never
//! connects); [`script`] cuts that script into statements and `COPY` rows; this module sends
//! them over `tokio-postgres` sessions. Why not let `pg_restore` connect, as it used to:
//!
//! - **Any client against any server.** pg_restore 17 and later start every session with
//!   `SET transaction_timeout = 0`, which PostgreSQL 16 and older refuse: with the newest
//!   client first on `PATH`, every restore into an older target failed right after the wipe.
//!   Here a `SET` of a setting the target does not know is left out (and said once).
//! - **One connection path.** TLS, certificates and the password go through the same code as
//!   every other connection of the replicator; `pg_restore` gets no secret and no `PG*`
//!   variable at all.
//! - **Typed errors.** A failure is the server's SQLSTATE, sorted into transient or
//!   permanent, with the dump entry it happened in; not a guess from stderr text.
//!
//! Parallelism, as `pg_restore --jobs` did: each table's rows come from a `pg_restore` of
//! their own entry (the archive's offsets let it seek straight there), over `jobs` sessions;
//! in the post-data section, indexes and primary/unique/check constraints run over `jobs`
//! sessions while the rest (foreign keys, triggers, index attachments, materialized view
//! refreshes) runs in the archive's order once they are done.

pub mod script;

use std::collections::{HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt, stream::FuturesUnordered};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio_postgres::Client;

use crate::error::StepError;
use crate::target::sqlstate::classify;
use crate::target::{PostgresError, RESTORE_APPLICATION_NAME, Target};
use script::{EntryHeader, Piece, ScriptError, ScriptParser};

/// Rows are sent to `COPY` in chunks of about this size.
const COPY_CHUNK: usize = 256 * 1024;
/// Pre-data statements are committed in transactions of at most this many statements: one
/// commit per object would cost a disk flush each, and one transaction for all of them could
/// run out of lock slots on a small server (each new table holds a lock until the commit).
const PRE_DATA_BATCH: usize = 250;
/// How many lines of pg_restore's stderr an error keeps.
const STDERR_TAIL: usize = 20;

/// Kinds of post-data entries that touch one table each and may run side by side.
const PARALLEL_POST_DATA: &[&str] = &["INDEX", "CONSTRAINT", "CHECK CONSTRAINT"];

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "cannot start pg_restore: {source}; install PostgreSQL's client tools (pg_restore) and make sure they are on PATH"
    )]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("reading pg_restore's output failed: {source}; will retry")]
    Read {
        #[source]
        source: std::io::Error,
    },
    #[error("{source}")]
    Script {
        #[from]
        source: ScriptError,
    },
    #[error(
        "pg_restore could not translate the dump {dump} ({status}):\n{stderr}\nthe archive may be damaged: download the backup again, or check that pg_restore is as new as the pg_dump that made it"
    )]
    PgRestore {
        dump: PathBuf,
        status: String,
        stderr: String,
        transient: bool,
    },
    #[error("restoring {entry} into {target} failed: {detail}{hint}")]
    Sql {
        target: String,
        entry: String,
        detail: String,
        hint: &'static str,
        transient: bool,
    },
    #[error(transparent)]
    Connect(#[from] PostgresError),
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Read { .. } => true,
            ApplyError::PgRestore { transient, .. } | ApplyError::Sql { transient, .. } => {
                *transient
            }
            ApplyError::Connect(e) => e.is_transient(),
            ApplyError::Spawn { .. } | ApplyError::Script { .. } => false,
        }
    }
}

impl From<ApplyError> for StepError {
    fn from(e: ApplyError) -> StepError {
        if e.is_transient() {
            StepError::transient(e.to_string())
        } else {
            StepError::permanent(e.to_string())
        }
    }
}

/// What the restore of a section needs: where, from what, how wide.
pub struct Applier {
    target: Target,
    dump: PathBuf,
    jobs: usize,
    /// The settings the target's server knows (`pg_settings`).
    known: Arc<HashSet<String>>,
    /// Settings already said to be left out (said once per run).
    left_out: Arc<Mutex<HashSet<String>>>,
    server_version_num: u32,
}

/// One `pg_restore --file=-`: the script of the entries of `list`, as pieces.
struct ScriptStream {
    child: Child,
    /// Kills pg_restore's whole process group if the restore is dropped half-way.
    pgid: Option<libc::pid_t>,
    out: BufReader<ChildStdout>,
    parser: ScriptParser,
    pending: VecDeque<Piece>,
    line: Vec<u8>,
    stderr: tokio::task::JoinHandle<String>,
    dump: PathBuf,
    /// The rows just returned ended their `COPY`: [`Item::RowsEnd`] comes next.
    rows_end: bool,
}

/// What [`ScriptStream::next`] returns.
enum Item {
    Piece(Piece),
    /// Rows of the current `COPY`, whole lines.
    Rows(Bytes),
    /// The end of the current `COPY`'s rows.
    RowsEnd,
}

impl Drop for ScriptStream {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall on the group pre_exec made ours.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// `pg_restore --file=-` of the entries `list` names (a `--list` excerpt, given on stdin):
/// no connection, no secret, nothing of the replicator's environment but `PATH`, the locale
/// and the time zone.
fn pg_restore_script(dump: &Path, list: String) -> Result<ScriptStream, ApplyError> {
    let mut cmd = crate::secret::child_command("pg_restore");
    cmd.args([
        "--file=-",
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--use-list=/dev/stdin",
    ])
    .arg(dump);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, raise) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Dies with the replicator, even on kill -9.
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
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ApplyError::Spawn { source })?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    tokio::spawn(async move {
        // pg_restore reads the whole list before it writes anything.
        let _ = stdin.write_all(list.as_bytes()).await;
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
    });
    let out = BufReader::with_capacity(1 << 20, child.stdout.take().expect("stdout is piped"));
    Ok(ScriptStream {
        child,
        pgid,
        out,
        parser: ScriptParser::new(),
        pending: VecDeque::new(),
        line: Vec::new(),
        stderr,
        dump: dump.to_path_buf(),
        rows_end: false,
    })
}

impl ScriptStream {
    /// The next piece of the script, or `None` at its end.
    async fn next(&mut self) -> Result<Option<Item>, ApplyError> {
        if std::mem::take(&mut self.rows_end) {
            return Ok(Some(Item::RowsEnd));
        }
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(Some(Item::Piece(p)));
            }
            if self.parser.in_copy() {
                return self.rows().await;
            }
            self.line.clear();
            let n = self
                .out
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|source| ApplyError::Read { source })?;
            if n == 0 {
                self.parser.finish()?;
                return Ok(None);
            }
            let mut out = Vec::new();
            self.parser.line(&self.line, &mut out)?;
            self.pending.extend(out);
        }
    }

    /// Up to [`COPY_CHUNK`] bytes of rows, or the end of the rows.
    async fn rows(&mut self) -> Result<Option<Item>, ApplyError> {
        let mut chunk = BytesMut::with_capacity(COPY_CHUNK + 4096);
        loop {
            self.line.clear();
            let n = self
                .out
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|source| ApplyError::Read { source })?;
            if n == 0 {
                self.parser.finish()?;
                return Ok(None);
            }
            if self.parser.copy_line(&self.line) {
                if chunk.is_empty() {
                    return Ok(Some(Item::RowsEnd));
                }
                // The end marker comes again after these rows.
                self.rows_end = true;
                return Ok(Some(Item::Rows(chunk.freeze())));
            }
            chunk.extend_from_slice(&self.line);
            if chunk.len() >= COPY_CHUNK {
                return Ok(Some(Item::Rows(chunk.freeze())));
            }
        }
    }

    /// Waits for pg_restore's exit: an error if it failed.
    async fn finish(mut self) -> Result<(), ApplyError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| ApplyError::Read { source })?;
        self.pgid = None;
        if status.success() {
            return Ok(());
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        Err(ApplyError::PgRestore {
            dump: self.dump.clone(),
            status: status.to_string(),
            stderr,
            // Killed (OOM killer, an operator): nothing says the next attempt fails too.
            transient: status.signal().is_some(),
        })
    }
}

/// The name of the setting `stmt` sets, if it is a plain `SET name = value` (or `TO`):
/// what pg_restore writes at the start of its script. Forms whose second word is not a
/// setting's name (`SET TIME ZONE`, `SET ROLE`, `SET SESSION AUTHORIZATION`, ...) give `None`.
fn set_name(stmt: &str) -> Option<String> {
    let s = stmt.trim_start();
    if !s.get(..4)?.eq_ignore_ascii_case("SET ") {
        return None;
    }
    let rest = s[4..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let name = rest[..end].to_ascii_lowercase();
    let after = rest[end..].trim_start();
    let assigns =
        after.starts_with('=') || after.len() >= 3 && after[..3].eq_ignore_ascii_case("TO ");
    const NOT_SETTINGS: &[&str] = &[
        "time",
        "role",
        "session",
        "local",
        "transaction",
        "constraints",
        "xml",
    ];
    (assigns && !name.is_empty() && !NOT_SETTINGS.contains(&name.as_str())).then_some(name)
}

/// The text of a server error without its `DETAIL`, which can quote row values (`Key
/// (email)=(...) already exists`): what the replicator prints, stores and notifies must not
/// carry production data.
fn server_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// One session of the restore on the target, named [`RESTORE_APPLICATION_NAME`] so that
/// the sessions a killed run left behind can be found and ended before the next wipe.
struct Session {
    client: Client,
    target: String,
    known: Arc<HashSet<String>>,
    said: Arc<Mutex<HashSet<String>>>,
    /// The session settings (the script's preamble) this session last ran.
    preamble: Vec<String>,
}

impl Session {
    async fn open(applier: &Applier) -> Result<Session, ApplyError> {
        let client = applier.target.connect_as(RESTORE_APPLICATION_NAME).await?;
        Ok(Session {
            client,
            target: applier.target.describe(),
            known: applier.known.clone(),
            said: applier.left_out.clone(),
            preamble: Vec::new(),
        })
    }

    fn error(&self, entry: &str, e: &tokio_postgres::Error) -> ApplyError {
        let (transient, hint) = classify(e);
        ApplyError::Sql {
            target: self.target.clone(),
            entry: entry.to_string(),
            detail: server_error_text(e),
            hint,
            transient,
        }
    }

    /// Runs the script's session settings, unless this session already has them.
    async fn prepare(&mut self, preamble: &[String]) -> Result<(), ApplyError> {
        if self.preamble == preamble {
            return Ok(());
        }
        for stmt in preamble {
            self.execute("the session settings", stmt).await?;
        }
        self.preamble = preamble.to_vec();
        Ok(())
    }

    /// Sends one statement, unless it sets a setting the server does not know.
    async fn execute(&self, entry: &str, stmt: &str) -> Result<(), ApplyError> {
        if let Some(name) = set_name(stmt).filter(|n| !n.contains('.') && !self.known.contains(n)) {
            if self.said.lock().expect("said lock").insert(name.clone()) {
                tracing::info!(
                    setting = %name,
                    "left out `{}`: the target's server does not know the setting {name} (a newer pg_restore writes it)",
                    stmt.trim()
                );
            }
            return Ok(());
        }
        self.client
            .batch_execute(stmt)
            .await
            .map_err(|e| self.error(entry, &e))
    }

    /// Runs a `COPY ... FROM stdin` with the rows that follow it in `stream`.
    async fn copy(
        &self,
        entry: &str,
        stmt: &str,
        stream: &mut ScriptStream,
    ) -> Result<(), ApplyError> {
        let sink = self
            .client
            .copy_in::<_, Bytes>(stmt)
            .await
            .map_err(|e| self.error(entry, &e))?;
        futures_util::pin_mut!(sink);
        loop {
            match stream.next().await? {
                Some(Item::Rows(rows)) => {
                    sink.send(rows).await.map_err(|e| self.error(entry, &e))?
                }
                Some(Item::RowsEnd) => break,
                Some(Item::Piece(_)) | None => {
                    return Err(ScriptError::Unterminated { line: 0 }.into());
                }
            }
        }
        sink.finish().await.map_err(|e| self.error(entry, &e))?;
        Ok(())
    }
}

/// Is this statement a transaction boundary of the script's own (the large objects' data
/// comes in `BEGIN; ... COMMIT;`)?
fn is_transaction_control(stmt: &str) -> bool {
    let s = stmt.trim().trim_end_matches(';').trim();
    s.eq_ignore_ascii_case("BEGIN") || s.eq_ignore_ascii_case("COMMIT")
}

/// Counts the entries done across the sessions of one section.
struct Progress<'a> {
    done: AtomicU64,
    report: &'a (dyn Fn(u64) + Send + Sync),
}

impl Progress<'_> {
    fn tick(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        (self.report)(n);
    }
}

impl Applier {
    /// Connects once to learn what the target's server knows.
    pub async fn new(target: &Target, dump: &Path, jobs: u32) -> Result<Applier, ApplyError> {
        let client = target.connect_as(RESTORE_APPLICATION_NAME).await?;
        let rows = client
            .query("SELECT name FROM pg_catalog.pg_settings", &[])
            .await
            .map_err(|e| {
                let (transient, hint) = classify(&e);
                ApplyError::Sql {
                    target: target.describe(),
                    entry: "the list of the server's settings".into(),
                    detail: server_error_text(&e),
                    hint,
                    transient,
                }
            })?;
        let known: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let server_version_num = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map(|r| r.get::<_, i32>(0) as u32)
            .unwrap_or(0);
        Ok(Applier {
            target: target.clone(),
            dump: dump.to_path_buf(),
            jobs: jobs.max(1) as usize,
            known: Arc::new(known),
            left_out: Arc::new(Mutex::new(HashSet::new())),
            server_version_num,
        })
    }

    /// The target's `server_version_num` (`0` if it could not be read).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Runs a script pg_restore already wrote (no `COPY` in it) on one session, in one
    /// transaction: all of it or nothing.
    pub async fn run_sql(&self, what: &str, sql: &str) -> Result<(), ApplyError> {
        let mut parser = ScriptParser::new();
        let mut pieces = Vec::new();
        for line in sql.split_inclusive('\n') {
            parser.line(line.as_bytes(), &mut pieces)?;
        }
        parser.finish()?;
        let session = Session::open(self).await?;
        session.execute(what, "BEGIN").await?;
        for piece in pieces {
            match piece {
                Piece::Statement(s) => session.execute(what, &s).await?,
                Piece::CopyStart(_) => return Err(ScriptError::Unterminated { line: 0 }.into()),
                Piece::Entry(_) | Piece::Meta(_) => {}
            }
        }
        session.execute(what, "COMMIT").await
    }

    /// Runs the entries of `list` in order on one session. With `batch`, statements are
    /// committed [`PRE_DATA_BATCH`] at a time (the script's own `BEGIN`/`COMMIT` are left out);
    /// without, each runs on its own, as pg_restore does.
    pub async fn run_serial(
        &self,
        list: String,
        batch: bool,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = Progress {
            done: AtomicU64::new(0),
            report,
        };
        let mut session = Session::open(self).await?;
        let mut stream = pg_restore_script(&self.dump, list)?;
        self.drive(&mut session, &mut stream, batch, &progress)
            .await?;
        stream.finish().await
    }

    /// Runs each list of `lists` (a table's rows, typically) from its own pg_restore, over
    /// up to `jobs` sessions side by side; the first failure stops them all.
    pub async fn run_parallel(
        &self,
        lists: Vec<String>,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = Progress {
            done: AtomicU64::new(0),
            report,
        };
        let width = self.jobs.min(lists.len());
        let queue = Mutex::new(VecDeque::from(lists));
        let worker = || async {
            let mut session = Session::open(self).await?;
            loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(list) = next else { break };
                let mut stream = pg_restore_script(&self.dump, list)?;
                self.drive(&mut session, &mut stream, false, &progress)
                    .await?;
                stream.finish().await?;
            }
            Ok::<(), ApplyError>(())
        };
        futures_util::future::try_join_all((0..width).map(|_| worker())).await?;
        Ok(())
    }

    /// The post-data section: indexes and primary/unique/check constraints over `jobs`
    /// sessions as they come; any other entry (foreign keys, triggers, index attachments,
    /// refreshes) waits for those running, then runs alone, in the archive's order.
    pub async fn run_post_data(
        &self,
        list: String,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = Progress {
            done: AtomicU64::new(0),
            report,
        };
        let mut stream = pg_restore_script(&self.dump, list)?;
        let mut preamble: Vec<String> = Vec::new();
        let mut current: Option<(EntryHeader, Vec<String>)> = None;
        let mut pool = Pool {
            idle: Vec::new(),
            opened: 0,
            running: FuturesUnordered::new(),
        };
        let mut primary: Option<Session> = None;
        loop {
            let item = stream.next().await?;
            let (end, entry) = match item {
                Some(Item::Piece(Piece::Entry(h))) => (false, current.replace((h, Vec::new()))),
                Some(Item::Piece(Piece::Statement(s))) => {
                    match current.as_mut() {
                        Some((_, stmts)) => stmts.push(s),
                        None => preamble.push(s),
                    }
                    continue;
                }
                Some(Item::Piece(Piece::Meta(_))) => continue,
                Some(_) => {
                    return Err(ScriptError::Unterminated { line: 0 }.into());
                }
                None => (true, current.take()),
            };
            if let Some((header, stmts)) = entry {
                if PARALLEL_POST_DATA.contains(&header.kind.as_str()) {
                    let session = pool.take(self, &preamble, &progress).await?;
                    pool.running.push(Box::pin(async move {
                        let r = session.run_entry(&header, &stmts).await;
                        (session, r)
                    }));
                } else {
                    pool.drain(&progress).await?;
                    if primary.is_none() {
                        primary = Some(Session::open(self).await?);
                    }
                    let session = primary.as_mut().expect("opened");
                    session.prepare(&preamble).await?;
                    session.run_entry(&header, &stmts).await?;
                    progress.tick();
                }
            }
            if end {
                break;
            }
        }
        pool.drain(&progress).await?;
        stream.finish().await
    }

    /// Runs `stream` on `session`, in order.
    async fn drive(
        &self,
        session: &mut Session,
        stream: &mut ScriptStream,
        batch: bool,
        progress: &Progress<'_>,
    ) -> Result<(), ApplyError> {
        let mut preamble: Vec<String> = Vec::new();
        let mut entry: Option<EntryHeader> = None;
        let mut in_tx = 0usize;
        let what = |entry: &Option<EntryHeader>| {
            entry.as_ref().map_or_else(
                || "the script's settings".to_string(),
                EntryHeader::describe,
            )
        };
        while let Some(item) = stream.next().await? {
            match item {
                Item::Piece(Piece::Entry(h)) => {
                    if entry.is_none() {
                        session.prepare(&preamble).await?;
                    } else {
                        progress.tick();
                    }
                    entry = Some(h);
                }
                Item::Piece(Piece::Meta(_)) => {}
                Item::Piece(Piece::Statement(s)) if entry.is_none() => preamble.push(s),
                Item::Piece(Piece::Statement(s)) => {
                    if batch {
                        if is_transaction_control(&s) {
                            continue;
                        }
                        if in_tx == 0 {
                            session.execute(&what(&entry), "BEGIN").await?;
                        }
                        session.execute(&what(&entry), &s).await?;
                        in_tx += 1;
                        if in_tx >= PRE_DATA_BATCH {
                            session.execute(&what(&entry), "COMMIT").await?;
                            in_tx = 0;
                        }
                    } else {
                        session.execute(&what(&entry), &s).await?;
                    }
                }
                Item::Piece(Piece::CopyStart(s)) => {
                    session.copy(&what(&entry), &s, stream).await?;
                }
                Item::Rows(_) | Item::RowsEnd => {
                    return Err(ScriptError::Unterminated { line: 0 }.into());
                }
            }
        }
        if in_tx > 0 {
            session.execute(&what(&entry), "COMMIT").await?;
        }
        if entry.is_some() {
            progress.tick();
        }
        Ok(())
    }
}

type Running = FuturesUnordered<
    std::pin::Pin<Box<dyn Future<Output = (Session, Result<(), ApplyError>)> + Send>>,
>;

/// The sessions of the post-data entries that run side by side.
struct Pool {
    idle: Vec<Session>,
    opened: usize,
    running: Running,
}

impl Pool {
    /// A session for the next entry: an idle one, a new one while fewer than `jobs` are
    /// open, or the first to finish its entry.
    async fn take(
        &mut self,
        applier: &Applier,
        preamble: &[String],
        progress: &Progress<'_>,
    ) -> Result<Session, ApplyError> {
        let mut session = match self.idle.pop() {
            Some(s) => s,
            None if self.opened < applier.jobs => {
                self.opened += 1;
                Session::open(applier).await?
            }
            None => {
                let (s, result) = self.running.next().await.expect("sessions are running");
                result?;
                progress.tick();
                s
            }
        };
        session.prepare(preamble).await?;
        Ok(session)
    }

    /// Waits for every running entry.
    async fn drain(&mut self, progress: &Progress<'_>) -> Result<(), ApplyError> {
        while let Some((s, result)) = self.running.next().await {
            result?;
            progress.tick();
            self.idle.push(s);
        }
        Ok(())
    }
}

impl Session {
    /// The statements of one entry, in order.
    async fn run_entry(&self, header: &EntryHeader, stmts: &[String]) -> Result<(), ApplyError> {
        let what = header.describe();
        for stmt in stmts {
            self.execute(&what, stmt).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_which_statements_set_a_setting() {
        assert_eq!(
            set_name("SET transaction_timeout = 0;").as_deref(),
            Some("transaction_timeout")
        );
        assert_eq!(
            set_name("set Statement_Timeout TO 0;").as_deref(),
            Some("statement_timeout")
        );
        assert_eq!(
            set_name("SET default_table_access_method = heap;").as_deref(),
            Some("default_table_access_method")
        );
        assert_eq!(
            set_name("SET my.custom = 'x';").as_deref(),
            Some("my.custom")
        );
        assert_eq!(set_name("SET TIME ZONE 'UTC';"), None);
        assert_eq!(set_name("SET ROLE postgres;"), None);
        assert_eq!(set_name("SET SESSION AUTHORIZATION x;"), None);
        assert_eq!(
            set_name("SELECT pg_catalog.set_config('search_path', '', false);"),
            None
        );
        assert_eq!(set_name("SETOF"), None);
    }
}
