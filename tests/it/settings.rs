//! Every setting is validated once (`EngineConfig::from_args`), by every command that uses
//! it: a value `run` refuses with exit 2 (a usage error) is a `FAIL` line of `check`, which
//! exits 1 as for any failed check, and neither touches the target.

use crate::common::scenario::{Scenario, stderr, stdout};

fn scenario(prefix: &str) -> Scenario {
    let s = Scenario::new(prefix, |c, db| {
        c.superuser_psql(
            db,
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
        );
    });
    s.put_stale_table_in_target();
    s
}

/// `check`'s FAIL lines on the configuration.
fn config_fails(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("FAIL") && l.contains("configuration"))
        .collect()
}

/// `check` says FAIL on the configuration, naming `var` (exit 1); `run` exits 2 naming it;
/// the target is as it was.
fn check_and_run_refuse(s: &Scenario, var: &str) {
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check with a bad {var}:\n{text}"
    );
    assert!(
        config_fails(&text).iter().any(|l| l.contains(var)),
        "no FAIL line names {var}:\n{text}"
    );
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "run with a bad {var}");
    assert!(stderr(&out).contains(var), "{}", stderr(&out));
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}

#[test]
fn check_refuses_the_download_idle_timeout_run_refuses() {
    let mut s = scenario("settings_idle");
    s.set_env("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "0");
    check_and_run_refuse(&s, "DOWNLOAD_IDLE_TIMEOUT_SECONDS");
}

/// Every setting a run from Scalingo reads, each with a value it refuses.
const BAD: [(&str, &str); 16] = [
    ("SCALINGO_REGION", "osc fr1"),
    ("SCALINGO_API_URL", "http://api.example.com"),
    ("PG_RESTORE_JOBS", "0"),
    ("FK_MODE", "sometimes"),
    ("EXCLUDE_TABLE_DATA", "\"unclosed"),
    ("RESTORE_SCHEMAS", "public,,app"),
    ("POST_RESTORE_SQL", "/nonexistent/post.sql"),
    ("REPLICA_RULES", "/nonexistent/rules.toml"),
    ("MAX_WORK_DISK", "1MiB"),
    ("NOTIFY_URLS", "ftp://hooks.example.org/x"),
    ("MAX_RETRY_COUNT", "many"),
    ("RETRY_INITIAL_DELAY_SECONDS", "-1"),
    ("RETRY_MAX_DELAY_SECONDS", "x"),
    ("RETRIES_TIMEOUT_MINUTES", "0"),
    ("MAX_BACKUP_AGE_HOURS", "0"),
    ("DOWNLOAD_IDLE_TIMEOUT_SECONDS", "0"),
];

/// The variables `text` names as invalid (`VAR="value" is invalid`), in `BAD`'s order.
fn named<'a>(text: &str, vars: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    vars.into_iter()
        .filter(|v| text.contains(&format!("{v}=")))
        .collect()
}

#[test]
fn every_command_says_every_invalid_setting_at_once_and_touches_nothing() {
    let mut s = scenario("settings_all");
    for (var, value) in BAD {
        s.set_env(var, value);
    }
    let all: Vec<&str> = BAD.iter().map(|(v, _)| *v).collect();

    // check: one FAIL line per setting, exit 1 (a check failed).
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fails = config_fails(&text);
    assert_eq!(fails.len(), BAD.len(), "{text}");
    for (var, _) in BAD {
        assert_eq!(
            fails
                .iter()
                .filter(|l| l.contains(&format!("{var}=")))
                .count(),
            1,
            "{var}:\n{text}"
        );
    }

    // run and daemon: every one in their error, exit 2.
    for args in [&["run"][..], &["daemon"]] {
        let out = s
            .cmd(args)
            .env("SCHEDULE", "10 5 * * *")
            .output()
            .expect("run the replicator");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("16 settings are invalid"), "{args:?}: {err}");
        assert_eq!(named(&err, all.clone()), all, "{args:?}: {err}");
    }

    // resume: all but Scalingo's (a run from a file or a live source does not need them),
    // before looking for a run to resume.
    let out = s.run(&["resume"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "resume: {err}");
    assert_eq!(named(&err, all.clone()), all[2..], "resume: {err}");

    // restore: the restore's and the retries' settings (no Scalingo, no download).
    let dump = s.dump.to_string_lossy().into_owned();
    let out = s.run(&["restore", "--dump", &dump]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "restore: {err}");
    assert_eq!(named(&err, all.clone()), all[2..14], "restore: {err}");

    assert!(s.table_exists("stale_leftover"), "the target was touched");
    assert!(
        !s.state_dir.join("store").exists(),
        "a run was recorded in {}",
        s.state_dir.display()
    );
}

#[test]
fn an_invalid_target_or_live_source_is_said_with_the_rest() {
    let mut s = scenario("settings_urls");
    s.set_env("DATABASE_URL", "mysql://u:hunter2@h/db");
    s.set_env(
        "SOURCE_DATABASE_URL",
        "postgres://u:hunter2@h/db?sslmode=sometimes",
    );
    s.set_env("SCALINGO_APP", "");
    s.set_env("PG_RESTORE_JOBS", "65");
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fails = config_fails(&text);
    assert_eq!(fails.len(), 3, "{text}");
    for var in ["DATABASE_URL", "SOURCE_DATABASE_URL", "PG_RESTORE_JOBS"] {
        assert!(
            fails.iter().any(|l| l.contains(&format!(" {var}="))),
            "{var}:\n{text}"
        );
    }
    let out = s.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 settings are invalid"), "{err}");
    for text in [&text, &err] {
        assert!(!text.contains("hunter2"), "a password was shown: {text}");
    }
    assert!(s.table_exists("stale_leftover"), "the target was touched");
}
