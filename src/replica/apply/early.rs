//! The records of a load and the work that starts as soon as one table's rows are in.
//!
//! - [`LoadLog`]: which dump entry a piece of pg_restore's script belongs to (the script names
//!   entries by kind, schema and tag, not by dump id), the record of each entry written in the
//!   target in the same transaction as its work ([`crate::replica::records`]), and the tables
//!   loaded, for the run's `TableLoaded` events.
//! - [`Early`]: a table's indexes and its primary key, unique and check constraints, built as
//!   soon as its rows are committed, on sessions of their own, while the next tables load (as
//!   pgcopydb does); a key as a unique index first, beside the table's other indexes
//!   ([`super::keys`]); then the table `ANALYZE`d, on the session of its last index, so that
//!   its statistics (and its visibility counts) are in when the run ends. The rest of the
//!   post-data section (foreign keys, triggers, index attachments, refreshes) waits for every
//!   row.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::script::EntryHeader;
use super::{ApplyError, Session, SessionSpec};
use crate::dump::toc::TocEntry;
use crate::machine::TableLoad;
use crate::replica::records::Recorder;

type Key = (String, String, String);

fn key(kind: &str, schema: &str, tag: &str) -> Key {
    (kind.to_string(), schema.to_string(), tag.to_string())
}

/// What a load records, and where its tables' follow-up work goes.
pub struct LoadLog {
    pub(super) recorder: Recorder,
    /// Dump ids by (kind, schema, tag), in the archive's order (tags repeat, rarely).
    ids: Mutex<HashMap<Key, VecDeque<u32>>>,
    tables: Arc<Mutex<Vec<TableLoad>>>,
    pub(super) early: Option<Arc<Early>>,
}

impl LoadLog {
    /// The log of a load of `entries` (those restored, in the archive's order).
    pub fn new<'a>(
        recorder: Recorder,
        tables: Arc<Mutex<Vec<TableLoad>>>,
        entries: impl IntoIterator<Item = &'a TocEntry>,
    ) -> LoadLog {
        let mut ids: HashMap<Key, VecDeque<u32>> = HashMap::new();
        for e in entries {
            ids.entry(key(&e.desc, &e.schema, &e.tag))
                .or_default()
                .push_back(e.id);
        }
        LoadLog {
            recorder,
            ids: Mutex::new(ids),
            tables,
            early: None,
        }
    }

    /// The work started after each table's rows, if any.
    pub fn early(&self) -> Option<Arc<Early>> {
        self.early.clone()
    }

    /// With `early` started after each table's rows.
    pub fn with_early(mut self, early: Early) -> LoadLog {
        self.early = Some(Arc::new(early));
        self
    }

    /// The dump id of the entry whose script starts with `h`.
    pub(super) fn id_of(&self, h: &EntryHeader) -> Option<u32> {
        self.ids
            .lock()
            .expect("ids lock")
            .get_mut(&key(&h.kind, &h.schema, &h.name))
            .and_then(VecDeque::pop_front)
    }

    /// A table's rows are in (committed with their record; `frozen`: with `COPY ... FREEZE`).
    pub(super) fn table_loaded(
        &self,
        id: u32,
        h: &EntryHeader,
        (rows, bytes): (u64, u64),
        frozen: bool,
    ) {
        self.tables.lock().expect("tables lock").push(TableLoad {
            table: format!("{}.{}", h.schema, h.name),
            rows,
            bytes,
        });
        if let Some(early) = &self.early {
            let vacuum = !(frozen && rows < early.analyze_only_below);
            early.loaded(id, (h.schema.clone(), h.name.clone()), vacuum);
        }
    }
}

/// `VACUUM (ANALYZE, INDEX_CLEANUP OFF) "schema"."name"` (as the dump names it: a swap's
/// session points it at the shadow): the table's planner statistics, and what autovacuum would
/// otherwise come back for once the run is done. Its rows went in frozen and all-visible
/// (`COPY ... FREEZE`), so the vacuum skips every page the visibility map marks, and the new
/// indexes, which hold nothing to clean, are not scanned; it sets the table's counts (pages
/// all-visible, the oldest transaction id) and resets the counters by which autovacuum would
/// vacuum and analyze the table again.
pub(crate) fn analyze_sql(schema: &str, name: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!(
        "VACUUM (ANALYZE, INDEX_CLEANUP OFF) {}.{}",
        quote(schema),
        quote(name)
    )
}

/// One post-data entry, translated ahead.
pub struct EarlyEntry {
    pub id: u32,
    pub header: EntryHeader,
    pub stmts: Vec<String>,
    /// A key built as an index first ([`super::keys`]): its last step takes the table's
    /// exclusive lock while its index holds a shared one, so two of them on one table would
    /// deadlock. Entries with the same value here run one after the other.
    pub serial: Option<u32>,
}

/// The post-data entries that start as soon as their table's rows are in.
pub struct Early {
    /// By the dump id of the `TABLE DATA` entry they wait for.
    plan: Mutex<HashMap<u32, Vec<EarlyEntry>>>,
    preamble: Arc<Vec<String>>,
    sessions: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Session>>>,
    tasks: Mutex<JoinSet<Result<u32, ApplyError>>>,
    /// One lock per [`EarlyEntry::serial`] value.
    serial: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
    spec: SessionSpec,
    recorder: Recorder,
    /// Entries done, for the progress.
    pub done: Arc<AtomicU64>,
    done_ids: Arc<Mutex<HashSet<u32>>>,
    /// Tables analyzed (as the dump names them), and how many: the run's count.
    analyzed: Arc<Mutex<HashSet<(String, String)>>>,
    analyzed_count: Arc<AtomicU64>,
    /// Microseconds spent in those `ANALYZE`s, summed over the sessions.
    analyzing: Arc<AtomicU64>,
    /// Tables loaded with `FREEZE` with fewer rows are analyzed without a vacuum
    /// ([`super::analysis`]).
    analyze_only_below: u64,
}

impl Early {
    pub(super) fn new(
        plan: HashMap<u32, Vec<EarlyEntry>>,
        preamble: Vec<String>,
        width: usize,
        spec: SessionSpec,
        recorder: Recorder,
        analyzed_count: Arc<AtomicU64>,
    ) -> Early {
        Early {
            plan: Mutex::new(plan),
            preamble: Arc::new(preamble),
            sessions: Arc::new(Semaphore::new(width.max(1))),
            idle: Arc::new(Mutex::new(Vec::new())),
            tasks: Mutex::new(JoinSet::new()),
            serial: Mutex::new(HashMap::new()),
            spec,
            recorder,
            done: Arc::new(AtomicU64::new(0)),
            done_ids: Arc::new(Mutex::new(HashSet::new())),
            analyzed: Arc::new(Mutex::new(HashSet::new())),
            analyzed_count,
            analyzing: Arc::new(AtomicU64::new(0)),
            analyze_only_below: 0,
        }
    }

    /// Tables loaded with `FREEZE` with fewer than `rows` are analyzed without a vacuum.
    pub(super) fn analyzing_only_below(mut self, rows: u64) -> Early {
        self.analyze_only_below = rows;
        self
    }

    /// Starts the entries that wait for table data `id` (0: those that wait for nothing).
    pub fn launch(&self, id: u32) {
        self.launch_then_analyze(id, None);
    }

    /// The rows of `table` (table data `id`) are in: its entries start, and once the last is
    /// done, the table is analyzed on that entry's session (one of the same `width`), with a
    /// vacuum or not.
    pub(super) fn loaded(&self, id: u32, table: (String, String), vacuum: bool) {
        self.launch_then_analyze(id, Some((table, vacuum)));
    }

    /// The tables this attempt analyzed, as the dump names them.
    pub fn analyzed(&self) -> HashSet<(String, String)> {
        self.analyzed.lock().expect("analyzed lock").clone()
    }

    /// Seconds spent analyzing them, summed over the sessions.
    pub fn analyzing_seconds(&self) -> f64 {
        self.analyzing.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn launch_then_analyze(&self, id: u32, table: Option<((String, String), bool)>) {
        let entries = self
            .plan
            .lock()
            .expect("plan lock")
            .remove(&id)
            .unwrap_or_default();
        // Whoever finishes the table's last entry analyzes it (a table without any: a task of
        // its own).
        let analyze = table.map(|(t, vacuum)| {
            (
                Arc::new(AtomicUsize::new(entries.len())),
                Arc::new((t, vacuum)),
                self.analyzed.clone(),
                (self.analyzed_count.clone(), self.analyzing.clone()),
            )
        });
        if entries.is_empty()
            && let Some((_, table, names, count)) = analyze
        {
            let sessions = self.sessions.clone();
            let idle = self.idle.clone();
            let spec = self.spec.clone();
            let preamble = self.preamble.clone();
            self.tasks.lock().expect("tasks lock").spawn(async move {
                let _permit = sessions.acquire_owned().await.expect("never closed");
                let reused = idle.lock().expect("idle lock").pop();
                let mut session = match reused {
                    Some(s) => s,
                    None => Session::open_spec(&spec).await?,
                };
                session.prepare(&preamble).await?;
                analyze_table(&session, &table, &names, &count).await?;
                idle.lock().expect("idle lock").push(session);
                Ok(id)
            });
            return;
        }
        for entry in entries {
            let sessions = self.sessions.clone();
            let idle = self.idle.clone();
            let spec = self.spec.clone();
            let preamble = self.preamble.clone();
            let recorder = self.recorder.clone();
            let done = self.done.clone();
            let done_ids = self.done_ids.clone();
            let analyze = analyze.clone();
            let serial = entry.serial.map(|key| {
                self.serial
                    .lock()
                    .expect("serial lock")
                    .entry(key)
                    .or_default()
                    .clone()
            });
            self.tasks.lock().expect("tasks lock").spawn(async move {
                // Waiting for the table's other key holds no session.
                let _serial = match &serial {
                    Some(m) => Some(m.lock().await),
                    None => None,
                };
                let _permit = sessions.acquire_owned().await.expect("never closed");
                let reused = idle.lock().expect("idle lock").pop();
                let mut session = match reused {
                    Some(s) => s,
                    None => Session::open_spec(&spec).await?,
                };
                session.prepare(&preamble).await?;
                session
                    .run_entry_recorded(&entry.header, &entry.stmts, Some((&recorder, entry.id)))
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
                done_ids.lock().expect("done lock").insert(entry.id);
                if let Some((left, table, names, count)) = &analyze
                    && left.fetch_sub(1, Ordering::AcqRel) == 1
                {
                    analyze_table(&session, table, names, count).await?;
                }
                idle.lock().expect("idle lock").push(session);
                Ok(entry.id)
            });
        }
    }

    /// The first failure among the entries already finished (a failed index stops the load
    /// without waiting for its end).
    pub(super) fn check(&self) -> Result<(), ApplyError> {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        while let Some(r) = tasks.try_join_next() {
            settled(r)?;
        }
        Ok(())
    }

    /// The sessions the entries ran on, now idle: the post-data section's to reuse, so that
    /// a restore never holds more than its rows' and these at once
    /// ([`crate::replica::sessions::peak_sessions`]).
    pub(super) fn take_sessions(&self) -> Vec<Session> {
        std::mem::take(&mut *self.idle.lock().expect("idle lock"))
    }

    /// Starts what is left (entries whose table loaded nothing in this run), waits for every
    /// entry, and returns the dump ids done.
    pub async fn finish(&self) -> Result<HashSet<u32>, ApplyError> {
        let left: Vec<u32> = self
            .plan
            .lock()
            .expect("plan lock")
            .keys()
            .copied()
            .collect();
        for id in left {
            self.launch(id);
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        while let Some(r) = tasks.join_next().await {
            settled(r)?;
        }
        Ok(self.done_ids.lock().expect("done lock").clone())
    }
}

/// `VACUUM (ANALYZE)` of `table` (its rows and indexes in), or `ANALYZE` alone without
/// `vacuum`, counted.
async fn analyze_table(
    session: &Session,
    (table, vacuum): &((String, String), bool),
    names: &Mutex<HashSet<(String, String)>>,
    (count, micros): &(Arc<AtomicU64>, Arc<AtomicU64>),
) -> Result<(), ApplyError> {
    let (what, sql) = if *vacuum {
        (
            format!("VACUUM ANALYZE of {}.{}", table.0, table.1),
            analyze_sql(&table.0, &table.1),
        )
    } else {
        (
            format!("ANALYZE of {}.{}", table.0, table.1),
            super::analysis::analyze_only_sql(&table.0, &table.1),
        )
    };
    let started = std::time::Instant::now();
    session.execute(&what, &sql).await?;
    micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    names.lock().expect("analyzed lock").insert(table.clone());
    count.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The outcome of one finished entry: its error, or its panic carried on.
fn settled(r: Result<Result<u32, ApplyError>, tokio::task::JoinError>) -> Result<(), ApplyError> {
    match r {
        Ok(result) => result.map(|_| ()),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
