//! Logs to stdout through `tracing`: readable lines by default, one JSON object per line with
//! `LOG_FORMAT=json` (for Scalingo's log drains). `RUST_LOG` filters (default `info`).
//!
//! When stdout is a terminal and the logs are text, a run may draw a progress bar there
//! ([`progress_bar_allowed`], [`show_bar`]): each log line is then written above the bar, which
//! is drawn again under it.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Debug, thiserror::Error)]
#[error("LOG_FORMAT={0:?} is invalid: expected `text` or `json`")]
pub struct LogFormatError(String);

static JSON: AtomicBool = AtomicBool::new(false);
/// Text logs on a stdout that is a terminal: a progress bar may be drawn.
static BAR_ALLOWED: AtomicBool = AtomicBool::new(false);
/// The bar drawn now, if any: log lines are written above it.
static BAR: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Whether a progress bar may be drawn on stdout: it is a terminal and the logs are text that
/// go there (not JSON for a drain, not `status`'s or `check`'s stderr).
pub fn progress_bar_allowed() -> bool {
    BAR_ALLOWED.load(Ordering::Relaxed)
}

/// The bar log lines must be written above (`None`: no bar any more).
pub fn show_bar(bar: Option<indicatif::ProgressBar>) {
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = bar;
}

/// stdout for the logs: above the progress bar when one is drawn.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stdout().write_all(buf)),
            None => std::io::stdout().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Whether logs are JSON (`LOG_FORMAT=json`): then whatever else the binary prints for a log
/// drain (the last error line on stderr) is a JSON object too.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// `to_stderr`: for the commands whose stdout is a report (`status`, `check`), so that a log
/// line never lands inside the report (or breaks `status --json`).
pub fn init_to(format: Option<&str>, to_stderr: bool) -> Result<(), LogFormatError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(Stdout)
        }
    });
    let tty = if to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match format.unwrap_or("text") {
        "json" => {
            JSON.store(true, Ordering::Relaxed);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .init()
        }
        "text" | "" => {
            BAR_ALLOWED.store(tty && !to_stderr, Ordering::Relaxed);
            builder.with_ansi(tty).init()
        }
        other => return Err(LogFormatError(other.to_string())),
    }
    Ok(())
}

/// The last line of a command that failed, on stderr: `replicator: <message>`, or in JSON
/// mode one object with the same fields as a log line plus the exit code.
pub fn print_final_error(message: &str, exit_code: u8) {
    if is_json() {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "message": message,
            "exit_code": exit_code,
        });
        eprintln!("{line}");
    } else {
        eprintln!("replicator: {message}");
    }
}
