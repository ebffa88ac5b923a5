//! Logs to stdout through `tracing`: readable lines by default, one JSON object per line with
//! `LOG_FORMAT=json` (for Scalingo's log drains). `RUST_LOG` filters (default `info`).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Debug, thiserror::Error)]
#[error("LOG_FORMAT={0:?} is invalid: expected `text` or `json`")]
pub struct LogFormatError(String);

static JSON: AtomicBool = AtomicBool::new(false);

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
            Box::new(std::io::stdout())
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
        "text" | "" => builder.with_ansi(tty).init(),
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
