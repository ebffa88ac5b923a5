//! `USE_UNLOGGED_TABLES`: tables created `UNLOGGED` by the schema's statements
//! ([`CreatedUnlogged`]), and made `UNLOGGED` between the schema and the rows where they were
//! not.

use std::collections::HashSet;
use std::path::Path;

use super::LOCK_TIMEOUT;
use super::checks::dump_error;
use super::url::{CONTROL_APPLICATION_NAME, PgEndpoint};
use crate::error::StepError;

/// `ALTER TABLE ... SET UNLOGGED` on every still-logged ordinary table of schema public owned
/// by the role. Run between the two restore sections: the tables are empty (the rewrite costs
/// nothing) and have no foreign keys yet (which would forbid mixing persistences); the rows and
/// indexes loaded afterwards then skip the WAL.
///
/// Partitioned parents hold no storage and cannot be unlogged (PostgreSQL 15 ignores `SET
/// UNLOGGED` on them), and "constraints on permanent tables may reference only permanent
/// tables": a table that a partitioned table's foreign key references, directly or through a
/// chain of such tables, must stay logged or the post-data section fails. Those foreign keys
/// do not exist yet, so they are read from the dump (`dump`), whose post-data SQL costs no data
/// read. Partitions themselves are ordinary tables and are converted.
///
/// In swap mode (`rewriter`), only the tables of the shadow schemas: yesterday's, which
/// readers read, are left as they are.
pub async fn set_unlogged_with_dump(
    target: &PgEndpoint,
    dump: &Path,
    rewriter: Option<&crate::dump::rewrite::Rewriter>,
) -> Result<usize, StepError> {
    let shadows: Option<Vec<String>> = rewriter.map(|r| r.shadows());
    // The catalog's names as the dump's (a shadow schema is its live one there).
    let as_dumped = |schema: String| -> String {
        rewriter
            .and_then(|r| r.live_of(&schema))
            .map(str::to_string)
            .unwrap_or(schema)
    };
    let fks = foreign_keys_in_dump(dump).await?;
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let partitioned: Vec<(String, String)> = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'p'
                AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                AND ($1::text[] IS NULL OR n.nspname = ANY($1))",
            &[&shadows],
        )
        .await
        .map_err(|e| target.query_error("listing partitioned tables", e))?
        .iter()
        .map(|r| (as_dumped(r.get(0)), r.get(1)))
        .collect();
    let keep_logged = must_stay_logged(&partitioned, &fks);
    if !keep_logged.is_empty() {
        let names: Vec<String> = keep_logged
            .iter()
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        tracing::info!(
            target = %target.describe(),
            tables = %names.join(", "),
            "tables kept logged: a partitioned table's foreign key references them"
        );
    }
    // Every table the restore created: the role owns them all (the replicator's own schema
    // holds its records, which stay logged).
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, format('%I.%I', n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname <> 'replicator'
                AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                AND ($1::text[] IS NULL OR n.nspname = ANY($1))
              ORDER BY 1, 2",
            &[&shadows],
        )
        .await
        .map_err(|e| target.query_error("listing logged tables", e))?;
    client
        .batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(|e| target.query_error("setting lock_timeout", e))?;
    let tables: Vec<String> = rows
        .iter()
        .filter(|row| !keep_logged.contains(&(as_dumped(row.get(0)), row.get(1))))
        .map(|row| row.get(2))
        .collect();
    // Many tables per transaction and per round trip: one `ALTER TABLE` and one commit per
    // table cost a round trip and a disk flush each, most of the step's time on a schema of
    // thousands of small tables. Each table's rewrite holds a few locks until the commit: a
    // batch takes what a drop's does of the server's lock table.
    let batch = super::locks::budget(target).await?.drop_batch();
    for chunk in tables.chunks(batch) {
        let sql: String = chunk
            .iter()
            .map(|t| format!("ALTER TABLE {t} SET UNLOGGED;\n"))
            .collect();
        if client
            .batch_execute(&format!("BEGIN;\n{sql}COMMIT"))
            .await
            .is_ok()
        {
            continue;
        }
        // Which table failed, and why: the batch again, one table at a time.
        let _ = client.batch_execute("ROLLBACK").await;
        for table in chunk {
            if let Err(e) = client
                .batch_execute(&format!("ALTER TABLE {table} SET UNLOGGED"))
                .await
            {
                let e = target.query_error("ALTER TABLE ... SET UNLOGGED", e);
                tracing::error!(%table, error = %e, "cannot make the table unlogged");
                return Err(e.into());
            }
        }
    }
    Ok(tables.len())
}

/// `USE_UNLOGGED_TABLES`: the tables the schema's statements create `UNLOGGED` in the first
/// place (`CREATE UNLOGGED TABLE`), instead of creating them logged and rewriting each with
/// `SET UNLOGGED` after (4 to 6 ms a table of the server's work, most of the unlogging step on
/// a schema of thousands of small tables: docs/performance.md, Many objects). Decided from the
/// dump alone, before anything is created, with the rule of [`set_unlogged_with_dump`]: every
/// ordinary table but the partitioned ones and what their foreign keys reference. That step
/// still runs after the schema and unlogs whatever is left logged (a dump whose table of
/// contents this cannot read, a resumed run): this is its shortcut, not its replacement.
#[derive(Debug, Default)]
pub struct CreatedUnlogged {
    /// `(schema, table)` as dumped (a shadow schema is its live one there).
    tables: HashSet<(String, String)>,
}

impl CreatedUnlogged {
    /// From the dump's table of contents and foreign keys; `None` (said) where the table of
    /// contents cannot be read natively: the unlogging step then does it all.
    pub async fn of_dump(dump: &Path) -> Result<Option<CreatedUnlogged>, StepError> {
        let toc = match crate::dump::rows::read_toc_of(dump) {
            Ok(toc) => toc,
            Err(why) => {
                tracing::info!(
                    reason = %why,
                    "tables created logged, then set UNLOGGED after the schema (the dump's table of contents: {why})"
                );
                return Ok(None);
            }
        };
        let fks = foreign_keys_in_dump(dump).await?;
        Ok(Some(CreatedUnlogged::decide(&toc.entries, &fks)))
    }

    /// Which `TABLE` entries of a dump's table of contents are created unlogged, given its
    /// foreign keys.
    pub fn decide(
        entries: &[crate::dump::archive::Entry],
        fks: &[ForeignKeyTables],
    ) -> CreatedUnlogged {
        let mut plain = Vec::new();
        let mut partitioned = Vec::new();
        for e in entries.iter().filter(|e| e.desc() == "TABLE") {
            let (Some(defn), Some(schema), Some(tag)) = (&e.defn, &e.namespace, &e.tag) else {
                continue;
            };
            let name = (schema.clone(), tag.clone());
            // `CREATE UNLOGGED TABLE` (already), `CREATE FOREIGN TABLE`: left as they are.
            if !defn.trim_start().starts_with("CREATE TABLE ") || schema == "replicator" {
                continue;
            }
            // pg_dump ends a partitioned table's statement with `)\nPARTITION BY ...;`.
            if defn.contains("\nPARTITION BY ") {
                partitioned.push(name);
            } else {
                plain.push(name);
            }
        }
        let kept_logged = must_stay_logged(&partitioned, fks);
        let tables = plain
            .into_iter()
            .filter(|t| !kept_logged.contains(t))
            .collect();
        CreatedUnlogged { tables }
    }

    /// How many tables are created unlogged.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// `stmt` with `UNLOGGED` if it creates one of the tables (as pg_dump writes it: `CREATE
    /// TABLE schema.name ...`), else `None`.
    pub fn create_unlogged(&self, stmt: &str) -> Option<String> {
        let body = stmt.trim_start();
        let rest = body.strip_prefix("CREATE TABLE ")?;
        let (schema, after) = crate::dump::toc::parse_ident(rest)?;
        let (name, _) = crate::dump::toc::parse_ident(after.strip_prefix('.')?)?;
        if !self.tables.contains(&(schema, name)) {
            return None;
        }
        let lead = &stmt[..stmt.len() - body.len()];
        Some(format!("{lead}CREATE UNLOGGED TABLE {rest}"))
    }
}

/// The tables that must stay logged: every partitioned table is permanent, and whatever a
/// permanent table references must be permanent too.
fn must_stay_logged<T: Clone + Ord>(partitioned: &[T], fks: &[(T, T)]) -> Vec<T> {
    let mut keep: Vec<T> = partitioned.to_vec();
    let mut i = 0;
    while i < keep.len() {
        let from = keep[i].clone();
        for (f, to) in fks {
            if *f == from && !keep.contains(to) {
                keep.push(to.clone());
            }
        }
        i += 1;
    }
    keep.retain(|t| !partitioned.contains(t));
    keep.sort();
    keep
}

/// `((schema, table), (schema, referenced table))` of a foreign key.
pub type ForeignKeyTables = ((String, String), (String, String));

/// [`ForeignKeyTables`] of every foreign key in the dump.
pub async fn foreign_keys_in_dump(dump: &Path) -> Result<Vec<ForeignKeyTables>, StepError> {
    Ok(crate::dump::toc::foreign_keys(dump)
        .await
        .map_err(dump_error)?
        .into_iter()
        .map(|fk| ((fk.schema, fk.table), (fk.ref_schema, fk.ref_table)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_logged_what_partitioned_tables_reference() {
        let fks: Vec<(String, String)> = [
            ("answers", "knowledge-elements"),
            ("Events", "User\"Accounts"),
            ("User\"Accounts", "orgs"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec();
        assert_eq!(
            must_stay_logged(&["Events".to_string()], &fks),
            vec!["User\"Accounts".to_string(), "orgs".to_string()]
        );
        assert!(must_stay_logged(&[], &fks).is_empty());
    }

    fn table(id: i64, schema: &str, name: &str, defn: &str) -> crate::dump::archive::Entry {
        crate::dump::archive::Entry {
            id,
            had_dumper: false,
            tag: Some(name.into()),
            desc: Some("TABLE".into()),
            section: 2,
            defn: Some(defn.into()),
            copy_stmt: None,
            namespace: Some(schema.into()),
            tablespace: None,
            owner: None,
            deps: Vec::new(),
            data: crate::dump::archive::DataPos::NoData,
        }
    }

    #[test]
    fn the_schema_creates_unlogged_what_the_unlogging_step_would_unlog() {
        let entries = vec![
            table(
                1,
                "public",
                "answers",
                "CREATE TABLE public.answers (\n    id integer\n);\n",
            ),
            table(
                2,
                "public",
                "Events",
                "CREATE TABLE public.\"Events\" (\n    at date\n)\nPARTITION BY RANGE (at);\n",
            ),
            table(
                3,
                "public",
                "UserAccounts",
                "CREATE TABLE public.\"UserAccounts\" (id int);\n",
            ),
            table(
                4,
                "App Data",
                "we\"ird",
                "CREATE TABLE \"App Data\".\"we\"\"ird\" (x int);\n",
            ),
            table(
                5,
                "public",
                "cache",
                "CREATE UNLOGGED TABLE public.cache (k text);\n",
            ),
            table(
                6,
                "public",
                "remote",
                "CREATE FOREIGN TABLE public.remote (k text) SERVER s;\n",
            ),
            table(
                7,
                "public",
                "Events_2020",
                "CREATE TABLE public.\"Events_2020\" (at date);\n",
            ),
        ];
        let fk = |a: &str, b: &str| {
            (
                ("public".to_string(), a.to_string()),
                ("public".to_string(), b.to_string()),
            )
        };
        let u = CreatedUnlogged::decide(&entries, &[fk("Events", "UserAccounts")]);
        // answers, we"ird and the partition: not the partitioned table, not what its foreign
        // key references, not what is unlogged or foreign already.
        assert_eq!(u.len(), 3);
        let sent = |stmt: &str| u.create_unlogged(stmt);
        assert_eq!(
            sent("\nCREATE TABLE public.answers (\n    id integer\n);").as_deref(),
            Some("\nCREATE UNLOGGED TABLE public.answers (\n    id integer\n);")
        );
        assert_eq!(
            sent("CREATE TABLE \"App Data\".\"we\"\"ird\" (x int);").as_deref(),
            Some("CREATE UNLOGGED TABLE \"App Data\".\"we\"\"ird\" (x int);")
        );
        assert!(sent("CREATE TABLE public.\"Events_2020\" (at date);").is_some());
        assert_eq!(
            sent("CREATE TABLE public.\"Events\" (at date) PARTITION BY RANGE (at);"),
            None
        );
        assert_eq!(sent("CREATE TABLE public.\"UserAccounts\" (id int);"), None);
        assert_eq!(sent("CREATE TABLE public.answers_old (id int);"), None);
        assert_eq!(sent("CREATE INDEX answers_i ON public.answers (id);"), None);
        // Nothing partitioned references anything: every plain table.
        assert_eq!(CreatedUnlogged::decide(&entries, &[]).len(), 4);
    }
}
