//! The logs say each thing once, readably: no server NOTICE at each transition, no Rust debug
//! form, a configuration error on one line.

use crate::common::scenario::{Scenario, stderr, stdout};

#[test]
fn a_run_logs_no_notices_and_no_debug_forms() {
    let s = Scenario::rich("quiet_run");
    let out = s.run_ok(&["run"]);
    let logs = stdout(&out);
    assert!(!logs.contains("already exists, skipping"), "{logs}");
    assert!(!logs.contains("NOTICE"), "{logs}");
    assert!(!logs.contains("DumpInfo {"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("dump checked: dumped from PostgreSQL")),
        "{logs}"
    );
}

#[test]
fn a_configuration_error_is_said_once() {
    let mut s = Scenario::rich("quiet_config");
    s.set_env("PG_RESTORE_JOBS", "zero");
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    let said = |t: &str| t.lines().filter(|l| l.contains("PG_RESTORE_JOBS")).count();
    assert_eq!(
        said(&err_text) + said(&out_text),
        1,
        "stdout:\n{out_text}\nstderr:\n{err_text}"
    );
    assert!(err_text.starts_with("replicator: "), "{err_text}");
}
