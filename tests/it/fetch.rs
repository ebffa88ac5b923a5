//! Download with resume, and extraction of the dump, against the fake Scalingo.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use replicator::error::StepError;
use replicator::secret::Secret;
use replicator::source::download::{Downloaded, download};
use replicator::source::extract::extract_dump;
use replicator::source::http::{DownloadUrl, http_client};

use crate::common::fake_scalingo::*;

/// An archive large enough to be cut in the middle (noise: it does not compress).
fn big_archive() -> Vec<u8> {
    archive_bytes("20261123041000_my_app_4553.pgsql", &fake_dump(600 * 1024))
}

fn start(archive: Vec<u8>) -> (FakeScalingo, Vec<u8>) {
    (
        FakeScalingo::start(FakeConfig::new(archive.clone())),
        archive,
    )
}

fn url_of(fake: &FakeScalingo) -> DownloadUrl {
    DownloadUrl(Secret::new(fake.issue_download_url(DONE_BACKUP_ID)))
}

async fn fetch(
    fake: &FakeScalingo,
    dest: &Path,
    expected: Option<u64>,
) -> Result<Downloaded, StepError> {
    let http = http_client(Duration::from_secs(10));
    download(&http, &url_of(fake), dest, expected, &|_| {}).await
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test]
async fn downloads_the_whole_archive_and_reports_progress() {
    let (fake, archive) = start(big_archive());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let seen = Mutex::new(Vec::new());
    let http = http_client(Duration::from_secs(10));
    let got = download(
        &http,
        &url_of(&fake),
        &dest,
        Some(archive.len() as u64),
        &|n| seen.lock().unwrap().push(n),
    )
    .await
    .unwrap();

    assert_eq!(
        got,
        Downloaded {
            bytes: archive.len() as u64,
            resumed_from: 0
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.last(), Some(&(archive.len() as u64)));
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    let records = fake.records();
    assert_eq!(records.ranges, vec![None]);
    // The URL carries its token: no Authorization header goes with it.
    assert!(
        records
            .authorizations
            .iter()
            .all(|(r, a)| *r != Route::Download || a.is_none())
    );
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range_request() {
    let (fake, archive) = start(big_archive());
    let k = 200_000u64;
    fake.faults(|f| f.cut_after = Some((k, Times::Next(1))));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let size = Some(archive.len() as u64);

    let e = fetch(&fake, &dest, size).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    let kept = len(&dest);
    assert_eq!(kept, k, "the bytes received stay on disk");
    assert!(!e.to_string().contains("token="), "{e}");

    let got = fetch(&fake, &dest, size).await.unwrap();
    assert_eq!(got.resumed_from, k);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
    assert_eq!(
        fake.records().ranges,
        vec![None, Some(format!("bytes={k}-"))]
    );
}

#[tokio::test]
async fn a_server_without_range_support_restarts_from_zero() {
    let (fake, archive) = start(big_archive());
    fake.faults(|f| f.ignore_range = true);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    // A partial file from an earlier attempt, with bytes that do not match.
    std::fs::write(&dest, vec![0xAAu8; 1000]).unwrap();

    let got = fetch(&fake, &dest, Some(archive.len() as u64))
        .await
        .unwrap();
    assert_eq!(got.resumed_from, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
    assert_eq!(fake.records().ranges, vec![Some("bytes=1000-".to_string())]);
}

#[tokio::test]
async fn an_expired_url_is_transient_and_nothing_is_written() {
    let (fake, archive) = start(big_archive());
    fake.faults(|f| f.download_forbidden = Some(Times::Next(1)));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    std::fs::write(&dest, &archive[..1000]).unwrap();

    let e = fetch(&fake, &dest, Some(archive.len() as u64))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("403"), "{e}");
    assert_eq!(std::fs::read(&dest).unwrap(), &archive[..1000]);

    fetch(&fake, &dest, Some(archive.len() as u64))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
}

#[tokio::test]
async fn a_short_body_is_transient_and_resumes() {
    let (fake, archive) = start(big_archive());
    fake.faults(|f| f.short_body = Some((300_000, Times::Next(1))));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let size = Some(archive.len() as u64);

    let e = fetch(&fake, &dest, size).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(len(&dest) > 0 && len(&dest) <= 300_000);

    fetch(&fake, &dest, size).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
}

#[tokio::test]
async fn a_body_shorter_than_the_backup_size_is_transient() {
    let (fake, archive) = start(big_archive());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let e = fetch(&fake, &dest, Some(archive.len() as u64 + 10))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(len(&dest), archive.len() as u64);
}

#[tokio::test]
async fn a_body_longer_than_the_backup_size_is_permanent() {
    let (fake, archive) = start(big_archive());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let e = fetch(&fake, &dest, Some(archive.len() as u64 - 10))
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("longer"), "{e}");
}

#[tokio::test]
async fn a_stalled_download_is_caught_by_the_read_timeout() {
    let (fake, archive) = start(big_archive());
    fake.faults(|f| f.stall_after = Some((100_000, Times::Always)));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let http = http_client(Duration::from_millis(400));

    let started = Instant::now();
    let e = download(
        &http,
        &url_of(&fake),
        &dest,
        Some(archive.len() as u64),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(len(&dest), 100_000);
}

#[tokio::test]
async fn a_complete_file_answered_416_is_done() {
    let (fake, archive) = start(big_archive());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    std::fs::write(&dest, &archive).unwrap();

    // Without a size to compare with, the server's 416 and Content-Range decide.
    let got = fetch(&fake, &dest, None).await.unwrap();
    assert_eq!(got.bytes, archive.len() as u64);
    assert_eq!(
        fake.records().ranges,
        vec![Some(format!("bytes={}-", archive.len()))]
    );
    // With the size known and matched, no request is needed.
    fetch(&fake, &dest, Some(archive.len() as u64))
        .await
        .unwrap();
    assert_eq!(fake.records().count(Route::Download), 1);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
}

#[tokio::test]
async fn a_redirect_is_followed_and_keeps_the_range() {
    let (fake, archive) = start(big_archive());
    fake.faults(|f| f.redirect_download = true);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    std::fs::write(&dest, &archive[..5000]).unwrap();

    let got = fetch(&fake, &dest, Some(archive.len() as u64))
        .await
        .unwrap();
    assert_eq!(got.resumed_from, 5000);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
    let range = Some("bytes=5000-".to_string());
    assert_eq!(fake.records().ranges, vec![range.clone(), range]);
}

#[tokio::test]
async fn a_416_on_a_file_of_the_wrong_length_starts_over() {
    let (fake, archive) = start(big_archive());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    // Longer than the archive: left over from another backup.
    std::fs::write(&dest, vec![7u8; archive.len() + 100]).unwrap();

    let got = fetch(&fake, &dest, None).await.unwrap();
    assert_eq!(got.resumed_from, 0);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
    assert_eq!(
        fake.records().ranges,
        vec![Some(format!("bytes={}-", archive.len() + 100)), None]
    );
}

#[tokio::test]
async fn a_throttled_download_reports_progress_as_it_goes() {
    let (fake, archive) = start(archive_bytes("x.pgsql", &fake_dump(40_000)));
    fake.faults(|f| f.bytes_per_second = Some(100_000));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let calls = Mutex::new(0u32);
    let started = Instant::now();
    let http = http_client(Duration::from_secs(10));
    download(
        &http,
        &url_of(&fake),
        &dest,
        Some(archive.len() as u64),
        &|_| *calls.lock().unwrap() += 1,
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(*calls.lock().unwrap() >= 5);
    assert_eq!(std::fs::read(&dest).unwrap(), archive);
}

// ---- extraction ----

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[test]
fn extracts_a_member_written_with_a_leading_dot_slash() {
    let dir = tempfile::tempdir().unwrap();
    let dump = fake_dump(300_000);
    let archive = write(dir.path(), "b.tar.gz", &archive_bytes("./x.pgsql", &dump));
    let out = dir.path().join("x.pgsql");

    assert_eq!(
        extract_dump(&archive, &out, None).unwrap(),
        dump.len() as u64
    );
    assert_eq!(std::fs::read(&out).unwrap(), dump);
    assert!(!dir.path().join("x.pgsql.partial").exists());
}

#[test]
fn extracts_a_member_inside_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let dump = fake_dump(1000);
    let archive = write(
        dir.path(),
        "b.tar.gz",
        &archive_bytes("tmp/backup/20261123.pgsql", &dump),
    );
    let out = dir.path().join("out.pgsql");
    extract_dump(&archive, &out, None).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), dump);
}

fn extract_error(archive_bytes: &[u8]) -> (StepError, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let archive = write(dir.path(), "bad.tar.gz", archive_bytes);
    let out = dir.path().join("out.pgsql");
    let e = extract_dump(&archive, &out, None).unwrap_err();
    eprintln!("message: {e}");
    assert!(!e.is_transient(), "{e:?}");
    assert!(
        e.to_string().contains(&archive.display().to_string()),
        "{e}"
    );
    assert!(!out.exists(), "no dump is left behind on failure");
    assert!(!dir.path().join("out.pgsql.partial").exists());
    (e, archive, dir)
}

#[test]
fn random_bytes_are_not_gzip() {
    let (e, ..) = extract_error(&fake_dump(4096)[5..]);
    assert!(e.to_string().contains("not gzip"), "{e}");
}

#[test]
fn a_gzip_that_is_not_a_tar_is_refused() {
    let (e, ..) = extract_error(&gzip(b"hello, this is not a tar archive\n"));
    assert!(e.to_string().contains("not a tar"), "{e}");
}

#[test]
fn a_tar_without_a_pgsql_member_is_refused() {
    let (e, ..) = extract_error(&archive_bytes("notes.txt", b"nothing to see"));
    let m = e.to_string();
    assert!(m.contains("no *.pgsql") && m.contains("notes.txt"), "{m}");
}

#[test]
fn a_plain_sql_dump_is_refused_with_a_hint() {
    let sql = b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n";
    let (e, ..) = extract_error(&archive_bytes("x.pgsql", sql));
    let m = e.to_string();
    assert!(m.contains("not a pg_dump custom-format dump"), "{m}");
    assert!(m.contains("plain-SQL") && m.contains("pg_dump -Fc"), "{m}");
}

#[test]
fn a_truncated_archive_is_refused() {
    let full = archive_bytes("x.pgsql", &fake_dump(300_000));
    let (e, ..) = extract_error(&full[..full.len() / 2]);
    assert!(e.to_string().contains("truncated or corrupt"), "{e}");
}

#[tokio::test]
async fn downloads_then_extracts_the_dump() {
    let dump = fake_dump(200_000);
    let (fake, archive) = start(archive_bytes("20261123041000_my_app_4553.pgsql", &dump));
    let client = fake.client();
    let backup = client.newest_done_backup().await.unwrap();
    let url = client.download_url(&backup.id).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join(format!("{}.tar.gz", backup.name));
    let http = http_client(Duration::from_secs(10));

    download(&http, &url, &dest, backup.size, &|_| {})
        .await
        .unwrap();
    assert_eq!(len(&dest), archive.len() as u64);
    let out = dir.path().join("dump.pgsql");
    let n = tokio::task::spawn_blocking(move || extract_dump(&dest, &out, None).map(|n| (n, out)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.0, dump.len() as u64);
    assert_eq!(std::fs::read(&n.1).unwrap(), dump);
}
