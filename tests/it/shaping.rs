//! Shaping the replica: `EXCLUDE_TABLE_DATA`, `POST_RESTORE_SQL`, `NOTIFY_URLS`, with the real
//! binary, pg_restore and PostgreSQL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::fake_scalingo::DONE_BACKUP_ID;
use crate::common::pg::PgCluster;
use crate::common::scenario::{Scenario, stderr, stdout};

const TOKEN: &str = "notify-tok-7f3a9c1e";

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the notification body is JSON")
    }
}

/// A loopback HTTP receiver: answers the statuses of `answers` in turn (the last one
/// repeats) and records every request.
pub(crate) struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) fn start(answers: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (g, answers) = (got.clone(), answers.to_vec());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let status = answers[n.min(answers.len() - 1)];
                if let Some(r) = serve_one(stream, status) {
                    g.lock().unwrap().push(r);
                }
            }
        });
        Receiver { port, got }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn serve_one(stream: TcpStream, status: u16) -> Option<Received> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut length, mut authorization, mut content_type) = (0usize, None, None);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse().ok()?,
            "authorization" => authorization = Some(v.trim().to_string()),
            "content-type" => content_type = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    Some(Received {
        method,
        path,
        authorization,
        content_type,
        body,
    })
}

/// Rows of `table` in the target.
fn rows(s: &Scenario, table: &str) -> i64 {
    s.target_psql(&format!("SELECT count(*) FROM public.\"{table}\""))
        .parse()
        .unwrap()
}

fn write(dir: &Path, name: &str, sql: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, sql).unwrap();
    p.to_str().unwrap().to_string()
}

const ANALYST_SQL: &str = "-- extra index for the analysts, and an old name kept alive\n\
    CREATE INDEX IF NOT EXISTS answers_result_idx ON answers (result);\n\
    CREATE OR REPLACE VIEW \"old-answers\" AS\n    SELECT id, value FROM answers;\n";

/// The issue's acceptance: rows of one table left out, a post-restore file, a notification.
#[test]
fn acceptance_excluded_rows_post_restore_sql_and_notification() {
    let mut s = Scenario::rich("shape_accept");
    let receiver = Receiver::start(&[200]);
    let sql = write(&s.files.path().join("sql"), "analysts.sql", ANALYST_SQL);
    s.set_env("EXCLUDE_TABLE_DATA", "knowledge-elements");
    s.set_env("POST_RESTORE_SQL", &sql);
    s.set_env("NOTIFY_URLS", &receiver.url("/hooks/replica"));
    s.set_env("NOTIFY_TOKEN", TOKEN);
    let out = s.run_ok(&["run"]);
    let logs = stdout(&out) + &stderr(&out);

    // The excluded table: there, empty, with its indexes and constraints.
    assert_eq!(rows(&s, "knowledge-elements"), 0);
    let src = s.expected_fingerprint();
    let dst = s.target_fingerprint();
    let ke_indexes = |f: &crate::common::pg::Fingerprint| -> Vec<(String, String)> {
        f.indexes
            .iter()
            .filter(|(_, def)| def.contains("\"knowledge-elements\""))
            .cloned()
            .collect()
    };
    assert_eq!(ke_indexes(&dst), ke_indexes(&src));
    assert_eq!(ke_indexes(&dst).len(), 3, "{:?}", ke_indexes(&dst));
    let ke_constraints = |f: &crate::common::pg::Fingerprint| {
        f.constraints
            .iter()
            .filter(|c| c.0 == "knowledge-elements")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(ke_constraints(&dst), ke_constraints(&src));
    // Every other table is exact.
    let others = |f: &crate::common::pg::Fingerprint| {
        f.tables
            .iter()
            .filter(|t| t.0 != "knowledge-elements")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(others(&src).len() >= 5);
    assert_eq!(others(&dst), others(&src));
    // answers references knowledge-elements: its foreign key cannot hold and is left out, said.
    assert!(
        logs.contains("answers_knowledgeElementId_fkey") && logs.contains("not restored"),
        "{logs}"
    );

    // The post-restore SQL's objects.
    assert!(s.table_exists("answers_result_idx"));
    assert!(s.table_exists("\"old-answers\""));
    assert_eq!(
        s.target_psql("SELECT count(*) FROM \"old-answers\""),
        rows(&s, "answers").to_string()
    );

    // One POST, that says the run is done and names the backup.
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/hooks/replica")
    );
    assert_eq!(
        r.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert!(
        r.content_type
            .as_deref()
            .unwrap_or("")
            .contains("application/json")
    );
    let body = r.json();
    assert_eq!(body["outcome"], "done", "{body:#}");
    assert_eq!(body["backup"]["name"], "20261123051000_my_app_4553");
    assert_eq!(body["backup"]["id"], DONE_BACKUP_ID);
    assert_eq!(body["error"], Value::Null);
    assert!(body["started_at"].is_string() && body["finished_at"].is_string());
    for step in ["downloading", "restoring_data", "post_restore_sql"] {
        assert!(body["durations"][step].is_number(), "no {step}: {body:#}");
    }
    assert!(!logs.contains(TOKEN), "the token was logged");

    let status = s.status_json();
    assert_eq!(status["phase"], "Done");
    assert!(
        status["durations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["step"] == "post_restore_sql")
    );
}

/// A source with names that look alike: only exact names are excluded.
fn lookalikes(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        r#"
        CREATE TABLE answers (id int PRIMARY KEY, v text);
        CREATE TABLE "element-answers" (id int PRIMARY KEY, answer_id int REFERENCES answers(id));
        CREATE TABLE "Answers" (id int);
        CREATE TABLE "my table" (id int PRIMARY KEY);
        CREATE TABLE "we""ird, name" (id int);
        INSERT INTO answers SELECT g, 'a' || g FROM generate_series(1, 50) g;
        INSERT INTO "element-answers" SELECT g, g FROM generate_series(1, 40) g;
        INSERT INTO "Answers" SELECT g FROM generate_series(1, 30) g;
        INSERT INTO "my table" SELECT g FROM generate_series(1, 20) g;
        INSERT INTO "we""ird, name" SELECT g FROM generate_series(1, 10) g;
        "#,
    );
}

#[test]
fn exclusion_matches_exact_names_only_and_warns_about_unknown_ones() {
    let mut s = Scenario::new("shape_exact", lookalikes);
    s.set_env(
        "EXCLUDE_TABLE_DATA",
        "answers, \"we\"\"ird, name\", no-such-table",
    );
    let dump = s.dump.to_str().unwrap().to_string();
    let out = s.run_ok(&["restore", "--dump", &dump]);
    let logs = stdout(&out);
    assert_eq!(rows(&s, "answers"), 0);
    assert_eq!(rows(&s, "we\"\"ird, name"), 0);
    // The bug Pix had: `answers` must not take `element-answers` (nor `Answers`) with it.
    assert_eq!(rows(&s, "element-answers"), 40);
    assert_eq!(rows(&s, "Answers"), 30);
    assert_eq!(rows(&s, "my table"), 20);
    // The name that matches nothing is a warning naming it.
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("no-such-table"))
        .unwrap_or_else(|| panic!("no warning names no-such-table:\n{logs}"));
    assert!(warning.contains("EXCLUDE_TABLE_DATA"), "{warning}");
    assert!(
        !logs.contains("\"answers\", but the dump has no table"),
        "{logs}"
    );
    // The excluded table keeps its primary key.
    assert_eq!(
        s.target_psql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'answers'::regclass AND contype = 'p'"
        ),
        "1"
    );
}

#[test]
fn a_failing_sql_file_fails_the_run_with_its_name_and_line_and_keeps_the_data() {
    let mut s = Scenario::rich("shape_sqlfail");
    let receiver = Receiver::start(&[200]);
    let dir = s.files.path().join("post-sql");
    write(
        &dir,
        "02-broken.sql",
        "CREATE TABLE half_done (id int);\n\n-- the typo:\nSELECT *\n  FROM no_such_table;\n",
    );
    write(&dir, "readme.txt", "not SQL, not run");
    s.set_env("POST_RESTORE_SQL", dir.to_str().unwrap());
    s.set_env("NOTIFY_URLS", &receiver.url("/n"));
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("02-broken.sql"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(
        err.contains("relation \"no_such_table\" does not exist"),
        "{err}"
    );
    let status = s.status_json();
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["failed_in"], "PostRestoreSql");
    // The file was rolled back as a whole; the restored data stays.
    assert!(!s.table_exists("half_done"));
    assert_eq!(s.target_fingerprint().tables, s.source_fingerprint().tables);
    // A failed run is notified too.
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["outcome"], "failed");
    assert_eq!(body["failed_in"], "PostRestoreSql");
    assert!(
        body["error"].as_str().unwrap().contains("02-broken.sql"),
        "{body:#}"
    );
}

#[test]
fn sql_files_run_in_name_order_and_an_error_found_at_execution_names_its_line() {
    let mut s = Scenario::new("shape_sqlorder", lookalikes);
    let dir = s.files.path().join("post-sql");
    // 10- needs what 02- creates: name order, not creation order.
    write(
        &dir,
        "10-view.sql",
        "CREATE OR REPLACE VIEW answer_values AS SELECT v FROM answer_copy;\n",
    );
    write(
        &dir,
        "02-table.sql",
        "CREATE TABLE IF NOT EXISTS answer_copy AS SELECT * FROM answers;\n",
    );
    s.set_env("POST_RESTORE_SQL", dir.to_str().unwrap());
    let dump = s.dump.to_str().unwrap().to_string();
    s.run_ok(&["restore", "--dump", &dump]);
    assert_eq!(s.target_psql("SELECT count(*) FROM answer_values"), "50");

    // A duplicate found while building the index: no error position, the statement's line.
    write(
        &dir,
        "20-unique.sql",
        "CREATE INDEX IF NOT EXISTS a ON answers (v);\n\nCREATE UNIQUE INDEX\n  element_once ON \"element-answers\" ((answer_id % 2));\n",
    );
    let out = s.run(&["restore", "--dump", &dump]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("20-unique.sql") && err.contains("line 3") && err.contains("23505"),
        "{err}"
    );
    // 02- and 10- ran again (they are idempotent) and committed before 20- failed.
    assert_eq!(s.target_psql("SELECT count(*) FROM answer_values"), "50");
    assert!(!s.table_exists("a"), "20-unique.sql was not rolled back");
}

#[test]
fn bad_values_are_refused_before_anything_is_touched() {
    let s = Scenario::new("shape_config", lookalikes);
    s.put_stale_table_in_target();
    let dump = s.dump.to_str().unwrap().to_string();
    let empty = s.files.path().join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let cases: &[(&str, String, &str)] = &[
        (
            "POST_RESTORE_SQL",
            "/nonexistent/post.sql".into(),
            "does not exist",
        ),
        (
            "POST_RESTORE_SQL",
            empty.to_str().unwrap().into(),
            "no .sql file",
        ),
        (
            "NOTIFY_URLS",
            "https://ok.example/a,ftp://files.example/s3cret-path".into(),
            "entry 2",
        ),
        ("EXCLUDE_TABLE_DATA", "answers,,x".into(), "empty name"),
    ];
    for (var, value, expected) in cases {
        let out = s
            .cmd(&["restore", "--dump", &dump])
            .env(var, value)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(var) && err.contains(expected), "{err}");
        assert!(!err.contains("s3cret-path"), "a URL was shown whole: {err}");
    }
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}

#[test]
fn a_failing_receiver_is_retried_and_an_unreachable_one_never_fails_the_run() {
    let mut s = Scenario::new("shape_notify", lookalikes);
    let flaky = Receiver::start(&[503, 200]);
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!(
        "http://127.0.0.1:{}/secret-hook-path",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    s.set_env(
        "NOTIFY_URLS",
        &format!("{},{closed_url}", flaky.url("/flaky")),
    );
    s.set_env("NOTIFY_TOKEN", TOKEN);
    let dump = s.dump.to_str().unwrap().to_string();
    let started = Instant::now();
    let out = s.run_ok(&["restore", "--dump", &dump]);
    // The issue's bound on notifications, plus the restore itself.
    assert!(started.elapsed() < Duration::from_secs(90));
    let got = flaky.requests();
    assert_eq!(got.len(), 2, "503 then 200: {got:?}");
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[1].json()["outcome"], "done");
    let logs = stdout(&out) + &stderr(&out);
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("notification to http://127.0.0.1")),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN), "the token was logged");
    assert!(!logs.contains("secret-hook-path"), "a URL path was logged");
    assert_eq!(s.status_json()["phase"], "Done");
}

#[test]
fn a_run_killed_in_post_restore_sql_resumes_there_without_restoring_again() {
    let mut s = Scenario::new("shape_resume", lookalikes);
    let dir = s.files.path().join("post-sql");
    let slow = write(&dir, "01-slow.sql", "SELECT pg_sleep(20);\n");
    write(
        &dir,
        "02-view.sql",
        "CREATE OR REPLACE VIEW answer_values AS SELECT v FROM answers;\n",
    );
    s.set_env("POST_RESTORE_SQL", dir.to_str().unwrap());
    let dump = s.dump.to_str().unwrap().to_string();
    let mut child = s.spawn(&["restore", "--dump", &dump]);
    s.wait_status(Duration::from_secs(60), |st| {
        st["phase"] == "PostRestoreSql"
    });
    crate::common::scenario::kill_9(&mut child);
    assert_eq!(s.status_json()["phase"], "PostRestoreSql");

    std::fs::write(&slow, "SELECT 1;\n").unwrap();
    let out = s.run_ok(&["resume"]);
    let logs = stdout(&out);
    assert!(
        !logs.contains("pg_restore started"),
        "the resume restored again:\n{logs}"
    );
    assert_eq!(s.status_json()["phase"], "Done");
    assert_eq!(s.target_psql("SELECT count(*) FROM answer_values"), "50");
    assert_eq!(rows(&s, "element-answers"), 40);
}
