//! Logs to stdout through `tracing`: readable lines by default, one JSON object per line with
//! `LOG_FORMAT=json` (for Scalingo's log drains). `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("LOG_FORMAT={0:?} is invalid: expected `text` or `json`")]
pub struct LogFormatError(String);

pub fn init(format: Option<&str>) -> Result<(), LogFormatError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    match format.unwrap_or("text") {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        "text" | "" => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        other => return Err(LogFormatError(other.to_string())),
    }
    Ok(())
}
