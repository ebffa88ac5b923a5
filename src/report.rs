//! `replicator status`: the persisted state of the current or last run, for people (a table
//! that fits 100 columns) and for programs (`--json`, schema in `docs/status-json.md`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::machine::{Phase, Progress, Run};

/// What `status` knows, wherever it came from.
pub struct StatusView<'a> {
    pub current: Option<&'a Run>,
    pub history: &'a [Run],
    /// pid of the process that runs the current run now, if one does.
    pub live_pid: Option<u32>,
    pub live: bool,
    /// Where the state was read (a state directory, or the target database).
    pub source: String,
}

fn section(run: &Run) -> Option<&'static str> {
    match &run.phase {
        Phase::Restoring { section, .. } => Some(section.label()),
        _ => None,
    }
}

fn bytes(run: &Run) -> (Option<u64>, Option<u64>) {
    match (&run.phase, &run.progress) {
        (Phase::Downloading { .. }, Some(Progress::Bytes { done, total })) => (Some(*done), *total),
        (Phase::Downloading { bytes_done, backup }, _) => (Some(*bytes_done), backup.size),
        (_, _) => (None, run.backup().and_then(|b| b.size)),
    }
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339()))
        .unwrap_or(Value::Null)
}

/// One run as JSON: the fields documented in `docs/status-json.md`.
pub fn run_json(run: &Run) -> Value {
    let backup = run.backup();
    let (done, total) = bytes(run);
    let items = match &run.progress {
        Some(Progress::Items { done, total }) => json!({"done": done, "total": total}),
        _ => Value::Null,
    };
    let failed_in = match &run.phase {
        Phase::Failed { failed_in, .. } => Value::String(failed_in.as_str().into()),
        _ => Value::Null,
    };
    json!({
        "run_id": run.run_id,
        "phase": run.phase.name().as_str(),
        "section": section(run),
        "failed_in": failed_in,
        "origin": run.origin,
        "backup_id": backup.map(|b| b.id.clone()),
        "backup_name": backup.map(|b| b.name.clone()),
        "backup_created_at": ts(backup.and_then(|b| b.created_at)),
        "backup_size": backup.and_then(|b| b.size),
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "next_attempt_at": ts(run.next_attempt_at),
        "bytes_downloaded": done,
        "bytes_total": total,
        "restore_items": items,
        "error": run.error,
        "interrupted": run.interrupted,
        "started_at": run.started_at.to_rfc3339(),
        "updated_at": run.updated_at.to_rfc3339(),
        "phase_started_at": run.phase_started_at.to_rfc3339(),
        "finished_at": ts(run.finished_at),
        "durations": run.durations.iter().map(|d| json!({"step": d.step, "seconds": d.seconds})).collect::<Vec<_>>(),
    })
}

/// The whole `status --json` object: the current run's fields at the top level (as the
/// issue's schema asks), plus `live`, `pid`, `source` and `history`.
pub fn status_json(view: &StatusView) -> Value {
    let mut top = match view.current {
        Some(run) => run_json(run),
        None => json!({
            "phase": "Idle", "section": null, "run_id": null, "backup_id": null,
            "backup_name": null, "attempt": 0, "bytes_downloaded": null, "bytes_total": null,
            "error": null, "started_at": null, "updated_at": null,
        }),
    };
    let obj = top.as_object_mut().expect("an object");
    obj.insert("live".into(), Value::Bool(view.live));
    obj.insert("pid".into(), json!(view.live_pid));
    obj.insert("source".into(), Value::String(view.source.clone()));
    obj.insert(
        "history".into(),
        Value::Array(view.history.iter().map(run_json).collect()),
    );
    top
}

fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn mib(b: u64) -> String {
    if b >= 10 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// The human form.
pub fn status_text(view: &StatusView, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let Some(run) = view.current else {
        out.push_str(&format!(
            "No replication has run yet (state read from {}).\n",
            view.source
        ));
        return out;
    };
    let phase = match section(run) {
        Some(s) => format!("{} ({s})", run.phase.name()),
        None => run.phase.name().to_string(),
    };
    let since = human_duration((now - run.phase_started_at).num_milliseconds() as f64 / 1000.0);
    let liveness = match (view.live, view.live_pid) {
        (true, Some(pid)) => format!("live, pid {pid}"),
        (true, None) => "live".to_string(),
        (false, _) if run.is_terminal() => "finished".to_string(),
        (false, _) => "NOT live: interrupted, `replicator resume` continues it".to_string(),
    };
    out.push_str(&format!("Run {}  [{liveness}]\n", run.run_id));
    if run.is_terminal() {
        let total = run
            .finished_at
            .map(|f| human_duration((f - run.started_at).num_milliseconds() as f64 / 1000.0))
            .unwrap_or_default();
        out.push_str(&format!(
            "  Phase     {phase}, finished {} (took {total})\n",
            run.finished_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
    } else {
        out.push_str(&format!("  Phase     {phase}, for {since}\n"));
    }
    if let Phase::Failed { failed_in, .. } = &run.phase {
        out.push_str(&format!("  Failed in {failed_in}\n"));
    }
    match (&run.phase, &run.progress) {
        (Phase::Downloading { .. }, _) => {
            let (done, total) = bytes(run);
            let done = done.unwrap_or(0);
            let pct = total
                .filter(|t| *t > 0)
                .map(|t| format!(" ({:.1}%)", done as f64 * 100.0 / t as f64))
                .unwrap_or_default();
            let elapsed = (now - run.phase_started_at).num_milliseconds() as f64 / 1000.0;
            let rate = if elapsed > 0.0 {
                done as f64 / elapsed
            } else {
                0.0
            };
            let eta = match total {
                Some(t) if rate > 0.0 && t > done => {
                    format!(", ETA {}", human_duration((t - done) as f64 / rate))
                }
                _ => String::new(),
            };
            out.push_str(&format!(
                "  Progress  {} of {}{pct}, {:.1} MiB/s{eta}\n",
                mib(done),
                total.map(mib).unwrap_or_else(|| "?".into()),
                rate / 1048576.0
            ));
        }
        (_, Some(Progress::Items { done, total })) if !run.is_terminal() => {
            out.push_str(&format!("  Progress  {done} / {total} items of the dump\n"));
        }
        _ => {}
    }
    out.push_str(&format!(
        "  Attempt   {} / {}{}\n",
        run.attempt,
        run.max_attempts,
        match run.next_attempt_at {
            Some(at) if at > now && !run.is_terminal() => format!(
                ", next at {} (in {})",
                at.to_rfc3339(),
                human_duration((at - now).num_milliseconds() as f64 / 1000.0)
            ),
            _ => String::new(),
        }
    ));
    if let Some(b) = run.backup() {
        out.push_str(&format!(
            "  Backup    {} (id {}{}{})\n",
            b.name,
            b.id,
            b.created_at
                .map(|t| format!(", created {}", t.to_rfc3339()))
                .unwrap_or_default(),
            b.size.map(|s| format!(", {}", mib(s))).unwrap_or_default()
        ));
    }
    if let Some(e) = &run.error {
        out.push_str(&format!("  Error     {e}\n"));
    }
    if !run.durations.is_empty() {
        let phases = run
            .durations
            .iter()
            .map(|d| format!("{} {}", d.step, human_duration(d.seconds)))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("  Phases    {phases}\n"));
    }
    out.push_str(&format!("  State     read from {}\n", view.source));

    if !view.history.is_empty() {
        out.push_str("\nLast runs\n");
        out.push_str(&format!(
            "  {:<20} {:>8}  {:<8} {:<28} {}\n",
            "started (UTC)", "took", "outcome", "backup", "download / restore"
        ));
        for r in view.history.iter().take(10) {
            let took = r
                .finished_at
                .map(|f| human_duration((f - r.started_at).num_milliseconds() as f64 / 1000.0))
                .unwrap_or_default();
            let dl = r
                .duration_of("downloading")
                .map(human_duration)
                .unwrap_or("-".into());
            let restore = ["restoring_pre_data", "unlogging", "restoring_data"]
                .iter()
                .filter_map(|s| r.duration_of(s))
                .sum::<f64>();
            let mut backup = r.backup().map(|b| b.name.clone()).unwrap_or_default();
            if backup.len() > 28 {
                backup.truncate(27);
                backup.push('~');
            }
            out.push_str(&format!(
                "  {:<20} {:>8}  {:<8} {:<28} {} / {}\n",
                r.started_at.format("%Y-%m-%d %H:%M:%S"),
                took,
                r.phase.name().as_str(),
                backup,
                dl,
                human_duration(restore)
            ));
        }
    }
    out
}
