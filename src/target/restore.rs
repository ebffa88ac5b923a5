//! One section of a dump restored into the target, through [`super::apply`]: the entries of
//! the section (minus those left out) in the order and with the parallelism each part allows.
//!
//! - **pre-data** (schemas, extensions, types, tables, functions, views): one session, in the
//!   archive's order, committed in batches.
//! - **data**: each table's rows from a `pg_restore` of their own entry, over `jobs` sessions;
//!   the other data entries (sequence values, large objects) together.
//! - **post-data**: indexes and primary/unique/check constraints over `jobs` sessions, then the
//!   rest in order (see [`super::apply::Applier::run_post_data`]).

use std::collections::HashSet;
use std::path::Path;

use super::apply::Applier;
use super::url::Target;
use crate::dump::toc::{Toc, TocEntry, TocSection};
use crate::error::StepError;
use crate::machine::Section;

/// `application_name` of the restore's sessions: what [`super::terminate_leftover_restores`]
/// looks for after a crash.
pub const RESTORE_APPLICATION_NAME: &str = "replicator-restore";

/// Restores the entries of `toc` in `section` that `skip` does not name. `progress(done,
/// total)` counts entries.
pub async fn restore_entries(
    applier: &Applier,
    toc: &Toc,
    skip: &HashSet<u32>,
    section: Section,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    let sectioned = toc.sectioned();
    // The entries of a section that are restored, with their list lines, in the dump's order.
    let entries = |want: TocSection| -> Vec<(&TocEntry, &str)> {
        sectioned
            .iter()
            .filter(|(e, s, _)| *s == want && !skip.contains(&e.id))
            .map(|(e, _, line)| (*e, *line))
            .collect()
    };
    let list = |items: &[(&TocEntry, &str)]| -> String {
        items.iter().map(|(_, line)| format!("{line}\n")).collect()
    };
    match section {
        Section::PreData => {
            let pre = entries(TocSection::PreData);
            let total = pre.len() as u64;
            tracing::info!(
                entries = total,
                "restoring the schema (pre-data: {total} entries)"
            );
            progress(0, total);
            let report = |done: u64| progress(done.min(total), total);
            applier.run_serial(list(&pre), true, &report).await?;
            progress(total, total);
        }
        Section::DataAndPostData => {
            // Each table's rows from a pg_restore of their own, so that they load side by
            // side; the other data entries (sequences, large objects) together.
            let (tables, others): (Vec<_>, Vec<_>) = entries(TocSection::Data)
                .into_iter()
                .partition(|(e, _)| e.desc == "TABLE DATA");
            let data = (tables.len() + others.len()) as u64;
            let mut lists: Vec<String> = tables.iter().map(|t| list(&[*t])).collect();
            if !others.is_empty() {
                lists.push(list(&others));
            }
            let post = entries(TocSection::PostData);
            let total = data + post.len() as u64;
            tracing::info!(
                data_entries = data,
                post_data_entries = post.len(),
                "restoring the rows ({data} entries), then indexes, constraints and the rest ({} entries)",
                post.len()
            );
            progress(0, total);
            let report = |done: u64| progress(done.min(total), total);
            applier.run_parallel(lists, &report).await?;
            let report = |done: u64| progress((data + done).min(total), total);
            applier.run_post_data(list(&post), &report).await?;
            progress(total, total);
        }
    }
    Ok(())
}

/// Restores one section of `dump`: every entry of its table of contents.
pub async fn restore_section(
    target: &Target,
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
    target: &Target,
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
    restore_entries(&applier, &toc, &HashSet::new(), section, progress).await
}
