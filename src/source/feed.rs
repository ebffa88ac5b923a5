//! The producers of a streamed archive's [`Feed`] (`dump/feed.rs`): the download (through the
//! bounded [`spool`](super::spool), gunzip and untar) and an archive file. `pg_dump` of a live
//! database is the third (`live.rs`).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{StatusCode, header};

use super::http::{DownloadUrl, describe_reqwest_error};
use super::spool::{SpoolWriter, spool};
use crate::dump::feed::{CutReason, DownloadCounts, Feed, FeedError};
use crate::error::StepError;

/// Cuts of the download in a row (no byte received between them) before the stream is given
/// up: the run retries it as a whole later ([`crate::machine::Event::StreamCut`]).
const MAX_CUTS: u32 = 6;

/// A fresh download URL (the first one may have expired while the download waited).
pub type UrlSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<DownloadUrl, StepError>> + Send>> + Send + Sync,
>;

/// The `*.pgsql` member of a Scalingo archive file, gunzipped and untarred on the fly.
/// Its bytes flow into the restore, none onto the disk: nothing caps them.
pub fn archive_file(path: &Path) -> Result<Feed, FeedError> {
    let what = format!("the archive {}", path.display());
    let file = File::open(path).map_err(|e| FeedError::Cut {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let cut = CutReason::default();
    let reader = untar_thread(file, cut.clone());
    Ok(Feed::of_reader(what, reader, cut))
}

/// The backup at `url`, downloaded (resuming with `Range` when the connection drops, with
/// a fresh URL when it expired) into a spool of at most `cap` bytes in `spool_dir`,
/// gunzipped and untarred on the fly. The download stops at the `expected` bytes Scalingo
/// announced; the spool is all it writes to disk.
pub fn download(
    http: reqwest::Client,
    urls: UrlSource,
    what: String,
    expected: Option<u64>,
    spool_dir: &Path,
    cap: u64,
) -> Result<Feed, FeedError> {
    let (writer, reader) = spool(spool_dir, cap).map_err(|source| FeedError::Disk {
        path: spool_dir.to_path_buf(),
        source,
    })?;
    let cut = CutReason::default();
    let counts = DownloadCounts::default();
    let task = tokio::spawn(download_into(
        http,
        urls,
        expected,
        writer,
        counts.downloaded.clone(),
        counts.spool_high_water.clone(),
    ));
    let reader = untar_thread(reader, cut.clone());
    Ok(Feed::of_reader(what, reader, cut)
        .with_producer(task)
        .with_counts(counts))
}

/// A blocking thread that gunzips and untars `src` and gives the `*.pgsql` member's bytes
/// through a pipe; what went wrong goes to `cut`. No cap on the member: its bytes go to the
/// restore, not to the disk (the tar header bounds them, the archive's size bounds that).
fn untar_thread(src: impl Read + Send + 'static, cut: CutReason) -> Box<dyn Read + Send> {
    let (reader, mut writer) = match io::pipe() {
        Ok(p) => p,
        Err(e) => {
            cut.set(format!("cannot create a pipe: {e}"));
            return Box::new(io::empty());
        }
    };
    std::thread::spawn(move || {
        let result = (|| -> Result<(), String> {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(src));
            let entries = archive
                .entries()
                .map_err(|e| format!("reading the archive: {e}"))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
                if !super::extract::is_dump_member(&entry) {
                    continue;
                }
                return match io::copy(&mut entry, &mut writer) {
                    Ok(_) => Ok(()),
                    // The restore read all it needed and closed its end.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                    Err(e) => Err(format!("reading the archive: {e}")),
                };
            }
            Err("the archive holds no *.pgsql member".to_string())
        })();
        if let Err(why) = result {
            cut.set(why);
        }
    });
    Box::new(reader)
}

/// What a streamed download says while it goes: the restore's lines count tables and indexes,
/// which for a long download of few large tables move rarely; these say how far the download
/// is, at each tenth of the backup (every minute when its size is unknown).
struct DownloadProgress {
    expected: Option<u64>,
    started: std::time::Instant,
    said_tenth: u64,
    said_at: std::time::Instant,
}

impl DownloadProgress {
    const EVERY: Duration = Duration::from_secs(60);

    fn new(expected: Option<u64>) -> DownloadProgress {
        let now = std::time::Instant::now();
        DownloadProgress {
            expected: expected.filter(|e| *e > 0),
            started: now,
            said_tenth: 0,
            said_at: now,
        }
    }

    fn note(&mut self, done: u64, spool_high_water: u64) {
        let now = std::time::Instant::now();
        let due = match self.expected {
            Some(total) => done * 10 / total > self.said_tenth,
            None => now.duration_since(self.said_at) >= Self::EVERY,
        };
        if !due {
            return;
        }
        self.said_at = now;
        let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        match self.expected {
            Some(total) => {
                self.said_tenth = done * 10 / total;
                tracing::info!(
                    bytes_done = done,
                    bytes_total = total,
                    rate_bytes_per_second = rate as u64,
                    spool_high_water = spool_high_water,
                    "streamed download: {:.0} of {:.0} MiB ({}%) at {:.1} MB/s; the spool has held at most {:.0} MiB",
                    mib(done),
                    mib(total),
                    done * 100 / total,
                    rate / 1e6,
                    mib(spool_high_water)
                );
            }
            None => tracing::info!(
                bytes_done = done,
                rate_bytes_per_second = rate as u64,
                spool_high_water = spool_high_water,
                "streamed download: {:.0} MiB at {:.1} MB/s; the spool has held at most {:.0} MiB",
                mib(done),
                rate / 1e6,
                mib(spool_high_water)
            ),
        }
    }
}

/// Downloads into the spool, resuming with `Range` after a cut and asking for a fresh URL
/// after a refusal; ends the spool with the reason when it gives up.
async fn download_into(
    http: reqwest::Client,
    urls: UrlSource,
    expected: Option<u64>,
    mut spool: SpoolWriter,
    downloaded: Arc<AtomicU64>,
    high_water: Arc<AtomicU64>,
) {
    let mut offset: u64 = 0;
    let mut cuts: u32 = 0;
    let mut url: Option<DownloadUrl> = None;
    let mut said = DownloadProgress::new(expected);
    let result: Result<(), String> = loop {
        if cuts > MAX_CUTS {
            break Err(format!(
                "the download failed {MAX_CUTS} times in a row at byte {offset}"
            ));
        }
        if cuts > 0 {
            tokio::time::sleep(Duration::from_secs(1 << cuts.min(5))).await;
        }
        let current = match url.take() {
            Some(u) => u,
            None => match urls().await {
                Ok(u) => u,
                Err(e) => {
                    cuts += 1;
                    tracing::warn!("asking Scalingo for a download URL failed: {e}");
                    continue;
                }
            },
        };
        let location = current.redacted();
        let mut req = http.get(current.0.expose());
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                cuts += 1;
                tracing::warn!(location = %location, offset, "the download's connection failed: {}; resuming", describe_reqwest_error(e));
                url = Some(current);
                continue;
            }
        };
        // Bytes of the body to drop: a server that answers 200 to a Range sends from byte 0.
        let mut skip: u64 = 0;
        match resp.status() {
            StatusCode::OK => skip = offset,
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(super::download::content_range_start);
                if start != Some(offset) {
                    break Err(format!(
                        "{location} answered a resume at byte {offset} with another range"
                    ));
                }
            }
            status @ (StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE) => {
                // An expired URL: the next try asks for a fresh one.
                cuts += 1;
                tracing::warn!(location = %location, "the download URL answered HTTP {status}: asking for a fresh one");
                continue;
            }
            status => {
                cuts += 1;
                tracing::warn!(location = %location, "the download answered HTTP {status}; retrying");
                url = Some(current);
                continue;
            }
        }
        let ended = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let mut bytes = &chunk[..];
                    if skip > 0 {
                        let drop = skip.min(bytes.len() as u64) as usize;
                        bytes = &bytes[drop..];
                        skip -= drop as u64;
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    if expected.is_some_and(|e| offset + bytes.len() as u64 > e) {
                        break Some(Err(format!(
                            "{location} sent more than the {} bytes announced for the backup",
                            expected.unwrap_or(0)
                        )));
                    }
                    if let Err(e) = spool.write(bytes).await {
                        // The restore stopped reading (it has all it needs, or it failed and
                        // says why): nothing more to do here.
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            break Some(Ok(()));
                        }
                        break Some(Err(format!("writing the spool: {e}")));
                    }
                    offset += bytes.len() as u64;
                    cuts = 0;
                    downloaded.store(offset, Ordering::Relaxed);
                    high_water.store(spool.high_water(), Ordering::Relaxed);
                    said.note(offset, spool.high_water());
                }
                Ok(None) => {
                    if expected.is_some_and(|e| offset < e) {
                        break None;
                    }
                    break Some(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(location = %location, offset, "the download was cut: {}; resuming from byte {offset}", describe_reqwest_error(e));
                    break None;
                }
            }
        };
        match ended {
            Some(r) => break r,
            None => {
                cuts += 1;
                url = Some(current);
            }
        }
    };
    if let Err(why) = &result {
        // The restore reports the cut as the attempt's error; this says where it began.
        tracing::warn!(offset, "the download into the spool stopped: {why}");
    }
    spool.end(result);
}
