//! Issue 20: one restore plan, decided before the wipe and rehearsed on the target; the
//! restore obeys it. Each refusal fails `check` (a FAIL line naming the cause, exit 1) and
//! `run` alike, before anything is touched; what the plan leaves out is never sent.

use crate::common::pg::PgCluster;
use crate::common::scenario::{Scenario, stderr, stdout};

const MASKING_KEY: &str = "0123456789abcdef0123456789abcdef";

/// `check` exits 1 with a FAIL line on `line` naming `cause`; `run` exits 1 with `cause` in its
/// logs; the target keeps the table added by hand.
pub(crate) fn refused_before_the_wipe(s: &Scenario, line: &str, cause: &str) {
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(line) && l.contains(cause)),
        "no FAIL line on {line} naming {cause:?}:\n{text}"
    );
    let out = s.run(&["run"]);
    let logs = stdout(&out) + &stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(logs.contains(cause), "run does not name {cause:?}:\n{logs}");
    assert!(s.table_exists("stale_leftover"), "the target was touched");
    assert_eq!(
        s.target_psql("SELECT note FROM stale_leftover"),
        "from yesterday"
    );
}

fn write(s: &Scenario, name: &str, text: &str) -> String {
    let p = s.files.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn with_server_tool(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        "CREATE EXTENSION pgstattuple;
         COMMENT ON EXTENSION pgstattuple IS 'show tuple-level statistics';
         CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO accounts SELECT g, 'n' || g FROM generate_series(1, 500) g;",
    );
}

/// A dump holding an extension only a superuser may create, which nothing uses: the plan
/// leaves it out (and its comment), says so in `check`, never sends its `CREATE EXTENSION`,
/// and the run restores the rest exactly, twice in a row. Before: check said ok, the run
/// wiped the target and failed on `42501 permission denied`.
#[test]
fn an_extension_nothing_uses_and_the_role_cannot_create_is_left_out_and_never_sent() {
    let s = Scenario::new("plan_tool", with_server_tool);
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    let plan = text
        .lines()
        .find(|l| l.contains("restore plan"))
        .unwrap_or_default();
    assert!(plan.contains("pgstattuple left out"), "{text}");
    assert!(
        plan.contains("COMMENT (EXTENSION pgstattuple)"),
        "the comment is named: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("rehearsal")),
        "{text}"
    );
    for night in 1..=2 {
        let out = s.run(&["run", "--force"]);
        let logs = stdout(&out) + &stderr(&out);
        assert_eq!(out.status.code(), Some(0), "night {night}: {logs}");
        assert_eq!(s.target_psql("SELECT count(*) FROM accounts"), "500");
        assert_eq!(
            s.target_psql("SELECT count(*) FROM pg_extension WHERE extname = 'pgstattuple'"),
            "0"
        );
    }
}

fn with_checked_status(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        "CREATE TABLE orders (id int PRIMARY KEY,
                              status text NOT NULL CHECK (status IN ('new', 'paid')),
                              ref uuid NOT NULL);
         INSERT INTO orders SELECT g, 'new', gen_random_uuid() FROM generate_series(1, 50) g;",
    );
}

/// A `fixed` masking value that the column's CHECK refuses, or that its type cannot hold:
/// the rehearsal loads masked rows before the wipe, so `check` and `run` refuse, naming the
/// entry and the constraint. Before: check said every rule applies, the run emptied the table.
#[test]
fn a_masked_value_the_column_refuses_fails_check_and_run_before_the_wipe() {
    let mut s = Scenario::new("plan_fixed_check", with_checked_status);
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    s.set_env("MASKING_KEY", MASKING_KEY);
    let rules = write(
        &s,
        "rules.toml",
        "strict = false\n[tables.orders.columns]\nstatus = { fixed = \"zzz\" }\n",
    );
    s.set_env("REPLICA_RULES", &rules);
    refused_before_the_wipe(&s, "rehearsal", "orders_status_check");

    let mut s = Scenario::new("plan_fixed_uuid", with_checked_status);
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    s.set_env("MASKING_KEY", MASKING_KEY);
    let rules = write(
        &s,
        "rules.toml",
        "strict = false\n[tables.orders.columns]\nref = { fixed = \"not-a-uuid\" }\n",
    );
    s.set_env("REPLICA_RULES", &rules);
    refused_before_the_wipe(&s, "rehearsal", "TABLE DATA public.orders");
}

fn with_untrusted_extension_in_use(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        "CREATE EXTENSION pg_stat_statements;
         CREATE VIEW slow_queries AS SELECT query, calls FROM pg_stat_statements;
         CREATE TABLE kept (id int PRIMARY KEY);",
    );
}

/// A server tool that something restored uses (a view over `pg_stat_statements`) is refused
/// before the wipe, not left out: the view could not be restored without it.
#[test]
fn an_extension_something_uses_and_the_role_cannot_create_is_refused_before_the_wipe() {
    let mut s = Scenario::new("plan_used_tool", with_untrusted_extension_in_use);
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "restore plan", "pg_stat_statements");
}

/// An object the target's server cannot build, found only by trying it: a collation whose
/// locale the server does not have (as a dump made on another machine may hold; ICU on a
/// server built without it fails the same way). Before: check said ok, the run wiped the
/// target and then failed on `CREATE COLLATION`.
#[test]
fn an_object_the_server_cannot_build_fails_the_rehearsal_before_the_wipe() {
    let mut s = Scenario::new("plan_collation", |c, db| {
        c.superuser_psql(
            db,
            "CREATE COLLATION german_phonebook (provider = libc, locale = 'C');
             CREATE TABLE people (id int PRIMARY KEY, name text COLLATE german_phonebook);
             INSERT INTO people VALUES (1, 'a');",
        );
    });
    // The dump's collation names a locale this target's server cannot build: the same dump
    // as a new user's from another machine (the archive is rewritten to say so).
    let dump = std::fs::read(&s.dump).unwrap();
    let from = b"locale = 'C'";
    let to = b"locale = 'Q'";
    let pos = dump
        .windows(from.len())
        .position(|w| w == from)
        .expect("the collation's definition is in the dump");
    let mut edited = dump.clone();
    edited[pos..pos + from.len()].copy_from_slice(to);
    std::fs::write(&s.dump, &edited).unwrap();
    s.rearchive();
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "rehearsal", "COLLATION public.german_phonebook");
}
