//! Issue 23: the rows' section reads the archive's data blocks itself and feeds `COPY`, with no
//! `pg_restore` in the way. For each pg_dump (14, 16, 17, 18) and each compression it has, the
//! script the native reader writes for the data entries is the one `pg_restore --file=-` 18
//! writes for them, byte for byte (its `\restrict` lines aside: their key is random), from a
//! file with offsets, from a file without (pg_dump wrote to a pipe) and from a stream; and a
//! run restores exactly, saying that it read the rows natively.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use replicator::dump::feed::{CutReason, Feed};
use replicator::dump::rows::{ArchiveRows, read_toc_of};

use crate::common::pg::{PgCluster, pg_bin_dir, shared_cluster_version, unique_name};
use crate::common::scenario::{Scenario, stderr, stdout};

/// The source of the archives: rows over several blocks and chunks, quoted names, a name
/// with a newline, NULLs, tabs and backslashes, sequences.
const SOURCE: &str = include_str!("../fixtures/rows/source.sql");

/// A table big enough for many compressed chunks per block.
const MORE_ROWS: &str = "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text);\
     INSERT INTO public.big SELECT g, md5(g::text) || repeat(chr(65 + g % 26), g % 40) \
     FROM generate_series(1, 20000) g;";

/// Every pg_dump and the compressions it has (`-Z` values).
const CASES: &[(u32, &[&str])] = &[
    (14, &["0", "6"]),
    (16, &["0", "gzip", "lz4", "zstd"]),
    (17, &["0", "gzip:9", "lz4", "zstd"]),
    (18, &["0", "gzip", "lz4", "zstd", "zstd:long"]),
];

/// The source runs PostgreSQL 14: every pg_dump of the cases reads it.
fn source() -> (&'static PgCluster, String) {
    let cluster = shared_cluster_version(14);
    let db = unique_name("native_rows_src");
    cluster.create_source(&db);
    cluster.superuser_psql(&db, SOURCE);
    cluster.superuser_psql(&db, MORE_ROWS);
    (cluster, db)
}

/// `pg_dump -Fc -Z z` of `db` by pg_dump `major` into `out`: into the file itself (offsets
/// recorded) or, with `pipe`, through a pipe (no offsets), as `pg_dump -Fc | cat > out`.
fn dump(cluster: &PgCluster, major: u32, db: &str, z: &str, out: &Path, pipe: bool) {
    let mut cmd = Command::new(pg_bin_dir(major).join("pg_dump"));
    cmd.args(["-Fc", "--no-sync", "-Z", z])
        .arg("-h")
        .arg(cluster.socket_dir())
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", "postgres", "-d", db]);
    if pipe {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pg_dump");
        let mut from = child.stdout.take().unwrap();
        let mut file = std::fs::File::create(out).unwrap();
        std::io::copy(&mut from, &mut file).unwrap();
        file.flush().unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "pg_dump {major}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        let o = cmd.arg("-f").arg(out).output().expect("run pg_dump");
        assert!(
            o.status.success(),
            "pg_dump {major}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The list of the data entries of `dump` (as the rows' section gives pg_restore).
fn data_list(dump: &Path) -> String {
    let o = Command::new(pg_bin_dir(18).join("pg_restore"))
        .arg("-l")
        .arg(dump)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter(|l| l.contains(" TABLE DATA ") || l.contains(" SEQUENCE SET "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// pg_restore 18's script of the entries of `list`, as the replicator runs it, without the
/// `\restrict KEY` and `\unrestrict KEY` lines (and the blank line after each).
fn pg_restore_script(dump: &Path, list: &str, dir: &Path) -> String {
    let list_file = dir.join("data.list");
    std::fs::write(&list_file, list).unwrap();
    let o = Command::new(pg_bin_dir(18).join("pg_restore"))
        .args([
            "--file=-",
            "--no-owner",
            "--no-privileges",
            "--no-tablespaces",
        ])
        .arg(format!("--use-list={}", list_file.display()))
        .arg(dump)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let mut out = String::new();
    let mut skip_blank = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("\\restrict ") || line.starts_with("\\unrestrict ") {
            skip_blank = true;
            continue;
        }
        if skip_blank && line == "\n" {
            skip_blank = false;
            continue;
        }
        skip_blank = false;
        out.push_str(line);
    }
    out
}

fn ids(list: &str) -> Vec<i64> {
    replicator::dump::rows::list_ids(list)
}

fn native_from_file(dump: &Path, list: &str) -> String {
    let toc = std::sync::Arc::new(read_toc_of(dump).unwrap());
    replicator::dump::rows::natively_readable(&toc, &ids(list)).unwrap();
    let mut out = Vec::new();
    ArchiveRows::file(dump, toc)
        .unwrap()
        .write_script(&ids(list), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn native_from_stream(dump: &Path, list: &str) -> String {
    let file = std::fs::File::open(dump).unwrap();
    let feed = Feed::of_reader("a test stream".into(), Box::new(file), CutReason::default());
    let mut out = Vec::new();
    ArchiveRows::feed(feed)
        .unwrap()
        .write_script(&ids(list), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Where the first difference of two scripts is, for the message.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(200);
    format!(
        "at byte {at} (lengths {} and {}):\nnative: {:?}\npg_restore: {:?}",
        a.len(),
        b.len(),
        &a[from..(at + 200).min(a.len())],
        &b[from..(at + 200).min(b.len())]
    )
}

#[test]
fn the_native_script_of_the_rows_is_pg_restores_for_every_pg_dump_and_compression() {
    let t0 = Instant::now();
    let (cluster, db) = source();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (major, compressions) in CASES {
        for z in *compressions {
            for pipe in [false, true] {
                let name = format!(
                    "pg_dump {major} -Z {z}{}",
                    if pipe { " through a pipe" } else { "" }
                );
                let path = dir
                    .path()
                    .join(format!("d{major}-{}-{pipe}.dump", z.replace(':', "_")));
                dump(cluster, *major, &db, z, &path, pipe);
                let list = data_list(&path);
                assert!(list.lines().count() >= 9, "{name}: {list}");
                let want = pg_restore_script(&path, &list, dir.path());
                assert!(want.contains("COPY public.big "), "{name}");
                let file = native_from_file(&path, &list);
                assert!(
                    file == want,
                    "{name}, from the file: {}",
                    first_difference(&file, &want)
                );
                let stream = native_from_stream(&path, &list);
                assert!(
                    stream == want,
                    "{name}, from a stream: {}",
                    first_difference(&stream, &want)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 30);
    eprintln!("[native_rows] 30 archives compared in {:.1?}", t0.elapsed());
}

/// [`SOURCE`] for a run, without two names the replicator does not restore whatever reads
/// the rows (not this issue's): a schema name with a space (`Mixed Schema`: the check before
/// the wipe reads `pg_restore --list` and takes its first word), a table name with a newline
/// (`new<newline>line`: the script's header comment flattens it to `new line`, which the
/// table's `ANALYZE` then does not find).
fn run_source(c: &PgCluster, db: &str) {
    let sql = SOURCE
        .replace("Mixed Schema", "Mixed-Schema")
        .replace("\"new\nline\"", "\"new-line\"");
    assert!(!sql.contains("new\nline"));
    c.superuser_psql(db, &sql);
}

/// The rows of a run come from the native reader, said once, and the target is exact. From a
/// dump file with its blocks' offsets (`located`), the tables load side by side, each from a
/// reader of its own; from one written to a pipe, one at a time in the archive's order.
fn run_reads_natively(s: &Scenario, what: &str, located: bool) {
    let out = s.run_ok(&["run"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("the rows are read from the archive natively"),
        "{what}: the run did not read the rows natively:\n{text}"
    );
    let how = if located {
        "table(s) side by side over up to"
    } else {
        "one table at a time in the archive's order"
    };
    assert!(
        text.contains(how),
        "{what}: the run did not say it loads the rows {how}:\n{text}"
    );
    assert!(
        !text.contains("goes through pg_restore"),
        "{what}: the run fell back to pg_restore:\n{text}"
    );
    s.assert_target_is_source();
}

#[test]
fn a_run_reads_the_rows_natively_and_restores_exactly_for_every_pg_dump() {
    let cluster = shared_cluster_version(14);
    for (major, z, pipe) in [
        (14, "6", false),
        (16, "lz4", true),
        (17, "zstd", false),
        (18, "zstd:long", true),
        (18, "0", false),
    ] {
        let t0 = Instant::now();
        let what = format!("pg_dump {major} -Z {z}, pipe {pipe}");
        let mut s = Scenario::across(
            "native_rows",
            cluster,
            cluster,
            |c, db| {
                run_source(c, db);
                c.superuser_psql(db, MORE_ROWS);
            },
            |c, db, out| dump(c, major, db, z, out, pipe),
        );
        s.use_client(18);
        run_reads_natively(&s, &what, !pipe);
        eprintln!("[native_rows] {what}: run in {:.1?}", t0.elapsed());
    }
}

#[test]
fn a_streamed_run_reads_the_rows_natively_and_restores_exactly() {
    let cluster = shared_cluster_version(14);
    let mut s = Scenario::across(
        "native_rows_stream",
        cluster,
        cluster,
        |c, db| {
            run_source(c, db);
            c.superuser_psql(
                db,
                "CREATE TABLE public.big (id bigint PRIMARY KEY, payload text);\
                 INSERT INTO public.big SELECT g, md5(g::text) || md5((g * 7)::text) \
                 FROM generate_series(1, 700000) g;",
            );
        },
        |c, db, out| dump(c, 17, db, "gzip", out, false),
    );
    s.use_client(18);
    s.set_env("MAX_WORK_DISK", "16MiB");
    let archive = std::fs::metadata(&s.archive).unwrap().len();
    assert!(
        archive > 24 << 20,
        "the archive ({archive} bytes) must stream"
    );
    let out = s.run_ok(&["run"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("this run is streaming"),
        "the run did not stream:\n{text}"
    );
    assert!(
        text.contains("the rows are read from the archive natively"),
        "the streamed run did not read the rows natively:\n{text}"
    );
    assert!(
        text.contains("streamed as the archive arrives, one table at a time"),
        "the streamed run did not say it loads one table at a time:\n{text}"
    );
    s.assert_target_is_source();
}

/// A block whose compressed bytes are damaged (the chunk headers intact, so the check before
/// the wipe passes): the run fails for good, naming the table and the byte, and does not
/// retry, as when pg_restore read the rows.
#[test]
fn a_damaged_block_fails_the_run_for_good_naming_its_table() {
    let cluster = shared_cluster_version(14);
    let mut s = Scenario::across(
        "native_rows_damaged",
        cluster,
        cluster,
        |c, db| {
            run_source(c, db);
            c.superuser_psql(db, MORE_ROWS);
        },
        |c, db, out| dump(c, 17, db, "gzip", out, false),
    );
    s.use_client(18);
    let toc = read_toc_of(&s.dump).unwrap();
    let big = toc
        .entries
        .iter()
        .find(|e| e.desc() == "TABLE DATA" && e.tag.as_deref() == Some("big"))
        .unwrap();
    let replicator::dump::archive::DataPos::At(pos) = big.data else {
        panic!("no offset for big's data")
    };
    let mut bytes = std::fs::read(&s.dump).unwrap();
    // Past the block's header and its first chunk's length: compressed rows.
    for b in &mut bytes[pos as usize + 40..pos as usize + 200] {
        *b ^= 0x5a;
    }
    std::fs::write(&s.dump, &bytes).unwrap();
    s.rearchive();
    let out = s.run(&["run"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("is damaged in the data of TABLE DATA public.big (entry"),
        "{text}"
    );
    assert!(text.contains("download the backup again"), "{text}");
    assert!(
        text.contains("attempts=1"),
        "retried a damaged archive:\n{text}"
    );
}

/// A dump made with `--inserts` (data entries without `COPY`) and one with a large object go
/// through pg_restore as before: said once, with the reason, and restored exactly.
#[test]
fn what_the_native_reader_does_not_read_goes_through_pg_restore_said_once() {
    let cluster = shared_cluster_version(14);
    for (what, extra, args) in [
        ("--inserts", "", &["--inserts"][..]),
        (
            "BLOBS",
            "SELECT lo_from_bytea(0, 'a large object'::bytea);",
            &[][..],
        ),
    ] {
        let mut s = Scenario::across(
            "native_rows_fallback",
            cluster,
            cluster,
            |c, db| {
                run_source(c, db);
                if !extra.is_empty() {
                    c.superuser_psql(db, extra);
                }
            },
            |c, db, out| c.pg_dump_with(18, db, out, args),
        );
        s.use_client(18);
        let out = s.run_ok(&["run"]);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        let said: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("goes through pg_restore (not read natively"))
            .collect();
        assert_eq!(said.len(), 1, "{what}:\n{text}");
        assert!(said[0].contains(what), "{what}: {}", said[0]);
        assert!(
            !text.contains("the rows are read from the archive natively"),
            "{what}:\n{text}"
        );
        s.assert_target_is_source();
    }
}
