//! `/metrics`: the status as Prometheus' text exposition format (0.0.4), for Prometheus,
//! Grafana Agent, Datadog's OpenMetrics check and the like. Names follow Prometheus'
//! conventions: the `replicator_` prefix, base units in the name (`_seconds`, `_bytes`),
//! `_total` for counters only. Alert rules and a scrape configuration are in
//! `docs/operations.md`; the names below are that page's contract.
//!
//! "The run" is the one `status` shows at its top: the current run, else the last one.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{StatusView, bytes};
use crate::machine::{Origin, Phase, PhaseName, RefreshMode, Run};

/// Every phase, for the one-hot `replicator_phase` (a series for each, 1 for the run's).
const PHASES: [PhaseName; 11] = [
    PhaseName::Idle,
    PhaseName::FetchingUrl,
    PhaseName::Downloading,
    PhaseName::Extracting,
    PhaseName::Dropping,
    PhaseName::Restoring,
    PhaseName::Unlogging,
    PhaseName::Switching,
    PhaseName::PostRestoreSql,
    PhaseName::Done,
    PhaseName::Failed,
];

/// Fails to compile when a phase is added and not listed in [`PHASES`].
#[allow(dead_code)]
fn every_phase_is_listed(p: PhaseName) {
    match p {
        PhaseName::Idle
        | PhaseName::FetchingUrl
        | PhaseName::Downloading
        | PhaseName::Extracting
        | PhaseName::Dropping
        | PhaseName::Restoring
        | PhaseName::Unlogging
        | PhaseName::Switching
        | PhaseName::PostRestoreSql
        | PhaseName::Done
        | PhaseName::Failed => {}
    }
}

/// The ways a run gets its rows, for the one-hot `replicator_run_mode`.
const MODES: [&str; 3] = ["whole", "streaming", "live"];

/// The exposition of `view`; `outcomes` are the finished runs counted by outcome
/// (`Store::outcome_counts`), `None` where no counter is kept (the target's records keep the
/// last 30 runs only: counted, they would go down).
pub fn metrics_text(
    view: &StatusView,
    outcomes: Option<&BTreeMap<String, u64>>,
    now: DateTime<Utc>,
) -> String {
    let mut out = Exposition::default();
    let run = view.current;
    let last_done = std::iter::once(run)
        .flatten()
        .chain(view.history.iter())
        .find(|r| matches!(r.phase, Phase::Done { .. }));
    let last_finished = std::iter::once(run)
        .flatten()
        .chain(view.history.iter())
        .find(|r| r.is_terminal());

    out.family(
        "replicator_build_info",
        "gauge",
        "Always 1; the replicator's version in a label.",
    );
    out.sample(
        "replicator_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );

    // The replica's age: what "is the replica fresh?" is asked of.
    out.family(
        "replicator_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run finished, in seconds since the epoch (0: none known).",
    );
    out.sample(
        "replicator_last_success_timestamp_seconds",
        &[],
        last_done.and_then(|r| r.finished_at).map_or(0.0, epoch),
    );
    out.family(
        "replicator_last_success_backup_timestamp_seconds",
        "gauge",
        "When the backup the last successful run restored was taken, in seconds since the epoch (0: none known). The replica holds the source as of this time.",
    );
    out.sample(
        "replicator_last_success_backup_timestamp_seconds",
        &[],
        last_done
            .and_then(|r| r.backup())
            .and_then(|b| b.created_at)
            .map_or(0.0, epoch),
    );

    out.family(
        "replicator_last_run_phase_duration_seconds",
        "gauge",
        "Time the last finished run spent in each step, summed over its attempts.",
    );
    if let Some(r) = last_finished {
        for d in &r.durations {
            out.sample(
                "replicator_last_run_phase_duration_seconds",
                &[("step", &d.step)],
                d.seconds,
            );
        }
    }
    out.family(
        "replicator_last_run_duration_seconds",
        "gauge",
        "Start to end of the last finished run.",
    );
    if let Some(r) = last_finished
        && let Some(f) = r.finished_at
    {
        out.sample(
            "replicator_last_run_duration_seconds",
            &[],
            (f - r.started_at).num_milliseconds().max(0) as f64 / 1000.0,
        );
    }

    out.family(
        "replicator_runs_total",
        "counter",
        "Finished runs by outcome (done, failed) since the state directory was created.",
    );
    for outcome in ["done", "failed"]
        .into_iter()
        .filter(|_| outcomes.is_some())
    {
        let n = outcomes.and_then(|o| o.get(outcome)).copied().unwrap_or(0);
        out.sample("replicator_runs_total", &[("outcome", outcome)], n as f64);
    }

    // The run: the current one, else the last.
    out.family(
        "replicator_phase",
        "gauge",
        "1 for the phase the run is in (Done or Failed once it ended; Idle: no run yet), 0 for the others.",
    );
    let current = run.map_or(PhaseName::Idle, |r| r.phase.name());
    for p in PHASES {
        out.sample(
            "replicator_phase",
            &[("phase", p.as_str())],
            if p == current { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "replicator_run_in_progress",
        "gauge",
        "1 while a process runs the run now, 0 otherwise (an interrupted run is 0 until resumed).",
    );
    out.sample(
        "replicator_run_in_progress",
        &[],
        if view.live && run.is_some_and(|r| !r.is_terminal()) {
            1.0
        } else {
            0.0
        },
    );
    out.family(
        "replicator_run_start_timestamp_seconds",
        "gauge",
        "When the run started, in seconds since the epoch (0: no run yet).",
    );
    out.sample(
        "replicator_run_start_timestamp_seconds",
        &[],
        run.map_or(0.0, |r| epoch(r.started_at)),
    );
    out.family(
        "replicator_run_phase_seconds",
        "gauge",
        "How long the run has been in its current phase (0 once it ended).",
    );
    out.sample(
        "replicator_run_phase_seconds",
        &[],
        run.filter(|r| !r.is_terminal())
            .map_or(0.0, |r| super::seconds_between(r.phase_started_at, now)),
    );

    out.family(
        "replicator_run_downloaded_bytes",
        "gauge",
        "Bytes of the backup's archive the run has downloaded (the whole archive once past the download).",
    );
    out.sample(
        "replicator_run_downloaded_bytes",
        &[],
        run.map_or(0, downloaded) as f64,
    );
    out.family(
        "replicator_run_backup_size_bytes",
        "gauge",
        "Size of the archive the run restores, as the source announced it (0: unknown).",
    );
    out.sample(
        "replicator_run_backup_size_bytes",
        &[],
        run.and_then(|r| r.backup())
            .and_then(|b| b.size)
            .unwrap_or(0) as f64,
    );
    let load = run.and_then(|r| r.load.clone()).unwrap_or_default();
    for (name, help, value) in [
        (
            "replicator_run_loaded_rows",
            "Rows the run has committed in the target.",
            load.rows,
        ),
        (
            "replicator_run_loaded_bytes",
            "Bytes of COPY data the run has committed in the target.",
            load.bytes,
        ),
        (
            "replicator_run_loaded_tables",
            "Tables whose rows the run has committed in the target.",
            load.tables_done,
        ),
        (
            "replicator_run_tables",
            "Tables whose rows the run loads (0 until the rows' section starts).",
            load.tables_total,
        ),
        (
            "replicator_run_analyzed_relations",
            "Relations (tables, partitioned tables, materialized views) the run has ANALYZEd once their rows were in.",
            load.analyzed,
        ),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &[], value as f64);
    }

    out.family(
        "replicator_run_retries",
        "gauge",
        "Retries the run has made after transient failures (its attempt minus one).",
    );
    out.sample(
        "replicator_run_retries",
        &[],
        run.map_or(0, |r| r.attempt.saturating_sub(1)) as f64,
    );
    out.family(
        "replicator_run_max_retries",
        "gauge",
        "Retries the run may make (MAX_RETRY_COUNT).",
    );
    out.sample(
        "replicator_run_max_retries",
        &[],
        run.map_or(0, |r| r.max_attempts.saturating_sub(1)) as f64,
    );
    out.family(
        "replicator_run_next_attempt_timestamp_seconds",
        "gauge",
        "When the run's next attempt starts after a transient failure (0: none planned).",
    );
    out.sample(
        "replicator_run_next_attempt_timestamp_seconds",
        &[],
        run.filter(|r| !r.is_terminal())
            .and_then(|r| r.next_attempt_at)
            .map_or(0.0, epoch),
    );

    // One one-hot family per choice a run makes (how the rows come, how the copy replaces
    // yesterday's), so that neither's series change when the other gets a value.
    out.family(
        "replicator_run_mode",
        "gauge",
        "1 for how the run gets its rows: whole (downloaded and checked before the wipe), streaming (through a bounded spool), live (pg_dump of SOURCE_DATABASE_URL); all 0 until decided.",
    );
    let mode = run.and_then(|r| r.mode.as_ref()).map(|m| m.label());
    for m in MODES {
        out.sample(
            "replicator_run_mode",
            &[("mode", m)],
            if mode == Some(m) { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "replicator_run_refresh_mode",
        "gauge",
        "1 for how the run replaces yesterday's copy: swap (built beside it, switched in one transaction) or wipe (dropped first: readers see an empty, then a partial database); all 0 until decided.",
    );
    let refresh = run.and_then(|r| r.refresh.as_ref());
    for m in [RefreshMode::Swap, RefreshMode::Wipe] {
        out.sample(
            "replicator_run_refresh_mode",
            &[("refresh", m.as_str())],
            if refresh.is_some_and(|r| r.mode == m) {
                1.0
            } else {
                0.0
            },
        );
    }
    out.family(
        "replicator_run_refresh_timestamp_seconds",
        "gauge",
        "When readers got the run's copy: the switch's commit (swap) or the wipe (wipe), in seconds since the epoch (0: not yet).",
    );
    out.sample(
        "replicator_run_refresh_timestamp_seconds",
        &[],
        refresh.and_then(|r| r.at()).map_or(0.0, epoch),
    );
    out.family(
        "replicator_run_reader_roles",
        "gauge",
        "Roles whose grants and default privileges the run carries over to tonight's copy.",
    );
    out.sample(
        "replicator_run_reader_roles",
        &[],
        refresh.map_or(0, |r| r.readers.len()) as f64,
    );
    out.0
}

/// Bytes of the archive the run has downloaded.
fn downloaded(run: &Run) -> u64 {
    match &run.phase {
        Phase::Downloading { .. } => bytes(run).0.unwrap_or(0),
        Phase::Idle | Phase::FetchingUrl => 0,
        Phase::Failed {
            failed_in: PhaseName::FetchingUrl | PhaseName::Downloading,
            ..
        } => 0,
        // Past the download, a Scalingo archive was downloaded whole.
        _ if matches!(run.origin, Origin::Scalingo) => {
            run.backup().and_then(|b| b.size).unwrap_or(0)
        }
        _ => 0,
    }
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The text being written: `# HELP`, `# TYPE`, then the family's samples.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', r"\\")
                        .replace('"', "\\\"")
                        .replace('\n', r"\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Backup, Event, Progress, StepDuration, transition};
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 5, 10, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn backup(created: i64) -> Backup {
        Backup {
            id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
            name: "20261123041000_my_app_4553".into(),
            created_at: Some(t(created)),
            size: Some(1 << 30),
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn a_live_download_after_a_done_night_shows_both() {
        let mut done = Run::new("a".into(), Origin::Scalingo, 10, t(0));
        done.phase = Phase::Done {
            backup: backup(-3600),
        };
        done.finished_at = Some(t(7200));
        done.durations = vec![
            StepDuration {
                step: "downloading".into(),
                seconds: 5280.0,
            },
            StepDuration {
                step: "restoring_data".into(),
                seconds: 1800.5,
            },
        ];
        let mut now = Run::new("b".into(), Origin::Scalingo, 10, t(86_400));
        now = transition(&now, Event::Start, t(86_400)).unwrap();
        now = transition(&now, Event::Fetched(backup(82_800)), t(86_401)).unwrap();
        now = transition(
            &now,
            Event::Progress(Progress::Bytes {
                done: 1 << 28,
                total: Some(1 << 30),
            }),
            t(86_500),
        )
        .unwrap();
        let history = vec![done];
        let view = StatusView {
            current: Some(&now),
            history: &history,
            live: true,
            ..Default::default()
        };
        let outcomes = BTreeMap::from([("done".to_string(), 7), ("failed".to_string(), 2)]);
        let text = metrics_text(&view, Some(&outcomes), t(86_600));
        assert_eq!(
            value(&text, "replicator_last_success_timestamp_seconds"),
            epoch(t(7200))
        );
        assert_eq!(
            value(&text, "replicator_last_success_backup_timestamp_seconds"),
            epoch(t(-3600))
        );
        assert_eq!(
            value(
                &text,
                "replicator_last_run_phase_duration_seconds{step=\"downloading\"}"
            ),
            5280.0
        );
        assert_eq!(value(&text, "replicator_runs_total{outcome=\"done\"}"), 7.0);
        assert_eq!(
            value(&text, "replicator_runs_total{outcome=\"failed\"}"),
            2.0
        );
        assert_eq!(value(&text, "replicator_phase{phase=\"Downloading\"}"), 1.0);
        assert_eq!(value(&text, "replicator_phase{phase=\"Done\"}"), 0.0);
        assert_eq!(
            value(&text, "replicator_run_downloaded_bytes"),
            (1u64 << 28) as f64
        );
        assert_eq!(value(&text, "replicator_run_in_progress"), 1.0);
        assert_eq!(value(&text, "replicator_run_phase_seconds"), 199.0);
        // Every family has its HELP and TYPE, and each sample's name is a family's.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(families.contains(&name), "{l}");
        }
    }

    #[test]
    fn no_run_yet_gives_zeros_and_idle() {
        let text = metrics_text(&StatusView::default(), Some(&BTreeMap::new()), t(0));
        assert_eq!(
            value(&text, "replicator_last_success_timestamp_seconds"),
            0.0
        );
        assert_eq!(value(&text, "replicator_phase{phase=\"Idle\"}"), 1.0);
        assert_eq!(value(&text, "replicator_runs_total{outcome=\"done\"}"), 0.0);
        assert!(!text.contains("replicator_last_run_phase_duration_seconds{"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.sample("x", &[("step", "a\"b\\c\nd")], 1.5);
        assert_eq!(e.0, "x{step=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}
