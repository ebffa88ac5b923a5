//! The rows of a `pg_dump -Fc` archive, read natively: the script `pg_restore --file=-` would
//! write for the data entries of a list (the same settings, entry headers, `COPY` statements,
//! rows and `\.`, `SEQUENCE SET`'s `setval`), without a `pg_restore` in the way.
//!
//! A data block (`pg_backup_custom.c`) is a type byte (1: a table's data), the entry's dump
//! id, then chunks (an integer length and that many bytes) up to a length of 0. The chunks of
//! one block are one compressed stream: none, zlib (gzip), an lz4 frame or a zstd frame, as
//! the header says. pg_dump's rows end with `\.` themselves. A file whose entries carry their
//! data's offset is read by seeking; without offsets (pg_dump wrote to a pipe), or from a
//! stream ([`Feed`]), the blocks are walked forward, skipping those of other entries.
//!
//! What this reader does not do (large objects, `--inserts` dumps whose data entries have no
//! `COPY`, archive versions before 1.14 or after 1.16, a dump not in UTF-8) is said by
//! [`natively_readable`], and the rows' section then goes through `pg_restore` as before.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::archive::{self, ArchiveToc, BLK_BLOBS, BLK_DATA, Compression, DataPos, Entry, Wire};
use super::feed::{Feed, FeedError, FeedReader};

#[cfg(test)]
mod tests;

/// The oldest archive version read natively: 1.14 (pg_dump 12).
const OLDEST: (u8, u8) = (1, 14);
/// The newest: 1.16 (pg_dump 17 and 18).
const NEWEST: (u8, u8) = (1, 16);

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(
        "the archive {what} is damaged in the data of {entry}, at byte {offset}: {detail}; \
         pg_restore would stop there too: download the backup again (or check it with pg_restore)"
    )]
    Damaged {
        what: String,
        entry: String,
        offset: u64,
        detail: String,
    },
    #[error(
        "the archive {what} ends at byte {offset}, inside the data of {entry}: the dump is cut \
         short; the archive may be damaged: download the backup again"
    )]
    Truncated {
        what: String,
        entry: String,
        offset: u64,
    },
    #[error(
        "the data of {entry} is not in the archive {what} ({detail}); the archive may be \
         damaged: download the backup again"
    )]
    Missing {
        what: String,
        entry: String,
        detail: String,
    },
    #[error("reading the archive {what} failed: {source}; will retry")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A streamed archive stopped early (or could not be read): the feed's own error.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// Whoever read the script went away: not a failure of the archive.
    #[error("the reader of the rows' script went away")]
    Closed,
}

impl crate::error::Classify for RowsError {
    fn kind(&self) -> crate::error::FailureKind {
        use crate::error::FailureKind;
        match self {
            RowsError::Feed(e) => e.kind(),
            RowsError::Read { .. } | RowsError::Closed => FailureKind::Transient,
            RowsError::Damaged { .. } | RowsError::Truncated { .. } | RowsError::Missing { .. } => {
                FailureKind::Permanent
            }
        }
    }
}

/// The dump ids of the entries a `--use-list` text names (`2574; 0 16385 TABLE DATA ...`),
/// in its order; comment lines (`;...`) and blank ones are not entries.
pub fn list_ids(list: &str) -> Vec<i64> {
    list.lines()
        .filter_map(|l| l.trim_start().split(';').next()?.trim().parse().ok())
        .collect()
}

/// Reads the header and table of contents of the archive at `path`.
pub fn read_toc_of(path: &Path) -> Result<ArchiveToc, String> {
    read_head_of(path, archive::read_toc)
}

/// [`read_toc_of`] with only what the rows need ([`archive::read_rows_toc`]), the rest dropped
/// as it is read.
pub fn read_rows_toc_of(path: &Path) -> Result<ArchiveToc, String> {
    read_head_of(path, archive::read_rows_toc)
}

/// The archive file at `path`, its head read by `read`.
fn read_head_of(
    path: &Path,
    read: fn(&mut Wire<BufReader<File>>) -> Result<ArchiveToc, archive::HeadError>,
) -> Result<ArchiveToc, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut w = Wire::new(BufReader::with_capacity(1 << 20, file));
    read(&mut w).map_err(|e| e.to_string())
}

/// Whether this reader writes the script of the entries `ids` of `toc` as pg_restore would;
/// `Err(why not)` otherwise.
pub fn natively_readable(toc: &ArchiveToc, ids: &[i64]) -> Result<(), String> {
    let h = &toc.header;
    let v = (h.version.0, h.version.1);
    if !(OLDEST..=NEWEST).contains(&v) {
        return Err(format!(
            "archive version {} (read natively: {}.{} to {}.{})",
            h.version_text(),
            OLDEST.0,
            OLDEST.1,
            NEWEST.0,
            NEWEST.1
        ));
    }
    if let Compression::Unknown(n) = h.compression {
        return Err(format!("compression algorithm {n}"));
    }
    match toc.encoding() {
        Some("UTF8") => {}
        other => return Err(format!("the dump's encoding is {other:?}, not UTF8")),
    }
    for id in ids {
        let Some(e) = toc.entry(*id) else {
            return Err(format!(
                "entry {id} is not in the archive's table of contents"
            ));
        };
        match e.desc() {
            "TABLE DATA" if !e.had_dumper || e.data == DataPos::NoData => {
                return Err(format!("{} has no data block", e.describe()));
            }
            "TABLE DATA" if e.copy_stmt.as_deref().is_none_or(str::is_empty) => {
                return Err(format!(
                    "{} has no COPY statement (a dump made with --inserts)",
                    e.describe()
                ));
            }
            "TABLE DATA" => {}
            "SEQUENCE SET" if !e.had_dumper => {}
            _ => return Err(format!("{} (only rows and sequences are)", e.describe())),
        }
    }
    Ok(())
}

/// Where the archive's bytes come from.
enum ArchiveInput {
    /// A file: blocks are found by seeking where the offsets say.
    File(BufReader<File>),
    /// A stream, read forward once.
    Feed(FeedReader),
}

impl Read for ArchiveInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ArchiveInput::File(f) => f.read(buf),
            ArchiveInput::Feed(f) => f.read(buf),
        }
    }
}

/// One reading of an archive's data blocks.
pub struct ArchiveRows {
    wire: Wire<ArchiveInput>,
    toc: std::sync::Arc<ArchiveToc>,
    /// `/work/dump.pgsql`, `the backup 20261129_my_db`: for the messages.
    what: String,
    /// Where the blocks walked over started (entry id to offset).
    seen: HashMap<i64, u64>,
    /// How far the blocks were walked (a file's next block to look at).
    walked_to: u64,
}

/// Why reading a block's chunks failed: the bytes underneath, or their framing.
enum Fault {
    Read(io::Error),
    Frame(String),
}

/// The chunks of one data block as one reader, up to its end marker.
struct Chunks<'a> {
    wire: &'a mut Wire<ArchiveInput>,
    left: u64,
    ended: bool,
    fault: Option<Fault>,
}

impl Chunks<'_> {
    fn fail(&mut self, fault: Fault) -> io::Error {
        self.fault.get_or_insert(fault);
        io::Error::other("the block's chunks could not be read")
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            if self.ended {
                return Ok(0);
            }
            let n = match self.wire.int() {
                Ok(n) => n,
                Err(e) => return Err(self.fail(Fault::Read(e))),
            };
            if n == 0 {
                self.ended = true;
                return Ok(0);
            }
            if n < 0 {
                return Err(self.fail(Fault::Frame(format!("a chunk of length {n}"))));
            }
            self.left = n as u64;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = match self.wire.inner.read(&mut buf[..want]) {
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "inside a chunk");
                return Err(self.fail(Fault::Read(eof)));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(Fault::Read(e))),
        };
        self.wire.pos += got as u64;
        self.left -= got as u64;
        Ok(got)
    }
}

impl ArchiveRows {
    /// The archive file at `path`, whose head is `toc` (read once by the caller).
    pub fn file(path: &Path, toc: std::sync::Arc<ArchiveToc>) -> Result<ArchiveRows, RowsError> {
        let what = path.display().to_string();
        let file = File::open(path).map_err(|source| RowsError::Read {
            what: what.clone(),
            source,
        })?;
        // Each table may have a reader of its own, several at once (replica::restore): reads
        // of 256 KiB from the page cache keep the syscalls few without a MiB each.
        let mut wire = Wire::new(ArchiveInput::File(BufReader::with_capacity(
            256 << 10,
            file,
        )));
        wire.int_size = toc.header.int_size;
        wire.off_size = toc.header.off_size;
        Ok(ArchiveRows {
            wire,
            walked_to: toc.data_start,
            toc,
            what,
            seen: HashMap::new(),
        })
    }

    /// The archive as it streams from `feed`, read forward once from its first byte (its head
    /// again, then its data).
    pub fn feed(feed: Feed) -> Result<ArchiveRows, RowsError> {
        let reader = feed.into_reader()?;
        let what = reader.what().to_string();
        let mut wire = Wire::new(ArchiveInput::Feed(reader));
        let toc = match archive::read_rows_toc(&mut wire) {
            Ok(toc) => toc,
            Err(e) => {
                let ArchiveInput::Feed(reader) = &wire.inner else {
                    unreachable!("made of a feed")
                };
                return Err(match e {
                    archive::HeadError::Unknown(detail) => FeedError::NotCustom { what, detail },
                    e => reader.error(format!("reading its table of contents: {e}")),
                }
                .into());
            }
        };
        Ok(ArchiveRows {
            walked_to: toc.data_start,
            toc: std::sync::Arc::new(toc),
            wire,
            what,
            seen: HashMap::new(),
        })
    }

    pub fn toc(&self) -> &ArchiveToc {
        &self.toc
    }

    /// Writes into `out` the script pg_restore writes for the entries `ids`, in that order
    /// (checked first with [`natively_readable`]): its settings, then each entry under its
    /// header comment, then its end.
    pub fn write_script(&mut self, ids: &[i64], out: &mut impl Write) -> Result<(), RowsError> {
        let closed = |_| RowsError::Closed;
        out.write_all(self.preamble().as_bytes()).map_err(closed)?;
        let toc = self.toc.clone();
        for id in ids {
            let Some(e) = toc.entry(*id) else {
                return Err(RowsError::Missing {
                    what: self.what.clone(),
                    entry: format!("entry {id}"),
                    detail: "not in its table of contents".into(),
                });
            };
            out.write_all(entry_header(e).as_bytes()).map_err(closed)?;
            if e.desc() == "TABLE DATA" {
                if let Some(copy) = e.copy_stmt.as_deref() {
                    out.write_all(copy.as_bytes()).map_err(closed)?;
                }
                self.copy_block(e, out)?;
            }
        }
        out.write_all(b"--\n-- PostgreSQL database dump complete\n--\n\n")
            .map_err(closed)?;
        out.flush().map_err(closed)
    }

    /// pg_restore's opening: the comment, then the session's settings
    /// (`_doSetFixedOutputState`), as pg_restore 17 and 18 write them.
    fn preamble(&self) -> String {
        let h = &self.toc.header;
        let mut s = String::from("--\n-- PostgreSQL database dump\n--\n\n");
        if let Some(v) = &h.server_version {
            s.push_str(&format!("-- Dumped from database version {v}\n"));
        }
        if let Some(v) = &h.dump_version {
            s.push_str(&format!("-- Dumped by pg_dump version {v}\n"));
        }
        s.push('\n');
        s.push_str("SET statement_timeout = 0;\n");
        s.push_str("SET lock_timeout = 0;\n");
        s.push_str("SET idle_in_transaction_session_timeout = 0;\n");
        s.push_str("SET transaction_timeout = 0;\n");
        s.push_str(&format!(
            "SET client_encoding = '{}';\n",
            self.toc.encoding().unwrap_or("UTF8")
        ));
        let std_strings = self.toc.std_strings();
        s.push_str(&format!(
            "SET standard_conforming_strings = {};\n",
            if std_strings { "on" } else { "off" }
        ));
        if let Some(path) = self.toc.search_path() {
            s.push_str(path);
        }
        s.push_str("SET check_function_bodies = false;\n");
        s.push_str("SET xmloption = content;\n");
        s.push_str("SET client_min_messages = warning;\n");
        if !std_strings {
            s.push_str("SET escape_string_warning = off;\n");
        }
        s.push_str("SET row_security = off;\n\n");
        s
    }

    fn read_error(&self, e: io::Error, entry: &Entry) -> RowsError {
        let eof = e.kind() == io::ErrorKind::UnexpectedEof;
        match &self.wire.inner {
            ArchiveInput::Feed(reader) => RowsError::Feed(reader.error(if eof {
                format!(
                    "it ends at byte {}, inside the data of {}",
                    self.wire.pos,
                    entry.describe()
                )
            } else {
                e.to_string()
            })),
            ArchiveInput::File(_) if eof => RowsError::Truncated {
                what: self.what.clone(),
                entry: entry.describe(),
                offset: self.wire.pos,
            },
            ArchiveInput::File(_) => RowsError::Read {
                what: self.what.clone(),
                source: e,
            },
        }
    }

    fn damaged(&self, entry: &Entry, offset: u64, detail: String) -> RowsError {
        RowsError::Damaged {
            what: self.what.clone(),
            entry: entry.describe(),
            offset,
            detail,
        }
    }

    fn seek(&mut self, pos: u64, entry: &Entry) -> Result<(), RowsError> {
        let ArchiveInput::File(f) = &mut self.wire.inner else {
            unreachable!("only a file seeks")
        };
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| self.read_error(e, entry))?;
        self.wire.pos = pos;
        Ok(())
    }

    /// Places the reader at the chunks of `entry`'s data block.
    fn find_block(&mut self, entry: &Entry) -> Result<(), RowsError> {
        let file = matches!(self.wire.inner, ArchiveInput::File(_));
        let known = match entry.data {
            DataPos::At(pos) => Some(pos),
            _ => self.seen.get(&entry.id).copied(),
        };
        if file && let Some(pos) = known {
            self.seek(pos, entry)?;
            let (kind, id) = self.block_header(entry)?;
            if kind != BLK_DATA || id != entry.id {
                return Err(self.damaged(
                    entry,
                    pos,
                    format!("the block there is of type {kind} for entry {id}"),
                ));
            }
            return Ok(());
        }
        if !file && self.seen.contains_key(&entry.id) {
            return Err(self.damaged(
                entry,
                self.wire.pos,
                "its block was passed already: a stream is read in the archive's order".into(),
            ));
        }
        // Walk forward from where the last walk stopped.
        if file {
            let to = self.walked_to;
            self.seek(to, entry)?;
        }
        loop {
            let start = self.wire.pos;
            let kind = match self.wire.byte() {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(match &self.wire.inner {
                        ArchiveInput::Feed(reader) => RowsError::Feed(reader.error(format!(
                            "it ends at byte {start}, before the data of {}",
                            entry.describe()
                        ))),
                        ArchiveInput::File(_) => RowsError::Missing {
                            what: self.what.clone(),
                            entry: entry.describe(),
                            detail: format!("no block of it up to the end, byte {start}"),
                        },
                    });
                }
                Err(e) => return Err(self.read_error(e, entry)),
            };
            let id = self.wire.int().map_err(|e| self.read_error(e, entry))?;
            self.seen.insert(id, start);
            if kind == BLK_DATA && id == entry.id {
                return Ok(());
            }
            if kind != BLK_DATA && kind != BLK_BLOBS {
                return Err(self.damaged(entry, start, format!("a block of type {kind}")));
            }
            let skipped = self.wire.skip_block_body(kind, skip);
            skipped.map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => self.damaged(entry, start, e.to_string()),
                _ => self.read_error(e, entry),
            })?;
            self.walked_to = self.wire.pos;
        }
    }

    fn block_header(&mut self, entry: &Entry) -> Result<(u8, i64), RowsError> {
        let kind = self.wire.byte().map_err(|e| self.read_error(e, entry))?;
        let id = self.wire.int().map_err(|e| self.read_error(e, entry))?;
        Ok((kind, id))
    }

    /// Writes the rows of `entry`'s data block into `out`, decompressed.
    fn copy_block(&mut self, entry: &Entry, out: &mut impl Write) -> Result<(), RowsError> {
        self.find_block(entry)?;
        let start = self.wire.pos;
        let compression = self.toc.header.compression;
        let mut chunks = Chunks {
            wire: &mut self.wire,
            left: 0,
            ended: false,
            fault: None,
        };
        let mut closed = false;
        let copied = match compression {
            Compression::None => pump(&mut chunks, out, &mut closed),
            Compression::Gzip => pump(
                &mut flate2::read::ZlibDecoder::new(&mut chunks),
                out,
                &mut closed,
            ),
            Compression::Lz4 => pump(
                &mut lz4_flex::frame::FrameDecoder::new(&mut chunks),
                out,
                &mut closed,
            ),
            Compression::Zstd => zstd::stream::read::Decoder::new(&mut chunks).and_then(|mut d| {
                // `zstd:long` dumps use windows beyond the default limit (2^27).
                d.window_log_max(31)?;
                pump(&mut d, out, &mut closed)
            }),
            Compression::Unknown(n) => Err(io::Error::other(format!("compression algorithm {n}"))),
        };
        // What the decompressor left of the block (nothing, or padding) up to its end marker.
        let drained = copied.and_then(|_| io::copy(&mut chunks, &mut io::sink()).map(|_| ()));
        let fault = chunks.fault.take();
        match (drained, fault) {
            (Ok(()), _) => Ok(()),
            (Err(_), _) if closed => Err(RowsError::Closed),
            (Err(_), Some(Fault::Read(e))) => Err(self.read_error(e, entry)),
            (Err(_), Some(Fault::Frame(detail))) => {
                let at = self.wire.pos;
                Err(self.damaged(entry, at, detail))
            }
            (Err(e), None) => Err(self.damaged(
                entry,
                start,
                format!("its {compression} data cannot be decompressed: {e}"),
            )),
        }
    }
}

/// Skips `n` bytes of the archive: a seek in a file, a read of a stream.
fn skip(w: &mut Wire<ArchiveInput>, n: u64) -> io::Result<()> {
    match &mut w.inner {
        ArchiveInput::File(f) => {
            f.seek_relative(i64::try_from(n).map_err(io::Error::other)?)?;
            w.pos += n;
            Ok(())
        }
        ArchiveInput::Feed(_) => w.skip(n),
    }
}

/// Copies `from` into `out`; `closed` says that `out` failed (not `from`).
fn pump(from: &mut impl Read, out: &mut impl Write, closed: &mut bool) -> io::Result<()> {
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = out.write_all(&buf[..n]) {
            *closed = true;
            return Err(e);
        }
    }
}

/// pg_restore's comment before an entry (`_printTocEntry`, without owners or tablespaces):
/// `-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -`, then the entry's own
/// statement if it has one (`SEQUENCE SET`'s `setval`).
fn entry_header(e: &Entry) -> String {
    let one_line = |s: Option<&str>, hyphen: bool| match s {
        None => (if hyphen { "-" } else { "" }).to_string(),
        Some(s) => s.replace(['\n', '\r'], " "),
    };
    let prefix = if e.had_dumper { "Data for " } else { "" };
    let mut s = format!(
        "--\n-- {prefix}Name: {}; Type: {}; Schema: {}; Owner: -\n--\n\n",
        one_line(e.tag.as_deref(), false),
        one_line(e.desc.as_deref(), false),
        one_line(e.namespace.as_deref(), true),
    );
    if let Some(defn) = e.defn.as_deref().filter(|d| !d.is_empty()) {
        s.push_str(defn);
        s.push_str("\n\n");
    }
    s
}

/// An archive file's path and what to call it, or a stream: where [`ArchiveRows`] reads.
pub enum RowsSource {
    File(PathBuf, std::sync::Arc<ArchiveToc>),
    Feed(Feed),
}

impl RowsSource {
    pub fn open(self) -> Result<ArchiveRows, RowsError> {
        match self {
            RowsSource::File(path, toc) => ArchiveRows::file(&path, toc),
            RowsSource::Feed(feed) => ArchiveRows::feed(feed),
        }
    }
}
