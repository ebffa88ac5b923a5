//! Planner statistics that would carry the values the replica must not hold.
//!
//! pg_dump 18 `--statistics` writes each table's, index's and materialized view's statistics
//! (`STATISTICS DATA` entries: most common values, histograms) as they were in production.
//! Restored as they are, a masked column's real values, the rows a filter dropped and the rows
//! of `EXCLUDE_TABLE_DATA` would be readable in `pg_stats` by any role that can read the table.
//! So the statistics of every such table are left out (and said), with those of its
//! parents (their inherited statistics count a child's rows), its indexes (an expression
//! index has statistics of its own) and of the materialized views (built from masked tables);
//! once the rows are in, those relations are `ANALYZE`d: the planner gets statistics of the
//! masked rows. An entry whose relation the schema does not place is left out too.

use std::collections::{BTreeSet, HashSet};

use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::machine::LeftOut;
use crate::masking::Plan;
use crate::masking::schema::{QualifiedName, Schema};
use crate::replica::url::PgEndpoint;

/// What becomes of the dump's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatisticsPlan {
    /// `STATISTICS DATA` entries left out.
    pub skip: HashSet<u32>,
    /// Relations to `ANALYZE` once their rows are in, in the dump's order.
    pub analyze: Vec<QualifiedName>,
    pub left_out: Option<LeftOut>,
}

/// The tables whose statistics would carry values the replica must not hold: those the plan
/// masks or filters, those whose rows `EXCLUDE_TABLE_DATA` leaves out (schema public), and
/// every parent of one.
pub fn tainted(
    plan: Option<&Plan>,
    excluded: &[String],
    schema: &Schema,
) -> BTreeSet<QualifiedName> {
    let mut out: BTreeSet<QualifiedName> = plan
        .map(|p| p.tables.keys().cloned().collect())
        .unwrap_or_default();
    out.extend(excluded.iter().map(|t| ("public".to_string(), t.clone())));
    for key in out.clone() {
        out.extend(schema.ancestors(&key));
    }
    out
}

/// Which `STATISTICS DATA` entries of `toc` (not in `skip`) to leave out for `tainted`, and
/// which relations to analyze after the rows. `always_analyze`: analyze the tainted
/// relations even when the dump has no statistics of them (a run with rules: the replica's
/// statistics are the masked rows' from the start).
pub fn plan(
    toc: &Toc,
    schema: &Schema,
    tainted: &BTreeSet<QualifiedName>,
    skip: &HashSet<u32>,
    always_analyze: bool,
) -> StatisticsPlan {
    let mut out = StatisticsPlan::default();
    if tainted.is_empty() {
        return out;
    }
    let carries = |rel: &QualifiedName| {
        if tainted.contains(rel) || schema.materialized_views.contains(rel) {
            return true;
        }
        match schema.indexes.get(rel) {
            Some(on) => tainted.contains(on) || schema.materialized_views.contains(on),
            // Neither a table nor an index the schema knows: left out rather than guessed.
            None => !schema.tables.contains_key(rel),
        }
    };
    let mut names = Vec::new();
    for e in toc.entries() {
        if e.desc != "STATISTICS DATA" || skip.contains(&e.id) {
            continue;
        }
        let rel = (e.schema.clone(), e.tag.clone());
        if carries(&rel) {
            out.skip.insert(e.id);
            names.push(format!("{}.{}", e.schema, e.tag));
        }
    }
    if !names.is_empty() {
        out.left_out = Some(LeftOut {
            kind: "STATISTICS DATA".into(),
            count: names.len() as u64,
            names: names
                .into_iter()
                .take(crate::dump::selection::MAX_NAMES)
                .collect(),
            why: "planner statistics of tables REPLICA_RULES masks or filters, or whose rows EXCLUDE_TABLE_DATA leaves out (with their parents, indexes and the materialized views), would hold their real values: left out, and those tables analyzed once their rows are in".into(),
        });
    }
    if out.skip.is_empty() && !always_analyze {
        return out;
    }
    // Tables and populated materialized views the restore creates, in the dump's order.
    let populated: HashSet<(&str, &str)> = toc
        .entries()
        .filter(|e| e.desc == "MATERIALIZED VIEW DATA" && !skip.contains(&e.id))
        .map(|e| (e.schema.as_str(), e.tag.as_str()))
        .collect();
    for e in toc.entries().filter(|e| !skip.contains(&e.id)) {
        let rel = (e.schema.clone(), e.tag.clone());
        let wanted = match e.desc.as_str() {
            "TABLE" => tainted.contains(&rel),
            "MATERIALIZED VIEW" => populated.contains(&(e.schema.as_str(), e.tag.as_str())),
            _ => false,
        };
        if wanted && !out.analyze.contains(&rel) {
            out.analyze.push(rel);
        }
    }
    out
}

/// `ANALYZE`s `relations` on one session of the target's own role (it owns them).
pub async fn analyze(target: &PgEndpoint, relations: &[QualifiedName]) -> Result<(), StepError> {
    if relations.is_empty() {
        return Ok(());
    }
    let client = target.connect().await?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for (schema, name) in relations {
        let sql = format!("ANALYZE {}.{}", quote(schema), quote(name));
        client.batch_execute(&sql).await.map_err(|e| {
            StepError::transient(format!(
                "analyzing {schema}.{name} after its masked rows: {e}; will retry"
            ))
        })?;
    }
    tracing::info!(
        relations = relations.len(),
        "analyzed {} table(s) and materialized view(s) after their rows: their planner statistics are the masked rows'",
        relations.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
220; 1259 16386 TABLE public users postgres\n\
221; 1259 16390 TABLE public events postgres\n\
222; 1259 16391 TABLE public events_1 postgres\n\
223; 1259 16392 TABLE public other postgres\n\
224; 1259 16399 MATERIALIZED VIEW public mv postgres\n\
2616; 0 16386 TABLE DATA public users postgres\n\
2617; 0 16399 MATERIALIZED VIEW DATA public mv postgres\n\
2641; 0 0 STATISTICS DATA public users \n\
2642; 0 0 STATISTICS DATA public events \n\
2643; 0 0 STATISTICS DATA public events_1 \n\
2644; 0 0 STATISTICS DATA public other \n\
2645; 0 0 STATISTICS DATA public mv \n\
2646; 0 0 STATISTICS DATA public users_lower \n\
2647; 0 0 STATISTICS DATA public users_pkey \n\
2648; 0 0 STATISTICS DATA public other_pkey \n\
2649; 0 0 STATISTICS DATA public mystery \n";

    fn schema() -> Schema {
        let mut s = Schema::default();
        for stmt in [
            "CREATE TABLE public.users (\n    id integer,\n    email text\n);",
            "CREATE TABLE public.events (\n    id integer\n)\nPARTITION BY RANGE (id);",
            "CREATE TABLE public.events_1 (\n    id integer\n);",
            "ALTER TABLE ONLY public.events ATTACH PARTITION public.events_1 FOR VALUES FROM (0) TO (9);",
            "CREATE TABLE public.other (\n    id integer\n);",
            "CREATE MATERIALIZED VIEW public.mv AS\n SELECT email FROM public.users\n  WITH NO DATA;",
            "CREATE INDEX users_lower ON public.users USING btree (lower(email));",
            "ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
            "ALTER TABLE ONLY public.other\n    ADD CONSTRAINT other_pkey PRIMARY KEY (id);",
        ] {
            s.statement(stmt);
        }
        s.finish();
        s
    }

    #[test]
    fn the_statistics_of_masked_tables_their_parents_indexes_and_views_are_left_out() {
        let toc = Toc::parse(LIST);
        let s = schema();
        let rules = crate::masking::RulesFile::parse(
            "[tables.users.columns]\nemail = \"hash\"\n[tables.events_1.rows]\ncolumn = \"id\"\nin = [1]\n",
        )
        .unwrap();
        let p = crate::masking::validate(&rules, &s, &[]).unwrap();
        let t = tainted(Some(&p), &[], &s);
        let q = |n: &str| ("public".to_string(), n.to_string());
        assert!(
            t.contains(&q("events")),
            "a parent counts its partition's rows"
        );
        let out = plan(&toc, &s, &t, &HashSet::new(), true);
        let mut ids: Vec<u32> = out.skip.iter().copied().collect();
        ids.sort();
        assert_eq!(ids, vec![2641, 2642, 2643, 2645, 2646, 2647, 2649]);
        assert_eq!(
            out.analyze,
            vec![q("users"), q("events"), q("events_1"), q("mv")]
        );
        assert_eq!(out.left_out.unwrap().count, 7);
        // Nothing masked: nothing left out, nothing analyzed.
        let none = plan(&toc, &s, &BTreeSet::new(), &HashSet::new(), true);
        assert_eq!(none, StatisticsPlan::default());
        // EXCLUDE_TABLE_DATA alone: its table's statistics (and the views') go.
        let t = tainted(None, &["other".to_string()], &s);
        let out = plan(&toc, &s, &t, &HashSet::new(), false);
        assert!(out.skip.contains(&2644) && out.skip.contains(&2648));
        assert!(!out.skip.contains(&2641));
    }
}
