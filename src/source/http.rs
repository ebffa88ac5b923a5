//! HTTP for the source: the shared client, download URLs (which carry their token) and what
//! is safe to say about a request or its failure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header;

use crate::secret::Secret;

/// A download URL. It carries its own token: never log it whole, never persist it.
pub struct DownloadUrl(pub Secret);

impl DownloadUrl {
    /// Scheme, host and path, without the query string that holds the token: safe to log.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose())
    }
}

impl std::fmt::Debug for DownloadUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DownloadUrl({}?[redacted])", self.redacted())
    }
}

/// `scheme://host/path` of `url`, dropping the query and fragment (where tokens live).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// `Retry-After` in seconds, or as an HTTP date (then counted from `now`).
pub fn parse_retry_after(headers: &header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The error and its causes, without the request URL (a download URL holds its token).
pub fn describe_reqwest_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    }];
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

// ---- the API's documents (only the fields used; unknown fields are ignored) ----

/// The HTTP client the downloads share (rustls, read timeout, no total timeout).
///
/// A multi-hour download must not have a total timeout; the read timeout is what notices a
/// stalled connection.
pub fn http_client(read_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("replicator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(read_timeout.min(Duration::from_secs(30)))
        .read_timeout(read_timeout)
        .tcp_keepalive(Duration::from_secs(60))
        .redirect(secure_redirects())
        .build()
        .expect("a rustls reqwest client always builds")
}

pub use crate::secret::secure_or_loopback;

/// Redirects are followed (up to 10) only to [`secure_or_loopback`] URLs, and never from
/// `https` down to `http`: a download URL's token or a bearer must not leave TLS. The error
/// names the target's scheme and host only.
pub fn secure_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        if attempt.previous().len() >= 10 {
            attempt.error("more than 10 redirects")
        } else if downgrade || !secure_or_loopback(attempt.url()) {
            let to = format!(
                "{}://{}",
                attempt.url().scheme(),
                attempt.url().host_str().unwrap_or("")
            );
            attempt.error(format!(
                "refused a redirect to {to}: only https (or http on loopback), never from https down to http"
            ))
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_may_carry_a_secret() {
        for ok in [
            "https://db-api.osc-fr1.scalingo.com/x",
            "http://127.0.0.1:8080/x",
            "http://[::1]:80/",
            "http://localhost:3000",
        ] {
            assert!(
                secure_or_loopback(&reqwest::Url::parse(ok).unwrap()),
                "{ok}"
            );
        }
        for no in [
            "http://example.com/hook",
            "http://10.0.0.1/",
            "ftp://127.0.0.1/",
        ] {
            assert!(
                !secure_or_loopback(&reqwest::Url::parse(no).unwrap()),
                "{no}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = Utc::now();
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "17".parse().unwrap());
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(17)));
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(header::RETRY_AFTER, later.parse().unwrap());
        let d = parse_retry_after(&h, now).unwrap();
        assert!(d.as_secs() >= 29 && d.as_secs() <= 30, "{d:?}");
    }
}
