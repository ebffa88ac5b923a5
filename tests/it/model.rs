//! Model-based test of the REAL driver and the REAL sled store: a `Steps` that simulates the
//! world (the archive on disk, the dump, the target's content) and injects, at random points,
//! transient failures, permanent failures and crashes. A crash is modelled as a `kill -9`
//! is: the `drive` future is dropped where it stands (inside a step, or in the backoff wait),
//! with the step's partial effects left in the world, and a new driver is built over the same
//! state directory; the run is then resumed as `replicator resume` does (`machine::recover`).
//!
//! Checked all along: every persisted state is one the machine can resume from; the world
//! never sees a step out of order (a wipe before the dump was checked, rows loaded over a
//! partial load, a restore before the wipe); once the faults stop, the run reaches `Done`
//! with the target complete. A run that fails (permanent failure, retries exhausted) is
//! followed by a new one, as the next night's would.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use replicator::config::RetryConfig;
use replicator::engine::{Attempt, Driver, DumpChecked, Outcome, Steps};
use replicator::error::StepError;
use replicator::machine::{
    Backup, Event, MaskingCounts, Origin, Phase, Progress, Run, Section, TableLoad, WorkMode,
};
use replicator::state::store::Store;

const SIZE: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Ok,
    Transient,
    Permanent,
    /// The process dies inside the step, after part of its effect.
    Crash,
    /// The step fails transiently and the process dies during the backoff wait.
    CrashInWait,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => Just(Fault::Ok),
        3 => Just(Fault::Transient),
        1 => Just(Fault::Permanent),
        3 => Just(Fault::Crash),
        1 => Just(Fault::CrashInWait),
    ]
}

/// What the target holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Yesterday's replica, untouched.
    Old,
    /// Wiped.
    Empty,
    PreData,
    Unlogged,
    /// Rows, indexes, constraints: complete.
    Loaded,
    /// Some tables' rows in, each with its record (a load a crash cut short).
    Loading,
    /// A step stopped half-way: only a wipe makes it usable again.
    Partial,
}

#[derive(Debug)]
struct World {
    /// Archive bytes on disk, by run (the working files of a run).
    archive: HashMap<String, u64>,
    /// Dumps extracted and checked, by run.
    checked: HashMap<String, bool>,
    target: Target,
    /// Faults still to inject, one per step call; then every step succeeds.
    faults: VecDeque<Fault>,
    violations: Vec<String>,
    crashes: u32,
}

#[derive(Clone)]
struct ModelSteps {
    world: Arc<Mutex<World>>,
    /// Told when the process "dies": the test drops the drive future.
    crash: Arc<Notify>,
}

enum Act {
    Go,
    Fail(StepError),
    Crash,
}

impl ModelSteps {
    fn next_fault(&self) -> Fault {
        self.world
            .lock()
            .unwrap()
            .faults
            .pop_front()
            .unwrap_or(Fault::Ok)
    }

    /// Applies `fault` after `partial` (what a step leaves when it stops half-way).
    fn act(&self, fault: Fault, partial: impl FnOnce(&mut World)) -> Act {
        match fault {
            Fault::Ok => Act::Go,
            Fault::Transient => {
                partial(&mut self.world.lock().unwrap());
                Act::Fail(StepError::transient("injected transient failure"))
            }
            Fault::Permanent => Act::Fail(StepError::permanent("injected permanent failure")),
            Fault::Crash => {
                partial(&mut self.world.lock().unwrap());
                Act::Crash
            }
            Fault::CrashInWait => {
                partial(&mut self.world.lock().unwrap());
                self.world.lock().unwrap().crashes += 1;
                self.crash.notify_one();
                Act::Fail(StepError::transient(
                    "injected transient failure, then a crash",
                ))
            }
        }
    }

    async fn die(&self) -> ! {
        self.world.lock().unwrap().crashes += 1;
        self.crash.notify_one();
        std::future::pending::<()>().await;
        unreachable!()
    }

    fn violation(&self, v: String) {
        self.world.lock().unwrap().violations.push(v);
    }

    fn expect_target(&self, what: &str, expected: &[Target]) {
        let t = self.world.lock().unwrap().target;
        if !expected.contains(&t) {
            self.violation(format!("{what} on a target that is {t:?}"));
        }
    }
}

impl Steps for ModelSteps {
    async fn fetch_backup(&self) -> Result<Backup, StepError> {
        match self.act(self.next_fault(), |_| {}) {
            Act::Go => Ok(Backup {
                id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
                name: "20261123051000_my_app_4553".into(),
                created_at: Some(Utc::now()),
                size: Some(SIZE),
            }),
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn download(
        &self,
        run: &Run,
        _backup: &Backup,
        _attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        let id = run.run_id.clone();
        let grow = |w: &mut World| {
            let a = w.archive.entry(id.clone()).or_default();
            *a = (*a + SIZE / 3).min(SIZE - 1);
        };
        match self.act(self.next_fault(), grow) {
            Act::Go => {
                let mut w = self.world.lock().unwrap();
                let a = w.archive.entry(id.clone()).or_default();
                progress(Progress::Bytes {
                    done: *a,
                    total: Some(SIZE),
                });
                *a = SIZE;
                Ok(())
            }
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn extract_and_check(
        &self,
        run: &Run,
        _attempt: &mut Attempt,
    ) -> Result<DumpChecked, StepError> {
        let on_disk = self.world.lock().unwrap().archive.get(&run.run_id).copied();
        if on_disk != Some(SIZE) {
            self.violation(format!(
                "extracting an incomplete archive ({on_disk:?} bytes)"
            ));
        }
        match self.act(self.next_fault(), |_| {}) {
            Act::Go => {
                self.world
                    .lock()
                    .unwrap()
                    .checked
                    .insert(run.run_id.clone(), true);
                Ok(DumpChecked::default())
            }
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn drop_target(&self, run: &Run, _attempt: &mut Attempt) -> Result<(), StepError> {
        if !self.world.lock().unwrap().checked.contains_key(&run.run_id) {
            self.violation("Dropping before the dump and the target were checked".into());
        }
        match self.act(self.next_fault(), |w| w.target = Target::Partial) {
            Act::Go => {
                self.world.lock().unwrap().target = Target::Empty;
                Ok(())
            }
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn plan(&self, _run: &Run) -> Result<WorkMode, StepError> {
        Ok(WorkMode::Whole {
            needed: Some(SIZE),
            budget: Some(10 * SIZE),
        })
    }

    async fn restore(
        &self,
        _run: &Run,
        section: Section,
        _attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
        events: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<Option<MaskingCounts>, StepError> {
        // The rows' section resumes from the target's records: a load a crash cut short
        // (tables committed with their records) is continued, not redone.
        let (needs, gives, cut): (&[Target], _, _) = match section {
            Section::PreData => (&[Target::Empty], Target::PreData, Target::Partial),
            Section::DataAndPostData => (
                &[Target::Unlogged, Target::Loading],
                Target::Loaded,
                Target::Loading,
            ),
        };
        self.expect_target(&format!("restoring {}", section.label()), needs);
        progress(Progress::Items { done: 1, total: 2 });
        if section == Section::DataAndPostData {
            events(Event::TableLoaded(TableLoad {
                table: "public.t".into(),
                rows: 1,
                bytes: 10,
            }));
        }
        match self.act(self.next_fault(), |w| w.target = cut) {
            Act::Go => {
                self.world.lock().unwrap().target = gives;
                Ok(None)
            }
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn unlog(&self, _run: &Run, _attempt: &mut Attempt) -> Result<(), StepError> {
        self.expect_target("Unlogging", &[Target::PreData]);
        match self.act(self.next_fault(), |w| w.target = Target::Partial) {
            Act::Go => {
                self.world.lock().unwrap().target = Target::Unlogged;
                Ok(())
            }
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn post_restore(&self, _run: &Run, _attempt: &mut Attempt) -> Result<(), StepError> {
        self.expect_target("post-restore SQL", &[Target::Loaded]);
        match self.act(self.next_fault(), |_| {}) {
            Act::Go => Ok(()),
            Act::Fail(e) => Err(e),
            Act::Crash => self.die().await,
        }
    }

    async fn on_interrupt(&self, _run: &Run) {}
}

fn driver(dir: &std::path::Path, steps: ModelSteps, max_retry_count: u32) -> Driver<ModelSteps> {
    Driver {
        state_dir: dir.to_path_buf(),
        store: Store::new(dir),
        steps,
        retry: RetryConfig {
            max_retry_count,
            initial_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(3600),
        },
        force: false,
        max_backup_age: None,
        shutdown: CancellationToken::new(),
        remote: None,
    }
}

/// The phases before the wipe: a run that ends `Failed` in one of them left the target alone.
fn before_dropping(phase: &str) -> bool {
    ["Idle", "FetchingUrl", "Downloading", "Extracting"].contains(&phase)
}

/// Drives runs until one is `Done`, crashing and resuming as the faults say. Returns a
/// description of what happened, for the failure message.
async fn play(faults: Vec<Fault>, max_retry_count: u32) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let world = Arc::new(Mutex::new(World {
        archive: HashMap::new(),
        checked: HashMap::new(),
        target: Target::Old,
        faults: faults.into(),
        violations: Vec::new(),
        crashes: 0,
    }));
    let mut story = Vec::new();
    let mut pending: Option<Run> = None;
    for round in 0..200 {
        // A new process: a new driver over the same state directory.
        let steps = ModelSteps {
            world: world.clone(),
            crash: Arc::new(Notify::new()),
        };
        let crash = steps.crash.clone();
        let d = driver(dir.path(), steps, max_retry_count);
        let run = match pending.take() {
            Some(run) => run,
            None => Run::new(
                format!("run-{round:03}"),
                Origin::Scalingo,
                max_retry_count,
                Utc::now(),
            ),
        };
        let outcome = tokio::select! {
            r = d.drive(run, None) => Some(r.map_err(|e| format!("driver error: {e}"))?),
            _ = crash.notified() => None,
        };
        drop(d);
        let target_before_verdict = world.lock().unwrap().target;
        match outcome {
            Some(Outcome::Finished(run)) => {
                let name = run.phase.name().as_str().to_string();
                story.push(format!("{} ended {name}", run.run_id));
                if let Phase::Done { .. } = run.phase {
                    if target_before_verdict != Target::Loaded {
                        return Err(format!(
                            "Done with a target that is {target_before_verdict:?}\n{story:?}"
                        ));
                    }
                    let v = world.lock().unwrap().violations.clone();
                    if !v.is_empty() {
                        return Err(format!("violations: {v:?}\n{story:?}"));
                    }
                    return Ok(story.join("; "));
                }
                if let Phase::Failed { failed_in, .. } = &run.phase
                    && before_dropping(failed_in.as_str())
                    && target_before_verdict == Target::Old
                {
                    story.push("target untouched".into());
                }
                // The next night: a new run.
                world.lock().unwrap().archive.remove(&run.run_id);
            }
            Some(other) => return Err(format!("unexpected outcome {other:?}\n{story:?}")),
            None => {
                // Reopen the store, as `replicator resume` does, and check what it holds.
                let store = Store::new(dir.path());
                let run = store
                    .current()
                    .map_err(|e| format!("the store cannot be read after a crash: {e}"))?
                    .ok_or("no run persisted after a crash")?;
                story.push(format!("crash in {}", run.phase.name()));
                if run.attempt > run.max_attempts {
                    return Err(format!(
                        "attempt {} > {}\n{story:?}",
                        run.attempt, run.max_attempts
                    ));
                }
                if run.is_terminal() {
                    world.lock().unwrap().archive.remove(&run.run_id);
                    continue;
                }
                let resumed = replicator::machine::recover(run.clone(), chrono::Utc::now())
                    .map_err(|e| {
                        format!(
                            "persisted {:?} cannot be resumed: {e}\n{story:?}",
                            run.phase
                        )
                    })?;
                // A partial schema never goes on from where it stopped; a partial load of the
                // rows does (its tables are committed with their records in the target).
                let rows = matches!(
                    run.phase,
                    Phase::Restoring {
                        section: Section::DataAndPostData,
                        ..
                    }
                );
                let expected = if rows { "Restoring" } else { "Dropping" };
                if matches!(run.phase, Phase::Restoring { .. } | Phase::Unlogging { .. })
                    && resumed.phase.name().as_str() != expected
                {
                    return Err(format!(
                        "{:?} resumes at {:?}, not {expected}",
                        run.phase.name(),
                        resumed.phase.name()
                    ));
                }
                pending = Some(resumed);
            }
        }
    }
    Err(format!("no Done after 200 processes: {story:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_mix_of_faults_and_crashes_ends_done_once_the_faults_stop(
        faults in proptest::collection::vec(fault(), 0..40),
        max_retry_count in 0u32..6,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = rt.block_on(play(faults.clone(), max_retry_count));
        prop_assert!(result.is_ok(), "faults {:?}: {}", faults, result.unwrap_err());
    }
}

/// The one sequence that matters most, spelled out: a crash in every phase in turn.
#[test]
fn a_crash_in_every_phase_in_turn_still_ends_done() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One fault per step call. A crash in the schema's phases resumes at Dropping, so the
    // steps between the wipe and the crashing one run again (and succeed) first; a crash in
    // the rows' section resumes there.
    use Fault::{Crash as C, Ok as K};
    let faults = vec![
        C, // FetchingUrl
        K, C, // Downloading
        K, C, // Extracting
        K, C, // Dropping
        K, C, // Restoring pre-data
        K, K, C, // Unlogging
        K, K, K, C, // Restoring data+post-data
        K, C, // PostRestoreSql
    ];
    let story = rt.block_on(play(faults, 3)).unwrap();
    println!("{story}");
    for phase in [
        "FetchingUrl",
        "Downloading",
        "Extracting",
        "Dropping",
        "Restoring",
        "Unlogging",
        "PostRestoreSql",
    ] {
        assert!(story.contains(&format!("crash in {phase}")), "{story}");
    }
    assert!(story.ends_with("ended Done"), "{story}");
}
