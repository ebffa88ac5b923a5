//! A string that never shows itself: tokens, bearers, download URLs, passwords.

use std::fmt;

/// Holds a secret. `Debug` and `Display` print `[redacted]`, so a secret that ends up in a
/// log line or an error message by mistake still does not leak; the value is read only with
/// [`Secret::expose`], at the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("tk-us-abcdef");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "tk-us-abcdef");
    }
}

/// Whether `url` may carry a secret (a token in its query, a webhook's path, a bearer):
/// `https`, or `http` to a loopback host (the tests' fake servers, a local proxy). Plain
/// `http` elsewhere would show it to the network.
pub fn secure_or_loopback(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// A child process started from an empty environment plus `PATH`, the locale (`LANG`,
/// `LC_*`) and `TZ`: no secret of the replicator's (`SCALINGO_API_TOKEN`, `DATABASE_URL`,
/// `NOTIFY_TOKEN`, `NOTIFY_URLS`, ...) and no `PG*` variable reaches it. Every `pg_restore`
/// the replicator runs starts here.
pub fn child_command(program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(allowed_in_children) {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The variables a child inherits ([`child_command`]).
pub fn allowed_in_children(name: &str) -> bool {
    matches!(name, "PATH" | "LANG" | "LANGUAGE" | "TZ") || name.starts_with("LC_")
}

#[cfg(test)]
mod child_tests {
    use super::allowed_in_children;

    #[test]
    fn children_get_path_locale_and_tz_only() {
        for ok in ["PATH", "LANG", "LC_ALL", "LC_MESSAGES", "TZ"] {
            assert!(allowed_in_children(ok), "{ok}");
        }
        for no in [
            "DATABASE_URL",
            "SCALINGO_API_TOKEN",
            "NOTIFY_TOKEN",
            "NOTIFY_URLS",
            "PGPASSWORD",
            "PGSSLMODE",
            "HOME",
        ] {
            assert!(!allowed_in_children(no), "{no}");
        }
    }
}
