//! The records of a load and the work that starts as soon as one table's rows are in.
//!
//! - [`LoadLog`]: which dump entry a piece of pg_restore's script belongs to (the script names
//!   entries by kind, schema and tag, not by dump id), the record of each entry written in the
//!   target in the same transaction as its work ([`crate::replica::records`]), and the tables
//!   loaded, for the run's `TableLoaded` events.
//! - [`Early`]: a table's indexes and its primary key, unique and check constraints, built as
//!   soon as its rows are committed, on sessions of their own, while the next tables load (as
//!   pgcopydb does); a key as a unique index first, beside the table's other indexes
//!   ([`super::keys`]). The rest of the post-data section (foreign keys, triggers, index
//!   attachments, refreshes) waits for every row.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// A table's rows are in (committed with their record).
    pub(super) fn table_loaded(&self, id: u32, h: &EntryHeader, rows: u64, bytes: u64) {
        self.tables.lock().expect("tables lock").push(TableLoad {
            table: format!("{}.{}", h.schema, h.name),
            rows,
            bytes,
        });
        if let Some(early) = &self.early {
            early.launch(id);
        }
    }
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
}

impl Early {
    pub(super) fn new(
        plan: HashMap<u32, Vec<EarlyEntry>>,
        preamble: Vec<String>,
        width: usize,
        spec: SessionSpec,
        recorder: Recorder,
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
        }
    }

    /// Starts the entries that wait for table data `id` (0: those that wait for nothing).
    pub fn launch(&self, id: u32) {
        let entries = self.plan.lock().expect("plan lock").remove(&id);
        for entry in entries.into_iter().flatten() {
            let sessions = self.sessions.clone();
            let idle = self.idle.clone();
            let spec = self.spec.clone();
            let preamble = self.preamble.clone();
            let recorder = self.recorder.clone();
            let done = self.done.clone();
            let done_ids = self.done_ids.clone();
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
                idle.lock().expect("idle lock").push(session);
                done.fetch_add(1, Ordering::Relaxed);
                done_ids.lock().expect("done lock").insert(entry.id);
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

/// The outcome of one finished entry: its error, or its panic carried on.
fn settled(r: Result<Result<u32, ApplyError>, tokio::task::JoinError>) -> Result<(), ApplyError> {
    match r {
        Ok(result) => result.map(|_| ()),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
