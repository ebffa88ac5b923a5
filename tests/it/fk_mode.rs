//! `FK_MODE`: foreign keys trusted (`NOT VALID`, the default), validated, or skipped.

use crate::common::scenario::{Scenario, stderr, stdout};

/// (table, constraint, validated) of every foreign key of the target.
fn foreign_keys(s: &Scenario) -> Vec<(String, String, bool)> {
    s.cluster
        .superuser_psql(
            &s.target.dbname,
            "SELECT conrelid::regclass::text || '|' || conname || '|' || convalidated::text
               FROM pg_constraint
              WHERE contype = 'f' AND connamespace = 'public'::regnamespace ORDER BY 1",
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p: Vec<&str> = l.split('|').collect();
            (p[0].to_string(), p[1].to_string(), p[2] == "true")
        })
        .collect()
}

/// What a reader of the replica or a later write would hit: a row that breaks the key.
fn orphan_answer(s: &Scenario) -> Result<(), String> {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "INSERT INTO answers (\"knowledgeElementId\", value) VALUES (999999, 'orphan')",
        ])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", s.cluster.port().to_string())
        .env("PGUSER", &s.target.role)
        .env("PGPASSWORD", &s.target.password)
        .env("PGDATABASE", &s.target.dbname)
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn by_default_foreign_keys_are_trusted_not_valid_and_still_enforced() {
    let mut s = Scenario::rich("fk_trust");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    let out = s.run_ok(&["run"]);
    // Same rows, indexes, constraints; the keys are there, NOT VALID (none scanned).
    s.assert_target_is_source();
    let fks = foreign_keys(&s);
    let source_fks = s
        .source_fingerprint()
        .constraints
        .iter()
        .filter(|c| c.2 == "f")
        .count();
    assert_eq!(fks.len(), source_fks, "{fks:?}");
    for (table, name, validated) in &fks {
        // PostgreSQL 15 cannot add a NOT VALID key to a partitioned table: validated.
        let partitioned = table.contains("Events") || table.contains("events");
        assert_eq!(*validated, partitioned, "{table} {name}");
    }
    let err = orphan_answer(&s).expect_err("a row that breaks a trusted key was accepted");
    assert!(err.contains("violates foreign key constraint"), "{err}");
    let logs = stdout(&out) + &stderr(&out);
    assert!(logs.contains("NOT VALID (FK_MODE=trust)"), "{logs}");
}

#[test]
fn validate_restores_the_keys_exactly_as_the_source_has_them() {
    let mut s = Scenario::rich("fk_validate");
    s.set_env("FK_MODE", "validate");
    s.run_ok(&["run"]);
    s.assert_target_is_source();
    assert!(foreign_keys(&s).iter().all(|(_, _, v)| *v));
}

#[test]
fn skip_restores_no_foreign_key() {
    let mut s = Scenario::rich("fk_skip");
    s.set_env("FK_MODE", "skip");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    s.run_ok(&["run"]);
    s.assert_target_is_source();
    assert_eq!(foreign_keys(&s), vec![]);
    orphan_answer(&s).expect("without foreign keys nothing refuses the row");
}

#[test]
fn a_bad_fk_mode_is_refused_before_anything_is_touched() {
    let mut s = Scenario::rich("fk_bad");
    s.put_stale_table_in_target();
    s.set_env("FK_MODE", "false");
    let out = s.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("FK_MODE") && err.contains("trust"), "{err}");
    assert!(s.table_exists("stale_leftover"));
}
