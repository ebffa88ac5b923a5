//! What a run has loaded into the target, recorded in the target itself (table
//! `replicator.loaded`), each record committed with, or right after, what it records.
//!
//! An index's record commits in its transaction; a table's in the transaction that empties it
//! (`TRUNCATE ONLY`: rows an interrupted attempt left go) and loads its rows (`COPY ...
//! FREEZE`). So after a crash a table is either loaded and recorded, or
//! loaded again from empty: a run resumed from any container, even one with an empty state
//! directory, skips exactly the entries the target holds, loads no row twice, and ends as a run
//! that never stopped. The wipe (`DROP OWNED`) removes the records
//! with the rest: they never outlive the schema they describe.

use std::collections::HashSet;

use crate::replica::{CONTROL_APPLICATION_NAME, PgEndpoint, PostgresError};

/// Creates the records' table (after the wipe, before the rows). Quiet when it exists.
pub const CREATE_SQL: &str = "SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS replicator;
CREATE TABLE IF NOT EXISTS replicator.loaded (
    run_id text NOT NULL,
    dump_id integer NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    rows bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, dump_id)
);
COMMENT ON TABLE replicator.loaded IS 'Dump entries the replicator''s run has loaded into this database, each committed with what it loaded: what a resumed run skips.';
RESET client_min_messages";

/// Forgets every run's records, when the table exists: for a build whose shadows were dropped
/// (`swap::drop_leftovers`), where the wipe's `DROP OWNED` takes the table with it.
pub const FORGET_ALL_SQL: &str = "DO $replicator$ BEGIN
      IF to_regclass('replicator.loaded') IS NOT NULL THEN TRUNCATE replicator.loaded; END IF;
    END $replicator$";

/// The dump id under which the foreign keys added after the rows (`FK_MODE=trust`) are
/// recorded: not an entry of the dump (dump ids start at 1).
pub const FOREIGN_KEYS_ID: i32 = -1;

/// Writes and reads the records of one run.
#[derive(Clone, Debug)]
pub struct Recorder {
    run_id: String,
}

/// `'text'` with its quotes doubled: the records are written inside the transaction's own
/// batch (one round trip), where no parameter can be bound.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Recorder {
    pub fn new(run_id: &str) -> Recorder {
        Recorder {
            run_id: run_id.to_string(),
        }
    }

    /// The statement that records entry `dump_id`, to run before the `COMMIT` of its work.
    pub fn insert_sql(
        &self,
        dump_id: i32,
        kind: &str,
        name: &str,
        rows: u64,
        bytes: u64,
    ) -> String {
        format!(
            "INSERT INTO replicator.loaded (run_id, dump_id, kind, name, rows, bytes) VALUES ({}, {dump_id}, {}, {}, {rows}, {bytes}) ON CONFLICT (run_id, dump_id) DO NOTHING",
            literal(&self.run_id),
            literal(kind),
            literal(name)
        )
    }

    /// Creates the table if needed.
    pub async fn prepare(&self, target: &PgEndpoint) -> Result<(), PostgresError> {
        let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
        client
            .batch_execute(CREATE_SQL)
            .await
            .map_err(|e| target.query_error("creating table replicator.loaded", e))
    }

    /// The entries this run already loaded, with the rows and bytes of its tables.
    pub async fn loaded(&self, target: &PgEndpoint) -> Result<Loaded, PostgresError> {
        let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
        let exists = client
            .query_one("SELECT to_regclass('replicator.loaded') IS NOT NULL", &[])
            .await
            .map_err(|e| target.query_error("reading replicator.loaded", e))?
            .get::<_, bool>(0);
        let mut out = Loaded::default();
        if !exists {
            return Ok(out);
        }
        let rows = client
            .query(
                "SELECT dump_id, kind, rows, bytes FROM replicator.loaded WHERE run_id = $1",
                &[&self.run_id],
            )
            .await
            .map_err(|e| target.query_error("reading replicator.loaded", e))?;
        for r in rows {
            let id: i32 = r.get(0);
            let kind: String = r.get(1);
            out.ids.insert(id);
            if kind == "TABLE DATA" {
                out.tables += 1;
                out.rows += r.get::<_, i64>(2).max(0) as u64;
                out.bytes += r.get::<_, i64>(3).max(0) as u64;
            }
        }
        Ok(out)
    }
}

/// What the target's records say a run already loaded.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Dump ids (and [`FOREIGN_KEYS_ID`]).
    pub ids: HashSet<i32>,
    pub tables: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl Loaded {
    /// The dump entries among them (for a restore's skip list).
    pub fn entries(&self) -> HashSet<u32> {
        self.ids
            .iter()
            .filter_map(|id| u32::try_from(*id).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_quotes_what_it_writes() {
        let r = Recorder::new("20261129T000000Z-ab'c");
        let sql = r.insert_sql(42, "TABLE DATA", "public.o'neil", 3, 120);
        assert!(
            sql.contains("'20261129T000000Z-ab''c', 42, 'TABLE DATA', 'public.o''neil', 3, 120"),
            "{sql}"
        );
    }
}
