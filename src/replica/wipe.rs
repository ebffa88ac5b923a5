//! The wipe: leftover restore sessions ended, then `DROP OWNED BY CURRENT_USER CASCADE`.

use std::time::Duration;

use tokio_postgres::Client;

use super::LOCK_TIMEOUT;
use super::restore::RESTORE_APPLICATION_NAME;
use super::sqlstate::PostgresError;
use super::url::{CONTROL_APPLICATION_NAME, PgEndpoint};
use crate::error::StepError;

/// Ends the sessions a previous, killed replicator's `pg_restore` may have left running (a
/// `CREATE INDEX` keeps going server-side after its client died), so that they neither hold
/// locks against [`drop_owned`] nor write into the fresh copy. Returns how many were ended.
pub async fn terminate_leftover_restores(target: &PgEndpoint) -> Result<u64, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let select = "SELECT pid FROM pg_stat_activity
                   WHERE usename = current_user AND datname = current_database()
                     AND application_name = $1 AND pid <> pg_backend_pid()";
    let rows = client
        .query(
            &format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ({select}) s"),
            &[&RESTORE_APPLICATION_NAME],
        )
        .await
        .map_err(|e| target.query_error("ending leftover pg_restore sessions", e))?;
    let n = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64;
    if n > 0 {
        // pg_terminate_backend only signals: wait (briefly) until they are gone, so that their
        // locks are released before the wipe.
        for _ in 0..100 {
            let left = client
                .query(
                    &format!("SELECT count(*) FROM ({select}) s"),
                    &[&RESTORE_APPLICATION_NAME],
                )
                .await
                .map_err(|e| target.query_error("waiting for leftover sessions to end", e))?;
            if left.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(target = %target.describe(), sessions = n, "ended leftover pg_restore sessions");
    }
    Ok(n)
}

/// What [`drop_owned`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropOutcome {
    /// Tables of schema public before the wipe.
    pub tables_before: u64,
    /// Whether `public` had to be created again (it is dropped when the role owns it).
    pub public_recreated: bool,
}

/// Wipes everything the role owns (`DROP OWNED BY CURRENT_USER CASCADE`) and makes sure schema
/// `public` exists again for the restore.
/// `keep`: statements run in the same transaction (the readers' views' definitions, kept in
/// `replicator.kept_definitions`, which the wipe would drop otherwise).
pub async fn drop_owned(target: &PgEndpoint, keep: &[String]) -> Result<DropOutcome, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let tables_before = count_tables_with(&client, target).await?;
    // The tables first, in batches the lock table holds: one DROP OWNED over thousands of
    // relations runs out of shared memory, and the target could never be refreshed again.
    super::swap::drop_tables_in_batches(target, &client, None).await?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{LOCK_TIMEOUT}'; BEGIN; DROP OWNED BY CURRENT_USER CASCADE; {} COMMIT",
            keep.iter().map(|k| format!("{k}; ")).collect::<String>()
        ))
        .await
        .map_err(|e| target.query_error("DROP OWNED BY CURRENT_USER CASCADE", e))?;
    let public_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')",
            &[],
        )
        .await
        .map_err(|e| target.query_error("looking for schema public", e))?
        .get(0);
    if !public_exists {
        client
            .batch_execute("CREATE SCHEMA IF NOT EXISTS public")
            .await
            .map_err(|e| target.query_error("creating schema public", e))?;
    }
    let outcome = DropOutcome {
        tables_before,
        public_recreated: !public_exists,
    };
    tracing::info!(
        target = %target.describe(),
        tables_dropped = tables_before,
        public_recreated = outcome.public_recreated,
        "dropped everything the role owns"
    );
    Ok(outcome)
}

/// Ordinary and partitioned tables of schema public.
pub async fn count_tables(target: &PgEndpoint) -> Result<u64, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    Ok(count_tables_with(&client, target).await?)
}

async fn count_tables_with(client: &Client, target: &PgEndpoint) -> Result<u64, PostgresError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .map_err(|e| target.query_error("counting tables", e))?;
    Ok(row.get::<_, i64>(0) as u64)
}
