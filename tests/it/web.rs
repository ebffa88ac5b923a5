//! `replicator web` as an operator uses it: Prometheus scraping `/metrics` during and after a
//! run (checked by the real `promtool`), a person opening `/` in a real headless Chromium,
//! many health checks at once. Real runs, real PostgreSQL, the fake Scalingo.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::fake_scalingo::{ErrorFault, Route, Times};
use crate::common::pg::free_port;
use crate::common::scenario::{Scenario, eventually, kill_9, payload_source, stderr};

pub(crate) const TOKEN: &str = "wt-Prom3theus-distinct-token";

/// One GET of `path` with `auth` as the Authorization header: status code, headers, body.
pub(crate) fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (code, head.to_ascii_lowercase(), body.to_string())
}

/// `/metrics` (with the token) once `pred` holds of it; panics after `timeout`.
fn metrics_when(port: u16, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let (code, _, body) = get(port, "/metrics", Some(&bearer()));
        assert_eq!(code, 200, "{body}");
        if pred(&body) {
            return body;
        }
        assert!(
            started.elapsed() < timeout,
            "the metrics never matched within {timeout:?}; last:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// The value of the series `series` (name and labels, exactly as exposed).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// A child process that a failing test must not leave behind: killed when dropped.
pub(crate) struct Reaped(Option<Child>);

impl Reaped {
    /// Kills it now; what it wrote.
    fn stop(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("not stopped yet");
        kill_9(&mut child);
        child.wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn start_web(s: &Scenario, port: u16) -> Reaped {
    let mut web = s
        .cmd(&["web"])
        .env("PORT", port.to_string())
        .env("WEB_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(10), "web listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(web.try_wait().unwrap().is_none(), "web exited");
    Reaped(Some(web))
}

/// A tool of Debian's that the test needs: its path, or `None` (with a message saying how to
/// get it) where it cannot be installed. `scripts/test` installs it when it runs as root, so
/// a root run without it is a broken setup, not a skip.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    if found.is_none() {
        // SAFETY: plain libc call.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            !root,
            "{name} is missing: run scripts/test, which installs Debian's `{package}` as root"
        );
        eprintln!(
            "SKIPPED: {name} is not installed and cannot be as a user other than root \
             (apt-get install {package}, or run scripts/test as root)"
        );
    }
    found
}

/// `promtool check metrics` on `text`: its verdict.
fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout)),
    )
}

#[test]
fn metrics_during_and_after_runs_pass_promtool_and_need_the_token() {
    let promtool = tool("promtool", "prometheus");
    let s = Scenario::new("webmetrics", payload_source);
    s.run_ok(&["run"]);
    // A night that fails: Scalingo refuses the token (permanent, no retry).
    s.fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::Exchange),
            status: 401,
            retry_after: None,
            times: Times::Next(1),
        })
    });
    assert_eq!(s.run(&["run", "--force"]).status.code(), Some(1));
    let port = free_port();
    let web = start_web(&s, port);

    // During a run: a slow download.
    let size = s.fake.archive_len();
    s.fake
        .faults(|f| f.bytes_per_second = Some((size / 6).max(1024)));
    let run = s.spawn(&["run", "--force"]);
    let during = metrics_when(port, Duration::from_secs(30), |m| {
        sample(m, "replicator_phase{phase=\"Downloading\"}") == 1.0
            && sample(m, "replicator_run_downloaded_bytes") > 0.0
    });
    println!("GET /metrics during the run:\n{during}");
    assert_eq!(sample(&during, "replicator_run_in_progress"), 1.0);
    assert_eq!(sample(&during, "replicator_run_mode{mode=\"whole\"}"), 1.0);
    assert_eq!(
        sample(&during, "replicator_run_backup_size_bytes"),
        size as f64
    );
    assert!(sample(&during, "replicator_last_success_timestamp_seconds") > 0.0);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    s.fake.faults(|f| f.bytes_per_second = None);

    // After: the snapshot is refreshed every 2 s.
    let after = metrics_when(port, Duration::from_secs(10), |m| {
        sample(m, "replicator_phase{phase=\"Done\"}") == 1.0
    });
    println!("GET /metrics after the run:\n{after}");
    let status = s.status_json();
    let finished = chrono::DateTime::parse_from_rfc3339(status["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert_eq!(
        sample(&after, "replicator_last_success_timestamp_seconds"),
        finished
    );
    let backup_at =
        chrono::DateTime::parse_from_rfc3339(status["backup_created_at"].as_str().unwrap())
            .unwrap()
            .timestamp() as f64;
    assert_eq!(
        sample(&after, "replicator_last_success_backup_timestamp_seconds"),
        backup_at
    );
    assert_eq!(
        sample(&after, "replicator_runs_total{outcome=\"done\"}"),
        2.0
    );
    assert_eq!(
        sample(&after, "replicator_runs_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&after, "replicator_run_in_progress"), 0.0);
    assert_eq!(
        sample(&after, "replicator_run_downloaded_bytes"),
        size as f64
    );
    let rows: f64 = status["load"]["rows"].as_u64().unwrap() as f64;
    assert!(rows > 0.0);
    assert_eq!(sample(&after, "replicator_run_loaded_rows"), rows);
    for step in ["downloading", "extracting", "restoring_data"] {
        let json_seconds = status["durations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["step"] == step)
            .unwrap()["seconds"]
            .as_f64()
            .unwrap();
        assert_eq!(
            sample(
                &after,
                &format!("replicator_last_run_phase_duration_seconds{{step=\"{step}\"}}")
            ),
            json_seconds,
            "{step}"
        );
    }
    assert_eq!(sample(&after, "replicator_run_retries"), 0.0);

    // Without the token, or with another: 401, and not a figure.
    for auth in [None, Some("Bearer wrong")] {
        let (code, headers, body) = get(port, "/metrics", auth);
        assert_eq!(code, 401, "{body}");
        assert!(headers.contains("www-authenticate: bearer"), "{headers}");
        assert!(!body.contains("replicator_"), "{body}");
    }
    let (_, headers, _) = get(port, "/metrics", Some(&bearer()));
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );

    if let Some(promtool) = &promtool {
        for (when, text) in [("during", &during), ("after", &after)] {
            let (ok, said) = promtool_check(promtool, text);
            assert!(ok && said.trim().is_empty(), "promtool on {when}: {said}");
        }
        // The check is real: a counter without `_total` is refused.
        let (ok, said) = promtool_check(
            promtool,
            "# HELP x_runs Runs.\n# TYPE x_runs counter\nx_runs 1\n",
        );
        assert!(!ok || !said.trim().is_empty(), "promtool took anything");
    }

    // A `web` container that cannot see this disk (Scalingo's): the target's records.
    let elsewhere = s.files.path().join("web-container-state");
    let port2 = free_port();
    let web2 = Reaped(Some(
        s.cmd_with_state(&["web"], &elsewhere)
            .env("PORT", port2.to_string())
            .env("WEB_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    eventually(Duration::from_secs(10), "second web listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port2)).is_ok()
    });
    let there = metrics_when(port2, Duration::from_secs(10), |m| {
        sample(m, "replicator_phase{phase=\"Done\"}") == 1.0
    });
    web2.stop();
    assert_eq!(
        sample(&there, "replicator_last_success_timestamp_seconds"),
        finished
    );
    assert_eq!(
        sample(&there, "replicator_run_loaded_rows"),
        rows,
        "{there}"
    );
    // The target keeps 30 runs, not a counter: no runs_total rather than one that goes down.
    assert!(!there.contains("replicator_runs_total{"), "{there}");
    if let Some(promtool) = &promtool {
        let (ok, said) = promtool_check(promtool, &there);
        assert!(
            ok && said.trim().is_empty(),
            "promtool on the target's: {said}"
        );
    }

    // 64 health checks at once, each answered.
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    let answered = clients
        .into_iter()
        .map(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        })
        .filter(|o| o.starts_with("HTTP/1.1 200 OK") && o.ends_with(r#"{"ok":true}"#))
        .count();
    assert_eq!(answered, 64);

    let out = web.stop();
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!logs.contains(TOKEN), "the token reached the logs: {logs}");
}

/// Headless Chromium's view of `url`: the DOM after parsing, and a screenshot at `png`.
fn chromium(chromium: &Path, url: &str, png: &Path) -> String {
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-dev-shm-usage",
    ];
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let out = Command::new(chromium)
            .args(common)
            .arg(format!(
                "--user-data-dir={}",
                home.path().join("profile").display()
            ))
            .args(extra)
            .arg(url)
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1000,1000".into(),
    ]);
    run(&["--dump-dom".into()])
}

#[test]
fn the_status_page_shows_the_run_and_the_chart_in_headless_chromium() {
    let Some(browser) = tool("chromium", "chromium") else {
        return;
    };
    let s = Scenario::new("webpage", payload_source);
    s.run_ok(&["run"]);
    let (reader, _) = crate::swap::add_reader(&s);
    for _ in 0..3 {
        s.run_ok(&["run", "--force"]);
    }
    s.fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::Exchange),
            status: 401,
            retry_after: None,
            times: Times::Next(1),
        })
    });
    assert_eq!(s.run(&["run", "--force"]).status.code(), Some(1));
    let port = free_port();
    let web = start_web(&s, port);
    // The page of a run in its download: the bar has something to show.
    let size = s.fake.archive_len();
    s.fake
        .faults(|f| f.bytes_per_second = Some((size / 40).max(1024)));
    let run = Reaped(Some(s.spawn(&["run", "--force"])));
    metrics_when(port, Duration::from_secs(30), |m| {
        sample(m, "replicator_phase{phase=\"Downloading\"}") == 1.0
            && sample(m, "replicator_run_downloaded_bytes") > 0.0
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    // A browser's prompt answered: any user, the token as password.
    let dom = chromium(
        &browser,
        &format!("http://me:{TOKEN}@127.0.0.1:{port}/"),
        &png,
    );
    println!("screenshot: {}", png.display());
    run.stop();
    web.stop();

    let shot = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    assert!(shot.len() > 20_000, "a blank page? {} bytes", shot.len());
    assert!(dom.contains("id=\"phase\">Downloading</strong>"), "{dom}");
    let valuenow = dom
        .split("aria-valuenow=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no measured progress bar: {dom}"));
    assert!((0.0..=100.0).contains(&valuenow), "{valuenow}");
    // Five finished runs charted, the failed one marked, each split in its phases.
    assert_eq!(dom.matches("<g class=\"run").count(), 5, "{dom}");
    assert_eq!(dom.matches("<g class=\"run failed\"").count(), 1, "{dom}");
    assert!(dom.matches("<rect ").count() >= 4 * 4, "{dom}");
    assert!(dom.contains("id=\"mode\">whole:"), "{dom}");
    // Before tonight's checks, the refresh and the readers kept of the last night.
    assert!(
        dom.contains(
            "id=\"refresh\">not decided yet (by the checks before the restore); last run: swap of "
        ),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"readers\">last run: ") && dom.contains(&format!("{reader} (SELECT on ")),
        "{dom}"
    );
    assert!(dom.contains("id=\"last-error\""), "{dom}");
    assert!(!dom.contains(TOKEN));
}

/// `docs/operations.md`'s alert rules and scrape configuration load in Prometheus as written.
#[test]
fn the_documented_alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let block = |start: &str| {
        let i = doc
            .find(start)
            .unwrap_or_else(|| panic!("no {start} block"));
        doc[i..i + doc[i..].find("```").unwrap()].to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, block("groups:\n")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x\n").unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "{}rule_files: [\"{}\"]\n",
            block("scrape_configs:\n").replace(
                "/etc/prometheus/replicator-web-token",
                &token.display().to_string()
            ),
            rules.display()
        ),
    )
    .unwrap();
    for args in [["check", "rules"], ["check", "config"]] {
        let file = if args[1] == "rules" { &rules } else { &config };
        let out = Command::new(&promtool)
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            stdout_of(&out),
            stderr(&out)
        );
    }
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        stdout_of(&out).contains("4 rules found"),
        "{}",
        stdout_of(&out)
    );
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
