use super::*;
use crate::error::FailureKind;
use proptest::prelude::*;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T05:10:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn backup() -> Backup {
    Backup {
        id: "5f0c5e6d7a8b9c0d1e2f3a4b".into(),
        name: "20261124051000_pix_1234".into(),
        created_at: Some(t0()),
        size: Some(4096),
    }
}

#[test]
fn a_clean_run_passes_every_phase_in_order() {
    let mut run = Run::new("r1".into(), Origin::Scalingo, 3, t0());
    let mut names = vec![run.phase.name()];
    let events = [
        Event::Start,
        Event::Fetched(backup()),
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
        Event::Succeeded,
    ];
    for (i, e) in events.into_iter().enumerate() {
        run = transition(&run, e, t0() + chrono::Duration::seconds(i as i64 + 1)).unwrap();
        names.push(run.phase.name());
    }
    use PhaseName::*;
    assert_eq!(
        names,
        vec![
            Idle,
            FetchingUrl,
            Downloading,
            Extracting,
            Dropping,
            Restoring,
            Unlogging,
            Restoring,
            Switching,
            PostRestoreSql,
            Done
        ]
    );
    assert_eq!(run.finished_at, Some(t0() + chrono::Duration::seconds(10)));
    assert_eq!(run.duration_of("downloading"), Some(1.0));
    assert_eq!(run.durations.len(), 9);
}

#[test]
fn a_local_archive_starts_at_extracting() {
    let run = Run::new(
        "r".into(),
        Origin::Archive {
            path: "/tmp/b.tar.gz".into(),
        },
        0,
        t0(),
    );
    let run = transition(&run, Event::Start, t0()).unwrap();
    assert_eq!(run.phase.name(), PhaseName::Extracting);
    assert_eq!(run.backup().unwrap().name, "b.tar.gz");
}

#[test]
fn retries_are_bounded_by_max_retry_count() {
    let mut run = Run::new("r".into(), Origin::Scalingo, 2, t0());
    run = transition(&run, Event::Start, t0()).unwrap();
    for _ in 0..2 {
        run = transition(
            &run,
            Event::TransientFailure {
                error: "HTTP 500".into(),
                retry_at: t0(),
            },
            t0(),
        )
        .unwrap();
        assert_eq!(run.phase, Phase::FetchingUrl);
    }
    assert_eq!(run.attempt, 3);
    run = transition(
        &run,
        Event::TransientFailure {
            error: "HTTP 500".into(),
            retry_at: t0(),
        },
        t0(),
    )
    .unwrap();
    assert_eq!(run.phase.name(), PhaseName::Failed);
    assert!(run.error.unwrap().contains("MAX_RETRY_COUNT"));
}

// ---- property tests over arbitrary event sequences ----

#[derive(Clone, Debug)]
enum Ev {
    Succeed,
    Transient,
    Permanent,
    Crash,
    Resume,
    Progress(u64),
    Stray(u8),
    /// Whole (false) or streamed (true).
    Plan(bool),
    Table(u64),
    Analyzed(u64),
    Cut,
    FromTarget,
    /// `Checked` with a refresh: swap (true) or wipe (false).
    Check(bool),
    /// `Switched`, sent out of any phase (refused but out of `Switching`).
    Switch(i64),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => Just(Ev::Succeed),
        3 => Just(Ev::Transient),
        1 => Just(Ev::Permanent),
        2 => Just(Ev::Crash),
        2 => Just(Ev::Resume),
        1 => (0u64..10_000).prop_map(Ev::Progress),
        1 => (0u8..3).prop_map(Ev::Stray),
        2 => any::<bool>().prop_map(Ev::Plan),
        2 => (0u64..1000).prop_map(Ev::Table),
        1 => (0u64..5).prop_map(Ev::Analyzed),
        1 => Just(Ev::Cut),
        1 => Just(Ev::FromTarget),
        2 => any::<bool>().prop_map(Ev::Check),
        1 => (0i64..100).prop_map(Ev::Switch),
    ]
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        4 => Just(Origin::Scalingo),
        1 => Just(Origin::Archive { path: "/data/b.tar.gz".into() }),
        1 => Just(Origin::Dump { path: "/data/d.pgsql".into() }),
        1 => Just(Origin::Live { source: "app@db:5432/prod".into() }),
    ]
}

/// Turns an abstract event into the one the driver would send in the current phase.
fn concrete(run: &Run, ev: &Ev, now: DateTime<Utc>) -> Event {
    let swaps = run
        .refresh
        .as_ref()
        .is_some_and(|r| r.mode == RefreshMode::Swap);
    match ev {
        Ev::Succeed if run.phase == Phase::FetchingUrl => Event::Fetched(backup()),
        // The driver's `Switching` step in swap mode says when the switch committed.
        Ev::Succeed if matches!(run.phase, Phase::Switching { .. }) && swaps => {
            Event::Switched { at: now }
        }
        Ev::Succeed => Event::Succeeded,
        Ev::Transient => Event::TransientFailure {
            error: "HTTP 503 from db-api".into(),
            retry_at: now + chrono::Duration::seconds(60),
        },
        Ev::Permanent => Event::PermanentFailure {
            error: "401 on token exchange".into(),
        },
        Ev::Crash => Event::Crashed,
        Ev::Resume => Event::Resume,
        Ev::Progress(n) => Event::Progress(Progress::Bytes {
            done: *n,
            total: Some(10_000),
        }),
        Ev::Stray(0) => Event::Start,
        Ev::Stray(1) => Event::Fetched(backup()),
        Ev::Stray(_) => Event::Succeeded,
        Ev::Plan(false) => Event::Planned(WorkMode::Whole {
            needed: Some(100),
            budget: Some(1000),
        }),
        Ev::Plan(true) => Event::Planned(WorkMode::Streaming {
            needed: 1000,
            budget: 100,
        }),
        Ev::Table(rows) => Event::TableLoaded(TableLoad {
            table: "public.t".into(),
            rows: *rows,
            bytes: rows * 10,
        }),
        Ev::Analyzed(n) => Event::TablesAnalyzed(*n),
        Ev::Cut => Event::StreamCut {
            error: "the download was cut".into(),
            retry_at: now + chrono::Duration::seconds(30),
        },
        Ev::FromTarget => Event::ResumedFromTarget,
        Ev::Check(swap) => Event::Checked {
            left_out: Vec::new(),
            refresh: Some(refresh(*swap)),
        },
        Ev::Switch(secs) => Event::Switched {
            at: now - chrono::Duration::seconds(*secs),
        },
    }
}

fn refresh(swap: bool) -> RunRefresh {
    let mut r = RunRefresh::new(if swap {
        RefreshMode::Swap
    } else {
        RefreshMode::Wipe
    });
    if swap {
        r.schemas = vec!["public".into()];
    } else {
        r.why_not_swap = Some("schema public belongs to another role".into());
    }
    r.readers = vec![ReaderKept {
        role: "metabase".into(),
        gets: "SELECT on 42 tables, default privileges".into(),
    }];
    r
}

#[test]
fn a_swap_records_its_switch_time_and_a_wipe_its_wipe_time() {
    let at = |s: i64| t0() + chrono::Duration::seconds(s);
    for swap in [true, false] {
        let mut run = Run::new("r".into(), Origin::Scalingo, 3, t0());
        run = transition(&run, Event::Start, at(1)).unwrap();
        run = transition(&run, Event::Fetched(backup()), at(2)).unwrap();
        run = transition(&run, Event::Succeeded, at(3)).unwrap();
        let checked = Event::Checked {
            left_out: Vec::new(),
            refresh: Some(refresh(swap)),
        };
        run = transition(&run, checked, at(4)).unwrap();
        assert_eq!(run.refresh, Some(refresh(swap)));
        for s in 5..9 {
            run = transition(&run, Event::Succeeded, at(s)).unwrap();
        }
        assert_eq!(run.phase.name(), PhaseName::Switching);
        let end = if swap {
            // The time the target recorded, not the transition's.
            Event::Switched { at: at(9) }
        } else {
            Event::Succeeded
        };
        run = transition(&run, end, at(10)).unwrap();
        run = transition(&run, Event::Succeeded, at(11)).unwrap();
        assert_eq!(run.phase.name(), PhaseName::Done);
        let r = run.refresh.clone().unwrap();
        if swap {
            assert_eq!((r.switched_at, r.wiped_at), (Some(at(9)), None));
            assert_eq!(
                r.describe(true),
                "swap of public: switched 2026-11-24 05:10:09 UTC"
            );
        } else {
            // Left `Dropping` (the wipe) at 5.
            assert_eq!((r.switched_at, r.wiped_at), (None, Some(at(5))));
            assert!(
                r.describe(true)
                    .starts_with("wipe (not swap: schema public")
            );
        }
        assert_eq!(
            r.readers_line(),
            "metabase (SELECT on 42 tables, default privileges)"
        );
        // Switched applies out of Switching only.
        assert!(transition(&run, Event::Switched { at: at(12) }, at(12)).is_err());
    }
}

fn is_data(phase: &Phase) -> bool {
    matches!(
        phase,
        Phase::Restoring {
            section: Section::DataAndPostData,
            ..
        }
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn invariants_hold_over_any_event_sequence(
        origin in origin(),
        retries in 0u32..6,
        events in proptest::collection::vec(ev(), 0..80),
    ) {
        let mut now = t0();
        let mut run = Run::new("prop".into(), origin.clone(), retries, now);
        run = transition(&run, Event::Start, now).unwrap();
        // Trace of phases entered, for the ordering invariants.
        let mut trace: Vec<Phase> = vec![run.phase.clone()];
        let mut extracted_ok = false;
        // A stray `Succeeded` out of `Switching` (not what the driver sends in swap mode).
        let mut stray_switch = false;

        for ev in events {
            now += chrono::Duration::seconds(7);
            let event = concrete(&run, &ev, now);
            let before = run.clone();
            let result = transition(&run, event.clone(), now);

            // Invariant 7: every state the store would keep round-trips.
            let json = serde_json::to_string(&before).unwrap();
            let back: Run = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &before);

            match result {
                Err(_) => {
                    // Invariant 5, and only terminal runs or mismatched events are refused.
                    let mismatched = matches!(event, Event::Start)
                        || (matches!(event, Event::Fetched(_)) && before.phase != Phase::FetchingUrl)
                        || (matches!(event, Event::Succeeded) && before.phase == Phase::FetchingUrl)
                        || (matches!(event, Event::Planned(_))
                            && !matches!(before.phase, Phase::Downloading{..} | Phase::Extracting{..}))
                        || (matches!(event, Event::TableLoaded(_) | Event::LoadStarted(_) | Event::TablesAnalyzed(_))
                            && !is_data(&before.phase))
                        || (matches!(event, Event::StreamCut{..})
                            && !before.mode.as_ref().is_some_and(WorkMode::streams))
                        || (matches!(event, Event::Checked{..})
                            && !matches!(before.phase, Phase::Extracting{..}))
                        || (matches!(event, Event::Switched{..})
                            && !matches!(before.phase, Phase::Switching{..}));
                    prop_assert!(before.is_terminal() || mismatched,
                        "refused {:?} in {:?}", event, before.phase);
                    continue;
                }
                Ok(after) => {
                    prop_assert!(!before.is_terminal(), "a terminal run changed");
                    if matches!(before.phase, Phase::Extracting { .. })
                        && matches!(event, Event::Succeeded | Event::Checked{..})
                    {
                        extracted_ok = true;
                    }
                    if matches!(before.phase, Phase::Switching{..}) && event == Event::Succeeded {
                        stray_switch = true;
                    }
                    // Invariant 9: the refresh is the one `Checked` said; the switch time is
                    // set by `Switched` out of `Switching` only, the wipe time by leaving
                    // `Dropping` in wipe mode only.
                    let (b, a) = (before.refresh.clone(), after.refresh.clone());
                    let switched = |r: &Option<RunRefresh>| r.as_ref().and_then(|r| r.switched_at);
                    let wiped = |r: &Option<RunRefresh>| r.as_ref().and_then(|r| r.wiped_at);
                    match &event {
                        Event::Checked { refresh, .. } => prop_assert_eq!(&a, refresh),
                        Event::Switched { at } => {
                            prop_assert_eq!(switched(&a), Some(*at));
                            prop_assert_eq!(after.phase.name(), PhaseName::PostRestoreSql);
                            prop_assert_eq!(wiped(&a), wiped(&b));
                        }
                        _ => {
                            prop_assert_eq!(switched(&a), switched(&b));
                            prop_assert_eq!(a.as_ref().map(|r| r.mode), b.as_ref().map(|r| r.mode));
                            if wiped(&a) != wiped(&b) {
                                prop_assert!(matches!(before.phase, Phase::Dropping { .. }), "wiped out of {:?}", before.phase);
                                prop_assert_eq!(&event, &Event::Succeeded);
                                prop_assert_eq!(a.as_ref().map(|r| r.mode), Some(RefreshMode::Wipe));
                                prop_assert_eq!(wiped(&a), Some(now));
                            }
                        }
                    }
                    if after.phase != before.phase
                        || matches!(event, Event::Resume | Event::TransientFailure{..} | Event::StreamCut{..} | Event::ResumedFromTarget)
                    {
                        trace.push(after.phase.clone());
                    }
                    // A run that goes back before its checks must pass them again.
                    if matches!(after.phase, Phase::FetchingUrl | Phase::Downloading{..} | Phase::Extracting{..})
                        && after.phase != before.phase
                    {
                        extracted_ok = false;
                    }
                    // The new events change what they say and nothing else.
                    match &event {
                        Event::Planned(mode) => {
                            prop_assert_eq!(&after.phase, &before.phase);
                            prop_assert_eq!(after.mode.as_ref(), Some(mode));
                        }
                        Event::TableLoaded(t) => {
                            prop_assert_eq!(&after.phase, &before.phase);
                            let (b, a) = (before.load.clone().unwrap_or_default(), after.load.clone().unwrap());
                            prop_assert_eq!(a.tables_done, b.tables_done + 1);
                            prop_assert_eq!(a.rows, b.rows + t.rows);
                            prop_assert!(a.tables_done <= a.tables_total);
                        }
                        Event::TablesAnalyzed(n) => {
                            prop_assert_eq!(&after.phase, &before.phase);
                            let (b, a) = (before.load.clone().unwrap_or_default(), after.load.clone().unwrap());
                            prop_assert_eq!(a.analyzed, b.analyzed + n);
                            prop_assert_eq!(a.tables_done, b.tables_done);
                        }
                        Event::StreamCut{..} => {
                            // Only a streaming run is cut, and it keeps what the target holds.
                            prop_assert!(before.mode.as_ref().is_some_and(WorkMode::streams));
                            if is_data(&before.phase) && !after.is_terminal()
                                && !matches!(before.origin, Origin::Live{..})
                            {
                                prop_assert_eq!(&after.phase, &before.phase);
                            }
                        }
                        Event::ResumedFromTarget => {
                            // A new container: the rows resume where the target's records
                            // say; anything before them starts again from the archive.
                            prop_assert!(!after.interrupted);
                            match (&before.phase, &before.origin) {
                                (p, Origin::Scalingo | Origin::Archive{..} | Origin::Dump{..})
                                    if is_data(p) => prop_assert_eq!(&after.phase, p),
                                (Phase::Switching{..} | Phase::PostRestoreSql{..} | Phase::Idle
                                    | Phase::FetchingUrl, _) => {
                                    prop_assert_eq!(&after.phase, &before.phase)
                                }
                                _ => prop_assert!(matches!(
                                    after.phase,
                                    Phase::Downloading{..} | Phase::Extracting{..}
                                ), "{:?} resumed from the target to {:?}", before.phase, after.phase),
                            }
                        }
                        _ => {}
                    }
                    // Invariant 2.
                    if matches!(after.phase, Phase::Dropping { .. }) {
                        prop_assert!(extracted_ok, "Dropping before the dump was checked");
                    }
                    // Invariant 3.
                    prop_assert!(after.attempt <= after.max_attempts);
                    prop_assert!(after.attempt >= before.attempt);
                    if matches!(event, Event::PermanentFailure{..}) {
                        prop_assert_eq!(after.phase.name(), PhaseName::Failed);
                        prop_assert_eq!(after.attempt, before.attempt);
                    }
                    // Invariant 4: after a crash/retry, the schema's phases resume at Dropping;
                    // the rows resume in place (their records are in the target), except from a
                    // live source, which starts again from a new pg_dump.
                    if matches!(event, Event::Resume | Event::TransientFailure{..} | Event::StreamCut{..})
                        && !after.is_terminal()
                    {
                        let live = matches!(before.origin, Origin::Live{..});
                        match &before.phase {
                            Phase::Dropping{..} | Phase::Restoring{..} | Phase::Unlogging{..} if live => {
                                prop_assert_eq!(after.phase.name(), PhaseName::Downloading);
                            }
                            p if is_data(p) => prop_assert_eq!(&after.phase, p),
                            Phase::Restoring{..} | Phase::Unlogging{..} => {
                                prop_assert_eq!(after.phase.name(), PhaseName::Dropping);
                            }
                            other => prop_assert_eq!(&after.phase, other),
                        }
                    }
                    // A backup, once chosen, never changes within a run.
                    if let (Some(a), Some(b)) = (before.backup(), after.backup()) {
                        prop_assert_eq!(a, b);
                    }
                    run = after;
                }
            }
        }

        // Invariant 1: Done only after Dropping -> PreData -> DataAndPostData, uninterrupted.
        if matches!(run.phase, Phase::Done { .. }) {
            let last_drop = trace.iter().rposition(|p| matches!(p, Phase::Dropping{..}));
            prop_assert!(last_drop.is_some(), "Done without Dropping");
            let tail: Vec<PhaseName> = trace[last_drop.unwrap()..].iter().map(|p| p.name()).collect();
            prop_assert_eq!(tail.iter().filter(|n| **n == PhaseName::Dropping).count(), 1);
            let pre = trace[last_drop.unwrap()..].iter().position(|p| matches!(p, Phase::Restoring{section: Section::PreData, ..}));
            let data = trace[last_drop.unwrap()..].iter().position(|p| matches!(p, Phase::Restoring{section: Section::DataAndPostData, ..}));
            prop_assert!(pre.is_some() && data.is_some() && pre < data, "trace {:?}", tail);
            prop_assert!(run.finished_at.is_some());
            prop_assert!(run.error.is_none());
            // A finished night says when readers got it: the switch, or the wipe.
            if let Some(r) = run.refresh.as_ref().filter(|r| r.mode == RefreshMode::Wipe || !stray_switch) {
                prop_assert!(r.at().is_some(), "Done without its {:?} time: {:?}", r.mode, r);
            }
        }
        if matches!(run.phase, Phase::Failed { .. }) {
            prop_assert!(run.error.is_some());
        }
        // Invariant 6: nothing secret-looking is in the persisted form.
        let json = serde_json::to_string(&run).unwrap();
        for key in ["\"token\":", "\"bearer\":", "\"password\":", "\"download_url\":", "\"url\":"] {
            prop_assert!(!json.contains(key), "{} in {}", key, json);
        }
    }

    /// Once faults stop, a run reaches Done in a bounded number of successes.
    #[test]
    fn once_faults_stop_a_resumed_run_finishes(
        retries in 1u32..5,
        events in proptest::collection::vec(ev(), 0..40),
    ) {
        let mut now = t0();
        let mut run = Run::new("live".into(), Origin::Scalingo, retries, now);
        run = transition(&run, Event::Start, now).unwrap();
        for ev in events {
            now += chrono::Duration::seconds(1);
            let event = concrete(&run, &ev, now);
            if let Ok(r) = transition(&run, event, now) { run = r; }
        }
        if !run.is_terminal() {
            run = transition(&run, Event::Resume, now).unwrap();
            for _ in 0..10 {
                if run.is_terminal() { break; }
                let e = concrete(&run, &Ev::Succeed, now);
                run = transition(&run, e, now).unwrap();
            }
            prop_assert_eq!(run.phase.name(), PhaseName::Done);
        }
    }
}

// ---- what the machine tells the driver to do ----

/// The events the driver sends when `action` succeeds in `run` (a switch in swap mode says
/// when it committed; in wipe mode it succeeds).
fn successes(action: &NextStep, now: DateTime<Utc>) -> Vec<Event> {
    match action {
        NextStep::Start => vec![Event::Start],
        NextStep::FetchBackup => vec![Event::Fetched(backup())],
        NextStep::Plan => vec![
            Event::Planned(WorkMode::Whole {
                needed: Some(100),
                budget: Some(1000),
            }),
            Event::Planned(WorkMode::Streaming {
                needed: 1000,
                budget: 100,
            }),
        ],
        NextStep::ExtractAndCheck => vec![
            Event::Checked {
                left_out: Vec::new(),
                refresh: Some(refresh(true)),
            },
            Event::Checked {
                left_out: Vec::new(),
                refresh: None,
            },
        ],
        NextStep::Switch => vec![Event::Switched { at: now }, Event::Succeeded],
        NextStep::Restore {
            section: Section::DataAndPostData,
        } => vec![
            Event::RowsLoaded { masking: None },
            Event::RowsLoaded {
                masking: Some(MaskingCounts {
                    rewritten: [("public.users".to_string(), 3)].into(),
                    ..Default::default()
                }),
            },
        ],
        NextStep::Download { .. }
        | NextStep::Drop
        | NextStep::Restore { .. }
        | NextStep::Unlog
        | NextStep::PostRestore => vec![Event::Succeeded],
    }
}

#[test]
fn following_the_actions_from_start_reaches_done_for_every_origin_and_mode() {
    let origins = [
        Origin::Scalingo,
        Origin::Archive {
            path: "/data/b.tar.gz".into(),
        },
        Origin::Dump {
            path: "/data/d.pgsql".into(),
        },
        Origin::Live {
            source: "app@db:5432/prod".into(),
        },
    ];
    for origin in origins {
        for pick in 0..2 {
            let mut run = Run::new("r".into(), origin.clone(), 0, t0());
            let mut actions = Vec::new();
            while let Some(action) = next_step(&run) {
                let all = successes(&action, t0());
                let event = all[pick.min(all.len() - 1)].clone();
                run = transition(&run, event, t0()).unwrap();
                actions.push(action);
                assert!(actions.len() < 20, "{origin:?}: no end: {actions:?}");
            }
            assert_eq!(run.phase.name(), PhaseName::Done, "{origin:?}: {actions:?}");
            // The order of the night, whatever the origin: the plan before the archive's
            // first byte, the checks before the wipe, the schema before the rows.
            let at = |a: &NextStep| actions.iter().position(|x| x == a).unwrap();
            assert!(at(&NextStep::Plan) < at(&NextStep::ExtractAndCheck));
            assert!(at(&NextStep::ExtractAndCheck) < at(&NextStep::Drop));
            let (pre, rows) = (
                at(&NextStep::Restore {
                    section: Section::PreData,
                }),
                at(&NextStep::Restore {
                    section: Section::DataAndPostData,
                }),
            );
            assert!(at(&NextStep::Drop) < pre && pre < at(&NextStep::Unlog));
            assert!(at(&NextStep::Unlog) < rows && rows < at(&NextStep::Switch));
            assert_eq!(actions.last(), Some(&NextStep::PostRestore));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// In every state a run can reach, the machine says what to do, or that nothing is left
    /// to do (only when the run is finished); what it says is what the state needs, and each
    /// outcome of it (its success events, every failure) is an event the machine accepts.
    #[test]
    fn every_reachable_state_has_one_consistent_action(
        origin in origin(),
        retries in 0u32..6,
        events in proptest::collection::vec(ev(), 0..80),
    ) {
        let mut now = t0();
        let mut run = Run::new("prop".into(), origin, retries, now);
        let mut states = vec![run.clone()];
        for ev in events {
            now += chrono::Duration::seconds(7);
            if let Ok(next) = transition(&run, concrete(&run, &ev, now), now) {
                run = next;
                states.push(run.clone());
            }
        }
        for run in states {
            let action = next_step(&run);
            prop_assert_eq!(action.is_none(), run.is_terminal(), "{:?}", run.phase);
            let Some(action) = action else { continue };
            prop_assert_eq!(action == NextStep::Start, run.phase == Phase::Idle);
            // Whole or streamed before anything else of the archive, and once.
            let unplanned = run.mode.is_none()
                && matches!(run.phase, Phase::Downloading { .. } | Phase::Extracting { .. });
            prop_assert_eq!(action == NextStep::Plan, unplanned, "{:?}", run.phase);
            prop_assert_eq!(action.touches_target(), run.phase.touches_target());
            if let NextStep::Download { backup } = &action {
                prop_assert_eq!(Some(backup), run.backup());
            }
            if let NextStep::Restore { section } = &action {
                let in_section = matches!(&run.phase, Phase::Restoring { section: s, .. } if s == section);
                prop_assert!(in_section);
            }
            for event in successes(&action, now) {
                let after = transition(&run, event.clone(), now);
                prop_assert!(after.is_ok(), "{:?} refused {:?} in {:?}", action, event, run.phase);
                let after = after.unwrap();
                // A success moves the run on: the same action is never asked twice in a row.
                prop_assert_ne!(next_step(&after), Some(action.clone()), "{:?}", run.phase);
                prop_assert_eq!(after.attempt, run.attempt);
                // What the rules did to the rows is the run's once they are in.
                match &event {
                    Event::RowsLoaded { masking } => prop_assert_eq!(&after.masking, masking),
                    _ => prop_assert_eq!(&after.masking, &run.masking),
                }
            }
            if !action.is_step() {
                continue;
            }
            for kind in [FailureKind::Transient, FailureKind::StreamCut, FailureKind::Permanent] {
                let event = failure_event(&run, kind, "boom".into(), now);
                // A cut stream is its own event where the run streams, a transient one else.
                if kind == FailureKind::StreamCut {
                    let streams = run.mode.as_ref().is_some_and(WorkMode::streams);
                    prop_assert_eq!(matches!(event, Event::StreamCut { .. }), streams);
                }
                let after = transition(&run, event.clone(), now);
                prop_assert!(after.is_ok(), "{:?} refused in {:?}", event, run.phase);
                let after = after.unwrap();
                let retried = kind != FailureKind::Permanent && will_retry(&run);
                prop_assert_eq!(!after.is_terminal(), retried, "{:?} in {:?}", kind, run.phase);
            }
        }
    }
}
