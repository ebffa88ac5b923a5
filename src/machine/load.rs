//! How a run gets its rows: whole on disk first, or streamed under a disk budget; and how far
//! the load of the rows is, table by table, as the target's own records say.

use serde::{Deserialize, Serialize};

/// How the archive reaches the restore, decided once per run before its first byte
/// ([`super::work_mode`]), and shown by `status`, the logs and `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum WorkMode {
    /// The backup is downloaded and checked whole before the wipe: the safe default, when it
    /// fits the disk budget (or its size is unknown).
    Whole {
        /// Bytes the archive and the dump need on disk (`None`: not known).
        needed: Option<u64>,
        /// `MAX_WORK_DISK`, or what the state directory's free space allows.
        budget: Option<u64>,
    },
    /// The backup does not fit: its bytes flow from the download into the target through a
    /// spool of at most `budget` bytes. The dump's header and table of contents are checked
    /// before the wipe; a dump cut in its data is found after it, and retried.
    Streaming { needed: u64, budget: u64 },
    /// `pg_dump` of a live database (`SOURCE_DATABASE_URL`), streamed: never on disk.
    Live,
}

impl WorkMode {
    /// Whether the restore reads the archive as a stream (no dump on disk).
    pub fn streams(&self) -> bool {
        !matches!(self, WorkMode::Whole { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            WorkMode::Whole { .. } => "whole",
            WorkMode::Streaming { .. } => "streaming",
            WorkMode::Live => "live",
        }
    }

    /// `streaming: the backup needs about 620 MiB on disk, MAX_WORK_DISK allows 64 MiB`.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b >> 20;
        match self {
            WorkMode::Whole {
                needed: Some(n),
                budget: Some(b),
            } => format!(
                "whole: the archive and the dump need about {} MiB on disk, within the budget of {} MiB; the dump is checked whole before the wipe",
                mib(*n),
                mib(*b)
            ),
            WorkMode::Whole { .. } => {
                "whole: downloaded and checked before the wipe (its size or the free disk is unknown, so it is not streamed)".to_string()
            }
            WorkMode::Streaming { needed, budget } => format!(
                "streaming: the archive and the dump need about {} MiB on disk, more than the budget of {} MiB (MAX_WORK_DISK); rows flow from the download into the target, a dump cut in its data is found only after the wipe and retried from the download",
                mib(*needed),
                mib(*budget)
            ),
            WorkMode::Live => {
                "live: pg_dump of SOURCE_DATABASE_URL streams into the target (one snapshot, nothing on disk)".to_string()
            }
        }
    }
}

/// One table's rows, committed in the target with the record that says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLoad {
    /// `schema.table`.
    pub table: String,
    pub rows: u64,
    /// Bytes of `COPY` text sent.
    pub bytes: u64,
}

/// How far the load of the rows is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadCounts {
    /// Tables whose rows are in (committed, with their record).
    pub tables_done: u64,
    /// Tables whose rows this run loads.
    pub tables_total: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Of `tables_done`, those an earlier attempt or process loaded (found in the target's
    /// records when this attempt started: not loaded again).
    #[serde(default)]
    pub resumed: u64,
    /// Relations (tables, partitioned tables, materialized views) this attempt `ANALYZE`d once
    /// their rows and indexes were in: the planner's statistics of the replica. Absent (0) in
    /// records written before the replicator analyzed.
    #[serde(default)]
    pub analyzed: u64,
}

impl LoadCounts {
    /// `12/40 tables, 1200000 rows, 300 MiB (5 already in the target from an earlier attempt),
    /// 10 relations analyzed`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}/{} tables, {} rows, {} MiB",
            self.tables_done,
            self.tables_total,
            self.rows,
            self.bytes >> 20
        );
        if self.resumed > 0 {
            s.push_str(&format!(
                " ({} already in the target from an earlier attempt)",
                self.resumed
            ));
        }
        if self.analyzed > 0 {
            s.push_str(&format!(", {} relations analyzed", self.analyzed));
        }
        s
    }
}
