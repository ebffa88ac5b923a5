//! `replicator status`: the current or last run and the history, from this state directory or,
//! in a container that cannot see it, from the records in the target.

use std::path::PathBuf;

use chrono::Utc;

use super::{CliError, StatusArgs, exit};
use crate::app::fatal;
use crate::config::engine::parse_target;
use crate::state::store::Store;
use crate::state::{liveness, remote};
use crate::status::{self, StatusView, status_json, status_text};

pub async fn run(state_dir: PathBuf, args: StatusArgs) -> Result<u8, CliError> {
    let store = Store::new(&state_dir);
    let current = store.current().map_err(fatal)?;
    let history = store.history().map_err(fatal)?;
    let holder = liveness::holder(&state_dir).map_err(fatal)?;
    let local_source = format!("state directory {}", state_dir.display());
    let has_url = args
        .target
        .database_url
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    // A container that cannot see the daemon's disk (a `scalingo run`) knows no run: the
    // target database, which every container reaches, does.
    let mut remote = None;
    let mut unreadable = None;
    if args.from_target || (current.is_none() && has_url) {
        let url = args.target.validate()?;
        let target = parse_target(&url)?;
        match remote::read(&target).await {
            Ok(runs) => remote = Some((target.describe(), runs)),
            Err(e) if args.from_target => return Err(fatal(e)),
            Err(e) => unreadable = Some(e.to_string()),
        }
    }
    let view = match &remote {
        Some((target, runs)) => StatusView {
            current: runs.current.as_ref(),
            history: &runs.history,
            live: runs.lock_held && runs.current.as_ref().is_some_and(|r| !r.is_terminal()),
            live_pid: None,
            source: status::target_source(target, runs.schema_exists),
            source_kind: status::SourceKind::Target,
            written_by: runs.current_written_by.clone(),
            target_lock_held: Some(runs.lock_held),
        },
        None => StatusView::local(
            current.as_ref(),
            &history,
            holder.as_ref(),
            match &unreadable {
                Some(e) => format!("{local_source} (the target database could not be read: {e})"),
                None => local_source,
            },
        ),
    };
    let json = args.json
        || (crate::logging::is_json() && !std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        let value = status_json(&view);
        // One line per JSON object in JSON log mode, so that every line parses.
        if crate::logging::is_json() {
            println!("{value}");
        } else {
            println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
        }
    } else {
        print!("{}", status_text(&view, Utc::now()));
    }
    Ok(exit::OK)
}
