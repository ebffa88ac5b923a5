//! Swap mode (`REFRESH_MODE=swap`): tonight's copy is built beside yesterday's, under shadow
//! schema names, and takes the live names in one transaction.
//!
//! - [`assess`] (before anything is touched): whether each schema the dump restores can be
//!   switched: the role may rename it, no object of another role lives in it, no object outside
//!   it depends on it, and every extension in it can move with it.
//! - [`prepare`] (the `Dropping` phase): leftovers of an earlier run are dropped (its shadows,
//!   yesterday's schemas a switch could not drop), the live schemas the dump needs are made to
//!   exist (an extension lives in one), and the shadows the dump does not create are created.
//! - [`switch`] (the `Switching` phase): each live schema renamed aside, each shadow renamed to
//!   the live name, extensions moved, privileges and comments carried over, all in one
//!   transaction that waits for readers (`lock_timeout`, retried) but never cancels them; then
//!   yesterday's schemas dropped in batches the lock table holds.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio_postgres::Client;

pub mod large_objects;
pub(super) mod objects;

use super::url::{CONTROL_APPLICATION_NAME, PgEndpoint};
use crate::dump::plan::SwitchedSchema;
use crate::dump::rewrite::quote_ident;
use crate::error::StepError;

/// The prefixes of a swap's schema names (a leftover of either is the replicator's to drop).
pub const SHADOW_PREFIX: &str = "replicator_next_";
pub const OLD_PREFIX: &str = "replicator_old_";

/// How long one try of the switch waits for a reader's lock before it lets go and tries
/// again: the reader's query is never cancelled, and the run is not failed.
const SWITCH_LOCK_TIMEOUT: &str = "2s";
/// How long the switch keeps trying before it is a transient failure of the run.
const SWITCH_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// The extension members in `$1` schemas: `(schema, name)` of functions, types, operators,
/// operator classes and families, relations, collations and text search objects.
pub const EXTENSION_MEMBERS_SQL: &str = "SELECT n.nspname::text, x.name::text
   FROM pg_depend d
   JOIN LATERAL (
         SELECT proname AS name, pronamespace AS ns FROM pg_proc
          WHERE d.classid = 'pg_proc'::regclass AND oid = d.objid
         UNION ALL SELECT typname, typnamespace FROM pg_type
          WHERE d.classid = 'pg_type'::regclass AND oid = d.objid
         UNION ALL SELECT oprname, oprnamespace FROM pg_operator
          WHERE d.classid = 'pg_operator'::regclass AND oid = d.objid
         UNION ALL SELECT opcname, opcnamespace FROM pg_opclass
          WHERE d.classid = 'pg_opclass'::regclass AND oid = d.objid
         UNION ALL SELECT opfname, opfnamespace FROM pg_opfamily
          WHERE d.classid = 'pg_opfamily'::regclass AND oid = d.objid
         UNION ALL SELECT relname, relnamespace FROM pg_class
          WHERE d.classid = 'pg_class'::regclass AND oid = d.objid
         UNION ALL SELECT collname, collnamespace FROM pg_collation
          WHERE d.classid = 'pg_collation'::regclass AND oid = d.objid
         UNION ALL SELECT cfgname, cfgnamespace FROM pg_ts_config
          WHERE d.classid = 'pg_ts_config'::regclass AND oid = d.objid
         UNION ALL SELECT dictname, dictnamespace FROM pg_ts_dict
          WHERE d.classid = 'pg_ts_dict'::regclass AND oid = d.objid
        ) x ON true
   JOIN pg_namespace n ON n.oid = x.ns
  WHERE d.deptype = 'e' AND n.nspname = ANY($1::text[])";

/// `prefix` + `live`, at most 63 bytes (PostgreSQL's limit): a long name is cut at a character
/// boundary and given a hash of the whole, so two long names never meet.
pub fn schema_name(prefix: &str, live: &str) -> String {
    let whole = format!("{prefix}{live}");
    if whole.len() <= 63 {
        return whole;
    }
    let hash = live.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let mut cut = 63 - prefix.len() - 9;
    while !live.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}_{:08x}", &live[..cut], hash as u32)
}

/// The schemas a swap switches, with their shadow and old names.
pub fn switched(schemas: &[String]) -> Vec<SwitchedSchema> {
    schemas
        .iter()
        .map(|live| SwitchedSchema {
            live: live.clone(),
            shadow: schema_name(SHADOW_PREFIX, live),
            old: schema_name(OLD_PREFIX, live),
            by_objects: false,
        })
        .collect()
}

/// Whether `schemas` can be switched on `target`, and how: `Ok(Err(why))` when not (said
/// before anything is touched). A live schema that must stay is marked `by_objects` (see
/// [`objects`]): it is not the role's to rename, it holds other roles' own objects or
/// extensions that cannot move with it, or the restore creates an extension in it
/// (`pinned`). `ranges`: the schemas the dump creates range types in (which cannot move
/// object by object).
pub async fn assess(
    target: &PgEndpoint,
    schemas: &mut [SwitchedSchema],
    pinned: &HashSet<String>,
    ranges: &HashSet<String>,
) -> Result<Result<(), String>, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let q = |e| target.query_error("checking whether the schemas can be switched", e);
    let live: Vec<String> = schemas.iter().map(|s| s.live.clone()).collect();
    let names: Vec<String> = schemas
        .iter()
        .flat_map(|s| [s.shadow.clone(), s.old.clone()])
        .collect();
    // The swap's own names must be the role's to create and drop.
    let list = found(
        &client,
        "SELECT format('%s (owned by %s)', nspname, pg_get_userbyid(nspowner)) FROM pg_namespace
          WHERE nspname = ANY($1::text[]) AND NOT pg_has_role(current_user, nspowner, 'MEMBER')
          ORDER BY 1",
        &names,
    )
    .await
    .map_err(q)?;
    if !list.is_empty() {
        return Ok(Err(format!(
            "the schema(s) {} have the names a swap builds in and are not the role's",
            list.join(", ")
        )));
    }
    // Live schemas that stay: another role's; other roles' own objects in them; extensions
    // the role cannot move with them (an extension created by a role that is not a superuser
    // has members the superuser owns).
    let staying = found(
        &client,
        "SELECT n.nspname::text FROM pg_namespace n
          WHERE n.nspname = ANY($1::text[])
            AND (NOT pg_has_role(current_user, n.nspowner, 'MEMBER')
                 OR EXISTS (SELECT 1 FROM pg_class c
                             WHERE c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','S','f')
                               AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
                               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                                WHERE d.classid = 'pg_class'::regclass
                                                  AND d.objid = c.oid AND d.deptype = 'e'))
                 OR EXISTS (SELECT 1 FROM pg_extension e
                             WHERE e.extnamespace = n.oid
                               AND (NOT e.extrelocatable
                                    OR NOT pg_has_role(current_user, e.extowner, 'MEMBER')
                                    OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_proc p
                                                   ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                                WHERE d.refclassid = 'pg_extension'::regclass
                                                  AND d.refobjid = e.oid AND d.deptype = 'e'
                                                  AND NOT pg_has_role(current_user, p.proowner, 'MEMBER')))))",
        &live,
    )
    .await
    .map_err(q)?;
    for s in schemas.iter_mut() {
        s.by_objects = staying.contains(&s.live) || pinned.contains(&s.live);
    }
    let by_objects: Vec<String> = schemas
        .iter()
        .filter(|s| s.by_objects)
        .map(|s| s.live.clone())
        .collect();
    if !by_objects.is_empty() {
        // Objects move into a schema the role may create in.
        let list = found(
            &client,
            "SELECT nspname::text FROM pg_namespace
              WHERE nspname = ANY($1::text[]) AND NOT has_schema_privilege(oid, 'CREATE')
              ORDER BY 1",
            &by_objects,
        )
        .await
        .map_err(q)?;
        if !list.is_empty() {
            return Ok(Err(format!(
                "the schema(s) {} must stay (they hold what cannot move, or are not the role's) and the role may not create objects in them, where tonight's objects would move",
                list.join(", ")
            )));
        }
        let mut held = objects::range_types(&client, &by_objects)
            .await
            .map_err(q)?;
        held.extend(by_objects.iter().filter(|s| ranges.contains(*s)).cloned());
        if !held.is_empty() {
            return Ok(Err(format!(
                "the schema(s) {} must be switched object by object (they hold extensions or other roles' objects that stay, or are not the role's), and range types there ({}) cannot move: their constructor functions belong to the bootstrap superuser",
                by_objects.join(", "),
                held.join(", ")
            )));
        }
        // Yesterday's and tonight's relations move in one transaction.
        let relations: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = ANY($1::text[]) AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
                &[&by_objects],
            )
            .await
            .map_err(q)?
            .get(0);
        let budget = super::locks::budget(target).await?;
        if (2 * relations.max(0) as u64) > budget.capacity / 2 {
            return Ok(Err(format!(
                "the schema(s) {} must be switched object by object, and moving their {relations} relations out and tonight's in needs more locks in one transaction than half the server's lock table ({})",
                by_objects.join(", "),
                budget.capacity
            )));
        }
    }
    // Readers' views over the replica's tables are kept and re-created
    // (`replica::dependents`), not a reason to wipe.
    let can_create: bool = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if !can_create {
        return Ok(Err(
            "the role may not create schemas in the database (a swap builds tonight's copy in schemas of its own)".into(),
        ));
    }
    Ok(Ok(()))
}

/// The schema a `CREATE EXTENSION ... WITH SCHEMA x` statement names, if any.
pub fn extension_schema(stmt: &str) -> Option<String> {
    let lower = stmt.to_ascii_lowercase();
    let at = lower.find(" schema ")? + " schema ".len();
    let rest = stmt[at..].trim_start();
    let name = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?.to_string()
    } else {
        rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()?
            .to_ascii_lowercase()
    };
    (!name.is_empty()).then_some(name)
}

/// The first column of `sql`'s rows, `$1` being `schemas`.
async fn found(
    client: &Client,
    sql: &str,
    schemas: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(sql, &[&schemas])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The statements that drop the leftovers of an earlier run and make the swap's schemas
/// exist: the live ones (an extension lives there), and the shadows `created` does not hold
/// (the dump creates those itself). Each statement stands alone (a leftover's drop is done by
/// [`drop_schema`] in batches).
pub fn create_schemas_sql(schemas: &[SwitchedSchema], created: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for s in schemas {
        out.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&s.live)
        ));
        if !created.contains(&s.live) {
            out.push(format!("CREATE SCHEMA {}", quote_ident(&s.shadow)));
        }
    }
    out
}

/// Drops the leftovers of an earlier run of the swap (its shadows, yesterday's schemas a
/// switch could not drop), then makes the swap's schemas exist.
pub async fn prepare(
    target: &PgEndpoint,
    schemas: &[SwitchedSchema],
    created: &HashSet<String>,
) -> Result<(), StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    client
        .batch_execute("SET client_min_messages = warning")
        .await
        .map_err(|e| target.query_error("preparing the swap's schemas", e))?;
    drop_leftovers(target, &client).await?;
    for stmt in create_schemas_sql(schemas, created) {
        client
            .batch_execute(&stmt)
            .await
            .map_err(|e| target.query_error("creating the swap's schemas", e))?;
    }
    tracing::info!(
        schemas = %schemas.iter().map(|s| s.live.as_str()).collect::<Vec<_>>().join(","),
        "tonight's copy is built beside yesterday's, in {}",
        schemas
            .iter()
            .map(|s| s.shadow.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Drops every schema of a swap's names the role owns (shadows of a run that did not switch,
/// yesterday's schemas a switch could not drop), and empties what an earlier build kept (the
/// large objects for its switch, the records of its loads). Returns how many schemas.
pub async fn drop_leftovers(target: &PgEndpoint, client: &Client) -> Result<usize, StepError> {
    let rows = client
        .query(
            "SELECT nspname::text FROM pg_namespace
              WHERE (starts_with(nspname, $1) OR starts_with(nspname, $2))
                AND pg_has_role(current_user, nspowner, 'MEMBER')
              ORDER BY 1",
            &[&SHADOW_PREFIX, &OLD_PREFIX],
        )
        .await
        .map_err(|e| target.query_error("listing the leftovers of an earlier swap", e))?;
    for r in &rows {
        let name: String = r.get(0);
        drop_schema(target, client, &name).await?;
        tracing::info!(schema = %name, "dropped {name}, left by an earlier run");
    }
    // What an earlier build kept goes with its shadows: the large objects for its switch, and
    // the records of its tables' loads (a run that builds again, a live run's new snapshot
    // say, would otherwise skip tables its new shadow does not hold).
    client
        .batch_execute(&format!(
            "{}; {}; {}",
            large_objects::CREATE_SQL,
            large_objects::CLEAR_SQL,
            super::records::FORGET_ALL_SQL
        ))
        .await
        .map_err(|e| target.query_error("emptying what an earlier build kept", e))?;
    Ok(rows.len())
}

/// Drops the leftovers of earlier runs (see [`drop_leftovers`]) unless run `run_id` has
/// loaded something into them already (its records in `replicator.loaded`): called before a
/// run rehearses, so that an abandoned run's shadow does not hold the disk that tonight's
/// needs. Returns how many schemas went.
pub async fn drop_abandoned(target: &PgEndpoint, run_id: &str) -> Result<usize, StepError> {
    if !super::records::Recorder::new(run_id)
        .loaded(target)
        .await?
        .ids
        .is_empty()
    {
        return Ok(0);
    }
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    client
        .batch_execute("SET client_min_messages = warning")
        .await
        .map_err(|e| target.query_error("dropping an abandoned run's schemas", e))?;
    drop_leftovers(target, &client).await
}

/// Drops schema `name` and everything in it, in transactions that each lock at most what the
/// server's lock table holds (a schema of thousands of tables cannot go in one): its tables a
/// batch at a time, then the schema. Waits for readers' locks (`lock_timeout`, retried).
pub async fn drop_schema(
    target: &PgEndpoint,
    client: &Client,
    name: &str,
) -> Result<(), StepError> {
    drop_tables_in_batches(target, client, Some(name)).await?;
    with_lock_retries(
        target,
        client,
        &format!(
            "BEGIN; SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'; DROP SCHEMA IF EXISTS {} CASCADE; COMMIT",
            quote_ident(name)
        ),
        "dropping a schema of an earlier copy",
    )
    .await
}

/// Drops the tables, materialized views and foreign tables of schema `schema` (`None`: every
/// one the role owns, before the wipe's `DROP OWNED`), a batch per transaction sized from the
/// server's lock table: one transaction over thousands of relations fails with `out of shared
/// memory` for that alone.
pub async fn drop_tables_in_batches(
    target: &PgEndpoint,
    client: &Client,
    schema: Option<&str>,
) -> Result<(), StepError> {
    let batch = super::locks::budget(target).await?.drop_batch();
    let q = |e| target.query_error("dropping tables in batches", e);
    loop {
        // (kind of DROP, name): tables, materialized views and foreign tables.
        let found: Vec<(String, String)> = client
            .query(
                "SELECT CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW'
                                       WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                        format('%I.%I', n.nspname, c.relname)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
                    AND CASE WHEN $1::text IS NULL
                             THEN c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                             ELSE n.nspname = $1 END
                  LIMIT $2",
                &[&schema, &(batch as i64)],
            )
            .await
            .map_err(q)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        let mut sql = format!("BEGIN; SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}';");
        for kind in ["TABLE", "MATERIALIZED VIEW", "FOREIGN TABLE"] {
            let names: Vec<&str> = found
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| n.as_str())
                .collect();
            if !names.is_empty() {
                sql.push_str(&format!(
                    " DROP {kind} IF EXISTS {} CASCADE;",
                    names.join(", ")
                ));
            }
        }
        sql.push_str(" COMMIT");
        with_lock_retries(target, client, &sql, "dropping tables in batches").await?;
    }
}

/// Runs `sql` (a whole transaction) again while it fails on a lock timeout: a reader's long
/// query delays it, never fails it and is never cancelled. After [`SWITCH_PATIENCE`], a
/// transient failure.
async fn with_lock_retries(
    target: &PgEndpoint,
    client: &Client,
    sql: &str,
    what: &'static str,
) -> Result<(), StepError> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code().is_some_and(|c| c.code() == "55P03") => {
                let _ = client.batch_execute("ROLLBACK").await;
                if started.elapsed() > SWITCH_PATIENCE {
                    return Err(StepError::transient(format!(
                        "{what} on {}: readers held their locks for {} minutes; will retry",
                        target.describe(),
                        SWITCH_PATIENCE.as_secs() / 60
                    )));
                }
                if !said {
                    tracing::info!(
                        "{what}: waiting for readers' queries to end (they are not cancelled)"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(target.query_error(what, e).into());
            }
        }
    }
}

/// The switch's transaction: `first` (from `BEGIN` to a `SAVEPOINT switch`) once, then
/// `body` again while it fails on a lock timeout, from the savepoint: a reader's long query
/// delays the renames, never fails them and is never cancelled, and what `first` did (the
/// large objects) is not done again for each try. After [`SWITCH_PATIENCE`], a transient
/// failure.
async fn switch_transaction(
    target: &PgEndpoint,
    client: &Client,
    first: &str,
    body: &str,
) -> Result<(), StepError> {
    const WHAT: &str = "switching to tonight's copy";
    let started = std::time::Instant::now();
    let mut said = false;
    let mut begun = false;
    let failed = |e: tokio_postgres::Error| -> StepError { target.query_error(WHAT, e).into() };
    // The commit goes with the body, in one message: a replicator killed after sending it
    // leaves the server to finish the switch (a resumed run finds it in
    // `replicator.switches`), one killed before leaves it to roll back.
    let body = format!("{body};\nCOMMIT");
    loop {
        let tried = if begun {
            client.batch_execute(&body).await
        } else {
            match client.batch_execute(first).await {
                Ok(()) => {
                    begun = true;
                    client.batch_execute(&body).await
                }
                Err(e) => Err(e),
            }
        };
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if e.code().is_some_and(|c| c.code() == "55P03") => {
                let undo = if begun {
                    "ROLLBACK TO SAVEPOINT switch"
                } else {
                    "ROLLBACK"
                };
                if let Err(e) = client.batch_execute(undo).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(failed(e));
                }
                if started.elapsed() > SWITCH_PATIENCE {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(StepError::transient(format!(
                        "{WHAT} on {}: readers held their locks for {} minutes; will retry",
                        target.describe(),
                        SWITCH_PATIENCE.as_secs() / 60
                    )));
                }
                if !said {
                    tracing::info!(
                        "{WHAT}: waiting for readers' queries to end (they are not cancelled)"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(failed(e));
            }
        }
    }
}

/// The table that says a run's switch committed: written in the switch's transaction, so a
/// run resumed in `Switching` knows whether it happened.
const SWITCHES_TABLE: &str = "SET client_min_messages = warning;
    CREATE SCHEMA IF NOT EXISTS replicator;
    CREATE TABLE IF NOT EXISTS replicator.switches (
        run_id text PRIMARY KEY,
        switched_at timestamptz NOT NULL DEFAULT now())";

/// When `run_id`'s switch committed (`None`: it did not).
pub async fn switched_already(
    target: &PgEndpoint,
    client: &Client,
    run_id: &str,
) -> Result<Option<DateTime<Utc>>, StepError> {
    client
        .batch_execute(SWITCHES_TABLE)
        .await
        .map_err(|e| target.query_error("creating replicator.switches", e))?;
    Ok(client
        .query_opt(
            "SELECT switched_at FROM replicator.switches WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .map_err(|e| target.query_error("reading replicator.switches", e))?
        .map(|row| row.get(0)))
}

/// The switch: one transaction that renames each live schema aside and each shadow to the
/// live name, moves the extensions of the live schemas with them, carries the live schemas'
/// owner, privileges and comment over (`carried`: statements run after the renames), and
/// records the switch ([`drop_yesterday`] drops yesterday's schemas after). A run resumed
/// here after the commit does nothing. Returns when the switch committed, as recorded.
pub async fn switch(
    target: &PgEndpoint,
    run_id: &str,
    schemas: &[SwitchedSchema],
    carried: &[String],
) -> Result<DateTime<Utc>, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    if switched_already(target, &client, run_id).await?.is_none() {
        let live: Vec<String> = schemas.iter().map(|s| s.live.clone()).collect();
        let renamed: Vec<String> = schemas
            .iter()
            .filter(|s| !s.by_objects)
            .map(|s| s.live.clone())
            .collect();
        let extensions: Vec<(String, String)> = client
            .query(
                "SELECT e.extname::text, n.nspname::text
                   FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                  WHERE n.nspname = ANY($1::text[])",
                &[&renamed],
            )
            .await
            .map_err(|e| target.query_error("listing the extensions to move", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // Large objects first (they take no lock a reader holds): yesterday's of the role
        // unlinked, tonight's created from what the build kept. Done once; the renames after
        // the savepoint are what a reader's lock may make wait.
        let (yesterday, tonight) = large_objects::counts(target, &client).await?;
        let mut first = format!("BEGIN; SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}';\n");
        if yesterday > 0 || tonight > 0 {
            first.push_str(&format!(
                "{}; {};\n",
                large_objects::REPLACE_SQL,
                large_objects::CLEAR_SQL
            ));
        }
        first.push_str("SAVEPOINT switch");
        let mut sql = String::new();
        // The moves go first: their identities name the schemas as they are before the
        // renames.
        for s in schemas.iter().filter(|s| s.by_objects) {
            let q = |e| target.query_error("listing the objects to move at the switch", e);
            let out = objects::moves(&client, &s.live, &s.old).await.map_err(q)?;
            let into = objects::moves(&client, &s.shadow, &s.live)
                .await
                .map_err(q)?;
            tracing::debug!(
                schema = %s.live,
                out = out.len(),
                into = into.len(),
                "switching {} object by object",
                s.live
            );
            sql.push_str(&objects::switch_sql(&s.old, &s.shadow, &out, &into));
        }
        for s in schemas.iter().filter(|s| !s.by_objects) {
            sql.push_str(&format!(
                "ALTER SCHEMA {} RENAME TO {};\nALTER SCHEMA {} RENAME TO {};\n",
                quote_ident(&s.live),
                quote_ident(&s.old),
                quote_ident(&s.shadow),
                quote_ident(&s.live)
            ));
        }
        for (ext, schema) in &extensions {
            sql.push_str(&format!(
                "ALTER EXTENSION {} SET SCHEMA {};\n",
                quote_ident(ext),
                quote_ident(schema)
            ));
        }
        for stmt in carried {
            sql.push_str(stmt);
            sql.push_str(";\n");
        }
        // The statement's own clock, not the transaction's start (`now()`): the closest to
        // the commit, which a lock wait may delay.
        sql.push_str(&format!(
            "INSERT INTO replicator.switches (run_id, switched_at) VALUES ('{}', clock_timestamp())",
            run_id.replace('\'', "''")
        ));
        let began = std::time::Instant::now();
        switch_transaction(target, &client, &first, &sql).await?;
        let seconds = began.elapsed().as_secs_f64();
        tracing::info!(
            schemas = %live.join(","),
            large_objects = tonight,
            seconds,
            "switched in {seconds:.1}s: readers see tonight's copy from now on ({}{})",
            live.join(", "),
            if yesterday > 0 || tonight > 0 {
                format!("; large objects: {yesterday} of yesterday's replaced by {tonight}")
            } else {
                String::new()
            }
        );
    }
    let switched_at = switched_already(target, &client, run_id)
        .await?
        .ok_or_else(|| {
            StepError::transient(format!(
                "after the switch on {}, replicator.switches holds no row for run {run_id} (was it dropped by hand?); will retry",
                target.describe()
            ))
        })?;
    Ok(switched_at)
}

/// Drops yesterday's schemas after the switch; one that cannot go is dropped by the next run.
pub async fn drop_yesterday(
    target: &PgEndpoint,
    schemas: &[SwitchedSchema],
) -> Result<(), StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    for s in schemas {
        if let Err(e) = drop_schema(target, &client, &s.old).await {
            tracing::warn!(schema = %s.old, "could not drop yesterday's schema {}: {e}; the next run drops it", s.old);
        }
    }
    Ok(())
}

/// What the live schemas carry over to tonight's (run in the switch after the renames, when
/// the live names are tonight's): their owner, where it is not the role (schema `public` is
/// `pg_database_owner`'s), and their comment where tonight's has none.
pub async fn carry_schemas(
    target: &PgEndpoint,
    client: &Client,
    schemas: &[SwitchedSchema],
) -> Result<Vec<String>, StepError> {
    let mut out = Vec::new();
    for s in schemas {
        let row = client
            .query_opt(
                "SELECT pg_get_userbyid(l.nspowner)::text,
                        l.nspowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user),
                        obj_description(l.oid, 'pg_namespace'),
                        obj_description(n.oid, 'pg_namespace')
                   FROM pg_namespace l, pg_namespace n
                  WHERE l.nspname = $1 AND n.nspname = $2",
                &[&s.live, &s.shadow],
            )
            .await
            .map_err(|e| target.query_error("reading the live schemas' owner and comment", e))?;
        let Some(row) = row else { continue };
        let (owner, other): (String, bool) = (row.get(0), row.get(1));
        let (comment, tonight): (Option<String>, Option<String>) = (row.get(2), row.get(3));
        if s.by_objects {
            // The live schema stays, with its owner and privileges; the dump's comment on it
            // was restored on the shadow.
            if let Some(c) = tonight.filter(|t| Some(t) != comment.as_ref()) {
                out.push(format!(
                    "COMMENT ON SCHEMA {} IS '{}'",
                    quote_ident(&s.live),
                    c.replace('\'', "''")
                ));
            }
            continue;
        }
        if other {
            out.push(format!(
                "ALTER SCHEMA {} OWNER TO {}",
                quote_ident(&s.live),
                quote_ident(&owner)
            ));
        }
        if let (Some(c), None) = (comment, tonight) {
            out.push(format!(
                "COMMENT ON SCHEMA {} IS '{}'",
                quote_ident(&s.live),
                c.replace('\'', "''")
            ));
        }
    }
    Ok(out)
}
