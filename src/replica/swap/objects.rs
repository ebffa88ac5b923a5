//! Switching a schema object by object (a [`SwitchedSchema`] with `by_objects`): where the live
//! schema must stay (it holds extension members the role cannot move, objects of other roles,
//! or belongs to another role, as `public` does on PostgreSQL 14), the switch moves the role's
//! own objects instead of renaming the schema: yesterday's out to the old schema, tonight's in
//! from the shadow, in the same transaction as the renames of the other schemas.
//!
//! Indexes, constraints, triggers, owned sequences and a table's row type move with their
//! table (`ALTER TABLE ... SET SCHEMA`); array types with their element type. Everything else
//! that has a schema and an owner is listed here, so that nothing of the role's is left
//! behind. Range types cannot move this way (their constructor functions belong to the
//! bootstrap superuser): [`range_types`] finds them, and the plan does not choose this then.
//!
//! [`SwitchedSchema`]: crate::dump::plan::SwitchedSchema

use tokio_postgres::Client;

use crate::dump::rewrite::quote_ident;

/// The role's objects in schema `$1`, not members of an extension, as `(kind, identity)` in
/// the order they must move: routines and operators before the types their signatures name
/// (identities are qualified with `search_path` empty, and a type that moved first would no
/// longer be where the signature says).
const OBJECTS_SQL: &str = "WITH objs(ord, kind, ident, cls, oid, owner) AS (
    SELECT 1, 'ROUTINE', format('%I.%I(%s)', n.nspname, p.proname,
                                  pg_get_function_identity_arguments(p.oid)),
           'pg_proc'::regclass, p.oid, p.proowner
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 2, 'OPERATOR', format('%I.%s(%s, %s)', n.nspname, o.oprname,
                                   CASE WHEN o.oprleft = 0 THEN 'NONE' ELSE format_type(o.oprleft, NULL) END,
                                   CASE WHEN o.oprright = 0 THEN 'NONE' ELSE format_type(o.oprright, NULL) END),
           'pg_operator'::regclass, o.oid, o.oprowner
      FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 3, 'OPERATOR CLASS', format('%I.%I USING %I', n.nspname, c.opcname, a.amname),
           'pg_opclass'::regclass, c.oid, c.opcowner
      FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
      JOIN pg_am a ON a.oid = c.opcmethod WHERE n.nspname = $1
    UNION ALL
    SELECT 4, 'OPERATOR FAMILY', format('%I.%I USING %I', n.nspname, f.opfname, a.amname),
           'pg_opfamily'::regclass, f.oid, f.opfowner
      FROM pg_opfamily f JOIN pg_namespace n ON n.oid = f.opfnamespace
      JOIN pg_am a ON a.oid = f.opfmethod WHERE n.nspname = $1
    UNION ALL
    SELECT 5, 'TEXT SEARCH CONFIGURATION', format('%I.%I', n.nspname, c.cfgname),
           'pg_ts_config'::regclass, c.oid, c.cfgowner
      FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 5, 'TEXT SEARCH DICTIONARY', format('%I.%I', n.nspname, d.dictname),
           'pg_ts_dict'::regclass, d.oid, d.dictowner
      FROM pg_ts_dict d JOIN pg_namespace n ON n.oid = d.dictnamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 6, 'STATISTICS', format('%I.%I', n.nspname, s.stxname),
           'pg_statistic_ext'::regclass, s.oid, s.stxowner
      FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 6, 'COLLATION', format('%I.%I', n.nspname, c.collname),
           'pg_collation'::regclass, c.oid, c.collowner
      FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 6, 'CONVERSION', format('%I.%I', n.nspname, c.conname),
           'pg_conversion'::regclass, c.oid, c.conowner
      FROM pg_conversion c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1
    UNION ALL
    SELECT 7, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END,
           format('%I.%I', n.nspname, c.relname), 'pg_class'::regclass, c.oid, c.relowner
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       -- A sequence a column owns (serial, identity) moves with its table.
       AND NOT (c.relkind = 'S' AND EXISTS (
                SELECT 1 FROM pg_depend d
                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT 8, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           format('%I.%I', n.nspname, t.typname), 'pg_type'::regclass, t.oid, t.typowner
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname = $1 AND t.typtype IN ('b', 'c', 'd', 'e', 'r', 'm')
       -- A table's row type moves with the table, an array type with its element type.
       AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
       AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
)
SELECT kind, ident FROM objs o
 WHERE o.owner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
   -- An extension's members stay with their extension; a routine that is part of another
   -- object (a range's constructor) is not the role's to move.
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = o.cls AND d.objid = o.oid
                      AND (d.deptype = 'e' OR (d.deptype = 'i' AND o.kind = 'ROUTINE')))
 ORDER BY ord, ident";

/// The statements that move the role's own objects from schema `from` to schema `to`
/// (identities fully qualified: they are read with `search_path` empty).
pub async fn moves(
    client: &Client,
    from: &str,
    to: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(qualified(client, OBJECTS_SQL, &[&from])
        .await?
        .iter()
        .map(|r| {
            let (kind, ident): (String, String) = (r.get(0), r.get(1));
            format!("ALTER {kind} {ident} SET SCHEMA {}", quote_ident(to))
        })
        .collect())
}

/// `sql`'s rows read with `search_path` empty, so that every name the catalog functions print
/// (`format_type`, `pg_get_viewdef`, identity arguments) is schema-qualified and means the same
/// from any session; the session's `search_path` is reset after.
pub(in crate::replica) async fn qualified(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    client.batch_execute("SET search_path = ''").await?;
    let rows = client.query(sql, params).await;
    client.batch_execute("RESET search_path").await?;
    rows
}

/// The range types the role owns in `schemas` (`schema.name`): a schema holding one cannot be
/// switched object by object.
pub async fn range_types(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT format('%I.%I', n.nspname, t.typname)
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = ANY($1::text[]) AND t.typtype = 'r'
                AND t.typowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
              ORDER BY 1",
            &[&schemas],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The switch of one schema object by object: the old schema created, yesterday's objects
/// moved out of the live schema, tonight's moved in from the shadow, the emptied shadow
/// dropped (without `CASCADE`: anything left in it fails the switch, whole, rather than go).
pub fn switch_sql(old: &str, shadow: &str, out: &[String], into: &[String]) -> String {
    let mut sql = format!("CREATE SCHEMA {};\n", quote_ident(old));
    for stmt in out.iter().chain(into) {
        sql.push_str(stmt);
        sql.push_str(";\n");
    }
    sql.push_str(&format!("DROP SCHEMA {};\n", quote_ident(shadow)));
    sql
}
