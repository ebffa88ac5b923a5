//! Readers keep their access: what the target's role granted to other roles is read before the
//! wipe or the switch, and granted again on tonight's objects after the restore.
//!
//! A DBA gives an analysts' role `USAGE` on a schema, `SELECT` on tables, and default
//! privileges so that new tables are readable too. The wipe (`DROP OWNED`) drops the role's
//! default privileges and its objects with their grants; a swap builds new objects. Either way
//! the readers would get `permission denied` every morning. The grants are kept in the run's
//! plan (`dump::plan::Readers`), so that a resumed run still has them.

use tokio_postgres::Client;

use super::url::{CONTROL_APPLICATION_NAME, PgEndpoint};
use crate::dump::plan::{Grant, Readers};
use crate::dump::rewrite::quote_ident;
use crate::error::StepError;

/// The most privileges on large objects kept (each is one object's: a database of millions
/// of large objects each granted to a reader would not fit in the run's record).
const MAX_LARGE_OBJECT_GRANTS: usize = 10_000;

/// What the role granted to other roles on the objects it owns in `schemas` (and on the
/// schemas, and on its large objects), and its default privileges.
pub async fn read(target: &PgEndpoint, schemas: &[String]) -> Result<Readers, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let q = |e| target.query_error("reading the privileges readers hold", e);
    let me = "(SELECT oid FROM pg_roles WHERE rolname = current_user)";
    let rows = client
        .query(
            &format!(
                "SELECT kind, schema, name, grantee, string_agg(privilege_type, ', ' ORDER BY privilege_type), bool_or(is_grantable)
                   FROM (
                     SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind,
                            n.nspname::text AS schema, c.relname::text AS name, a.*
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                            LATERAL aclexplode(c.relacl) a
                      WHERE c.relowner = {me} AND n.nspname = ANY($1::text[])
                        AND c.relkind IN ('r','p','v','m','S','f')
                     UNION ALL
                     SELECT 'SCHEMA', NULL, n.nspname::text, a.*
                       FROM pg_namespace n, LATERAL aclexplode(n.nspacl) a
                      WHERE n.nspname = ANY($1::text[])
                     UNION ALL
                     (SELECT 'LARGE OBJECT', NULL, m.oid::text, a.*
                        FROM pg_largeobject_metadata m, LATERAL aclexplode(m.lomacl) a
                       WHERE m.lomowner = {me} AND a.grantee <> {me}
                       ORDER BY m.oid LIMIT {MAX_LARGE_OBJECT_GRANTS})
                   ) g(kind, schema, name, grantor, grantee_oid, privilege_type, is_grantable)
                   CROSS JOIN LATERAL (SELECT CASE WHEN grantee_oid = 0 THEN 'PUBLIC'
                                                   ELSE pg_get_userbyid(grantee_oid)::text END) r(grantee)
                  WHERE grantee_oid <> {me}
                    AND grantee_oid NOT IN (SELECT nspowner FROM pg_namespace WHERE nspname = ANY($1::text[]))
                  GROUP BY kind, schema, name, grantee
                  ORDER BY 1, 2, 3, 4"
            ),
            &[&schemas],
        )
        .await
        .map_err(q)?;
    let grants = rows
        .iter()
        .map(|r| Grant {
            kind: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            grantee: r.get(3),
            privileges: r.get(4),
            grantable: r.get(5),
        })
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                            WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES'
                            WHEN 'L' THEN 'LARGE OBJECTS' ELSE 'SCHEMAS' END,
                        n.nspname::text,
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END,
                        string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type),
                        bool_or(a.is_grantable)
                   FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
                        LATERAL aclexplode(d.defaclacl) a
                  WHERE d.defaclrole = {me} AND a.grantee <> {me}
                  GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ),
            &[],
        )
        .await
        .map_err(q)?;
    let defaults = rows
        .iter()
        .map(|r| Grant {
            kind: r.get(0),
            schema: r.get(1),
            name: String::new(),
            grantee: r.get(2),
            privileges: r.get(3),
            grantable: r.get(4),
        })
        .collect();
    Ok(Readers {
        grants,
        defaults,
        views: Vec::new(),
    })
}

/// `GRANT` of `g` on the object in schema `schema` (the live one, or its shadow).
fn grant_sql(g: &Grant, schema: Option<&str>) -> String {
    let grantee = if g.grantee == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(&g.grantee)
    };
    let object = match (g.kind.as_str(), schema) {
        ("SCHEMA", _) => format!("SCHEMA {}", quote_ident(schema.unwrap_or(&g.name))),
        ("LARGE OBJECT", _) => format!("LARGE OBJECT {}", g.name.parse::<u32>().unwrap_or(0)),
        (kind, Some(s)) => format!("{kind} {}.{}", quote_ident(s), quote_ident(&g.name)),
        (kind, None) => format!("{kind} {}", quote_ident(&g.name)),
    };
    format!(
        "GRANT {} ON {object} TO {grantee}{}",
        g.privileges,
        if g.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

/// `ALTER DEFAULT PRIVILEGES` of `d`.
pub fn default_sql(d: &Grant) -> String {
    let grantee = if d.grantee == "PUBLIC" {
        "PUBLIC".to_string()
    } else {
        quote_ident(&d.grantee)
    };
    format!(
        "ALTER DEFAULT PRIVILEGES{} GRANT {} ON {} TO {grantee}{}",
        d.schema
            .as_ref()
            .map(|s| format!(" IN SCHEMA {}", quote_ident(s)))
            .unwrap_or_default(),
        d.privileges,
        d.kind,
        if d.grantable {
            " WITH GRANT OPTION"
        } else {
            ""
        }
    )
}

/// The privileges on large objects, as statements for the switch's transaction (swap mode:
/// tonight's large objects exist only from the switch on). One whose object is not in
/// tonight's copy is skipped there.
pub fn large_object_grants_sql(readers: &Readers) -> Vec<String> {
    readers
        .grants
        .iter()
        .filter(|g| g.kind == "LARGE OBJECT")
        .map(|g| {
            format!(
                "DO $replicator$ BEGIN {}; EXCEPTION WHEN undefined_object THEN NULL; END $replicator$",
                grant_sql(g, None)
            )
        })
        .collect()
}

/// Grants `readers`' privileges again on tonight's objects; `schema_of` says in which schema
/// tonight's copy of a live schema's objects is (its shadow before a switch, itself after a
/// wipe). Default privileges are given again too (`with_defaults`: in wipe mode, where the
/// wipe dropped them), and the privileges on large objects (in swap mode the switch gives
/// those: [`large_object_grants_sql`]). A grant whose object is gone is reported, not an
/// error. Returns the grants given.
pub async fn grant_again(
    target: &PgEndpoint,
    readers: &Readers,
    schema_of: &(dyn Fn(&str) -> String + Sync),
    with_defaults: bool,
) -> Result<usize, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let mut given = 0;
    let mut gone = Vec::new();
    for g in &readers.grants {
        if g.kind == "LARGE OBJECT" && !with_defaults {
            continue;
        }
        let schema = match g.kind.as_str() {
            "SCHEMA" => Some(schema_of(&g.name)),
            _ => g.schema.as_deref().map(schema_of),
        };
        match run(&client, &grant_sql(g, schema.as_deref())).await {
            Ok(()) => given += 1,
            Err(e) if gone_object(&e) => gone.push(format!(
                "{} {}{}",
                g.kind,
                g.schema
                    .as_ref()
                    .map(|s| format!("{s}."))
                    .unwrap_or_default(),
                g.name
            )),
            Err(e) => {
                return Err(target
                    .query_error("granting readers' privileges again", e)
                    .into());
            }
        }
    }
    if with_defaults {
        for d in &readers.defaults {
            match run(&client, &default_sql(d)).await {
                Ok(()) => given += 1,
                Err(e) if gone_object(&e) => gone.push(format!(
                    "default privileges in schema {}",
                    d.schema.as_deref().unwrap_or("-")
                )),
                Err(e) => {
                    return Err(target
                        .query_error("giving default privileges again", e)
                        .into());
                }
            }
        }
    }
    if !gone.is_empty() {
        tracing::warn!(
            objects = %gone.join(","),
            "{} grant(s) to readers were not given again: their object is not in tonight's copy ({})",
            gone.len(),
            gone.join(", ")
        );
    }
    Ok(given)
}

async fn run(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(sql).await
}

/// The object (or role) of a grant no longer exists.
fn gone_object(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "42P01" | "3F000" | "42704" | "42883"))
}
