//! The decisions around a run that are not one transition: skip a backup already restored,
//! wait for a backup too old, refuse a download the disk cannot hold, and what to do with a
//! run a crash left behind. Pure, like [`transition`]: the driver (`run`, `resume`, `daemon`)
//! and `check` call the same function for each rule, so `check` says `FAIL` exactly where a
//! run would stop before the wipe.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Backup, Event, Origin, Run, TransitionError, WorkMode, transition};

/// The last `Done` run, when it restored `backup`: a run would restore nothing (unless
/// `force`, `replicator run --force`).
pub fn already_restored<'a>(
    last_done: Option<&'a Run>,
    backup: &Backup,
    force: bool,
) -> Option<&'a Run> {
    if force {
        return None;
    }
    last_done.filter(|r| r.backup().is_some_and(|b| b.id == backup.id))
}

/// A newest `done` backup older than `MAX_BACKUP_AGE_HOURS`: not the night's yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooOld {
    pub age: Duration,
    pub max_age: Duration,
}

/// Whether `backup` is older than `max_age` at `now` (`None`: no limit, no creation time, or
/// young enough).
pub fn too_old(backup: &Backup, max_age: Option<Duration>, now: DateTime<Utc>) -> Option<TooOld> {
    let (max_age, created) = (max_age?, backup.created_at?);
    let age = (now - created).to_std().unwrap_or_default();
    (age > max_age).then_some(TooOld { age, max_age })
}

/// The smallest disk budget (`MAX_WORK_DISK`, or what the free space allows) of a run that
/// writes working files: the dump's head and a few spool segments.
pub const MIN_WORK_DISK: u64 = 16 << 20;

/// A disk that cannot hold even a streamed run's working files.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough free disk in {}: {} MiB may be used, less than the {} MiB even a streamed run needs; free some space or point REPLICATOR_STATE_DIR at a larger disk",
    dir.display(),
    budget >> 20,
    MIN_WORK_DISK >> 20
)]
pub struct DiskTooSmall {
    pub dir: std::path::PathBuf,
    pub budget: u64,
}

/// Whether `budget` (of the disk of `dir`) can hold a run from `origin`: one from Scalingo or
/// a local archive writes the dump's head and spool at least; a live source's head and a
/// local dump's nothing are not refused; an unknown budget is not either.
pub fn enough_disk(
    origin: &Origin,
    budget: Option<u64>,
    dir: &std::path::Path,
) -> Result<(), DiskTooSmall> {
    match (origin, budget) {
        (Origin::Scalingo | Origin::Archive { .. }, Some(budget)) if budget < MIN_WORK_DISK => {
            Err(DiskTooSmall {
                dir: dir.to_path_buf(),
                budget,
            })
        }
        _ => Ok(()),
    }
}

/// Free disk a run needs for a backup of `size` bytes: the archive, then the dump extracted
/// beside it. A custom-format dump is already compressed, so gzip barely shrinks it: the dump
/// is estimated at the archive's size, plus 10% for the gzip and tar overhead and 64 MiB of
/// slack. An estimate, to choose whole or streamed ([`work_mode`]) before the dump's size is
/// known; it caps nothing ([`dump_cap`] does).
pub fn disk_needed(size: u64) -> u64 {
    size + dump_estimate(size)
}

/// The dump's share of [`disk_needed`] for an archive of `size` bytes.
pub fn dump_estimate(size: u64) -> u64 {
    size + size / 10 + 64 * 1024 * 1024
}

/// The most the extraction of a run's dump may write: what its plan's disk budget (`mode`'s,
/// `MAX_WORK_DISK` within the free space) leaves beside the archive, whose size (`archive`:
/// Scalingo's announced size) a download takes from the same disk; a local archive is the
/// user's file, and all the budget is the dump's. A dump past it would fill the disk the
/// budget protects: the extraction stops there, whatever its ratio to the archive (a
/// `pg_dump -Z0` dump gzipped is a fraction of its size, and legitimate).
///
/// `None`, no cap: a streamed run writes no dump (its head is bounded, its spool has its own
/// cap), a dump file is not extracted, and a budget not known bounds nothing.
pub fn dump_cap(origin: &Origin, mode: Option<&WorkMode>, archive: Option<u64>) -> Option<u64> {
    let Some(WorkMode::Whole {
        budget: Some(budget),
        ..
    }) = mode
    else {
        return None;
    };
    match origin {
        Origin::Scalingo => Some(budget.saturating_sub(archive.unwrap_or(0))),
        Origin::Archive { .. } => Some(*budget),
        Origin::Dump { .. } | Origin::Live { .. } => None,
    }
}

/// Whole or streamed: a backup whose archive and dump fit `budget` (`MAX_WORK_DISK`, or what
/// the state directory's free space allows) is downloaded and checked whole before the wipe,
/// as the safe default; one that does not fit streams. `size` is the archive's (Scalingo's
/// announced size, or the file's length); a size or a budget not known keeps the default.
pub fn work_mode(origin: &Origin, size: Option<u64>, budget: Option<u64>) -> WorkMode {
    let needed = match origin {
        Origin::Live { .. } => return WorkMode::Live,
        // The dump is the user's file: nothing is written.
        Origin::Dump { .. } => {
            return WorkMode::Whole {
                needed: Some(0),
                budget,
            };
        }
        // The archive is the user's file: only the dump is written.
        Origin::Archive { .. } => size.map(dump_estimate),
        Origin::Scalingo => size.map(disk_needed),
    };
    match (needed, budget) {
        (Some(needed), Some(budget)) if needed > budget => WorkMode::Streaming { needed, budget },
        (needed, budget) => WorkMode::Whole { needed, budget },
    }
}

/// The run that stands in the way of a new one: the current run of the state directory, when
/// a crash or a stop left it unfinished (`run` refuses it, `run --restart` abandons it,
/// `resume` continues it).
pub fn interrupted(current: Option<&Run>) -> Option<&Run> {
    current.filter(|r| !r.is_terminal())
}

/// An interrupted run given up (`replicator run --restart`): `Failed`, with `why`.
pub fn abandon(run: &Run, why: &str, now: DateTime<Utc>) -> Result<Run, TransitionError> {
    transition(run, Event::PermanentFailure { error: why.into() }, now)
}

/// A run loaded after its process died (or stopped): marked interrupted, then moved to its
/// resume point. The one way a crashed state becomes a definite one.
pub fn recover(run: Run, now: DateTime<Utc>) -> Result<Run, TransitionError> {
    interrupted_then(run, Event::Resume, now)
}

/// A run found unfinished in the target's records, that no process holds, taken over by a
/// process whose state directory does not know it (a new container): marked interrupted,
/// then moved to where the target's records let it go on ([`Event::ResumedFromTarget`]).
pub fn adopt(run: Run, now: DateTime<Utc>) -> Result<Run, TransitionError> {
    interrupted_then(run, Event::ResumedFromTarget, now)
}

/// `run` marked interrupted (unless it already is), then moved on by `resume`.
fn interrupted_then(run: Run, resume: Event, now: DateTime<Utc>) -> Result<Run, TransitionError> {
    let run = if run.interrupted {
        run
    } else {
        transition(&run, Event::Crashed, now)?
    };
    transition(&run, resume, now)
}

/// No new attempt gives the disk more room.
impl crate::error::Classify for DiskTooSmall {
    fn kind(&self) -> crate::error::FailureKind {
        crate::error::FailureKind::Permanent
    }
}

/// Only the operator can confirm the first wipe.
impl crate::error::Classify for UnconfirmedWipe {
    fn kind(&self) -> crate::error::FailureKind {
        crate::error::FailureKind::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Origin, Phase};

    fn backup(id: &str, hours_old: i64, now: DateTime<Utc>) -> Backup {
        Backup {
            id: id.into(),
            name: format!("{id}.tar.gz"),
            size: Some(1 << 20),
            created_at: Some(now - chrono::Duration::hours(hours_old)),
        }
    }

    #[test]
    fn a_backup_that_does_not_fit_the_budget_streams() {
        let gib = 1u64 << 30;
        let needed = disk_needed(gib);
        assert_eq!(
            work_mode(&Origin::Scalingo, Some(gib), Some(needed)),
            WorkMode::Whole {
                needed: Some(needed),
                budget: Some(needed)
            }
        );
        assert_eq!(
            work_mode(&Origin::Scalingo, Some(gib), Some(64 << 20)),
            WorkMode::Streaming {
                needed,
                budget: 64 << 20
            }
        );
        // Unknown size or budget: the safe default.
        assert!(!work_mode(&Origin::Scalingo, None, Some(1)).streams());
        assert!(!work_mode(&Origin::Scalingo, Some(gib), None).streams());
        // A local archive needs room for its dump only; a dump file, for nothing.
        let archive = Origin::Archive {
            path: "/b.tar.gz".into(),
        };
        assert!(!work_mode(&archive, Some(gib), Some(dump_estimate(gib))).streams());
        assert!(work_mode(&archive, Some(gib), Some(dump_estimate(gib) - 1)).streams());
        let dump = Origin::Dump {
            path: "/d.pgsql".into(),
        };
        assert!(!work_mode(&dump, Some(gib), Some(1)).streams());
        let live = Origin::Live {
            source: "u@h:5432/db".into(),
        };
        assert_eq!(work_mode(&live, None, None), WorkMode::Live);
    }

    #[test]
    fn the_dump_may_take_what_the_budget_leaves_beside_the_archive_whatever_its_ratio() {
        let mib = 1u64 << 20;
        let whole = WorkMode::Whole {
            needed: Some(200 * mib),
            budget: Some(1000 * mib),
        };
        let archive = Origin::Archive {
            path: "/b.tar.gz".into(),
        };
        // A download's archive takes its share of the budget; a local archive does not.
        assert_eq!(
            dump_cap(&Origin::Scalingo, Some(&whole), Some(85 * mib)),
            Some(915 * mib)
        );
        assert_eq!(
            dump_cap(&archive, Some(&whole), Some(85 * mib)),
            Some(1000 * mib)
        );
        // Far more than the estimate of a dump 2.5 times its archive.
        assert!(dump_cap(&archive, Some(&whole), Some(85 * mib)).unwrap() > 211 * mib);
        // Nothing is capped that writes no dump, or whose budget is unknown.
        let streaming = WorkMode::Streaming {
            needed: 200 * mib,
            budget: 16 * mib,
        };
        assert_eq!(
            dump_cap(&Origin::Scalingo, Some(&streaming), Some(mib)),
            None
        );
        let unknown = WorkMode::Whole {
            needed: None,
            budget: None,
        };
        assert_eq!(dump_cap(&Origin::Scalingo, Some(&unknown), Some(mib)), None);
        assert_eq!(dump_cap(&Origin::Scalingo, None, Some(mib)), None);
        let dump = Origin::Dump {
            path: "/d.pgsql".into(),
        };
        assert_eq!(dump_cap(&dump, Some(&whole), None), None);
    }

    #[test]
    fn a_disk_below_the_minimum_refuses_the_runs_that_write() {
        let dir = std::path::Path::new("/state");
        let small = Some(MIN_WORK_DISK - 1);
        let e = enough_disk(&Origin::Scalingo, small, dir).unwrap_err();
        assert!(
            e.to_string().contains("in /state: 15 MiB may be used"),
            "{e}"
        );
        let archive = Origin::Archive {
            path: "/b.tar.gz".into(),
        };
        assert!(enough_disk(&archive, small, dir).is_err());
        assert!(enough_disk(&archive, Some(MIN_WORK_DISK), dir).is_ok());
        assert!(enough_disk(&Origin::Scalingo, None, dir).is_ok());
        let live = Origin::Live {
            source: "u@h:5432/db".into(),
        };
        assert!(enough_disk(&live, small, dir).is_ok());
    }

    #[test]
    fn the_rules_decide_without_io() {
        let now = Utc::now();
        let b = backup("b1", 30, now);
        assert_eq!(
            too_old(&b, Some(Duration::from_secs(24 * 3600)), now).map(|t| t.max_age),
            Some(Duration::from_secs(24 * 3600))
        );
        assert!(too_old(&b, Some(Duration::from_secs(31 * 3600)), now).is_none());
        assert!(too_old(&b, None, now).is_none());

        let run = Run::new("r1".into(), Origin::Scalingo, 2, now);
        let run = transition(&run, Event::Start, now).unwrap();
        assert!(interrupted(Some(&run)).is_some());
        let failed = abandon(&run, "abandoned", now).unwrap();
        assert!(matches!(failed.phase, Phase::Failed { .. }));
        assert!(interrupted(Some(&failed)).is_none());
        assert!(already_restored(Some(&failed), &b, false).is_none());
    }
}

/// The variable that allows the first wipe of a database that holds objects and no record of
/// an earlier run of the replicator: it must equal that database's name.
pub const TARGET_CONFIRM_VAR: &str = "REPLICATOR_TARGET_CONFIRM";

/// Whether the target names the source's database: the source addon's database name
/// (`resource_id`, unique on Scalingo) on any host. A target that is the source is refused
/// before anything is touched.
pub fn target_is_source(target_db: &str, source_db: Option<&str>) -> bool {
    source_db.is_some_and(|s| !s.is_empty() && s == target_db)
}

/// What the target holds before its wipe, as far as the rule of [`first_wipe`] is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetContents {
    pub database: String,
    /// Relations the target's role owns (what the wipe removes), outside the system schemas
    /// and the replicator's own.
    pub objects: u64,
    /// `replicator.runs` holds a record: the replicator already restored this database.
    pub replicator_ran: bool,
}

/// Refusal of a first wipe: the database holds objects the replicator never put there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the target database {database} holds {objects} table(s) or other relations and no record of an earlier run of the replicator (table replicator.runs): \
     the first run would wipe them all (DROP OWNED BY CURRENT_USER). If DATABASE_URL names production, fix it; \
     if this database really is the replica to overwrite, set {var}={database}",
    var = TARGET_CONFIRM_VAR
)]
pub struct UnconfirmedWipe {
    pub database: String,
    pub objects: u64,
}

/// The first wipe of a database that holds objects needs `REPLICATOR_TARGET_CONFIRM` set to its
/// name; an empty database, or one the replicator already restored, needs nothing.
pub fn first_wipe(contents: &TargetContents, confirm: Option<&str>) -> Result<(), UnconfirmedWipe> {
    if contents.objects == 0
        || contents.replicator_ran
        || confirm.is_some_and(|c| c == contents.database)
    {
        return Ok(());
    }
    Err(UnconfirmedWipe {
        database: contents.database.clone(),
        objects: contents.objects,
    })
}
