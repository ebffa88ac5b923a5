//! `replicator web`: `/health`, and this container's status as JSON on `$PORT` to
//! `Authorization: Bearer $WEB_TOKEN` (not served without `WEB_TOKEN`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{CliError, WebArgs, exit};
use crate::app::fatal;
use crate::state::liveness;
use crate::state::store::Store;
use crate::status::{StatusView, status_json};

/// How often the status snapshot `/status` serves is read again.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// The state directory's status as JSON (blocking: sled).
fn read_status(state_dir: &Path) -> serde_json::Value {
    let store = Store::new(state_dir);
    let current = store.current().ok().flatten();
    let history = store.history().unwrap_or_default();
    let holder = liveness::holder(state_dir).ok().flatten();
    let view = StatusView::local(
        current.as_ref(),
        &history,
        holder.as_ref(),
        format!("state directory {}", state_dir.display()),
    );
    status_json(&view)
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
            "web: serving /health, and /status to `Authorization: Bearer $WEB_TOKEN`, on port {}",
            args.port
        );
    } else {
        info!(
            "web: serving /health on port {}; /status is not served (set WEB_TOKEN to serve it)",
            args.port
        );
    }
    // One snapshot, refreshed off the runtime threads every SNAPSHOT_EVERY: a request reads
    // it and never opens sled (whose open may wait seconds on the daemon's lock).
    let snapshot = Arc::new(RwLock::new(read_status(&state_dir)));
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
                if let Ok(fresh) = tokio::task::spawn_blocking(move || read_status(&dir)).await {
                    *snapshot.write().expect("status snapshot") = fresh;
                }
            }
        })
    };
    let status = Arc::new(move || snapshot.read().expect("status snapshot").clone());
    let served = crate::web::serve_guarded(listener, status, token, async move {
        shutdown.cancelled().await
    })
    .await;
    refresher.abort();
    served.map_err(fatal)?;
    Ok(exit::OK)
}
