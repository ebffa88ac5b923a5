//! `check` and `run` apply the same rules (`machine::rules`): wherever a run stops before the
//! wipe, `check` says `FAIL` on the line of that rule and exits 1, and neither touches the
//! target.

use std::time::Duration;

use crate::common::fake_scalingo::Times;
use crate::common::scenario::{Scenario, kill_9, stderr, stdout};

fn scenario(prefix: &str) -> Scenario {
    let mut s = Scenario::rich(prefix);
    s.put_stale_table_in_target();
    // One attempt: a transient stop (a backup too old) fails the run at once.
    s.set_env("MAX_RETRY_COUNT", "0");
    s
}

/// `check` fails on its line `check_line` (exit 1); `run` then exits `run_exit`; the target
/// is as it was.
fn check_fails_where_run_fails(s: &Scenario, check_line: &str, run_exit: i32) {
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(check_line)),
        "no FAIL line for {check_line}:\n{text}"
    );
    let out = s.run(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(run_exit),
        "run after a FAIL on {check_line}:\n{}",
        stderr(&out)
    );
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}

#[test]
fn check_fails_on_each_rule_that_stops_a_run_before_the_wipe() {
    // The Scalingo token.
    let s = scenario("parity_token");
    s.fake.faults(|f| f.bad_api_token = Some(Times::Always));
    check_fails_where_run_fails(&s, "scalingo token", 1);

    // No finished backup.
    let s = scenario("parity_nodone");
    s.fake.faults(|f| f.only_unfinished_backups = true);
    check_fails_where_run_fails(&s, "backup", 1);

    // A backup older than MAX_BACKUP_AGE_HOURS (the fake's are from 2026-11-23).
    let mut s = scenario("parity_old");
    s.set_env("MAX_BACKUP_AGE_HOURS", "1");
    check_fails_where_run_fails(&s, "backup", 1);

    // The disk no longer stops a run: a backup larger than the disk streams
    // (`streaming::check_and_status_say_which_mode_a_run_uses_and_why`).

    // What the dump needs of the target (`replica::preflight::check_restorable`, which `check`
    // runs on the archive's first MiBs): here, a table of the dump's name that another role
    // owns, which the wipe would leave and the restore collide with.
    let s = scenario("parity_owner");
    s.put_foreign_owned_table_in_target();
    check_fails_where_run_fails(&s, "restore plan", 1);

    // An interrupted run in the state directory: `run` refuses it (exit 3).
    let mut s = scenario("parity_interrupted");
    s.set_env(
        replicator::engine::test_hooks::PAUSE_AT_VAR,
        "downloading:30",
    );
    let mut child = s.spawn(&["run"]);
    s.wait_status(Duration::from_secs(60), |st| st["phase"] == "Downloading");
    kill_9(&mut child);
    check_fails_where_run_fails(&s, "state directory", 3);
}

/// Issue 13, High 2: production as the target, and a first wipe nobody confirmed, are
/// refused by `check` and by `run` alike, before anything is touched.
#[test]
fn check_fails_where_run_refuses_production_or_an_unconfirmed_first_wipe() {
    // The target is the source's database (the addon's resource_id is its name).
    let s = scenario("parity_source");
    let db = s.target.dbname.clone();
    s.fake.faults(|f| f.postgres_resource_id = Some(db));
    check_fails_where_run_fails(&s, "target is not the source", 1);
    let out = s.run(&["run"]);
    assert!(
        stderr(&out).contains("names the production database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        s.fake
            .records()
            .requests
            .get(&crate::common::fake_scalingo::Route::Download)
            .copied()
            .unwrap_or(0),
        0,
        "downloaded from a run that targets production"
    );

    // A first wipe of a database holding tables, without REPLICATOR_TARGET_CONFIRM.
    let s = scenario("parity_confirm");
    s.confirm_target.set(false);
    check_fails_where_run_fails(&s, "target confirmation", 1);
}
