//! Large objects in swap mode.
//!
//! A large object belongs to the whole database, not to a schema, and keeps its oid across a
//! dump and restore (`lo_create('16441')`): tonight's cannot be built beside yesterday's under
//! a shadow name, since they carry the same oids. So in swap mode the restore does not run
//! their statements: it keeps them, as pg_restore wrote them, in
//! `replicator.staged_large_objects` (in the target, so that a run resumed after a restart of
//! the container still has them), and the switch's transaction replays them after unlinking
//! yesterday's large objects of the role. Readers see yesterday's large objects before the
//! commit and tonight's after, like the tables.
//!
//! The statements are grouped in three phases, each replayed in order of oid then of arrival:
//! the creations (`lo_create`, `ALTER LARGE OBJECT ... OWNER`), the contents (`lo_open`,
//! `lowrite`, `lo_close`: one object's open, writes and close stay together even when two
//! sessions wrote objects side by side), then their comments, privileges and labels. A
//! creation or description kept twice (an entry run again after a retry) is kept once; the
//! contents of an entry run again are written again from its start, which is harmless.
//!
//! Each `lo_unlink` locks the object it drops until the switch commits, as does a comment:
//! [`fit`] weighs that against the lock table before the run chooses swap mode.

use tokio_postgres::Client;

use super::super::url::PgEndpoint;
use crate::error::StepError;

/// The staging table and its index of what is kept once. Created by the swap's `Dropping`
/// (empty) and by the rehearsal (in its transaction), on sessions that already keep notices
/// (`... already exists, skipping`) to themselves.
pub const CREATE_SQL: &str = "CREATE SCHEMA IF NOT EXISTS replicator;
    CREATE TABLE IF NOT EXISTS replicator.staged_large_objects (
        n bigserial PRIMARY KEY,
        phase smallint NOT NULL,
        loid oid NOT NULL,
        statement text NOT NULL);
    CREATE UNIQUE INDEX IF NOT EXISTS staged_large_objects_once
        ON replicator.staged_large_objects (phase, loid, md5(statement)) WHERE phase <> 1";

/// Empties the staging table (a new build of tonight's copy, or an abandoned run's leftovers).
pub const CLEAR_SQL: &str = "TRUNCATE replicator.staged_large_objects";

/// Keeps one statement: `$1` phase, `$2` oid, `$3` the statement.
pub const STAGE_SQL: &str = "INSERT INTO replicator.staged_large_objects (phase, loid, statement)
     VALUES ($1, $2, $3)
     ON CONFLICT (phase, loid, md5(statement)) WHERE phase <> 1 DO NOTHING";

/// Unlinks the role's large objects (yesterday's: what `DROP OWNED` takes in wipe mode), then
/// replays the kept statements, on the server, in the caller's transaction.
pub const REPLACE_SQL: &str = "SELECT count(pg_catalog.lo_unlink(m.oid))
       FROM pg_catalog.pg_largeobject_metadata m
      WHERE m.lomowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user);
    DO $replicator$
    DECLARE s text;
    BEGIN
      FOR s IN SELECT statement FROM replicator.staged_large_objects ORDER BY phase, loid, n LOOP
        EXECUTE s;
      END LOOP;
    END $replicator$";

/// The role's large objects now, and whether the staging table exists.
const COUNTS_SQL: &str = "SELECT
      (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata
        WHERE lomowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)),
      to_regclass('replicator.staged_large_objects') IS NOT NULL";

/// The large objects kept for the switch (their creations).
const KEPT_SQL: &str =
    "SELECT count(DISTINCT loid) FROM replicator.staged_large_objects WHERE phase = 0";

/// What a kept statement is: its phase, the object's oid, and whether it opens the object
/// (the writes and the close that follow name only descriptor 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub phase: i16,
    pub loid: u32,
    pub opens: bool,
}

/// The oid at the start of `s` (`'16441'`, or `16441`).
fn oid_at(s: &str) -> Option<u32> {
    let s = s.trim_start().trim_start_matches('\'');
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The first `n` bytes of `s` or fewer, cut at a character boundary.
fn head(s: &str, n: usize) -> &str {
    let mut cut = n.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Whether `stmt` is one of pg_restore's statements about a large object, and which: `open`
/// is the object the session opened last (what `lowrite(0, ...)` and `lo_close(0)` write).
pub fn staged(stmt: &str, open: Option<u32>) -> Option<Staged> {
    let s = stmt.trim_start();
    // Enough of the statement to see what it is about (a comment's text can be long).
    let upper = head(s, 160).to_ascii_uppercase();
    let kept = |phase, loid| {
        Some(Staged {
            phase,
            loid,
            opens: false,
        })
    };
    if let Some(rest) = s.strip_prefix("SELECT pg_catalog.lo_create(") {
        return kept(0, oid_at(rest)?);
    }
    if let Some(rest) = upper.strip_prefix("ALTER LARGE OBJECT ") {
        return kept(0, oid_at(rest)?);
    }
    if let Some(rest) = s.strip_prefix("SELECT pg_catalog.lo_open(") {
        return Some(Staged {
            phase: 1,
            loid: oid_at(rest)?,
            opens: true,
        });
    }
    if s.starts_with("SELECT pg_catalog.lowrite(") || s.starts_with("SELECT pg_catalog.lo_close(") {
        return kept(1, open?);
    }
    // `COMMENT ON`, `GRANT ... ON`, `REVOKE ... ON`, `SECURITY LABEL [FOR p] ON`: the object
    // is what follows the statement's first ` ON `.
    let describes = ["COMMENT ", "GRANT ", "REVOKE ", "SECURITY LABEL "]
        .iter()
        .any(|p| upper.starts_with(p));
    if describes {
        let on = upper.find(" ON ")? + " ON ".len();
        return kept(2, oid_at(upper[on..].strip_prefix("LARGE OBJECT ")?)?);
    }
    None
}

/// `(yesterday's large objects of the role, tonight's kept for the switch)`.
pub async fn counts(target: &PgEndpoint, client: &Client) -> Result<(i64, i64), StepError> {
    let q = |e| target.query_error("counting the large objects to replace", e);
    let row = client.query_one(COUNTS_SQL, &[]).await.map_err(q)?;
    let (yesterday, staging): (i64, bool) = (row.get(0), row.get(1));
    // The table is made by the first swap's `Dropping`: a query naming it before would fail
    // even where it is not evaluated.
    let tonight = if staging {
        client.query_one(KEPT_SQL, &[]).await.map_err(q)?.get(0)
    } else {
        0
    };
    Ok((yesterday, tonight))
}

/// About how many large objects a dump entry creates: one for a `BLOB` (pg_dump before 17),
/// the oids of its tag's range for a `BLOB METADATA` (`16441..17440`: pg_dump 17 groups up
/// to 1,000).
pub fn created_by(desc: &str, tag: &str) -> u64 {
    match desc {
        "BLOB" => 1,
        "BLOB METADATA" => match tag.split_once("..") {
            Some((a, b)) => match (oid_at(a), oid_at(b)) {
                (Some(a), Some(b)) if b >= a => (b - a + 1).min(1000) as u64,
                _ => 1000,
            },
            None => 1,
        },
        _ => 0,
    }
}

/// Whether the switch can replace the large objects in one transaction: each `lo_unlink` of
/// yesterday's, and each comment or label on tonight's, locks its object until the commit,
/// and the switch takes at most half the server's lock table. `Ok(Err(why))` when it cannot.
pub async fn fit(target: &PgEndpoint, tonight: u64) -> Result<Result<(), String>, StepError> {
    let client = target.connect().await?;
    let (yesterday, _) = counts(target, &client).await?;
    let budget = super::super::locks::budget(target).await?;
    let needed = yesterday.max(0) as u64 + tonight;
    if needed > budget.capacity / 2 {
        return Ok(Err(format!(
            "replacing {yesterday} large object(s) of yesterday's by about {tonight} of tonight's in the switch's one transaction needs more locks than half the server's lock table ({})",
            budget.capacity
        )));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_pg_restores_statements_about_large_objects() {
        let s = |stmt, open| staged(stmt, open).map(|k| (k.phase, k.loid, k.opens));
        assert_eq!(
            s("SELECT pg_catalog.lo_create('16441');", None),
            Some((0, 16441, false))
        );
        assert_eq!(
            s("ALTER LARGE OBJECT 16441 OWNER TO app;", None),
            Some((0, 16441, false))
        );
        assert_eq!(
            s("SELECT pg_catalog.lo_open('16441', 131072);", None),
            Some((1, 16441, true))
        );
        assert_eq!(
            s("SELECT pg_catalog.lowrite(0, '\\x25504446');", Some(16441)),
            Some((1, 16441, false))
        );
        assert_eq!(
            s("SELECT pg_catalog.lo_close(0);", Some(16441)),
            Some((1, 16441, false))
        );
        assert_eq!(
            s("COMMENT ON LARGE OBJECT 16441 IS 'the contract';", None),
            Some((2, 16441, false))
        );
        assert_eq!(
            s("GRANT SELECT ON LARGE OBJECT 16441 TO reader;", None),
            Some((2, 16441, false))
        );
        assert_eq!(
            s("REVOKE ALL ON LARGE OBJECT 16441 FROM PUBLIC;", None),
            Some((2, 16441, false))
        );
        let long = format!("COMMENT ON LARGE OBJECT 7 IS '{}';", "é".repeat(200));
        assert_eq!(s(long.as_str(), None), Some((2, 7, false)));
        assert_eq!(
            s(
                "SECURITY LABEL FOR dummy ON LARGE OBJECT 16441 IS 'secret';",
                None
            ),
            Some((2, 16441, false))
        );
    }

    #[test]
    fn leaves_every_other_statement_alone() {
        for stmt in [
            "SELECT pg_catalog.set_config('search_path', '', false);",
            "COMMENT ON TABLE public.documents IS 'see ON LARGE OBJECT 12';",
            "GRANT SELECT ON TABLE public.large OBJECT TO reader;",
            "GRANT SELECT ON TABLE public.documents TO reader;",
            "CREATE TABLE public.lo_create (id int);",
            "SELECT pg_catalog.setval('public.t_id_seq', 12, true);",
            "BEGIN;",
        ] {
            assert_eq!(staged(stmt, Some(1)), None, "{stmt}");
        }
        // A write with no object opened before it is not kept: it would write nowhere.
        assert_eq!(staged("SELECT pg_catalog.lowrite(0, '\\x00');", None), None);
    }

    #[test]
    fn counts_the_objects_an_entry_creates() {
        assert_eq!(created_by("BLOB", "16441"), 1);
        assert_eq!(created_by("BLOB METADATA", "16441"), 1);
        assert_eq!(created_by("BLOB METADATA", "16441..16450"), 10);
        assert_eq!(created_by("BLOB METADATA", "1..900000"), 1000);
        assert_eq!(created_by("BLOBS", "BLOBS"), 0);
        assert_eq!(created_by("TABLE", "t"), 0);
    }
}
