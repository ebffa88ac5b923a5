//! The runs, recorded in the target database too (schema `replicator`, table `runs`).
//!
//! On Scalingo, `scalingo run replicator status` starts a new container that cannot see the
//! daemon's disk, and a restarted container starts with an empty one. The target database is
//! the one place every container reaches, so each run writes its record there as well, and
//! `status` reads it when its own state directory knows no run (or with `--from-target`).
//!
//! When the target is written, and why:
//!
//! - Not before the run has wiped the target (`Dropping` succeeded): a run bound to fail (bad
//!   token, unreadable dump, target refused) creates nothing in the target. Its final `Failed`
//!   record is still written, but only into a `replicator.runs` that an earlier run created:
//!   a target the replicator never restored into stays untouched.
//! - `DROP OWNED BY CURRENT_USER CASCADE` drops the schema with everything else the role owns.
//!   So the finished runs are read from the target before the run starts (a read changes
//!   nothing) and written back, with the current run, at the first write after the wipe.
//! - `pg_restore --schema=public` never touches schema `replicator`.
//! - Writes are best effort: a target that does not answer costs a warning, never the run.
//!   Transitions are always written; progress at most every [`PROGRESS_WRITE_EVERY`].
//!
//! Whether a run recorded there is live is read from the replicator's advisory lock on the
//! target (`pg_locks`), which any session of any container can see.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::machine::{Phase, PhaseName, Run};
use crate::replica::{LOCK_KEY, PgEndpoint};
use crate::state::store::HISTORY_LEN;

/// Progress is written to the target at most this often (transitions always are).
pub const PROGRESS_WRITE_EVERY: Duration = Duration::from_secs(15);

/// One write (connect included) may take this long before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A read for `status` or `check` may take this long.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Run before each write: `IF NOT EXISTS` would otherwise send a NOTICE ("schema
/// \"replicator\" already exists, skipping") that lands in the logs at every transition.
const CREATE_SQL: &str = "SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS replicator;
CREATE TABLE IF NOT EXISTS replicator.runs (
    run_id text PRIMARY KEY,
    record jsonb NOT NULL,
    finished boolean NOT NULL,
    started_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    written_by text NOT NULL
);
COMMENT ON TABLE replicator.runs IS 'Runs of the replicator that restores this database (replicator status --from-target). Rewritten at each run.'";

const UPSERT_SQL: &str = "INSERT INTO replicator.runs
        (run_id, record, finished, started_at, updated_at, written_by)
    VALUES ($1, $2::text::jsonb, $3, $4, $5, $6)
    ON CONFLICT (run_id) DO UPDATE SET
        record = EXCLUDED.record, finished = EXCLUDED.finished,
        updated_at = EXCLUDED.updated_at, written_by = EXCLUDED.written_by
    WHERE replicator.runs.updated_at <= EXCLUDED.updated_at";

/// Keeps the newest finished runs and the one being written: an unfinished record of another
/// run was left by a process whose disk is gone (nobody can resume it any more).
const PRUNE_SQL: &str = "DELETE FROM replicator.runs
    WHERE run_id <> $1
      AND (NOT finished
           OR run_id NOT IN (SELECT run_id FROM replicator.runs WHERE finished
                             ORDER BY started_at DESC, run_id DESC LIMIT $2))";

/// What went wrong with the replicator's records in the target.
#[derive(Debug, thiserror::Error)]
pub enum RemoteStateError {
    #[error("cannot connect to the target to {what}: {detail}")]
    Connect { what: &'static str, detail: String },
    #[error(
        "cannot {what} in schema replicator of the target {target}: {detail}; check that the role of DATABASE_URL still owns the database"
    )]
    Query {
        what: &'static str,
        target: String,
        detail: String,
    },
    #[error(
        "the target {target} holds a record of run {run_id} that this version cannot read ({detail}); it is rewritten by the next run, or drop it with `DROP SCHEMA replicator CASCADE`"
    )]
    Decode {
        target: String,
        run_id: String,
        detail: String,
    },
    #[error(
        "the target {target} did not answer within {}s while trying to {what}; check that it is up and reachable from here",
        .waited.as_secs()
    )]
    Timeout {
        what: &'static str,
        target: String,
        waited: Duration,
    },
}

/// `tokio_postgres::Error`'s `Display` is only "db error": add the server's message.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// Who wrote a record: `pid 123 on host replica-background-1`. Another container cannot
/// signal that pid, but it tells an operator which container ran the run.
pub fn this_process() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into a buffer we own.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".to_string()
    };
    format!("pid {} on host {host}", std::process::id())
}

/// The runs recorded in the target.
#[derive(Debug, Default)]
pub struct RemoteRuns {
    /// The most recently started run, finished or not.
    pub current: Option<Run>,
    /// `written_by` of the current run's record.
    pub current_written_by: Option<String>,
    /// Finished runs, newest first.
    pub history: Vec<Run>,
    /// Whether schema `replicator` exists at all (no run ever got past its wipe otherwise).
    pub schema_exists: bool,
    /// Whether a session holds the replicator's advisory lock: a run is live somewhere.
    pub lock_held: bool,
}

/// Reads the runs recorded in the target, and whether a replicator holds it now.
pub async fn read(target: &PgEndpoint) -> Result<RemoteRuns, RemoteStateError> {
    let what = "read the replicator's records";
    match tokio::time::timeout(READ_TIMEOUT, read_inner(target)).await {
        Ok(r) => r,
        Err(_) => Err(RemoteStateError::Timeout {
            what,
            target: target.describe(),
            waited: READ_TIMEOUT,
        }),
    }
}

async fn connect(target: &PgEndpoint, what: &'static str) -> Result<Client, RemoteStateError> {
    target
        .connect()
        .await
        .map_err(|e| RemoteStateError::Connect {
            what,
            detail: e.to_string(),
        })
}

async fn read_inner(target: &PgEndpoint) -> Result<RemoteRuns, RemoteStateError> {
    let client = connect(target, "read the replicator's records").await?;
    let query = |what: &'static str| {
        let target = target.describe();
        move |e: tokio_postgres::Error| RemoteStateError::Query {
            what,
            target,
            detail: pg_detail(&e),
        }
    };
    // A bigint advisory key shows in pg_locks as classid = high half, objid = low half.
    let row = client
        .query_one(
            "SELECT to_regclass('replicator.runs') IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_locks
                             WHERE locktype = 'advisory' AND granted AND objsubid = 1
                               AND database = (SELECT oid FROM pg_database
                                                WHERE datname = current_database())
                               AND classid::bigint = $1 AND objid::bigint = $2)",
            &[&(LOCK_KEY >> 32), &(LOCK_KEY & 0xffff_ffff)],
        )
        .await
        .map_err(query("look for schema replicator"))?;
    let mut runs = RemoteRuns {
        schema_exists: row.get(0),
        lock_held: row.get(1),
        ..RemoteRuns::default()
    };
    if !runs.schema_exists {
        return Ok(runs);
    }
    let rows = client
        .query(
            "SELECT run_id, record::text, finished, written_by FROM replicator.runs
              ORDER BY started_at DESC, run_id DESC LIMIT $1",
            &[&((HISTORY_LEN + 1) as i64)],
        )
        .await
        .map_err(query("read the runs"))?;
    for (i, row) in rows.iter().enumerate() {
        let run_id: String = row.get(0);
        let record: String = row.get(1);
        let run: Run = serde_json::from_str(&record).map_err(|e| RemoteStateError::Decode {
            target: target.describe(),
            run_id: run_id.clone(),
            detail: e.to_string(),
        })?;
        if i == 0 {
            runs.current = Some(run.clone());
            runs.current_written_by = Some(row.get(3));
        }
        if row.get::<_, bool>(2) {
            runs.history.push(run);
        }
    }
    runs.history.truncate(HISTORY_LEN);
    Ok(runs)
}

/// Whether a run in `phase` may write to the target: only once the target was wiped by this
/// run (the replica is being replaced anyway), or when it ends.
fn past_the_wipe(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::Restoring { .. }
            | Phase::Unlogging { .. }
            | Phase::Switching { .. }
            | Phase::PostRestoreSql { .. }
    ) || matches!(phase, Phase::Done { .. })
        || matches!(
            phase,
            Phase::Failed {
                failed_in: PhaseName::Restoring
                    | PhaseName::Unlogging
                    | PhaseName::Switching
                    | PhaseName::PostRestoreSql,
                ..
            }
        )
}

/// Why a record is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A phase change, a retry, an interruption: always written (when allowed).
    Transition,
    /// A progress update: throttled.
    Progress,
}

struct WriterState {
    client: Option<Client>,
    /// Finished runs to write back after the wipe: the target's and the local history's.
    carried: Vec<Run>,
    last_progress: Option<Instant>,
    warned: bool,
}

/// The driver's writer of run records into the target: best effort, never fails a run.
pub struct RemoteWriter {
    target: PgEndpoint,
    written_by: String,
    state: tokio::sync::Mutex<WriterState>,
}

impl RemoteWriter {
    pub fn new(target: PgEndpoint) -> RemoteWriter {
        RemoteWriter {
            target,
            written_by: this_process(),
            state: tokio::sync::Mutex::new(WriterState {
                client: None,
                carried: Vec::new(),
                last_progress: None,
                warned: false,
            }),
        }
    }

    /// Remembers the finished runs to write back after the wipe: those the target records
    /// now, and `local` (this state directory's history). Reads only.
    pub async fn prepare(&self, local: &[Run]) {
        let mut carried: Vec<Run> = match read(&self.target).await {
            Ok(remote) => remote.history,
            Err(e) => {
                debug!(error = %e, "could not read the runs recorded in the target");
                Vec::new()
            }
        };
        for run in local {
            if !carried.iter().any(|r| r.run_id == run.run_id) {
                carried.push(run.clone());
            }
        }
        carried.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        carried.truncate(HISTORY_LEN);
        self.state.lock().await.carried = carried;
    }

    /// The newest `Done` run known here or in the target (read by [`RemoteWriter::prepare`]).
    pub async fn last_done(&self) -> Option<Run> {
        self.state
            .lock()
            .await
            .carried
            .iter()
            .find(|r| matches!(r.phase, Phase::Done { .. }))
            .cloned()
    }

    /// Records `run` in the target when its phase allows it (see the module's doc). Never
    /// fails: a failure is logged (a warning the first time, then at debug level).
    pub async fn publish(&self, run: &Run, why: Write) {
        let mut state = self.state.lock().await;
        let full = past_the_wipe(&run.phase);
        // An early failure is recorded only where a previous run already keeps records.
        let early_end = run.is_terminal() && !full;
        if !full && !early_end {
            return;
        }
        if why == Write::Progress {
            if state
                .last_progress
                .is_some_and(|at| at.elapsed() < PROGRESS_WRITE_EVERY)
            {
                return;
            }
            state.last_progress = Some(Instant::now());
        }
        let result = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.write(&mut state, run, why == Write::Transition && full, early_end),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RemoteStateError::Timeout {
                what: "record the run",
                target: self.target.describe(),
                waited: WRITE_TIMEOUT,
            })
        });
        // The daemon keeps its driver for months: no idle session on the target between nights
        // (a small addon allows few connections).
        if run.is_terminal() || run.interrupted {
            state.client = None;
        }
        if let Err(e) = result {
            state.client = None;
            if state.warned {
                debug!(error = %e, "could not record the run in the target");
            } else {
                state.warned = true;
                warn!(
                    run_id = %run.run_id,
                    "could not record the run in the target ({e}); the run goes on, and `replicator status` in another container may show an older state"
                );
            }
        }
    }

    async fn write(
        &self,
        state: &mut WriterState,
        run: &Run,
        with_carried: bool,
        only_if_exists: bool,
    ) -> Result<(), RemoteStateError> {
        let client = match state.client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => connect(&self.target, "record the run").await?,
        };
        let query = |what: &'static str| {
            let target = self.target.describe();
            move |e: tokio_postgres::Error| RemoteStateError::Query {
                what,
                target,
                detail: pg_detail(&e),
            }
        };
        if only_if_exists {
            let exists: bool = client
                .query_one("SELECT to_regclass('replicator.runs') IS NOT NULL", &[])
                .await
                .map_err(query("look for schema replicator"))?
                .get(0);
            if !exists {
                debug!(
                    "the target keeps no run records yet: the early failure is not written there"
                );
                state.client = Some(client);
                return Ok(());
            }
        } else {
            client
                .batch_execute(CREATE_SQL)
                .await
                .map_err(query("create the table replicator.runs"))?;
        }
        let mut records: Vec<&Run> = Vec::new();
        if with_carried {
            records.extend(state.carried.iter().filter(|r| r.run_id != run.run_id));
        }
        records.push(run);
        for r in records {
            let json = serde_json::to_string(r).expect("a Run always serializes");
            let updated: DateTime<Utc> = r.updated_at;
            client
                .execute(
                    UPSERT_SQL,
                    &[
                        &r.run_id,
                        &json,
                        &r.is_terminal(),
                        &r.started_at,
                        &updated,
                        &self.written_by,
                    ],
                )
                .await
                .map_err(query("write a run"))?;
        }
        client
            .execute(PRUNE_SQL, &[&run.run_id, &(HISTORY_LEN as i64)])
            .await
            .map_err(query("prune old runs"))?;
        state.client = Some(client);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Backup, Section};

    fn backup() -> Backup {
        Backup {
            id: "b".into(),
            name: "n".into(),
            created_at: None,
            size: None,
        }
    }

    #[test]
    fn nothing_is_written_before_the_wipe_except_an_ending() {
        let b = backup();
        for phase in [
            Phase::Idle,
            Phase::FetchingUrl,
            Phase::Downloading {
                backup: b.clone(),
                bytes_done: 0,
            },
            Phase::Extracting { backup: b.clone() },
            Phase::Dropping { backup: b.clone() },
            Phase::Failed {
                failed_in: PhaseName::Extracting,
                backup: Some(b.clone()),
            },
            Phase::Failed {
                failed_in: PhaseName::Dropping,
                backup: Some(b.clone()),
            },
        ] {
            assert!(!past_the_wipe(&phase), "{phase:?}");
        }
        for phase in [
            Phase::Restoring {
                backup: b.clone(),
                section: Section::PreData,
            },
            Phase::Unlogging { backup: b.clone() },
            Phase::Done { backup: b.clone() },
            Phase::Failed {
                failed_in: PhaseName::Restoring,
                backup: Some(b),
            },
        ] {
            assert!(past_the_wipe(&phase), "{phase:?}");
        }
    }

    #[test]
    fn the_writer_names_its_process() {
        let w = this_process();
        assert!(
            w.starts_with(&format!("pid {} on host ", std::process::id())),
            "{w}"
        );
    }
}
