//! Frozen examples of the persisted formats (`tests/fixtures/state/`): a `Run` as the store
//! keeps it, which a redeployed replicator resumes from, and a `replicator.runs` row, which a
//! fresh container reads. A change that cannot read them would break resumes in production:
//! such a change needs a migration and a new fixture, not an edit of these.

use chrono::Utc;
use serde_json::Value;

use crate::common::scenario::{Scenario, stderr, stdout};
use replicator::machine::{self, Phase, Run, Section};
use replicator::state::store::Store;

const RUN: &str = include_str!("../fixtures/state/run-interrupted.json");
const ROW: &str = include_str!("../fixtures/state/runs-row.json");
const SWAP: &str = include_str!("../fixtures/state/run-swap-done.json");

#[test]
fn a_persisted_run_of_the_current_format_loads_resumes_and_writes_back_the_same() {
    let run: Run = serde_json::from_str(RUN).expect("the frozen run loads");
    assert_eq!(run.run_id, "20261124T041000Z-1a2b");
    assert!(matches!(
        run.phase,
        Phase::Restoring {
            section: Section::DataAndPostData,
            ..
        }
    ));
    assert_eq!(run.attempt, 2);
    assert_eq!(run.durations.len(), 5);
    // Written before runs recorded their refresh: none, and none written back.
    assert_eq!(run.refresh, None);
    // Written back, it is the same document: the format did not drift.
    let frozen: Value = serde_json::from_str(RUN).unwrap();
    assert_eq!(serde_json::to_value(&run).unwrap(), frozen);

    // Through the store, as a redeployed process finds it, then resumed: a run cut in its rows
    // goes on in its rows (the target records each table loaded), for the same backup.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store.save(&run).unwrap();
    let loaded = store.current().unwrap().expect("the current run");
    assert_eq!(loaded, run);
    let resumed = machine::recover(loaded, Utc::now()).unwrap();
    assert!(
        matches!(
            resumed.phase,
            Phase::Restoring {
                section: Section::DataAndPostData,
                ..
            }
        ),
        "{:?}",
        resumed.phase
    );
    assert_eq!(resumed.backup().unwrap().id, "6761a1f0c2d4e5f6a7b8c9d0");
}

/// A finished swap night, as recorded since runs keep their refresh (mode, switched schemas,
/// readers carried over, the switch's commit time): loads, says so, and writes back the same.
#[test]
fn a_persisted_swap_run_with_its_refresh_loads_and_writes_back_the_same() {
    let run: Run = serde_json::from_str(SWAP).expect("the frozen swap run loads");
    let refresh = run.refresh.clone().expect("its refresh");
    assert_eq!(refresh.mode, machine::RefreshMode::Swap);
    assert_eq!(refresh.schemas, ["public"]);
    assert_eq!(
        refresh.switched_at.map(|t| t.to_rfc3339()),
        Some("2026-11-25T04:31:07.500+00:00".to_string())
    );
    assert_eq!(refresh.wiped_at, None);
    assert_eq!(
        refresh.readers_line(),
        "metabase (SELECT on 42 tables, USAGE on 1 schema, default privileges)"
    );
    let frozen: Value = serde_json::from_str(SWAP).unwrap();
    assert_eq!(serde_json::to_value(&run).unwrap(), frozen);
}

#[test]
fn a_runs_row_of_the_current_format_is_read_by_status_from_the_target() {
    let s = Scenario::new("fixture_row", |_, _| {});
    let row: Value = serde_json::from_str(ROW).unwrap();
    let text = |k: &str| row[k].as_str().unwrap().replace('\'', "''");
    s.target_psql(&format!(
        "CREATE SCHEMA replicator;
         CREATE TABLE replicator.runs (run_id text PRIMARY KEY, record jsonb NOT NULL,
             finished boolean NOT NULL, started_at timestamptz NOT NULL,
             updated_at timestamptz NOT NULL, written_by text NOT NULL);
         INSERT INTO replicator.runs VALUES ('{}', '{}', {}, '{}', '{}', '{}');",
        text("run_id"),
        row["record"].to_string().replace('\'', "''"),
        row["finished"],
        text("started_at"),
        text("updated_at"),
        text("written_by"),
    ));
    // A container with no state directory of its own, as `scalingo run replicator status`.
    let fresh = s.files.path().join("fresh");
    let out = s
        .cmd_with_state(&["status", "--json", "--from-target"], &fresh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).expect("status --json");
    assert_eq!(status["source_kind"], "target");
    assert_eq!(status["run_id"], "20261123T041000Z-0f0e");
    assert_eq!(status["phase"], "Done");
    assert_eq!(status["backup_name"], "20261123041000_my_app_4553");
    assert_eq!(status["written_by"], "pid 4242 on host my-app-background-1");
    assert_eq!(status["history"][0]["run_id"], "20261123T041000Z-0f0e");
}
