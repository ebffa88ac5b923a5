//! The daemon and the guards around a run, end to end with the real binary: schedule, retries,
//! the crash during a backoff wait, SIGTERM, the advisory lock between two replicators, the
//! skip of a backup already restored.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::common::fake_scalingo::{ErrorFault, Route, Times};
use crate::common::scenario::{Scenario, big_source, eventually, kill_9, stderr, stdout};

/// Never fires within a test: only the resume at start can make such a daemon replicate.
const YEARLY: &str = "0 0 1 1 *";

/// A spawned replicator whose stdout and stderr are read as they come (the logs are waited on
/// while it runs, and a full pipe would block it).
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(s: &Scenario, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_with_state(s, args, env, &s.state_dir)
    }

    fn spawn_with_state(s: &Scenario, args: &[&str], env: &[(&str, &str)], state: &Path) -> Proc {
        let mut cmd = s.cmd_with_state(args, state);
        // The tests tick every few seconds: more often than a minute, on purpose.
        cmd.env("SCHEDULE_ALLOW_FREQUENT", "true");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the replicator");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Proc { child, out, err }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.err.lock().unwrap()
        )
    }

    fn wait_log(&mut self, timeout: Duration, needle: &str) {
        let start = Instant::now();
        while !self.stdout().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}\n{}",
                self.output()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "exited {status} before logging {needle:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal`, waits for the exit (at most `limit`) and returns the status and how long
    /// the process took to exit.
    fn signal_and_wait(&mut self, signal: i32, limit: Duration) -> (ExitStatus, Duration) {
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let sent = Instant::now();
        self.wait_exit(limit, sent)
    }

    fn wait_exit(&mut self, limit: Duration, since: Instant) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the replicator") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return (status, since.elapsed());
            }
            assert!(
                since.elapsed() < limit,
                "still running after {limit:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

fn api_500(times: u32) -> ErrorFault {
    ErrorFault {
        route: None,
        status: 500,
        retry_after: None,
        times: Times::Next(times),
    }
}

/// The acceptance: a fake Scalingo whose API answers 500 twice, a tick every 4 s.
#[test]
fn the_daemon_retries_500s_replicates_on_its_schedule_and_stops_on_sigterm() {
    let s = Scenario::rich("daemon_accept");
    s.put_stale_table_in_target();
    s.fake.faults(|f| f.error = Some(api_500(2)));
    let started = Instant::now();
    let mut d = Proc::spawn(
        &s,
        &["daemon"],
        &[
            ("SCHEDULE", "*/4 * * * * *"),
            ("MAX_RETRY_COUNT", "4"),
            ("RETRY_INITIAL_DELAY_SECONDS", "1"),
        ],
    );
    d.wait_log(Duration::from_secs(10), "next run at");
    let done = s.wait_status(Duration::from_secs(120), |st| st["phase"] == "Done");
    let to_done = started.elapsed();
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(done["attempt"], 3, "two 500s, then success: {done:#}");

    // The next tick finds the same backup: skipped, and said so.
    d.wait_log(Duration::from_secs(30), "already restored");
    let logs = d.stdout();
    assert!(
        logs.matches("next run at").count() >= 2,
        "the next run time is logged at start and after each run\n{logs}"
    );
    assert!(logs.contains("retrying in"), "{logs}");

    let (status, took) = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.output());
    assert!(took < Duration::from_secs(30));
    let st = s.status_json();
    assert_eq!(st["phase"], "Done");
    assert_eq!(st["live"], false);
    eprintln!(
        "acceptance: Done {:.1}s after start, SIGTERM to exit {:.2}s",
        to_done.as_secs_f64(),
        took.as_secs_f64()
    );
}

#[test]
fn sigterm_during_the_restore_ends_pg_restore_exits_zero_and_the_next_start_resumes() {
    let s = Scenario::new("daemon_term", big_source);
    let mut d = Proc::spawn(&s, &["daemon"], &[("SCHEDULE", "*/2 * * * * *")]);
    s.wait_status(Duration::from_secs(120), |st| {
        st["phase"] == "Restoring" && st["section"] == "data+post-data"
    });
    // Let pg_restore get going on the rows.
    eventually(Duration::from_secs(30), "pg_restore running", || {
        s.restore_sessions() > 0
    });
    let (status, took) = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.output());
    eprintln!(
        "SIGTERM during the restore: exit after {:.2}s",
        took.as_secs_f64()
    );
    // Ended by the replicator before it exited, not by a timeout later.
    assert_eq!(
        s.restore_sessions(),
        0,
        "pg_restore sessions left on the target"
    );
    let st = s.status_json();
    assert_eq!(st["phase"], "Restoring", "{st:#}");
    assert_eq!(st["live"], false);
    drop(d);

    // A schedule that does not fire: only the resume at start can finish the run.
    let mut d = Proc::spawn(&s, &["daemon"], &[("SCHEDULE", YEARLY)]);
    s.wait_status(Duration::from_secs(120), |st| st["phase"] == "Done");
    s.assert_target_is_source();
    let logs = d.stdout();
    assert!(logs.contains("resuming run"), "{logs}");
    assert!(
        !logs.contains("-> Dropping") && logs.contains("in Restoring (data+post-data)"),
        "a run cut in its rows goes on in its rows, without a second wipe\n{logs}"
    );
    let (status, _) = d.signal_and_wait(libc::SIGINT, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.output());
}

#[test]
fn transient_api_failures_are_retried_until_success_and_a_bad_token_is_not_retried() {
    let s = Scenario::rich("daemon_retry");
    s.fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::Backups),
            status: 503,
            retry_after: None,
            times: Times::Next(2),
        })
    });
    let out = s.run_ok(&["run"]);
    s.assert_target_is_source();
    let st = s.status_json();
    assert_eq!(st["phase"], "Done");
    assert_eq!(st["attempt"], 3, "{st:#}");
    assert!(stdout(&out).contains("503"), "{}", stdout(&out));

    let s = Scenario::rich("daemon_badtoken");
    s.put_stale_table_in_target();
    s.fake.faults(|f| f.bad_api_token = Some(Times::Always));
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SCALINGO_API_TOKEN"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        s.fake.records().count(Route::Exchange),
        1,
        "a bad token is not retried"
    );
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed");
    assert_eq!(st["attempt"], 1);
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn a_crash_during_the_backoff_wait_keeps_the_attempt_count_and_the_remaining_wait() {
    let s = Scenario::rich("daemon_crashwait");
    s.fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: None,
            status: 500,
            retry_after: None,
            times: Times::Always,
        })
    });
    let env = [
        ("RETRY_INITIAL_DELAY_SECONDS", "8"),
        ("RETRY_MAX_DELAY_SECONDS", "60"),
    ];
    let mut run = Proc::spawn(&s, &["run"], &env);
    let waiting = s.wait_status(Duration::from_secs(30), |st| {
        st["attempt"] == 2 && !st["next_attempt_at"].is_null()
    });
    let next_attempt_at = time(&waiting["next_attempt_at"]);
    kill_9(&mut run.child);
    let dead = s.status_json();
    assert_eq!(dead["live"], false);
    assert_eq!(dead["attempt"], 2, "{dead:#}");
    assert_eq!(time(&dead["next_attempt_at"]), next_attempt_at);
    assert!(
        Utc::now() < next_attempt_at,
        "the test must crash the run before its retry time"
    );

    s.fake.faults(|f| f.error = None);
    s.fake.reset_records();
    let mut d = Proc::spawn(&s, &["daemon"], &[("SCHEDULE", YEARLY)]);
    d.wait_log(Duration::from_secs(15), "waiting");
    eventually(Duration::from_secs(30), "the resumed attempt", || {
        s.fake.records().count(Route::Exchange) > 0
    });
    let first_call = Utc::now();
    // Polled every 100 ms: the call came at most that long before it was seen.
    assert!(
        first_call + chrono::Duration::milliseconds(150) >= next_attempt_at,
        "the resumed run called Scalingo at {first_call}, before its persisted retry time {next_attempt_at}"
    );
    let logs = d.stdout();
    assert!(
        logs.contains(&next_attempt_at.to_rfc3339()),
        "the resumed wait aims at the persisted time {next_attempt_at}, not a new one\n{logs}"
    );
    assert!(logs.contains("attempt 2/4"), "the count is kept\n{logs}");

    let done = s.wait_status(Duration::from_secs(60), |st| st["phase"] == "Done");
    assert_eq!(done["attempt"], 2, "{done:#}");
    s.assert_target_is_source();
    let (status, _) = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_replicator_on_the_same_target_is_refused_and_touches_nothing() {
    let s = Scenario::rich("daemon_lock");
    let size = s.fake.archive_len();
    // The first run's download lasts about 8 s.
    s.fake
        .faults(|f| f.bytes_per_second = Some((size / 8).max(1024)));
    let mut first = Proc::spawn(&s, &["run"], &[]);
    // The archive is small: the bytes reach the file only once the buffer is flushed, so
    // the phase is what tells the download is under way.
    s.wait_status(Duration::from_secs(30), |st| {
        st["phase"] == "Downloading" && st["live"] == true
    });

    let other_state = s.files.path().join("other-state");
    let out = s
        .cmd_with_state(&["run"], &other_state)
        .output()
        .expect("run the second replicator");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("another replication holds the target"),
        "{err}"
    );
    assert!(
        err.contains(" since "),
        "the holder's start is shown: {err}"
    );
    eprintln!("second run refused: {}", err.trim());

    // The daemon, from yet another state directory, skips its tick and says why.
    let third_state = s.files.path().join("third-state");
    let mut d = Proc::spawn_with_state(
        &s,
        &["daemon"],
        &[("SCHEDULE", "* * * * * *")],
        &third_state,
    );
    d.wait_log(
        Duration::from_secs(15),
        "another replication holds the target",
    );
    let (status, _) = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.output());
    let third = s
        .cmd_with_state(&["status", "--json"], &third_state)
        .output()
        .unwrap();
    let third: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    assert_eq!(
        third["phase"], "Idle",
        "the refused daemon started a run: {third:#}"
    );

    s.fake.faults(|f| f.bytes_per_second = None);
    let (status, _) = first.wait_exit(Duration::from_secs(120), Instant::now());
    assert_eq!(status.code(), Some(0), "{}", first.output());
    s.assert_target_is_source();
    assert_eq!(s.status_json()["phase"], "Done");
}

#[test]
fn the_backup_already_restored_is_skipped_and_force_restores_it() {
    let s = Scenario::rich("daemon_skip");
    s.run_ok(&["run"]);
    let first = s.status_json();
    assert_eq!(first["phase"], "Done");
    let downloads = s.fake.records().count(Route::Download);
    s.put_stale_table_in_target();

    // A skip says so and leaves the target (and its stale table) alone.
    let assert_skipped = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout(out).contains("already restored"), "{}", stdout(out));
        assert!(
            s.table_exists("stale_leftover"),
            "a skipped run touched the target"
        );
    };
    assert_skipped(&s.run_ok(&["run"]));
    assert_eq!(s.fake.records().count(Route::Download), downloads);
    let st = s.status_json();
    assert_eq!(st["run_id"], first["run_id"], "a skip is not a run");
    assert_eq!(st["phase"], "Done");

    s.run_ok(&["run", "--force"]);
    assert!(!s.table_exists("stale_leftover"));
    s.assert_target_is_source();
    assert_ne!(s.status_json()["run_id"], first["run_id"]);

    // A new container (Scalingo's disk does not survive a restart) has an empty state
    // directory: the records in the target tell it the backup is already there.
    let fresh = s.files.path().join("fresh-container");
    s.put_stale_table_in_target();
    assert_skipped(&s.cmd_with_state(&["run"], &fresh).output().unwrap());
    let out = s
        .cmd_with_state(&["status", "--json"], &fresh)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["phase"], "Done", "{st:#}");
    assert_ne!(
        st["phase"], "FetchingUrl",
        "the skip left a run behind: {st:#}"
    );
}

#[test]
fn an_invalid_schedule_or_zone_stops_the_daemon_at_start() {
    let s = Scenario::rich("daemon_badcron");
    s.put_stale_table_in_target();
    for (env, var) in [
        (vec![("SCHEDULE", "not a cron")], "SCHEDULE="),
        (vec![("SCHEDULE", "0 0 30 2 *")], "SCHEDULE="),
        (
            vec![
                ("SCHEDULE", "10 5 * * *"),
                ("SCHEDULE_TIMEZONE", "Mars/Olympus"),
            ],
            "SCHEDULE_TIMEZONE=",
        ),
        (vec![("SCHEDULE", " ")], "SCHEDULE is not set"),
    ] {
        let mut cmd = s.cmd(&["daemon"]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(var), "{env:?}: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "it did not stop at start"
        );
    }
    let out = s
        .cmd(&["daemon"])
        .env("SCHEDULE", "not a cron")
        .output()
        .unwrap();
    eprintln!("refused: {}", stderr(&out).trim());
    assert_eq!(s.fake.records().count(Route::Exchange), 0);
    assert!(s.table_exists("stale_leftover"));
    assert_eq!(s.status_json()["phase"], "Idle");
}
