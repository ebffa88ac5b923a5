//! The progress bar of a run in a terminal: the step, then bytes downloaded with rate and
//! ETA, or items restored, and the tables whose rows are in. Drawn only where
//! [`crate::logging::progress_bar_allowed`] (stdout a terminal, text logs); the log lines are
//! written above it, and the progress log lines it replaces are left out. Elsewhere (a pipe, a
//! log drain, `LOG_FORMAT=json`) nothing changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::machine::{Event, Progress, Run};

/// What the bar measures now: its style changes with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Nothing,
    Bytes { total_known: bool },
    Items,
}

/// A handle on the run's bar (clones draw the same bar).
#[derive(Clone)]
pub(super) struct TerminalBar {
    bar: ProgressBar,
    state: Arc<Mutex<BarState>>,
}

struct BarState {
    measure: Option<Measure>,
    /// Tables whose rows are in, of those the run loads (from the rows' section on).
    tables: Option<(u64, u64)>,
}

impl TerminalBar {
    /// A bar on stdout, when the terminal may have one.
    pub(super) fn start() -> Option<TerminalBar> {
        if !crate::logging::progress_bar_allowed() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        // The spinner and the elapsed time move even while no byte arrives.
        bar.enable_steady_tick(Duration::from_millis(250));
        crate::logging::show_bar(Some(bar.clone()));
        let this = TerminalBar {
            bar,
            state: Arc::new(Mutex::new(BarState {
                measure: None,
                tables: None,
            })),
        };
        this.measure(Measure::Nothing);
        Some(this)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BarState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run entered a phase: the bar names its step and starts over.
    pub(super) fn phase(&self, run: &Run) {
        self.bar.set_prefix(run.phase.step_label());
        self.bar.set_message("");
        self.bar.set_position(0);
        self.bar.set_length(0);
        self.bar.reset_eta();
        self.measure(Measure::Nothing);
    }

    pub(super) fn progress(&self, p: &Progress) {
        match *p {
            Progress::Bytes { done, total } => {
                self.measure(Measure::Bytes {
                    total_known: total.is_some(),
                });
                if let Some(t) = total {
                    self.bar.set_length(t);
                }
                self.bar.set_position(done);
            }
            Progress::Items { done, total } => {
                self.measure(Measure::Items);
                self.bar.set_length(total);
                self.bar.set_position(done);
            }
        }
    }

    /// The rows' section's events: tables started and loaded.
    pub(super) fn event(&self, e: &Event) {
        let tables = {
            let mut state = self.state();
            match e {
                Event::LoadStarted(l) => state.tables = Some((l.tables_done, l.tables_total)),
                Event::TableLoaded(_) => {
                    if let Some((done, _)) = state.tables.as_mut() {
                        *done += 1;
                    }
                }
                _ => return,
            }
            state.tables
        };
        if let Some((done, total)) = tables {
            self.bar.set_message(format!("tables {done}/{total}"));
        }
    }

    fn measure(&self, m: Measure) {
        let mut state = self.state();
        if state.measure == Some(m) {
            return;
        }
        state.measure = Some(m);
        let template = match m {
            Measure::Nothing => "{spinner:.cyan} {prefix:.bold} {elapsed} {msg}",
            Measure::Bytes { total_known: true } => {
                "{spinner:.cyan} {prefix:.bold} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}"
            }
            Measure::Bytes { total_known: false } => {
                "{spinner:.cyan} {prefix:.bold} {binary_bytes} {binary_bytes_per_sec} {elapsed} {msg}"
            }
            Measure::Items => {
                "{spinner:.cyan} {prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} items {msg} ETA {eta}"
            }
        };
        let style = ProgressStyle::with_template(template)
            .expect("the templates are valid")
            .progress_chars("=> ");
        self.bar.set_style(style);
    }
}

/// Clears the bar when the run's drive ends, however it ends; log lines go straight to stdout
/// again.
pub(super) struct BarGuard(pub(super) Option<TerminalBar>);

impl Drop for BarGuard {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            crate::logging::show_bar(None);
            b.bar.finish_and_clear();
        }
    }
}
