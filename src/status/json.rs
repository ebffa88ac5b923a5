//! `status --json` as typed views: [`RunView`] for one run, [`StatusJson`] for the whole
//! object. The contract is `docs/status-json.md`: a field may be added, none is renamed or
//! removed without bumping [`SCHEMA_VERSION`]. The object goes through a `serde_json::Value`,
//! whose keys are sorted: the printed order is alphabetical, as it always was.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{SCHEMA_VERSION, StatusView, bytes, download_rate, seconds_between, section};
use crate::machine::{LeftOut, MaskingCounts, Origin, Phase, Progress, Run, StepDuration};

/// One run: the fields documented in `docs/status-json.md`.
#[derive(Serialize)]
struct RunView<'a> {
    run_id: Option<&'a str>,
    phase: &'static str,
    section: Option<&'static str>,
    failed_in: Option<&'static str>,
    origin: Option<&'a Origin>,
    backup_id: Option<&'a str>,
    backup_name: Option<&'a str>,
    backup_created_at: Option<String>,
    backup_size: Option<u64>,
    attempt: u32,
    max_attempts: Option<u32>,
    next_attempt_at: Option<String>,
    bytes_downloaded: Option<u64>,
    bytes_total: Option<u64>,
    download: Option<DownloadView>,
    restore_items: Option<ItemsView>,
    error: Option<&'a str>,
    interrupted: bool,
    started_at: Option<String>,
    updated_at: Option<String>,
    phase_started_at: Option<String>,
    phase_seconds: Option<f64>,
    finished_at: Option<String>,
    total_seconds: Option<f64>,
    durations: &'a [StepDuration],
    /// What the restore leaves out of the dump, by kind (empty: nothing).
    left_out: &'a [LeftOut],
    /// What `REPLICA_RULES` did (null without rules).
    masking: Option<&'a MaskingCounts>,
    /// Whole or streamed, and why (null until decided).
    mode: Option<ModeView<'a>>,
    /// Tables loaded: done/total, rows, bytes (null before the rows' section).
    load: Option<&'a crate::machine::LoadCounts>,
    /// Swap or wipe, when readers got tonight's copy, the readers carried over (null until the
    /// checks decided it, and for runs recorded before it existed).
    refresh: Option<RefreshView<'a>>,
}

/// The run's refresh, every key present (null or empty when it does not apply).
#[derive(Serialize)]
struct RefreshView<'a> {
    mode: &'static str,
    schemas: &'a [String],
    why_not_swap: Option<&'a str>,
    switched_at: Option<String>,
    wiped_at: Option<String>,
    readers: &'a [crate::machine::ReaderKept],
    /// Readers' views over the replica's tables: re-created, or gone with their definitions
    /// kept.
    views: &'a [String],
    summary: String,
}

#[derive(Serialize)]
struct ModeView<'a> {
    #[serde(flatten)]
    mode: &'a crate::machine::WorkMode,
    why: String,
}

#[derive(Serialize)]
struct DownloadView {
    percent: Option<f64>,
    rate_bytes_per_second: u64,
    eta_seconds: Option<u64>,
}

#[derive(Serialize)]
struct ItemsView {
    done: u64,
    total: u64,
}

/// The whole object: the current run's fields at the top level, then where it was read.
#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    current: RunView<'a>,
    schema_version: u32,
    live: bool,
    pid: Option<u32>,
    source: &'a str,
    source_kind: &'static str,
    written_by: Option<&'a str>,
    target_lock_held: Option<bool>,
    history: Vec<RunView<'a>>,
}

fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339())
}

impl<'a> RunView<'a> {
    fn of(run: &'a Run, now: DateTime<Utc>) -> RunView<'a> {
        let backup = run.backup();
        let (done, total) = bytes(run);
        RunView {
            run_id: Some(&run.run_id),
            phase: run.phase.name().as_str(),
            section: section(run),
            failed_in: match &run.phase {
                Phase::Failed { failed_in, .. } => Some(failed_in.as_str()),
                _ => None,
            },
            origin: Some(&run.origin),
            backup_id: backup.map(|b| b.id.as_str()),
            backup_name: backup.map(|b| b.name.as_str()),
            backup_created_at: ts(backup.and_then(|b| b.created_at)),
            backup_size: backup.and_then(|b| b.size),
            attempt: run.attempt,
            max_attempts: Some(run.max_attempts),
            next_attempt_at: ts(run.next_attempt_at),
            bytes_downloaded: done,
            bytes_total: total,
            download: download_rate(run, now).map(|d| DownloadView {
                percent: d.percent.map(|p| (p * 10.0).round() / 10.0),
                rate_bytes_per_second: d.rate.round() as u64,
                eta_seconds: d.eta.map(|e| e.round() as u64),
            }),
            restore_items: match &run.progress {
                Some(Progress::Items { done, total }) => Some(ItemsView {
                    done: *done,
                    total: *total,
                }),
                _ => None,
            },
            error: run.error.as_deref(),
            interrupted: run.interrupted,
            started_at: Some(run.started_at.to_rfc3339()),
            updated_at: Some(run.updated_at.to_rfc3339()),
            phase_started_at: Some(run.phase_started_at.to_rfc3339()),
            phase_seconds: (!run.is_terminal()).then(|| seconds_between(run.phase_started_at, now)),
            finished_at: ts(run.finished_at),
            total_seconds: run.finished_at.map(|f| seconds_between(run.started_at, f)),
            durations: &run.durations,
            left_out: &run.left_out,
            masking: run.masking.as_ref(),
            mode: run.mode.as_ref().map(|mode| ModeView {
                mode,
                why: mode.describe(),
            }),
            load: run.load.as_ref(),
            refresh: run.refresh.as_ref().map(|r| RefreshView {
                mode: r.mode.as_str(),
                schemas: &r.schemas,
                why_not_swap: r.why_not_swap.as_deref(),
                switched_at: ts(r.switched_at),
                wiped_at: ts(r.wiped_at),
                readers: &r.readers,
                views: &r.views,
                summary: r.describe(run.is_terminal()),
            }),
        }
    }

    /// No run ever happened: the same keys, `Idle`, all else null or empty (a stable shape
    /// for programs).
    fn none() -> RunView<'static> {
        RunView {
            run_id: None,
            phase: "Idle",
            section: None,
            failed_in: None,
            origin: None,
            backup_id: None,
            backup_name: None,
            backup_created_at: None,
            backup_size: None,
            attempt: 0,
            max_attempts: None,
            next_attempt_at: None,
            bytes_downloaded: None,
            bytes_total: None,
            download: None,
            restore_items: None,
            error: None,
            interrupted: false,
            started_at: None,
            updated_at: None,
            phase_started_at: None,
            phase_seconds: None,
            finished_at: None,
            total_seconds: None,
            durations: &[],
            left_out: &[],
            masking: None,
            mode: None,
            load: None,
            refresh: None,
        }
    }
}

/// The whole `status --json` object: the current run's fields at the top level (null when no
/// run ever happened), plus `live`, `pid`, where it was read, and `history`.
pub fn status_json(view: &StatusView) -> Value {
    status_json_at(view, Utc::now())
}

pub fn status_json_at(view: &StatusView, now: DateTime<Utc>) -> Value {
    let status = StatusJson {
        current: match view.current {
            Some(run) => RunView::of(run, now),
            None => RunView::none(),
        },
        schema_version: SCHEMA_VERSION,
        live: view.live,
        pid: view.live_pid,
        source: &view.source,
        source_kind: view.source_kind.as_str(),
        written_by: view.written_by.as_deref(),
        target_lock_held: view.target_lock_held,
        history: view.history.iter().map(|r| RunView::of(r, now)).collect(),
    };
    serde_json::to_value(status).expect("the status view serializes")
}
