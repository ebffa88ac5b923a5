//! Getting the dump onto disk: the download (with HTTP Range resume) and the extraction of
//! the `*.pgsql` member from Scalingo's `.tar.gz`.
//!
//! Both stream: memory use does not grow with the archive (Pix's is tens of GB).
//!
//! A download that starts from byte 0 and completes in one response is also extracted while
//! it arrives ([`download_extracting`]): a blocking thread follows the growing archive file,
//! so that over a slow network the extraction costs nothing. Anything else (a `Range` resume,
//! a server that restarts from 0, a failed follower) leaves the extraction to the
//! `Extracting` step, as before. A dump extracted that way is trusted only with its marker
//! (`dump.pgsql.complete`), written once both the archive and the dump are whole.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, header};
use tokio::io::AsyncWriteExt;

use crate::error::{StepError, Transient};
use crate::source::scalingo::{DownloadUrl, describe_reqwest_error, parse_retry_after};

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Length of the complete archive on disk.
    pub bytes: u64,
    /// Bytes that were already on disk and kept (0 when it started from scratch).
    pub resumed_from: u64,
}

/// What [`download_extracting`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub download: Downloaded,
    /// The dump's length when it was extracted while downloading (and its marker written);
    /// `None`: the `Extracting` step extracts it.
    pub dump_bytes: Option<u64>,
}

/// Large enough that a fast link does not turn into a syscall per network chunk.
const WRITE_BUFFER: usize = 256 << 10;

/// Why a download did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "downloading the backup archive: {location} answered HTTP {status}{detail}; a fresh \
         download URL will be asked for on the next attempt"
    )]
    Status {
        location: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "downloading the backup archive from {location}: {detail} after {on_disk} bytes on disk; \
         the next attempt resumes from there"
    )]
    Interrupted {
        location: String,
        on_disk: u64,
        detail: String,
    },
    #[error(
        "downloading the backup archive from {location}: the body ended at {on_disk} bytes, short \
         of the {expected} announced ({by}); the next attempt resumes from there"
    )]
    Short {
        location: String,
        on_disk: u64,
        expected: u64,
        by: &'static str,
    },
    #[error(
        "downloaded backup archive {path} is {on_disk} bytes, longer than the {expected} bytes \
         Scalingo announced for the backup: the archive does not match its backup; delete the \
         file and start a new run"
    )]
    TooLong {
        path: PathBuf,
        on_disk: u64,
        expected: u64,
    },
    #[error(
        "downloading the backup archive from {location}: the server ignored resuming twice \
         (answered {detail}); will retry"
    )]
    RangeConfused { location: String, detail: String },
    #[error("writing the backup archive to {path}: {source}; check the disk (space, permissions)")]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<DownloadError> for StepError {
    fn from(e: DownloadError) -> Self {
        let retry_after = match &e {
            DownloadError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        let permanent = match &e {
            DownloadError::TooLong { .. } => true,
            DownloadError::Disk { source, .. } => io_error_is_permanent(source),
            _ => false,
        };
        if permanent {
            StepError::permanent(e.to_string())
        } else {
            StepError::Transient(Transient {
                message: e.to_string(),
                retry_after,
            })
        }
    }
}

/// A missing directory or a permission problem does not fix itself; a full disk may.
fn io_error_is_permanent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::IsADirectory
    )
}

/// How the server answered one request, for the write loop.
enum Start {
    /// Append from the current length (206 from the offset asked).
    Append(u64),
    /// Write from byte 0 (200, or a resume the server could not honour).
    FromZero,
}

/// Downloads `url` into `dest`, continuing from `dest`'s current length.
///
/// Non-2xx statuses are transient (an expired URL answers 403; the driver asks for a fresh
/// one), so are cut or short bodies: the bytes received stay on disk for the next attempt.
/// `progress` gets the bytes on disk as they arrive.
pub async fn download(
    http: &reqwest::Client,
    url: &DownloadUrl,
    dest: &Path,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Downloaded, StepError> {
    let (downloaded, _) = download_inner(http, url, dest, None, expected_size, progress).await?;
    Ok(downloaded)
}

/// [`download`], extracting the `*.pgsql` member into `dump` while the archive arrives when
/// the download starts from byte 0 and completes in one response.
///
/// Whatever a previous attempt extracted is discarded first, unless the archive is already
/// complete: a dump is trusted only with the marker written after a whole extraction.
pub async fn download_extracting(
    http: &reqwest::Client,
    url: &DownloadUrl,
    dest: &Path,
    dump: &Path,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched, StepError> {
    let (download, dump_bytes) =
        download_inner(http, url, dest, Some(dump), expected_size, progress).await?;
    Ok(Fetched {
        download,
        dump_bytes,
    })
}

async fn download_inner(
    http: &reqwest::Client,
    url: &DownloadUrl,
    dest: &Path,
    dump: Option<&Path>,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Downloaded, Option<u64>), DownloadError> {
    let location = url.redacted();
    let disk = |source| DownloadError::Disk {
        path: dest.to_path_buf(),
        source,
    };
    let mut on_disk = file_len(dest).map_err(disk)?;
    if let Some(expected) = expected_size {
        if on_disk > expected {
            tracing::warn!(path = %dest.display(), on_disk, expected, "archive on disk is longer than the backup: starting over");
            truncate(dest).map_err(disk)?;
            on_disk = 0;
        } else if on_disk == expected && on_disk > 0 {
            tracing::info!(path = %dest.display(), bytes = on_disk, "archive already complete");
            let downloaded = Downloaded {
                bytes: on_disk,
                resumed_from: on_disk,
            };
            return Ok((downloaded, None));
        }
    }
    // The archive is about to change: a dump taken out of an earlier state of it is stale
    // (and would hold disk the next extraction needs).
    if let Some(dump) = dump {
        discard_extracted(dump);
    }
    // A second pass only when the server refused a resume (416 or a mismatched 206).
    for pass in 0..2 {
        let resp = request(http, url, on_disk, &location).await?;
        match classify(&resp, on_disk, expected_size) {
            Outcome::Write(start) => {
                let resumed_from = match start {
                    Start::Append(n) => n,
                    Start::FromZero => 0,
                };
                // Only a fresh download is followed: one resumed or restarted is extracted by
                // the `Extracting` step, from the whole file, as it always was.
                let follower = match (dump, &start) {
                    (Some(dump), Start::FromZero) if pass == 0 && on_disk == 0 => {
                        Some(Follower::start(dest, dump).map_err(disk)?)
                    }
                    _ => None,
                };
                let feed = follower.as_ref().map(|f| f.feed.clone());
                let report = |n: u64| {
                    if let Some(feed) = &feed {
                        feed.more.notify_all();
                    }
                    progress(n);
                };
                let written = write_body(resp, dest, start, expected_size, &report, &location)
                    .await
                    .and_then(|bytes| {
                        check_final_length(dest, bytes, expected_size).map(|()| bytes)
                    });
                let bytes = match written {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        if let Some(f) = follower {
                            f.abandon().await;
                        }
                        return Err(e);
                    }
                };
                tracing::info!(path = %dest.display(), bytes, resumed_from, "download complete");
                let dump_bytes = match (follower, dump) {
                    (Some(f), Some(dump)) => f.finish(bytes, dump).await,
                    _ => None,
                };
                let downloaded = Downloaded {
                    bytes,
                    resumed_from,
                };
                return Ok((downloaded, dump_bytes));
            }
            Outcome::AlreadyComplete => {
                let downloaded = Downloaded {
                    bytes: on_disk,
                    resumed_from: on_disk,
                };
                return Ok((downloaded, None));
            }
            Outcome::Restart(why) if pass == 0 => {
                tracing::warn!(location = %location, on_disk, why = %why, "cannot resume: starting over from byte 0");
                truncate(dest).map_err(disk)?;
                on_disk = 0;
            }
            Outcome::Restart(why) => {
                return Err(DownloadError::RangeConfused {
                    location,
                    detail: why,
                });
            }
            Outcome::Fail(status) => {
                let retry_after = parse_retry_after(resp.headers(), chrono::Utc::now());
                let detail = error_body(resp).await;
                return Err(DownloadError::Status {
                    location,
                    status,
                    detail,
                    retry_after,
                });
            }
        }
    }
    unreachable!("the second pass always returns")
}

async fn request(
    http: &reqwest::Client,
    url: &DownloadUrl,
    offset: u64,
    location: &str,
) -> Result<reqwest::Response, DownloadError> {
    let mut req = http.get(url.0.expose());
    if offset > 0 {
        req = req.header(header::RANGE, format!("bytes={offset}-"));
    }
    tracing::debug!(location, offset, "download request");
    req.send().await.map_err(|e| DownloadError::Interrupted {
        location: location.to_string(),
        on_disk: offset,
        detail: describe_reqwest_error(e),
    })
}

enum Outcome {
    Write(Start),
    AlreadyComplete,
    Restart(String),
    Fail(u16),
}

fn classify(resp: &reqwest::Response, on_disk: u64, expected: Option<u64>) -> Outcome {
    match resp.status() {
        StatusCode::OK => Outcome::Write(Start::FromZero),
        StatusCode::PARTIAL_CONTENT => {
            let range = resp.headers().get(header::CONTENT_RANGE);
            match range
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start)
            {
                Some(start) if start == on_disk => Outcome::Write(Start::Append(on_disk)),
                other => Outcome::Restart(format!(
                    "206 starting at {other:?} when asked for byte {on_disk}"
                )),
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            // The server says nothing lies past our length: complete only if that is the size.
            let total = expected.or_else(|| {
                resp.headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_total)
            });
            if total == Some(on_disk) && on_disk > 0 {
                Outcome::AlreadyComplete
            } else {
                Outcome::Restart(format!(
                    "416 for byte {on_disk} while the archive is {total:?} bytes"
                ))
            }
        }
        s => Outcome::Fail(s.as_u16()),
    }
}

/// `bytes 100-199/200` → 100.
fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// `bytes */200` or `bytes 0-9/200` → 200.
fn content_range_total(v: &str) -> Option<u64> {
    v.rsplit('/').next()?.trim().parse().ok()
}

/// A short account of an error body; it is never written to the archive.
async fn error_body(resp: reqwest::Response) -> String {
    match resp.bytes().await {
        Ok(b) if !b.is_empty() => {
            let text: String = String::from_utf8_lossy(&b[..b.len().min(200)])
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            format!(": {text}")
        }
        _ => String::new(),
    }
}

/// Streams the body to `dest` and returns the file's final length. On a cut body, what was
/// received is flushed before the error goes up, so that the next attempt resumes after it.
async fn write_body(
    mut resp: reqwest::Response,
    dest: &Path,
    start: Start,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
    location: &str,
) -> Result<u64, DownloadError> {
    let disk = |source| DownloadError::Disk {
        path: dest.to_path_buf(),
        source,
    };
    let offset = match start {
        Start::Append(n) => n,
        Start::FromZero => 0,
    };
    // Content-Length of a 206 counts from the offset.
    let announced = resp.content_length().map(|l| offset + l);
    let file = open_for(dest, &start).await.map_err(disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut on_disk = offset;
    progress(on_disk);
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                out.write_all(&chunk).await.map_err(disk)?;
                on_disk += chunk.len() as u64;
                // What is in the file (and survives a kill -9), not what sits in the buffer:
                // `status` shows it as the bytes a resume keeps.
                progress(on_disk - out.buffer().len() as u64);
            }
            Ok(None) => break None,
            Err(e) => break Some(describe_reqwest_error(e)),
        }
    };
    out.flush().await.map_err(disk)?;
    progress(on_disk);
    let file = out.into_inner();
    file.sync_all().await.map_err(disk)?;
    if let Some(detail) = cut {
        return Err(DownloadError::Interrupted {
            location: location.to_string(),
            on_disk,
            detail,
        });
    }
    let short_of = |expected, by| DownloadError::Short {
        location: location.to_string(),
        on_disk,
        expected,
        by,
    };
    match (announced, expected_size) {
        (Some(a), _) if on_disk < a => Err(short_of(a, "Content-Length")),
        (_, Some(e)) if on_disk < e => Err(short_of(e, "the backup's size")),
        _ => Ok(on_disk),
    }
}

async fn open_for(dest: &Path, start: &Start) -> io::Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.create(true);
    match start {
        Start::Append(_) => opts.append(true),
        Start::FromZero => opts.write(true).truncate(true),
    };
    opts.open(dest).await
}

fn check_final_length(dest: &Path, bytes: u64, expected: Option<u64>) -> Result<(), DownloadError> {
    match expected {
        Some(e) if bytes > e => Err(DownloadError::TooLong {
            path: dest.to_path_buf(),
            on_disk: bytes,
            expected: e,
        }),
        _ => Ok(()),
    }
}

fn file_len(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn truncate(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map(drop)
}

// ---------------------------------------------------------------------------------------
// Extraction while downloading
// ---------------------------------------------------------------------------------------

/// How long the follower sleeps at the end of the file when no wake-up comes (a missed
/// notification costs at most this).
const FOLLOW_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    /// The downloader is still writing: the end of the file is not the end of the archive.
    Growing,
    /// Every byte is in the file (flushed and synced): its end is the archive's.
    Complete,
    /// The download failed or was abandoned: the follower stops at its next read.
    Aborted,
}

/// What the downloader tells the thread that follows the archive file.
struct Feed {
    state: Mutex<FeedState>,
    more: Condvar,
}

impl Feed {
    fn set(&self, to: FeedState) {
        let mut state = self.state.lock().expect("feed lock");
        // Aborted is final: a complete archive whose follower is abandoned still stops it.
        if *state != FeedState::Aborted {
            *state = to;
        }
        drop(state);
        self.more.notify_all();
    }

    fn get(&self) -> FeedState {
        *self.state.lock().expect("feed lock")
    }
}

/// A `Read` over an archive file that is still being written: at the end of the file it waits
/// for more until the download is complete (then it is the end) or aborted (then an error).
struct FollowFile {
    file: fs::File,
    feed: Arc<Feed>,
}

impl Read for FollowFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Read before the file: `Complete` is set only once every byte is in it, so a
            // read that then finds nothing is at the true end.
            let state = self.feed.get();
            if state == FeedState::Aborted {
                return Err(io::Error::other(
                    "the download stopped before the archive was complete",
                ));
            }
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() || state == FeedState::Complete {
                return Ok(n);
            }
            let guard = self.feed.state.lock().expect("feed lock");
            if *guard == FeedState::Growing {
                drop(self.feed.more.wait_timeout(guard, FOLLOW_POLL));
            }
        }
    }
}

/// The thread extracting the dump from the archive as it is downloaded. Dropping it (the
/// download failed, or its future was dropped on shutdown) stops the thread at its next
/// read; the thread then removes its `.partial`.
struct Follower {
    feed: Arc<Feed>,
    task: tokio::task::JoinHandle<Result<u64, ExtractError>>,
}

impl Follower {
    /// Creates the (empty) archive file, so that the thread can open it before the body's
    /// first byte, and starts the thread.
    fn start(archive: &Path, dump: &Path) -> io::Result<Follower> {
        fs::File::create(archive)?;
        let file = fs::File::open(archive)?;
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState::Growing),
            more: Condvar::new(),
        });
        let input = FollowFile {
            file,
            feed: feed.clone(),
        };
        let (archive, dump) = (archive.to_path_buf(), dump.to_path_buf());
        let task = tokio::task::spawn_blocking(move || extract_from(input, &archive, &dump));
        Ok(Follower { feed, task })
    }

    /// The archive is whole (`archive_bytes`): lets the thread read to its end, waits for
    /// it, and writes the dump's marker. `None` (and nothing left behind) when the extraction
    /// failed: the `Extracting` step then extracts again and reports what is wrong.
    async fn finish(mut self, archive_bytes: u64, dump: &Path) -> Option<u64> {
        self.feed.set(FeedState::Complete);
        let outcome = match (&mut self.task).await {
            Ok(Ok(dump_bytes)) => record_complete_dump(dump, archive_bytes, dump_bytes)
                .map(|()| dump_bytes)
                .map_err(|e| format!("writing the marker of {}: {e}", dump.display())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the extraction thread failed: {e}")),
        };
        match outcome {
            Ok(dump_bytes) => Some(dump_bytes),
            Err(why) => {
                tracing::warn!(dump = %dump.display(), "extracting the dump during the download failed ({why}); the Extracting step extracts it again");
                discard_extracted(dump);
                None
            }
        }
    }
}

impl Follower {
    /// The download failed: stops the thread and waits for it to remove its `.partial`.
    async fn abandon(mut self) {
        self.feed.set(FeedState::Aborted);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.feed.set(FeedState::Aborted);
    }
}

fn marker_path(dump: &Path) -> PathBuf {
    with_suffix(dump, ".complete")
}

/// Records that `dump` is whole and came from a whole archive of `archive_bytes`. Written after
/// the dump's rename and the gzip check to the archive's end, so a crash before it leaves no
/// marker (and the dump is extracted again).
pub fn record_complete_dump(dump: &Path, archive_bytes: u64, dump_bytes: u64) -> io::Result<()> {
    let mut f = fs::File::create(marker_path(dump))?;
    writeln!(f, "archive_bytes={archive_bytes} dump_bytes={dump_bytes}")?;
    f.sync_all()
}

/// The length of `dump` when its marker proves it whole: the marker parses, the dump has the
/// length recorded, the archive recorded has the backup's size (`expected_archive`, when
/// known), and the archive, if still on disk, has the length recorded.
pub fn complete_dump(dump: &Path, archive: &Path, expected_archive: Option<u64>) -> Option<u64> {
    let text = fs::read_to_string(marker_path(dump)).ok()?;
    let field = |key: &str| -> Option<u64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    };
    let (archive_bytes, dump_bytes) = (field("archive_bytes")?, field("dump_bytes")?);
    let archive_ok = match fs::metadata(archive) {
        Ok(m) => m.len() == archive_bytes,
        // Removed once the dump was extracted from it.
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    let proven = archive_ok
        && expected_archive.is_none_or(|e| e == archive_bytes)
        && fs::metadata(dump).is_ok_and(|m| m.len() == dump_bytes);
    proven.then_some(dump_bytes)
}

/// Removes whatever an extraction left for `dump`: the dump, its `.partial`, its marker.
pub fn discard_extracted(dump: &Path) {
    for path in [marker_path(dump), dump.to_path_buf(), partial_path(dump)] {
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed a stale extraction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "could not remove {}: {e}", path.display())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------

/// Why the dump could not be taken out of the archive.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("opening the backup archive {archive}: {source}")]
    OpenArchive {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "backup archive {archive} is not gzip-compressed (it does not start with the gzip magic \
         bytes): expected Scalingo's .tar.gz; check the file given, or delete it to download again"
    )]
    NotGzip { archive: PathBuf },
    #[error(
        "backup archive {archive} is a truncated or corrupt gzip stream ({detail}): delete it and \
         download it again"
    )]
    CorruptGzip { archive: PathBuf, detail: String },
    #[error(
        "backup archive {archive} is gzip-compressed but not a tar archive ({detail}): expected \
         Scalingo's .tar.gz holding one *.pgsql file"
    )]
    NotTar { archive: PathBuf, detail: String },
    #[error(
        "backup archive {archive} holds no *.pgsql file (entries: {entries}): expected Scalingo's \
         .tar.gz holding one pg_dump file"
    )]
    NoPgsqlMember { archive: PathBuf, entries: String },
    #[error(
        "{member} in backup archive {archive} is not a pg_dump custom-format dump (it does not \
         start with PGDMP){hint}"
    )]
    NotCustomFormat {
        archive: PathBuf,
        member: String,
        hint: &'static str,
    },
    #[error("writing the dump to {path}: {source}; check the disk (space, permissions)")]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<ExtractError> for StepError {
    fn from(e: ExtractError) -> Self {
        let transient = match &e {
            ExtractError::Disk { source, .. } => !io_error_is_permanent(source),
            _ => false,
        };
        if transient {
            StepError::transient(e.to_string())
        } else {
            StepError::permanent(e.to_string())
        }
    }
}

const PGDMP: &[u8] = b"PGDMP";

/// Streams the `*.pgsql` member of `archive` into `dump` and returns the dump's length.
/// Blocking: run it on a blocking thread.
pub fn extract_dump(archive: &Path, dump: &Path) -> Result<u64, StepError> {
    let file = fs::File::open(archive).map_err(|source| ExtractError::OpenArchive {
        archive: archive.to_path_buf(),
        source,
    })?;
    Ok(extract_from(file, archive, dump)?)
}

/// The extraction from any reader of the archive's bytes (the file, or the file followed as
/// it is downloaded); `archive` names it in messages.
fn extract_from(source: impl Read, archive: &Path, dump: &Path) -> Result<u64, ExtractError> {
    let open_err = |source| ExtractError::OpenArchive {
        archive: archive.to_path_buf(),
        source,
    };
    let mut input = BufReader::with_capacity(1 << 20, source);
    // Read, not peeked: a followed file may hold a single byte yet.
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut input, &mut magic).map_err(open_err)?;
    if got < magic.len() || magic != [0x1f, 0x8b] {
        return Err(ExtractError::NotGzip {
            archive: archive.to_path_buf(),
        });
    }
    let gz_failure = Arc::new(Mutex::new(None));
    let gz = WatchedReader {
        inner: flate2::bufread::GzDecoder::new(io::Cursor::new(magic).chain(input)),
        failure: gz_failure.clone(),
    };
    let mut tar = tar::Archive::new(gz);
    // Errors from the tar layer are told apart from gzip ones by what the watcher saw.
    let sort = |e: io::Error| match gz_failure.lock().unwrap().clone() {
        Some(detail) => ExtractError::CorruptGzip {
            archive: archive.to_path_buf(),
            detail,
        },
        None => ExtractError::NotTar {
            archive: archive.to_path_buf(),
            detail: e.to_string(),
        },
    };
    let length = copy_first_pgsql(&mut tar, archive, dump, &sort)?;
    // Reading to the end checks the gzip CRC: a damaged tail is not a good archive.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(&sort)?;
    Ok(length)
}

/// Fills `buf` unless the input ends first; returns how much was read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Remembers the first error of the gzip layer, which tar would otherwise reword.
struct WatchedReader<R> {
    inner: R,
    failure: Arc<Mutex<Option<String>>>,
}

impl<R: Read> Read for WatchedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.failure
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        })
    }
}

fn copy_first_pgsql<R: Read>(
    tar: &mut tar::Archive<R>,
    archive: &Path,
    dump: &Path,
    sort: &dyn Fn(io::Error) -> ExtractError,
) -> Result<u64, ExtractError> {
    let mut seen = Vec::new();
    for entry in tar.entries().map_err(sort)? {
        let mut entry = entry.map_err(sort)?;
        let name = entry.path().map_err(sort)?.to_string_lossy().into_owned();
        let is_file = entry.header().entry_type().is_file();
        if is_file && name.ends_with(".pgsql") {
            tracing::info!(archive = %archive.display(), member = %name, "extracting the dump");
            return write_dump(&mut entry, archive, &name, dump, sort);
        }
        if seen.len() < 10 {
            seen.push(name);
        }
    }
    Err(ExtractError::NoPgsqlMember {
        archive: archive.to_path_buf(),
        entries: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

/// Checks the member's first bytes, then streams it to `dump.partial` and renames it, so that
/// a `dump` on disk is always whole.
fn write_dump(
    member: &mut impl Read,
    archive: &Path,
    name: &str,
    dump: &Path,
    sort: &dyn Fn(io::Error) -> ExtractError,
) -> Result<u64, ExtractError> {
    let mut head = Vec::with_capacity(64);
    member
        .by_ref()
        .take(64)
        .read_to_end(&mut head)
        .map_err(sort)?;
    if !head.starts_with(PGDMP) {
        return Err(ExtractError::NotCustomFormat {
            archive: archive.to_path_buf(),
            member: name.to_string(),
            hint: not_custom_hint(&head),
        });
    }
    let partial = partial_path(dump);
    let disk = |source| ExtractError::Disk {
        path: partial.clone(),
        source,
    };
    let mut out = BufWriter::with_capacity(1 << 20, fs::File::create(&partial).map_err(disk)?);
    out.write_all(&head).map_err(disk)?;
    let copied = match copy_member(member, &mut out, sort, &disk) {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    let file = out.into_inner().map_err(|e| disk(e.into_error()))?;
    file.sync_all().map_err(disk)?;
    fs::rename(&partial, dump).map_err(|source| ExtractError::Disk {
        path: dump.to_path_buf(),
        source,
    })?;
    Ok(head.len() as u64 + copied)
}

/// Like `io::copy`, but tells a failure of the archive from a failure of the disk.
fn copy_member(
    member: &mut impl Read,
    out: &mut impl Write,
    sort: &dyn Fn(io::Error) -> ExtractError,
    disk: &dyn Fn(io::Error) -> ExtractError,
) -> Result<u64, ExtractError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match member.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(sort(e)),
        };
        out.write_all(&buf[..n]).map_err(disk)?;
        copied += n as u64;
    }
}

fn not_custom_hint(head: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    let sql_start = [
        "--",
        "SET ",
        "CREATE ",
        "SELECT ",
        "BEGIN",
        "\\connect",
        "/*",
    ];
    if head.is_empty() {
        ": the file is empty"
    } else if sql_start.iter().any(|s| t.starts_with(s)) {
        ": it looks like a plain-SQL dump; the replicator needs pg_dump's custom format \
         (make it with pg_dump -Fc)"
    } else {
        ": make the dump with pg_dump -Fc (custom format)"
    }
}

fn partial_path(dump: &Path) -> PathBuf {
    with_suffix(dump, ".partial")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/1"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_total("bytes */200"), Some(200));
        assert_eq!(content_range_total("bytes 0-9/*"), None);
    }

    #[test]
    fn partial_path_appends_a_suffix() {
        assert_eq!(
            partial_path(Path::new("/d/x.pgsql")),
            PathBuf::from("/d/x.pgsql.partial")
        );
    }

    fn feed() -> Arc<Feed> {
        Arc::new(Feed {
            state: Mutex::new(FeedState::Growing),
            more: Condvar::new(),
        })
    }

    #[test]
    fn a_followed_file_is_read_as_it_grows_and_ends_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut writer = fs::File::create(&path).unwrap();
        writer.write_all(b"ab").unwrap();
        let feed = feed();
        let mut reader = FollowFile {
            file: fs::File::open(&path).unwrap(),
            feed: feed.clone(),
        };
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        // The reader is at the end of "ab" and must wait, not stop there.
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(b"cd").unwrap();
        feed.more.notify_all();
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(b"ef").unwrap();
        feed.set(FeedState::Complete);
        assert_eq!(got.join().unwrap().unwrap(), b"abcdef");
    }

    #[test]
    fn a_followed_file_errors_once_the_download_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        fs::write(&path, b"xy").unwrap();
        let feed = feed();
        let mut reader = FollowFile {
            file: fs::File::open(&path).unwrap(),
            feed: feed.clone(),
        };
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all)
        });
        feed.set(FeedState::Aborted);
        // Complete after Aborted does not revive it.
        feed.set(FeedState::Complete);
        assert!(got.join().unwrap().is_err());
    }

    #[test]
    fn only_a_marked_dump_of_the_right_lengths_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, dump) = (dir.path().join("a.tar.gz"), dir.path().join("d.pgsql"));
        fs::write(&archive, vec![0; 100]).unwrap();
        fs::write(&dump, vec![0; 40]).unwrap();
        assert_eq!(complete_dump(&dump, &archive, Some(100)), None, "no marker");
        record_complete_dump(&dump, 100, 40).unwrap();
        assert_eq!(complete_dump(&dump, &archive, Some(100)), Some(40));
        assert_eq!(complete_dump(&dump, &archive, None), Some(40));
        assert_eq!(
            complete_dump(&dump, &archive, Some(101)),
            None,
            "not the backup's size"
        );
        fs::write(&archive, vec![0; 99]).unwrap();
        assert_eq!(
            complete_dump(&dump, &archive, Some(100)),
            None,
            "archive changed"
        );
        fs::remove_file(&archive).unwrap();
        assert_eq!(
            complete_dump(&dump, &archive, Some(100)),
            Some(40),
            "archive removed"
        );
        fs::write(&dump, vec![0; 39]).unwrap();
        assert_eq!(complete_dump(&dump, &archive, Some(100)), None, "dump cut");
        fs::write(partial_path(&dump), b"x").unwrap();
        discard_extracted(&dump);
        assert!(!dump.exists() && !partial_path(&dump).exists() && !marker_path(&dump).exists());
    }

    #[test]
    fn plain_sql_gets_the_pg_dump_fc_hint() {
        assert!(not_custom_hint(b"--\n-- PostgreSQL database dump\n").contains("pg_dump -Fc"));
        assert!(not_custom_hint(b"--\n").contains("plain-SQL"));
        assert!(not_custom_hint(b"").contains("empty"));
    }
}
