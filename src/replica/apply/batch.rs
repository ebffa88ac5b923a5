//! The schema's statements sent many to a round trip.
//!
//! The pre-data section commits its statements [`super::PRE_DATA_BATCH`] at a time; each of
//! them used to be a round trip of its own, and a schema of thousands of tables is tens of
//! thousands of small statements, each waiting for the one before. A batch is now one
//! transaction sent as one message. Its first error aborts it whole: the transaction is
//! rolled back and the batch run again one statement at a time, which stops at that same
//! statement and names its dump entry, as a restore one statement at a time would.

use super::ApplyError;
use super::session::Session;

/// Statements waiting to be sent, each with the dump entry it belongs to.
#[derive(Default)]
pub(super) struct Batch {
    stmts: Vec<(String, String)>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.stmts.len()
    }

    /// Adds `stmt`, of `entry` (as errors name it).
    pub(super) fn push(&mut self, entry: String, stmt: String) {
        self.stmts.push((entry, stmt));
    }

    /// Runs the statements in one transaction, and empties the batch.
    pub(super) async fn commit(&mut self, session: &Session) -> Result<(), ApplyError> {
        let stmts = std::mem::take(&mut self.stmts);
        if stmts.is_empty() {
            return Ok(());
        }
        // In swap mode a large object's statements are kept for the switch, one by one: a
        // batch with one goes one statement at a time.
        if let Some(sql) = session.joined(stmts.iter().map(|(_, s)| s.as_str())) {
            if session
                .execute_all(&format!("BEGIN;\n{sql}COMMIT"))
                .await
                .is_ok()
            {
                return Ok(());
            }
            // Rolled back whole: again one at a time, to name the statement that fails.
            let _ = session.execute_all("ROLLBACK").await;
        }
        let first = stmts.first().map(|(e, _)| e.as_str()).unwrap_or_default();
        session.execute(first, "BEGIN").await?;
        for (entry, stmt) in &stmts {
            session.execute(entry, stmt).await?;
        }
        session.execute(first, "COMMIT").await
    }
}
