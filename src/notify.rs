//! `NOTIFY_URLS`: once a run is finished (`Done` or `Failed`), each URL gets a POST with a
//! JSON summary of it (see [`body`]), with `NOTIFY_TOKEN` as a bearer if set.
//!
//! A notification is a courtesy: it never fails nor delays the replication much. Each URL is
//! tried a few times with a backoff, all URLs at once, and the whole is cut after
//! [`TOTAL_BUDGET`]; a failure is a warning in the log. Neither the token nor the URLs' paths
//! and queries are logged (a Slack or Mattermost webhook's path *is* its secret): a URL shows
//! as its origin only.

use std::time::Duration;

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::machine::{Origin, Phase, Run};
use crate::secret::Secret;

/// All deliveries of one run end within this, delivered or not.
pub const TOTAL_BUDGET: Duration = Duration::from_secs(30);
/// One POST.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Waits before the 2nd, 3rd and 4th tries.
const BACKOFF: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Where to send notifications, validated.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    pub urls: Vec<NotifyUrl>,
    pub token: Option<Secret>,
}

/// A URL to POST to; only its origin is ever shown.
#[derive(Clone, Debug)]
pub struct NotifyUrl {
    url: Secret,
    origin: String,
}

impl NotifyUrl {
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Parses `NOTIFY_URLS`: comma-separated `http://` or `https://` URLs. The error says which
/// entry is wrong by its position and origin, never by its path.
pub fn parse_urls(value: &str) -> Result<Vec<NotifyUrl>, String> {
    let mut urls = Vec::new();
    for (i, raw) in value.split(',').map(str::trim).enumerate() {
        if raw.is_empty() {
            continue;
        }
        let parsed = reqwest::Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        let Some(u) = parsed else {
            let scheme = raw.split("://").next().filter(|s| *s != raw).unwrap_or("");
            return Err(format!(
                "entry {} (scheme {:?}) is not an http:// or https:// URL with a host",
                i + 1,
                scheme
            ));
        };
        if !crate::secret::secure_or_loopback(&u) {
            return Err(format!(
                "entry {} ({}) is plain http: a webhook's path and NOTIFY_TOKEN would cross the network in clear; use https:// (http:// only to a loopback host)",
                i + 1,
                u.origin().ascii_serialization()
            ));
        }
        let origin = u.origin().ascii_serialization();
        urls.push(NotifyUrl {
            url: Secret::new(raw),
            origin,
        });
    }
    Ok(urls)
}

/// The JSON a receiver gets.
///
/// ```json
/// {"outcome": "done", "run_id": "20261124T051000Z-1a2b", "origin": "scalingo",
///  "backup": {"name": "20261123041000_my_app_4553", "id": "6543...", "created_at": "..."},
///  "started_at": "...", "finished_at": "...", "total_seconds": 754.2,
///  "durations": {"downloading": 120.5, "restoring_data": 500.1, ...},
///  "failed_in": null, "error": null}
/// ```
pub fn body(run: &Run) -> Value {
    let ts = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let (outcome, failed_in) = match &run.phase {
        Phase::Done { .. } => ("done", Value::Null),
        Phase::Failed { failed_in, .. } => ("failed", json!(failed_in.as_str())),
        other => ("unfinished", json!(other.name().as_str())),
    };
    let mut durations = Map::new();
    for d in &run.durations {
        durations.insert(d.step.clone(), json!((d.seconds * 10.0).round() / 10.0));
    }
    let origin = match run.origin {
        Origin::Scalingo => "scalingo",
        Origin::Archive { .. } => "archive",
        Origin::Dump { .. } => "dump",
        Origin::Live { .. } => "live",
    };
    json!({
        "outcome": outcome,
        "run_id": run.run_id,
        "origin": origin,
        "backup": run.backup().map(|b| json!({
            "name": b.name,
            "id": b.id,
            "created_at": b.created_at.map(ts),
        })),
        "started_at": ts(run.started_at),
        "finished_at": run.finished_at.map(ts),
        "total_seconds": run.finished_at.map(|f| (f - run.started_at).num_milliseconds() as f64 / 1000.0),
        "durations": durations,
        "attempts": run.attempt,
        "failed_in": failed_in,
        "error": run.error,
    })
}

/// Sends `run`'s summary to every URL; returns how many got it. Never fails, ends within
/// [`TOTAL_BUDGET`].
pub async fn notify(http: &reqwest::Client, config: &NotifyConfig, run: &Run) -> usize {
    if config.urls.is_empty() {
        return 0;
    }
    let body = body(run);
    let sends = config
        .urls
        .iter()
        .map(|u| deliver(http, u, config.token.as_ref(), &body));
    match tokio::time::timeout(TOTAL_BUDGET, futures_util::future::join_all(sends)).await {
        Ok(results) => results.into_iter().filter(|ok| *ok).count(),
        Err(_) => {
            warn!(
                "notifications not all delivered within {}s: given up (the run itself is not affected)",
                TOTAL_BUDGET.as_secs()
            );
            0
        }
    }
}

async fn deliver(
    http: &reqwest::Client,
    url: &NotifyUrl,
    token: Option<&Secret>,
    body: &Value,
) -> bool {
    let tries = BACKOFF.len() + 1;
    for attempt in 1..=tries {
        let mut req = http
            .post(url.url.expose())
            .timeout(REQUEST_TIMEOUT)
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t.expose());
        }
        let (problem, retry) = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                info!(
                    notify_url = %url.origin,
                    status = resp.status().as_u16(),
                    "notification delivered to {}",
                    url.origin
                );
                return true;
            }
            Ok(resp) => {
                let s = resp.status();
                // A 4xx other than timeout or rate limit will say the same next time.
                let retry = s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429;
                (format!("HTTP {s}"), retry)
            }
            // `without_url`: the error would otherwise print the whole URL.
            Err(e) => (e.without_url().to_string(), true),
        };
        if !retry || attempt == tries {
            warn!(
                notify_url = %url.origin,
                attempts = attempt,
                "notification to {} failed after {attempt} attempt(s): {problem}; check NOTIFY_URLS and NOTIFY_TOKEN (the run itself is not affected)",
                url.origin
            );
            return false;
        }
        let wait = BACKOFF[attempt - 1];
        warn!(
            notify_url = %url.origin,
            attempt,
            "notification to {} failed: {problem}; retrying in {}s",
            url.origin,
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Backup, Event, transition};
    use chrono::{TimeZone, Utc};

    #[test]
    fn urls_are_checked_and_never_shown_whole() {
        let urls =
            parse_urls("https://hooks.example.org/services/T0/B0/s3cret, http://127.0.0.1:9/x")
                .unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[0].origin(), "https://hooks.example.org");
        assert!(!format!("{urls:?}").contains("s3cret"));
        let e = parse_urls("https://ok.example, ftp://h/s3cret").unwrap_err();
        assert!(e.contains("entry 2") && !e.contains("s3cret"), "{e}");
        assert!(parse_urls("hooks.example.org/x").is_err());
        assert!(parse_urls("").unwrap().is_empty());
    }

    #[test]
    fn the_body_says_outcome_backup_times_and_durations() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 5, 10, 0).unwrap();
        let backup = Backup {
            id: "abc".into(),
            name: "20261124041000_pix_1".into(),
            created_at: Some(t0),
            size: Some(10),
        };
        let mut run = Run::new("r1".into(), Origin::Scalingo, 3, t0);
        run = transition(&run, Event::Start, t0).unwrap();
        run = transition(
            &run,
            Event::Fetched(backup),
            t0 + chrono::Duration::seconds(2),
        )
        .unwrap();
        run = transition(
            &run,
            Event::PermanentFailure {
                error: "boom".into(),
            },
            t0 + chrono::Duration::seconds(5),
        )
        .unwrap();
        let b = body(&run);
        assert_eq!(b["outcome"], "failed");
        assert_eq!(b["failed_in"], "Downloading");
        assert_eq!(b["error"], "boom");
        assert_eq!(b["backup"]["name"], "20261124041000_pix_1");
        assert_eq!(b["backup"]["id"], "abc");
        assert_eq!(b["started_at"], "2026-11-24T05:10:00Z");
        assert_eq!(b["finished_at"], "2026-11-24T05:10:05Z");
        assert_eq!(b["total_seconds"], 5.0);
        assert_eq!(b["durations"]["fetching_url"], 2.0);
    }
}
