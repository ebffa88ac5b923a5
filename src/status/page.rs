//! `GET /`: the status as one HTML page made here, for a person: the current run's phase and a
//! progress bar, the last error, the mode, and a chart of the last runs, one bar per run split
//! by phase (inline SVG). No script, no external file: the page is whole in one response, and
//! refreshes itself every few seconds with a `<meta>` tag.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{
    PHASE_COLUMNS, StatusView, download_rate, human_duration, phase_seconds, seconds_between, size,
};
use crate::machine::{Phase, PhaseName, Progress, Run, Section};

/// Seconds between two reloads of the page.
const REFRESH_SECONDS: u32 = 5;

/// How many finished runs the chart shows (the store keeps as many).
const CHART_RUNS: usize = 30;

/// One colour per column of [`PHASE_COLUMNS`], in its order, then one for steps this version
/// does not know.
const COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];

/// The page for `view` at `now`.
pub fn page_html(view: &StatusView, now: DateTime<Utc>) -> String {
    let title = match view.current {
        Some(run) => format!("replicator: {}", run.phase.name()),
        None => "replicator".to_string(),
    };
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        esc(&title)
    );
    let liveness = match view.current {
        None => ("idle", "no run yet".to_string()),
        Some(r) if view.live && !r.is_terminal() => (
            "live",
            view.live_pid
                .map_or("live".to_string(), |pid| format!("live, pid {pid}")),
        ),
        Some(r) if r.is_terminal() => ("finished", "finished".to_string()),
        Some(_) => (
            "stale",
            "NOT live: interrupted (replicator resume continues it)".to_string(),
        ),
    };
    let _ = writeln!(
        out,
        "<header><h1>replicator</h1><span class=\"badge {}\">{}</span>\
         <span class=\"source\">read from {}</span></header>",
        liveness.0,
        esc(&liveness.1),
        esc(&view.source)
    );
    match view.current {
        Some(run) => {
            // Until the run's checks decide its refresh, the last run's says how the replica
            // was refreshed and whose access it kept.
            let last = view
                .history
                .iter()
                .find(|r| r.run_id != run.run_id && r.refresh.is_some());
            current(&mut out, run, last, now)
        }
        None => out.push_str(
            "<section class=\"card\" id=\"current\"><h2>No replication has run yet</h2>\
             <p>Once a run starts, its phase and progress show here.</p></section>\n",
        ),
    }
    chart(&mut out, view.history);
    let _ = write!(
        out,
        "<footer>Rendered {} (refreshes every {REFRESH_SECONDS} s). \
         The same data as JSON: <code>/status</code>; for Prometheus: <code>/metrics</code>.\
         </footer>\n</body></html>\n",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    out
}

/// The steps a run goes through, as the page names them, in order.
const STEPS: [&str; 10] = [
    "fetch",
    "download",
    "unpack + check",
    "drop",
    "schema",
    "unlog",
    "rows + indexes",
    "switch",
    "post SQL",
    "done",
];

/// Where `phase` stands in [`STEPS`].
fn step_index(phase: PhaseName, section: Option<Section>) -> usize {
    match phase {
        PhaseName::Idle | PhaseName::FetchingUrl => 0,
        PhaseName::Downloading => 1,
        PhaseName::Extracting => 2,
        PhaseName::Dropping => 3,
        PhaseName::Restoring if section == Some(Section::PreData) => 4,
        PhaseName::Unlogging => 5,
        PhaseName::Restoring => 6,
        PhaseName::Switching => 7,
        PhaseName::PostRestoreSql => 8,
        PhaseName::Done | PhaseName::Failed => 9,
    }
}

fn current(out: &mut String, run: &Run, last: Option<&Run>, now: DateTime<Utc>) {
    let section = match &run.phase {
        Phase::Restoring { section, .. } => Some(*section),
        _ => None,
    };
    let (at, failed) = match &run.phase {
        Phase::Failed { failed_in, .. } => (step_index(*failed_in, None), true),
        p => (step_index(p.name(), section), false),
    };
    let phase_text = match section {
        Some(s) => format!("{} ({})", run.phase.name(), s.label()),
        None => run.phase.name().to_string(),
    };
    let when = if run.is_terminal() {
        format!(
            "finished {} (took {})",
            run.finished_at
                .map(|f| f.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default(),
            run.finished_at
                .map(|f| human_duration(seconds_between(run.started_at, f)))
                .unwrap_or_default()
        )
    } else {
        format!(
            "for {} (since {})",
            human_duration(seconds_between(run.phase_started_at, now)),
            run.phase_started_at.format("%H:%M:%S UTC")
        )
    };
    let _ = write!(
        out,
        "<section class=\"card\" id=\"current\"><h2>Run <code>{}</code></h2>\
         <p class=\"phase\">Phase <strong id=\"phase\">{}</strong> {}</p>\n<ol class=\"steps\">",
        esc(&run.run_id),
        esc(&phase_text),
        esc(&when)
    );
    for (i, step) in STEPS.iter().enumerate() {
        let class = match i.cmp(&at) {
            std::cmp::Ordering::Less => "past",
            std::cmp::Ordering::Equal if failed => "failed",
            std::cmp::Ordering::Equal if matches!(run.phase, Phase::Done { .. }) => "past",
            std::cmp::Ordering::Equal => "now",
            std::cmp::Ordering::Greater => "next",
        };
        let _ = write!(out, "<li class=\"{class}\">{step}</li>");
    }
    out.push_str("</ol>\n");
    let (fraction, label) = progress(run, now);
    let (class, width) = match fraction {
        Some(f) => (
            if failed { "fill failed" } else { "fill" },
            format!("{:.1}", (f * 100.0).clamp(0.0, 100.0)),
        ),
        None => ("fill busy", "100".to_string()),
    };
    let _ = write!(
        out,
        "<div class=\"bar\" id=\"progress\" role=\"progressbar\" aria-valuemin=\"0\" \
         aria-valuemax=\"100\"{}><div class=\"{class}\" style=\"width:{width}%\"></div></div>\
         <p class=\"barlabel\">{}</p>\n<dl>",
        fraction.map_or(String::new(), |f| format!(
            " aria-valuenow=\"{:.0}\"",
            (f * 100.0).clamp(0.0, 100.0)
        )),
        esc(&label)
    );
    let mut rows: Vec<(&str, &str, String)> = vec![(
        "attempt",
        "Attempt",
        format!(
            "{} of {}{}",
            run.attempt,
            run.max_attempts,
            match run.next_attempt_at {
                Some(at) if at > now && !run.is_terminal() =>
                    format!(", next in {}", human_duration(seconds_between(now, at))),
                _ => String::new(),
            }
        ),
    )];
    if let Some(b) = run.backup() {
        rows.push((
            "backup",
            "Backup",
            format!(
                "{}{}{}",
                b.name,
                b.size.map(|s| format!(", {}", size(s))).unwrap_or_default(),
                b.created_at
                    .map(|t| format!(", taken {}", t.format("%Y-%m-%d %H:%M UTC")))
                    .unwrap_or_default()
            ),
        ));
    }
    // How the rows come, how tonight's copy replaces yesterday's, and whose access it keeps.
    rows.push((
        "mode",
        "Mode",
        run.mode
            .as_ref()
            .map_or("not decided yet (before the download)".to_string(), |m| {
                m.describe()
            }),
    ));
    match (&run.refresh, last.and_then(|l| l.refresh.as_ref())) {
        (Some(r), _) => {
            rows.push(("refresh", "Refresh", r.describe(run.is_terminal())));
            rows.push(("readers", "Readers kept", r.readers_line()));
        }
        (None, Some(l)) => {
            rows.push((
                "refresh",
                "Refresh",
                format!(
                    "not decided yet (by the checks before the restore); last run: {}",
                    l.describe(true)
                ),
            ));
            rows.push((
                "readers",
                "Readers kept",
                format!("last run: {}", l.readers_line()),
            ));
        }
        (None, None) => rows.push((
            "refresh",
            "Refresh",
            "not decided yet (by the checks before the restore)".to_string(),
        )),
    }
    if let Some(load) = &run.load {
        rows.push(("tables", "Tables", load.describe()));
    }
    if let Some(m) = &run.masking {
        rows.push(("masking", "Masking", m.describe()));
    }
    for l in &run.left_out {
        rows.push((
            "left-out",
            "Left out",
            format!("{} {} ({}): {}", l.count, l.kind, l.names.join(", "), l.why),
        ));
    }
    for (id, name, value) in rows {
        let _ = write!(out, "<dt>{name}</dt><dd id=\"{id}\">{}</dd>", esc(&value));
    }
    out.push_str("</dl>\n");
    let _ = match &run.error {
        Some(e) => writeln!(
            out,
            "<div class=\"error\" id=\"last-error\"><strong>{}</strong> {}</div>",
            if run.is_terminal() {
                "Error"
            } else {
                "Last error"
            },
            esc(e)
        ),
        None => writeln!(out, "<p class=\"noerror\" id=\"last-error\">No error.</p>"),
    };
    out.push_str("</section>\n");
}

/// How far the run is (`None`: no measure in this phase) and what the bar says.
fn progress(run: &Run, now: DateTime<Utc>) -> (Option<f64>, String) {
    if let Some(d) = download_rate(run, now) {
        let label = format!(
            "downloading: {} of {}{}, {}/s{}",
            size(d.done),
            d.total.map(size).unwrap_or_else(|| "?".into()),
            d.percent.map(|p| format!(" ({p:.1}%)")).unwrap_or_default(),
            size(d.rate as u64),
            d.eta
                .map(|e| format!(", ETA {}", human_duration(e)))
                .unwrap_or_default()
        );
        return (d.percent.map(|p| p / 100.0), label);
    }
    match &run.phase {
        Phase::Done { .. } => return (Some(1.0), "done".to_string()),
        Phase::Failed { failed_in, .. } => {
            return (Some(1.0), format!("failed in {failed_in}"));
        }
        Phase::Restoring {
            section: Section::DataAndPostData,
            ..
        } => {
            if let Some(load) = run.load.as_ref().filter(|l| l.tables_total > 0) {
                return (
                    Some(load.tables_done as f64 / load.tables_total as f64),
                    format!("rows: {}", load.describe()),
                );
            }
        }
        _ => {}
    }
    match &run.progress {
        Some(Progress::Items { done, total }) if *total > 0 => (
            Some(*done as f64 / *total as f64),
            format!("{done} / {total} items of the dump restored"),
        ),
        _ => (None, format!("{} in progress", run.phase.step_label())),
    }
}

/// The last runs as stacked bars, oldest on the left: each bar is a run, each segment the
/// time it spent in one column of [`PHASE_COLUMNS`].
fn chart(out: &mut String, history: &[Run]) {
    let runs: Vec<&Run> = history.iter().take(CHART_RUNS).rev().collect();
    let _ = writeln!(
        out,
        "<section class=\"card\" id=\"history\"><h2>Last {} runs, time spent in each phase</h2>",
        runs.len()
    );
    if runs.is_empty() {
        out.push_str("<p>No finished run yet.</p></section>\n");
        return;
    }
    let stacks: Vec<Vec<f64>> = runs.iter().map(|r| segments(r)).collect();
    let top = nice_ceiling(
        stacks
            .iter()
            .map(|s| s.iter().sum::<f64>())
            .fold(0.0, f64::max),
    );
    let (w, h, left, bottom, top_pad) = (900.0, 270.0, 64.0, 40.0, 12.0);
    let plot_w = w - left - 12.0;
    let plot_h = h - bottom - top_pad;
    let slot = plot_w / runs.len().max(12) as f64;
    let _ = write!(
        out,
        "<svg id=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" \
         aria-label=\"time spent in each phase by the last {} runs\">",
        runs.len()
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let y = top_pad + plot_h - plot_h * i as f64 / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text>",
            w - 12.0,
            left - 6.0,
            y + 4.0,
            if i == 0 {
                "0".to_string()
            } else {
                human_duration(v)
            }
        );
    }
    let label_every = runs.len().div_ceil(10);
    for (i, (run, stack)) in runs.iter().zip(&stacks).enumerate() {
        let x = left + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let failed = matches!(run.phase, Phase::Failed { .. });
        let _ = write!(
            out,
            "<g class=\"run{}\"><title>{}</title>",
            if failed { " failed" } else { "" },
            esc(&run_title(run, stack))
        );
        let mut y = top_pad + plot_h;
        for (seconds, colour) in stack.iter().zip(COLOURS) {
            if *seconds <= 0.0 {
                continue;
            }
            let sh = plot_h * seconds / top;
            y -= sh;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                sh.max(0.5)
            );
        }
        if failed {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"cross\" text-anchor=\"middle\">\u{2715}</text>",
                x + bw / 2.0,
                y - 4.0
            );
        }
        out.push_str("</g>");
        if i % label_every == 0 || i + 1 == runs.len() {
            let cx = x + bw / 2.0;
            let _ = write!(
                out,
                "<text y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">\
                 <tspan x=\"{cx:.1}\">{}</tspan><tspan x=\"{cx:.1}\" dy=\"13\">{}</tspan></text>",
                h - bottom + 14.0,
                run.started_at.format("%m-%d"),
                run.started_at.format("%H:%M")
            );
        }
    }
    out.push_str("</svg>\n<ul class=\"legend\">");
    let names = PHASE_COLUMNS
        .iter()
        .map(|(name, _, _)| *name)
        .chain(["other"]);
    for (name, colour) in names.zip(COLOURS) {
        let _ = write!(
            out,
            "<li><span style=\"background:{colour}\"></span>{name}</li>"
        );
    }
    out.push_str("<li><span class=\"x\">\u{2715}</span>failed</li></ul></section>\n");
}

/// Seconds per column of [`PHASE_COLUMNS`], then the steps this version does not know.
fn segments(run: &Run) -> Vec<f64> {
    let mut s: Vec<f64> = PHASE_COLUMNS
        .iter()
        .map(|(_, steps, _)| phase_seconds(run, steps).unwrap_or(0.0))
        .collect();
    s.push(
        run.durations
            .iter()
            .filter(|d| {
                !PHASE_COLUMNS
                    .iter()
                    .any(|(_, steps, _)| steps.contains(&d.step.as_str()))
            })
            .map(|d| d.seconds)
            .sum(),
    );
    s
}

fn run_title(run: &Run, stack: &[f64]) -> String {
    let mut t = format!(
        "{} {} ({}){}",
        run.started_at.format("%Y-%m-%d %H:%M UTC"),
        run.phase.name(),
        run.finished_at
            .map(|f| human_duration(seconds_between(run.started_at, f)))
            .unwrap_or_default(),
        run.backup()
            .map(|b| format!(", {}", b.name))
            .unwrap_or_default()
    );
    let names = PHASE_COLUMNS.iter().map(|(n, _, _)| *n).chain(["other"]);
    for (name, s) in names.zip(stack) {
        if *s > 0.0 {
            let _ = write!(t, "\n{name} {}", human_duration(*s));
        }
    }
    t
}

/// The smallest round duration at or above `seconds`, for the chart's scale.
fn nice_ceiling(seconds: f64) -> f64 {
    const STEPS: [f64; 16] = [
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
        14_400.0, 21_600.0,
    ];
    STEPS
        .iter()
        .map(|s| s * 4.0)
        .find(|s| *s >= seconds)
        .unwrap_or_else(|| (seconds / 43_200.0).ceil() * 43_200.0)
}

/// Text for HTML, attribute values included.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;\
margin:0 auto;max-width:960px;padding:16px;color:#1d2630;background:#f4f6f8}\
header{display:flex;align-items:baseline;gap:12px;flex-wrap:wrap}h1{font-size:22px;margin:0}\
.badge{padding:2px 8px;border-radius:10px;font-size:13px;color:#fff;background:#6b7785}\
.badge.live{background:#2f8f4e}.badge.stale{background:#c0392b}.source{color:#6b7785;font-size:13px}\
.card{background:#fff;border-radius:8px;padding:14px 18px;margin:14px 0;box-shadow:0 1px 3px #0002}\
h2{font-size:17px;margin:0 0 8px}code{font-size:13px}.phase{margin:4px 0 10px}\
.steps{display:flex;list-style:none;padding:0;margin:0 0 12px;gap:4px;flex-wrap:wrap}\
.steps li{padding:3px 8px;border-radius:4px;font-size:12px;background:#e8ecf0;color:#6b7785}\
.steps li.past{background:#d3ead9;color:#2f6b40}.steps li.now{background:#2f6fb0;color:#fff;font-weight:600}\
.steps li.failed{background:#c0392b;color:#fff;font-weight:600}\
.bar{height:22px;background:#e8ecf0;border-radius:11px;overflow:hidden}\
.fill{height:100%;background:#2f6fb0}.fill.failed{background:#c0392b}\
.fill.busy{background:repeating-linear-gradient(45deg,#9fbfe0 0 12px,#c7dbef 12px 24px)}\
.barlabel{margin:6px 0 10px;font-size:14px}dl{display:grid;grid-template-columns:110px 1fr;gap:4px 12px;margin:0}\
dt{color:#6b7785}dd{margin:0;overflow-wrap:anywhere}\
.error{margin-top:12px;padding:10px;border-left:4px solid #c0392b;background:#fdecea;overflow-wrap:anywhere}\
.noerror{margin:12px 0 0;color:#2f6b40}svg text{font-size:12px;fill:#4a5561}\
.grid{stroke:#dde3e8;stroke-width:1}.cross{fill:#c0392b;font-weight:700}\
.run.failed rect{stroke:#c0392b;stroke-width:1.5}\
.legend{display:flex;flex-wrap:wrap;gap:14px;list-style:none;padding:0;margin:8px 0 0;font-size:13px}\
.legend span{display:inline-block;width:12px;height:12px;margin-right:5px;border-radius:2px;vertical-align:-1px}\
.legend .x{color:#c0392b;width:auto;height:auto;font-weight:700}\
footer{color:#6b7785;font-size:12px;margin:8px 0 24px}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Backup, Event, Origin, StepDuration, transition};
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 5, 10, 0).unwrap() + chrono::Duration::seconds(s)
    }

    fn backup() -> Backup {
        Backup {
            id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
            name: "20261123041000_my_app_4553".into(),
            created_at: Some(t(-3600)),
            size: Some(200 << 30),
        }
    }

    fn finished(i: i64, failed: bool) -> Run {
        let mut r = Run::new(format!("r{i}"), Origin::Scalingo, 10, t(-86_400 * i));
        r.phase = if failed {
            Phase::Failed {
                failed_in: PhaseName::Restoring,
                backup: Some(backup()),
            }
        } else {
            Phase::Done { backup: backup() }
        };
        r.finished_at = Some(r.started_at + chrono::Duration::seconds(40_000));
        r.durations = [
            ("downloading", 5000.0),
            ("extracting", 180.0),
            ("restoring_data", 30_000.0),
        ]
        .into_iter()
        .map(|(s, secs)| StepDuration {
            step: s.into(),
            seconds: secs + i as f64,
        })
        .collect();
        r
    }

    #[test]
    fn a_download_in_progress_with_a_month_of_history() {
        let history: Vec<Run> = (1..=35).map(|i| finished(i, i % 7 == 0)).collect();
        let mut run = Run::new("now".into(), Origin::Scalingo, 10, t(0));
        run = transition(&run, Event::Start, t(0)).unwrap();
        run = transition(&run, Event::Fetched(backup()), t(1)).unwrap();
        run = transition(
            &run,
            Event::Progress(Progress::Bytes {
                done: 50 << 30,
                total: Some(200 << 30),
            }),
            t(600),
        )
        .unwrap();
        run.error = Some("HTTP 503 <from> Scalingo".into());
        let view = StatusView {
            current: Some(&run),
            history: &history,
            live: true,
            live_pid: Some(42),
            source: "state directory /app/state".into(),
            ..Default::default()
        };
        let html = page_html(&view, t(1200));
        assert!(html.contains("aria-valuenow=\"25\""), "{html}");
        assert!(html.contains("style=\"width:25.0%\""));
        assert!(html.contains("<li class=\"now\">download</li>"));
        // 30 runs charted, each split in its three phases; the failed ones marked.
        assert_eq!(html.matches("<g class=\"run").count(), 30);
        assert_eq!(html.matches("<g class=\"run failed\"").count(), 4);
        assert_eq!(html.matches("<rect ").count(), 90);
        assert!(html.contains("HTTP 503 &lt;from&gt; Scalingo"));
        assert!(html.contains("live, pid 42"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn no_run_says_so() {
        let html = page_html(&StatusView::default(), t(0));
        assert!(html.contains("No replication has run yet"));
        assert!(html.contains("No finished run yet"));
    }

    #[test]
    fn the_scale_is_round_and_above_the_longest_run() {
        assert_eq!(nice_ceiling(3.2), 4.0);
        assert_eq!(nice_ceiling(41_000.0), 57_600.0);
        assert!(nice_ceiling(200_000.0) >= 200_000.0);
    }
}
