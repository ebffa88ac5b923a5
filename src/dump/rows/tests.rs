//! The native reader on real archives (`tests/fixtures/rows`, made by
//! `scripts/make-rows-fixtures` with pg_dump 14, 16, 17 and 18): its script of the data
//! entries is what `pg_restore --file=-` 18 writes for them (`data.expected`), byte for byte.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::dump::feed::CutReason;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rows")
}

/// Every archive of the fixtures: `pg18-zstd.dump`, `pg18-zstd-pipe.dump`, ...
fn archives() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dump"))
        .collect();
    all.sort();
    assert!(all.len() >= 30, "the fixtures are missing: {all:?}");
    all
}

/// pg_restore 18's script of the data entries of `toc`'s archive.
fn expected(toc: &ArchiveToc) -> String {
    let text = std::fs::read_to_string(fixtures().join("data.expected")).unwrap();
    let version = toc.header.dump_version.clone().unwrap();
    text.replace(
        "-- Dumped by pg_dump version 18.6\n",
        &format!("-- Dumped by pg_dump version {version}\n"),
    )
}

/// The data entries of `toc`, in its order (what the restore's list names).
fn data_ids(toc: &ArchiveToc) -> Vec<i64> {
    toc.entries
        .iter()
        .filter(|e| matches!(e.desc(), "TABLE DATA" | "SEQUENCE SET"))
        .map(|e| e.id)
        .collect()
}

fn script_of_file(path: &Path, ids: &[i64]) -> Result<String, RowsError> {
    // As the rows' section reads it: only the entries the rows need.
    let toc = Arc::new(read_rows_toc_of(path).unwrap());
    let mut out = Vec::new();
    ArchiveRows::file(path, toc)?.write_script(ids, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn feed_of(bytes: Vec<u8>, cut: CutReason) -> Feed {
    Feed::of_reader(
        "the test stream".into(),
        Box::new(std::io::Cursor::new(bytes)),
        cut,
    )
}

fn script_of_stream(path: &Path, ids: &[i64]) -> Result<String, RowsError> {
    let feed = feed_of(std::fs::read(path).unwrap(), CutReason::default());
    let mut out = Vec::new();
    ArchiveRows::feed(feed)?.write_script(ids, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn every_version_and_compression_reads_as_pg_restore_writes_it() {
    for path in archives() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let toc = read_toc_of(&path).unwrap();
        let ids = data_ids(&toc);
        assert_eq!(ids.len(), 8, "{name}");
        natively_readable(&toc, &ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = expected(&toc);
        let from_file = script_of_file(&path, &ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            from_file == want,
            "{name}: the script from the file differs"
        );
        let from_stream = script_of_stream(&path, &ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            from_stream == want,
            "{name}: the script from a stream differs"
        );
    }
}

#[test]
fn the_archives_cover_each_compression_with_and_without_offsets() {
    let mut seen = std::collections::HashSet::new();
    for path in archives() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let toc = read_toc_of(&path).unwrap();
        let data: Vec<_> = toc
            .entries
            .iter()
            .filter(|e| e.desc() == "TABLE DATA")
            .collect();
        let offsets = data.iter().all(|e| matches!(e.data, DataPos::At(_)));
        let none = data.iter().all(|e| e.data == DataPos::NotSet);
        assert!(
            offsets != none,
            "{name}: offsets recorded for some entries only"
        );
        assert_eq!(name.contains("-pipe"), none, "{name}");
        seen.insert((toc.header.compression, offsets, toc.header.version_text()));
    }
    for c in [Compression::None, Compression::Gzip] {
        for v in ["1.14", "1.15", "1.16"] {
            assert!(seen.contains(&(c, true, v.into())), "{c} {v}");
            assert!(seen.contains(&(c, false, v.into())), "{c} {v}");
        }
    }
    for c in [Compression::Lz4, Compression::Zstd] {
        for v in ["1.15", "1.16"] {
            assert!(seen.contains(&(c, true, v.into())), "{c} {v}");
            assert!(seen.contains(&(c, false, v.into())), "{c} {v}");
        }
    }
}

#[test]
fn a_file_is_read_in_any_order_with_or_without_offsets() {
    for name in [
        "pg18-gzip.dump",
        "pg18-gzip-pipe.dump",
        "pg16-lz4-pipe.dump",
    ] {
        let path = fixtures().join(name);
        let toc = read_toc_of(&path).unwrap();
        let mut ids = data_ids(&toc);
        ids.reverse();
        let script = script_of_file(&path, &ids).unwrap();
        let t = script.find("COPY public.t ").unwrap();
        let weird = script.find("COPY public.\"We;ird\"\"n\" ").unwrap();
        assert!(t < weird, "{name}: not in the order asked");
        assert!(script.contains("\n300\trow 300\\twith a tab"), "{name}");
        // One table alone, the last one of the archive.
        let last = *data_ids(&toc)
            .iter()
            .rfind(|id| toc.entry(**id).unwrap().desc() == "TABLE DATA")
            .unwrap();
        let one = script_of_file(&path, &[last]).unwrap();
        assert_eq!(one.matches("COPY ").count(), 1, "{name}");
    }
}

#[test]
fn a_stream_is_read_forward_skipping_other_blocks() {
    let path = fixtures().join("pg17-zstd-pipe.dump");
    let toc = read_toc_of(&path).unwrap();
    let tables: Vec<i64> = data_ids(&toc)
        .into_iter()
        .filter(|id| toc.entry(*id).unwrap().desc() == "TABLE DATA")
        .collect();
    let script = script_of_stream(&path, &[tables[1], tables[4]]).unwrap();
    assert_eq!(script.matches("COPY ").count(), 2);
    // Out of the archive's order, a stream cannot go back: a permanent error, not a cut.
    let e = script_of_stream(&path, &[tables[4], tables[1]]).unwrap_err();
    assert!(matches!(e, RowsError::Damaged { .. }), "{e}");
}

/// The offset of the first byte of entry `t`'s rows in the archive at `path`.
fn rows_start(path: &Path, table: &str) -> (Arc<ArchiveToc>, i64, u64) {
    let toc = Arc::new(read_toc_of(path).unwrap());
    let e = toc
        .entries
        .iter()
        .find(|e| e.desc() == "TABLE DATA" && e.tag.as_deref() == Some(table))
        .unwrap();
    let DataPos::At(pos) = e.data else {
        panic!("no offset")
    };
    (toc.clone(), e.id, pos)
}

#[test]
fn a_damaged_block_says_which_entry_and_where() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["pg18-gzip.dump", "pg18-lz4.dump", "pg18-zstd.dump"] {
        let path = fixtures().join(name);
        let (toc, id, pos) = rows_start(&path, "t");
        let mut bytes = std::fs::read(&path).unwrap();
        // Past the block header (type, id) and the first chunk's length: compressed bytes.
        for b in &mut bytes[pos as usize + 20..pos as usize + 60] {
            *b ^= 0x5a;
        }
        let bad = dir.path().join(name);
        std::fs::write(&bad, &bytes).unwrap();
        let mut out = Vec::new();
        let e = ArchiveRows::file(&bad, toc)
            .unwrap()
            .write_script(&[id], &mut out)
            .unwrap_err();
        match &e {
            RowsError::Damaged { entry, .. } => {
                assert!(entry.contains("TABLE DATA public.t"), "{name}: {e}")
            }
            other => panic!("{name}: {other}"),
        }
        assert_eq!(
            crate::error::Classify::kind(&e),
            crate::error::FailureKind::Permanent
        );
        assert!(e.to_string().contains("download the backup again"), "{e}");
    }
}

#[test]
fn a_file_cut_short_is_truncated_and_a_stream_cut_short_is_a_cut() {
    let path = fixtures().join("pg16-gzip-pipe.dump");
    let bytes = std::fs::read(&path).unwrap();
    let cut_at = bytes.len() - 3000;
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.dump");
    std::fs::write(&short, &bytes[..cut_at]).unwrap();
    let toc = read_toc_of(&short).unwrap();
    let ids = data_ids(&toc);
    let e = script_of_file(&short, &ids).unwrap_err();
    assert!(
        matches!(e, RowsError::Truncated { .. } | RowsError::Missing { .. }),
        "{e}"
    );
    assert_eq!(
        crate::error::Classify::kind(&e),
        crate::error::FailureKind::Permanent
    );

    let mut out = Vec::new();
    let e = ArchiveRows::feed(feed_of(bytes[..cut_at].to_vec(), CutReason::default()))
        .unwrap()
        .write_script(&ids, &mut out)
        .unwrap_err();
    assert!(matches!(e, RowsError::Feed(FeedError::Cut { .. })), "{e}");
    assert_eq!(
        crate::error::Classify::kind(&e),
        crate::error::FailureKind::StreamCut
    );
    // A producer that said why it stopped: its reason is the error.
    let cut = CutReason::default();
    cut.set("the download broke".into());
    let e = ArchiveRows::feed(feed_of(bytes[..cut_at].to_vec(), cut))
        .unwrap()
        .write_script(&ids, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("the download broke"), "{e}");
}

#[test]
fn what_is_not_read_natively_says_why() {
    let path = fixtures().join("pg14-gzip.dump");
    let toc = read_toc_of(&path).unwrap();
    let ids = data_ids(&toc);
    natively_readable(&toc, &ids).unwrap();
    // A data entry without a COPY statement: a dump made with --inserts.
    let mut inserts = toc.clone();
    for e in &mut inserts.entries {
        if e.desc() == "TABLE DATA" {
            e.copy_stmt = Some(String::new());
        }
    }
    let why = natively_readable(&inserts, &ids).unwrap_err();
    assert!(why.contains("--inserts"), "{why}");
    // Large objects.
    let mut blobs = toc.clone();
    let id = ids[0];
    for e in &mut blobs.entries {
        if e.id == id {
            e.desc = Some("BLOBS".into());
        }
    }
    assert!(
        natively_readable(&blobs, &[id])
            .unwrap_err()
            .contains("BLOBS")
    );
    // An archive version outside 1.14 to 1.16.
    let mut old = toc.clone();
    old.header.version = (1, 13, 0);
    assert!(natively_readable(&old, &ids).unwrap_err().contains("1.13"));
    // Another encoding than UTF-8.
    let mut latin = toc.clone();
    for e in &mut latin.entries {
        if e.desc() == "ENCODING" {
            e.defn = Some("SET client_encoding = 'LATIN1';\n".into());
        }
    }
    assert!(
        natively_readable(&latin, &ids)
            .unwrap_err()
            .contains("LATIN1")
    );
    assert!(natively_readable(&toc, &[999_999]).is_err());
}

#[test]
fn list_ids_reads_a_use_list() {
    let list = ";\n; Archive created at ...\n2574; 0 16385 TABLE DATA public t postgres\n\n 2584; 0 0 SEQUENCE SET public q postgres\n";
    assert_eq!(list_ids(list), vec![2574, 2584]);
}
