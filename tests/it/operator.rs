//! What an operator sees: `status` (here, and from a container that cannot see the daemon's
//! disk), `check`, `--help`, and the logs with `LOG_FORMAT=json`.

use serde_json::Value;

use crate::common::fake_scalingo::{Route, Times};
use crate::common::scenario::{Scenario, stderr, stdout};

const BACKUP: &str = "20261123051000_my_app_4553";

fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a line of {what} is not JSON ({e}): {l}"))
        })
        .collect()
}

fn replicator_schema_exists(s: &Scenario) -> bool {
    s.target_psql("SELECT to_regnamespace('replicator') IS NOT NULL") == "t"
}

#[test]
fn status_shows_the_runs_here_and_from_a_container_with_only_database_url() {
    let s = Scenario::rich("op_status");
    s.run_ok(&["run"]);
    s.run_ok(&["run", "--force"]);
    s.assert_target_is_source();

    let here = stdout(&s.run_ok(&["status"]));
    // Shown with `--nocapture`: what an operator reads.
    println!("$ replicator status\n{here}");
    for want in [
        "Done, finished",
        BACKUP,
        "Phases    fetch ",
        "download ",
        "data+indexes ",
        "Attempt   1 / 4",
        "read from state directory",
        "Last runs",
    ] {
        assert!(here.contains(want), "no {want:?} in:\n{here}");
    }
    for line in here.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}"
        );
    }
    let local = s.status_json();
    assert_eq!(local["source_kind"], "state_dir");
    assert_eq!(local["history"].as_array().unwrap().len(), 2);

    // `scalingo run replicator status`: a fresh container, an empty disk, the same DATABASE_URL.
    let fresh = s.files.path().join("fresh-container-state");
    let out = s.cmd_with_state(&["status"], &fresh).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let there = stdout(&out);
    println!("$ REPLICATOR_STATE_DIR=<empty> replicator status\n{there}");
    let run_id = local["run_id"].as_str().unwrap();
    for want in [
        run_id,
        "Done, finished",
        BACKUP,
        "Phases    fetch ",
        "read from the target database",
    ] {
        assert!(there.contains(want), "no {want:?} in:\n{there}");
    }
    assert!(!fresh.exists(), "status created {}", fresh.display());
    let out = s
        .cmd_with_state(&["status", "--json"], &fresh)
        .output()
        .unwrap();
    let remote: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(remote["source_kind"], "target", "{remote:#}");
    assert_eq!(remote["run_id"], local["run_id"]);
    assert_eq!(remote["phase"], "Done");
    assert_eq!(remote["durations"], local["durations"]);
    assert_eq!(remote["live"], false);
    assert_eq!(remote["target_lock_held"], false);
    // The first run's record was dropped with the target by the second run's wipe, and
    // written back after it.
    let ids = |v: &Value| -> Vec<String> {
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&remote), ids(&local), "{remote:#}");

    // Where both exist, --from-target picks the target.
    let out = s.run_ok(&["status", "--json", "--from-target"]);
    let forced: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(forced["source_kind"], "target");
}

#[test]
fn check_is_a_dry_run_that_names_the_backup_a_run_would_take() {
    let s = Scenario::rich("op_check");
    s.put_stale_table_in_target();
    let out = s.run(&["check"]);
    let text = stdout(&out);
    println!("$ replicator check\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    for name in [
        "configuration",
        "state directory",
        "scalingo token",
        "addon",
        "backup",
        "disk",
        "target ",
        "target role",
        "target lock",
        "pg_restore",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "no ok line for {name}:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("a run now would take {BACKUP}")),
        "{text}"
    );
    assert!(text.contains("not restored yet"), "{text}");
    // Nothing changed: the old replica, no state directory, no download but the archive's
    // first bytes (the dump's table of contents, for the pre-wipe checks), no records.
    assert!(s.table_exists("stale_leftover"));
    assert!(!s.state_dir.exists(), "check created the state directory");
    let records = s.fake.records();
    assert_eq!(records.count(Route::Archive), 1);
    assert_eq!(records.ranges, vec![Some("bytes=0-4194303".to_string())]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("restore plan")),
        "{text}"
    );
    assert!(!replicator_schema_exists(&s));

    s.run_ok(&["run"]);
    let text = stdout(&s.run_ok(&["check"]));
    assert!(text.contains("already restored by run"), "{text}");
    // A fresh container learns it from the target.
    let fresh = s.files.path().join("fresh");
    let out = s
        .cmd_with_state(&["check", "--json"], &fresh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out), "check --json");
    let backup = lines
        .iter()
        .find(|l| l["check"] == "backup")
        .expect("a backup line");
    assert_eq!(backup["data"]["name"], BACKUP);
    assert_eq!(backup["data"]["already_restored"], true, "{backup:#}");
    assert_eq!(lines.last().unwrap()["exit_code"], 0);
}

#[test]
fn a_bad_token_fails_check_and_run_without_touching_the_target_and_logs_stay_json() {
    let mut s = Scenario::rich("op_badtoken");
    s.put_stale_table_in_target();
    s.fake.faults(|f| f.bad_api_token = Some(Times::Always));

    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let token = text.lines().find(|l| l.contains("scalingo token")).unwrap();
    assert!(
        token.starts_with("FAIL") && token.contains("SCALINGO_API_TOKEN"),
        "{token}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("skip") && l.contains("backup")),
        "{text}"
    );
    assert!(text.contains("checks failed"), "{text}");

    s.set_env("LOG_FORMAT", "json");
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let logs = json_lines(&stdout(&out), "stdout");
    assert!(logs.iter().all(|l| l["level"].is_string()), "{logs:?}");
    let errors = json_lines(&stderr(&out), "stderr");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["exit_code"], 1);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("SCALINGO_API_TOKEN"),
        "{errors:?}"
    );
    // A run bound to fail touches nothing in the target, not even to record itself.
    assert!(s.table_exists("stale_leftover"));
    assert!(!replicator_schema_exists(&s));
    assert!(!stdout(&out).contains(crate::common::fake_scalingo::API_TOKEN));
}

#[test]
fn with_log_format_json_every_line_of_a_run_is_a_json_object() {
    let mut s = Scenario::rich("op_json");
    s.set_env("LOG_FORMAT", "json");
    let out = s.run_ok(&["run"]);
    let logs = json_lines(&stdout(&out), "a run's stdout");
    assert!(stderr(&out).trim().is_empty(), "stderr: {}", stderr(&out));
    // Each transition names the phase that ended and its duration.
    let transitions: Vec<&Value> = logs
        .iter()
        .filter(|l| l["previous_phase"].is_string())
        .collect();
    let ended: Vec<&str> = transitions
        .iter()
        .map(|l| l["previous_phase"].as_str().unwrap())
        .collect();
    for phase in [
        "FetchingUrl",
        "Downloading",
        "Extracting",
        "Dropping",
        "Restoring",
    ] {
        assert!(
            ended.contains(&phase),
            "no transition out of {phase}: {ended:?}"
        );
    }
    assert!(
        transitions
            .iter()
            .all(|l| l["previous_phase_seconds"].is_number())
    );
    let summary = logs.last().expect("a summary line");
    assert_eq!(summary["outcome"], "Done", "{summary}");
    assert_eq!(summary["backup"], BACKUP);
    assert!(summary["total_seconds"].is_number());
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("downloading=")
    );

    // status follows LOG_FORMAT when its output is not a terminal: one JSON line.
    let out = s.run_ok(&["status"]);
    let lines = json_lines(&stdout(&out), "status");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["phase"], "Done");
}

#[test]
fn help_lists_the_commands_the_variables_and_their_defaults_and_flags_win() {
    // A dump with something in it: `check` reads the backup's table of contents, and a run
    // refuses an empty one.
    let s = Scenario::new("op_help", |c, db| {
        c.superuser_psql(db, "CREATE TABLE t (id int PRIMARY KEY)");
    });
    let help = stdout(&s.run_ok(&["--help"]));
    for cmd in [
        "run", "daemon", "status", "resume", "restore", "check", "web",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "no {cmd} in:\n{help}"
        );
    }
    assert!(help.contains("Exit codes"), "{help}");
    let run = stdout(&s.run_ok(&["run", "--help"]));
    for want in [
        "SCALINGO_APP",
        "SCALINGO_API_TOKEN",
        "DATABASE_URL",
        "REPLICATOR_STATE_DIR",
        "USE_UNLOGGED_TABLES",
        "PG_RESTORE_JOBS",
        "MAX_RETRY_COUNT",
        "[default: 10]",
        "LOG_FORMAT",
    ] {
        assert!(run.contains(want), "no {want} in run --help:\n{run}");
    }
    // Secrets are never echoed by --help, even when set.
    assert!(!run.contains(crate::common::fake_scalingo::API_TOKEN));
    let status = stdout(&s.run_ok(&["status", "--help"]));
    assert!(
        status.contains("DATABASE_URL") && status.contains("--from-target"),
        "{status}"
    );

    // A flag overrides its variable (MAX_RETRY_COUNT is 3 in the scenario's environment).
    let out = s.run_ok(&["check", "--max-retry-count", "5"]);
    let config = stdout(&out)
        .lines()
        .find(|l| l.contains("configuration"))
        .unwrap()
        .to_string();
    assert!(config.contains("MAX_RETRY_COUNT=5"), "{config}");
    // A bad value is a failed check of the configuration: exit 1, naming the variable.
    let out = s.run(&["check", "--pg-restore-jobs", "zero"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("PG_RESTORE_JOBS"), "{}", stdout(&out));
}

#[test]
fn another_container_sees_a_live_run_once_it_has_wiped_the_target_then_its_interruption() {
    let mut s = Scenario::rich("op_live");
    // Holds the run in Unlogging (after the wipe) long enough to look at it.
    s.set_env("REPLICATOR_TEST_PAUSE_AT", "unlogging:60");
    let mut child = s.spawn(&["run"]);
    let other = s.files.path().join("other-container");
    let status_there = || -> Value {
        let out = s
            .cmd_with_state(&["status", "--json"], &other)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    };
    let start = std::time::Instant::now();
    let live = loop {
        let st = status_there();
        if st["phase"] == "Unlogging" {
            break st;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the run never showed in the target: {st:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(live["source_kind"], "target", "{live:#}");
    assert_eq!(live["live"], true, "{live:#}");
    assert_eq!(live["target_lock_held"], true);
    let writer = live["written_by"].as_str().unwrap();
    assert!(
        writer.starts_with(&format!("pid {} on host ", child.id())),
        "{writer}"
    );
    let text = stdout(&s.cmd_with_state(&["status"], &other).output().unwrap());
    assert!(text.contains("[live, pid "), "{text}");
    assert!(text.contains("Unlogging, for "), "{text}");

    // SIGTERM, as a Scalingo restart sends: the interrupted state reaches the target too.
    // SAFETY: plain kill(2) on a child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let after = status_there();
    assert_eq!(after["phase"], "Unlogging", "{after:#}");
    assert_eq!(after["interrupted"], true, "{after:#}");
    assert_eq!(after["live"], false);
    assert_eq!(after["target_lock_held"], false);
    let text = stdout(&s.cmd_with_state(&["status"], &other).output().unwrap());
    assert!(text.contains("NOT live: interrupted"), "{text}");
}
