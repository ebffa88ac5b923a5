//! Before the wipe, the dump's data is whole: a dump cut in its data still lists (its table of
//! contents is at the start), and `pg_restore` would only fail half-way through the rows,
//! after the wipe. The custom format records where each table's data starts; the data of the
//! last one must be whole up to its end marker.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::archive::{self, DataPos, Entry, HeadError, Wire};
use crate::error::StepError;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "the dump {path} is truncated: {detail}; pg_restore would fail part-way, after the target \
         was wiped; the backup is incomplete: choose another backup (or download it again)"
    )]
    Truncated { path: PathBuf, detail: String },
    #[error("cannot read the dump {path}: {source}; check the disk and REPLICATOR_STATE_DIR")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl crate::error::Classify for PreflightError {
    fn kind(&self) -> crate::error::FailureKind {
        crate::error::FailureKind::Permanent
    }
}

/// The dependencies pg_dump recorded for each entry (dump id to the ids it needs): what tells
/// that a view reads a table, or that a partition belongs to a table.
pub type Dependencies = HashMap<u32, Vec<u32>>;

/// Checks that the data of `dump` (a `pg_dump -Fc` file) is whole. Reads the header and the
/// table of contents, then the chunk headers of the last data block (or, when pg_dump could
/// not record offsets, of every block): a few reads and seeks, not a decompression. The same
/// read gives the entries' dependencies (`None` when this reader does not know the archive's
/// layout).
pub async fn check_dump_complete(dump: &Path) -> Result<Option<Dependencies>, StepError> {
    let path = dump.to_path_buf();
    let verdict = tokio::task::spawn_blocking(move || verify(&path))
        .await
        .map_err(|e| StepError::transient(format!("the dump check task failed: {e}")))?;
    match verdict {
        Ok((DataVerdict::Whole { data_blocks }, deps)) => {
            tracing::info!(dump = %dump.display(), data_blocks, "the dump's data is whole");
            Ok(deps)
        }
        Ok((DataVerdict::Unknown(why), deps)) => {
            // Never fail a run on what this reader does not understand: pg_restore has the
            // last word.
            tracing::warn!(dump = %dump.display(), "could not check that the dump's data is whole: {why}");
            Ok(deps)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the dump's data is whole, as far as its blocks tell.
#[derive(Debug, PartialEq, Eq)]
enum DataVerdict {
    Whole { data_blocks: usize },
    Unknown(String),
}

struct Reader {
    w: Wire<BufReader<File>>,
    len: u64,
}

/// An unexpected end of file: the one thing that proves truncation.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

impl Reader {
    fn new(file: File, len: u64) -> Reader {
        Reader {
            w: Wire::new(BufReader::with_capacity(1 << 20, file)),
            len,
        }
    }

    /// Walks one data block from its header to its end marker; returns its dump id.
    fn walk_block(&mut self) -> io::Result<(u8, i64)> {
        let kind = self.w.byte()?;
        let id = self.w.int()?;
        let len = self.len;
        // A seek, not a read: a block's bytes are passed over, never looked at.
        self.w.skip_block_body(kind, |w, n| {
            if w.inner.stream_position()? + n > len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
            }
            w.inner.seek_relative(n as i64)
        })?;
        Ok((kind, id))
    }
}

fn verify(path: &Path) -> Result<(DataVerdict, Option<Dependencies>), PreflightError> {
    let read_err = |source| PreflightError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut rd = Reader::new(file, len);
    let truncated = |detail: String| PreflightError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let mut deps = None;
    let walked = read_toc(&mut rd).and_then(|entries| {
        deps = Some(dependencies_of(&entries));
        walk(&mut rd, &entries)
    });
    match walked {
        Ok(v) => Ok((v, deps)),
        Err(Problem::Eof(at)) => Err(truncated(format!("it ends ({len} bytes) inside {at}"))),
        Err(Problem::Missing(detail)) => Err(truncated(detail)),
        Err(Problem::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Ok((DataVerdict::Unknown(e.to_string()), deps))
        }
        Err(Problem::Io(e)) => Err(read_err(e)),
        Err(Problem::Unknown(why)) => Ok((DataVerdict::Unknown(why), deps)),
    }
}

enum Problem {
    Eof(&'static str),
    Missing(String),
    Io(io::Error),
    Unknown(String),
}

fn at(what: &'static str) -> impl Fn(io::Error) -> Problem {
    move |e| {
        if is_eof(&e) {
            Problem::Eof(what)
        } else {
            Problem::Io(e)
        }
    }
}

/// Reads the archive's header and table of contents (`archive.rs`), leaving `rd` at the
/// start of the data.
fn read_toc(rd: &mut Reader) -> Result<Vec<Entry>, Problem> {
    let toc = archive::read_toc(&mut rd.w).map_err(|e| match e {
        HeadError::Eof(at) => Problem::Eof(at),
        HeadError::Unknown(why) => Problem::Unknown(why),
        HeadError::Io(e) => Problem::Io(e),
    })?;
    Ok(toc.entries)
}

/// Where the header and table of contents of the archive that starts `head` end: `Ok(None)`
/// while `head` is too short to hold them all, `Err` when it is not a custom-format archive
/// this reader knows. A stream's data starts there.
pub fn toc_end(head: &Path) -> Result<Option<u64>, String> {
    let file = File::open(head).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut rd = Reader::new(file, len);
    match read_toc(&mut rd) {
        Ok(_) => Ok(Some(
            rd.w.inner.stream_position().map_err(|e| e.to_string())?,
        )),
        Err(Problem::Eof(_)) => Ok(None),
        Err(Problem::Io(e)) if is_eof(&e) => Ok(None),
        Err(Problem::Io(e)) => Err(e.to_string()),
        Err(Problem::Missing(m) | Problem::Unknown(m)) => Err(m),
    }
}

/// [`Dependencies`] of `dump` alone (`check` reads a dump's first bytes only, whose data
/// cannot be whole). `None` when the archive is not one this reader knows.
pub fn dependencies(dump: &Path) -> Option<Dependencies> {
    let file = File::open(dump).ok()?;
    let len = file.metadata().ok()?.len();
    let mut rd = Reader::new(file, len);
    Some(dependencies_of(&read_toc(&mut rd).ok()?))
}

fn dependencies_of(entries: &[Entry]) -> Dependencies {
    entries
        .iter()
        .filter_map(|e| Some((u32::try_from(e.id).ok()?, e.deps.clone())))
        .collect()
}

/// Walks the data of `entries` (read by [`read_toc`], `rd` at the end of the table of
/// contents).
fn walk(rd: &mut Reader, entries: &[Entry]) -> Result<DataVerdict, Problem> {
    // (dump id, offset if recorded) of every entry that has data.
    let with_data: Vec<(i64, Option<u64>)> = entries
        .iter()
        .filter_map(|e| match e.data {
            DataPos::NoData => None,
            DataPos::NotSet => Some((e.id, None)),
            DataPos::At(pos) => Some((e.id, Some(pos))),
        })
        .collect();
    let data_start = rd.w.inner.stream_position().map_err(Problem::Io)?;
    if with_data.is_empty() {
        return Ok(DataVerdict::Whole { data_blocks: 0 });
    }

    if with_data.iter().all(|(_, p)| p.is_some()) {
        // Offsets recorded: every block must start inside the file, and the last one must
        // run to its end marker. A cut anywhere is either before some block's start or inside
        // the last block that starts before it, which is the last block.
        if let Some((id, pos)) = with_data
            .iter()
            .filter_map(|(id, p)| p.map(|p| (*id, p)))
            .find(|(_, p)| *p >= rd.len)
        {
            return Err(Problem::Missing(format!(
                "the data of entry {id} should start at byte {pos}, but the file has {} bytes",
                rd.len
            )));
        }
        let (id, pos) = with_data
            .iter()
            .filter_map(|(id, p)| p.map(|p| (*id, p)))
            .max_by_key(|(_, p)| *p)
            .expect("non-empty");
        rd.w.inner.seek(SeekFrom::Start(pos)).map_err(Problem::Io)?;
        let (_, got) = rd.walk_block().map_err(at("the data of its last table"))?;
        if got != id {
            return Err(Problem::Unknown(format!(
                "block at {pos} is entry {got}, not {id}"
            )));
        }
        return Ok(DataVerdict::Whole {
            data_blocks: with_data.len(),
        });
    }

    // No offsets (pg_dump wrote to a pipe): walk every block from the end of the TOC.
    rd.w.inner
        .seek(SeekFrom::Start(data_start))
        .map_err(Problem::Io)?;
    let mut seen = std::collections::HashSet::new();
    loop {
        let pos = rd.w.inner.stream_position().map_err(Problem::Io)?;
        if pos == rd.len {
            break;
        }
        let (_, id) = rd.walk_block().map_err(at("its data"))?;
        seen.insert(id);
    }
    let missing: Vec<i64> = with_data
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !seen.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(Problem::Missing(format!(
            "the data of {} entr{} (ids {:?}) is missing from its end",
            missing.len(),
            if missing.len() == 1 { "y" } else { "ies" },
            &missing[..missing.len().min(5)]
        )));
    }
    Ok(DataVerdict::Whole {
        data_blocks: with_data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_judged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pgsql");
        std::fs::write(&p, b"not a dump at all").unwrap();
        assert!(matches!(verify(&p), Ok((DataVerdict::Unknown(_), _))));
    }

    #[test]
    fn a_header_cut_short_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pgsql");
        std::fs::write(&p, b"PGDMP\x01\x0e\x00\x04\x08\x01").unwrap();
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, PreflightError::Truncated { .. }), "{e}");
    }
}
