//! What the role may create in the target is asked by one query (`replica::privileges`), for
//! `check`'s role line and for the run's pre-wipe check alike; objects of another role count
//! only when the dump restores an object of their name (the run's rule), not because they
//! are there.

use crate::common::scenario::{Scenario, stderr, stdout};

fn scenario(prefix: &str) -> Scenario {
    let s = Scenario::new(prefix, |c, db| {
        c.superuser_psql(
            db,
            "CREATE TABLE accounts (id int PRIMARY KEY, email text); \
             INSERT INTO accounts VALUES (1, 'a@example.org'), (2, 'b@example.org');",
        );
    });
    s.put_stale_table_in_target();
    s
}

fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
}

#[test]
fn a_role_that_may_not_create_in_public_fails_check_and_run_alike() {
    let s = scenario("priv_public");
    // Schema public given to the superuser, CREATE on it taken from everyone else.
    s.cluster.superuser_psql(
        &s.target.dbname,
        "ALTER SCHEMA public OWNER TO CURRENT_USER; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
    );
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let role = line(&text, "target role");
    assert!(
        role.starts_with("FAIL") && role.contains("cannot create tables in schema public"),
        "{text}"
    );
    let plan = line(&text, "restore plan");
    assert!(
        plan.starts_with("FAIL") && plan.contains("may not create objects in schema public"),
        "{text}"
    );
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may not create objects in schema public"),
        "{}",
        stderr(&out)
    );
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}

/// Issue 20: a superuser created `pg_stat_statements` in `public` beforehand (which the docs
/// recommend); `check` said FAIL (objects in public the role does not own) where `run`
/// succeeds, twice.
#[test]
fn an_extension_a_superuser_put_in_public_passes_check_as_it_passes_run() {
    let s = scenario("priv_ext");
    s.cluster.superuser_psql(
        &s.target.dbname,
        "CREATE EXTENSION pg_stat_statements SCHEMA public;",
    );
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert!(line(&text, "target role").starts_with("ok"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    for _ in 0..2 {
        s.run_ok(&["run", "--force"]);
        assert_eq!(s.target_psql("SELECT count(*) FROM accounts"), "2");
    }
    assert_eq!(
        s.target_psql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"),
        "1"
    );
}
