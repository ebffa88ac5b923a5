//! `replicator status`: the persisted state of the current or last run, for people (a text
//! that fits 100 columns, no colour) and for programs (`--json`, schema in
//! `docs/status-json.md`: a field may be added, none is renamed or removed without bumping
//! `schema_version`); and the `web` process's views of the same state: the page
//! (`page.rs`) and the Prometheus metrics (`metrics.rs`).

use chrono::{DateTime, Utc};

use crate::machine::{Origin, Phase, Progress, Run};
use crate::state::liveness::Holder;

mod json;
mod metrics;
mod page;

pub use json::status_json;
pub use metrics::metrics_text;
pub use page::page_html;

/// Version of the `status --json` schema (`docs/status-json.md`).
pub const SCHEMA_VERSION: u32 = 1;

/// Where the state that `status` shows was read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceKind {
    /// This container's state directory (the sled store and the run lock).
    #[default]
    StateDir,
    /// The records the runs keep in the target database (schema `replicator`).
    Target,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::StateDir => "state_dir",
            SourceKind::Target => "target",
        }
    }
}

/// What `status` knows, wherever it came from.
#[derive(Default)]
pub struct StatusView<'a> {
    pub current: Option<&'a Run>,
    pub history: &'a [Run],
    /// pid of the process that runs the current run now, if one does (on this machine).
    pub live_pid: Option<u32>,
    pub live: bool,
    /// Where the state was read, for people (a state directory, or the target database).
    pub source: String,
    pub source_kind: SourceKind,
    /// For a run read from the target: the process that wrote its record
    /// (`pid 123 on host replica-background-1`).
    pub written_by: Option<String>,
    /// For a state read from the target: whether a replicator holds its advisory lock now.
    pub target_lock_held: Option<bool>,
}

impl<'a> StatusView<'a> {
    /// The state of this container's state directory: its runs, and the process that holds
    /// its run lock (`holder`), if any. `status` and the `web` process both show it.
    pub fn local(
        current: Option<&'a Run>,
        history: &'a [Run],
        holder: Option<&Holder>,
        source: String,
    ) -> StatusView<'a> {
        StatusView {
            current,
            history,
            live: holder.is_some(),
            live_pid: holder.and_then(|h| h.pid),
            source,
            ..Default::default()
        }
    }
}

/// How `status` names the target as a source.
pub fn target_source(target: &str, schema_exists: bool) -> String {
    if schema_exists {
        format!("the target database {target} (table replicator.runs)")
    } else {
        format!(
            "the target database {target}, which records no run yet (no schema replicator: runs record themselves there once they have wiped the target)"
        )
    }
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

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// Download figures at `now`: percent, bytes a second since the phase started, seconds left.
struct DownloadRate {
    done: u64,
    total: Option<u64>,
    percent: Option<f64>,
    rate: f64,
    eta: Option<f64>,
}

fn download_rate(run: &Run, now: DateTime<Utc>) -> Option<DownloadRate> {
    if !matches!(run.phase, Phase::Downloading { .. }) {
        return None;
    }
    let (done, total) = bytes(run);
    let done = done.unwrap_or(0);
    let elapsed = seconds_between(run.phase_started_at, now);
    let rate = if elapsed > 0.0 {
        done as f64 / elapsed
    } else {
        0.0
    };
    let percent = total
        .filter(|t| *t > 0)
        .map(|t| done as f64 * 100.0 / t as f64);
    let eta = match total {
        Some(t) if rate > 0.0 && t > done => Some((t - done) as f64 / rate),
        _ => None,
    };
    Some(DownloadRate {
        done,
        total,
        percent,
        rate,
        eta,
    })
}

/// `42.0s`, `12m05s`, `8h51m`: at most 6 characters below 100 hours.
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{:.1}s", secs.max(0.0)),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `14.5 KiB`, `812.3 MiB`, `207.0 GiB`.
pub fn size(b: u64) -> String {
    if b < 1 << 20 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else if b >= 10 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The phases as `status` names them, with the step labels they add up (the table merges
/// fetching the URL, a few API calls, into the download).
const PHASE_COLUMNS: &[(&str, &[&str], bool)] = &[
    ("dl", &["fetching_url", "downloading"], false),
    ("unpack", &["extracting"], false),
    ("drop", &["dropping"], false),
    ("schema", &["restoring_pre_data"], false),
    // Optional columns: shown only when a run spent time there.
    ("unlog", &["unlogging"], true),
    ("data", &["restoring_data"], false),
    ("sql", &["post_restore_sql"], true),
];

fn phase_seconds(run: &Run, steps: &[&str]) -> Option<f64> {
    let found: Vec<f64> = steps.iter().filter_map(|s| run.duration_of(s)).collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// `download 1h28m, unpack 3m02s, ...`: the current run's durations, in phase order.
fn phases_line(run: &Run) -> String {
    let mut parts = Vec::new();
    for (name, steps) in [
        ("fetch", &["fetching_url"][..]),
        ("download", &["downloading"]),
        ("unpack+check", &["extracting"]),
        ("drop", &["dropping"]),
        ("schema", &["restoring_pre_data"]),
        ("unlog", &["unlogging"]),
        ("data+indexes", &["restoring_data"]),
        ("post-sql", &["post_restore_sql"]),
    ] {
        if let Some(s) = phase_seconds(run, steps) {
            parts.push(format!("{name} {}", human_duration(s)));
        }
    }
    // Steps this version does not know (a newer writer) are shown under their own label.
    for d in &run.durations {
        if !PHASE_COLUMNS
            .iter()
            .any(|(_, steps, _)| steps.contains(&d.step.as_str()))
        {
            parts.push(format!("{} {}", d.step, human_duration(d.seconds)));
        }
    }
    parts.join(", ")
}

/// The widest the text gets.
pub const WIDTH: usize = 100;

/// `  Label     text`, the text wrapped at spaces to [`WIDTH`] under itself (a single word
/// longer than the line, such as a path, stays whole).
fn field(label: &str, text: &str) -> String {
    let indent = 12;
    let mut out = format!("  {label:<9} ");
    let mut col = out.chars().count().max(indent);
    let mut first = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        if !first && col + 1 + len > WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
            first = true;
        }
        if !first {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += len;
        first = false;
    }
    out.push('\n');
    out
}

/// The human form.
pub fn status_text(view: &StatusView, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let Some(run) = view.current else {
        out.push_str("No replication has run yet.\n");
        if view.target_lock_held == Some(true) {
            out.push_str("A replicator holds the target now: its run records itself here once it has wiped the target.\n");
        }
        out.push_str(&format!("State read from {}.\n", view.source));
        return out;
    };
    let phase = match section(run) {
        Some(s) => format!("{} ({s})", run.phase.name()),
        None => run.phase.name().to_string(),
    };
    let liveness = match (view.live, view.live_pid, &view.written_by) {
        (true, Some(pid), _) => format!("live, pid {pid}"),
        (true, None, Some(w)) => format!("live, {w}"),
        (true, None, None) => "live".to_string(),
        (false, _, _) if run.is_terminal() => "finished".to_string(),
        (false, _, _) if view.source_kind == SourceKind::Target => {
            "NOT live: interrupted; `replicator resume` where it ran continues it".to_string()
        }
        (false, _, _) => "NOT live: interrupted; `replicator resume` continues it".to_string(),
    };
    out.push_str(&format!("Run {}  [{liveness}]\n", run.run_id));
    if run.is_terminal() {
        let total = run
            .finished_at
            .map(|f| human_duration(seconds_between(run.started_at, f)))
            .unwrap_or_default();
        out.push_str(&format!(
            "  Phase     {phase}, finished {} (took {total})\n",
            run.finished_at.map(clock).unwrap_or_default()
        ));
    } else {
        out.push_str(&format!(
            "  Phase     {phase}, for {} (since {})\n",
            human_duration(seconds_between(run.phase_started_at, now)),
            clock(run.phase_started_at)
        ));
    }
    if let Phase::Failed { failed_in, .. } = &run.phase {
        out.push_str(&format!("  Failed in {failed_in}\n"));
    }
    if let Some(d) = download_rate(run, now) {
        out.push_str(&format!(
            "  Progress  {} of {}{}, {:.1} MiB/s{}\n",
            size(d.done),
            d.total.map(size).unwrap_or_else(|| "?".into()),
            d.percent.map(|p| format!(" ({p:.1}%)")).unwrap_or_default(),
            d.rate / 1048576.0,
            d.eta
                .map(|e| format!(", ETA {}", human_duration(e)))
                .unwrap_or_default()
        ));
    } else if let (Some(Progress::Items { done, total }), false) =
        (&run.progress, run.is_terminal())
    {
        out.push_str(&format!(
            "  Progress  {done} / {total} items of the dump restored\n"
        ));
    }
    out.push_str(&format!(
        "  Attempt   {} / {} (MAX_RETRY_COUNT + 1){}\n",
        run.attempt,
        run.max_attempts,
        match run.next_attempt_at {
            Some(at) if at > now && !run.is_terminal() => format!(
                ", next at {} (in {})",
                clock(at),
                human_duration(seconds_between(now, at))
            ),
            _ => String::new(),
        }
    ));
    if let Some(b) = run.backup() {
        out.push_str(&format!(
            "  Backup    {}{}{}\n            id {}\n",
            b.name,
            b.size.map(|s| format!(", {}", size(s))).unwrap_or_default(),
            b.created_at
                .map(|t| format!(", created {}", t.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default(),
            b.id,
        ));
    }
    // A live source is not a backup: say which database, and that each run takes its own
    // snapshot (the name of the "backup" is the same every night).
    if let Origin::Live { source } = &run.origin {
        out.push_str(&field(
            "Source",
            &format!("{source} (SOURCE_DATABASE_URL): a pg_dump of it, one snapshot per run"),
        ));
    }
    if let Some(e) = &run.error {
        let label = if run.is_terminal() {
            "Error"
        } else {
            "Last error"
        };
        out.push_str(&field(label, e));
    }
    if !run.durations.is_empty() {
        out.push_str(&field("Phases", &phases_line(run)));
    }
    for l in &run.left_out {
        let more = l.count.saturating_sub(l.names.len() as u64);
        out.push_str(&field(
            "Left out",
            &format!(
                "{} {} ({}{}): {}",
                l.count,
                l.kind,
                l.names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                l.why
            ),
        ));
    }
    if let Some(m) = &run.masking {
        out.push_str(&field("Masking", &m.describe()));
    }
    if let Some(mode) = &run.mode {
        out.push_str(&field("Mode", &mode.describe()));
    }
    if let Some(load) = &run.load {
        out.push_str(&field("Tables", &load.describe()));
    }
    if let Some(r) = &run.refresh {
        out.push_str(&field("Refresh", &r.describe(run.is_terminal())));
        out.push_str(&field("Readers", &format!("kept: {}", r.readers_line())));
        for v in &r.views {
            out.push_str(&field("View", v));
        }
    }
    if view.target_lock_held == Some(true) && run.is_terminal() {
        out.push_str(
            "  Now       a replicator holds the target: its new run records itself here once it has wiped the target\n",
        );
    }
    let mut state = format!("read from {}", view.source);
    if let Some(w) = &view.written_by {
        state.push_str(&format!("; this run's record was written by {w}"));
    }
    out.push_str(&field("State", &state));
    if !view.history.is_empty() {
        out.push('\n');
        out.push_str(&history_table(&view.history[..view.history.len().min(10)]));
    }
    out
}

/// The last runs, one a line, at most [`WIDTH`] columns: started, took, outcome, backup, and
/// the time spent in each phase.
fn history_table(runs: &[Run]) -> String {
    let columns: Vec<_> = PHASE_COLUMNS
        .iter()
        .filter(|(_, steps, optional)| {
            !optional
                || runs
                    .iter()
                    .any(|r| phase_seconds(r, steps).is_some_and(|s| s >= 0.05))
        })
        .collect();
    // "  MM-DD HH:MM  took    outcome backup" then " %6s" per phase column.
    let fixed = 2 + 11 + 2 + 6 + 2 + 6 + 1;
    let backup_width = runs
        .iter()
        .map(|r| r.backup().map(|b| b.name.chars().count()).unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max("backup".len())
        .min(WIDTH - 2 - fixed - 7 * columns.len());
    let mut out =
        String::from("Last runs (newest first; started in UTC; time spent in each phase)\n");
    let mut header = format!(
        "  {:<11}  {:>6}  {:<6} {:<backup_width$}",
        "started", "took", "result", "backup"
    );
    for (name, _, _) in &columns {
        header.push_str(&format!(" {name:>6}"));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    for r in runs {
        let took = r
            .finished_at
            .map(|f| human_duration(seconds_between(r.started_at, f)))
            .unwrap_or_else(|| "-".into());
        let mut backup: String = r.backup().map(|b| b.name.clone()).unwrap_or_default();
        if backup.chars().count() > backup_width {
            backup = backup
                .chars()
                .take(backup_width.saturating_sub(1))
                .collect();
            backup.push('~');
        }
        let mut line = format!(
            "  {:<11}  {:>6}  {:<6} {:<backup_width$}",
            r.started_at.format("%m-%d %H:%M"),
            took,
            r.phase.name().as_str(),
            backup
        );
        for (_, steps, _) in &columns {
            let cell = phase_seconds(r, steps)
                .map(human_duration)
                .unwrap_or_else(|| "-".into());
            line.push_str(&format!(" {cell:>6}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::json::status_json_at;
    use super::*;
    use crate::machine::{Backup, Event, PhaseName, Section, StepDuration, transition};
    use chrono::TimeZone;
    use serde_json::Value;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 5, 10, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn backup() -> Backup {
        Backup {
            id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
            name: "20261123041000_pix_production_4553".into(),
            created_at: Some(t(-3600)),
            size: Some(200 << 30),
        }
    }

    fn done_run(id: &str, start: i64, with_sql: bool) -> Run {
        let mut r = Run::new(id.into(), Origin::Scalingo, 10, t(start));
        r.phase = Phase::Done { backup: backup() };
        r.finished_at = Some(t(start + 43_380));
        for (step, seconds) in [
            ("fetching_url", 0.4),
            ("downloading", 5280.0),
            ("extracting", 181.0),
            ("dropping", 2.1),
            ("restoring_pre_data", 12.0),
            ("unlogging", 0.3),
            ("restoring_data", 31_860.0),
            ("post_restore_sql", if with_sql { 6000.0 } else { 0.0 }),
        ] {
            r.durations.push(StepDuration {
                step: step.into(),
                seconds,
            });
        }
        r
    }

    #[test]
    fn a_live_run_names_its_source_without_its_password() {
        let mut run = Run::new(
            "live".into(),
            Origin::Live {
                source: "reader@prod.example:5432/app".into(),
            },
            10,
            t(0),
        );
        run = transition(&run, Event::Start, t(0)).unwrap();
        let view = StatusView {
            current: Some(&run),
            live: true,
            source: "state directory /app/.local/state/replicator".into(),
            ..Default::default()
        };
        let text = status_text(&view, t(5));
        assert!(
            text.contains("Source    reader@prod.example:5432/app (SOURCE_DATABASE_URL)"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn every_line_fits_100_columns_even_with_every_phase_column() {
        let history: Vec<Run> = (0..12)
            .map(|i| done_run(&format!("r{i}"), -86_400 * i, i % 2 == 0))
            .collect();
        let mut live = Run::new("now".into(), Origin::Scalingo, 10, t(0));
        live = transition(&live, Event::Start, t(0)).unwrap();
        live = transition(&live, Event::Fetched(backup()), t(1)).unwrap();
        live = transition(
            &live,
            Event::Progress(Progress::Bytes {
                done: 50 << 30,
                total: Some(200 << 30),
            }),
            t(600),
        )
        .unwrap();
        let view = StatusView {
            current: Some(&live),
            history: &history,
            live: true,
            live_pid: Some(4242),
            source: "state directory /app/.local/state/replicator".into(),
            ..Default::default()
        };
        let text = status_text(&view, t(1200));
        for line in text.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} > {WIDTH}: {line}",
                line.len()
            );
        }
        assert!(text.contains("Downloading, for 19m59s"), "{text}");
        assert!(text.contains("(25.0%)"), "{text}");
        assert!(text.contains("ETA "), "{text}");
        assert!(text.contains("live, pid 4242"), "{text}");
        assert!(text.contains("Attempt   1 / 11"), "{text}");
        // Ten rows, all seven phase columns (unlog and sql spent time).
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Last runs"))
            .collect();
        assert_eq!(table.len(), 12, "{text}");
        assert!(
            table[1].ends_with("dl unpack   drop schema  unlog   data    sql"),
            "{}",
            table[1]
        );
        assert!(table[2].contains("8h51m"), "{}", table[2]);
        assert!(!text.contains('\x1b'), "no colour codes");
    }

    #[test]
    fn optional_columns_are_left_out_when_no_run_spent_time_there() {
        let mut run = done_run("a", 0, false);
        run.durations.retain(|d| d.step != "unlogging");
        let history = vec![run.clone()];
        let view = StatusView {
            current: Some(&run),
            history: &history,
            source: "x".into(),
            ..Default::default()
        };
        let text = status_text(&view, t(50_000));
        assert!(!text.contains("unlog  "), "{text}");
        assert!(!text.contains("  sql"), "{text}");
        assert!(
            text.contains("20261123041000_pix_production_4553"),
            "{text}"
        );
        assert!(text.contains("Phase     Done, finished"), "{text}");
        assert!(text.contains("download 1h28m"), "{text}");
    }

    #[test]
    fn json_has_the_same_keys_with_or_without_a_run() {
        let run = done_run("a", 0, false);
        let with = status_json_at(
            &StatusView {
                current: Some(&run),
                history: std::slice::from_ref(&run),
                source: "x".into(),
                ..Default::default()
            },
            t(50_000),
        );
        let without = status_json_at(&StatusView::default(), t(0));
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&with), keys(&without));
        assert_eq!(without["phase"], "Idle");
        assert_eq!(without["run_id"], Value::Null);
        assert_eq!(with["phase"], "Done");
        assert_eq!(with["total_seconds"], 43_380.0);
        assert_eq!(with["source_kind"], "state_dir");
        assert_eq!(
            with["history"][0]["backup_name"],
            "20261123041000_pix_production_4553"
        );
    }

    #[test]
    fn the_refresh_and_the_readers_kept_are_shown_in_text_json_page_and_metrics() {
        use crate::machine::{ReaderKept, RefreshMode, RunRefresh};
        let mut run = done_run("a", 0, false);
        let mut r = RunRefresh::new(RefreshMode::Swap);
        r.schemas = vec!["public".into()];
        r.switched_at = Some(t(43_000));
        r.readers = vec![ReaderKept {
            role: "metabase".into(),
            gets: "SELECT on 42 tables, default privileges".into(),
        }];
        run.refresh = Some(r);
        let view = StatusView {
            current: Some(&run),
            source: "x".into(),
            ..Default::default()
        };
        let text = status_text(&view, t(50_000));
        assert!(
            text.contains("  Refresh   swap of public: switched 2026-11-23 17:06:40 UTC\n"),
            "{text}"
        );
        assert!(
            text.contains("  Readers   kept: metabase (SELECT on 42 tables, default privileges)\n"),
            "{text}"
        );
        let json = status_json_at(&view, t(50_000));
        assert_eq!(json["refresh"]["mode"], "swap");
        assert_eq!(json["refresh"]["switched_at"], t(43_000).to_rfc3339());
        assert_eq!(json["refresh"]["wiped_at"], Value::Null);
        assert_eq!(json["refresh"]["readers"][0]["role"], "metabase");
        let html = page_html(&view, t(50_000));
        assert!(
            html.contains("<dd id=\"refresh\">swap of public: switched"),
            "{html}"
        );
        assert!(
            html.contains("<dd id=\"readers\">metabase (SELECT on 42 tables"),
            "{html}"
        );
        let metrics = metrics_text(&view, None, t(50_000));
        assert!(metrics.contains("replicator_run_refresh_mode{refresh=\"swap\"} 1\n"));
        assert!(metrics.contains("replicator_run_refresh_mode{refresh=\"wipe\"} 0\n"));
        assert!(metrics.contains(&format!(
            "replicator_run_refresh_timestamp_seconds {}\n",
            t(43_000).timestamp()
        )));
        assert!(metrics.contains("replicator_run_reader_roles 1\n"));
        // A record written before the refresh existed shows none of it.
        let old = Run {
            refresh: None,
            ..run.clone()
        };
        let text = status_text(
            &StatusView {
                current: Some(&old),
                source: "x".into(),
                ..Default::default()
            },
            t(50_000),
        );
        assert!(
            !text.contains("Refresh") && !text.contains("Readers"),
            "{text}"
        );
    }

    #[test]
    fn a_retrying_run_shows_its_next_attempt_and_last_error() {
        let mut run = Run::new("r".into(), Origin::Scalingo, 3, t(0));
        run.phase = Phase::Dropping { backup: backup() };
        run.attempt = 2;
        run.max_attempts = 4;
        run.next_attempt_at = Some(t(120));
        run.error = Some("HTTP 503 from Scalingo".into());
        let view = StatusView {
            current: Some(&run),
            source: "the target database a@b:5432/c (table replicator.runs)".into(),
            source_kind: SourceKind::Target,
            written_by: Some("pid 7 on host bg-1".into()),
            ..Default::default()
        };
        let text = status_text(&view, t(60));
        assert!(
            text.contains(
                "Attempt   2 / 4 (MAX_RETRY_COUNT + 1), next at 2026-11-23 05:12:00 UTC (in 1m00s)"
            ),
            "{text}"
        );
        assert!(text.contains("Last error HTTP 503 from Scalingo"), "{text}");
        assert!(text.contains("where it ran"), "{text}");
        assert!(text.contains("pid 7 on host bg-1"), "{text}");
        let failed = Run {
            phase: Phase::Failed {
                failed_in: PhaseName::Restoring,
                backup: Some(backup()),
            },
            finished_at: Some(t(100)),
            ..run.clone()
        };
        let text = status_text(
            &StatusView {
                current: Some(&failed),
                source: "x".into(),
                ..Default::default()
            },
            t(200),
        );
        assert!(text.contains("Failed in Restoring"), "{text}");
        assert!(text.contains("  Error     HTTP 503"), "{text}");
        let _ = Section::PreData;
    }
}
