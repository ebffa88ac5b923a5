//! The layout of a `pg_dump -Fc` (custom-format) archive: its header and its table of
//! contents, read natively. Shared by the check that the dump's data is whole (`verify.rs`)
//! and the reader of its rows (`rows.rs`).
//!
//! The layout (PostgreSQL's `pg_backup_archiver.c` and `pg_backup_custom.c`): the magic
//! `PGDMP`, the archive version (major, minor, revision bytes), the size of an integer and of
//! an offset, the format (1: custom), the compression (before 1.15 an integer level, -1 or
//! 1..9 meaning gzip; from 1.15 an algorithm byte), the creation time (7 integers), the
//! database name, the server's and pg_dump's versions, then the entries. An integer is a sign
//! byte and `int size` little-endian bytes; a string is an integer length (negative: NULL) and
//! its bytes; an offset is a flag byte and `offset size` little-endian bytes.

use std::io::{self, Read};

/// The archive versions whose entries this reader knows: 1.12 (PostgreSQL 9.5) to 1.16
/// (17 and 18).
pub const OLDEST_KNOWN: (u8, u8) = (1, 12);
pub const NEWEST_KNOWN: (u8, u8) = (1, 16);

/// Offset flags (`pg_backup_custom.c`).
const K_OFFSET_POS_NOT_SET: u8 = 1;
const K_OFFSET_POS_SET: u8 = 2;
const K_OFFSET_NO_DATA: u8 = 3;
const ARCHIVE_CUSTOM: u8 = 1;
/// Data block types: a table's data, large objects.
pub const BLK_DATA: u8 = 1;
pub const BLK_BLOBS: u8 = 3;

/// Why the head of an archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The bytes end inside `.0` (a file cut short, or a head not yet whole).
    #[error("it ends inside {0}")]
    Eof(&'static str),
    /// Not an archive this reader knows (not the custom format, an unknown version, bytes
    /// that make no sense).
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Io(io::Error),
}

/// The compression of the archive's data blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
    /// An algorithm byte this reader does not know.
    Unknown(u8),
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip => f.write_str("gzip"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd => f.write_str("zstd"),
            Compression::Unknown(n) => write!(f, "algorithm {n}"),
        }
    }
}

/// The archive's header.
#[derive(Debug, Clone)]
pub struct Header {
    /// (major, minor, revision).
    pub version: (u8, u8, u8),
    pub int_size: usize,
    pub off_size: usize,
    pub compression: Compression,
    pub database: Option<String>,
    /// The version of the server dumped (`-- Dumped from database version`).
    pub server_version: Option<String>,
    /// The version of pg_dump (`-- Dumped by pg_dump version`).
    pub dump_version: Option<String>,
}

impl Header {
    /// `1.16`.
    pub fn version_text(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    fn at_least(&self, major: u8, minor: u8) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }
}

/// Where an entry's data block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPos {
    /// The entry has no data block.
    NoData,
    /// It has one, but pg_dump could not record where (it wrote to a pipe).
    NotSet,
    /// It starts at this byte of the archive.
    At(u64),
}

/// One entry of the table of contents.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    /// pg_dump wrote a data block for it.
    pub had_dumper: bool,
    pub tag: Option<String>,
    pub desc: Option<String>,
    pub section: i64,
    pub defn: Option<String>,
    pub copy_stmt: Option<String>,
    pub namespace: Option<String>,
    pub tablespace: Option<String>,
    pub owner: Option<String>,
    /// Dump ids of the entries this one depends on.
    pub deps: Vec<u32>,
    pub data: DataPos,
}

impl Entry {
    pub fn desc(&self) -> &str {
        self.desc.as_deref().unwrap_or("")
    }

    /// `TABLE DATA public.t (entry 2574)`, for messages.
    pub fn describe(&self) -> String {
        let tag = self.tag.as_deref().unwrap_or("");
        match self.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => format!("{} {ns}.{tag} (entry {})", self.desc(), self.id),
            None => format!("{} {tag} (entry {})", self.desc(), self.id),
        }
    }
}

/// The header and the table of contents.
#[derive(Debug, Clone)]
pub struct ArchiveToc {
    pub header: Header,
    pub entries: Vec<Entry>,
    /// The byte where the data blocks start.
    pub data_start: u64,
}

impl ArchiveToc {
    pub fn entry(&self, id: i64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// `e` as the reader of the rows keeps it, or `None`: only the entries with a data block
    /// and the sequences' values, and the session's settings (`ENCODING`, `STDSTRINGS`,
    /// `SEARCHPATH`), without their dependencies. The rows' section keeps its table of contents
    /// for as long as it runs, and a schema of thousands of tables has three times more other
    /// entries, each with its statement (11 MB of a 2,500-table dump's, heaptrack;
    /// docs/performance.md, Many objects).
    fn for_rows(mut e: Entry) -> Option<Entry> {
        const KEPT: [&str; 5] = [
            "TABLE DATA",
            "SEQUENCE SET",
            "ENCODING",
            "STDSTRINGS",
            "SEARCHPATH",
        ];
        if !(e.had_dumper || KEPT.contains(&e.desc())) {
            return None;
        }
        e.deps = Vec::new();
        Some(e)
    }

    /// Whether the archive says where the data block of each of `ids` starts: pg_dump records
    /// it when it writes to a file, not to a pipe. Only then may each table's rows be read by
    /// a reader of its own; without, each would walk the archive from its first block.
    pub fn blocks_located(&self, ids: &[i64]) -> bool {
        ids.iter()
            .all(|id| self.entry(*id).is_some_and(|e| e.data != DataPos::NotSet))
    }

    /// The `defn` of the first entry of kind `desc` (`ENCODING`, `STDSTRINGS`, `SEARCHPATH`).
    fn special(&self, desc: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.desc() == desc)
            .and_then(|e| e.defn.as_deref())
    }

    /// The dump's encoding, from its `ENCODING` entry (`SET client_encoding = 'UTF8';`).
    pub fn encoding(&self) -> Option<&str> {
        quoted_value(self.special("ENCODING")?)
    }

    /// Whether the dump was made with `standard_conforming_strings` on (`STDSTRINGS`).
    pub fn std_strings(&self) -> bool {
        self.special("STDSTRINGS")
            .and_then(quoted_value)
            .is_some_and(|v| v == "on")
    }

    /// The dump-time `search_path` statement (`SEARCHPATH`), as written.
    pub fn search_path(&self) -> Option<&str> {
        self.special("SEARCHPATH")
    }
}

/// `x` of `SET name = 'x';`.
fn quoted_value(defn: &str) -> Option<&str> {
    let start = defn.find('\'')? + 1;
    let len = defn[start..].find('\'')?;
    Some(&defn[start..start + len])
}

/// The archive's primitive values over any reader, counting the bytes read.
pub struct Wire<R> {
    pub inner: R,
    /// Bytes read so far (the archive's offset when `inner` started at its first byte).
    pub pos: u64,
    pub int_size: usize,
    pub off_size: usize,
}

impl<R: Read> Wire<R> {
    /// A reader of the archive whose first byte is `inner`'s next one.
    pub fn new(inner: R) -> Wire<R> {
        Wire {
            inner,
            pos: 0,
            int_size: 4,
            off_size: 8,
        }
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    pub fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, little-endian (one read: the rows of an
    /// uncompressed archive come in a chunk each, behind one of these).
    pub fn int(&mut self) -> io::Result<i64> {
        let mut buf = [0u8; 9];
        let n = self.int_size.min(8) + 1;
        self.exact(&mut buf[..n])?;
        if self.int_size > 8 {
            self.skip((self.int_size - 8) as u64)?;
        }
        let mut v: i64 = 0;
        for (i, b) in buf[1..n].iter().enumerate() {
            v |= i64::from(*b) << (8 * i);
        }
        Ok(if buf[0] != 0 { v.wrapping_neg() } else { v })
    }

    /// `ReadStr`: a length (negative for NULL), then the bytes (lossy UTF-8: the replicator
    /// restores UTF-8 dumps only, and says so where it reads the encoding).
    pub fn str(&mut self) -> io::Result<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let mut buf = Vec::new();
        // `take`: an absurd length in a damaged file allocates nothing up front.
        let n = (&mut self.inner).take(len as u64).read_to_end(&mut buf)?;
        self.pos += n as u64;
        if (n as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a string past the end",
            ));
        }
        Ok(Some(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }))
    }

    /// `ReadOffset`: a flag byte, then `off_size` bytes.
    pub fn offset(&mut self) -> io::Result<(u8, u64)> {
        let flag = self.byte()?;
        let mut v: u64 = 0;
        for i in 0..self.off_size {
            let b = u64::from(self.byte()?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        Ok((flag, v))
    }

    /// Reads and drops `n` bytes.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a block past the end",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Wire<R> {
    /// Passes over the body of a data block whose header (type `kind`, dump id) was just
    /// read: a table's chunks, or large objects' oids each with their chunks, up to the end
    /// markers. `skip` passes over `n` bytes (a seek in a file, a read of a stream). A block of
    /// an unknown type, or a negative chunk length, is `InvalidData`.
    pub fn skip_block_body(
        &mut self,
        kind: u8,
        skip: impl Fn(&mut Self, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let chunks = |w: &mut Self| loop {
            match w.int()? {
                0 => return Ok(()),
                n if n < 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a chunk of length {n}"),
                    ));
                }
                n => skip(w, n as u64)?,
            }
        };
        match kind {
            BLK_DATA => chunks(self),
            BLK_BLOBS => {
                while self.int()? != 0 {
                    chunks(self)?;
                }
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown block type {kind}"),
            )),
        }
    }
}

fn at(what: &'static str) -> impl Fn(io::Error) -> HeadError {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HeadError::Eof(what)
        } else {
            HeadError::Io(e)
        }
    }
}

/// Reads the header and the table of contents (`ReadHead`, `ReadToc`) from the archive's
/// first byte, leaving `w` at the start of the data blocks; sets `w`'s integer sizes.
pub fn read_toc<R: Read>(w: &mut Wire<R>) -> Result<ArchiveToc, HeadError> {
    read_toc_admitting(w, None)
}

/// [`read_toc`] keeping only what the rows need (`ArchiveToc::for_rows`), each other entry
/// dropped as it is read: the whole table of contents of a dump of 10,000 tables is never in
/// memory at once (45 MB of the run's 150 MB heap peak, heaptrack, when it was read whole then
/// trimmed).
pub fn read_rows_toc<R: Read>(w: &mut Wire<R>) -> Result<ArchiveToc, HeadError> {
    read_toc_admitting(w, Some(ArchiveToc::for_rows))
}

/// [`read_toc`], each entry through `admit` if given (kept, changed or dropped).
fn read_toc_admitting<R: Read>(
    w: &mut Wire<R>,
    admit: Option<fn(Entry) -> Option<Entry>>,
) -> Result<ArchiveToc, HeadError> {
    let head = at("its header");
    let mut magic = [0u8; 5];
    w.exact(&mut magic).map_err(&head)?;
    if &magic != b"PGDMP" {
        return Err(HeadError::Unknown("no PGDMP magic".into()));
    }
    let version = (
        w.byte().map_err(&head)?,
        w.byte().map_err(&head)?,
        w.byte().map_err(&head)?,
    );
    if (version.0, version.1) < OLDEST_KNOWN || (version.0, version.1) > NEWEST_KNOWN {
        return Err(HeadError::Unknown(format!(
            "archive version {}.{}",
            version.0, version.1
        )));
    }
    w.int_size = w.byte().map_err(&head)? as usize;
    w.off_size = w.byte().map_err(&head)? as usize;
    if !(1..=8).contains(&w.int_size) || !(1..=16).contains(&w.off_size) {
        return Err(HeadError::Unknown("implausible integer sizes".into()));
    }
    if w.byte().map_err(&head)? != ARCHIVE_CUSTOM {
        return Err(HeadError::Unknown("not the custom format".into()));
    }
    let mut header = Header {
        version,
        int_size: w.int_size,
        off_size: w.off_size,
        compression: Compression::None,
        database: None,
        server_version: None,
        dump_version: None,
    };
    header.compression = if header.at_least(1, 15) {
        match w.byte().map_err(&head)? {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Lz4,
            3 => Compression::Zstd,
            n => Compression::Unknown(n),
        }
    } else {
        // A level: 0 is none, anything else (-1: the default) gzip.
        match w.int().map_err(&head)? {
            0 => Compression::None,
            _ => Compression::Gzip,
        }
    };
    for _ in 0..7 {
        w.int().map_err(&head)?; // creation time
    }
    header.database = w.str().map_err(&head)?;
    header.server_version = w.str().map_err(&head)?;
    header.dump_version = w.str().map_err(&head)?;

    let toc = at("its table of contents");
    let count = w.int().map_err(&toc)?;
    if !(0..10_000_000).contains(&count) {
        return Err(HeadError::Unknown(format!("implausible TOC count {count}")));
    }
    // Room for every entry only when every entry is kept: a filtered read allocates for what
    // it keeps.
    let mut entries = match admit {
        None => Vec::with_capacity(count.min(100_000) as usize),
        Some(_) => Vec::new(),
    };
    for _ in 0..count {
        let id = w.int().map_err(&toc)?;
        let had_dumper = w.int().map_err(&toc)? != 0;
        w.str().map_err(&toc)?; // table oid
        w.str().map_err(&toc)?; // oid
        let tag = w.str().map_err(&toc)?;
        let desc = w.str().map_err(&toc)?;
        let section = w.int().map_err(&toc)?;
        let defn = w.str().map_err(&toc)?;
        w.str().map_err(&toc)?; // drop statement
        let copy_stmt = w.str().map_err(&toc)?;
        let namespace = w.str().map_err(&toc)?;
        let tablespace = w.str().map_err(&toc)?;
        if header.at_least(1, 14) {
            w.str().map_err(&toc)?; // table access method
        }
        if header.at_least(1, 16) {
            w.int().map_err(&toc)?; // relkind
        }
        let owner = w.str().map_err(&toc)?;
        w.str().map_err(&toc)?; // with oids
        let mut deps = Vec::new();
        // Dependencies: dump ids as strings, up to a NULL.
        while let Some(dep) = w.str().map_err(&toc)? {
            if let Ok(d) = dep.trim().parse() {
                deps.push(d);
            }
        }
        let (flag, pos) = w.offset().map_err(&toc)?;
        let data = match flag {
            K_OFFSET_POS_SET => DataPos::At(pos),
            K_OFFSET_POS_NOT_SET => DataPos::NotSet,
            K_OFFSET_NO_DATA => DataPos::NoData,
            other => return Err(HeadError::Unknown(format!("offset flag {other}"))),
        };
        let entry = Entry {
            id,
            had_dumper,
            tag,
            desc,
            section,
            defn,
            copy_stmt,
            namespace,
            tablespace,
            owner,
            deps,
            data,
        };
        match admit {
            None => entries.push(entry),
            Some(admit) => entries.extend(admit(entry)),
        }
    }
    if admit.is_some() {
        entries.shrink_to_fit();
    }
    Ok(ArchiveToc {
        header,
        entries,
        data_start: w.pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_as_pg_dump_writes_them() {
        // int 5, int -3, string "ab", NULL string, offset set at 0x0102.
        let bytes: &[u8] = &[
            0, 5, 0, 0, 0, 1, 3, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 1, 1, 0, 0, 0, 2, 2, 1, 0, 0,
            0, 0, 0, 0,
        ];
        let mut w = Wire::new(bytes);
        assert_eq!(w.int().unwrap(), 5);
        assert_eq!(w.int().unwrap(), -3);
        assert_eq!(w.str().unwrap().as_deref(), Some("ab"));
        assert_eq!(w.str().unwrap(), None);
        assert_eq!(w.offset().unwrap(), (2, 0x0102));
        assert_eq!(w.pos, bytes.len() as u64);
    }

    #[test]
    fn a_string_longer_than_the_bytes_is_an_eof() {
        let bytes: &[u8] = &[0, 0xff, 0xff, 0xff, 0x7f, b'a'];
        let e = Wire::new(bytes).str().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn not_an_archive_is_unknown() {
        let mut w = Wire::new(&b"not a dump at all"[..]);
        assert!(matches!(read_toc(&mut w), Err(HeadError::Unknown(_))));
        let mut w = Wire::new(&b"PGDMP\x01"[..]);
        assert!(matches!(read_toc(&mut w), Err(HeadError::Eof(_))));
    }

    #[test]
    fn quoted_values() {
        assert_eq!(
            quoted_value("SET client_encoding = 'UTF8';\n"),
            Some("UTF8")
        );
        assert_eq!(quoted_value("SET x = on;"), None);
    }
}
