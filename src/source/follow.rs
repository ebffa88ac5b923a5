//! Extraction while downloading: a blocking thread follows the growing archive file (woken by
//! a `Condvar`) and extracts the dump from it as it lands.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::extract::{ExtractError, discard_extracted, extract_from, record_complete_dump};

/// How long the follower sleeps at the end of the file when no wake-up comes (a missed
/// notification costs at most this).
const FOLLOW_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrowthState {
    /// The downloader is still writing: the end of the file is not the end of the archive.
    Growing,
    /// Every byte is in the file (flushed and synced): its end is the archive's.
    Complete,
    /// The download failed or was abandoned: the follower stops at its next read.
    Aborted,
}

/// How the archive file grows: what the downloader tells the thread that follows it.
pub(super) struct Growth {
    state: Mutex<GrowthState>,
    pub(super) more: Condvar,
}

impl Growth {
    fn set(&self, to: GrowthState) {
        let mut state = self.state.lock().expect("growth lock");
        // Aborted is final: a complete archive whose follower is abandoned still stops it.
        if *state != GrowthState::Aborted {
            *state = to;
        }
        drop(state);
        self.more.notify_all();
    }

    fn get(&self) -> GrowthState {
        *self.state.lock().expect("growth lock")
    }
}

/// A `Read` over an archive file that is still being written: at the end of the file it waits
/// for more until the download is complete (then it is the end) or aborted (then an error).
struct FollowFile {
    file: fs::File,
    growth: Arc<Growth>,
}

impl Read for FollowFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Read before the file: `Complete` is set only once every byte is in it, so a
            // read that then finds nothing is at the true end.
            let state = self.growth.get();
            if state == GrowthState::Aborted {
                return Err(io::Error::other(
                    "the download stopped before the archive was complete",
                ));
            }
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() || state == GrowthState::Complete {
                return Ok(n);
            }
            let guard = self.growth.state.lock().expect("growth lock");
            if *guard == GrowthState::Growing {
                drop(self.growth.more.wait_timeout(guard, FOLLOW_POLL));
            }
        }
    }
}

/// The thread extracting the dump from the archive as it is downloaded. Dropping it (the
/// download failed, or its future was dropped on shutdown) stops the thread at its next
/// read; the thread then removes its `.partial`.
pub(super) struct Follower {
    pub(super) growth: Arc<Growth>,
    task: tokio::task::JoinHandle<Result<u64, ExtractError>>,
}

impl Follower {
    /// Creates the (empty) archive file, so that the thread can open it before the body's
    /// first byte, and starts the thread. `cap`: the most the dump may write
    /// ([`crate::machine::dump_cap`]).
    pub(super) fn start(archive: &Path, dump: &Path, cap: Option<u64>) -> io::Result<Follower> {
        fs::File::create(archive)?;
        let file = fs::File::open(archive)?;
        let growth = Arc::new(Growth {
            state: Mutex::new(GrowthState::Growing),
            more: Condvar::new(),
        });
        let input = FollowFile {
            file,
            growth: growth.clone(),
        };
        let (archive, dump) = (archive.to_path_buf(), dump.to_path_buf());
        let task = tokio::task::spawn_blocking(move || extract_from(input, &archive, &dump, cap));
        Ok(Follower { growth, task })
    }

    /// The archive is whole (`archive_bytes`): lets the thread read to its end, waits for
    /// it, and writes the dump's marker. `None` (and nothing left behind) when the extraction
    /// failed: the `Extracting` step then extracts again and reports what is wrong.
    pub(super) async fn finish(mut self, archive_bytes: u64, dump: &Path) -> Option<u64> {
        self.growth.set(GrowthState::Complete);
        let outcome = match (&mut self.task).await {
            Ok(Ok(dump_bytes)) => record_complete_dump(dump, archive_bytes, dump_bytes)
                .map(|()| dump_bytes)
                .map_err(|e| format!("writing the marker of {}: {e}", dump.display())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the extraction thread failed: {e}")),
        };
        match outcome {
            Ok(dump_bytes) => Some(dump_bytes),
            Err(why) => {
                tracing::warn!(dump = %dump.display(), "extracting the dump during the download failed ({why}); the Extracting step extracts it again");
                discard_extracted(dump);
                None
            }
        }
    }
}

impl Follower {
    /// The download failed: stops the thread and waits for it to remove its `.partial`.
    pub(super) async fn abandon(mut self) {
        self.growth.set(GrowthState::Aborted);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.growth.set(GrowthState::Aborted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn growth() -> Arc<Growth> {
        Arc::new(Growth {
            state: Mutex::new(GrowthState::Growing),
            more: Condvar::new(),
        })
    }

    #[test]
    fn a_followed_file_is_read_as_it_grows_and_ends_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut writer = fs::File::create(&path).unwrap();
        writer.write_all(b"ab").unwrap();
        let growth = growth();
        let mut reader = FollowFile {
            file: fs::File::open(&path).unwrap(),
            growth: growth.clone(),
        };
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        // The reader is at the end of "ab" and must wait, not stop there.
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(b"cd").unwrap();
        growth.more.notify_all();
        std::thread::sleep(Duration::from_millis(100));
        writer.write_all(b"ef").unwrap();
        growth.set(GrowthState::Complete);
        assert_eq!(got.join().unwrap().unwrap(), b"abcdef");
    }

    #[test]
    fn a_followed_file_errors_once_the_download_is_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        fs::write(&path, b"xy").unwrap();
        let growth = growth();
        let mut reader = FollowFile {
            file: fs::File::open(&path).unwrap(),
            growth: growth.clone(),
        };
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all)
        });
        growth.set(GrowthState::Aborted);
        // Complete after Aborted does not revive it.
        growth.set(GrowthState::Complete);
        assert!(got.join().unwrap().is_err());
    }
}
