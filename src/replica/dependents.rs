//! Readers' views over the replica's tables. An analyst's view over `public.actor` depends on
//! yesterday's table: the wipe's `CASCADE`, or the drop of yesterday's schemas after a swap,
//! takes it along. Nothing of it may go silently:
//!
//! - [`read`] (when the plan is decided) finds them, views over views included, with their
//!   definitions (names qualified), grants and comments; `check` and the run name them;
//! - [`keep_sql`] writes them to `replicator.kept_definitions`, so that their owners can
//!   re-create them (in the wipe's transaction, or the switch's);
//! - [`recreate`] re-creates, on tonight's tables, those whose owner the role may act as, each
//!   in one transaction that replaces yesterday's (readers never miss it in swap mode).

use tokio_postgres::Client;

use super::url::PgEndpoint;
use crate::dump::plan::KeptView;
use crate::dump::rewrite::quote_ident;
use crate::error::StepError;

/// Views and materialized views over the role's tables (in `$1` schemas, or anywhere when
/// `$1` is null), with how deep they are; `$2`: whether views the role owns count (a swap
/// drops them with yesterday's schemas when they live elsewhere; the wipe drops them by
/// design, and the restore brings the dump's back).
const DEPENDENTS_SQL: &str = "WITH RECURSIVE base AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND ($1::text[] IS NULL OR n.nspname = ANY($1::text[]))
), dep(oid, reads, depth) AS (
    SELECT DISTINCT r.ev_class, d.refobjid, 1
      FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM base)
       AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, dep.reads, dep.depth + 1
      FROM dep JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = dep.oid
      JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
     WHERE r.ev_class <> dep.oid AND dep.depth < 16
)
SELECT n.nspname::text, v.relname::text,
       CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
       pg_get_userbyid(v.relowner)::text,
       pg_has_role(current_user, v.relowner, 'MEMBER'),
       min((SELECT format('%I.%I', tn.nspname, t.relname) FROM pg_class t
              JOIN pg_namespace tn ON tn.oid = t.relnamespace WHERE t.oid = dep.reads)),
       pg_get_viewdef(v.oid),
       obj_description(v.oid, 'pg_class'),
       ARRAY(SELECT format('GRANT %s ON %I.%I TO %s', a.privilege_type, n.nspname, v.relname,
                           CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
               FROM aclexplode(v.relacl) a WHERE a.grantee <> v.relowner
              ORDER BY 1),
       max(dep.depth)
  FROM dep JOIN pg_class v ON v.oid = dep.oid JOIN pg_namespace n ON n.oid = v.relnamespace
 WHERE v.relkind IN ('v', 'm')
   AND (v.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
        OR ($2 AND NOT n.nspname = ANY(coalesce($1::text[], '{}'))))
 GROUP BY v.oid, n.nspname, v.relname, v.relkind, v.relowner
 ORDER BY max(dep.depth), 1, 2";

/// The readers' views that go with yesterday's tables of `schemas` (`None`: the wipe, every
/// table of the role).
pub async fn read(
    target: &PgEndpoint,
    client: &Client,
    schemas: Option<&[String]>,
) -> Result<Vec<KeptView>, StepError> {
    let q = |e| target.query_error("reading the views readers keep over the replica", e);
    // Definitions with every name qualified: they are re-created from another session.
    Ok(
        super::swap::objects::qualified(client, DEPENDENTS_SQL, &[&schemas, &schemas.is_some()])
            .await
            .map_err(q)?
            .iter()
            .map(|r| {
                let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                let body: String = r.get(6);
                let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
                let mut extras: Vec<String> = r.get(8);
                if let Some(c) = r.get::<_, Option<String>>(7) {
                    extras.push(format!(
                        "COMMENT ON {kind} {qualified} IS '{}'",
                        c.replace('\'', "''")
                    ));
                }
                KeptView {
                    definition: format!(
                        "CREATE {kind} {qualified} AS {}",
                        body.trim().trim_end_matches(';')
                    ),
                    schema,
                    name,
                    kind,
                    owner: r.get(3),
                    recreated: r.get(4),
                    reads: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    extras,
                    depth: r.get(9),
                }
            })
            .collect(),
    )
}

/// The statements that record `views` for run `run_id` in `replicator.kept_definitions` (run
/// inside the transaction that drops them).
/// `earlier`: the rows kept by earlier runs, as [`earlier_sql`] gives them (the wipe drops the
/// table with everything else the role owns, and writes them back).
pub fn keep_sql(run_id: &str, views: &[KeptView], earlier: &[String]) -> Vec<String> {
    if views.is_empty() && earlier.is_empty() {
        return Vec::new();
    }
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut out = vec![
        "CREATE SCHEMA IF NOT EXISTS replicator".to_string(),
        "CREATE TABLE IF NOT EXISTS replicator.kept_definitions (
            run_id text NOT NULL,
            schema_name text NOT NULL,
            name text NOT NULL,
            kind text NOT NULL,
            owner text NOT NULL,
            definition text NOT NULL,
            extras text[] NOT NULL,
            kept_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, schema_name, name))"
            .to_string(),
    ];
    out.extend(earlier.iter().cloned());
    for v in views {
        out.push(format!(
            "INSERT INTO replicator.kept_definitions (run_id, schema_name, name, kind, owner, definition, extras)
             VALUES ({}, {}, {}, {}, {}, {}, ARRAY[{}]::text[]) ON CONFLICT DO NOTHING",
            lit(run_id),
            lit(&v.schema),
            lit(&v.name),
            lit(&v.kind),
            lit(&v.owner),
            lit(&v.definition),
            v.extras.iter().map(|e| lit(e)).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// The rows of `replicator.kept_definitions` as statements that write them again.
pub async fn earlier_sql(target: &PgEndpoint, client: &Client) -> Result<Vec<String>, StepError> {
    let q = |e| target.query_error("reading replicator.kept_definitions", e);
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('replicator.kept_definitions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT format('INSERT INTO replicator.kept_definitions
                              (run_id, schema_name, name, kind, owner, definition, extras, kept_at)
                            VALUES (%L, %L, %L, %L, %L, %L, %L, %L) ON CONFLICT DO NOTHING',
                           run_id, schema_name, name, kind, owner, definition, extras, kept_at)
               FROM replicator.kept_definitions",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Re-creates the views the role may act as the owner of, each in one transaction that drops
/// yesterday's (if it is still there) and creates tonight's as its owner. A view that cannot
/// be re-created (a column it reads is gone tonight) is named in a warning, with where its
/// definition is kept; the run goes on. Returns how many were re-created.
pub async fn recreate(target: &PgEndpoint, views: &[KeptView]) -> Result<usize, StepError> {
    let todo: Vec<&KeptView> = views.iter().filter(|v| v.recreated).collect();
    let gone: Vec<String> = views
        .iter()
        .filter(|v| !v.recreated)
        .map(|v| v.describe())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            "readers' views went with yesterday's tables (the role may not act as their owner): {}; their definitions are in replicator.kept_definitions",
            gone.join(", ")
        );
    }
    if todo.is_empty() {
        return Ok(0);
    }
    let client = target.connect().await?;
    let mut done = 0;
    for v in todo {
        let qualified = format!("{}.{}", quote_ident(&v.schema), quote_ident(&v.name));
        let mut sql = format!(
            "BEGIN; SET LOCAL client_min_messages = warning; DROP {} IF EXISTS {qualified} CASCADE;
             SET LOCAL ROLE {}; {};",
            v.kind,
            quote_ident(&v.owner),
            v.definition
        );
        for e in &v.extras {
            sql.push_str(e);
            sql.push(';');
        }
        sql.push_str(" COMMIT");
        match client.batch_execute(&sql).await {
            Ok(()) => done += 1,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                tracing::warn!(
                    "could not re-create {} on tonight's tables ({}); its definition is in replicator.kept_definitions",
                    v.describe(),
                    target.query_error("re-creating a reader's view", e)
                );
            }
        }
    }
    tracing::info!(
        views = done,
        "readers' views re-created on tonight's tables"
    );
    Ok(done)
}
