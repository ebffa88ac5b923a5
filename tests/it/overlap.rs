//! The extraction overlapped with the download: a fresh download is extracted while it
//! arrives, and `Extracting` then uses that dump instead of extracting again; a download that
//! had to be resumed falls back to the extraction in `Extracting`. Either way the dump, and
//! the target, are exact.

use std::path::Path;
use std::time::Duration;

use replicator::secret::Secret;
use replicator::source::download::download_extracting;
use replicator::source::extract::{complete_dump, extract_dump};
use replicator::source::http::{DownloadUrl, http_client};

use crate::common::fake_scalingo::*;
use crate::common::scenario::{Scenario, stdout};

/// The log line of the extraction itself (`fetch::copy_first_pgsql`), wherever it runs.
const EXTRACTING: &str = "extracting the dump";

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_fresh_download_yields_the_whole_dump_and_its_marker() {
    let dump = fake_dump(900 * 1024);
    let archive = archive_bytes("20261123041000_my_app_4553.pgsql", &dump);
    let len = archive.len() as u64;
    let fake = FakeScalingo::start(FakeConfig::new(archive));
    // Several chunks, so that the follower reaches the end of the growing file and waits.
    fake.faults(|f| f.bytes_per_second = Some(len * 4));
    let dir = tempfile::tempdir().unwrap();
    let (dest, out) = (
        dir.path().join("archive.tar.gz"),
        dir.path().join("dump.pgsql"),
    );
    let url = DownloadUrl(Secret::new(fake.issue_download_url(DONE_BACKUP_ID)));
    let http = http_client(Duration::from_secs(10));

    let got = download_extracting(&http, &url, &dest, (&out, None), Some(len), &|_| {})
        .await
        .unwrap();
    assert_eq!(got.download.bytes, len);
    assert_eq!(got.dump_bytes, Some(dump.len() as u64));
    assert!(std::fs::read(&out).unwrap() == dump, "the dump differs");
    assert_eq!(
        complete_dump(&out, &dest, Some(len)),
        Some(dump.len() as u64)
    );
    assert_eq!(
        files_in(dir.path()),
        ["archive.tar.gz", "dump.pgsql", "dump.pgsql.complete"]
    );
}

#[tokio::test]
async fn a_cut_download_leaves_no_dump_and_its_resume_is_extracted_afterwards() {
    let dump = fake_dump(900 * 1024);
    let archive = archive_bytes("20261123041000_my_app_4553.pgsql", &dump);
    let len = archive.len() as u64;
    let fake = FakeScalingo::start(FakeConfig::new(archive));
    fake.faults(|f| {
        f.cut_after = Some((len / 2, Times::Next(1)));
        f.bytes_per_second = Some(len * 4);
    });
    let dir = tempfile::tempdir().unwrap();
    let (dest, out) = (
        dir.path().join("archive.tar.gz"),
        dir.path().join("dump.pgsql"),
    );
    let http = http_client(Duration::from_secs(10));
    let url = || DownloadUrl(Secret::new(fake.issue_download_url(DONE_BACKUP_ID)));

    let e = download_extracting(&http, &url(), &dest, (&out, None), Some(len), &|_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("resumes from there"), "{e}");
    // The follower stopped and took its partial dump with it; the archive's bytes stay.
    let kept = std::fs::metadata(&dest).unwrap().len();
    assert!(kept > 0 && kept < len, "{kept} of {len}");
    assert_eq!(files_in(dir.path()), ["archive.tar.gz"]);

    let got = download_extracting(&http, &url(), &dest, (&out, None), Some(len), &|_| {})
        .await
        .unwrap();
    assert_eq!(got.download.resumed_from, kept);
    assert_eq!(got.dump_bytes, None, "a resumed download is not followed");
    assert_eq!(complete_dump(&out, &dest, Some(len)), None);
    let ranges = fake.records().ranges;
    assert!(
        ranges.iter().flatten().any(|r| r != "bytes=0-"),
        "{ranges:?}"
    );
    extract_dump(&dest, &out, None).unwrap();
    assert!(std::fs::read(&out).unwrap() == dump, "the dump differs");
}

#[tokio::test]
async fn a_resumed_download_discards_the_dump_of_an_earlier_attempt() {
    let dump = fake_dump(300 * 1024);
    let archive = archive_bytes("20261123041000_my_app_4553.pgsql", &dump);
    let len = archive.len() as u64;
    let fake = FakeScalingo::start(FakeConfig::new(archive.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (dest, out) = (
        dir.path().join("archive.tar.gz"),
        dir.path().join("dump.pgsql"),
    );
    // What a kill -9 can leave: half an archive, a dump (renamed before the gzip trailer was
    // checked), a partial one, even a marker from an older archive.
    std::fs::write(&dest, &archive[..archive.len() / 2]).unwrap();
    std::fs::write(&out, b"PGDMP stale").unwrap();
    std::fs::write(dir.path().join("dump.pgsql.partial"), b"PGDMP").unwrap();
    replicator::source::extract::record_complete_dump(&out, len, 11).unwrap();
    assert!(complete_dump(&out, &dest, Some(len)).is_none());

    let url = DownloadUrl(Secret::new(fake.issue_download_url(DONE_BACKUP_ID)));
    let http = http_client(Duration::from_secs(10));
    let got = download_extracting(&http, &url, &dest, (&out, None), Some(len), &|_| {})
        .await
        .unwrap();
    assert_eq!(got.dump_bytes, None);
    assert_eq!(files_in(dir.path()), ["archive.tar.gz"]);
    assert!(std::fs::read(&dest).unwrap() == archive);
}

/// A whole run: the dump comes out during `Downloading` and `Extracting` only checks it.
#[test]
fn a_run_extracts_during_the_download_and_not_again() {
    let s = Scenario::rich("ovl_run");
    s.put_stale_table_in_target();
    let out = s.run_ok(&["run"]);
    let text = stdout(&out);
    assert_eq!(text.matches(EXTRACTING).count(), 1, "{text}");
    let extracted_at = text.find(EXTRACTING).unwrap();
    let extracting_at = text
        .find("Downloading -> Extracting")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        extracted_at < extracting_at,
        "not during the download:\n{text}"
    );
    assert!(
        text.contains("extracted the dump during the download"),
        "{text}"
    );
    assert!(text.contains("not extracting it again"), "{text}");
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.status_json()["phase"], "Done");
}

/// A download cut mid-stream is resumed with `Range`; the dump is then extracted by
/// `Extracting`, from the whole archive, and the run ends exact.
#[test]
fn a_run_whose_download_is_cut_extracts_in_extracting_and_ends_exact() {
    let s = Scenario::rich("ovl_cut");
    s.put_stale_table_in_target();
    let len = s.fake.archive_len();
    s.fake.faults(|f| {
        f.cut_after = Some((len / 2, Times::Next(1)));
        f.bytes_per_second = Some(len * 2);
    });
    let out = s.run_ok(&["run"]);
    let text = stdout(&out);
    let ranges = s.fake.records().ranges;
    assert!(
        ranges.iter().flatten().any(|r| r != "bytes=0-"),
        "{ranges:?}"
    );
    assert!(
        !text.contains("extracted the dump during the download"),
        "{text}"
    );
    assert!(!text.contains("not extracting it again"), "{text}");
    let extracting_at = text.find("Downloading -> Extracting").unwrap();
    assert!(text[extracting_at..].contains(EXTRACTING), "{text}");
    s.assert_target_is_source();
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.status_json()["phase"], "Done");
}
