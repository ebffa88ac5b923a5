//! The state store: the current run and the history of past runs, in sled.
//!
//! sled lets one process at a time open a directory, and `status` must work while a run is
//! live in another process. So nobody keeps the store open: every read and every write opens
//! it, does its work, flushes and closes. A run writes at each transition and at most every
//! couple of seconds for progress, so the store is free nearly all the time; an open that
//! finds it busy waits a little and tries again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::machine::{Phase, Run};

/// How many finished runs the history keeps.
pub const HISTORY_LEN: usize = 30;

const CURRENT_KEY: &[u8] = b"current";
const HISTORY_TREE: &[u8] = b"history";
/// Finished runs counted by outcome since the state directory was created (the history forgets
/// runs past [`HISTORY_LEN`]; these counts do not): `/metrics`' `replicator_runs_total`.
const OUTCOMES_TREE: &[u8] = b"outcomes";
/// Bumped when the stored form changes in a way old readers cannot take.
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the state store in {dir}: {source}; check that REPLICATOR_STATE_DIR points at a writable directory"
    )]
    Open { dir: PathBuf, source: sled::Error },
    #[error(
        "the state store in {dir} stayed busy for {waited:?}: another replicator process keeps it open; retry in a moment"
    )]
    Busy { dir: PathBuf, waited: Duration },
    #[error("cannot write the state store in {dir}: {source}")]
    Write { dir: PathBuf, source: sled::Error },
    #[error(
        "the state store in {dir} holds a record this version cannot read ({source}); move the directory away to start afresh"
    )]
    Corrupt {
        dir: PathBuf,
        source: serde_json::Error,
    },
}

/// The local store failing is not a passing failure of the network: the run stops, saying so.
impl crate::error::Classify for StoreError {
    fn kind(&self) -> crate::error::FailureKind {
        crate::error::FailureKind::Permanent
    }
}

/// The store of one state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Gives the pages of memory freed since the last call back to the system. Each open of the
/// store allocates several MiB of sled's buffers and page table, freed when it closes; glibc
/// keeps freed pages resident for the next allocation, so without this a run's resident
/// memory was its live data, plus what the last step freed, plus sled's buffers on top, at
/// every progress tick. Measured on 2,500 tables (`cargo bench --bench replicate -- --many
/// 25x100`, alternated, 3 pairs): peak RSS 51.9-59.7 MiB with it, 69.9-77.9 MiB without, no
/// change in time (docs/performance.md, Many objects). A call costs a walk of the heap's free
/// chunks, twice per save.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heaps to the system; it is
    // thread-safe and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("store"),
        }
    }

    fn open(&self) -> Result<sled::Db, StoreError> {
        release_freed_memory();
        let started = Instant::now();
        let patience = Duration::from_secs(10);
        loop {
            match sled::Config::new().path(&self.dir).open() {
                Ok(db) => {
                    if db.get(FORMAT_KEY).ok().flatten().is_none() {
                        db.insert(FORMAT_KEY, FORMAT)
                            .map_err(|source| StoreError::Write {
                                dir: self.dir.clone(),
                                source,
                            })?;
                    }
                    return Ok(db);
                }
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("WouldBlock")
                        || e.to_string().contains("lock") =>
                {
                    if started.elapsed() > patience {
                        return Err(StoreError::Busy {
                            dir: self.dir.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    wait_without_stalling_the_runtime(Duration::from_millis(15));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        dir: self.dir.clone(),
                        source,
                    });
                }
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Run, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            dir: self.dir.clone(),
            source,
        })
    }

    /// The current (or last) run, if there has been one.
    pub fn current(&self) -> Result<Option<Run>, StoreError> {
        if !self.dir.exists() {
            return Ok(None);
        }
        let db = self.open()?;
        let value = db.get(CURRENT_KEY).map_err(|source| StoreError::Open {
            dir: self.dir.clone(),
            source,
        })?;
        value.map(|v| self.decode(&v)).transpose()
    }

    /// Persists `run` as the current run; a finished run also enters the history.
    pub fn save(&self, run: &Run) -> Result<(), StoreError> {
        let write = |source| StoreError::Write {
            dir: self.dir.clone(),
            source,
        };
        let db = self.open()?;
        let bytes = serde_json::to_vec(run).expect("a Run always serializes");
        db.insert(CURRENT_KEY, bytes.clone()).map_err(write)?;
        if run.is_terminal() {
            let history = db.open_tree(HISTORY_TREE).map_err(write)?;
            // Keys sort by start time, then id, so the history reads in order.
            let key = format!("{}/{}", run.started_at.to_rfc3339(), run.run_id);
            let first_time = history
                .insert(key.as_bytes(), bytes)
                .map_err(write)?
                .is_none();
            if first_time {
                let outcomes = db.open_tree(OUTCOMES_TREE).map_err(write)?;
                let outcome = run.phase.name().as_str().to_ascii_lowercase();
                outcomes
                    .update_and_fetch(outcome.as_bytes(), |old| {
                        let n = old.map_or(0, decode_count) + 1;
                        Some(n.to_be_bytes().to_vec())
                    })
                    .map_err(write)?;
            }
            while history.len() > HISTORY_LEN {
                match history.pop_min().map_err(write)? {
                    Some(_) => {}
                    None => break,
                }
            }
        }
        db.flush().map_err(write)?;
        drop(db);
        release_freed_memory();
        Ok(())
    }

    /// Forgets the current run (a skipped run that had nothing before it); the history stays.
    pub fn clear_current(&self) -> Result<(), StoreError> {
        let write = |source| StoreError::Write {
            dir: self.dir.clone(),
            source,
        };
        let db = self.open()?;
        db.remove(CURRENT_KEY).map_err(write)?;
        db.flush().map_err(write)?;
        Ok(())
    }

    /// Finished runs, newest first.
    pub fn history(&self) -> Result<Vec<Run>, StoreError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let db = self.open()?;
        let tree = db
            .open_tree(HISTORY_TREE)
            .map_err(|source| StoreError::Open {
                dir: self.dir.clone(),
                source,
            })?;
        let mut runs = Vec::new();
        for item in tree.iter().rev() {
            let (_, v) = item.map_err(|source| StoreError::Open {
                dir: self.dir.clone(),
                source,
            })?;
            runs.push(self.decode(&v)?);
        }
        Ok(runs)
    }

    /// Finished runs by outcome (`done`, `failed`) since the state directory was created.
    pub fn outcome_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut counts = BTreeMap::new();
        if !self.dir.exists() {
            return Ok(counts);
        }
        let read = |source| StoreError::Open {
            dir: self.dir.clone(),
            source,
        };
        let db = self.open()?;
        for item in db.open_tree(OUTCOMES_TREE).map_err(read)?.iter() {
            let (k, v) = item.map_err(read)?;
            counts.insert(String::from_utf8_lossy(&k).into_owned(), decode_count(&v));
        }
        Ok(counts)
    }

    /// The last run that ended `Done` (to skip a backup that is already restored).
    pub fn last_done(&self) -> Result<Option<Run>, StoreError> {
        Ok(self
            .history()?
            .into_iter()
            .find(|r| matches!(r.phase, Phase::Done { .. })))
    }
}

fn decode_count(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// Waits `d` for another process to close the store. The store is called from the driver's
/// async code: on tokio's multi-threaded runtime the wait tells tokio that this thread blocks
/// (`block_in_place`), so that the runtime's other tasks (the lock's keepalive, signals, the
/// web server) move to another thread instead of stalling behind it.
fn wait_without_stalling_the_runtime(d: Duration) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| std::thread::sleep(d))
        }
        _ => std::thread::sleep(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Event, Origin, Run, transition};
    use chrono::Utc;

    #[test]
    fn saves_reads_and_keeps_thirty_finished_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.current().unwrap().is_none());
        for i in 0..35 {
            let now = Utc::now() + chrono::Duration::seconds(i);
            let run = Run::new(format!("run-{i:02}"), Origin::Scalingo, 0, now);
            let run = transition(&run, Event::Start, now).unwrap();
            store.save(&run).unwrap();
            assert_eq!(store.current().unwrap().unwrap(), run);
            let failed = transition(
                &run,
                Event::PermanentFailure {
                    error: "no done backup".into(),
                },
                now,
            )
            .unwrap();
            store.save(&failed).unwrap();
            // Saved again (a record read back, a resumed writer): counted once.
            store.save(&failed).unwrap();
        }
        let history = store.history().unwrap();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].run_id, "run-34");
        assert_eq!(history[29].run_id, "run-05");
        // The counts keep what the history forgot.
        let counts = store.outcome_counts().unwrap();
        assert_eq!(counts.get("failed"), Some(&35), "{counts:?}");
        assert_eq!(counts.get("done"), None);
    }

    #[test]
    fn a_store_held_by_another_handle_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let run = Run::new("r".into(), Origin::Scalingo, 0, Utc::now());
        store.save(&run).unwrap();
        let held = store.open().unwrap();
        let reader = {
            let store = store.clone();
            std::thread::spawn(move || store.current())
        };
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
        assert_eq!(reader.join().unwrap().unwrap().unwrap().run_id, "r");
    }

    mod roundtrip {
        use super::*;
        use crate::machine::{Backup, Progress};
        use proptest::prelude::*;

        fn event(i: u8, now: chrono::DateTime<Utc>) -> Event {
            let backup = Backup {
                id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
                name: "20261123051000_my_app_4553".into(),
                created_at: Some(now),
                size: Some(123_456),
            };
            match i % 7 {
                0 => Event::Fetched(backup),
                1 | 2 => Event::Succeeded,
                3 => Event::TransientFailure {
                    error: "HTTP 503".into(),
                    retry_at: now + chrono::Duration::seconds(30),
                },
                4 => Event::Crashed,
                5 => Event::Resume,
                _ => Event::Progress(Progress::Bytes {
                    done: i as u64 * 1000,
                    total: Some(123_456),
                }),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Every state a run goes through is read back from sled exactly as it was saved.
            #[test]
            fn every_state_round_trips_through_the_store(events in proptest::collection::vec(any::<u8>(), 0..25)) {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::new(dir.path());
                let now = Utc::now();
                let mut run = Run::new("rt".into(), Origin::Scalingo, 3, now);
                run = transition(&run, Event::Start, now).unwrap();
                store.save(&run).unwrap();
                prop_assert_eq!(store.current().unwrap().unwrap(), run.clone());
                for i in events {
                    if let Ok(next) = transition(&run, event(i, now), now) {
                        run = next;
                        store.save(&run).unwrap();
                        prop_assert_eq!(store.current().unwrap().unwrap(), run.clone());
                    }
                }
            }
        }
    }
}
