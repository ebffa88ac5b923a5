//! Crash at every phase: the real binary is killed with SIGKILL inside each phase, then
//! `replicator resume` must bring the target to the content of a clean run, leave no
//! `pg_restore` session behind, and `status` must have told the truth all along (live with its
//! pid while it ran; the phase it died in, not live, once killed).
//!
//! Phases whose step is long enough are caught in the act: the download is throttled by the
//! fake, the data section waits on an index whose expression sleeps, the pre-data section
//! on an event trigger that sleeps after each DDL command. The others (`FetchingUrl`, `Extracting`, `Dropping`,
//! `Unlogging`) last milliseconds: the driver's test hook `REPLICATOR_TEST_PAUSE_AT` holds them
//! after the phase is persisted and before its step, which is the window a crash there hits.

use std::time::Duration;

use serde_json::Value;

use crate::common::pg::{PgCluster, create_rich_source};
use crate::common::scenario::{Scenario, eventually, kill_9, stdout};

/// The rich source plus a post-data index whose expression sleeps 1 ms a row: `pg_restore`
/// spends a few seconds in the data+post-data section, on the server, where a kill must be
/// cleaned up.
pub fn slow_post_data_source(cluster: &PgCluster, db: &str) {
    create_rich_source(cluster, db);
    cluster.superuser_psql(
        db,
        "CREATE FUNCTION public.slow_id(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_catalog.pg_sleep(0.001); RETURN i; END $$;\
         CREATE TABLE \"Slow-Rows\" (id int PRIMARY KEY, note text);\
         INSERT INTO \"Slow-Rows\" SELECT g, md5(g::text) FROM generate_series(1, 3000) g;\
         CREATE INDEX slow_rows_slow_id ON \"Slow-Rows\" (public.slow_id(id));",
    );
}

/// An event trigger in the target (the superuser's, so the wipe leaves it) that sleeps after
/// each DDL command: the pre-data section, a few dozen `CREATE`s, then lasts seconds, with
/// `pg_restore` connected all along.
const SLOW_DDL: &str = "CREATE SCHEMA slowddl; GRANT USAGE ON SCHEMA slowddl TO PUBLIC;\
     CREATE FUNCTION slowddl.pause() RETURNS event_trigger LANGUAGE plpgsql AS \
     $$ BEGIN PERFORM pg_catalog.pg_sleep(0.1); END $$;\
     CREATE EVENT TRIGGER slow_ddl ON ddl_command_end EXECUTE FUNCTION slowddl.pause();";
const FAST_DDL: &str = "DROP EVENT TRIGGER slow_ddl; DROP SCHEMA slowddl CASCADE;";

struct Crash {
    phase: &'static str,
    section: Option<&'static str>,
    /// `REPLICATOR_TEST_PAUSE_AT` for a phase too short to be caught otherwise.
    pause_at: Option<&'static str>,
    /// Wait until pg_restore has sessions on the target before the kill.
    restore_running: bool,
    /// SQL run as the superuser in the target before the run, and before the resume.
    target_sql: Option<(&'static str, &'static str)>,
}

fn in_phase(st: &Value, c: &Crash) -> bool {
    st["phase"] == c.phase && c.section.is_none_or(|sec| st["section"] == sec)
}

fn crash_then_resume(mut s: Scenario, c: Crash) {
    s.put_stale_table_in_target();
    if let Some((before, _)) = c.target_sql {
        s.cluster.superuser_psql(&s.target.dbname, before);
    }
    if let Some(label) = c.pause_at {
        s.set_env(
            replicator::engine::test_hooks::PAUSE_AT_VAR,
            &format!("{label}:120"),
        );
    }
    let mut child = s.spawn(&["run"]);
    let live = s.wait_status(Duration::from_secs(90), |st| {
        in_phase(st, &c) && st["live"] == true
    });
    assert_eq!(live["pid"], child.id(), "{live:#}");
    if c.restore_running {
        eventually(Duration::from_secs(30), "pg_restore at work", || {
            s.restore_sessions() > 0
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    if c.phase == "Downloading" {
        s.wait_status(Duration::from_secs(30), |st| {
            st["bytes_downloaded"].as_u64().unwrap_or(0) > 0
        });
    }
    kill_9(&mut child);

    // Dead: status says where, and that nobody is running it.
    let dead = s.status_json();
    assert!(in_phase(&dead, &c), "status after the kill: {dead:#}");
    assert_eq!(dead["live"], false, "{dead:#}");
    let text = stdout(&s.run_ok(&["status"]));
    assert!(text.contains(c.phase), "{text}");
    // pg_restore and its workers die with the replicator, and their sessions end.
    eventually(Duration::from_secs(30), "pg_restore sessions gone", || {
        s.restore_sessions() == 0
    });
    // A new run is refused while this one waits to be resumed.
    let out = s.run(&["run"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        crate::common::scenario::stderr(&out)
    );

    s.env
        .retain(|(k, _)| k != replicator::engine::test_hooks::PAUSE_AT_VAR);
    if let Some((_, after)) = c.target_sql {
        s.cluster.superuser_psql(&s.target.dbname, after);
    }
    let out = s.run_ok(&["resume"]);
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.restore_sessions(), 0);
    let done = s.status_json();
    assert_eq!(done["phase"], "Done", "{done:#}\n{}", stdout(&out));
    assert_eq!(done["live"], false);
    let work: Vec<_> = std::fs::read_dir(s.state_dir.join("work"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "working files left: {work:?}");
}

#[test]
fn kill_9_in_fetching_url_then_resume() {
    crash_then_resume(
        Scenario::rich("crash_fetch"),
        Crash {
            phase: "FetchingUrl",
            section: None,
            pause_at: Some("fetching_url"),
            restore_running: false,
            target_sql: None,
        },
    );
}

/// Downloading: the kill comes mid-stream, and the resume continues with `Range`.
#[test]
fn kill_9_in_downloading_then_resume_continues_with_range() {
    // Larger than the download's write buffer (256 KiB), so that bytes reach the file, and
    // `status`, while the download is still going.
    let s = Scenario::new("crash_dl", |c, db| {
        create_rich_source(c, db);
        c.superuser_psql(
            db,
            "CREATE TABLE payloads AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS body \
             FROM generate_series(1, 20000) g;",
        );
    });
    s.put_stale_table_in_target();
    let size = s.fake.archive_len();
    assert!(size > 512 << 10, "archive of {size} bytes");
    s.fake.faults(|f| f.bytes_per_second = Some(size / 8));
    let mut child = s.spawn(&["run"]);
    let live = s.wait_status(Duration::from_secs(60), |st| {
        st["phase"] == "Downloading" && st["bytes_downloaded"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(live["live"], true, "{live:#}");
    assert_eq!(live["pid"], child.id());
    kill_9(&mut child);
    let dead = s.status_json();
    assert_eq!(dead["phase"], "Downloading", "{dead:#}");
    assert_eq!(dead["live"], false);
    let kept = dead["bytes_downloaded"].as_u64().unwrap();
    assert!(kept > 0 && kept < size, "{dead:#}");

    s.fake.faults(|f| f.bytes_per_second = None);
    s.fake.reset_records();
    s.run_ok(&["resume"]);
    let ranges = s.fake.records().ranges;
    assert!(
        ranges.iter().flatten().any(|r| r != "bytes=0-"),
        "the resume started over: {ranges:?}"
    );
    assert!(s.fake.records().bytes_served < size, "{ranges:?}");
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.status_json()["phase"], "Done");
}

#[test]
fn kill_9_in_extracting_then_resume() {
    crash_then_resume(
        Scenario::rich("crash_extract"),
        Crash {
            phase: "Extracting",
            section: None,
            pause_at: Some("extracting"),
            restore_running: false,
            target_sql: None,
        },
    );
}

#[test]
fn kill_9_in_dropping_then_resume() {
    crash_then_resume(
        Scenario::rich("crash_drop"),
        Crash {
            phase: "Dropping",
            section: None,
            pause_at: Some("dropping"),
            restore_running: false,
            target_sql: None,
        },
    );
}

#[test]
fn kill_9_in_restoring_pre_data_then_resume() {
    crash_then_resume(
        Scenario::rich("crash_pre"),
        Crash {
            phase: "Restoring",
            section: Some("pre-data"),
            pause_at: None,
            restore_running: true,
            target_sql: Some((SLOW_DDL, FAST_DDL)),
        },
    );
}

#[test]
fn kill_9_in_unlogging_then_resume() {
    let mut s = Scenario::rich("crash_unlog");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    crash_then_resume(
        s,
        Crash {
            phase: "Unlogging",
            section: None,
            pause_at: Some("unlogging"),
            restore_running: false,
            target_sql: None,
        },
    );
}

#[test]
fn kill_9_in_restoring_data_then_resume() {
    crash_then_resume(
        Scenario::new("crash_data", slow_post_data_source),
        Crash {
            phase: "Restoring",
            section: Some("data+post-data"),
            pause_at: None,
            restore_running: true,
            target_sql: None,
        },
    );
}
