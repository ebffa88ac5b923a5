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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, header};
use tokio::io::AsyncWriteExt;

use super::disk::io_error_is_permanent;
use crate::error::{Classify, FailureKind, StepError};
use crate::source::extract::discard_extracted;
use crate::source::follow::Follower;
use crate::source::http::{DownloadUrl, describe_reqwest_error, parse_retry_after};

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
        "downloading the backup archive from {location}: the body is longer than the {limit} \
         bytes announced ({by}): stopped there, while it streamed; the archive does not match \
         its backup"
    )]
    Overflow {
        location: String,
        limit: u64,
        by: &'static str,
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

impl Classify for DownloadError {
    fn kind(&self) -> FailureKind {
        let permanent = match self {
            DownloadError::TooLong { .. } => true,
            DownloadError::Overflow { .. } => true,
            DownloadError::Disk { source, .. } => io_error_is_permanent(source),
            _ => false,
        };
        if permanent {
            FailureKind::Permanent
        } else {
            FailureKind::Transient
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            DownloadError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
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
/// complete: a dump is trusted only with the marker written after a whole extraction. The
/// dump may write `dump_cap` bytes at most ([`crate::machine::dump_cap`]).
pub async fn download_extracting(
    http: &reqwest::Client,
    url: &DownloadUrl,
    dest: &Path,
    (dump, dump_cap): (&Path, Option<u64>),
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched, StepError> {
    let (download, dump_bytes) = download_inner(
        http,
        url,
        dest,
        Some((dump, dump_cap)),
        expected_size,
        progress,
    )
    .await?;
    Ok(Fetched {
        download,
        dump_bytes,
    })
}

async fn download_inner(
    http: &reqwest::Client,
    url: &DownloadUrl,
    dest: &Path,
    extract: Option<(&Path, Option<u64>)>,
    expected_size: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Downloaded, Option<u64>), DownloadError> {
    let dump = extract.map(|(dump, _)| dump);
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
            Answer::Write(start) => {
                let resumed_from = match start {
                    Start::Append(n) => n,
                    Start::FromZero => 0,
                };
                // Only a fresh download is followed: one resumed or restarted is extracted by
                // the `Extracting` step, from the whole file, as it always was.
                let follower = match (extract, &start) {
                    (Some((dump, cap)), Start::FromZero) if pass == 0 && on_disk == 0 => {
                        Some(Follower::start(dest, dump, cap).map_err(disk)?)
                    }
                    _ => None,
                };
                let growth = follower.as_ref().map(|f| f.growth.clone());
                let report = |n: u64| {
                    if let Some(growth) = &growth {
                        growth.more.notify_all();
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
            Answer::AlreadyComplete => {
                let downloaded = Downloaded {
                    bytes: on_disk,
                    resumed_from: on_disk,
                };
                return Ok((downloaded, None));
            }
            Answer::Restart(why) if pass == 0 => {
                tracing::warn!(location = %location, on_disk, why = %why, "cannot resume: starting over from byte 0");
                truncate(dest).map_err(disk)?;
                on_disk = 0;
            }
            Answer::Restart(why) => {
                return Err(DownloadError::RangeConfused {
                    location,
                    detail: why,
                });
            }
            Answer::Fail(status) => {
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

/// What to do with the server's answer to one request.
enum Answer {
    Write(Start),
    AlreadyComplete,
    Restart(String),
    Fail(u16),
}

fn classify(resp: &reqwest::Response, on_disk: u64, expected: Option<u64>) -> Answer {
    match resp.status() {
        StatusCode::OK => Answer::Write(Start::FromZero),
        StatusCode::PARTIAL_CONTENT => {
            let range = resp.headers().get(header::CONTENT_RANGE);
            match range
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start)
            {
                Some(start) if start == on_disk => Answer::Write(Start::Append(on_disk)),
                other => Answer::Restart(format!(
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
                Answer::AlreadyComplete
            } else {
                Answer::Restart(format!(
                    "416 for byte {on_disk} while the archive is {total:?} bytes"
                ))
            }
        }
        s => Answer::Fail(s.as_u16()),
    }
}

/// `bytes 100-199/200` → 100.
pub(crate) fn content_range_start(v: &str) -> Option<u64> {
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
    // Never more than announced (Content-Length, the backup's size): a server that sends more
    // is stopped while it streams, not after it filled the disk.
    let limit = match (announced, expected_size) {
        (Some(a), Some(e)) => Some(a.min(e)),
        (a, e) => a.or(e),
    };
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if let Some(limit) = limit
                    && on_disk + chunk.len() as u64 > limit
                {
                    out.flush().await.map_err(disk)?;
                    return Err(DownloadError::Overflow {
                        location: location.to_string(),
                        limit,
                        by: if expected_size == Some(limit) {
                            "the backup's size Scalingo announced"
                        } else {
                            "Content-Length"
                        },
                    });
                }
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

/// The first `max` bytes of the archive at `url` (fewer if it is shorter): `check` reads the
/// dump's table of contents from them. Asks for a `Range`; a server that ignores it is read
/// only that far.
pub async fn fetch_head(
    http: &reqwest::Client,
    url: &DownloadUrl,
    max: u64,
) -> Result<Vec<u8>, StepError> {
    let location = url.redacted();
    let response = http
        .get(url.0.expose())
        .header(header::RANGE, format!("bytes=0-{}", max.saturating_sub(1)))
        .send()
        .await
        .map_err(|e| {
            StepError::transient(format!(
                "reading the start of the backup at {location} failed: {}",
                describe_reqwest_error(e)
            ))
        })?;
    if !response.status().is_success() {
        return Err(StepError::transient(format!(
            "reading the start of the backup at {location}: HTTP {}",
            response.status()
        )));
    }
    let mut head = Vec::new();
    let mut response = response;
    while (head.len() as u64) < max {
        match response.chunk().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                return Err(StepError::transient(format!(
                    "reading the start of the backup at {location} failed: {}",
                    describe_reqwest_error(e)
                )));
            }
        }
    }
    head.truncate(max as usize);
    Ok(head)
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
}
