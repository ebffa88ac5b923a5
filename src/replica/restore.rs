//! One section of a dump restored into the target, through [`super::apply`]: the entries of
//! the section (minus those left out) in the order and with the parallelism each part allows.
//!
//! - **pre-data** (schemas, extensions, types, tables, functions, views): one session, in the
//!   archive's order, committed in batches.
//! - **data** (a run, with its records): each table's rows in one transaction with its record
//!   (`COPY ... FREEZE`); from a dump file whose archive locates its blocks, each table's from
//!   a reader of its own, side by side over `jobs` sessions; from a stream (or a file without
//!   offsets), one reader in the archive's order on one session. Each table's indexes and keys
//!   start as soon as its rows are in ([`plan_early`]), a key as a unique index first
//!   ([`super::apply::key_as_index`]), then the table is vacuumed and analyzed (analyzed alone
//!   when small and loaded frozen); what no load analyzed is analyzed once the post-data
//!   section is done ([`super::statistics::analyze_the_rest`]). Without records (a section
//!   restored on its own): each table's rows from a reader of their own entry, side by side.
//! - **post-data**: what is left of the indexes and primary/unique/check constraints over
//!   `jobs` sessions, then the rest in order (see [`super::apply::Applier::run_post_data`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::apply::{Applier, LoadLog, key_as_index};
use super::url::PgEndpoint;
use crate::dump::plan::{RestorePlan, RestoreSection as PlanSection};
use crate::dump::toc::{Toc, TocEntry};
use crate::error::StepError;
use crate::machine::Section;

/// `application_name` of the restore's sessions: what [`super::terminate_leftover_restores`]
/// looks for after a crash.
pub const RESTORE_APPLICATION_NAME: &str = "replicator-restore";

/// What a load of the rows records and where it reads them from (the rows' section only).
pub struct LoadSetup {
    /// Writes each entry's record in the target with its work.
    pub recorder: crate::replica::records::Recorder,
    /// Where the rows come from: the archive as a stream (`Some`), or the dump file (`None`),
    /// and where to write the `--use-list` pg_restore reads a stream with.
    pub stream: Option<(Option<crate::dump::feed::Feed>, std::path::PathBuf)>,
    /// The entries' dependencies (to know which table an index waits for); `None`: every
    /// index waits for all the rows.
    pub deps: Option<crate::dump::verify::Dependencies>,
    /// Where each table loaded is told (for the run's `TableLoaded` events).
    pub tables: TablesLoaded,
    /// Relations analyzed so far (for the run's `TablesAnalyzed` events).
    pub analyzed: Arc<AtomicU64>,
    /// The schemas the restore builds, as the target names them (a swap's shadows): where the
    /// relations no table's load analyzed are found once the section is done.
    pub schemas: Vec<String>,
}

/// The tables loaded, as they are: drained by the step into the run's events.
pub type TablesLoaded = Arc<std::sync::Mutex<Vec<crate::machine::TableLoad>>>;

/// Restores the entries of `toc` that `plan` sends in `section`, but those `done` names (an
/// earlier attempt's, recorded in the target). `progress(done, total)` counts entries.
pub async fn restore_entries(
    applier: Applier,
    toc: &Toc,
    plan: &RestorePlan,
    done: &HashSet<u32>,
    section: Section,
    load: Option<LoadSetup>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    // The entries of a section that are sent, with their list lines, in the dump's order:
    // the plan's, less what an earlier attempt did.
    let entries = |want: PlanSection| -> Vec<(&TocEntry, &str)> {
        plan.sent_in(toc, want)
            .into_iter()
            .filter(|(e, _)| !done.contains(&e.id))
            .collect()
    };
    let list = |items: &[(&TocEntry, &str)]| -> String {
        items.iter().map(|(_, line)| format!("{line}\n")).collect()
    };
    match section {
        Section::PreData => {
            let pre = entries(PlanSection::PreData);
            let total = pre.len() as u64;
            tracing::info!(
                entries = total,
                "restoring the schema (pre-data: {total} entries)"
            );
            progress(0, total);
            let report = |done: u64| progress(done.min(total), total);
            applier.run_serial(list(&pre), true, &report).await?;
            // The schema the next steps build on is on disk before the step ends.
            super::durable::flush(applier.endpoint()).await?;
            progress(total, total);
        }
        Section::DataAndPostData => {
            let data_entries = entries(PlanSection::Data);
            let post = entries(PlanSection::PostData);
            let data = data_entries.len() as u64;
            let total = data + post.len() as u64;
            let sweep = load
                .as_ref()
                .map(|s| (s.analyzed.clone(), s.schemas.clone()));
            let (applier, early, stream) = match load {
                Some(setup) => {
                    let log = LoadLog::new(
                        setup.recorder.clone(),
                        setup.tables.clone(),
                        data_entries.iter().chain(post.iter()).map(|(e, _)| *e),
                    );
                    let (log, early_ids) = match &setup.deps {
                        Some(deps) => {
                            let shared = (&setup.recorder, &setup.analyzed);
                            plan_early(&applier, log, &data_entries, &post, deps, shared).await?
                        }
                        None => (log, HashSet::new()),
                    };
                    let log = Arc::new(log);
                    let early = log.early().map(|e| (e, early_ids));
                    (applier.with_log(log), early, setup.stream)
                }
                None => (applier, None, None),
            };
            if let Some((early, _)) = &early {
                // Indexes of tables an earlier attempt loaded start now.
                early.launch(0);
            }
            let post: Vec<_> = match &early {
                Some((_, ids)) => post
                    .into_iter()
                    .filter(|(e, _)| !ids.contains(&e.id))
                    .collect(),
                None => post,
            };
            let streamed = stream.as_ref().is_some_and(|(feed, _)| feed.is_some());
            let ids: Vec<i64> = data_entries.iter().map(|(e, _)| i64::from(e.id)).collect();
            // Each table's rows from a reader of their own, so that the tables load side by
            // side, where the rows are read from the dump file and its archive locates each
            // block: with records too, each table's rows in one transaction with its record.
            // Else (a stream, read no other way; a dump pg_dump wrote to a pipe) one reader
            // in the archive's order, on one session: it loaded one table at a time, and a
            // whole run's rows section left a core idle while its largest tables loaded
            // (docs/performance.md, Ready at Done).
            let side_by_side = match &stream {
                Some((None, _)) => applier.rows_located(&ids),
                Some((Some(_), _)) => false,
                None => true,
            };
            let tables = data_entries
                .iter()
                .filter(|(e, _)| e.desc == "TABLE DATA")
                .count();
            let how = if side_by_side {
                format!(
                    ", {tables} table(s) side by side over up to {} sessions",
                    applier.jobs()
                )
            } else if streamed {
                ", streamed as the archive arrives, one table at a time".to_string()
            } else {
                ", one table at a time in the archive's order".to_string()
            };
            tracing::info!(
                data_entries = data,
                post_data_entries = total - data,
                streamed,
                side_by_side,
                "restoring the rows ({data} entries{how}), then indexes, constraints and the rest ({} entries{})",
                total - data,
                if early.is_some() {
                    ", each table's indexes and keys as soon as its rows are in"
                } else {
                    ""
                },
            );
            progress(0, total);
            let early_done = early.as_ref().map(|(e, _)| e.done.clone());
            let early_count = move || early_done.as_ref().map_or(0, |d| d.load(Ordering::Relaxed));
            let report = |done: u64| progress((done + early_count()).min(total), total);
            match stream {
                Some((feed, list_file)) if !side_by_side => {
                    applier
                        .run_stream(feed, list(&data_entries), &list_file, &report)
                        .await?;
                }
                _ => {
                    // The other data entries (sequences' values, large objects) together.
                    let (tables, others): (Vec<_>, Vec<_>) = data_entries
                        .iter()
                        .copied()
                        .partition(|(e, _)| e.desc == "TABLE DATA");
                    let mut lists: Vec<String> = tables.iter().map(|t| list(&[*t])).collect();
                    if !others.is_empty() {
                        lists.push(list(&others));
                    }
                    applier.run_parallel(lists, &report).await?;
                }
            }
            if let Some((early, _)) = &early {
                early.finish().await?;
                let n = early.analyzed().len();
                tracing::info!(
                    tables = n,
                    analyze_seconds = early.analyzing_seconds(),
                    "{n} table(s) analyzed as soon as their rows and indexes were in ({:.1}s of VACUUM (ANALYZE), or ANALYZE alone for small tables loaded frozen, beside the loads)",
                    early.analyzing_seconds()
                );
            }
            let base = data + early_count();
            let report = |done: u64| progress((base + done).min(total), total);
            applier
                .run_post_data(list(&post), early.as_ref().map(|(e, _)| &**e), &report)
                .await?;
            // What no table's load analyzed: the tables an earlier attempt loaded, partitioned
            // and inheritance parents (their children are all in now), materialized views.
            if let Some((count, schemas)) = sweep {
                let done = early
                    .as_ref()
                    .map(|(e, _)| applier.as_target_names(e.analyzed()))
                    .unwrap_or_default();
                super::statistics::analyze_the_rest(
                    applier.endpoint(),
                    &schemas,
                    &done,
                    applier.jobs(),
                    applier.server_version_num(),
                    &count,
                )
                .await?;
            }
            // Every row, index and record on disk before the step ends.
            super::durable::flush(applier.endpoint()).await?;
            progress(total, total);
        }
    }
    Ok(())
}

/// Which post-data entries start as soon as their table's rows are in: indexes and primary
/// key, unique and check constraints, keyed by the `TABLE DATA` entry of their table (0: their
/// table loads nothing in this attempt, they start at once). Returns the log with its
/// [`Early`], and the dump ids it runs.
async fn plan_early(
    applier: &Applier,
    log: LoadLog,
    data: &[(&TocEntry, &str)],
    post: &[(&TocEntry, &str)],
    deps: &crate::dump::verify::Dependencies,
    (recorder, analyzed): (&crate::replica::records::Recorder, &Arc<AtomicU64>),
) -> Result<(LoadLog, HashSet<u32>), StepError> {
    // The table each TABLE DATA entry fills (its one dependency).
    let data_of_table: HashMap<u32, u32> = data
        .iter()
        .filter(|(e, _)| e.desc == "TABLE DATA")
        .flat_map(|(e, _)| deps.get(&e.id).into_iter().flatten().map(|t| (*t, e.id)))
        .collect();
    let candidates: Vec<(&TocEntry, &str)> = post
        .iter()
        .copied()
        .filter(|(e, _)| EARLY_KINDS.contains(&e.desc.as_str()))
        .collect();
    if candidates.is_empty() {
        return Ok((log, HashSet::new()));
    }
    let text: String = candidates.iter().map(|(_, l)| format!("{l}\n")).collect();
    let (preamble, translated) = applier.translate(text, &log).await?;
    let mut plan: HashMap<u32, Vec<crate::replica::apply::EarlyEntry>> = HashMap::new();
    let mut ids = HashSet::new();
    for mut entry in translated {
        if entry.id == 0 {
            // Not matched to the list: left to the post-data section, as before.
            continue;
        }
        let waits_for = deps
            .get(&entry.id)
            .into_iter()
            .flatten()
            .find_map(|d| data_of_table.get(d).copied())
            .unwrap_or(0);
        // A key of a table loaded here (so not a partitioned one) builds as an index first,
        // beside the table's other indexes.
        if waits_for != 0 && entry.header.kind == "CONSTRAINT" {
            let mut stmts = Vec::with_capacity(entry.stmts.len() + 1);
            for stmt in entry.stmts.drain(..) {
                match key_as_index(&stmt) {
                    Some(k) => {
                        stmts.push(k.create_index);
                        stmts.push(k.add_constraint);
                        entry.serial = Some(waits_for);
                    }
                    None => stmts.push(stmt),
                }
            }
            entry.stmts = stmts;
        }
        ids.insert(entry.id);
        plan.entry(waits_for).or_default().push(entry);
    }
    let early = applier.early(
        plan,
        preamble,
        applier.jobs(),
        recorder.clone(),
        analyzed.clone(),
    );
    Ok((log.with_early(early), ids))
}

/// The post-data kinds that touch one table each and start with its rows.
const EARLY_KINDS: &[&str] = &["INDEX", "CONSTRAINT", "CHECK CONSTRAINT"];

/// Restores one section of `dump`: every entry of its table of contents.
pub async fn restore_section(
    target: &PgEndpoint,
    dump: &Path,
    section: Section,
    jobs: u32,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    restore_section_with_list(target, dump, section, jobs, None, progress).await
}

/// [`restore_section`] restricted to the entries of a `--use-list` file
/// ([`Toc::write_list`]): what it comments out is never read.
pub async fn restore_section_with_list(
    target: &PgEndpoint,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    let toc = match use_list {
        Some(list) => Toc::read_list(list)?,
        None => Toc::read(dump).await?,
    };
    let applier = Applier::new(target, dump, jobs).await?;
    let plan = RestorePlan::everything(&toc);
    restore_entries(
        applier,
        &toc,
        &plan,
        &HashSet::new(),
        section,
        None,
        progress,
    )
    .await
}
