//! Which run a command starts: a new one, the interrupted one (resumed), the one the target's
//! records hold unfinished (adopted by a new container), or none (refused, with why). One pure
//! rule, [`choose_run`], for `run`, `restore`, `resume` and the daemon: `app::run_to_drive`
//! reads what it needs (this state directory's current run, the target's record) and does
//! what it decides.

use super::{Origin, Run, interrupted};

/// What a command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// `run`, `restore`: a new run; an interrupted one stands in the way.
    New,
    /// `run --restart`: a new run; an interrupted one is abandoned first.
    Restart,
    /// `resume`, and the daemon at its start: the interrupted run, or the one the target
    /// records unfinished.
    Resume,
    /// A tick of the daemon's schedule: the interrupted run, else a new one.
    Tick,
}

/// The target's record of its current run, as far as the choice goes.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'a> {
    pub run: &'a Run,
    /// A replicator holds the target's lock now: the run is going on elsewhere.
    pub held: bool,
    /// The file of a run from a local archive or dump is on this machine (`true` for a run
    /// from Scalingo or a live source: nothing of theirs needs to be here).
    pub file_here: bool,
}

impl<'a> Recorded<'a> {
    /// `run` as the target records it; `exists` says whether a path is on this machine.
    pub fn of(run: &'a Run, held: bool, exists: impl Fn(&std::path::Path) -> bool) -> Self {
        let file_here = match &run.origin {
            Origin::Archive { path } | Origin::Dump { path } => exists(path),
            Origin::Scalingo | Origin::Live { .. } => true,
        };
        Recorded {
            run,
            held,
            file_here,
        }
    }
}

/// The run to start.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// A new run.
    New,
    /// Abandon this interrupted run ([`super::abandon`]), then a new run.
    AbandonThenNew(Run),
    /// This state directory's interrupted run, moved to its resume point ([`super::recover`]).
    Resume(Run),
    /// The target's record of an unfinished run this state directory does not know, taken
    /// over ([`super::adopt`]).
    Adopt(Run),
    /// None.
    Refused(Refusal),
}

/// Why no run starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// `run`: this run was interrupted (`resume` continues it, `run --restart` abandons it).
    Interrupted(Run),
    /// `resume`: no run was ever recorded, here or in the target.
    NothingRecorded,
    /// `resume`: the last run finished.
    Finished(Run),
    /// `resume`: the target's unfinished run is going on now, in another replicator.
    GoingOn(Run),
    /// `resume`: the target's unfinished run restores a file that is not on this machine.
    FileGone(Run),
}

/// The run a command that `asked` starts, from this state directory's current run (`local`)
/// and the target's record of its current run (`recorded`; read only for
/// [`Asked::Resume`], when `local` is not interrupted).
pub fn choose_run(asked: Asked, local: Option<&Run>, recorded: Option<Recorded<'_>>) -> Choice {
    let stopped = interrupted(local).cloned();
    match (asked, stopped) {
        (Asked::New, Some(run)) => Choice::Refused(Refusal::Interrupted(run)),
        (Asked::Restart, Some(run)) => Choice::AbandonThenNew(run),
        (Asked::Resume | Asked::Tick, Some(run)) => Choice::Resume(run),
        (Asked::New | Asked::Restart | Asked::Tick, None) => Choice::New,
        (Asked::Resume, None) => {
            // An unfinished run of the target that this directory does not know (its own
            // copy, finished here, wins over a record the target missed).
            let unknown = recorded
                .filter(|r| !r.run.is_terminal() && local.is_none_or(|l| l.run_id != r.run.run_id));
            match (unknown, local) {
                (Some(r), _) if r.held => Choice::Refused(Refusal::GoingOn(r.run.clone())),
                (Some(r), _) if !r.file_here => Choice::Refused(Refusal::FileGone(r.run.clone())),
                (Some(r), _) => Choice::Adopt(r.run.clone()),
                (None, Some(last)) => Choice::Refused(Refusal::Finished(last.clone())),
                (None, None) => Choice::Refused(Refusal::NothingRecorded),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Event, transition};
    use chrono::Utc;

    fn run(id: &str, origin: Origin) -> Run {
        Run::new(id.into(), origin, 2, Utc::now())
    }

    /// A run that started and stopped (not terminal).
    fn stopped(id: &str, origin: Origin) -> Run {
        transition(&run(id, origin), Event::Start, Utc::now()).unwrap()
    }

    fn finished(id: &str) -> Run {
        let r = stopped(id, Origin::Scalingo);
        transition(
            &r,
            Event::PermanentFailure { error: "x".into() },
            Utc::now(),
        )
        .unwrap()
    }

    fn here(run: &Run) -> Recorded<'_> {
        Recorded::of(run, false, |_| true)
    }

    #[test]
    fn a_new_run_starts_unless_an_interrupted_one_stands_in_the_way() {
        let a = stopped("a", Origin::Scalingo);
        let done = finished("d");
        assert_eq!(choose_run(Asked::New, None, None), Choice::New);
        assert_eq!(choose_run(Asked::New, Some(&done), None), Choice::New);
        assert_eq!(
            choose_run(Asked::New, Some(&a), None),
            Choice::Refused(Refusal::Interrupted(a.clone()))
        );
        assert_eq!(
            choose_run(Asked::Restart, Some(&a), None),
            Choice::AbandonThenNew(a.clone())
        );
        assert_eq!(choose_run(Asked::Restart, Some(&done), None), Choice::New);
        // A tick resumes what a crash left, else starts anew; it never adopts.
        assert_eq!(
            choose_run(Asked::Tick, Some(&a), None),
            Choice::Resume(a.clone())
        );
        let t = stopped("t", Origin::Scalingo);
        assert_eq!(
            choose_run(Asked::Tick, Some(&done), Some(here(&t))),
            Choice::New
        );
    }

    #[test]
    fn resume_takes_the_interrupted_run_then_the_targets_record() {
        let a = stopped("a", Origin::Scalingo);
        let t = stopped("t", Origin::Scalingo);
        let done = finished("d");
        // The local interrupted run first, whatever the target says.
        assert_eq!(
            choose_run(Asked::Resume, Some(&a), Some(here(&t))),
            Choice::Resume(a.clone())
        );
        // A new container: the target's unfinished run is taken over.
        assert_eq!(
            choose_run(Asked::Resume, None, Some(here(&t))),
            Choice::Adopt(t.clone())
        );
        assert_eq!(
            choose_run(Asked::Resume, Some(&done), Some(here(&t))),
            Choice::Adopt(t.clone())
        );
        // Unless another replicator holds it, or its file is not here.
        assert_eq!(
            choose_run(Asked::Resume, None, Some(Recorded::of(&t, true, |_| true))),
            Choice::Refused(Refusal::GoingOn(t.clone()))
        );
        let f = stopped(
            "f",
            Origin::Archive {
                path: "/gone/b.tar.gz".into(),
            },
        );
        assert_eq!(
            choose_run(
                Asked::Resume,
                None,
                Some(Recorded::of(&f, false, |_| false))
            ),
            Choice::Refused(Refusal::FileGone(f.clone()))
        );
        assert_eq!(
            choose_run(Asked::Resume, None, Some(Recorded::of(&f, false, |_| true))),
            Choice::Adopt(f.clone())
        );
        // Nothing unfinished: said with the last run, if any.
        assert_eq!(
            choose_run(Asked::Resume, None, None),
            Choice::Refused(Refusal::NothingRecorded)
        );
        assert_eq!(
            choose_run(Asked::Resume, Some(&done), Some(here(&done))),
            Choice::Refused(Refusal::Finished(done.clone()))
        );
        // The same run, finished here but recorded unfinished in the target (its last
        // write missed): this directory's copy wins.
        let mut recorded_late = done.clone();
        recorded_late.phase = t.phase.clone();
        assert_eq!(
            choose_run(Asked::Resume, Some(&done), Some(here(&recorded_late))),
            Choice::Refused(Refusal::Finished(done.clone()))
        );
    }
}
