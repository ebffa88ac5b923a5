//! Issue 20, item 6: the extraction's cap bounds what it protects, the disk, and assumes no
//! ratio between the archive and its dump. A team that dumps uncompressed for speed
//! (`pg_dump -Fc -Z0`) and then gzips hands `restore --archive` a `.tar.gz` a fraction of its
//! dump's size: it restores exactly, whole and streamed, from a file and from Scalingo.

use crate::common::scenario::{Scenario, stderr, stdout};

/// Rows that gzip shrinks many times: a dump of some 90 MiB without compression, whose
/// archive is far below half of it (and far below the dump less 64 MiB).
fn compressible(prefix: &str) -> Scenario {
    let s = Scenario::across(
        prefix,
        crate::common::pg::shared_cluster(),
        crate::common::pg::shared_cluster(),
        |c, db| {
            c.superuser_psql(
                db,
                "CREATE TABLE notes (id int PRIMARY KEY, body text); \
                 INSERT INTO notes SELECT g, repeat(md5((g % 64)::text), 18) FROM generate_series(1, 150000) g; \
                 CREATE TABLE tags (id int PRIMARY KEY, note int REFERENCES notes, tag text); \
                 INSERT INTO tags SELECT g, g, 'tag-' || (g % 7) FROM generate_series(1, 1000) g;",
            );
        },
        |c, db, out| c.pg_dump_with(15, db, out, &["-Z0"]),
    );
    let dump = std::fs::metadata(&s.dump).unwrap().len();
    let archive = std::fs::metadata(&s.archive).unwrap().len();
    assert!(
        dump > 80 << 20 && archive * 2 < dump && archive + archive / 10 + (64 << 20) < dump,
        "dump {dump} bytes, archive {archive} bytes: the archive must be well under half its dump"
    );
    s.put_stale_table_in_target();
    s
}

fn restored_exactly(s: &Scenario, out: &std::process::Output, how: &str) {
    assert!(
        out.status.success(),
        "{how} exited {:?}\n{}{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"), "{how}: not restored");
}

#[test]
fn a_dump_in_an_archive_of_less_than_half_its_size_restores_whole_and_streamed() {
    let mut s = compressible("compressible");
    let archive = s.archive.to_string_lossy().into_owned();

    // From the file, whole: the disk has room for the dump.
    let out = s.run(&["restore", "--archive", &archive]);
    restored_exactly(&s, &out, "restore --archive (whole)");
    assert!(
        stdout(&out).contains("this run is whole"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("extracted the dump"),
        "{}",
        stdout(&out)
    );

    // From Scalingo, whole (extracted while it downloads, or after).
    s.target_psql("CREATE TABLE stale_leftover (id int)");
    let out = s.run(&["run"]);
    restored_exactly(&s, &out, "run (whole)");
    assert!(
        stdout(&out).contains("this run is whole"),
        "{}",
        stdout(&out)
    );

    // Streamed: MAX_WORK_DISK holds neither the archive and its dump nor the dump alone.
    s.set_env("MAX_WORK_DISK", "16MiB");
    s.target_psql("CREATE TABLE stale_leftover (id int)");
    let out = s.run(&["restore", "--archive", &archive]);
    restored_exactly(&s, &out, "restore --archive (streamed)");
    assert!(
        stdout(&out).contains("this run is streaming"),
        "{}",
        stdout(&out)
    );
    s.target_psql("CREATE TABLE stale_leftover (id int)");
    let out = s.run(&["run", "--force"]);
    restored_exactly(&s, &out, "run (streamed)");
    assert!(
        stdout(&out).contains("this run is streaming"),
        "{}",
        stdout(&out)
    );
}
