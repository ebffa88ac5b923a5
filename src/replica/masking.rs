//! `REPLICA_RULES` against a dump and a target: the dump's tables read from its schema SQL
//! (`pg_restore --schema-only --file=-`: no data read, no connection), the rules checked
//! against them before the wipe (strict mode's comments and large objects included), the
//! planner statistics that would carry real values left out, and after the rows, the foreign
//! keys whose referenced rows a row filter dropped, counted.

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
    Ok(check_rules_with_schema(rules, dump, restored).await?.0)
}

/// [`check_rules`], with the schema it read.
pub async fn check_rules_with_schema(
    rules: &RulesFile,
    dump: &Path,
    restored: &[(String, String)],
) -> Result<(Plan, Schema), StepError> {
    let schema = read_schema(dump).await?;
    let plan = crate::masking::validate(rules, &schema, restored).map_err(|e| {
        StepError::permanent(format!(
            "REPLICA_RULES cannot apply to this dump (nothing was touched):\n{e}"
        ))
    })?;
    Ok((plan, schema))
}

/// Under `strict = true`, the parts of the dump outside the rows that the file says nothing
/// of: comments (free text, about people as often as about tables) and large objects (bytes
/// of any kind) would reach the replica unmasked. Refused before anything is touched, naming
/// them; `skip` is what the restore leaves out already.
pub fn check_dump_parts(rules: &RulesFile, toc: &Toc, skip: &HashSet<u32>) -> Result<(), String> {
    if !rules.strict {
        return Ok(());
    }
    let restored = |e: &&crate::dump::toc::TocEntry| !skip.contains(&e.id);
    let mut problems = Vec::new();
    let named = |entries: Vec<&crate::dump::toc::TocEntry>| {
        let n = entries.len();
        let mut names: Vec<String> = entries
            .iter()
            .take(10)
            .map(|e| match e.schema.as_str() {
                "-" | "" => e.tag.clone(),
                s => format!("{} ({s})", e.tag),
            })
            .collect();
        if n > 10 {
            names.push(format!("and {} more", n - 10));
        }
        (n, names.join(", "))
    };
    if rules.dump.large_objects.is_none() {
        let los: Vec<_> = toc
            .entries()
            .filter(restored)
            .filter(|e| matches!(e.desc.as_str(), "BLOB" | "BLOB METADATA" | "LARGE OBJECT"))
            .collect();
        if !los.is_empty() {
            let (n, names) = named(los);
            problems.push(format!(
                "the dump holds {n} large object entr(ies) ({names}) and the rules file does not say what becomes of them: add `[dump]` with `large_objects = \"drop\"` (or \"keep\", to copy their bytes as they are)"
            ));
        }
    }
    if rules.dump.comments.is_none() {
        let comments: Vec<_> = toc
            .entries()
            .filter(restored)
            .filter(|e| e.desc == "COMMENT")
            .collect();
        if !comments.is_empty() {
            let (n, names) = named(comments);
            problems.push(format!(
                "the dump holds {n} comment(s) ({names}) and the rules file does not say what becomes of them: add `[dump]` with `comments = \"drop\"` (or \"keep\", to copy their text as it is)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "strict mode: {} (nothing was touched)",
            problems.join("; ")
        ))
    }
}

/// The string literals in the DDL of each table the plan masks or filters, as `table:
/// 'a', 'b'` lines: defaults, checks, index predicates and the text of views reading it are
/// schema, copied as written, never masked (docs/masking.md); `check` shows them to a
/// reviewer.
pub fn ddl_literals(plan: &Plan, schema: &Schema) -> Vec<String> {
    plan.tables
        .keys()
        .filter_map(|key| {
            let found = schema.literals(key);
            (!found.is_empty()).then(|| {
                format!(
                    "{}: {}",
                    crate::masking::validate::display_name(key),
                    found
                        .iter()
                        .map(|l| format!("'{}'", l.replace('\'', "''")))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
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
    rewriter: Option<&crate::dump::rewrite::Rewriter>,
) -> Result<BTreeMap<String, u64>, StepError> {
    // In swap mode the rows are in the shadow schemas until the switch.
    let filtered: Vec<String> = plan
        .filtered()
        .map(|(s, t)| {
            let s = rewriter.and_then(|r| r.shadow_of(s)).unwrap_or(s);
            format!("{}.{}", quote(s), quote(t))
        })
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

/// The checks of `REPLICA_RULES` before the wipe (`Extracting`), and what they add to what the
/// restore leaves out: every rule applies (strict mode's columns, comments and large objects
/// included), filters fit `FK_MODE`, and the planner statistics that would carry real values
/// (PostgreSQL 18 dumps) are left out, said here. `skip`: what the selection leaves out.
pub async fn check_before_wipe(
    rules: Option<&RulesFile>,
    dump: &Path,
    toc: &Toc,
    skip: &HashSet<u32>,
    exclude: &[String],
    fk_mode: super::fk::FkMode,
) -> Result<Vec<crate::machine::LeftOut>, StepError> {
    let (plan, schema) = match rules {
        Some(rules) => {
            check_dump_parts(rules, toc, skip).map_err(StepError::permanent)?;
            let restored = restored_tables(toc, skip, exclude);
            let (plan, schema) = check_rules_with_schema(rules, dump, &restored).await?;
            check_filters_fit_fk_mode(&plan, dump, fk_mode).await?;
            tracing::info!("REPLICA_RULES checked against the dump: every rule applies");
            (Some(plan), Some(schema))
        }
        None => (None, None),
    };
    let stats = statistics_plan(toc, plan.as_ref(), schema, dump, skip, exclude).await?;
    if let Some(l) = &stats.left_out {
        tracing::warn!(
            kind = %l.kind,
            count = l.count,
            "the restore leaves out {} {} ({}): {}",
            l.count,
            l.kind,
            l.names.join(", "),
            l.why
        );
    }
    Ok(stats.left_out.into_iter().collect())
}

/// [`super::statistics::plan`] for this dump (its schema read only when some statistics may
/// carry real values and `schema` is not read yet).
async fn statistics_plan(
    toc: &Toc,
    plan: Option<&Plan>,
    schema: Option<Schema>,
    dump: &Path,
    skip: &HashSet<u32>,
    exclude: &[String],
) -> Result<super::statistics::StatisticsPlan, StepError> {
    let has_stats = toc
        .entries()
        .any(|e| e.desc == "STATISTICS DATA" && !skip.contains(&e.id));
    if !has_stats {
        return Ok(Default::default());
    }
    let schema = match schema {
        Some(s) => Some(s),
        None if plan.is_some() || !exclude.is_empty() => Some(read_schema(dump).await?),
        None => None,
    };
    let tainted = match &schema {
        Some(schema) => super::statistics::tainted(plan, exclude, schema),
        None => Default::default(),
    };
    Ok(super::statistics::plan(
        toc,
        schema.as_ref(),
        &tainted,
        skip,
    ))
}

/// What the rows' section needs of `REPLICA_RULES`: the masker (with the run's key), and the
/// statistics entries to leave out.
pub struct Prepared {
    pub masker: Option<std::sync::Arc<crate::masking::Masker>>,
    pub statistics: super::statistics::StatisticsPlan,
}

/// The rules checked again against the dump (a resumed run may read another copy of it), the
/// masker built, the statistics decided. `skip`: what the restore leaves out already (the
/// rows of `EXCLUDE_TABLE_DATA` included).
pub async fn prepare(
    rules: Option<&RulesFile>,
    key: Option<&crate::masking::MaskingKey>,
    dump: &Path,
    toc: &Toc,
    skip: &HashSet<u32>,
    exclude: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Prepared, StepError> {
    let (plan, schema) = match rules {
        Some(rules) => {
            let restored = restored_tables(toc, skip, &[]);
            let (plan, schema) = check_rules_with_schema(rules, dump, &restored).await?;
            (Some(plan), Some(schema))
        }
        None => (None, None),
    };
    let statistics = statistics_plan(toc, plan.as_ref(), schema, dump, skip, exclude).await?;
    let masker = plan.map(|plan| {
        // No key only when no rule is keyed (the configuration refuses the others): this one
        // is then never used for a pseudonym.
        let key = key
            .cloned()
            .unwrap_or_else(crate::masking::MaskingKey::random);
        std::sync::Arc::new(crate::masking::Masker::new(plan, &key, now))
    });
    Ok(Prepared { masker, statistics })
}

/// Once the rows are in: what the rules did counted (foreign keys pointing at filtered-out
/// rows included) and logged. (The masked tables were analyzed with every other, as their
/// rows came in: their statistics are the masked rows'.)
pub async fn after_rows(
    target: &PgEndpoint,
    prepared: Prepared,
    rewriter: Option<&crate::dump::rewrite::Rewriter>,
) -> Result<Option<crate::machine::MaskingCounts>, StepError> {
    let Some(masker) = prepared.masker else {
        return Ok(None);
    };
    let mut counts = masker.counts();
    counts.orphans = count_orphans(target, masker.plan(), rewriter).await?;
    for (key, n) in &counts.orphans {
        tracing::warn!(
            foreign_key = %key,
            rows = n,
            "foreign key {key}: {n} row(s) reference rows a REPLICA_RULES row filter left out (the key is NOT VALID under FK_MODE=trust; joins on it miss them)"
        );
    }
    for (table, n) in &counts.unreadable {
        tracing::warn!(
            table = %table,
            rows = n,
            "REPLICA_RULES: {n} row(s) of {table} dropped because the row filter could not read their value as a date (a filter never keeps a row it cannot decide)"
        );
    }
    tracing::info!(
        masking = %serde_json::to_string(&counts).unwrap_or_default(),
        "REPLICA_RULES: {}",
        counts.describe()
    );
    Ok(Some(counts))
}
