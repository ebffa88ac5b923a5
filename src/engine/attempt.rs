//! The working state of one drive of a run: what this process holds while it runs the run's
//! steps, and that is never persisted (the store keeps the [`Run`]; this dies with the
//! process). The driver makes one per [`super::Driver::drive`] and lends it to each step:
//! nothing of it hides in the steps themselves.

use std::path::PathBuf;

use super::workdir::WorkDir;
use crate::dump::feed::Feed;
use crate::machine::{Origin, Run, WorkMode};
use crate::replica::LockHandle;

/// What one process holds of a run while it drives it.
pub struct Attempt {
    /// The run's working files (`$REPLICATOR_STATE_DIR/work/<run id>`).
    pub work: WorkDir,
    /// The target's lock, taken before the drive (`app::lock`) and watched while it lasts
    /// (`None`: no lock to prove, as in a test's drive).
    pub lock: Option<LockHandle>,
    /// The stream of a run that streams, between the step that read its head and the one
    /// that loads its rows. A stream is read once: a step that consumes it takes it.
    feed: Option<Feed>,
}

impl Attempt {
    pub fn new(work: WorkDir, lock: Option<LockHandle>) -> Attempt {
        Attempt {
            work,
            lock,
            feed: None,
        }
    }

    /// Keeps `feed` for the run's later steps.
    pub fn keep_feed(&mut self, feed: Feed) {
        self.feed = Some(feed);
    }

    /// The feed this drive keeps, if any (a resumed run, a new process, has none).
    pub fn take_feed(&mut self) -> Option<Feed> {
        self.feed.take()
    }

    /// Whether this drive holds a stream.
    pub fn has_feed(&self) -> bool {
        self.feed.is_some()
    }

    /// Where the archive of `run` is: the file the user gave, or the download's.
    pub fn archive_path(&self, run: &Run) -> PathBuf {
        match &run.origin {
            Origin::Archive { path } => path.clone(),
            _ => self.work.archive(),
        }
    }

    /// Where the dump of `run` is (a file the user gave, the one extracted in the state dir,
    /// or the head of a streamed one: every step before the rows reads only its head).
    pub fn dump_path(&self, run: &Run) -> PathBuf {
        if run.mode.as_ref().is_some_and(WorkMode::streams) {
            return self.work.head();
        }
        match &run.origin {
            Origin::Dump { path } => path.clone(),
            _ => self.work.dump(),
        }
    }
}
