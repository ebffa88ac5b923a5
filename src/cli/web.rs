//! `replicator web`: `/health`, and the replication's status on `$PORT` to the bearer of
//! `WEB_TOKEN` (not served without it): a page for people (`/`), JSON (`/status`), Prometheus
//! metrics (`/metrics`), all rendered from one snapshot. The snapshot is this container's state
//! directory; where that knows no run and `DATABASE_URL` is set (a `web` container on Scalingo
//! does not see the `background` container's disk), the runs recorded in the target, as
//! `status` reads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CliError, WebArgs, exit};
use crate::app::fatal;
use crate::config::engine::parse_target;
use crate::machine::Run;
use crate::replica::PgEndpoint;
use crate::state::liveness;
use crate::state::remote::{self, RemoteRuns};
use crate::state::store::Store;
use crate::status::{SourceKind, StatusView, metrics_text, page_html, status_json, target_source};
use crate::web::{Render, View};

/// How often the state directory is read again.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// How often the target's records are read again, when they are the source (a run writes its
/// progress there every 15 s).
const TARGET_EVERY: Duration = Duration::from_secs(15);

/// What the routes render from, read at once.
struct Snapshot {
    current: Option<Run>,
    history: Vec<Run>,
    live: bool,
    live_pid: Option<u32>,
    /// Finished runs by outcome, from the state directory's store (`None` from the target,
    /// whose 30 kept runs are no counter).
    outcomes: Option<BTreeMap<String, u64>>,
    source: String,
    source_kind: SourceKind,
    written_by: Option<String>,
    target_lock_held: Option<bool>,
}

impl Snapshot {
    /// Reads the state directory (blocking: sled). What cannot be read shows as nothing.
    fn local(state_dir: &Path) -> Snapshot {
        let store = Store::new(state_dir);
        let holder = liveness::holder(state_dir).ok().flatten();
        Snapshot {
            current: store.current().ok().flatten(),
            history: store.history().unwrap_or_default(),
            live: holder.is_some(),
            live_pid: holder.and_then(|h| h.pid),
            outcomes: Some(store.outcome_counts().unwrap_or_default()),
            source: format!("state directory {}", state_dir.display()),
            source_kind: SourceKind::StateDir,
            written_by: None,
            target_lock_held: None,
        }
    }

    fn from_target(target: &PgEndpoint, runs: &RemoteRuns) -> Snapshot {
        Snapshot {
            current: runs.current.clone(),
            history: runs.history.clone(),
            live: runs.lock_held && runs.current.as_ref().is_some_and(|r| !r.is_terminal()),
            live_pid: None,
            outcomes: None,
            source: target_source(&target.describe(), runs.schema_exists),
            source_kind: SourceKind::Target,
            written_by: runs.current_written_by.clone(),
            target_lock_held: Some(runs.lock_held),
        }
    }

    fn render(&self, view: View) -> String {
        let status = StatusView {
            current: self.current.as_ref(),
            history: &self.history,
            live_pid: self.live_pid,
            live: self.live,
            source: self.source.clone(),
            source_kind: self.source_kind,
            written_by: self.written_by.clone(),
            target_lock_held: self.target_lock_held,
        };
        let now = Utc::now();
        match view {
            View::StatusJson => status_json(&status).to_string(),
            View::Metrics => metrics_text(&status, self.outcomes.as_ref(), now),
            View::Page => page_html(&status, now),
        }
    }
}

/// Reads the snapshots: the state directory every time, the target at most every
/// [`TARGET_EVERY`] and only while the state directory knows no run.
struct RecordsReader {
    state_dir: PathBuf,
    target: Option<PgEndpoint>,
    from_target: Option<(Instant, Arc<Snapshot>)>,
    warned: bool,
}

impl RecordsReader {
    async fn read(&mut self) -> Arc<Snapshot> {
        let dir = self.state_dir.clone();
        let local = match tokio::task::spawn_blocking(move || Snapshot::local(&dir)).await {
            Ok(local) => local,
            // The read panicked: an empty view that says so, rather than a stale one.
            Err(e) => Snapshot {
                current: None,
                history: Vec::new(),
                live: false,
                live_pid: None,
                outcomes: None,
                source: format!(
                    "state directory {} (unreadable: {e})",
                    self.state_dir.display()
                ),
                source_kind: SourceKind::StateDir,
                written_by: None,
                target_lock_held: None,
            },
        };
        let Some(target) = self.target.as_ref().filter(|_| local.current.is_none()) else {
            return Arc::new(local);
        };
        if let Some((at, snap)) = &self.from_target
            && at.elapsed() < TARGET_EVERY
        {
            return Arc::clone(snap);
        }
        match remote::read(target).await {
            Ok(runs) => {
                let snap = Arc::new(Snapshot::from_target(target, &runs));
                self.from_target = Some((Instant::now(), Arc::clone(&snap)));
                self.warned = false;
                snap
            }
            Err(e) => {
                if !self.warned {
                    warn!("web: the runs recorded in the target could not be read: {e}");
                    self.warned = true;
                }
                let mut local = local;
                local.source = format!(
                    "{} (the target database could not be read: {e})",
                    local.source
                );
                // Try again at the next refresh, not in TARGET_EVERY.
                self.from_target = None;
                Arc::new(local)
            }
        }
    }
}

pub async fn run(
    state_dir: PathBuf,
    args: WebArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let target = match args.target.database_url.as_deref() {
        Some(u) if !u.trim().is_empty() => Some(parse_target(&args.target.validate()?)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .map_err(|e| CliError::Fatal(format!("cannot listen on port {} (PORT): {e}", args.port)))?;
    let token = args
        .web_token
        .filter(|t| !t.trim().is_empty())
        .map(crate::secret::Secret::new);
    if token.is_some() {
        info!(
            "web: serving /health, and / (the status page), /status and /metrics to `Authorization: Bearer $WEB_TOKEN`, on port {}",
            args.port
        );
    } else {
        info!(
            "web: serving /health on port {}; /, /status and /metrics are not served (set WEB_TOKEN to serve them)",
            args.port
        );
    }
    // One snapshot, refreshed every SNAPSHOT_EVERY off the requests: a request reads it and
    // never opens sled (whose open may wait seconds on the daemon's lock) nor the target.
    let mut reader = RecordsReader {
        state_dir,
        target,
        from_target: None,
        warned: false,
    };
    let snapshot = Arc::new(RwLock::new(reader.read().await));
    let refresher = {
        let snapshot = Arc::clone(&snapshot);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SNAPSHOT_EVERY) => {}
                }
                let fresh = reader.read().await;
                *snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
        })
    };
    let render: Render = Arc::new(move |view| {
        let current = Arc::clone(&snapshot.read().unwrap_or_else(|p| p.into_inner()));
        current.render(view)
    });
    let served = crate::web::serve_guarded(listener, render, token, async move {
        shutdown.cancelled().await
    })
    .await;
    refresher.abort();
    served.map_err(fatal)?;
    Ok(exit::OK)
}
