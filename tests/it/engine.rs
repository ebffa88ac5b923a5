//! The engine, end to end with the real binary: `run`, `restore`, `status`, `resume`.

use std::time::Duration;

use crate::common::fake_scalingo::{DONE_BACKUP_ID, Route, default_backups, write_archive};
use crate::common::scenario::{Scenario, big_source, eventually, kill_9, stderr, stdout};

#[test]
fn run_replaces_the_target_with_the_newest_done_backup() {
    let s = Scenario::rich("run");
    s.put_stale_table_in_target();
    let out = s.run_ok(&["run"]);
    s.assert_target_is_source();
    assert!(
        !s.table_exists("stale_leftover"),
        "the previous content of the target is still there"
    );
    // Logged tables unless asked.
    assert!(s.table_persistence().iter().all(|(_, p)| p == "p"));

    let status = s.status_json();
    assert_eq!(status["phase"], "Done");
    assert_eq!(status["backup_id"], DONE_BACKUP_ID);
    assert_eq!(status["backup_name"], "20261123051000_my_app_4553");
    assert_eq!(status["live"], false);
    assert_eq!(status["error"], serde_json::Value::Null);
    assert_eq!(status["attempt"], 1);
    let steps: Vec<&str> = status["durations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["step"].as_str().unwrap())
        .collect();
    for step in [
        "fetching_url",
        "downloading",
        "extracting",
        "dropping",
        "restoring_pre_data",
        "unlogging",
        "restoring_data",
    ] {
        assert!(steps.contains(&step), "no duration for {step}: {steps:?}");
    }
    // Working files are gone once the run is done.
    let work = s.state_dir.join("work");
    let leftovers: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "working files left: {leftovers:?}");
    assert!(stdout(&out).contains("Done"), "{}", stdout(&out));
}

#[test]
fn unlogged_tables_end_unlogged_with_the_same_content() {
    let mut s = Scenario::rich("unlogged");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    let out = s.run_ok(&["run"]);
    s.assert_target_is_source();
    // Created unlogged by the schema's statements, none rewritten after: the unlogging step
    // had nothing left to do.
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        log.contains("table(s) created UNLOGGED by the schema's statements"),
        "{log}"
    );
    assert!(!log.contains("set UNLOGGED before loading rows"), "{log}");
    let tables = s.table_persistence();
    assert!(tables.len() >= 5, "{tables:?}");
    // PostgreSQL keeps a partitioned table logged, and a logged table's foreign key may not
    // reference an unlogged one: "UserAccounts", referenced by the partitioned "Events", is
    // the one table that must stay logged. Every other one is unlogged.
    let logged: Vec<_> = tables
        .iter()
        .filter(|(_, p)| p != "u")
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(logged, vec!["UserAccounts"], "{tables:?}");
    let unlogged = tables.iter().filter(|(_, p)| p == "u").count();
    assert!(
        log.contains(&format!("{unlogged} table(s) created UNLOGGED")),
        "{unlogged} unlogged: {log}"
    );
}

#[test]
fn restore_from_an_archive_or_a_dump_needs_no_scalingo() {
    let s = Scenario::rich("local");
    s.put_stale_table_in_target();
    let archive = s.archive.to_str().unwrap().to_string();
    let out = s
        .cmd(&["restore", "--archive", &archive])
        .env_remove("SCALINGO_APP")
        .env_remove("SCALINGO_API_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.fake.records().count(Route::Exchange), 0);
    // The user's archive is theirs: it stays.
    assert!(s.archive.exists());

    s.put_stale_table_in_target();
    let dump = s.dump.to_str().unwrap().to_string();
    s.run_ok(&["restore", "--dump", &dump]);
    s.assert_target_is_source();
    assert!(s.dump.exists());
    assert_eq!(s.status_json()["phase"], "Done");
}

#[test]
fn status_answers_while_a_download_is_live_and_resume_continues_it_with_range() {
    // A few MiB: the download writes through a buffer of 256 KiB.
    let s = Scenario::new("kill_dl", |c, db| {
        crate::common::pg::create_rich_source(c, db);
        c.superuser_psql(
            db,
            "CREATE TABLE payloads AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS body \
             FROM generate_series(1, 100000) g;",
        );
    });
    let size = s.fake.archive_len();
    // Slow enough to be caught in the middle, whatever the archive's size.
    s.fake
        .faults(|f| f.bytes_per_second = Some((size / 8).max(512)));
    let mut child = s.spawn(&["run"]);
    let live = s.wait_status(Duration::from_secs(60), |st| {
        st["phase"] == "Downloading" && st["bytes_downloaded"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(live["live"], true, "{live:#}");
    assert_eq!(live["pid"], child.id());
    assert_eq!(live["bytes_total"], size);
    assert_eq!(live["backup_id"], DONE_BACKUP_ID);

    kill_9(&mut child);
    let dead = s.status_json();
    assert_eq!(dead["phase"], "Downloading");
    assert_eq!(dead["live"], false);
    let on_disk = std::fs::read_dir(s.state_dir.join("work"))
        .unwrap()
        .flatten()
        .map(|d| d.path().join("archive.tar.gz"))
        .find(|p| p.exists())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .expect("the partial archive is kept for the resume");
    assert!(on_disk > 0 && on_disk < size, "{on_disk} of {size}");

    s.fake.faults(|f| f.bytes_per_second = None);
    s.fake.reset_records();
    let out = s.run_ok(&["resume"]);
    let ranges = s.fake.records().ranges;
    assert!(
        ranges
            .iter()
            .flatten()
            .any(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "no Range request on resume: {ranges:?}\n{}",
        stdout(&out)
    );
    s.assert_target_is_source();
    assert_eq!(s.status_json()["phase"], "Done");
}

#[test]
fn kill_9_during_the_restore_then_resume_gives_the_same_content_and_no_leftover_session() {
    let s = Scenario::new("kill_restore", big_source);
    s.put_stale_table_in_target();
    let mut child = s.spawn(&["run"]);
    s.wait_status(Duration::from_secs(120), |st| {
        st["phase"] == "Restoring" && st["section"] == "data+post-data"
    });
    // Let pg_restore get going on the rows.
    std::thread::sleep(Duration::from_millis(300));
    kill_9(&mut child);
    let dead = s.status_json();
    assert_eq!(dead["live"], false);
    assert_eq!(dead["phase"], "Restoring", "{dead:#}");
    // pg_restore and its workers die with the replicator (PR_SET_PDEATHSIG) and their
    // sessions end shortly after.
    eventually(Duration::from_secs(30), "pg_restore sessions gone", || {
        s.restore_sessions() == 0
    });

    let out = s.run_ok(&["resume"]);
    // The rows' section goes on where it stopped (each table is committed with its record in
    // the target): no second wipe.
    let log = stdout(&out);
    assert!(!log.contains("-> Dropping"), "{log}");
    assert!(log.contains("in Restoring (data+post-data)"), "{log}");
    s.assert_target_is_source();
    assert_eq!(s.restore_sessions(), 0);
    let status = s.status_json();
    assert_eq!(status["phase"], "Done");
    assert_eq!(status["live"], false);
}

#[test]
fn resume_refuses_when_there_is_nothing_to_resume() {
    let s = Scenario::rich("noresume");
    let out = s.run(&["resume"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to resume"),
        "{}",
        stderr(&out)
    );
    s.run_ok(&["run"]);
    let out = s.run(&["resume"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("ended Done"), "{}", stderr(&out));
}

#[test]
fn status_with_no_run_yet_exits_zero() {
    let s = Scenario::rich("nostatus");
    let st = s.status_json();
    assert_eq!(st["phase"], "Idle");
    assert_eq!(st["live"], false);
    let out = s.run_ok(&["status"]);
    assert!(stdout(&out).contains("No replication has run yet"));
}

#[test]
fn a_run_that_fails_exits_non_zero_with_the_reason_on_stderr() {
    let s = Scenario::rich("fail");
    s.put_stale_table_in_target();
    let out = s
        .cmd(&["run"])
        .env("SCALINGO_APP", "no-such-app")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no-such-app"), "{err}");
    assert!(s.table_exists("stale_leftover"), "the target was touched");
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed");
    assert_eq!(st["failed_in"], "FetchingUrl");
}

#[test]
fn invalid_configuration_is_refused_before_anything_is_touched() {
    let s = Scenario::rich("badconf");
    s.put_stale_table_in_target();
    for (var, value) in [
        ("MAX_RETRY_COUNT", "ten"),
        ("USE_UNLOGGED_TABLES", "yes"),
        ("PG_RESTORE_JOBS", "0"),
        ("DATABASE_URL", "mysql://x@y/z"),
    ] {
        let out = s.cmd(&["run"]).env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(var)
                || stderr(&out).contains(&var.to_lowercase().replace('_', "-")),
            "{var}: {}",
            stderr(&out)
        );
    }
    let out = s
        .cmd(&["run"])
        .env_remove("SCALINGO_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("SCALINGO_API_TOKEN"));
    assert_eq!(s.fake.records().count(Route::Exchange), 0);
    assert!(s.table_exists("stale_leftover"));
}

#[test]
fn run_restores_the_real_pix_dump_exactly() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/pix-source-2020.pgsql");
    if !fixture.exists() {
        eprintln!(
            "skipped: the Pix fixture {} is absent (it sits beside the project, in shared/)",
            fixture.display()
        );
        return;
    }
    // The source is what the dump holds, restored by hand as the superuser: the reference.
    let mut s = Scenario::new("pix", |c, db| c.pg_restore_as_superuser(db, &fixture));
    // Serve the real 2020 dump itself (made by pg_dump 12.4), not a re-dump of the source.
    let archive = s.files.path().join("pix.tar.gz");
    let len = write_archive(&fixture, "20201020041000_pix_1234.pgsql", &archive).unwrap();
    s.fake.set_archive(archive);
    s.fake.set_backups(default_backups(len));
    s.set_env("USE_UNLOGGED_TABLES", "true");
    s.put_stale_table_in_target();

    s.run_ok(&["run"]);
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    let tables = s.table_persistence();
    assert_eq!(tables.len(), 40, "{tables:?}");
    assert!(tables.iter().all(|(_, p)| p == "u"), "{tables:?}");
    assert!(s.table_exists("\"knowledge-elements\""));
    assert_eq!(s.status_json()["phase"], "Done");
}
