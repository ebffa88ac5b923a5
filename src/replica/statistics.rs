//! Planner statistics: every restored relation `ANALYZE`d, and the dump's own statistics left
//! out.
//!
//! Each table is analyzed as soon as its rows and indexes are in, by the load itself
//! ([`super::apply::Early`]), as `VACUUM (ANALYZE, INDEX_CLEANUP OFF)`: on rows loaded with
//! `COPY ... FREEZE` the vacuum part skips every page and scans no index, and it leaves
//! autovacuum nothing to come back for. What no table's load analyzed is analyzed once the
//! rows' section is done ([`analyze_the_rest`]): tables an earlier attempt loaded, partitioned
//! and inheritance parents (their inherited statistics need every child), populated
//! materialized views. So the planner has statistics of every table when the run ends, and
//! autovacuum has none left to gather.
//!
//! pg_dump 18 `--statistics` writes each table's, index's and materialized view's statistics
//! (`STATISTICS DATA` entries: most common values, histograms) as they were in production.
//! They are all left out:
//!
//! - those that would carry the values the replica must not hold: restored as they are, a
//!   masked column's real values, the rows a filter dropped and the rows of
//!   `EXCLUDE_TABLE_DATA` would be readable in `pg_stats` by any role that can read the table.
//!   That is every such table, its parents (their inherited statistics count a child's rows),
//!   its indexes (an expression index has statistics of its own) and the materialized views
//!   (built from masked tables); an entry whose relation the schema does not place too. Said
//!   in the run's `left_out`.
//! - the others, because the replica's own `ANALYZE` replaces them: restored after it (they
//!   come with the post-data section), they would put back the source's page counts
//!   (`relpages`, `relallvisible`) over the replica's, and they leave the tables' change
//!   counters as the `COPY` set them, so autovacuum would analyze every table again anyway.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::machine::LeftOut;
use crate::masking::Plan;
use crate::masking::schema::{QualifiedName, Schema};
use crate::replica::url::PgEndpoint;

/// Why statistics that would carry real values are left out.
pub const TAINTED: &str = "planner statistics of tables REPLICA_RULES masks or filters, or whose rows EXCLUDE_TABLE_DATA leaves out (with their parents, indexes and the materialized views), would hold their real values: left out; the replica's own rows are analyzed instead";

/// Why the other statistics of the dump are left out.
pub const REPLACED: &str = "the replicator analyzes every table once its rows and indexes are in: the dump's statistics would put the source's page counts back over the replica's, and leave autovacuum to analyze every table again";

/// What becomes of the dump's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatisticsPlan {
    /// `STATISTICS DATA` entries left out, with why ([`TAINTED`] or [`REPLACED`]).
    pub skip: BTreeMap<u32, &'static str>,
    /// Those that would carry real values, as the run says it leaves them out.
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

/// Which `STATISTICS DATA` entries of `toc` (not in `skip`) are left out, and why: those of
/// `tainted` ([`TAINTED`], said), and all the others ([`REPLACED`]). `schema` places the
/// relations; it is needed only when `tainted` is not empty.
pub fn plan(
    toc: &Toc,
    schema: Option<&Schema>,
    tainted: &BTreeSet<QualifiedName>,
    skip: &HashSet<u32>,
) -> StatisticsPlan {
    let mut out = StatisticsPlan::default();
    let carries = |rel: &QualifiedName| {
        let Some(schema) = schema.filter(|_| !tainted.is_empty()) else {
            return false;
        };
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
            out.skip.insert(e.id, TAINTED);
            names.push(format!("{}.{}", e.schema, e.tag));
        } else {
            out.skip.insert(e.id, REPLACED);
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
            why: TAINTED.into(),
        });
    }
    out
}

/// `ANALYZE`s, over up to `jobs` sessions of the target's role (it owns them), every table,
/// partitioned table and populated materialized view of `schemas` (as the target names them)
/// but the plain tables of `done` (analyzed by their load): the tables an earlier attempt
/// loaded, every parent (its children are in now), the materialized views (populated by the
/// post-data section). Tables and materialized views as their load does
/// ([`super::apply::early::analyze_sql`]: `VACUUM (ANALYZE)`); a partitioned table is analyzed
/// `ONLY` where the server allows it (PostgreSQL 18): before, its `ANALYZE` samples its
/// partitions again. Adds each to `count`.
pub async fn analyze_the_rest(
    target: &PgEndpoint,
    schemas: &[String],
    done: &HashSet<(String, String)>,
    jobs: usize,
    server_version_num: u32,
    count: &AtomicU64,
) -> Result<u64, StepError> {
    if schemas.is_empty() {
        return Ok(0);
    }
    // Which statement failed, with the server's error as every query of the target says it.
    let failed = |e: tokio_postgres::Error, what: &str| {
        let e = target.query_error("analyzing the restored relations", e);
        let text = format!("{what}: {e}");
        if e.is_transient() {
            StepError::transient(text)
        } else {
            StepError::permanent(text)
        }
    };
    let client = target.connect_as(super::RESTORE_APPLICATION_NAME).await?;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text,
                    EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p', 'm') AND (c.relkind <> 'm' OR c.relispopulated)
                AND n.nspname = ANY($1)
                AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
              ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| failed(e, "listing the tables and views to analyze"))?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let queue: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(
        rows.iter()
            .filter(|r| {
                let key: (String, String) = (r.get(0), r.get(1));
                let kind: String = r.get(2);
                let parent: bool = r.get(3);
                kind != "r" || parent || !done.contains(&key)
            })
            .map(|r| {
                let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                // A partitioned table has no pages of its own (autovacuum never comes for it).
                match kind.as_str() {
                    "p" if server_version_num >= 180_000 => {
                        format!("ANALYZE ONLY {}.{}", quote(&schema), quote(&name))
                    }
                    "p" => format!("ANALYZE {}.{}", quote(&schema), quote(&name)),
                    _ => super::apply::early::analyze_sql(&schema, &name),
                }
            })
            .rev()
            .collect(),
    );
    let n = queue.lock().expect("queue lock").len();
    if n == 0 {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let width = jobs.clamp(1, n);
    let mut clients = vec![client];
    while clients.len() < width {
        clients.push(target.connect_as(super::RESTORE_APPLICATION_NAME).await?);
    }
    let worker = |client: tokio_postgres::Client| {
        let queue = &queue;
        async move {
            loop {
                let next = queue.lock().expect("queue lock").pop();
                let Some(sql) = next else { break };
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| failed(e, &sql))?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), StepError>(())
        }
    };
    futures_util::future::try_join_all(clients.into_iter().map(worker)).await?;
    tracing::info!(
        relations = n,
        seconds = started.elapsed().as_secs_f64(),
        "analyzed {n} relation(s) no table's load did (parents, materialized views, tables an earlier attempt loaded) in {:.1}s: every restored relation has planner statistics",
        started.elapsed().as_secs_f64()
    );
    Ok(n as u64)
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
        assert!(
            t.contains(&("public".to_string(), "events".to_string())),
            "a parent counts its partition's rows"
        );
        let out = plan(&toc, Some(&s), &t, &HashSet::new());
        let with = |out: &StatisticsPlan, why: &str| -> Vec<u32> {
            out.skip
                .iter()
                .filter(|(_, w)| **w == why)
                .map(|(id, _)| *id)
                .collect()
        };
        assert_eq!(
            with(&out, TAINTED),
            vec![2641, 2642, 2643, 2645, 2646, 2647, 2649]
        );
        assert_eq!(with(&out, REPLACED), vec![2644, 2648]);
        assert_eq!(out.left_out.unwrap().count, 7);
        // Nothing masked: every entry replaced by the replica's own ANALYZE, nothing said.
        let none = plan(&toc, None, &BTreeSet::new(), &HashSet::new());
        assert_eq!(with(&none, REPLACED).len(), 9);
        assert_eq!(none.left_out, None);
        // EXCLUDE_TABLE_DATA alone: its table's statistics (and the views') carry real values.
        let t = tainted(None, &["other".to_string()], &s);
        let out = plan(&toc, Some(&s), &t, &HashSet::from([2649]));
        assert_eq!(with(&out, TAINTED), vec![2644, 2645, 2648]);
        assert!(!out.skip.contains_key(&2649), "already left out");
        assert_eq!(out.skip[&2641], REPLACED);
    }
}
