//! `REPLICA_RULES` against a dump and a target: the dump's tables read from its schema SQL
//! (`pg_restore --schema-only --file=-`: no data read, no connection), the rules checked
//! against them before the wipe, and after the rows, the foreign keys whose referenced rows a
//! row filter dropped, counted.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::Path;

use super::apply::script::{Piece, ScriptParser};
use super::url::PgEndpoint;
use crate::dump::toc::{Toc, pg_restore_stdout};
use crate::error::StepError;
use crate::masking::schema::Schema;
use crate::masking::{Plan, RulesFile};

/// The dump's tables, their columns and which are `NOT NULL` or unique.
pub async fn read_schema(dump: &Path) -> Result<Schema, StepError> {
    let args: Vec<OsString> = std::iter::once("--schema-only")
        .chain(crate::replica::apply::stream::TRANSLATE)
        .map(OsString::from)
        .collect();
    let sql = pg_restore_stdout(dump, &args, "--schema-only --file=-").await?;
    let mut parser = ScriptParser::new();
    let mut schema = Schema::default();
    let mut pieces = Vec::new();
    for line in sql.split_inclusive('\n') {
        parser
            .line(line.as_bytes(), &mut pieces)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        for p in pieces.drain(..) {
            if let Piece::Statement(s) = p {
                schema.statement(&s);
            }
        }
    }
    schema.finish();
    Ok(schema)
}

/// The tables whose rows the restore loads: `TABLE DATA` entries not in `skip`, minus the
/// tables of `EXCLUDE_TABLE_DATA` (schema public).
pub fn restored_tables(
    toc: &Toc,
    skip: &HashSet<u32>,
    exclude: &[String],
) -> Vec<(String, String)> {
    toc.entries()
        .filter(|e| e.desc == "TABLE DATA" && !skip.contains(&e.id))
        .filter(|e| !(e.schema == "public" && exclude.contains(&e.tag)))
        .map(|e| (e.schema.clone(), e.tag.clone()))
        .collect()
}

/// The rules checked against the dump: a permanent error listing every rule that cannot
/// apply (before the wipe: nothing was touched).
pub async fn check_rules(
    rules: &RulesFile,
    dump: &Path,
    restored: &[(String, String)],
) -> Result<Plan, StepError> {
    let schema = read_schema(dump).await?;
    crate::masking::validate(rules, &schema, restored).map_err(|e| {
        StepError::permanent(format!(
            "REPLICA_RULES cannot apply to this dump (nothing was touched):\n{e}"
        ))
    })
}

/// Under `FK_MODE=validate`, a foreign key that references a table a row filter thins out
/// would fail when it is added (the rows it points at are gone): refused before the wipe.
pub async fn check_filters_fit_fk_mode(
    plan: &Plan,
    dump: &Path,
    fk_mode: super::fk::FkMode,
) -> Result<(), StepError> {
    if fk_mode != super::fk::FkMode::Validate || plan.filtered().next().is_none() {
        return Ok(());
    }
    let filtered: HashSet<&(String, String)> = plan.filtered().collect();
    let blocked: Vec<String> = crate::dump::toc::foreign_keys(dump)
        .await?
        .into_iter()
        .filter(|fk| filtered.contains(&(fk.ref_schema.clone(), fk.ref_table.clone())))
        .map(|fk| {
            format!(
                "{}.{} references {}.{}",
                fk.schema, fk.table, fk.ref_schema, fk.ref_table
            )
        })
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    Err(StepError::permanent(format!(
        "REPLICA_RULES filters rows of tables that foreign keys reference ({}), and FK_MODE=validate would fail adding those keys: use FK_MODE=trust (the keys are added NOT VALID and the rows pointing at filtered-out rows are counted) or FK_MODE=skip (nothing was touched)",
        blocked.join("; ")
    )))
}

/// For each foreign key that references a table a row filter thinned out: how many rows
/// reference a row that is not there (`schema.table.constraint` -> rows). Under `FK_MODE=trust`
/// the keys were added `NOT VALID`, so such rows do not fail the restore; they are reported.
pub async fn count_orphans(
    target: &PgEndpoint,
    plan: &Plan,
) -> Result<BTreeMap<String, u64>, StepError> {
    let filtered: Vec<String> = plan
        .filtered()
        .map(|(s, t)| format!("{}.{}", quote(s), quote(t)))
        .collect();
    let mut out = BTreeMap::new();
    if filtered.is_empty() {
        return Ok(out);
    }
    let client = target.connect().await?;
    let fail = |e: tokio_postgres::Error| {
        StepError::transient(format!(
            "counting the rows that reference filtered-out rows: {e}"
        ))
    };
    let keys = client
        .query(
            "SELECT n.nspname, c.relname, k.conname,
                    k.conrelid::regclass::text, k.confrelid::regclass::text,
                    ARRAY(SELECT quote_ident(a.attname) FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o),
                    ARRAY(SELECT quote_ident(a.attname) FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
                          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o)
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE k.contype = 'f' AND k.conparentid = 0
               AND k.confrelid = ANY (SELECT to_regclass(x) FROM unnest($1::text[]) x)",
            &[&filtered],
        )
        .await
        .map_err(fail)?;
    for k in keys {
        let (schema, table, name): (String, String, String) = (k.get(0), k.get(1), k.get(2));
        let (child, parent): (String, String) = (k.get(3), k.get(4));
        let (cols, refs): (Vec<String>, Vec<String>) = (k.get(5), k.get(6));
        let not_null = cols
            .iter()
            .map(|c| format!("c.{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let join = cols
            .iter()
            .zip(&refs)
            .map(|(c, r)| format!("p.{r} = c.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT count(*) FROM {child} c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {join})"
        );
        let n: i64 = client.query_one(&sql, &[]).await.map_err(fail)?.get(0);
        if n > 0 {
            let key = if schema == "public" {
                format!("{table}.{name}")
            } else {
                format!("{schema}.{table}.{name}")
            };
            out.insert(key, n as u64);
        }
    }
    Ok(out)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
