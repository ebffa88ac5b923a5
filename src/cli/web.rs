//! `replicator web`: `/health` and this container's status as JSON on `$PORT`.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{CliError, WebArgs, exit};
use crate::app::fatal;
use crate::state::liveness;
use crate::state::store::Store;
use crate::status::{StatusView, status_json};

pub async fn run(
    state_dir: PathBuf,
    args: WebArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .map_err(|e| CliError::Fatal(format!("cannot listen on port {} (PORT): {e}", args.port)))?;
    info!("web: serving /health and /status on port {}", args.port);
    let status = std::sync::Arc::new(move || {
        let store = Store::new(&state_dir);
        let current = store.current().ok().flatten();
        let history = store.history().unwrap_or_default();
        let holder = liveness::holder(&state_dir).ok().flatten();
        let view = StatusView::local(
            current.as_ref(),
            &history,
            holder.as_ref(),
            format!("state directory {}", state_dir.display()),
        );
        status_json(&view)
    });
    crate::web::serve(listener, status, async move { shutdown.cancelled().await })
        .await
        .map_err(fatal)?;
    Ok(exit::OK)
}
