//! A run in a terminal draws a progress bar; through a pipe (a log drain, `cron`, CI) its log
//! lines are what they always were.

use std::process::{Command, Stdio};

use crate::common::scenario::{BIN, Scenario, payload_source, stderr, stdout};

/// `replicator run` on a pseudo-terminal, as `script` gives one: what the terminal received.
fn run_in_a_terminal(s: &Scenario, extra_env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("script");
    cmd.args([
        "-q",
        "-e",
        "-f",
        "-c",
        &format!("{BIN} run --force"),
        "/dev/null",
    ])
    .env_clear();
    for (k, v) in s.cmd(&["run"]).get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("TERM", "xterm-256color").env("COLUMNS", "120");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run script(1)");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// What a terminal shows of `s`: its text without the escape sequences (colours, cursor).
fn without_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final byte in @..~.
            if chars.next() == Some('[') {
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_terminal_gets_a_progress_bar_and_a_pipe_the_same_log_lines() {
    let s = Scenario::new("termbar", payload_source);
    // A download of about 5 s: long enough for the bar's frames and the logs' progress ticks.
    let size = s.fake.archive_len();
    s.fake
        .faults(|f| f.bytes_per_second = Some((size / 5).max(1024)));

    let drawn = run_in_a_terminal(&s, &[]);
    println!("--- on a terminal:\n{drawn}");
    // indicatif redraws the bar in place: carriage returns or cursor moves, and its figures.
    assert!(
        drawn.contains('\r') || drawn.contains("\x1b["),
        "no bar drawn"
    );
    let tty = without_escapes(&drawn);
    assert!(tty.contains("downloading ["), "no download bar: {tty}");
    assert!(tty.contains("KiB/s"), "no rate: {tty}");
    assert!(tty.contains("ETA"), "no ETA: {tty}");
    // The phase lines stay; the progress lines the bar replaces do not.
    assert!(tty.contains("Downloading -> Extracting"), "{tty}");
    assert!(
        !tty.contains("downloading: "),
        "progress lines under the bar: {tty}"
    );
    assert!(tty.contains(" Done: backup "), "{tty}");

    // Through a pipe: no bar, no escape, the progress lines as before.
    let out = s.run_ok(&["run", "--force"]);
    let piped = stdout(&out);
    println!("--- through a pipe:\n{piped}");
    assert!(!piped.contains('\r') && !piped.contains("\x1b"), "{piped}");
    assert!(piped.contains("downloading: "), "no progress line: {piped}");
    assert!(piped.contains("Downloading -> Extracting"), "{piped}");

    // In a terminal with LOG_FORMAT=json: JSON lines only, no bar.
    let json = run_in_a_terminal(&s, &[("LOG_FORMAT", "json")]);
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let line = line.trim_end_matches('\r');
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    }
    assert!(json.contains("\"bytes_done\""), "{json}");
}
