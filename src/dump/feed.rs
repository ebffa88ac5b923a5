//! A dump read once, as a stream: whatever produces it (the download through the spool, an
//! archive file, `pg_dump` of a live source: `source/`), for the restore that reads it
//! (`replica/apply`). Here, below both, so that neither knows the other.
//!
//! A [`Feed`] is read twice, in order: first its head (the dump's header and table of
//! contents, kept in the work dir: the checks before the wipe and the schema come from it),
//! then, by the restore of the rows, everything: the head again from its file, and the rest as
//! it arrives. Nothing but the head (and a download's spool) is ever on disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The most a table of contents may take: a dump whose header and table of contents do not
/// fit is not one this replicator streams.
const MAX_HEAD: u64 = 512 << 20;

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

impl crate::error::Classify for FeedError {
    fn kind(&self) -> crate::error::FailureKind {
        if self.is_permanent() {
            crate::error::FailureKind::Permanent
        } else {
            crate::error::FailureKind::StreamCut
        }
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

/// What produces a feed's bytes, stopped when the feed is dropped: a download's task, a
/// `pg_dump` child.
pub trait Producer: Send {
    fn stop(&mut self);
}

impl Producer for tokio::task::JoinHandle<()> {
    fn stop(&mut self) {
        self.abort();
    }
}

impl Producer for std::process::Child {
    fn stop(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

/// How far a download that feeds a stream is: bytes downloaded, the most its spool held.
#[derive(Clone, Default)]
pub struct DownloadCounts {
    pub downloaded: Arc<AtomicU64>,
    pub spool_high_water: Arc<AtomicU64>,
}

/// One read of a dump as a stream.
pub struct Feed {
    /// The dump's bytes, from the first.
    reader: Box<dyn Read + Send>,
    /// The bytes already taken off `reader` by [`Feed::read_head`], kept in this file.
    head: Option<PathBuf>,
    cut: CutReason,
    /// `the backup 20261129_my_db`: for the messages.
    pub what: String,
    /// What produces the bytes, stopped with the feed.
    producer: Option<Box<dyn Producer>>,
    /// `None`: not a download.
    counts: Option<DownloadCounts>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(producer) = self.producer.as_mut() {
            producer.stop();
        }
    }
}

impl Feed {
    /// A feed of `reader`'s bytes (the dump itself), cut for `cut`'s reason if it ends early.
    pub fn of_reader(what: String, reader: Box<dyn Read + Send>, cut: CutReason) -> Feed {
        Feed {
            reader,
            head: None,
            cut,
            what,
            producer: None,
            counts: None,
        }
    }

    /// This feed, whose bytes `producer` makes: it is stopped when the feed is dropped.
    pub fn with_producer(mut self, producer: impl Producer + 'static) -> Feed {
        self.producer = Some(Box::new(producer));
        self
    }

    /// This feed, whose bytes a download makes, that counts in `counts`.
    pub fn with_counts(mut self, counts: DownloadCounts) -> Feed {
        self.counts = Some(counts);
        self
    }

    /// Why the stream stopped early, if it did.
    pub fn cut_reason(&self) -> CutReason {
        self.cut.clone()
    }

    /// Bytes downloaded so far, and the most the spool held.
    pub fn download_counts(&self) -> Option<(u64, u64)> {
        let counts = self.counts.as_ref()?;
        Some((
            counts.downloaded.load(Ordering::Relaxed),
            counts.spool_high_water.load(Ordering::Relaxed),
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
            match super::verify::toc_end(head) {
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

    /// The file of the head [`Feed::read_head`] kept, if it was read.
    pub fn head_path(&self) -> Option<&Path> {
        self.head.as_deref()
    }

    /// The whole dump as one reader, from its first byte: the head from its file, then the
    /// rest as it arrives (for a reader of the archive itself, `rows.rs`).
    pub fn into_reader(mut self) -> Result<FeedReader, FeedError> {
        let head = match self.head.take() {
            Some(path) => Some(File::open(&path).map_err(|source| FeedError::Disk {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        Ok(FeedReader { feed: self, head })
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

/// A [`Feed`] as one reader of the whole dump ([`Feed::into_reader`]). Dropping it stops the
/// feed's producer.
pub struct FeedReader {
    feed: Feed,
    head: Option<File>,
}

impl FeedReader {
    /// The error of a read that failed or ended early: the producer's reason if the stream
    /// was cut, else a cut with `detail`.
    pub fn error(&self, detail: String) -> FeedError {
        self.feed.cut_error(detail)
    }

    /// `the backup 20261129_my_db`: for the messages.
    pub fn what(&self) -> &str {
        &self.feed.what
    }
}

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(head) = self.head.as_mut() {
            let n = head.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            self.head = None;
        }
        self.feed.reader.read(buf)
    }
}
