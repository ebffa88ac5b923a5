//! What a run says while it goes: progress lines, phase changes, the final summary.

use std::time::{Duration, Instant};

use tracing::{error, info};

use crate::machine::{Phase, Progress, Run};

/// Progress is logged at most this often, or at each 5% step.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs progress at each 5% step, or every 30 s when there is no total.
#[derive(Default)]
pub(super) struct ProgressLogger {
    last_bucket: Option<u64>,
    last_at: Option<Instant>,
    first: Option<(Instant, u64)>,
}

impl ProgressLogger {
    pub(super) fn log(&mut self, run: &Run, p: &Progress) {
        let now = Instant::now();
        let (done, total) = match p {
            Progress::Bytes { done, total } => (*done, *total),
            Progress::Items { done, total } => (*done, Some(*total)),
        };
        let (t0, d0) = *self.first.get_or_insert((now, done));
        let bucket = total.filter(|t| *t > 0).map(|t| done * 20 / t);
        let due = self
            .last_at
            .is_none_or(|at| now.duration_since(at) >= PROGRESS_LOG_EVERY)
            || bucket != self.last_bucket;
        if !due {
            return;
        }
        self.last_bucket = bucket;
        self.last_at = Some(now);
        let pct = total
            .filter(|t| *t > 0)
            .map(|t| format!("{:.1}%", done as f64 * 100.0 / t as f64))
            .unwrap_or_else(|| "?%".into());
        match p {
            Progress::Bytes { .. } => {
                let secs = now.duration_since(t0).as_secs_f64();
                let rate = if secs > 0.0 {
                    (done.saturating_sub(d0)) as f64 / secs
                } else {
                    0.0
                };
                let eta = match total {
                    Some(t) if rate > 0.0 && t > done => {
                        format!("{}s", ((t - done) as f64 / rate) as u64)
                    }
                    _ => "?".into(),
                };
                info!(
                    phase = %run.phase.name(),
                    bytes_done = done,
                    bytes_total = total,
                    rate_bytes_per_second = rate as u64,
                    "downloading: {} / {} MiB ({pct}), {:.1} MiB/s, ETA {eta}",
                    done >> 20,
                    total.map(|t| (t >> 20).to_string()).unwrap_or_else(|| "?".into()),
                    rate / 1048576.0
                );
            }
            Progress::Items { .. } => {
                info!(
                    phase = %run.phase.name(),
                    items_done = done,
                    items_total = total,
                    "restoring {}: {done} / {} items ({pct})",
                    run.phase.step_label(),
                    total.unwrap_or(0)
                );
            }
        }
    }
}

pub(super) fn log_phase(run: &Run, ended: Option<(&Phase, Duration)>) {
    let section = match &run.phase {
        Phase::Restoring { section, .. } => section.label(),
        _ => "",
    };
    match ended {
        Some((before, took)) => info!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            section,
            previous_phase = %before.name(),
            previous_phase_seconds = took.as_secs_f64(),
            attempt = run.attempt,
            "{} -> {}{} ({} took {:.1}s)",
            before.name(),
            run.phase.name(),
            if section.is_empty() { String::new() } else { format!(" ({section})") },
            before.step_label(),
            took.as_secs_f64()
        ),
        None => info!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            section,
            attempt = run.attempt,
            "run {} in {}{}",
            run.run_id,
            run.phase.name(),
            if section.is_empty() { String::new() } else { format!(" ({section})") }
        ),
    }
}

pub(super) fn log_summary(run: &Run) {
    let total = run
        .finished_at
        .map(|f| (f - run.started_at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    let phases = run
        .durations
        .iter()
        .map(|d| format!("{}={:.1}s", d.step, d.seconds))
        .collect::<Vec<_>>()
        .join(" ");
    let backup = run.backup().map(|b| b.name.clone()).unwrap_or_default();
    let outcome = run.phase.name();
    if matches!(run.phase, Phase::Done { .. }) {
        let masking = run
            .masking
            .as_ref()
            .map(|m| format!("; REPLICA_RULES: {}", m.describe()))
            .unwrap_or_default();
        // The rows and the statistics: a replica whose every table is analyzed is ready for
        // its readers' plans.
        let load = run
            .load
            .as_ref()
            .map(|l| format!("; {}", l.describe()))
            .unwrap_or_default();
        info!(
            run_id = %run.run_id, outcome = %outcome, backup = %backup,
            total_seconds = total, attempts = run.attempt,
            tables = run.load.as_ref().map_or(0, |l| l.tables_done),
            analyzed = run.load.as_ref().map_or(0, |l| l.analyzed),
            masking = run.masking.as_ref().and_then(|m| serde_json::to_string(m).ok()).unwrap_or_default(),
            "run {} Done: backup {backup} restored in {total:.1}s ({phases}){load}{masking}", run.run_id
        );
    } else {
        error!(
            run_id = %run.run_id, outcome = %outcome, backup = %backup,
            total_seconds = total, attempts = run.attempt,
            error = run.error.as_deref().unwrap_or(""),
            "run {} Failed after {total:.1}s ({phases}): {}", run.run_id,
            run.error.as_deref().unwrap_or("")
        );
    }
}
