//! Whether a run is live: a lock file held with `flock` for the life of the process that runs
//! it. The kernel drops the lock when the process dies, even on `kill -9`, so a lock that can
//! be taken means nobody is running.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error(
        "cannot use the lock file {path}: {source}; check that REPLICATOR_STATE_DIR is writable"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while this process runs a replication; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct LiveLock {
    _file: File,
}

/// Who holds the lock, when someone does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
}

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("run.lock")
}

fn open(path: &Path) -> Result<File, LivenessError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LivenessError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// The state directory holds production data (the archive, the dump) and the run's records:
/// the directory and its subdirectories become `0700`, every file in it `0600` (new ones are
/// made so by the process's umask, `cli::entry`; this repairs what an older version left).
/// Best effort: a file that cannot be changed is logged, not fatal.
pub fn make_private(state_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![state_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!("could not make {} private (0700): {e}", dir.display());
            continue;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Err(e) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!("could not make {} private (0600): {e}", path.display());
            }
        }
    }
}

/// Takes the lock for this process, or says who has it.
pub fn acquire(state_dir: &Path) -> Result<Result<LiveLock, Holder>, LivenessError> {
    std::fs::create_dir_all(state_dir).map_err(|source| LivenessError::Io {
        path: state_dir.to_path_buf(),
        source,
    })?;
    make_private(state_dir);
    let path = lock_path(state_dir);
    let mut file = open(&path)?;
    if !flock(&file, libc::LOCK_EX) {
        return Ok(Err(Holder {
            pid: read_pid(&mut file),
        }));
    }
    let io = |source| LivenessError::Io {
        path: path.clone(),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(Ok(LiveLock { _file: file }))
}

/// Who is running a replication in this state directory now, if anyone.
pub fn holder(state_dir: &Path) -> Result<Option<Holder>, LivenessError> {
    let path = lock_path(state_dir);
    if !path.exists() {
        return Ok(None);
    }
    let mut file = open(&path)?;
    if flock(&file, libc::LOCK_SH) {
        // We got it, so nobody holds it; release at once (drop closes the descriptor).
        return Ok(None);
    }
    Ok(Some(Holder {
        pid: read_pid(&mut file),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_seen_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()).unwrap(), None);
        let lock = acquire(dir.path()).unwrap().unwrap();
        let seen = holder(dir.path()).unwrap().unwrap();
        assert_eq!(seen.pid, Some(std::process::id()));
        assert!(acquire(dir.path()).unwrap().is_err());
        drop(lock);
        assert_eq!(holder(dir.path()).unwrap(), None);
    }
}
