//! `replicator web`: `/health`, and this container's status on `$PORT` to the bearer of
//! `WEB_TOKEN` (not served without it): a page for people (`/`), JSON (`/status`), Prometheus
//! metrics (`/metrics`), all rendered from one snapshot of the state directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{CliError, WebArgs, exit};
use crate::app::fatal;
use crate::machine::Run;
use crate::state::liveness::{self, Holder};
use crate::state::store::Store;
use crate::status::{StatusView, metrics_text, page_html, status_json};
use crate::web::{Render, View};

/// How often the snapshot the routes serve is read again.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// What the state directory holds, read at once: every route renders from it.
struct Snapshot {
    current: Option<Run>,
    history: Vec<Run>,
    holder: Option<Holder>,
    outcomes: BTreeMap<String, u64>,
    source: String,
}

impl Snapshot {
    /// Reads the state directory (blocking: sled). What cannot be read shows as nothing.
    fn read(state_dir: &Path) -> Snapshot {
        let store = Store::new(state_dir);
        Snapshot {
            current: store.current().ok().flatten(),
            history: store.history().unwrap_or_default(),
            holder: liveness::holder(state_dir).ok().flatten(),
            outcomes: store.outcome_counts().unwrap_or_default(),
            source: format!("state directory {}", state_dir.display()),
        }
    }

    fn render(&self, view: View) -> String {
        let status = StatusView::local(
            self.current.as_ref(),
            &self.history,
            self.holder.as_ref(),
            self.source.clone(),
        );
        let now = Utc::now();
        match view {
            View::StatusJson => status_json(&status).to_string(),
            View::Metrics => metrics_text(&status, &self.outcomes, now),
            View::Page => page_html(&status, now),
        }
    }
}

pub async fn run(
    state_dir: PathBuf,
    args: WebArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
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
    // One snapshot, refreshed off the runtime threads every SNAPSHOT_EVERY: a request reads
    // it and never opens sled (whose open may wait seconds on the daemon's lock).
    let first = {
        let dir = state_dir.clone();
        tokio::task::spawn_blocking(move || Snapshot::read(&dir))
            .await
            .map_err(fatal)?
    };
    let snapshot = Arc::new(RwLock::new(Arc::new(first)));
    let refresher = {
        let snapshot = Arc::clone(&snapshot);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SNAPSHOT_EVERY) => {}
                }
                let dir = state_dir.clone();
                if let Ok(fresh) = tokio::task::spawn_blocking(move || Snapshot::read(&dir)).await {
                    *snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                }
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
