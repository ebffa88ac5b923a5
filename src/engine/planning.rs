//! The run's restore plan, decided before the target is touched: what `run` (in
//! `Extracting`) and `check` both call, so that they cannot disagree.
//!
//! [`decide`] joins every decision about the dump into one [`RestorePlan`]: the selection
//! (`dump/selection.rs`), what the target can take (`replica/preflight.rs`: extensions,
//! `RESTORE_SCHEMAS`, objects of other roles, sessions), `EXCLUDE_TABLE_DATA`, `FK_MODE` and
//! `REPLICA_RULES`. [`rehearse`] then tries it on the target, in a transaction that is rolled
//! back (`replica/rehearsal.rs`). The restore obeys the plan and selects nothing itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::RestoreConfig;
use crate::dump::plan::{ExtensionAction, Refresh, RefreshMode, RestorePlan};
use crate::dump::rewrite::Rewriter;
use crate::dump::selection::{MAX_NAMES, SelectOptions};
use crate::dump::toc::Toc;
use crate::dump::verify::Dependencies;
use crate::error::StepError;
use crate::machine::LeftOut;
use crate::masking::{Masker, MaskingKey};
use crate::replica::PgEndpoint;

/// Why the rows of an `EXCLUDE_TABLE_DATA` table are not restored.
const EXCLUDED_ROWS: &str = "rows left out (EXCLUDE_TABLE_DATA)";
/// Why a foreign key that references an excluded table is not restored.
const EXCLUDED_KEY: &str =
    "it references a table whose rows EXCLUDE_TABLE_DATA leaves out (its rows would not match)";

/// A decided plan, with what the run reports of it.
pub struct Decided {
    pub plan: RestorePlan,
    /// What is left out, by kind, for the run's summary and `status`.
    pub left_out: Vec<LeftOut>,
    /// The rules' plan for the rows (`REPLICA_RULES`), checked against the dump.
    pub masking: Option<crate::masking::Plan>,
}

/// Decides the restore plan of `dump` (its table of contents `toc`, its dependencies `deps`)
/// for `target`, whose server is `target_version_num`. `fk_list` is where `FK_MODE=trust`
/// writes the keys it adds after the rows.
pub async fn decide(
    target: &PgEndpoint,
    toc: &Toc,
    dump: &Path,
    deps: Option<&Dependencies>,
    restore: &RestoreConfig,
    target_version_num: u32,
    fk_list: &Path,
) -> Result<Decided, StepError> {
    let dump_rules = restore.rules.as_deref().map(|r| r.dump.clone());
    let opts = SelectOptions {
        schemas: restore.restore_schemas.clone(),
        target_version_num,
        drop_comments: dump_rules.as_ref().is_some_and(|d| d.drops_comments()),
        drop_large_objects: dump_rules.as_ref().is_some_and(|d| d.drops_large_objects()),
    };
    let (selection, jobs, extensions) =
        crate::replica::preflight::check_restorable(target, toc, deps, &opts, restore.jobs).await?;
    let mut left_out: BTreeMap<u32, String> = selection.why.clone();
    let mut reported = selection.left_out.clone();
    for x in &extensions {
        if let ExtensionAction::LeftOut { why } = &x.action {
            reported.push(LeftOut {
                kind: "EXTENSION".into(),
                count: 1,
                names: vec![x.name.clone()],
                why: why.clone(),
            });
        }
    }

    // EXCLUDE_TABLE_DATA: the rows of those tables, and the foreign keys that point at them.
    let fks = crate::dump::toc::foreign_key_targets(dump).await?;
    let exclusion = crate::dump::toc::plan_exclusion(toc, &restore.exclude_table_data, &fks);
    for name in &exclusion.unmatched {
        warn!(
            table = %name,
            "EXCLUDE_TABLE_DATA names {name:?}, but the dump has no table of that exact name in schema public: nothing is excluded for it; check the spelling (names are exact, case and hyphens included)"
        );
    }
    for (table, fk, referenced) in &exclusion.dropped_foreign_keys {
        warn!(
            table = %table,
            constraint = %fk,
            references = %referenced,
            "foreign key {fk:?} of {table:?} is not restored: it references {referenced:?}, whose rows EXCLUDE_TABLE_DATA leaves out"
        );
    }
    if !exclusion.excluded.is_empty() {
        info!(
            tables = %exclusion.excluded.join(","),
            "rows left out (EXCLUDE_TABLE_DATA): {}",
            exclusion.excluded.join(", ")
        );
    }
    for e in toc.entries().filter(|e| exclusion.skip.contains(&e.id)) {
        let why = if e.desc == "TABLE DATA" {
            EXCLUDED_ROWS
        } else {
            EXCLUDED_KEY
        };
        left_out.entry(e.id).or_insert_with(|| why.to_string());
    }

    // FK_MODE: the keys the restore does not send (trust: added NOT VALID after the rows).
    let out: HashSet<u32> = left_out.keys().copied().collect();
    let deferred_ids =
        crate::replica::fk::defer(toc, restore.fk_mode, &out, fk_list).map_err(StepError::from)?;
    let why_deferred = match restore.fk_mode {
        crate::replica::fk::FkMode::Trust => "FK_MODE=trust: added NOT VALID after the rows",
        _ => "FK_MODE=skip: foreign keys are not restored",
    };
    let mut deferred = BTreeMap::new();
    for id in deferred_ids {
        if restore.fk_mode == crate::replica::fk::FkMode::Skip {
            left_out.insert(id, why_deferred.to_string());
        } else {
            deferred.insert(id, why_deferred.to_string());
        }
    }

    // REPLICA_RULES: every rule fits its column, strict mode names every column, comment and
    // large object; planner statistics that would carry real values are left out (every
    // table is analyzed once its rows are in).
    let skip: HashSet<u32> = left_out.keys().copied().collect();
    // (It says what it leaves out itself.)
    let masking_left = crate::replica::masking::check_before_wipe(
        restore.rules.as_deref(),
        dump,
        toc,
        &skip,
        &restore.exclude_table_data,
        restore.fk_mode,
    )
    .await?;
    let prepared = crate::replica::masking::prepare(
        restore.rules.as_deref(),
        restore.masking_key.as_ref(),
        dump,
        toc,
        &skip,
        &restore.exclude_table_data,
        chrono::Utc::now(),
    )
    .await?;
    // The dump's statistics: every table is analyzed once its rows are in instead.
    for (id, why) in &prepared.statistics.skip {
        left_out.entry(*id).or_insert_with(|| why.to_string());
    }
    let replaced = prepared
        .statistics
        .skip
        .values()
        .filter(|w| **w == crate::replica::statistics::REPLACED)
        .count();
    if replaced > 0 {
        info!(
            entries = replaced,
            "the dump's planner statistics ({replaced} STATISTICS DATA entries) are not restored: each table is analyzed once its rows and indexes are in"
        );
    }
    let masking = prepared.masker.map(|m| m.plan().clone());

    let mut plan = RestorePlan::decide(toc, &left_out, &deferred, extensions, jobs);
    plan.refresh = decide_refresh(target, dump, toc, &plan, restore.refresh_mode).await?;
    // Readers' privileges, read before anything is touched, given again after the restore.
    let live: Vec<String> = restored_schemas(&plan);
    plan.readers = crate::replica::readers::read(target, &live).await?;
    // Readers' views over the replica's tables go with yesterday's: kept, re-created.
    let client = target.connect().await?;
    let swapped = plan.refresh.mode == RefreshMode::Swap;
    plan.readers.views =
        crate::replica::dependents::read(target, &client, swapped.then_some(live.as_slice()))
            .await?;
    for v in &plan.readers.views {
        if v.recreated {
            info!(
                "{} depends on yesterday's tables: the run re-creates it on tonight's",
                v.describe()
            );
        } else {
            warn!(
                "{} goes with yesterday's tables: the role may not act as its owner; its definition is kept in replicator.kept_definitions",
                v.describe()
            );
        }
    }
    for l in &reported {
        warn!(
            kind = %l.kind,
            count = l.count,
            "the restore leaves out {} {} ({}): {}",
            l.count,
            l.kind,
            l.names.iter().take(MAX_NAMES).cloned().collect::<Vec<_>>().join(", "),
            l.why
        );
    }
    reported.extend(masking_left);
    Ok(Decided {
        plan,
        left_out: reported,
        masking,
    })
}

/// The schemas the plan restores into (those of its restored entries, and those it creates),
/// but the replicator's own.
pub fn restored_schemas(plan: &RestorePlan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .entries
        .iter()
        .filter(|e| matches!(e.fate, crate::dump::plan::Fate::Restored { .. }))
        .filter_map(|e| {
            if e.kind == "SCHEMA" {
                Some(e.name.clone())
            } else {
                e.name.split_once('.').map(|(s, _)| s.to_string())
            }
        })
        .filter(|s| s != "replicator" && !s.is_empty())
        .collect();
    // Schema public holds what the dump puts there even though its entry is not restored.
    out.sort();
    out.dedup();
    out
}

/// Swap or wipe: `REFRESH_MODE`, or swap where the target allows it (else wipe, and why).
async fn decide_refresh(
    target: &PgEndpoint,
    dump: &Path,
    toc: &Toc,
    plan: &RestorePlan,
    asked: Option<RefreshMode>,
) -> Result<Refresh, StepError> {
    if asked == Some(RefreshMode::Wipe) {
        return Ok(Refresh::default());
    }
    let mut schemas = crate::replica::swap::switched(&restored_schemas(plan));
    // Large objects belong to the whole database: the switch replaces them in its
    // transaction (`replica::swap::large_objects`), if the lock table holds that.
    let large_objects: u64 = plan
        .entries
        .iter()
        .filter(|e| matches!(e.fate, crate::dump::plan::Fate::Restored { .. }))
        .map(|e| crate::replica::swap::large_objects::created_by(&e.kind, &e.name))
        .sum();
    let why = match crate::replica::swap::large_objects::fit(target, large_objects)
        .await?
        .err()
    {
        Some(why) => Some(why),
        None => {
            let (pinned, ranges) = pinned_and_ranges(target, dump, toc, plan, &schemas).await?;
            crate::replica::swap::assess(target, &mut schemas, &pinned, &ranges)
                .await?
                .err()
        }
    };
    match (why, asked) {
        (None, _) => {
            let client = target.connect().await?;
            let db: i64 = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(|e| target.query_error("reading the database's size", e))?
                .get(0);
            let dump_len = std::fs::metadata(dump).map(|m| m.len()).unwrap_or(0);
            if large_objects > 0 {
                info!(
                    large_objects,
                    "the dump's large objects (about {large_objects}) belong to the whole database: they are kept in replicator.staged_large_objects during the build and replace yesterday's in the switch's transaction"
                );
            }
            info!(
                dump_bytes = dump_len,
                database_bytes = db,
                "this run swaps: tonight's copy is built beside yesterday's, so the target's disk holds both until the switch (the dump is {} MiB, yesterday's database {} MiB)",
                dump_len >> 20,
                db >> 20
            );
            Ok(Refresh {
                mode: RefreshMode::Swap,
                schemas,
                why_not_swap: None,
                room: Some((dump_len, db.max(0) as u64)),
            })
        }
        (Some(why), Some(RefreshMode::Swap)) => Err(StepError::permanent(format!(
            "REFRESH_MODE=swap cannot be done on {}: {why}; set REFRESH_MODE=wipe to drop yesterday's copy first (readers then see an empty replica during the restore); nothing was touched",
            target.describe()
        ))),
        (Some(why), _) => {
            warn!(
                "this run wipes the target first (REFRESH_MODE is not set, and a swap is not possible: {why}); readers see an empty, then partial replica during the restore"
            );
            Ok(Refresh {
                mode: RefreshMode::Wipe,
                schemas: Vec::new(),
                why_not_swap: Some(why),
                room: None,
            })
        }
    }
}

/// What the dump creates in the switched schemas that decides how they switch: the schemas
/// the restore creates an extension in (an extension created by a role that is not a
/// superuser has members the superuser owns, and cannot move with its schema: the schema is
/// switched object by object), and those it creates a range type in (which cannot move object
/// by object).
async fn pinned_and_ranges(
    target: &PgEndpoint,
    dump: &Path,
    toc: &Toc,
    plan: &RestorePlan,
    schemas: &[crate::dump::plan::SwitchedSchema],
) -> Result<(HashSet<String>, HashSet<String>), StepError> {
    let created: Vec<&str> = plan
        .extensions
        .iter()
        .filter(|x| x.action == ExtensionAction::Created)
        .map(|x| x.name.as_str())
        .collect();
    let live: HashSet<&str> = schemas.iter().map(|s| s.live.as_str()).collect();
    let skip = plan.skip();
    let list: String = toc
        .entries()
        .zip(toc.sectioned())
        .filter(|(e, _)| !skip.contains(&e.id))
        .filter(|(e, _)| {
            (e.desc == "EXTENSION" && created.contains(&e.tag.as_str()))
                || (e.desc == "TYPE" && live.contains(e.schema.as_str()))
        })
        .map(|(_, (_, _, line))| format!("{line}\n"))
        .collect();
    let (mut pinned, mut ranges) = (HashSet::new(), HashSet::new());
    if list.is_empty() {
        return Ok((pinned, ranges));
    }
    let applier = crate::replica::apply::Applier::new(target, dump, 1).await?;
    for stmt in applier.statements(list).await? {
        let upper = stmt.to_ascii_uppercase();
        if upper.starts_with("CREATE EXTENSION") {
            if let Some(schema) = crate::replica::swap::extension_schema(&stmt)
                && live.contains(schema.as_str())
            {
                pinned.insert(schema);
            }
        } else if upper.starts_with("CREATE TYPE")
            && upper.contains(" AS RANGE")
            && let Some(schema) = stmt
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.split_once('.'))
                .map(|(s, _)| s.trim_matches('"').to_string())
        {
            ranges.insert(schema);
        }
    }
    Ok((pinned, ranges))
}

/// Rehearses `plan` on `target` (see `replica::apply::rehearsal`) and records what was
/// tried in it. `rows`: whether the dump on disk holds rows to try (not a streamed run's head).
/// A failure is the run's refusal, before anything is touched.
#[allow(clippy::too_many_arguments)]
pub async fn rehearse(
    target: &PgEndpoint,
    dump: &Path,
    toc: &Toc,
    plan: &mut RestorePlan,
    masking: Option<&crate::masking::Plan>,
    key: Option<&MaskingKey>,
    rows: bool,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), StepError> {
    let skip = plan.skip();
    let restored: Vec<&crate::dump::toc::TocEntry> =
        toc.entries().filter(|e| !skip.contains(&e.id)).collect();
    // One transaction holds a lock per relation it creates or drops: past the server's lock
    // table it would fail for that alone, so it is not tried then (and the plan says so).
    let budget = crate::replica::locks::budget(target).await?;
    let creates = restored
        .iter()
        .map(|e| crate::replica::locks::relations_of(&e.desc))
        .sum::<u64>();
    // The wipe locks what the role owns; a swap only what it creates.
    let swap = plan.refresh.mode == RefreshMode::Swap;
    let needed = if swap {
        creates
    } else {
        budget.owned + creates
    };
    if needed > budget.capacity / 2 {
        let why = format!(
            "the whole restore: trying it in one transaction needs about {needed} locks (the target's {} relations of the role, and the {creates} the restore creates), more than half of the server's lock table ({} = max_locks_per_transaction x (max_connections + max_prepared_transactions)); the checks before it ran",
            budget.owned, budget.capacity
        );
        warn!("not rehearsed: {why}");
        plan.rehearsed = Some(crate::dump::plan::Rehearsed {
            wipe: false,
            not_rehearsed: vec![why],
            ..Default::default()
        });
        return Ok(());
    }
    let tables = restored.iter().filter(|e| e.desc == "TABLE DATA").count();
    let masker = masking.map(|m| {
        let key = key.cloned().unwrap_or_else(MaskingKey::random);
        Arc::new(Masker::new(m.clone(), &key, started_at))
    });
    let spec = crate::replica::apply::rehearsal::RehearsalSpec {
        wipe: !swap,
        swap: swap.then(|| {
            let created = plan
                .entries
                .iter()
                .filter(|e| {
                    e.kind == "SCHEMA" && matches!(e.fate, crate::dump::plan::Fate::Restored { .. })
                })
                .map(|e| e.name.clone())
                .collect();
            (plan.refresh.schemas.clone(), created)
        }),
        rows_per_table: if rows {
            crate::replica::apply::rehearsal::rows_per_table(tables)
        } else {
            0
        },
        masker,
    };
    let applier = crate::replica::apply::Applier::new(target, dump, 1).await?;
    let done = applier
        .rehearse(toc, plan, &spec)
        .await
        .map_err(|e| rehearsal_failed(target, e))?;
    info!(
        pre_data = done.pre_data,
        tables = done.tables,
        rows = done.rows,
        post_data = done.post_data,
        millis = done.millis,
        "rehearsed the restore on the target in a transaction rolled back ({} ms): {}{} schema statements, {} rows into {} table(s), {} index and constraint statements{}",
        done.millis,
        if done.wipe {
            "the wipe, "
        } else {
            "the swap's schemas, "
        },
        done.pre_data,
        done.rows,
        done.tables,
        done.post_data,
        if done.not_rehearsed.is_empty() {
            String::new()
        } else {
            format!("; not rehearsed: {}", done.not_rehearsed.join("; "))
        }
    );
    plan.rehearsed = Some(done);
    Ok(())
}

/// A failed rehearsal as the run's error: permanent unless the server said it was passing
/// (a lock timeout, a lost connection).
fn rehearsal_failed(target: &PgEndpoint, e: crate::replica::apply::ApplyError) -> StepError {
    let context = format!(
        "the restore would fail on {}: rehearsed in a transaction that was rolled back (nothing was touched), ",
        target.describe()
    );
    StepError::context(context, e)
}

/// The rewriting of a swap run's statements, with the extension members the target holds
/// now in the live schemas; `None` in wipe mode.
pub async fn rewriter(
    target: &PgEndpoint,
    plan: &RestorePlan,
) -> Result<Option<Arc<Rewriter>>, StepError> {
    if plan.refresh.mode != RefreshMode::Swap {
        return Ok(None);
    }
    let live: Vec<String> = plan
        .refresh
        .schemas
        .iter()
        .map(|s| s.live.clone())
        .collect();
    let client = target.connect().await?;
    let keep: HashSet<(String, String)> = client
        .query(crate::replica::swap::EXTENSION_MEMBERS_SQL, &[&live])
        .await
        .map_err(|e| target.query_error("listing the extensions' members", e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let map: HashMap<String, String> = plan
        .refresh
        .schemas
        .iter()
        .map(|s| (s.live.clone(), s.shadow.clone()))
        .collect();
    Ok(Some(Arc::new(Rewriter::new(map, keep))))
}
