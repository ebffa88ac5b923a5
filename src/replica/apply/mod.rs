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
//! The rows are the exception: the rows' section reads the archive's data blocks itself
//! (`dump/rows.rs`, on a blocking thread: [`stream::native_script`]), as the same script
//! `pg_restore --file=-` would write for the data entries, so that everything downstream is
//! the same; no `pg_restore` runs for them. Where that reader does not apply (large objects,
//! `--inserts` dumps, archive versions outside 1.14 to 1.16), the whole section goes through
//! pg_restore, said once with the reason ([`rows_source::READ_ROWS_NATIVELY`] turns the native reader off).
//!
//! Parallelism: the rows' section loads the tables side by side over `jobs` sessions, each
//! table's rows from a reader of their own, where the dump file's archive says where each
//! block starts; from a stream (or a file without those offsets) it reads the rows' entries
//! once, in the archive's order, on one session. Each table's indexes and primary/unique/check
//! constraints start as soon as its rows are in ([`early`]); what is left of them runs over
//! `jobs` sessions in the post-data section, while the rest (foreign keys, triggers, index
//! attachments, materialized view refreshes) runs in the archive's order once they are done.

mod analysis;
mod batch;
pub mod early;
mod freeze;
mod keys;
pub mod rehearsal;
mod rows_source;
pub mod script;
mod session;
pub(crate) mod stream;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream::FuturesUnordered};

use crate::masking::Masker;
use crate::replica::sqlstate::classify;
use crate::replica::{PgEndpoint, PostgresError, RESTORE_APPLICATION_NAME};
pub use early::{Early, EarlyEntry, LoadLog};
use freeze::{copy_target, fills_own_table, with_freeze};
pub use keys::key_as_index;
use script::{EntryHeader, Piece, ScriptError, ScriptParser};
pub use session::SessionSpec;
use session::{Session, qualified, server_error_text};
use stream::{Item, ScriptStream, pg_restore_script};

/// Pre-data statements are committed in transactions of at most this many statements: one
/// commit per object would cost a disk flush each, and one transaction for all of them could
/// run out of lock slots on a small server (each new table holds a lock until the commit).
const PRE_DATA_BATCH: usize = 250;

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
    /// A masking rule that cannot apply to a table's `COPY` (checked before the wipe: only
    /// a dump that changed under the run gets here).
    #[error("REPLICA_RULES: {0}")]
    Masking(String),
    /// The streamed archive stopped early (a cut download, a dump cut short).
    #[error(transparent)]
    Stream(#[from] crate::dump::feed::FeedError),
    /// The archive's rows, read natively, could not be read (a damaged block, a disk).
    #[error(transparent)]
    Rows(#[from] crate::dump::rows::RowsError),
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Read { .. } => true,
            ApplyError::PgRestore { transient, .. } | ApplyError::Sql { transient, .. } => {
                *transient
            }
            ApplyError::Connect(e) => e.is_transient(),
            ApplyError::Stream(e) => !e.is_permanent(),
            ApplyError::Rows(e) => {
                crate::error::Classify::kind(e) != crate::error::FailureKind::Permanent
            }
            ApplyError::Spawn { .. } | ApplyError::Script { .. } | ApplyError::Masking(_) => false,
        }
    }
}

impl crate::error::Classify for ApplyError {
    fn kind(&self) -> crate::error::FailureKind {
        use crate::error::FailureKind;
        match self {
            ApplyError::Stream(e) => e.kind(),
            ApplyError::Rows(e) => e.kind(),
            e if e.is_transient() => FailureKind::Transient,
            _ => FailureKind::Permanent,
        }
    }
}

/// The settings already said to be left out: said once per process, not once per section.
fn said_settings() -> Arc<Mutex<HashSet<String>>> {
    static SAID: std::sync::OnceLock<Arc<Mutex<HashSet<String>>>> = std::sync::OnceLock::new();
    SAID.get_or_init(Default::default).clone()
}

/// What the restore of a section needs: where, from what, how wide.
pub struct Applier {
    target: PgEndpoint,
    dump: PathBuf,
    jobs: usize,
    /// The settings the target's server knows (`pg_settings`).
    known: Arc<HashSet<String>>,
    /// Settings already said to be left out (said once per process).
    left_out: Arc<Mutex<HashSet<String>>>,
    server_version_num: u32,
    /// A table loaded with `FREEZE` with fewer rows than this is analyzed without a vacuum.
    analyze_only_below: u64,
    /// `REPLICA_RULES`: what each table's rows become on their way to the target.
    masker: Option<Arc<Masker>>,
    /// The records of the load (the rows' section): each entry recorded in the target with
    /// its work, each table's follow-up started with its rows.
    log: Option<Arc<LoadLog>>,
    /// Swap mode: statements pointed at the shadow schemas.
    rewriter: Option<Arc<crate::dump::rewrite::Rewriter>>,
    /// `USE_UNLOGGED_TABLES`: the tables the schema creates `UNLOGGED` in the first place.
    unlogged: Option<Arc<crate::replica::unlogged::CreatedUnlogged>>,
    /// The dump file's header and table of contents as the native reader of the rows reads
    /// them, read once (`Err`: why it cannot).
    archive: std::sync::OnceLock<Result<Arc<crate::dump::archive::ArchiveToc>, String>>,
}

/// Is this statement a transaction boundary of the script's own (the large objects' data
/// comes in `BEGIN; ... COMMIT;`)?
fn is_transaction_control(stmt: &str) -> bool {
    let s = stmt.trim().trim_end_matches(';').trim();
    s.eq_ignore_ascii_case("BEGIN") || s.eq_ignore_ascii_case("COMMIT")
}

/// Counts the entries done across the sessions of one section.
struct EntriesDone<'a> {
    done: AtomicU64,
    report: &'a (dyn Fn(u64) + Send + Sync),
}

impl EntriesDone<'_> {
    fn tick(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        (self.report)(n);
    }
}

impl Applier {
    /// Connects once to learn what the target's server knows.
    pub async fn new(target: &PgEndpoint, dump: &Path, jobs: u32) -> Result<Applier, ApplyError> {
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
        let analyze_only_below = analysis::analyze_only_below(&client, server_version_num).await;
        Ok(Applier {
            target: target.clone(),
            dump: dump.to_path_buf(),
            jobs: jobs.max(1) as usize,
            known: Arc::new(known),
            left_out: said_settings(),
            server_version_num,
            analyze_only_below,
            masker: None,
            log: None,
            rewriter: None,
            unlogged: None,
            archive: std::sync::OnceLock::new(),
        })
    }

    /// Records each entry of the load in the target with its work (see [`LoadLog`]).
    pub fn with_log(mut self, log: Arc<LoadLog>) -> Applier {
        self.log = Some(log);
        self
    }

    fn spec(&self) -> SessionSpec {
        SessionSpec {
            target: self.target.clone(),
            known: self.known.clone(),
            said: self.left_out.clone(),
            rewriter: self.rewriter.clone(),
            unlogged: self.unlogged.clone(),
        }
    }

    /// `USE_UNLOGGED_TABLES`: the schema creates these tables `UNLOGGED` in the first place.
    pub fn with_created_unlogged(
        mut self,
        unlogged: Option<Arc<crate::replica::unlogged::CreatedUnlogged>>,
    ) -> Applier {
        self.unlogged = unlogged;
        self
    }

    /// Swap mode: every statement is pointed at the shadow schemas of `rewriter`.
    pub fn with_rewriter(
        mut self,
        rewriter: Option<Arc<crate::dump::rewrite::Rewriter>>,
    ) -> Applier {
        self.rewriter = rewriter.filter(|r| !r.is_empty());
        self
    }

    /// The `jobs` of `PG_RESTORE_JOBS`.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// The target the sessions open on.
    pub fn endpoint(&self) -> &PgEndpoint {
        &self.target
    }

    /// `(schema, name)` pairs as the dump names them, as the target does (a swap builds them
    /// in its shadow schemas).
    pub fn as_target_names(&self, names: HashSet<(String, String)>) -> HashSet<(String, String)> {
        names
            .into_iter()
            .map(|(schema, name)| {
                let schema = self
                    .rewriter
                    .as_ref()
                    .and_then(|r| r.shadow_of(&schema))
                    .map(str::to_string)
                    .unwrap_or(schema);
                (schema, name)
            })
            .collect()
    }

    /// The entries of `list` translated from the dump, with the script's preamble: what
    /// [`Early`] runs as soon as their tables' rows are in.
    pub async fn translate(
        &self,
        list: String,
        ids: &LoadLog,
    ) -> Result<(Vec<String>, Vec<EarlyEntry>), ApplyError> {
        let mut stream = pg_restore_script(&self.dump, list)?;
        let mut preamble = Vec::new();
        let mut out: Vec<EarlyEntry> = Vec::new();
        while let Some(item) = stream.next().await? {
            match item {
                Item::Piece(Piece::Entry(h)) => {
                    let id = ids.id_of(&h).unwrap_or(0);
                    out.push(EarlyEntry {
                        id,
                        header: h,
                        stmts: Vec::new(),
                        serial: None,
                    });
                }
                Item::Piece(Piece::Statement(s)) => match out.last_mut() {
                    Some(e) => e.stmts.push(s),
                    None => preamble.push(s),
                },
                Item::Piece(Piece::Meta(_)) => {}
                _ => return Err(ScriptError::Unterminated { line: 0 }.into()),
            }
        }
        stream.finish().await?;
        Ok((preamble, out))
    }

    /// An [`Early`] of `plan` over `width` sessions of this target.
    pub fn early(
        &self,
        plan: std::collections::HashMap<u32, Vec<EarlyEntry>>,
        preamble: Vec<String>,
        width: usize,
        recorder: crate::replica::records::Recorder,
        analyzed: Arc<AtomicU64>,
    ) -> Early {
        Early::new(plan, preamble, width, self.spec(), recorder, analyzed)
            .analyzing_only_below(self.analyze_only_below)
    }

    /// Runs the data entries of `list_file` from a streamed archive, in the archive's order, on
    /// one session: each table's rows as their block arrives.
    pub async fn run_stream(
        &self,
        feed: Option<crate::dump::feed::Feed>,
        list: String,
        list_file: &Path,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let stream = self.rows_stream(feed, list, list_file)?;
        self.run_on_one_session(stream, false, report).await
    }

    /// Runs `stream` in order on one new session, then waits for its end (its pg_restore, or
    /// the native reader of the rows).
    async fn run_on_one_session(
        &self,
        mut stream: ScriptStream,
        batch: bool,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = EntriesDone {
            done: AtomicU64::new(0),
            report,
        };
        let mut session = Session::open(self).await?;
        self.drive(&mut session, &mut stream, batch, &progress)
            .await?;
        stream.finish().await
    }

    /// The statements of the entries of `list` as pg_restore writes them (no rows), without
    /// the script's settings.
    pub async fn statements(&self, list: String) -> Result<Vec<String>, ApplyError> {
        let mut stream = pg_restore_script(&self.dump, list)?;
        let mut out = Vec::new();
        let mut in_entry = false;
        while let Some(item) = stream.next().await? {
            match item {
                Item::Piece(Piece::Entry(_)) => in_entry = true,
                Item::Piece(Piece::Statement(s)) if in_entry => out.push(s),
                _ => {}
            }
        }
        stream.finish().await?;
        Ok(out)
    }

    /// Rows go through `masker` (`REPLICA_RULES`) on their way to the target.
    pub fn with_masker(mut self, masker: Arc<Masker>) -> Applier {
        self.masker = Some(masker);
        self
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
        // Committed durably: the last work of its step (`replica/durable.rs`).
        session
            .execute(what, "BEGIN; SET LOCAL synchronous_commit = on")
            .await?;
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
        let stream = pg_restore_script(&self.dump, list)?;
        self.run_on_one_session(stream, batch, report).await
    }

    /// Runs each list of `lists` (a table's rows, typically) from a reader of its own (native,
    /// else a pg_restore), over up to `jobs` sessions side by side, handed out in order; the
    /// first failure stops them all.
    pub async fn run_parallel(
        &self,
        lists: Vec<String>,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = EntriesDone {
            done: AtomicU64::new(0),
            report,
        };
        let width = self.jobs.min(lists.len());
        let native = self.native_rows_of_lists(&lists);
        let queue = Mutex::new(VecDeque::from(lists));
        let worker = || async {
            let mut session = Session::open(self).await?;
            loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(list) = next else { break };
                let mut stream = self.list_stream(native.as_ref(), list)?;
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
    /// refreshes) waits for those running, then runs alone, in the archive's order. The
    /// sessions of `early` (finished) are reused, not opened again beside it.
    pub async fn run_post_data(
        &self,
        list: String,
        early: Option<&Early>,
        report: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ApplyError> {
        let progress = EntriesDone {
            done: AtomicU64::new(0),
            report,
        };
        let mut stream = pg_restore_script(&self.dump, list)?;
        let mut preamble: Vec<String> = Vec::new();
        let mut current: Option<(EntryHeader, Vec<String>)> = None;
        let mut idle = early.map(Early::take_sessions).unwrap_or_default();
        idle.truncate(self.jobs);
        let mut pool = Pool {
            opened: idle.len(),
            idle,
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
                let record = self
                    .log
                    .as_ref()
                    .map(|l| (l.recorder.clone(), l.id_of(&header).unwrap_or(0)));
                if PARALLEL_POST_DATA.contains(&header.kind.as_str()) {
                    let session = pool.take(self, &preamble, &progress).await?;
                    pool.running.push(Box::pin(async move {
                        let record = record.as_ref().map(|(r, id)| (r, *id));
                        let r = session.run_entry_recorded(&header, &stmts, record).await;
                        (session, r)
                    }));
                } else {
                    pool.drain(&progress).await?;
                    if primary.is_none() {
                        primary = Some(match pool.idle.pop() {
                            Some(s) => {
                                pool.opened -= 1;
                                s
                            }
                            None => Session::open(self).await?,
                        });
                    }
                    let session = primary.as_mut().expect("opened");
                    session.prepare(&preamble).await?;
                    let record = record.as_ref().map(|(r, id)| (r, *id));
                    session.run_entry_recorded(&header, &stmts, record).await?;
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

    /// Runs `stream` on `session`, in order. In the rows' section (with a [`LoadLog`]), each
    /// table's `COPY` commits with its record, and any other entry is recorded once its
    /// statements ran (sequence values and large objects: running them again is harmless).
    async fn drive(
        &self,
        session: &mut Session,
        stream: &mut ScriptStream,
        batch: bool,
        progress: &EntriesDone<'_>,
    ) -> Result<(), ApplyError> {
        let mut preamble: Vec<String> = Vec::new();
        let mut entry: Option<EntryHeader> = None;
        // The current entry's dump id, while its record is still to write.
        let mut pending: Option<u32> = None;
        let log = self.log.as_deref().filter(|_| !batch);
        let mut in_tx = batch::Batch::default();
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
                        self.entry_done(session, log, &entry, pending.take())
                            .await?;
                        progress.tick();
                    }
                    pending = log.and_then(|l| l.id_of(&h));
                    entry = Some(h);
                }
                Item::Piece(Piece::Meta(_)) => {}
                Item::Piece(Piece::Statement(s)) if entry.is_none() => preamble.push(s),
                Item::Piece(Piece::Statement(s)) => {
                    if batch {
                        if is_transaction_control(&s) {
                            continue;
                        }
                        in_tx.push(what(&entry), s);
                        if in_tx.len() >= PRE_DATA_BATCH {
                            in_tx.commit(session).await?;
                        }
                    } else {
                        session.execute(&what(&entry), &s).await?;
                    }
                }
                Item::Piece(Piece::CopyStart(s)) => {
                    in_tx.commit(session).await?;
                    let rows = match (&self.masker, &entry) {
                        (Some(m), Some(h)) if h.kind == "TABLE DATA" => m
                            .for_copy(&h.schema, &h.name, &s)
                            .map_err(ApplyError::Masking)?,
                        _ => None,
                    };
                    let record = match (log, pending, &entry) {
                        (Some(l), Some(id), Some(h)) if h.kind == "TABLE DATA" => Some((l, id, h)),
                        _ => None,
                    };
                    // A recorded table's rows commit with their record, in one transaction on
                    // one session. When the `COPY` fills the entry's own table, that
                    // transaction empties it first (rows an interrupted attempt left go), which
                    // lets the rows go in frozen and all-visible (`FREEZE`): no later pass of
                    // autovacuum rewrites the pages (docs/performance.md, Ready at Done).
                    let freeze = record.is_some_and(|(_, _, h)| fills_own_table(&s, h));
                    let (n, bytes) = if freeze {
                        let target =
                            copy_target(&s).ok_or(ScriptError::Unterminated { line: 0 })?;
                        session
                            .execute(&what(&entry), &format!("BEGIN; TRUNCATE ONLY {target}"))
                            .await?;
                        session
                            .copy(&what(&entry), &with_freeze(&s), stream, rows)
                            .await?
                    } else {
                        if record.is_some() {
                            session.execute(&what(&entry), "BEGIN").await?;
                        }
                        session.copy(&what(&entry), &s, stream, rows).await?
                    };
                    if let Some((l, id, h)) = record {
                        let name = qualified(h);
                        // The record and the commit in one round trip. From PostgreSQL 15 on, the
                        // session's counts of the rows it inserted reach the server's statistics
                        // as it commits, not up to seconds later: the table's `VACUUM (ANALYZE)`
                        // follows, and counts arriving after it would send autovacuum back.
                        let flush = if self.server_version_num >= 150_000 {
                            "SELECT pg_catalog.pg_stat_force_next_flush();"
                        } else {
                            ""
                        };
                        let sql = l.recorder.insert_sql(id as i32, &h.kind, &name, n, bytes);
                        session
                            .execute(&what(&entry), &format!("{sql}; {flush} COMMIT"))
                            .await?;
                        pending = None;
                        l.table_loaded(id, h, (n, bytes), freeze);
                        if let Some(early) = &l.early {
                            early.check()?;
                        }
                    }
                }
                Item::Rows(_) | Item::RowsEnd => {
                    return Err(ScriptError::Unterminated { line: 0 }.into());
                }
            }
        }
        in_tx.commit(session).await?;
        if entry.is_some() {
            self.entry_done(session, log, &entry, pending.take())
                .await?;
            progress.tick();
        }
        Ok(())
    }

    /// Records an entry whose statements ran outside a transaction of their own.
    async fn entry_done(
        &self,
        session: &Session,
        log: Option<&LoadLog>,
        entry: &Option<EntryHeader>,
        pending: Option<u32>,
    ) -> Result<(), ApplyError> {
        if let (Some(l), Some(id), Some(h)) = (log, pending, entry) {
            let sql = l
                .recorder
                .insert_sql(id as i32, &h.kind, &qualified(h), 0, 0);
            session.execute(&h.describe(), &sql).await?;
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
        progress: &EntriesDone<'_>,
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
    async fn drain(&mut self, progress: &EntriesDone<'_>) -> Result<(), ApplyError> {
        while let Some((s, result)) = self.running.next().await {
            result?;
            progress.tick();
            self.idle.push(s);
        }
        Ok(())
    }
}
