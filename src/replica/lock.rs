//! One replicator per target: the advisory lock, held by a dedicated session for the run.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::sqlstate::{PostgresError, Side, classify, error_text};
use super::url::PgEndpoint;
use crate::error::StepError;

/// The advisory lock key every replicator takes on its target: the ASCII bytes of "replicat".
/// Fixed forever: two versions of the replicator must exclude each other too.
pub const LOCK_KEY: i64 = i64::from_be_bytes(*b"replicat");

/// `application_name` of the session that holds [`LOCK_KEY`], so that a second replicator (or a
/// human in `pg_stat_activity`) can see who holds the target.
pub const LOCK_APPLICATION_NAME: &str = "replicator lock";

/// The advisory lock on the target, held by a dedicated session for the whole run. Dropping it
/// closes the session, which releases the lock (so does the death of the process).
pub struct TargetLock {
    client: Client,
    target: String,
}

impl fmt::Debug for TargetLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetLock({})", self.target)
    }
}

impl TargetLock {
    /// False once the session is gone (server restart, network cut): the lock is then lost and
    /// another replicator may take it, so the driver should stop and retry.
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }

    /// Round-trips to the server: proves the session, hence the lock, still exists.
    pub async fn check(&self) -> Result<(), StepError> {
        self.client.simple_query("SELECT 1").await.map_err(|e| {
            let (_, hint) = classify(&e);
            PostgresError::Query {
                side: Side::Target,
                target: self.target.clone(),
                what: "checking the advisory lock's session",
                detail: error_text(&e),
                hint,
                // A lost lock is always worth a new attempt: the next one takes it again.
                transient: true,
            }
        })?;
        Ok(())
    }

    /// Releases the lock and waits until the server confirmed it (a plain drop releases it
    /// too, but asynchronously).
    pub async fn release(self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
    }
}

/// The outcome of [`lock_target`].
#[derive(Debug)]
pub enum LockOutcome {
    Acquired(TargetLock),
    /// Another session holds the lock. `since` is its `backend_start`, `holder` says who it is,
    /// when `pg_stat_activity` lets this role see it.
    Held {
        since: Option<String>,
        holder: Option<String>,
    },
}

/// Takes the replicator's advisory lock on the target, without waiting.
pub async fn lock_target(target: &PgEndpoint) -> Result<LockOutcome, StepError> {
    let client = target.connect_as(LOCK_APPLICATION_NAME).await?;
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| target.query_error("taking the advisory lock", e))?;
    if row.get::<_, bool>(0) {
        tracing::info!(target = %target.describe(), "advisory lock acquired");
        return Ok(LockOutcome::Acquired(TargetLock {
            client,
            target: target.describe(),
        }));
    }
    // A bigint advisory key shows in pg_locks as classid = high half, objid = low half,
    // objsubid = 1.
    let classid = LOCK_KEY >> 32;
    let objid = LOCK_KEY & 0xffff_ffff;
    let rows = client
        .query(
            "SELECT to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    a.pid, a.usename::text, a.application_name, host(a.client_addr)
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
              LIMIT 1",
            &[&classid, &objid],
        )
        .await
        .map_err(|e| target.query_error("looking up the advisory lock's holder", e))?;
    let (since, holder) = match rows.first() {
        Some(r) => {
            let pid: i32 = r.get(1);
            let user: Option<String> = r.get(2);
            let app: Option<String> = r.get(3);
            let addr: Option<String> = r.get(4);
            let mut h = format!("pid {pid}");
            if let Some(u) = user {
                h.push_str(&format!(", role {u}"));
            }
            if let Some(a) = app.filter(|a| !a.is_empty()) {
                h.push_str(&format!(", application_name '{a}'"));
            }
            h.push_str(&match addr {
                Some(a) => format!(", from {a}"),
                None => ", over a local socket or not visible to this role".to_string(),
            });
            (r.get::<_, Option<String>>(0), Some(h))
        }
        // Released between the two queries, or invisible to this role.
        None => (None, None),
    };
    tracing::warn!(target = %target.describe(), ?since, ?holder, "advisory lock held by another session");
    Ok(LockOutcome::Held { since, holder })
}

/// How often the watch looks at the lock's session (a local look: is the connection closed?).
const WATCH_TICK: Duration = Duration::from_secs(1);
/// How often the watch round-trips to the server on the lock's session: proves it, and keeps
/// it active for proxies that cut idle sessions (Scalingo's cuts after 30 minutes).
const WATCH_PING_EVERY: u32 = 5;

/// The advisory lock watched for the whole run ([`LockWatch::start`]): a task checks the lock's
/// session every few seconds; lost (a failover, a server restart, an operator's
/// `pg_terminate_backend`), it takes the lock again at once on a new session. If another
/// replicator took it meanwhile, [`LockWatch::lost`] fires: the run must stop touching the
/// target. Dropping the watch releases the lock.
pub struct LockWatch {
    inner: Arc<WatchInner>,
    task: tokio::task::JoinHandle<()>,
}

/// What the driver holds of a [`LockWatch`]: it may ask for the lock ([`LockHandle::ensure`])
/// and wait for its loss ([`LockHandle::lost`]). It does not keep the lock alive.
#[derive(Clone)]
pub struct LockHandle {
    inner: Arc<WatchInner>,
}

struct WatchInner {
    target: PgEndpoint,
    lock: tokio::sync::Mutex<Option<TargetLock>>,
    /// Cancelled when another session holds the lock; replaced once it is taken again.
    stolen: std::sync::Mutex<CancellationToken>,
    /// Set when the watch is dropped: the lock is never taken again.
    closed: AtomicBool,
}

impl fmt::Debug for LockWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockWatch({})", self.inner.target.describe())
    }
}

impl LockWatch {
    /// Watches `lock`, just taken on `target`.
    pub fn start(target: &PgEndpoint, lock: TargetLock) -> LockWatch {
        let inner = Arc::new(WatchInner {
            target: target.clone(),
            lock: tokio::sync::Mutex::new(Some(lock)),
            stolen: std::sync::Mutex::new(CancellationToken::new()),
            closed: AtomicBool::new(false),
        });
        let watched = inner.clone();
        let task = tokio::spawn(async move {
            let mut ticks = 0u32;
            let mut ticker = tokio::time::interval(WATCH_TICK);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                ticks = ticks.wrapping_add(1);
                let ping = ticks.is_multiple_of(WATCH_PING_EVERY);
                if let Err(e) = watched.ensure(ping).await {
                    tracing::warn!(target = %watched.target.describe(), "the replication lock: {e}");
                }
            }
        });
        LockWatch { inner, task }
    }

    pub fn handle(&self) -> LockHandle {
        LockHandle {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for LockWatch {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.task.abort();
        // Closes the session (which releases the lock) unless a check holds it right now; the
        // closed flag then drops it at the end of that check.
        if let Ok(mut held) = self.inner.lock.try_lock() {
            held.take();
        }
    }
}

impl LockHandle {
    /// Proves the lock is held (a round-trip on its session), taking it again on a new session
    /// if the old one is gone. Another replicator holding it is a transient failure (and fires
    /// [`LockHandle::lost`]).
    pub async fn ensure(&self) -> Result<(), StepError> {
        self.inner.ensure(true).await
    }

    /// Completes once another session holds the lock.
    pub fn lost(&self) -> impl Future<Output = StepError> + Send + use<> {
        let token = self.inner.stolen.lock().expect("lock watch").clone();
        let target = self.inner.target.describe();
        async move {
            token.cancelled_owned().await;
            stolen_error(&target)
        }
    }
}

fn stolen_error(target: &str) -> StepError {
    StepError::transient(format!(
        "the replication lock on {target} was lost and another replicator took it: this run \
         stopped touching the target and will retry once the lock is free"
    ))
}

impl WatchInner {
    async fn ensure(&self, ping: bool) -> Result<(), StepError> {
        let mut held = self.lock.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            held.take();
            return Ok(());
        }
        if let Some(lock) = held.as_ref() {
            let alive = lock.is_alive() && (!ping || lock.check().await.is_ok());
            if alive {
                return Ok(());
            }
            tracing::warn!(
                target = %self.target.describe(),
                "the replication lock's session is gone: taking the lock again on a new session"
            );
            held.take();
        }
        match lock_target(&self.target).await? {
            LockOutcome::Acquired(lock) => {
                *held = Some(lock);
                let mut stolen = self.stolen.lock().expect("lock watch");
                if stolen.is_cancelled() {
                    *stolen = CancellationToken::new();
                }
                tracing::info!(target = %self.target.describe(), "the replication lock is held again");
                Ok(())
            }
            LockOutcome::Held { since, holder } => {
                self.stolen.lock().expect("lock watch").cancel();
                tracing::error!(
                    target = %self.target.describe(),
                    ?since,
                    ?holder,
                    "another replicator took the replication lock: stopping this run's restore"
                );
                Err(stolen_error(&self.target.describe()))
            }
        }
    }
}
