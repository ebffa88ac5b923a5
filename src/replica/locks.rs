//! The server's lock table against what one transaction of the replicator would lock.
//!
//! A transaction holds a lock on every relation it creates or drops until it ends, and the
//! server's lock table holds `max_locks_per_transaction x (max_connections +
//! max_prepared_transactions)` of them for all sessions together: a wipe or a rehearsal of a
//! schema of thousands of tables in one transaction fails with `out of shared memory` for that
//! alone. What is done in one transaction is sized from these figures.

use super::url::PgEndpoint;
use crate::error::StepError;

/// The lock table's size, and the relations the role owns in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockBudget {
    /// `max_locks_per_transaction x (max_connections + max_prepared_transactions)`.
    pub capacity: u64,
    /// Relations (tables, indexes, sequences, views, TOAST tables) the role owns.
    pub owned: u64,
}

pub const BUDGET_SQL: &str = "SELECT (current_setting('max_locks_per_transaction')::bigint
          * (current_setting('max_connections')::bigint
             + current_setting('max_prepared_transactions')::bigint)),
        (SELECT count(*) FROM pg_class
          WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user))";

/// Reads the lock table's size and the role's relations from the target.
pub async fn budget(target: &PgEndpoint) -> Result<LockBudget, StepError> {
    let client = target.connect().await?;
    let row = client
        .query_one(BUDGET_SQL, &[])
        .await
        .map_err(|e| target.query_error("reading the server's lock table size", e))?;
    Ok(LockBudget {
        capacity: row.get::<_, i64>(0).max(0) as u64,
        owned: row.get::<_, i64>(1).max(0) as u64,
    })
}

/// About how many relations (so locks) restoring a dump entry of kind `desc` creates: a
/// table with its TOAST table and index, an index, a sequence, a view.
pub fn relations_of(desc: &str) -> u64 {
    match desc {
        "TABLE" | "MATERIALIZED VIEW" => 3,
        "INDEX" | "CONSTRAINT" | "SEQUENCE" | "VIEW" | "FOREIGN TABLE" => 1,
        _ => 0,
    }
}

impl LockBudget {
    /// How many tables one transaction of a drop takes at a time: each takes a few locks (its
    /// indexes, TOAST, sequences), and a batch takes an eighth of the table's room, leaving the
    /// rest to everyone else.
    pub fn drop_batch(&self) -> usize {
        (self.capacity / 8 / 4).clamp(16, 2000) as usize
    }

    /// `check`'s line: the role's relations against the lock table.
    pub fn describe(&self) -> String {
        format!(
            "the target holds {} relations of the role; the server's lock table holds {} locks (max_locks_per_transaction x (max_connections + max_prepared_transactions)); drops go {} tables per transaction",
            self.owned,
            self.capacity,
            self.drop_batch()
        )
    }
}
