//! Reliability, end to end with the real binary (docs/reliability.md): every fault of
//! Scalingo, every bad archive or dump, and every fault of the target ends either in a
//! permanent `Failed` that names the problem with the target untouched, or in `Done` with the
//! source's exact content. Working files never outlive the run.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fake_scalingo::{
    ErrorFault, FakeConfig, FakeScalingo, Route, Times, archive_bytes, default_backups,
};
use crate::common::scenario::{Scenario, stderr, stdout};

/// What the issue allows a run bound to fail before it says so.
const FAIL_WITHIN: Duration = Duration::from_secs(120);

/// Runs the binary, killing it (and failing the test) if it is still running after `limit`:
/// a hang is a defect, not a slow test.
pub fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the replicator");
    // Readers on their own threads: a chatty child must not block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("the replicator was still running after {limit:?} (a hang)\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    };
    (output, elapsed)
}

/// The files of runs under `state_dir/work` (there must be none once a run has ended).
fn working_files(s: &Scenario) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![s.state_dir.join("work")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

/// A scenario whose target holds yesterday's replica: a table with a row that a run bound to
/// fail must leave alone.
fn scenario(prefix: &str) -> Scenario {
    let s = Scenario::rich(prefix);
    s.put_stale_table_in_target();
    s
}

/// `replicator run` failed within the bound, said `needles` on stderr, and left the target
/// as it was.
fn assert_refused(s: &Scenario, out: &Output, took: Duration, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        matches!(out.status.code(), Some(c) if c != 0),
        "exit {:?}; stderr:\n{err}",
        out.status.code()
    );
    assert!(took < FAIL_WITHIN, "took {took:?}");
    for n in needles {
        assert!(
            err.to_lowercase().contains(&n.to_lowercase()),
            "stderr does not say {n:?}:\n{err}"
        );
    }
    assert_eq!(
        s.target_psql("SELECT count(*) FROM stale_leftover"),
        "1",
        "the target was touched"
    );
    assert!(
        working_files(s).is_empty(),
        "working files outlived the run: {:?}",
        working_files(s)
    );
    err
}

/// Like [`assert_refused`], for a run that reached the machine: it is `Failed` in a phase
/// before `Dropping`.
fn assert_failed_before_dropping(s: &Scenario, out: &Output, took: Duration, needles: &[&str]) {
    let err = assert_refused(s, out, took, needles);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed", "{st:#}");
    let failed_in = st["failed_in"].as_str().unwrap_or("");
    assert!(
        ["FetchingUrl", "Downloading", "Extracting"].contains(&failed_in),
        "failed in {failed_in}: {st:#}"
    );
    assert_eq!(st["live"], false);
}

fn run(s: &Scenario) -> (Output, Duration) {
    run_within(s.cmd(&["run"]), FAIL_WITHIN)
}

/// The run ended `Done`, with the source's exact content, and no working file left.
fn assert_done_exact(s: &Scenario, out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.status_json()["phase"], "Done");
    assert!(working_files(s).is_empty(), "{:?}", working_files(s));
}

fn serve(s: &Scenario, archive: Vec<u8>) {
    let len = archive.len() as u64;
    s.fake.set_archive(archive);
    s.fake.set_backups(default_backups(len));
}

fn serve_dump(s: &Scenario, dump: &[u8]) {
    serve(s, archive_bytes("20261123041000_my_app_4553.pgsql", dump));
}

fn error_fault(route: Option<Route>, status: u16, retry_after: Option<u64>, n: u32) -> ErrorFault {
    ErrorFault {
        route,
        status,
        retry_after,
        times: Times::Next(n),
    }
}

// ---- Scalingo ----

#[test]
fn a_bad_api_token_fails_at_once_naming_the_variable() {
    let s = scenario("rel_badtoken");
    s.fake.faults(|f| f.bad_api_token = Some(Times::Always));
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["SCALINGO_API_TOKEN"]);
    // Permanent: no retry burnt on it.
    assert_eq!(s.fake.records().count(Route::Exchange), 1);
    assert_eq!(s.status_json()["attempt"], 1);
}

/// A bearer that expires later in the run (here, when the download asks for its URL): the
/// client exchanges the token again once; a second 401 is permanent.
#[test]
fn an_expired_bearer_is_exchanged_again_once_then_fails() {
    let mut s = scenario("rel_expired");
    // Hold the run in Downloading, before its step, while the bearer is made to expire.
    s.set_env(
        replicator::engine::test_hooks::PAUSE_AT_VAR,
        "downloading:2",
    );
    let expire_during_download = |s: &Scenario, times: Times| {
        let child = s.spawn(&["run"]);
        s.wait_status(Duration::from_secs(60), |st| st["phase"] == "Downloading");
        s.fake.faults(|f| f.expire_bearer = Some(times));
        child.wait_with_output().unwrap()
    };
    let out = expire_during_download(&s, Times::Always);
    assert_failed_before_dropping(&s, &out, Duration::ZERO, &["401", "SCALINGO_API_TOKEN"]);
    assert_eq!(s.status_json()["failed_in"], "Downloading");
    assert_eq!(
        s.fake.records().count(Route::Exchange),
        2,
        "exchange again once"
    );

    s.fake.faults(|f| f.expire_bearer = None);
    s.fake.reset_records();
    let out = expire_during_download(&s, Times::Next(1));
    assert_done_exact(&s, &out);
    assert_eq!(s.fake.records().count(Route::Exchange), 2);
}

#[test]
fn an_unknown_app_fails_naming_the_app() {
    let s = scenario("rel_noapp");
    let mut cmd = s.cmd(&["run"]);
    cmd.env("SCALINGO_APP", "no-such-app");
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    assert_failed_before_dropping(&s, &out, took, &["no-such-app", "SCALINGO_APP"]);
}

#[test]
fn an_app_without_postgresql_fails() {
    let s = scenario("rel_nopg");
    s.fake.faults(|f| f.no_postgres_addon = true);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["no PostgreSQL addon"]);
}

#[test]
fn no_done_backup_fails_saying_what_was_seen() {
    let s = scenario("rel_nodone");
    s.fake.faults(|f| f.only_unfinished_backups = true);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["no finished backup", "running"]);
}

#[test]
fn a_429_with_a_plain_text_body_and_retry_after_is_waited_out() {
    let s = scenario("rel_429");
    s.fake.faults(|f| {
        f.error = Some(error_fault(Some(Route::Backups), 429, Some(1), 1));
    });
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
    assert!(stdout(&out).contains("429"), "{}", stdout(&out));
    assert_eq!(s.status_json()["attempt"], 2);
}

#[test]
fn two_500s_are_retried_and_the_run_finishes_exact() {
    let s = scenario("rel_500");
    s.fake
        .faults(|f| f.error = Some(error_fault(None, 500, None, 2)));
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
    assert_eq!(s.status_json()["attempt"], 3);
}

#[test]
fn a_burst_of_502_is_retried_and_a_longer_one_gives_up_naming_max_retry_count() {
    let s = scenario("rel_5xx");
    // A burst of two 502s on whatever the replicator asks first: two attempts lost.
    s.fake
        .faults(|f| f.error = Some(error_fault(None, 502, None, 2)));
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);

    // Longer than MAX_RETRY_COUNT (3): Failed, saying so, target untouched.
    s.put_stale_table_in_target();
    s.fake.faults(|f| {
        f.error = Some(ErrorFault {
            route: Some(Route::Backups),
            status: 503,
            retry_after: None,
            times: Times::Always,
        })
    });
    let mut cmd = s.cmd(&["run"]);
    cmd.arg("--force");
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    assert_failed_before_dropping(&s, &out, took, &["503", "MAX_RETRY_COUNT"]);
    assert_eq!(s.status_json()["attempt"], 4);
}

#[test]
fn an_expired_download_url_gets_a_fresh_one() {
    let s = scenario("rel_403");
    s.fake
        .faults(|f| f.download_forbidden = Some(Times::Next(1)));
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
    assert!(s.fake.records().count(Route::Archive) >= 2, "no fresh URL");
}

#[test]
fn a_download_cut_twice_resumes_with_range_and_finishes_exact() {
    let s = scenario("rel_cut2");
    let len = s.fake.archive_len();
    assert!(len > 4096, "archive of {len} bytes is too small to cut");
    s.fake.faults(|f| {
        f.cut_after = Some((len / 3, Times::Next(2)));
        // Chunks of a tenth of the archive, so that what came before the cut reaches the
        // client as data (a tiny body and its error arrive in one read, and hyper keeps
        // neither).
        f.bytes_per_second = Some(len * 2);
    });
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
    let ranges = s.fake.records().ranges;
    let resumed: Vec<_> = ranges
        .iter()
        .flatten()
        .filter(|r| r.starts_with("bytes=") && *r != "bytes=0-")
        .collect();
    assert_eq!(resumed.len(), 2, "{ranges:?}");
    // Nothing was downloaded twice.
    assert!(s.fake.records().bytes_served <= len, "{ranges:?}");
}

#[test]
fn a_download_cut_by_a_server_without_range_starts_over_and_finishes_exact() {
    let s = scenario("rel_norange");
    let len = s.fake.archive_len();
    s.fake.faults(|f| {
        f.ignore_range = true;
        f.cut_after = Some((len / 2, Times::Next(1)));
    });
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
}

#[test]
fn a_body_shorter_than_announced_is_retried_then_fails_naming_the_lengths() {
    let s = scenario("rel_short");
    let len = s.fake.archive_len();
    // Each response ends early, cleanly: the archive never completes.
    s.fake
        .faults(|f| f.short_body = Some((len / 10, Times::Always)));
    let (out, took) = run(&s);
    // hyper sees the connection close short of its Content-Length.
    assert_failed_before_dropping(&s, &out, took, &["message length", "MAX_RETRY_COUNT"]);
    assert_eq!(s.status_json()["failed_in"], "Downloading");

    // Once only: the next attempt resumes and the run finishes.
    s.fake
        .faults(|f| f.short_body = Some((len / 2, Times::Next(1))));
    let (out, _) = run(&s);
    assert_done_exact(&s, &out);
}

#[test]
fn an_archive_shorter_than_the_backup_size_announced_by_scalingo_fails() {
    let s = scenario("rel_size");
    let len = s.fake.archive_len();
    // Scalingo says the backup is longer than what the storage serves.
    let mut list = default_backups(len + 1000);
    list.iter_mut()
        .for_each(|b| b.size = b.size.map(|_| len + 1000));
    s.fake.set_backups(list);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &[&(len + 1000).to_string()]);
}

#[test]
fn a_server_that_stops_sending_is_timed_out_and_resumed() {
    let mut s = scenario("rel_stall");
    s.set_env("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "2");
    let len = s.fake.archive_len();
    s.fake
        .faults(|f| f.stall_after = Some((len / 2, Times::Next(1))));
    let (out, took) = run_within(s.cmd(&["run"]), Duration::from_secs(90));
    assert_done_exact(&s, &out);
    assert!(took < Duration::from_secs(90));
    let ranges = s.fake.records().ranges;
    assert!(
        ranges.iter().flatten().any(|r| r != "bytes=0-"),
        "{ranges:?}"
    );
}

// ---- bad archives and dumps: caught before Dropping ----

#[test]
fn random_bytes_fail_as_not_gzip() {
    let s = scenario("rel_random");
    let mut x: u32 = 12345;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    serve(&s, noise);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["not gzip"]);
    assert_eq!(s.status_json()["failed_in"], "Extracting");
}

#[test]
fn a_gzip_that_is_not_a_tar_fails() {
    let s = scenario("rel_notar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &vec![b'x'; 20_000]).unwrap();
    serve(&s, gz.finish().unwrap());
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["not a tar"]);
}

#[test]
fn an_archive_without_a_dump_fails() {
    let s = scenario("rel_nodump");
    serve(&s, archive_bytes("README.txt", b"no dump in here\n"));
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["no *.pgsql", "README.txt"]);
}

#[test]
fn a_plain_sql_dump_fails_with_the_pg_dump_fc_hint() {
    let s = scenario("rel_plainsql");
    serve_dump(
        &s,
        b"--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE t (id int);\n",
    );
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["plain-SQL", "pg_dump -Fc"]);
}

#[test]
fn a_truncated_dump_fails_before_dropping() {
    let s = scenario("rel_truncdump");
    let dump = std::fs::read(&s.dump).unwrap();
    // Past its table of contents, in its data: `pg_restore --list` still reads it.
    serve_dump(&s, &dump[..dump.len() * 9 / 10]);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["truncated"]);
    assert_eq!(s.status_json()["failed_in"], "Extracting");
}

#[test]
fn a_dump_from_a_newer_pg_dump_fails_naming_both_versions() {
    let s = scenario("rel_toonew");
    let mut dump = std::fs::read(&s.dump).unwrap();
    // The header's archive version: PGDMP, major, minor, revision.
    assert_eq!(&dump[..5], b"PGDMP");
    dump[6] = 99;
    serve_dump(&s, &dump);
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["newer pg_dump", "1.99", "pg_restore"]);
}

// ---- the target and the machine ----

#[test]
fn an_unreachable_target_fails_fast_and_touches_nothing() {
    let s = scenario("rel_unreach");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = s
        .target
        .url
        .replace(&format!(":{}/", s.cluster.port()), &format!(":{port}/"));
    let mut cmd = s.cmd(&["run"]);
    cmd.env("DATABASE_URL", &url);
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    let err = assert_refused(
        &s,
        &out,
        took,
        &["cannot connect to the target", &port.to_string()],
    );
    assert!(!err.contains(&s.target.password), "{err}");
    assert_eq!(s.fake.records().count(Route::Download), 0);
}

#[test]
fn a_wrong_password_fails_naming_database_url_and_not_the_password() {
    let s = scenario("rel_badpw");
    let url = s
        .target
        .url
        .replace(&s.target.password, "Wr0ng-Pa55w0rd-xyz");
    let mut cmd = s.cmd(&["run"]);
    cmd.env("DATABASE_URL", &url);
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    let err = assert_refused(&s, &out, took, &["password", "DATABASE_URL"]);
    assert!(!err.contains("Wr0ng-Pa55w0rd-xyz"), "{err}");
    assert_eq!(s.fake.records().count(Route::Download), 0);
}

#[test]
fn a_role_that_does_not_own_the_objects_in_the_target_fails_before_dropping() {
    let s = scenario("rel_notowner");
    // Yesterday's replica was restored by another role: DROP OWNED would leave its tables, and
    // the restore would collide with them.
    s.put_foreign_owned_table_in_target();
    let (out, took) = run(&s);
    assert_failed_before_dropping(&s, &out, took, &["UserAccounts", "owned by"]);
}

#[test]
fn the_target_going_away_in_the_middle_of_the_restore_is_retried_and_ends_exact() {
    let s = Scenario::new("rel_goaway", crate::crash::slow_post_data_source);
    s.put_stale_table_in_target();
    let child = s.spawn(&["run"]);
    s.wait_status(Duration::from_secs(90), |st| {
        st["phase"] == "Restoring" && st["section"] == "data+post-data"
    });
    // In the middle of the work: the slow index building (sessions that merely exist may be
    // idle ones the restore no longer needs, and the next entry would open a new one). The
    // index goes with its record in one round trip: its statement is inside the query text.
    crate::common::scenario::eventually(Duration::from_secs(30), "the slow index building", || {
        s.cluster
            .superuser_psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                     AND state = 'active' AND query LIKE '%CREATE INDEX slow_rows_slow_id%'",
                    s.target.dbname
                ),
            )
            .trim()
            == "1"
    });
    // As a failover or an operator would: every session of the target's role ends.
    s.cluster.superuser_psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND application_name = 'replicator-restore'",
            s.target.dbname
        ),
    );
    let out = child.wait_with_output().unwrap();
    assert_done_exact(&s, &out);
    let st = s.status_json();
    assert_eq!(st["attempt"], 2, "{st:#}");
    assert_eq!(s.restore_sessions(), 0);
}

#[test]
fn a_work_disk_too_small_even_to_stream_is_refused_before_anything() {
    // A backup larger than the disk streams (tests/it/streaming.rs); a budget below what a
    // stream needs is refused at start, by name.
    let s = scenario("rel_disk");
    let mut cmd = s.cmd(&["run"]);
    cmd.env("MAX_WORK_DISK", "1MiB");
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    assert_refused(&s, &out, took, &["MAX_WORK_DISK", "16MiB"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(s.fake.records().count(Route::Exchange), 0);
    assert_eq!(s.fake.records().count(Route::Download), 0);
}

#[test]
fn a_bad_max_retry_count_is_refused_before_anything() {
    let s = scenario("rel_badretry");
    let mut cmd = s.cmd(&["run"]);
    cmd.env("MAX_RETRY_COUNT", "-1");
    let (out, took) = run_within(cmd, FAIL_WITHIN);
    assert_refused(&s, &out, took, &["MAX_RETRY_COUNT"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(s.fake.records().count(Route::Exchange), 0);
}

// ---- secrets ----

/// Every byte under `dir`, file by file.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_reaches_a_log_line_the_status_or_the_state_directory() {
    let mut s = Scenario::new("rel_secrets", crate::crash::slow_post_data_source);
    let token = "tk-us-Z9distinctive-SECRET-token-77";
    // A fake that knows the distinctive token.
    let mut cfg = FakeConfig::new(s.archive.clone());
    cfg.api_token = token.into();
    s.fake = FakeScalingo::start(cfg);
    s.set_env("SCALINGO_API_TOKEN", token);
    s.set_env("RUST_LOG", "debug");
    // The notification's secrets: its bearer and a webhook whose path is the secret.
    let notify_token = "nt-Q4distinctive-NOTIFY-token-31";
    let hook_path = "hooks/Wh8distinctiveWEBHOOKpath";
    s.set_env("NOTIFY_TOKEN", notify_token);
    s.set_env("NOTIFY_URLS", &format!("{}/{hook_path}", s.fake.url()));
    // Every pg_restore the replicator starts (--version, --list, --file) writes its
    // environment here first: a child's environment is checked even when it lives for
    // milliseconds.
    let wrap = s.files.path().join("wrap");
    std::fs::create_dir_all(&wrap).unwrap();
    let envs = s.files.path().join("child-envs");
    std::fs::create_dir_all(&envs).unwrap();
    let real = s.cluster.bin_dir().join("pg_restore");
    let script = wrap.join("pg_restore");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n/usr/bin/env > {}/env.$$\nexec {} \"$@\"\n",
            envs.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    s.set_env("PATH", &format!("{}:{path}", wrap.display()));
    // Error paths on the way: a 500, an expired URL, a cut download.
    let len = s.fake.archive_len();
    s.fake.faults(|f| {
        f.error = Some(error_fault(Some(Route::Backups), 500, None, 1));
        f.download_forbidden = Some(Times::Next(1));
        f.cut_after = Some((len / 2, Times::Next(1)));
    });
    let mut child = s.spawn(&["run"]);
    // Its debug logs are read as they come: a pipe nobody reads fills (64 KiB) and stops the
    // run in the middle of a log line.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = drain(
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
    );
    let err_reader = drain(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    );
    // While pg_restore runs, no process's command line holds the password.
    s.wait_status(Duration::from_secs(90), |st| {
        st["phase"] == "Restoring" && st["section"] == "data+post-data"
    });
    crate::common::scenario::eventually(Duration::from_secs(30), "pg_restore busy", || {
        s.restore_sessions() > 0
    });
    let mut cmdlines = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            cmdlines += 1;
            assert!(
                !contains(&c, &s.target.password),
                "the password is on the command line of pid {:?}: {}",
                e.file_name(),
                String::from_utf8_lossy(&c)
            );
        }
    }
    assert!(cmdlines > 1);
    // Nor the environment of any of its children (pg_restore --file and its peers).
    let me = child.id().to_string();
    let mut children = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let is_child = status
            .lines()
            .any(|l| l.strip_prefix("PPid:").is_some_and(|p| p.trim() == me));
        if !is_child {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            children += 1;
            for secret in [
                token,
                notify_token,
                hook_path,
                s.target.password.as_str(),
                "DATABASE_URL",
                "PGPASSWORD",
            ] {
                assert!(
                    !contains(&env, secret),
                    "the environment of child {:?} holds {secret:?}",
                    e.file_name()
                );
            }
        }
    }
    // pg_restore --file may have finished translating by now: the wrapper's records below
    // are the check that sees every child.
    eprintln!("{children} child process(es) of the replicator read in /proc");
    let status = child.wait().unwrap();
    let out = std::process::Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    assert!(out.status.success(), "{}", stderr(&out));

    // The secrets of this run: the token, every bearer and database token the fake issued,
    // the download URLs' tokens, the password.
    let records = s.fake.records();
    let mut secrets: Vec<String> = vec![token.into(), s.target.password.clone()];
    for (_, auth) in &records.authorizations {
        if let Some(b) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
            secrets.push(b.to_string());
        }
    }
    secrets.push(notify_token.into());
    secrets.push(hook_path.into());
    secrets.sort();
    secrets.dedup();
    // Every pg_restore child's whole environment: no secret, no variable but the allowed.
    let mut child_envs = 0;
    for e in std::fs::read_dir(&envs).unwrap().flatten() {
        child_envs += 1;
        let env = std::fs::read_to_string(e.path()).unwrap();
        for line in env.lines() {
            let name = line.split('=').next().unwrap_or("");
            assert!(
                ["PATH", "LANG", "LANGUAGE", "TZ", "PWD", "SHLVL", "_"].contains(&name)
                    || name.starts_with("LC_"),
                "a pg_restore child got {name}: {env}"
            );
        }
        for secret in &secrets {
            assert!(
                !env.contains(secret.as_str()),
                "a pg_restore child got {secret:?}"
            );
        }
    }
    assert!(child_envs >= 2, "{child_envs} pg_restore children recorded");
    assert!(secrets.len() >= 4, "{secrets:?}");
    let status_text = stdout(&s.run_ok(&["status"]));
    let status_json = stdout(&s.run_ok(&["status", "--json"]));
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("run stdout".into(), out.stdout.clone()),
        ("run stderr".into(), out.stderr.clone()),
        ("status".into(), status_text.into_bytes()),
        ("status --json".into(), status_json.into_bytes()),
    ];
    for (p, bytes) in files_under(&s.state_dir) {
        places.push((p.display().to_string(), bytes));
    }
    for (place, bytes) in &places {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{place} contains the secret {secret:?}"
            );
        }
        // A download URL's token, whatever its value.
        assert!(
            !contains(bytes, "token=dl"),
            "{place} contains a download URL's token"
        );
    }
    // The logs did see the faults (the test is not vacuous).
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("500") && logs.contains("403"), "{logs}");
}
