//! Issue 11: a backup larger than `MAX_WORK_DISK` streams from the download into the target
//! with the working files bounded by it; each table's rows commit with their record in the
//! target; a run killed while streaming, whose state directory is then lost (a new
//! container), is taken over from the target's records without loading a table twice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::fake_scalingo::{Route, Times, archive_bytes, default_backups};
use crate::common::scenario::{Scenario, big_source, eventually, kill_9, stderr, stdout};

/// Bytes of the files under `dir` (0 when it does not exist).
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Samples the size of `dir` every 20 ms until dropped; the largest is kept.
struct HighWater {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HighWater {
    fn watch(dir: &Path) -> HighWater {
        let (stop, max) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, m, d) = (stop.clone(), max.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(du(&d), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        HighWater {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The big source (1.5 M rows), its archive larger than 16 MiB, served by the fake.
fn streaming_scenario(prefix: &str) -> Scenario {
    let mut s = Scenario::new(prefix, big_source);
    s.set_env("MAX_WORK_DISK", "16MiB");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    let archive = std::fs::metadata(&s.archive).unwrap().len();
    assert!(
        archive > 32 << 20,
        "the archive ({archive} bytes) must be well over MAX_WORK_DISK for the test to mean anything"
    );
    s
}

/// The `TABLE DATA` records of the target: (table, loaded_at).
fn table_records(s: &Scenario) -> Vec<(String, String)> {
    if s.target_psql("SELECT to_regclass('replicator.loaded') IS NULL") == "t" {
        return Vec::new();
    }
    let out = s.target_psql(
        "SELECT coalesce(string_agg(name || '=' || loaded_at::text, ';' ORDER BY name), '') \
         FROM replicator.loaded WHERE kind = 'TABLE DATA'",
    );
    out.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, t) = p.split_once('=').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

#[test]
fn a_backup_over_max_work_disk_streams_within_it_and_ends_exact() {
    let s = streaming_scenario("stream_exact");
    let work = s.state_dir.join("work");
    let high = HighWater::watch(&work);
    let out = s.run_ok(&["run"]);
    let high = high.finish();
    s.assert_target_is_source();
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert!(log.contains("this run is streaming"), "{log}");
    // The download says how far it is, at each tenth of the backup: once each, the last at
    // 100%, the spool within the budget.
    let archive = std::fs::metadata(&s.archive).unwrap().len();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("streamed download: "))
        .collect();
    eprintln!("[stream] {}", said.last().unwrap_or(&""));
    assert_eq!(said.len(), 10, "{said:#?}");
    assert!(
        said.last().unwrap().contains(&format!(
            "of {:.0} MiB (100%)",
            archive as f64 / (1 << 20) as f64
        )),
        "{said:#?}"
    );
    let spool: u64 = said
        .last()
        .unwrap()
        .split("spool_high_water=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("the line says the spool's high-water mark");
    assert!(spool > 0 && spool <= 16 << 20, "{said:#?}");
    // The working files never exceeded MAX_WORK_DISK, for an archive several times larger.
    assert!(
        high <= 16 << 20,
        "the work dir reached {high} bytes, over MAX_WORK_DISK (16 MiB)"
    );
    assert!(high > 0, "the sampler saw no working file at all");
    // The archive was never stored whole: one download, streamed.
    assert_eq!(s.fake.records().count(Route::Download), 1);
    let st = s.status_json();
    assert_eq!(st["phase"], "Done");
    assert_eq!(st["mode"]["mode"], "streaming", "{st}");
    assert!(
        st["mode"]["why"]
            .as_str()
            .unwrap()
            .contains("MAX_WORK_DISK"),
        "{st}"
    );
    let load = &st["load"];
    assert_eq!(load["tables_done"], load["tables_total"], "{st}");
    assert!(load["rows"].as_u64().unwrap() >= 1_500_000, "{st}");
    let status = stdout(&s.run_ok(&["status"]));
    assert!(
        status.contains("Mode") && status.contains("streaming"),
        "{status}"
    );
    assert!(status.contains("Tables"), "{status}");
}

#[test]
fn a_cut_download_resumes_with_range_inside_the_stream() {
    let s = streaming_scenario("stream_cut");
    // Cut the connection twice in the middle of the archive.
    let len = std::fs::metadata(&s.archive).unwrap().len();
    s.fake
        .faults(|f| f.cut_after = Some((len / 3, Times::Next(2))));
    let out = s.run_ok(&["run"]);
    s.assert_target_is_source();
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert!(log.contains("resuming from byte"), "{log}");
    assert!(s.fake.records().count(Route::Download) >= 3, "{log}");
}

#[test]
fn a_run_killed_while_streaming_is_taken_over_by_a_new_container_without_loading_a_table_twice() {
    let s = streaming_scenario("stream_kill");
    // Slow enough that the kill lands between tables.
    s.fake.faults(|f| f.bytes_per_second = Some(6 << 20));
    let mut child = s.spawn(&["run"]);
    eventually(
        Duration::from_secs(120),
        "a table's rows committed with their record",
        || !table_records(&s).is_empty(),
    );
    kill_9(&mut child);
    let before = table_records(&s);
    // A new container: the state directory is gone.
    std::fs::remove_dir_all(&s.state_dir).unwrap();
    s.fake.faults(|f| f.bytes_per_second = None);
    let out = s.run_ok(&["resume"]);
    let log = format!("{}{}", stdout(&out), stderr(&out));
    assert!(log.contains("taking over run"), "{log}");
    assert!(log.contains("already in and are not loaded again"), "{log}");
    s.assert_target_is_source();
    let after = table_records(&s);
    // The tables loaded before the kill kept their records: they were not loaded again.
    for (table, at) in &before {
        assert!(
            after.contains(&(table.clone(), at.clone())),
            "{table} was loaded again (before {before:?}, after {after:?})"
        );
    }
    // One record per table with rows, none twice (the key forbids it; this says it).
    let tables = s.target_psql(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'replicator')",
    );
    assert!(after.len() as u64 <= tables.parse::<u64>().unwrap());
    let st = s.status_json();
    assert_eq!(st["phase"], "Done", "{st}");
    assert_eq!(
        st["load"]["resumed"].as_u64(),
        Some(before.len() as u64),
        "{st}"
    );
}

/// `check`'s `disk` line.
fn disk_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains("disk"))
        .unwrap_or_default()
}

#[test]
fn check_and_status_say_which_mode_a_run_uses_and_why() {
    let mut s = Scenario::rich("stream_check");
    let out = s.run(&["check"]);
    let text = stdout(&out);
    let disk = disk_line(&text);
    assert!(disk.contains("whole"), "{text}");
    s.set_env("MAX_WORK_DISK", "16MiB");
    let out = s.run(&["check"]);
    let text = stdout(&out);
    let disk = disk_line(&text);
    assert!(
        disk.starts_with("ok") && disk.contains("streaming") && disk.contains("16 MiB"),
        "{text}"
    );
    // A bad size is refused by name.
    s.set_env("MAX_WORK_DISK", "lots");
    let out = s.run(&["run"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("MAX_WORK_DISK"), "{}", stderr(&out));
}

#[test]
fn a_dump_cut_short_found_after_the_wipe_is_retried_from_the_download_keeping_the_tables_in() {
    // The trade-off of streaming: a dump cut in its data is found only by pg_restore, after
    // the wipe. The attempt ends with a stream cut (transient), the next downloads again and
    // does not load again the tables the first committed; a backup that stays broken fails
    // the run once the retries are spent, in `Restoring`, saying why.
    let mut s = streaming_scenario("stream_trunc");
    s.set_env("MAX_RETRY_COUNT", "1");
    let dump = std::fs::read(&s.dump).unwrap();
    // Cut in its last data block: the tables before it load, then pg_restore stops.
    let cut = archive_bytes("20261123041000_my_app_4553.pgsql", &dump[..dump.len() - 64]);
    // Scalingo announces the archive's own size: only the dump inside is short.
    s.fake.set_archive(cut.clone());
    s.fake.set_backups(default_backups(cut.len() as u64));
    let mut child = s.spawn(&["run"]);
    let st = s.wait_status(Duration::from_secs(180), |st| {
        st["error"].as_str().is_some_and(|e| e.contains("was cut"))
    });
    // Found after the wipe, in the rows; attempt 2 waits.
    assert_eq!(st["phase"], "Restoring", "{st:#}");
    assert_eq!(st["section"], "data+post-data", "{st:#}");
    assert_eq!(st["attempt"], 2, "{st:#}");
    let first = table_records(&s);
    assert!(!first.is_empty(), "no table loaded before the cut");
    let status = child.wait().unwrap();
    assert!(!status.success());
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed", "{st:#}");
    assert_eq!(st["failed_in"], "Restoring", "{st:#}");
    assert!(
        st["error"].as_str().unwrap().contains("MAX_RETRY_COUNT"),
        "{st:#}"
    );
    // Downloaded again for attempt 2, and the tables of attempt 1 were not loaded again.
    assert!(s.fake.records().count(Route::Download) >= 2);
    let second = table_records(&s);
    for rec in &first {
        assert!(second.contains(rec), "{rec:?} was loaded again");
    }
}
