//! A live database as the source (`SOURCE_DATABASE_URL`): `pg_dump` of it streams into the
//! target, nothing of the dump on disk but its head, the password nowhere but in the
//! replicator; a source that is the target is refused before anything is touched, by `run`
//! and `check`.
//!
//! The source is a database of the shared cluster owned by a role of its own (as an app's
//! database is), reached over TCP with a password full of the characters URLs and password
//! files escape.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::pg::PgCluster;
use crate::common::scenario::{Scenario, eventually, kill_9, stderr, stdout};

const APP: &str = include_str!("../fixtures/app-two-schemas.sql");

/// The live source of a scenario: its owner's role and password, and its URL.
struct Source {
    role: String,
    password: String,
    url: String,
}

/// The owner of database `db` (its name, and a password with `:`, `@`, `\`, `%`, `'`).
fn owner_of(db: &str) -> (String, String) {
    (format!("{db}_owner"), format!("pw:{db}@l\\ive%'src"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The app fixture (a second schema, a sequence, indexes, foreign keys across schemas, a
/// large object), plus `bulk` rows (each ~100 bytes of COPY text), created as the database's
/// own role.
fn fill(rows: u32) -> impl FnOnce(&PgCluster, &str) {
    move |c, db| {
        let (role, password) = owner_of(db);
        c.superuser_psql(
            "postgres",
            &format!(
                "CREATE ROLE \"{role}\" LOGIN NOSUPERUSER PASSWORD '{}';\n\
                 ALTER DATABASE \"{db}\" OWNER TO \"{role}\";",
                password.replace('\'', "''")
            ),
        );
        c.superuser_psql(
            db,
            &format!(
                "SET ROLE \"{role}\";\n{APP}\n\
                 CREATE TABLE analytics.bulk (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES public.accounts (id), payload text NOT NULL);\n\
                 INSERT INTO analytics.bulk SELECT g, 1 + g % 40, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {rows}) g;\n\
                 CREATE INDEX bulk_account_idx ON analytics.bulk (account_id);"
            ),
        );
    }
}

fn live_scenario(prefix: &str, rows: u32) -> (Scenario, Source) {
    let s = Scenario::new(prefix, fill(rows));
    let (role, password) = owner_of(&s.source_db);
    let url = format!(
        "postgres://{role}:{}@127.0.0.1:{}/{}",
        percent_encode(&password),
        s.source_cluster.port(),
        s.source_db
    );
    (
        s,
        Source {
            role,
            password,
            url,
        },
    )
}

/// The binary with `SOURCE_DATABASE_URL` instead of Scalingo's app.
fn live_cmd(s: &Scenario, source_url: &str, args: &[&str]) -> Command {
    let mut c = s.cmd(args);
    c.env_remove("SCALINGO_APP")
        .env_remove("SCALINGO_API_TOKEN")
        .env("SOURCE_DATABASE_URL", source_url);
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("run the replicator")
}

fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// Every file under `dir` and its size.
fn files_under(dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => files_under(&path, out),
            Ok(m) => {
                let size = out.entry(path.display().to_string()).or_insert(0);
                *size = (*size).max(m.len());
            }
            Err(_) => {}
        }
    }
}

/// The running `pg_dump` children of `parent` (the other tests' harness runs pg_dump too):
/// (pid, command line, environment).
fn pg_dumps(parent: u32) -> Vec<(u32, String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let child = status.lines().any(|l| {
            l.strip_prefix("PPid:")
                .is_some_and(|p| p.trim() == parent.to_string())
        });
        if !child || !status.lines().any(|l| l == "Name:\tpg_dump") {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        // Between its fork and its exec, a child still runs the replicator's image.
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !program.ends_with(b"pg_dump") {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        out.push((
            pid,
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
            environ,
        ));
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A live source restores exactly (every table's rows and md5, sequences, indexes,
/// constraints, large objects), with nothing of the dump on disk but its small head, and
/// the source's password in no log, no child's command line or environment, no file left.
#[test]
fn a_live_source_restores_exactly_with_nothing_on_disk_and_its_password_nowhere() {
    let (s, src) = live_scenario("live_ok", 250_000);
    let bulk_bytes: u64 = s
        .source_cluster
        .superuser_psql(
            &s.source_db,
            "SELECT sum(length(t::text) + 1) FROM analytics.bulk t",
        )
        .trim()
        .parse()
        .unwrap();
    assert!(
        bulk_bytes > 16 << 20,
        "the source is too small: {bulk_bytes}"
    );

    // check: the source answers, is not the target, and its pg_dump's head passes.
    let out = output(live_cmd(&s, &src.url, &["check"]));
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", stderr(&out));
    for line in [
        "ok    source ",
        "ok    target is not the source",
        "ok    dump            pg_dump of SOURCE_DATABASE_URL",
        "ok    restore plan",
    ] {
        assert!(report.contains(line), "no {line:?} in:\n{report}");
    }
    assert!(
        report.contains(&format!("live source {}@127.0.0.1", src.role)),
        "{report}"
    );
    assert!(!all_output(&out).contains(&src.password));

    // The run, watched: the state dir's files, and the pg_dump child.
    let mut cmd = live_cmd(&s, &src.url, &["run"]);
    // pg_dump is alive (blocked on its pipe) while the run waits before the wipe.
    cmd.env("REPLICATOR_TEST_PAUSE_AT", "dropping:2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn the replicator");
    let pid = child.id();
    let output = std::thread::scope(|scope| {
        let waiter = scope.spawn(move || child.wait_with_output().unwrap());
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut dumps = Vec::new();
        let mut passfile_modes = Vec::new();
        let mut most_on_disk = 0u64;
        while !waiter.is_finished() {
            let mut now = BTreeMap::new();
            files_under(&s.state_dir, &mut now);
            most_on_disk = most_on_disk.max(now.values().sum());
            for (path, size) in now {
                if path.ends_with(".pgpass")
                    && let Ok(m) = std::fs::metadata(&path)
                {
                    passfile_modes.push(m.permissions().mode() & 0o777);
                }
                let e = seen.entry(path).or_insert(0);
                *e = (*e).max(size);
            }
            for d in pg_dumps(pid) {
                if !dumps
                    .iter()
                    .any(|(p, _, _): &(u32, String, Vec<u8>)| *p == d.0)
                {
                    dumps.push(d);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = waiter.join().unwrap();
        (out, seen, dumps, passfile_modes, most_on_disk)
    });
    let (out, seen, dumps, passfile_modes, most_on_disk) = output;
    let logs = all_output(&out);
    assert!(out.status.success(), "run {pid} failed:\n{logs}");
    assert!(logs.contains("this run is live"), "{logs}");

    // Exact: rows and md5 of every table, sequences, indexes, constraints, large objects.
    let expected = s.expected_fingerprint();
    let got = s.target_fingerprint();
    assert!(expected.tables.len() >= 8, "{:?}", expected.tables);
    assert!(
        expected
            .tables
            .iter()
            .any(|t| t.0 == "analytics.bulk" && t.1 == 250_000)
    );
    assert!(!expected.sequences.is_empty() && !expected.large_objects.is_empty());
    assert_eq!(got.tables, expected.tables);
    assert_eq!(got.indexes.len(), expected.indexes.len());
    assert_eq!(
        got.constraints.iter().filter(|c| c.2 == "f").count(),
        expected.constraints.iter().filter(|c| c.2 == "f").count()
    );
    assert_eq!(got, expected);

    // Nothing of the dump on disk: the head, a few lists, the store; never the data.
    let head = seen
        .iter()
        .find(|(p, _)| p.ends_with("head.pgsql"))
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("the head was never seen in {seen:#?}"));
    eprintln!(
        "[live] head {head} bytes; at most {most_on_disk} bytes in the state directory at once; the rows are {bulk_bytes} bytes"
    );
    for (path, size) in &seen {
        if path.contains("/work/") {
            assert!(
                *size <= head.max(1 << 20),
                "{path} grew to {size} bytes, more than the head ({head} bytes)"
            );
        }
    }
    assert!(
        most_on_disk < 4 << 20,
        "the state directory held {most_on_disk} bytes at once (the rows are {bulk_bytes} bytes): {seen:#?}"
    );
    let mut after = BTreeMap::new();
    files_under(&s.state_dir.join("work"), &mut after);
    assert!(after.is_empty(), "working files left: {after:?}");

    // The password: in no log, no child's command line or environment, no persisted state.
    assert!(!logs.contains(&src.password), "the logs hold the password");
    assert!(!dumps.is_empty(), "no pg_dump child was seen");
    for (_, cmdline, environ) in &dumps {
        assert!(cmdline.contains("--format=custom"), "{cmdline}");
        assert!(!cmdline.contains(&src.password), "{cmdline}");
        assert!(
            !contains(environ, &src.password),
            "pg_dump's environment holds it"
        );
        assert!(
            !contains(environ, "PGPASSWORD"),
            "pg_dump's environment holds it"
        );
        assert!(
            !contains(environ, "DATABASE_URL"),
            "DATABASE_URL reached pg_dump"
        );
    }
    assert!(
        passfile_modes.iter().all(|m| *m == 0o600),
        "{passfile_modes:?}"
    );
    let mut store = BTreeMap::new();
    files_under(&s.state_dir, &mut store);
    for path in store.keys() {
        let bytes = std::fs::read(path).unwrap_or_default();
        assert!(
            !contains(&bytes, &src.password),
            "{path} holds the password"
        );
    }
    let status = stdout(&s.run_ok(&["status", "--json"]));
    assert!(!status.contains(&src.password), "{status}");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["phase"], "Done", "{st:#}");
    let records = s.target_psql("SELECT record::text FROM replicator.runs");
    assert!(
        records.contains(&format!("{}@127.0.0.1", src.role)) && !records.contains(&src.password),
        "{records}"
    );
}

/// `EXCLUDE_TABLE_DATA` with a live source: `pg_dump` leaves the table's rows where they are
/// (the source's statistics count no scan of it, so production is spared reading it), `check`
/// and `run` agree, and the target has the table, empty, and every other table exact.
#[test]
fn a_live_source_s_excluded_table_is_never_read_at_the_source_and_restores_empty() {
    let (s, src) = live_scenario("live_excl", 1_000);
    let scans = |table: &str| -> i64 {
        s.source_cluster
            .superuser_psql(
                &s.source_db,
                &format!(
                    "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"
                ),
            )
            .trim()
            .parse()
            .unwrap()
    };
    let (documents_before, accounts_before) = (scans("public.documents"), scans("public.accounts"));
    let with_exclusion = |args: &[&str]| {
        let mut c = live_cmd(&s, &src.url, args);
        c.env("EXCLUDE_TABLE_DATA", "documents");
        output(c)
    };

    let out = with_exclusion(&["check"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", stderr(&out));
    assert!(report.contains("ok    restore plan"), "{report}");

    let out = with_exclusion(&["run"]);
    let logs = all_output(&out);
    assert!(out.status.success(), "{logs}");
    assert!(
        logs.contains("rows left out (EXCLUDE_TABLE_DATA): documents"),
        "{logs}"
    );
    assert!(!logs.contains("nothing is excluded"), "{logs}");

    // Before anything here reads the source. pg_dump's session reports its scans when it ends: once those of the tables it read
    // are in, the excluded one must show none.
    eventually(
        Duration::from_secs(10),
        "the source's statistics of pg_dump's scans",
        || scans("public.accounts") > accounts_before,
    );
    assert_eq!(
        scans("public.documents"),
        documents_before,
        "the source's documents were read although their rows are excluded"
    );

    assert_eq!(
        s.target_psql("SELECT count(*) FROM public.documents")
            .trim(),
        "0"
    );
    let source_documents = s
        .source_cluster
        .superuser_psql(&s.source_db, "SELECT count(*) FROM public.documents");
    assert_ne!(source_documents.trim(), "0", "the fixture has documents");
    let others = |f: crate::common::pg::Fingerprint| -> Vec<(String, i64, String)> {
        f.tables
            .into_iter()
            .filter(|t| t.0 != "documents")
            .collect()
    };
    let (expected, got) = (s.expected_fingerprint(), s.target_fingerprint());
    assert_eq!(got.indexes, expected.indexes);
    assert_eq!(others(got), others(expected));
}

/// A source that is the target (the same URL, or another spelling of its host, or told by
/// the server's start time where the role may not read its system identifier) is refused
/// by `run` (exit 1, the target untouched) and by `check` (a FAIL line), before pg_dump.
#[test]
fn a_source_that_is_the_target_is_refused_by_run_and_check() {
    let (s, _) = live_scenario("live_same", 10);
    s.put_stale_table_in_target();
    let t = &s.target;
    let port = s.cluster.port();
    let same = t.url.clone();
    let localhost = format!(
        "postgres://{}:{}@localhost:{port}/{}",
        t.role, t.password, t.dbname
    );
    let cases = [("the same URL", same.clone()), ("localhost", localhost)];
    let run_case = |what: &str, url: &str| {
        let out = output(live_cmd(&s, url, &["run"]));
        let logs = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {logs}");
        assert!(
            logs.contains("point at the same database") && logs.contains("SOURCE_DATABASE_URL"),
            "{what}: {logs}"
        );
        assert!(!logs.contains(&t.password), "{what}: {logs}");
        assert!(
            s.table_exists("stale_leftover"),
            "{what}: the target was touched"
        );
        assert!(
            !logs.contains("started: one snapshot"),
            "{what}: pg_dump started: {logs}"
        );

        let out = output(live_cmd(&s, url, &["check"]));
        let report = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {report}");
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("FAIL  target is not the source")
                    && l.contains("point at the same database")),
            "{what}: {report}"
        );
        assert!(report.contains("skip  dump"), "{what}: {report}");
    };
    for (what, url) in &cases {
        run_case(what, url);
    }
    // A role that may not read pg_control_system(): the server's start time and port say it.
    s.cluster.superuser_psql(
        &t.dbname,
        "REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC",
    );
    let denied = s.target_psql("SELECT has_function_privilege('pg_control_system()', 'EXECUTE')");
    assert_eq!(denied, "f");
    run_case("without the system identifier", &same);
    assert!(s.table_exists("stale_leftover"));
}

/// `SOURCE_DATABASE_URL` with `SCALINGO_APP` is a configuration error (`run` exits 2,
/// `check` fails its configuration line: exit 1), and the flag is refused as the other
/// secrets are; neither says the URL.
#[test]
fn a_live_source_with_a_scalingo_app_or_as_a_flag_is_a_configuration_error() {
    let (s, src) = live_scenario("live_conf", 10);
    for args in [["run"], ["check"]] {
        let mut c = s.cmd(&args);
        c.env("SOURCE_DATABASE_URL", &src.url);
        let out = output(c);
        let logs = all_output(&out);
        let code = if args == ["check"] { 1 } else { 2 };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {logs}");
        assert!(
            logs.contains("SOURCE_DATABASE_URL and SCALINGO_APP are both set"),
            "{args:?}: {logs}"
        );
        assert!(!logs.contains(&src.password), "{logs}");
    }
    let flag = format!("--source-database-url={}", src.url);
    let out = output(live_cmd(&s, &src.url, &["run", &flag]));
    assert_eq!(out.status.code(), Some(2));
    let logs = all_output(&out);
    assert!(logs.contains("--source-database-url is refused"), "{logs}");
    assert!(!logs.contains(&src.password), "{logs}");
    assert!(!s.table_exists("replicator.runs"));
}

/// A wrong password fails at once (permanent, no retry) naming SOURCE_DATABASE_URL; a source
/// nobody answers for is retried, then fails saying where to look; a role that may not read a
/// table fails with what pg_dump said, permanent too: all before the wipe.
#[test]
fn a_refused_source_fails_before_the_wipe_saying_what_to_fix() {
    let (s, src) = live_scenario("live_refused", 10);
    s.put_stale_table_in_target();
    let wrong = src.url.replace(&percent_encode(&src.password), "not-it");
    let out = output(live_cmd(&s, &wrong, &["run"]));
    let logs = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("cannot connect to the source")
            && logs.contains("check the role and password in SOURCE_DATABASE_URL"),
        "{logs}"
    );
    assert!(
        !logs.contains("retrying"),
        "a refused password was retried: {logs}"
    );
    assert!(s.table_exists("stale_leftover"));

    // Nobody listening: retried, and said where to look.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nobody = src.url.replace(
        &format!(":{}/", s.source_cluster.port()),
        &format!(":{port}/"),
    );
    let mut c = live_cmd(&s, &nobody, &["run"]);
    c.env("MAX_RETRY_COUNT", "1");
    let out = output(c);
    let logs = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("retrying")
            && logs.contains("check the host and port in SOURCE_DATABASE_URL")
            && logs.contains("gave up after 2 attempts"),
        "{logs}"
    );
    assert!(!logs.contains(&src.password), "{logs}");
    assert!(s.table_exists("stale_leftover"));

    // A reader without the right to read the rows: pg_dump's own words.
    let reader = format!("{}_reader", s.source_db);
    s.source_cluster.superuser_psql(
        "postgres",
        &format!("CREATE ROLE \"{reader}\" LOGIN PASSWORD 'reader-pw'"),
    );
    let url = format!(
        "postgres://{reader}:reader-pw@127.0.0.1:{}/{}",
        s.source_cluster.port(),
        s.source_db
    );
    let out = output(live_cmd(&s, &url, &["run"]));
    let logs = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("pg_dump exited with status 1")
            && logs.contains("permission denied")
            && logs.contains("pg_read_all_data"),
        "{logs}"
    );
    assert!(!logs.contains("retrying"), "a refusal was retried: {logs}");
    assert!(s.table_exists("stale_leftover"));
}

/// `pg_dump` dies with the replicator, even on `kill -9`.
#[test]
fn pg_dump_dies_with_a_killed_replicator() {
    let (s, src) = live_scenario("live_kill", 10);
    let mut cmd = live_cmd(&s, &src.url, &["run"]);
    cmd.env("REPLICATOR_TEST_PAUSE_AT", "dropping:60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let mut mine = Vec::new();
    while mine.is_empty() && start.elapsed() < Duration::from_secs(60) {
        mine = pg_dumps(child.id())
            .into_iter()
            .map(|(pid, _, _)| pid)
            .collect();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!mine.is_empty(), "no pg_dump of {} seen", s.source_db);
    kill_9(&mut child);
    eventually(Duration::from_secs(10), "pg_dump dead", || {
        mine.iter().all(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|st| st.lines().any(|l| l.starts_with("State:\tZ")))
                .unwrap_or(true)
        })
    });
}

/// A live run cut in its rows (pg_dump's session ended on the source) cannot resume its
/// snapshot: the next attempt takes a new pg_dump, wipes again and ends exact. A second run
/// takes a new snapshot too: a live source has no "already restored".
#[test]
fn a_live_run_cut_in_its_rows_starts_again_from_a_new_snapshot() {
    let (s, src) = live_scenario("live_cut", 400_000);
    let child = live_cmd(&s, &src.url, &["run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    s.wait_status(Duration::from_secs(120), |st| {
        st["phase"] == "Restoring" && st["section"] == "data+post-data"
    });
    // Once a table's rows are in and recorded: the new snapshot's build must not take the
    // record for its own (in swap mode it builds a new shadow).
    eventually(
        Duration::from_secs(60),
        "a table recorded as loaded",
        || {
            s.target_psql_result("SELECT count(*) FROM replicator.loaded WHERE kind = 'TABLE DATA'")
                .is_ok_and(|n| n.trim() != "0")
        },
    );
    let ended = s.source_cluster.superuser_psql(
        "postgres",
        // OFFSET 0 keeps the filter before the call: an AND may be evaluated in any order.
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'replicator pg_dump' AND datname = '{}' OFFSET 0) s",
            s.source_db
        ),
    );
    assert_eq!(ended.trim(), "1", "no pg_dump session to end on the source");
    let out = child.wait_with_output().unwrap();
    let logs = all_output(&out);
    assert!(out.status.success(), "{logs}");
    assert!(
        logs.contains("stopped before its end")
            && logs.contains("takes a new pg_dump (a snapshot cannot be resumed)"),
        "{logs}"
    );
    assert_eq!(logs.matches("started: one snapshot").count(), 2, "{logs}");
    s.assert_target_is_source();
    assert_eq!(s.status_json()["attempt"], 2);

    let out = output(live_cmd(&s, &src.url, &["run"]));
    let logs = all_output(&out);
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("started: one snapshot"), "{logs}");
    assert!(!logs.contains("already restored"), "{logs}");
    s.assert_target_is_source();
}

/// A live run that fails after its head was read (here: the target holds tables and no
/// confirmation) ends its `pg_dump` with it: the daemon, waiting for its next tick, holds no
/// snapshot and no lock on the source.
#[test]
fn a_failed_live_run_leaves_no_pg_dump_on_the_source_while_the_daemon_waits() {
    let (s, src) = live_scenario("live_daemon", 50_000);
    // Tables the replicator never put there, and no REPLICATOR_TARGET_CONFIRM: refused in
    // Extracting, after pg_dump's head.
    s.target_psql("CREATE TABLE not_ours (id int)");
    let log = s.files.path().join("daemon.log");
    let mut cmd = live_cmd(&s, &src.url, &["daemon"]);
    cmd.env("SCHEDULE", "*/20 * * * * *")
        .env("SCHEDULE_ALLOW_FREQUENT", "true")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null());
    let mut daemon = cmd.spawn().unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(Duration::from_secs(60), "a failed run", || {
        read().contains("the next tick tries again")
    });
    let logs = read();
    assert!(
        logs.contains("started: one snapshot") && logs.contains("REPLICATOR_TARGET_CONFIRM"),
        "{logs}"
    );
    let sessions = s.source_cluster.superuser_psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'replicator pg_dump'",
            s.source_db
        ),
    );
    let children = pg_dumps(daemon.id());
    kill_9(&mut daemon);
    assert_eq!(
        sessions.trim(),
        "0",
        "pg_dump still holds the source:\n{logs}"
    );
    assert!(
        children.is_empty(),
        "pg_dump still runs: {:?}",
        children.len()
    );
    assert!(s.table_exists("not_ours"));
}
