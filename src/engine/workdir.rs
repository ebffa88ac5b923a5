//! A run's working files, in `$REPLICATOR_STATE_DIR/work/<run id>/`: the archive, the dump
//! (with its `.partial` and `.complete` marker, see [`crate::source::extract`]), and the
//! `--use-list` files of the restore. Named here only.

use std::path::{Path, PathBuf};

/// The directory of one run's working files.
#[derive(Clone, Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn of(state_dir: &Path, run_id: &str) -> WorkDir {
        WorkDir(state_dir.join("work").join(run_id))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// The backup archive downloaded from Scalingo.
    pub fn archive(&self) -> PathBuf {
        self.0.join("archive.tar.gz")
    }
    /// The dump extracted from the archive.
    pub fn dump(&self) -> PathBuf {
        self.0.join("dump.pgsql")
    }
    /// The dump's table of contents, as `pg_restore --list` printed it once for this run.
    pub fn toc(&self) -> PathBuf {
        self.0.join("toc.list")
    }
    /// The first bytes of a streamed dump: its header and table of contents (and maybe the
    /// start of its data), what the checks and the schema are read from.
    pub fn head(&self) -> PathBuf {
        self.0.join("head.pgsql")
    }
    /// The spool between a streamed download and the restore.
    pub fn spool(&self) -> PathBuf {
        self.0.join("spool")
    }
    /// The `--use-list` of the rows read from a stream.
    pub fn data_list(&self) -> PathBuf {
        self.0.join("data.list")
    }
    /// The foreign keys left out of the restore, added afterwards (`FK_MODE=trust`).
    pub fn fk_list(&self) -> PathBuf {
        self.0.join("fk.list")
    }
    /// The run's restore plan (`dump::plan`), decided before the wipe.
    pub fn plan(&self) -> PathBuf {
        self.0.join("plan.json")
    }
}

/// Bytes free for an unprivileged user on the file system of `path` (`None`: unknown).
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// [`free_bytes`] of `path`, or of its nearest existing ancestor (a state directory not
/// created yet): where a run would write.
pub fn free_bytes_near(path: &Path) -> Option<u64> {
    free_bytes(nearest_existing(path))
}

/// `path`, or its nearest ancestor that exists (`/` at worst).
pub fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

/// The disk a run's working files may use: `MAX_WORK_DISK` (`max`), within 90% of the free
/// space of the state directory's file system (`None`: neither is known). `run` and `check`
/// both decide whole or streamed on it.
pub fn work_budget(state_dir: &Path, max: Option<u64>) -> Option<u64> {
    let free = free_bytes_near(state_dir).map(|f| f - f / 10);
    match (max, free) {
        (Some(max), Some(free)) => Some(max.min(free)),
        (max, free) => max.or(free),
    }
}
