//! When the restore's commits reach the disk.
//!
//! The restore's sessions commit with `synchronous_commit = off`: a commit returns once its
//! WAL record is written, and the server's WAL writer flushes it within a fraction of a second,
//! instead of each commit waiting for its own flush. A restore of many small objects commits
//! thousands of times (each table's rows with their record, each index, each table's
//! analysis), and on a server whose disk flush takes milliseconds that wait was most of the
//! time per object (docs/performance.md, "Many objects").
//!
//! What it risks is only what a crash of the *server* (not of the replicator) could lose: the
//! last commits before it, whole and in order, since the WAL is one sequence. A table's rows
//! commit with their record (`replica/records.rs`), so a lost commit loses both, and the
//! resumed load reloads that table: the records still say exactly what the target holds.
//! What a later step relies on is made durable before the step ends ([`flush`]): a commit
//! that waits for the flush of its WAL waits for everything written before it.

use super::url::PgEndpoint;
use crate::replica::PostgresError;

/// The restore's sessions' setting (any role may set it).
pub const ASYNC_COMMIT_SQL: &str = "SET synchronous_commit = off";

/// A transaction that commits durably: its own commit record (the transaction id makes one)
/// is flushed, and with it every commit of any session written before it.
pub const FLUSH_SQL: &str =
    "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_catalog.txid_current(); COMMIT";

/// Waits until every commit the target's sessions made so far is on disk: the end of a step
/// whose work a later step (or a resumed run) relies on.
pub async fn flush(target: &PgEndpoint) -> Result<(), PostgresError> {
    let client = target.connect_as(super::RESTORE_APPLICATION_NAME).await?;
    client
        .batch_execute(FLUSH_SQL)
        .await
        .map_err(|e| target.query_error("flushing the restore's commits to disk", e))
}
