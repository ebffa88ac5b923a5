//! The `*.pgsql` member of Scalingo's `.tar.gz`, streamed out to the dump file; the marker
//! (`dump.pgsql.complete`) that proves a dump whole.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::disk::io_error_is_permanent;
use crate::error::{Classify, FailureKind, StepError};

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
    #[error(
        "the dump in backup archive {archive} expands past {limit} bytes, what the run's disk \
         budget leaves for it (MAX_WORK_DISK, or 90% of the free space, less the archive when it \
         was downloaded beside it): extraction stopped before it fills the disk; free some space \
         or point REPLICATOR_STATE_DIR at a larger disk"
    )]
    TooLarge { archive: PathBuf, limit: u64 },
    #[error("writing the dump to {path}: {source}; check the disk (space, permissions)")]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Classify for ExtractError {
    fn kind(&self) -> FailureKind {
        match self {
            ExtractError::Disk { source, .. } if !io_error_is_permanent(source) => {
                FailureKind::Transient
            }
            _ => FailureKind::Permanent,
        }
    }
}

const PGDMP: &[u8] = b"PGDMP";

/// Streams the `*.pgsql` member of `archive` into `dump` and returns the dump's length; the
/// dump may write `cap` bytes at most ([`crate::machine::dump_cap`]; `None`: no cap).
/// Blocking: run it on a blocking thread.
pub fn extract_dump(archive: &Path, dump: &Path, cap: Option<u64>) -> Result<u64, StepError> {
    let file = fs::File::open(archive).map_err(|source| ExtractError::OpenArchive {
        archive: archive.to_path_buf(),
        source,
    })?;
    Ok(extract_from(file, archive, dump, cap)?)
}

/// The extraction from any reader of the archive's bytes (the file, or the file followed as
/// it is downloaded); `archive` names it in messages. `cap`: the most the dump may write.
pub(crate) fn extract_from(
    source: impl Read,
    archive: &Path,
    dump: &Path,
    cap: Option<u64>,
) -> Result<u64, ExtractError> {
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
    let length = copy_first_pgsql(&mut tar, archive, dump, cap, &sort)?;
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
    cap: Option<u64>,
    sort: &dyn Fn(io::Error) -> ExtractError,
) -> Result<u64, ExtractError> {
    let mut seen = Vec::new();
    for entry in tar.entries().map_err(sort)? {
        let mut entry = entry.map_err(sort)?;
        let name = entry.path().map_err(sort)?.to_string_lossy().into_owned();
        let is_file = entry.header().entry_type().is_file();
        if is_file && name.ends_with(".pgsql") {
            tracing::info!(archive = %archive.display(), member = %name, "extracting the dump");
            // The member's size, from its tar header: a dump the cap cannot hold stops before
            // a byte of it is written.
            if let (Some(limit), Ok(size)) = (cap, entry.header().size())
                && size > limit
            {
                return Err(ExtractError::TooLarge {
                    archive: archive.to_path_buf(),
                    limit,
                });
            }
            return write_dump(&mut entry, archive, &name, dump, cap, sort);
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
    cap: Option<u64>,
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
    // The dump may take what the disk budget leaves for it, no more: one that grows past it
    // (its header lied) is stopped here, not by a full disk.
    let mut member = member.take(
        cap.map(|l| l.saturating_sub(head.len() as u64) + 1)
            .unwrap_or(u64::MAX),
    );
    let copied = match copy_member(&mut member, &mut out, sort, &disk) {
        Ok(n) if cap.is_some_and(|l| head.len() as u64 + n > l) => {
            let _ = fs::remove_file(&partial);
            return Err(ExtractError::TooLarge {
                archive: archive.to_path_buf(),
                limit: cap.expect("checked"),
            });
        }
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

pub(super) fn partial_path(dump: &Path) -> PathBuf {
    with_suffix(dump, ".partial")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Whether a member of a Scalingo archive is its dump (`*.pgsql`): what [`extract_head`] and a
/// streamed archive ([`super::feed`]) look for.
pub(crate) fn is_dump_member<R: io::Read>(entry: &tar::Entry<'_, R>) -> bool {
    entry
        .path()
        .ok()
        .and_then(|p| p.extension().map(|x| x == "pgsql"))
        .unwrap_or(false)
}

/// The beginning of the `*.pgsql` member of an archive of which only `head` (its first bytes)
/// is at hand, written to `dump`: what `check` reads the dump's header and table of contents
/// from without downloading the whole backup. Returns the bytes written (0: no member yet).
/// Blocking.
pub fn extract_head(head: &[u8], dump: &Path) -> Result<u64, StepError> {
    let archive = Path::new("(the backup's first bytes)");
    if head.len() < 2 || head[..2] != [0x1f, 0x8b] {
        return Err(ExtractError::NotGzip {
            archive: archive.to_path_buf(),
        }
        .into());
    }
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(head));
    let Ok(entries) = tar.entries() else {
        return Ok(0);
    };
    for entry in entries {
        // The head ends somewhere: a header cut short ends the walk.
        let Ok(mut entry) = entry else { return Ok(0) };
        if !is_dump_member(&entry) {
            continue;
        }
        let disk = |source| ExtractError::Disk {
            path: dump.to_path_buf(),
            source,
        };
        let mut out = fs::File::create(dump).map_err(disk)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            match entry.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    io::Write::write_all(&mut out, &buf[..n]).map_err(disk)?;
                    written += n as u64;
                }
            }
        }
        return Ok(written);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_path_appends_a_suffix() {
        assert_eq!(
            partial_path(Path::new("/d/x.pgsql")),
            PathBuf::from("/d/x.pgsql.partial")
        );
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
