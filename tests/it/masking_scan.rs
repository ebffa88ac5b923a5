//! Issue 22: no real value of a masked column or of a row a filter drops reaches the replica,
//! by any path. A source holds recognisable values in every shape the review found a leak in
//! (planner statistics of PostgreSQL 18 dumps, partitions written as `ATTACH PARTITION`, an
//! inheritance child with an entry of its own, a typed table, `EXCLUDE_TABLE_DATA`, comments,
//! large objects, timestamps a filter could not read); after a real run, every original value
//! is searched for in a full `pg_dump` of the target, in `pg_stats` and `pg_statistic` (as the
//! superuser), in the logs, `status --json`, the state directory and the webhook's body.

use std::path::Path;
use std::process::Command;

use crate::common::pg::{PgCluster, shared_cluster_version};
use crate::common::scenario::{Scenario, stderr, stdout};
use crate::shaping::Receiver;

/// A strong key (256 bits, hex), as `replicator rules key` prints one.
pub const KEY: &str = "5b1f0c7e9a2d4c6b8e0f1a3c5d7e9f1b2d4f6a8c0e2b4d6f8a1c3e5f7b9d0c2e";

/// The source: every value a test searches for holds `secret` or `orig`.
fn fill(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        &format!(
            "ALTER DATABASE \"{db}\" SET timezone TO 'Europe/Paris';
         CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, first_name text,
                             status text DEFAULT 'ddl-default-literal'
                               CHECK (status <> 'ddl-check-literal'),
                             notes text);
         CREATE UNIQUE INDEX users_email_key ON users (email);
         CREATE INDEX users_lower_email ON users (lower(email));
         CREATE INDEX users_first_name ON users (first_name) WHERE status <> 'ddl-index-literal';
         INSERT INTO users (email, first_name, notes)
           SELECT 'user' || i || '.secret@corp.example', 'Origfirst' || (i % 7),
                  'privnote' || (i % 5)
           FROM generate_series(1, 400) i;
         CREATE MATERIALIZED VIEW user_emails AS SELECT email, first_name FROM users;
         CREATE VIEW users_active AS SELECT * FROM users WHERE status <> 'ddl-view-literal';
         CREATE TABLE events (id int, created_at timestamptz NOT NULL, email text, detail text)
           PARTITION BY RANGE (created_at);
         CREATE TABLE events_old PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('2025-01-01');
         CREATE TABLE events_new PARTITION OF events FOR VALUES FROM ('2025-01-01') TO (MAXVALUE);
         INSERT INTO events SELECT i, now() - interval '5 days',
                'ev' || (i % 9) || '.secret@corp.example', 'recentdetail'
           FROM generate_series(1, 100) i;
         INSERT INTO events SELECT 1000 + i, timestamptz '2020-03-01 10:00:00+00' + i * interval '1 day',
                'evold' || (i % 9) || '.secret@corp.example', 'olddetail' || (i % 4)
           FROM generate_series(1, 100) i;
         -- Europe/Paris before 1911: pg_dump writes 1890-06-01 12:09:21+00:09:21
         INSERT INTO events VALUES (2000, '1890-06-01 12:00:00+00', 'evlmt.secret@corp.example', 'lmtsecretdetail'),
           (2001, '-infinity', 'evneginf.secret@corp.example', 'neginfsecretdetail'),
           (2002, '0044-03-15 12:00:00+00 BC', 'evbc.secret@corp.example', 'bcsecretdetail'),
           (2003, 'infinity', 'evinf.secret@corp.example', 'infdetail');
         CREATE TABLE contacts (id int, email text);
         CREATE TABLE vip_contacts (level text) INHERITS (contacts);
         INSERT INTO contacts SELECT i, 'contact' || (i % 6) || '.secret@corp.example'
           FROM generate_series(1, 50) i;
         INSERT INTO vip_contacts SELECT i, 'vip' || (i % 6) || '.secret@corp.example', 'gold'
           FROM generate_series(1, 50) i;
         CREATE TYPE person AS (name text, email text);
         CREATE TABLE people OF person;
         INSERT INTO people SELECT 'Origperson' || (i % 4), 'person' || (i % 4) || '.secret@corp.example'
           FROM generate_series(1, 40) i;
         CREATE TABLE audit_log (id int, payload text);
         INSERT INTO audit_log SELECT i, 'auditsecret' || (i % 3) FROM generate_series(1, 200) i;
         COMMENT ON TABLE users IS 'commentsecret about alice';
         COMMENT ON COLUMN users.email IS 'colcommentsecret';
         SELECT lo_from_bytea(0, convert_to('losecretcontent', 'UTF8'));
         ANALYZE;"
        ),
    );
}

pub const RULES: &str = r#"
strict = false
[dump]
comments = "drop"
large_objects = "drop"
[tables.users.columns]
email = "hash"
first_name = "first_name"
notes = "null"
[tables.events.columns]
email = "hash"
[tables.events.rows]
column = "created_at"
newer_than = "90 days"
[tables.contacts.columns]
email = "hash"
[tables.vip_contacts.columns]
level = "keep"
[tables.people.columns]
name = "last_name"
email = "hash"
"#;

/// Every value of the source that must not reach the replica.
fn originals(s: &Scenario) -> Vec<String> {
    let text = s.source_cluster.superuser_psql(
        &s.source_db,
        "SELECT string_agg(DISTINCT v, E'\\n') FROM (
           SELECT email AS v FROM users UNION SELECT first_name FROM users
           UNION SELECT notes FROM users
           UNION SELECT email FROM events
           UNION SELECT detail FROM events
             WHERE NOT (created_at >= now() - interval '90 days')
           UNION SELECT email FROM contacts
           UNION SELECT name FROM people UNION SELECT email FROM people
           UNION SELECT payload FROM audit_log
           UNION SELECT description FROM pg_description WHERE description LIKE '%secret%'
           UNION SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata) x",
    );
    let values: Vec<String> = text.lines().map(str::to_string).collect();
    for must in [
        "user7.secret@corp.example",
        "Origfirst3",
        "privnote2",
        "evold4.secret@corp.example",
        "olddetail1",
        "lmtsecretdetail",
        "neginfsecretdetail",
        "bcsecretdetail",
        "vip2.secret@corp.example",
        "Origperson1",
        "person3.secret@corp.example",
        "auditsecret0",
        "commentsecret about alice",
        "colcommentsecret",
        "losecretcontent",
    ] {
        assert!(values.iter().any(|v| v == must), "{must} not in {values:?}");
    }
    values
}

/// A plain `pg_dump` of the target, as its cluster's superuser: schema, rows, comments, large
/// objects, everything.
fn full_dump(s: &Scenario) -> String {
    let c = s.cluster;
    let out = Command::new(c.bin_dir().join("pg_dump"))
        .arg("-h")
        .arg(c.socket_dir())
        .args(["-p", &c.port().to_string(), "-U", "postgres", "-d"])
        .arg(&s.target.dbname)
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`, as text.
fn files_under(dir: &Path) -> String {
    let mut all = String::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in read.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    all
}

/// The run, then every place a real value could have gone, searched.
fn scan(mut s: Scenario, statistics_in_dump: bool) {
    let rules = s.files.path().join("replica.toml");
    std::fs::write(&rules, RULES).unwrap();
    s.set_env("REPLICA_RULES", rules.to_str().unwrap());
    s.set_env("MASKING_KEY", KEY);
    s.set_env("EXCLUDE_TABLE_DATA", "audit_log");
    let hook = Receiver::start(&[200]);
    s.set_env("NOTIFY_URLS", &hook.url("/hook"));
    let originals = originals(&s);

    let out = s.run_ok(&["run"]);
    let mut logs = stdout(&out) + &stderr(&out);
    let status = s.status_json().to_string();
    let check = s.run(&["check", "--dump", s.dump.to_str().unwrap()]);
    let check_text = stdout(&check) + &stderr(&check);
    logs.push_str(&check_text);

    let superuser = |sql: &str| s.cluster.superuser_psql(&s.target.dbname, sql);
    let places = [
        ("a full pg_dump of the target", full_dump(&s)),
        (
            "pg_statistic",
            superuser("SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM pg_statistic x"),
        ),
        (
            "pg_stats",
            superuser("SELECT coalesce(string_agg(x::text, E'\\n'), '') FROM pg_stats x"),
        ),
        ("the logs", logs.clone()),
        ("status --json", status),
        ("the state directory", files_under(&s.state_dir)),
        (
            "the webhook's body",
            hook.requests()
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect(),
        ),
    ];
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for v in &originals {
            if text.contains(v.as_str()) {
                leaks.push(format!("{v:?} in {place}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "real values reached the replica:\n{}",
        leaks.join("\n")
    );

    // What the replica holds instead: every row masked, the filter's rows, nothing else.
    let t = |sql: &str| s.target_psql(sql);
    assert_eq!(t("SELECT count(*) FROM users"), "400");
    assert_eq!(
        t("SELECT count(*) FROM users WHERE email LIKE '%@example.invalid'"),
        "400"
    );
    assert_eq!(
        t("SELECT count(*) FROM events"),
        "101",
        "100 recent rows and the one at infinity"
    );
    assert_eq!(
        t("SELECT count(*) FROM events WHERE email LIKE '%@example.invalid'"),
        "101"
    );
    assert_eq!(
        t("SELECT count(*) FROM vip_contacts WHERE email LIKE '%@example.invalid'"),
        "50"
    );
    assert_eq!(
        t("SELECT count(*) FROM people WHERE email LIKE '%@example.invalid'"),
        "40"
    );
    assert_eq!(t("SELECT count(*) FROM audit_log"), "0");
    assert_eq!(t("SELECT count(*) FROM user_emails"), "400");
    assert_eq!(t("SELECT count(*) FROM pg_largeobject_metadata"), "0");
    // The masked tables were analyzed after their rows: the planner's statistics are the
    // masked rows'.
    for (table, column) in [
        ("users", "email"),
        ("events_new", "email"),
        ("user_emails", "email"),
    ] {
        let mcv = superuser(&format!(
            "SELECT coalesce(most_common_vals::text, histogram_bounds::text, '') FROM pg_stats \
             WHERE schemaname = 'public' AND tablename = '{table}' AND attname = '{column}'"
        ));
        assert!(mcv.contains("example.invalid"), "{table}.{column}: {mcv:?}");
    }
    if statistics_in_dump {
        assert!(
            logs.contains("STATISTICS DATA"),
            "the statistics left out are said: {logs}"
        );
    }
    // The rows the filter could not have read (seconds offset, -infinity, BC) were decided.
    assert!(logs.contains("events_old 103"), "{logs}");
    // check names the literals that the DDL of masked tables carries: schema, not masked.
    for literal in [
        "ddl-default-literal",
        "ddl-check-literal",
        "ddl-index-literal",
    ] {
        assert!(
            check_text.contains(literal),
            "check does not list {literal}: {check_text}"
        );
    }
}

fn scenario(prefix: &str, source: u32, dump: u32, target: u32, client: u32) -> Scenario {
    let stats: &'static [&'static str] = if dump >= 18 { &["--statistics"] } else { &[] };
    let mut s = Scenario::across(
        prefix,
        shared_cluster_version(source),
        shared_cluster_version(target),
        fill,
        |c, db, out| c.pg_dump_with(dump, db, out, stats),
    );
    s.use_client(client);
    s
}

#[test]
fn scan_pg18_target_from_pg_dump_18_with_statistics() {
    scan(scenario("scan_18_18", 18, 18, 18, 18), true);
}

#[test]
fn scan_pg15_target_from_pg_dump_15() {
    scan(scenario("scan_15_15", 15, 15, 15, 15), false);
}

#[test]
fn scan_pg15_target_from_pg_dump_18_with_statistics() {
    scan(scenario("scan_18_15", 18, 18, 15, 18), true);
}

/// pg_dump 14 from a 14 source (the oldest Scalingo offers), into a 15 target: the forms of
/// partitions, children and typed tables an older pg_dump writes are masked too.
#[test]
fn scan_pg15_target_from_pg_dump_14() {
    scan(scenario("scan_14_15", 14, 14, 15, 18), false);
}

#[test]
fn scan_pg18_target_from_pg_dump_15() {
    scan(scenario("scan_15_18", 15, 15, 18, 18), false);
}

/// `rules init` on a dump with partitions (attached), an inheritance child, a typed table,
/// comments and a large object: `strict = true` accepts the file as written, and once the
/// emails are decided on the tables that declare them, every table holding their rows is
/// masked.
#[test]
fn rules_init_covers_partitions_children_and_typed_tables() {
    let mut s = Scenario::new("scan_init", fill);
    let dump = s.dump.to_str().unwrap().to_string();
    let path = s.files.path().join("init.toml");
    s.run_ok(&[
        "rules",
        "init",
        "--dump",
        &dump,
        "--output",
        path.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&path).unwrap();
    for section in [
        "users",
        "events",
        "contacts",
        "vip_contacts",
        "people",
        "audit_log",
    ] {
        assert!(
            text.contains(&format!("[tables.{section}.columns]")),
            "{text}"
        );
    }
    for child in ["events_old", "events_new"] {
        assert!(
            !text.contains(&format!("[tables.{child}.columns]")),
            "{text}"
        );
    }
    assert!(
        text.contains("comments = \"keep\"") && text.contains("large_objects = \"keep\""),
        "{text}"
    );
    s.set_env("REPLICA_RULES", path.to_str().unwrap());
    let out = s.run(&["check", "--dump", &dump]);
    assert!(
        stdout(&out).contains("ok    replica rules"),
        "{}",
        stdout(&out)
    );
    // Decided: every email hashed, where the file names it.
    let decided: String = text
        .lines()
        .map(|l| {
            if l.starts_with("email = \"keep\"") {
                "email = \"hash\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, decided).unwrap();
    s.set_env("MASKING_KEY", KEY);
    s.run_ok(&["run"]);
    for table in [
        "users",
        "events",
        "events_old",
        "events_new",
        "contacts",
        "vip_contacts",
        "people",
    ] {
        assert_eq!(
            s.target_psql(&format!(
                "SELECT count(*) FROM ONLY {table} WHERE email NOT LIKE '%@example.invalid'"
            )),
            "0",
            "{table}"
        );
    }
    assert_eq!(s.target_psql("SELECT count(*) FROM vip_contacts"), "50");
}
