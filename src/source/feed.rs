//! The archive as a byte stream, for a run that streams: from the download (through the
//! bounded [`spool`](super::spool), gunzip and untar), from an archive file, or from
//! `pg_dump` of a live database.
//!
//! A [`Feed`] is read twice, in order: first its head (the dump's header and table of
//! contents, kept in the work dir: the checks before the wipe and the schema come from it),
//! then, by the restore of the rows, everything: the head again from its file, and the rest as
//! it arrives. Nothing but the head and the spool is ever on disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, header};

use super::http::{DownloadUrl, describe_reqwest_error};
use super::spool::{SpoolWriter, spool};
use crate::error::StepError;

/// The most a table of contents may take: a dump whose header and table of contents do not
/// fit is not one this replicator streams.
const MAX_HEAD: u64 = 512 << 20;

/// Cuts of the download in a row (no byte received between them) before the stream is given
/// up: the run retries it as a whole later ([`crate::machine::Event::StreamCut`]).
const MAX_CUTS: u32 = 6;

/// A fresh download URL (the first one may have expired while the download waited).
pub type UrlSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<DownloadUrl, StepError>> + Send>> + Send + Sync,
>;

/// Why a stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(
        "the stream of {what} was cut: {detail}; the next attempt reads it again from its start (the tables already in the target are not loaded again)"
    )]
    Cut { what: String, detail: String },
    #[error(
        "{what} is not a pg_dump custom-format archive this replicator can stream ({detail}); check the backup (pg_restore --list) or give the dump with --dump"
    )]
    NotCustom { what: String, detail: String },
    /// The `pg_dump` of a live source stopped before its end: a new attempt takes a new
    /// snapshot (one cannot be resumed), and restores it whole.
    #[error(
        "{what} stopped before its end: {detail}; the next attempt takes a new pg_dump (a snapshot cannot be resumed) and restores it whole"
    )]
    SnapshotCut { what: String, detail: String },
    /// The stream's producer failed in a way no new attempt can fix (`pg_dump` refused by the
    /// source: a privilege, a version); `detail` says what to do.
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error(
        "writing the head of the dump to {path}: {source}; check the disk of REPLICATOR_STATE_DIR"
    )]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FeedError {
    /// No new attempt can fix it: not a cut.
    pub fn is_permanent(&self) -> bool {
        matches!(self, FeedError::NotCustom { .. } | FeedError::Failed { .. })
    }
}

impl From<FeedError> for StepError {
    fn from(e: FeedError) -> StepError {
        if e.is_permanent() {
            return StepError::permanent(e.to_string());
        }
        StepError::StreamCut(crate::error::Transient {
            message: e.to_string(),
            retry_after: None,
        })
    }
}

/// What a new attempt can do about a stream that stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    /// Read the same stream again from its start (a download).
    Again,
    /// Take a new snapshot (`pg_dump` of a live source).
    NewSnapshot,
    /// Nothing: the producer was refused for good.
    Permanent,
}

/// Shared between a feed's producers and its consumer: why the stream stopped early, and
/// what a new attempt can do about it.
#[derive(Clone, Default)]
pub struct CutReason(Arc<Mutex<Option<(String, CutKind)>>>);

impl CutReason {
    /// The stream stopped early; a new attempt may read it whole.
    pub fn set(&self, why: String) {
        self.set_as(why, CutKind::Again);
    }
    /// The first reason wins: it is the cause, what follows is its consequence.
    pub fn set_as(&self, why: String, kind: CutKind) {
        self.0.lock().expect("cut lock").get_or_insert((why, kind));
    }
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .expect("cut lock")
            .as_ref()
            .map(|(w, _)| w.clone())
    }
    /// The error of the stream of `what`, if it stopped early.
    pub fn error(&self, what: &str) -> Option<FeedError> {
        let (detail, kind) = self.0.lock().expect("cut lock").clone()?;
        let what = what.to_string();
        Some(match kind {
            CutKind::Again => FeedError::Cut { what, detail },
            CutKind::NewSnapshot => FeedError::SnapshotCut { what, detail },
            CutKind::Permanent => FeedError::Failed { what, detail },
        })
    }
}

/// One read of an archive as a stream.
pub struct Feed {
    /// The dump's bytes, from the first.
    reader: Box<dyn Read + Send>,
    /// The bytes already taken off `reader` by [`Feed::read_head`], kept in this file.
    head: Option<PathBuf>,
    cut: CutReason,
    /// `the backup 20261129_my_db`: for the messages.
    pub what: String,
    /// The download task, aborted with the feed.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Bytes downloaded so far (`None`: not a download).
    downloaded: Option<Arc<AtomicU64>>,
    /// The most the spool held.
    spool_high_water: Option<Arc<AtomicU64>>,
    /// A producing child (`pg_dump`), killed with the feed.
    pub(crate) child: Option<std::process::Child>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Feed {
    /// A feed of `reader`'s bytes (the dump itself), cut for `cut`'s reason if it ends early.
    pub(crate) fn of_reader(what: String, reader: Box<dyn Read + Send>, cut: CutReason) -> Feed {
        Feed {
            reader,
            head: None,
            cut,
            what,
            task: None,
            downloaded: None,
            spool_high_water: None,
            child: None,
        }
    }

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
        let downloaded = Arc::new(AtomicU64::new(0));
        let high = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(download_into(
            http,
            urls,
            expected,
            writer,
            downloaded.clone(),
            high.clone(),
        ));
        let reader = untar_thread(reader, cut.clone());
        let mut feed = Feed::of_reader(what, reader, cut);
        feed.task = Some(task);
        feed.downloaded = Some(downloaded);
        feed.spool_high_water = Some(high);
        Ok(feed)
    }

    /// Why the stream stopped early, if it did.
    pub fn cut_reason(&self) -> CutReason {
        self.cut.clone()
    }

    /// Bytes downloaded so far, and the most the spool held.
    pub fn download_counts(&self) -> Option<(u64, u64)> {
        Some((
            self.downloaded.as_ref()?.load(Ordering::Relaxed),
            self.spool_high_water
                .as_ref()
                .map_or(0, |h| h.load(Ordering::Relaxed)),
        ))
    }

    /// Reads the dump's header and table of contents into `head` (blocking). Returns the
    /// length of the head file (which may hold the first data bytes too).
    pub fn read_head(&mut self, head: &Path) -> Result<u64, FeedError> {
        let disk = |source| FeedError::Disk {
            path: head.to_path_buf(),
            source,
        };
        let mut out = File::create(head).map_err(disk)?;
        let mut buf = vec![0u8; 256 << 10];
        let mut total: u64 = 0;
        let mut next_try: u64 = 64 << 10;
        loop {
            let n = match self.reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) => return Err(self.cut_error(e.to_string())),
            };
            if n > 0 {
                out.write_all(&buf[..n]).map_err(disk)?;
                total += n as u64;
                if total < next_try {
                    continue;
                }
            }
            out.flush().map_err(disk)?;
            match crate::dump::verify::toc_end(head) {
                Ok(Some(_)) => {
                    self.head = Some(head.to_path_buf());
                    return Ok(total);
                }
                Ok(None) if n == 0 => {
                    return Err(self.cut_error(format!(
                        "it ends after {total} bytes, before the end of its table of contents"
                    )));
                }
                Ok(None) if total > MAX_HEAD => {
                    return Err(FeedError::NotCustom {
                        what: self.what.clone(),
                        detail: format!(
                            "its table of contents is longer than {} MiB",
                            MAX_HEAD >> 20
                        ),
                    });
                }
                Ok(None) => next_try = total.saturating_mul(2).min(total + (16 << 20)),
                Err(detail) => {
                    return Err(FeedError::NotCustom {
                        what: self.what.clone(),
                        detail,
                    });
                }
            }
        }
    }

    fn cut_error(&self, detail: String) -> FeedError {
        self.cut.error(&self.what).unwrap_or(FeedError::Cut {
            what: self.what.clone(),
            detail,
        })
    }

    /// Writes the whole dump into `sink` (pg_restore's stdin), blocking: the head from its
    /// file, then the rest as it arrives. A sink that closes early (pg_restore read all it
    /// needed) ends the copy without error.
    pub fn copy_into(mut self, mut sink: File) -> Result<(), FeedError> {
        let broken = |e: &io::Error| e.kind() == io::ErrorKind::BrokenPipe;
        if let Some(head) = self.head.take() {
            let copied = File::open(&head).and_then(|mut h| io::copy(&mut h, &mut sink));
            match copied {
                Ok(_) => {}
                Err(e) if broken(&e) => return Ok(()),
                Err(e) => return Err(self.cut_error(e.to_string())),
            }
        }
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match self.reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(self.cut_error(e.to_string())),
            };
            match sink.write_all(&buf[..n]) {
                Ok(()) => {}
                Err(e) if broken(&e) => return Ok(()),
                Err(e) => return Err(self.cut_error(format!("writing to pg_restore: {e}"))),
            }
        }
    }
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
