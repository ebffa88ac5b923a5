//! One `pg_restore --file=-` as a stream of script pieces and `COPY` rows: the process (its
//! environment, its process group, its death with the replicator) and the reading of its
//! output through [`ScriptParser`].

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use super::ApplyError;
use super::script::{Piece, ScriptParser};
use crate::dump::feed::{CutReason, Feed, FeedError};
use crate::dump::rows::{RowsError, RowsSource};

/// Rows are sent to `COPY` in chunks of about this size.
const COPY_CHUNK: usize = 256 * 1024;
/// Chunks the native reader may write ahead of the session that sends them. The reader
/// inflates faster than a `COPY` loads, so a few chunks keep the session fed; each table loads
/// from a reader of its own, `PG_RESTORE_JOBS` of them at once, so each chunk ahead costs
/// that many times 256 KiB of resident memory.
const NATIVE_CHUNKS_AHEAD: usize = 4;
/// How many lines of pg_restore's stderr an error keeps.
const STDERR_TAIL: usize = 20;

/// The script of the entries of a list, as pieces: from one `pg_restore --file=-`, or, for
/// the rows, from the archive read natively ([`native_script`]).
pub(super) struct ScriptStream {
    out: Box<dyn AsyncBufRead + Unpin + Send>,
    parser: ScriptParser,
    pending: VecDeque<Piece>,
    line: Vec<u8>,
    dump: PathBuf,
    /// The rows just returned ended their `COPY`: [`Item::RowsEnd`] comes next.
    rows_end: bool,
    origin: ScriptOrigin,
}

/// What writes the script.
enum ScriptOrigin {
    PgRestore(Box<PgRestore>),
    /// The thread that reads the archive and writes the script (`dump/rows.rs`); `None` once
    /// its outcome was taken.
    Native(Option<tokio::task::JoinHandle<Result<(), ApplyError>>>),
}

/// One `pg_restore --file=-` child.
struct PgRestore {
    child: Child,
    /// Kills pg_restore's whole process group if the restore is dropped half-way.
    pgid: Option<libc::pid_t>,
    stderr: tokio::task::JoinHandle<String>,
    /// The thread writing a streamed archive into pg_restore's stdin.
    feeding: Option<tokio::task::JoinHandle<Result<(), FeedError>>>,
    /// Why the streamed archive stopped early, if it did.
    cut: Option<CutReason>,
}

/// What [`ScriptStream::next`] returns.
pub(super) enum Item {
    Piece(Piece),
    /// Rows of the current `COPY`, whole lines.
    Rows(Bytes),
    /// The end of the current `COPY`'s rows.
    RowsEnd,
}

impl Drop for PgRestore {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall on the group pre_exec made ours.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// `pg_restore --file=-` of the entries `list` names (a `--list` excerpt, given on stdin):
/// no connection, no secret, nothing of the replicator's environment but `PATH`, the locale
/// and the time zone.
pub(super) fn pg_restore_script(dump: &Path, list: String) -> Result<ScriptStream, ApplyError> {
    pg_restore_inner(dump, Input::File(list))
}

/// [`pg_restore_script`] of an archive that arrives as a stream: `feed` is written to
/// pg_restore's stdin (on a blocking thread), the list is read from `list_file`. pg_restore
/// reads a stream forward only, so the list must be in the archive's order (it is).
pub(super) fn pg_restore_stream(feed: Feed, list_file: &Path) -> Result<ScriptStream, ApplyError> {
    let what = PathBuf::from(feed.what.clone());
    let mut stream = pg_restore_inner(&what, Input::Stream(feed, list_file.to_path_buf()))?;
    stream.dump = what;
    Ok(stream)
}

enum Input {
    /// The archive is a file; the list comes on stdin.
    File(String),
    /// The archive comes on stdin; the list is a file.
    Stream(Feed, PathBuf),
}

/// What every translation of the archive into SQL asks of `pg_restore`: the script on stdout,
/// without the source's owners, grants and tablespaces (the target's role owns everything).
pub(crate) const TRANSLATE: [&str; 4] = [
    "--file=-",
    "--no-owner",
    "--no-privileges",
    "--no-tablespaces",
];

/// Asks for a 1 MiB pipe instead of Linux's 64 KiB: pg_restore writes its script in pieces of
/// a few KiB, and with the default pipe it and the replicator take turns every 64 KiB, a pair
/// of context switches each on a machine whose cores the server's `COPY` keeps busy. Best
/// effort: a lower `/proc/sys/fs/pipe-max-size` leaves the pipe as it is.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a pipe this process owns; no memory is passed.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

fn pg_restore_inner(dump: &Path, input: Input) -> Result<ScriptStream, ApplyError> {
    let mut cmd = crate::secret::child_command("pg_restore");
    cmd.args(TRANSLATE);
    match &input {
        Input::File(_) => {
            cmd.arg("--use-list=/dev/stdin").arg(dump);
        }
        Input::Stream(_, list) => {
            let mut arg = std::ffi::OsString::from("--use-list=");
            arg.push(list);
            cmd.arg(arg);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child =
        crate::secret::spawn_bound(cmd).map_err(|source| ApplyError::Spawn { source })?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut feeding = None;
    let mut cut = None;
    match input {
        Input::File(list) => {
            tokio::spawn(async move {
                // pg_restore reads the whole list before it writes anything.
                let _ = stdin.write_all(list.as_bytes()).await;
            });
        }
        Input::Stream(feed, _) => {
            widen_pipe(&stdin);
            let sink = stdin
                .into_owned_fd()
                .map(std::fs::File::from)
                .map_err(|source| ApplyError::Spawn { source })?;
            cut = Some(feed.cut_reason());
            feeding = Some(tokio::task::spawn_blocking(move || feed.copy_into(sink)));
        }
    }
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(STDERR_TAIL)..].join("\n")
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    widen_pipe(&stdout);
    let out = BufReader::with_capacity(1 << 20, stdout);
    Ok(ScriptStream::new(
        Box::new(out),
        dump.to_path_buf(),
        ScriptOrigin::PgRestore(Box::new(PgRestore {
            child,
            pgid,
            stderr,
            feeding,
            cut,
        })),
    ))
}

/// The script of the data entries `ids` (checked with [`crate::dump::rows::natively_readable`]),
/// as `pg_restore --file=-` writes it, read from the archive by a blocking thread of this
/// process: no pg_restore. Its bytes come through a bounded channel, so the thread reads the
/// archive only as fast as the rows are sent; dropping the stream stops it (its next write
/// fails), and with it the feed it reads.
pub(super) fn native_script(dump: PathBuf, source: RowsSource, ids: Vec<i64>) -> ScriptStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(NATIVE_CHUNKS_AHEAD);
    let task = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(COPY_CHUNK),
        };
        let written = source
            .open()
            .and_then(|mut rows| rows.write_script(&ids, &mut out));
        // What was written before a cut or a damaged block goes out before the error: the
        // tables whole before it load and commit with their records, and the next attempt
        // skips them. (The session sees the error only once it has read all of it.)
        if written.is_err() {
            let _ = std::io::Write::flush(&mut out);
        }
        match written {
            Ok(()) | Err(RowsError::Closed) => Ok(()),
            Err(RowsError::Feed(e)) => Err(ApplyError::Stream(e)),
            Err(e) => Err(ApplyError::Rows(e)),
        }
    });
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::io::Error>))
    });
    ScriptStream::new(
        Box::new(tokio_util::io::StreamReader::new(chunks)),
        dump,
        ScriptOrigin::Native(Some(task)),
    )
}

/// The script's bytes, sent in chunks of [`COPY_CHUNK`] (blocking: on the reading thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(COPY_CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= COPY_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl ScriptStream {
    fn new(out: Box<dyn AsyncBufRead + Unpin + Send>, dump: PathBuf, origin: ScriptOrigin) -> Self {
        ScriptStream {
            out,
            parser: ScriptParser::new(),
            pending: VecDeque::new(),
            line: Vec::new(),
            dump,
            rows_end: false,
            origin,
        }
    }

    /// The end of the script: an error if it stopped inside a statement or a `COPY`. Read
    /// natively, the reading thread's own error comes first (a damaged block, a cut stream:
    /// the script stops there). From pg_restore, when the archive came as a stream that
    /// stopped early, the cut is the cause (pg_restore stopped on a short read), and a new
    /// attempt may do better: the script's own unterminated end would say "permanent" where
    /// the truth is "cut".
    async fn end_of_output(&mut self) -> Result<(), ApplyError> {
        if let ScriptOrigin::Native(task) = &mut self.origin {
            if let Some(task) = task.take() {
                task.await.map_err(|e| ApplyError::Read {
                    source: std::io::Error::other(format!("the archive's reader failed: {e}")),
                })??;
            }
            return Ok(self.parser.finish()?);
        }
        let Err(e) = self.parser.finish() else {
            return Ok(());
        };
        let what = self.dump.display().to_string();
        let ScriptOrigin::PgRestore(p) = &mut self.origin else {
            unreachable!("native handled above")
        };
        if let Some(cut) = p.stream_error(false, &what).await {
            return Err(cut);
        }
        if p.cut.is_some() {
            // The stream came whole but pg_restore stopped inside it: the dump in the archive
            // is cut short or corrupt. A new download may be whole (the trade-off).
            let status = p
                .child
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_default();
            p.pgid = None;
            let stderr = (&mut p.stderr).await.unwrap_or_default();
            return Err(ApplyError::Stream(FeedError::Cut {
                what,
                detail: format!("pg_restore stopped inside it ({status}): {stderr}"),
            }));
        }
        Err(e.into())
    }

    /// The next piece of the script, or `None` at its end.
    pub(super) async fn next(&mut self) -> Result<Option<Item>, ApplyError> {
        if std::mem::take(&mut self.rows_end) {
            return Ok(Some(Item::RowsEnd));
        }
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(Some(Item::Piece(p)));
            }
            if self.parser.in_copy() {
                return self.rows().await;
            }
            self.line.clear();
            let n = self
                .out
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|source| ApplyError::Read { source })?;
            if n == 0 {
                self.end_of_output().await?;
                return Ok(None);
            }
            let mut out = Vec::new();
            self.parser.line(&self.line, &mut out)?;
            self.pending.extend(out);
        }
    }

    /// Up to [`COPY_CHUNK`] bytes of rows (whole lines), or the end of the rows. Lines are read
    /// straight into the chunk that goes to `COPY`: no copy per line.
    async fn rows(&mut self) -> Result<Option<Item>, ApplyError> {
        let mut chunk: Vec<u8> = Vec::with_capacity(COPY_CHUNK + 4096);
        loop {
            let start = chunk.len();
            let n = self
                .out
                .read_until(b'\n', &mut chunk)
                .await
                .map_err(|source| ApplyError::Read { source })?;
            if n == 0 {
                self.end_of_output().await?;
                return Ok(None);
            }
            if self.parser.copy_line(&chunk[start..]) {
                chunk.truncate(start);
                if chunk.is_empty() {
                    return Ok(Some(Item::RowsEnd));
                }
                // The end marker comes again after these rows.
                self.rows_end = true;
                return Ok(Some(Item::Rows(Bytes::from(chunk))));
            }
            if chunk.len() >= COPY_CHUNK {
                return Ok(Some(Item::Rows(Bytes::from(chunk))));
            }
        }
    }

    /// Waits for pg_restore's exit (or the native reader's end): an error if it failed.
    pub(super) async fn finish(mut self) -> Result<(), ApplyError> {
        let what = self.dump.display().to_string();
        match &mut self.origin {
            ScriptOrigin::Native(task) => match task.take() {
                Some(task) => task.await.map_err(|e| ApplyError::Read {
                    source: std::io::Error::other(format!("the archive's reader failed: {e}")),
                })?,
                None => Ok(()),
            },
            ScriptOrigin::PgRestore(p) => p.finish(&what, &self.dump).await,
        }
    }
}

impl PgRestore {
    /// Why a streamed archive stopped early, if it did: the feeding thread's own error (waited
    /// for only if `wait`, else taken if it already ended), or the producer's reason.
    async fn stream_error(&mut self, wait: bool, what: &str) -> Option<ApplyError> {
        let ended = self
            .feeding
            .as_ref()
            .is_some_and(|f| wait || f.is_finished());
        if ended
            && let Some(feeding) = self.feeding.take()
            && let Ok(Err(e)) = feeding.await
        {
            return Some(ApplyError::Stream(e));
        }
        self.cut
            .as_ref()
            .and_then(|c| c.error(what))
            .map(ApplyError::Stream)
    }

    async fn finish(&mut self, what: &str, dump: &Path) -> Result<(), ApplyError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|source| ApplyError::Read { source })?;
        self.pgid = None;
        // A stream cut short makes pg_restore fail on a short read: the cut is the cause.
        if let Some(e) = self.stream_error(true, what).await {
            return Err(e);
        }
        if status.success() {
            return Ok(());
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        // Reading a stream, pg_restore only reads the archive: its failure is the archive's
        // (a dump cut short, a corrupt block), which a new download may not have.
        if self.cut.is_some() {
            return Err(ApplyError::Stream(FeedError::Cut {
                what: what.to_string(),
                detail: format!("pg_restore could not read it ({status}): {stderr}"),
            }));
        }
        Err(ApplyError::PgRestore {
            dump: dump.to_path_buf(),
            status: status.to_string(),
            stderr,
            // Killed (OOM killer, an operator): nothing says the next attempt fails too.
            transient: status.signal().is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::rows::{ArchiveRows, read_toc_of};
    use std::sync::Arc;

    /// An archive of the fixtures cut in its last block (`tests/fixtures/rows`).
    fn cut_archive(dir: &Path) -> PathBuf {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rows");
        let bytes = std::fs::read(fixtures.join("pg16-gzip-pipe.dump")).unwrap();
        let short = dir.join("short.dump");
        std::fs::write(&short, &bytes[..bytes.len() - 3000]).unwrap();
        short
    }

    /// A reader that stops at a cut has written every entry before it: those bytes reach the
    /// session (the tables before the cut load and commit with their records, and a resumed
    /// attempt skips them), then the reader's error comes. Was: the last chunk, under
    /// [`COPY_CHUNK`], was dropped with the error, and the tables in it never committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_read_before_a_cut_reaches_the_session_before_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let short = cut_archive(dir.path());
        let toc = Arc::new(read_toc_of(&short).unwrap());
        let ids: Vec<i64> = toc
            .entries
            .iter()
            .filter(|e| matches!(e.desc(), "TABLE DATA" | "SEQUENCE SET"))
            .map(|e| e.id)
            .collect();
        // What the reader writes before it stops.
        let mut written = Vec::new();
        ArchiveRows::file(&short, toc.clone())
            .unwrap()
            .write_script(&ids, &mut written)
            .unwrap_err();
        let tables_before_cut = written
            .windows(b"\n\\.\n".len())
            .filter(|w| w == b"\n\\.\n")
            .count();
        assert!(
            tables_before_cut >= 2,
            "the fixture must have tables before its cut"
        );

        let mut stream = native_script(short.clone(), RowsSource::File(short.clone(), toc), ids);
        let mut ended = 0;
        let error = loop {
            match stream.next().await {
                Ok(Some(Item::RowsEnd)) => ended += 1,
                Ok(Some(_)) => {}
                Ok(None) => panic!("a cut archive's script ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(
            ended, tables_before_cut,
            "the COPYs the reader wrote whole before the cut must reach the session whole"
        );
        assert!(error.to_string().contains("cut short"), "{error}");
    }
}
