//! Where the rows' section reads its rows from: the archive's data blocks, natively
//! (`dump/rows.rs`, as the same script `pg_restore --file=-` would write), or a `pg_restore`
//! where that reader does not apply. Decided once per section, and said with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::stream::{ScriptStream, native_script, pg_restore_script, pg_restore_stream};
use super::{Applier, ApplyError};
use crate::dump::archive::ArchiveToc;
use crate::dump::rows::RowsSource;

/// The rows' section reads the archive's data blocks itself (`dump/rows.rs`) and sends them
/// to `COPY`, with no `pg_restore` in the way; where the native reader does not apply (see
/// [`crate::dump::rows::natively_readable`]) the whole section goes through pg_restore, said
/// once with the reason. `false`: every section through pg_restore, as before.
pub(super) const READ_ROWS_NATIVELY: bool = true;

/// The rows of the data entries of `list` (a `--use-list` excerpt of the dump file): read
/// natively where they may be, else by pg_restore; nothing said (the rehearsal's samples).
pub(super) fn rows_script(applier: &Applier, list: String) -> Result<ScriptStream, ApplyError> {
    let native = applier
        .native_toc(&crate::dump::rows::list_ids(&list), None)
        .ok();
    applier.list_stream(native.as_ref(), list)
}

impl Applier {
    /// [`Applier::native_rows`] for a section dealt out as `lists`: native or pg_restore is
    /// decided once for the whole section.
    pub(super) fn native_rows_of_lists(&self, lists: &[String]) -> Option<Arc<ArchiveToc>> {
        let all: Vec<i64> = lists
            .iter()
            .flat_map(|l| crate::dump::rows::list_ids(l))
            .collect();
        if all.is_empty() {
            return None;
        }
        self.native_rows(&all, None)
    }

    /// The rows of one list of the dump file's entries: read natively with `native` (the
    /// archive's head, where [`Applier::native_rows`] or its kin said yes), else by pg_restore.
    pub(super) fn list_stream(
        &self,
        native: Option<&Arc<ArchiveToc>>,
        list: String,
    ) -> Result<ScriptStream, ApplyError> {
        Ok(match native {
            Some(toc) => native_script(
                self.dump.clone(),
                RowsSource::File(self.dump.clone(), toc.clone()),
                crate::dump::rows::list_ids(&list),
            ),
            None => pg_restore_script(&self.dump, list)?,
        })
    }

    /// The rows of the data entries of `list`: from `feed`, a streamed archive (pg_restore
    /// reads the list from `list_file` when the rows cannot be read natively), else from the
    /// dump file.
    pub(super) fn rows_stream(
        &self,
        feed: Option<crate::dump::feed::Feed>,
        list: String,
        list_file: &Path,
    ) -> Result<ScriptStream, ApplyError> {
        let ids = crate::dump::rows::list_ids(&list);
        Ok(match feed {
            Some(feed) => match self.native_rows(&ids, Some(feed.head_path())) {
                Some(_) => native_script(
                    PathBuf::from(feed.what.clone()),
                    RowsSource::Feed(feed),
                    ids,
                ),
                None => {
                    std::fs::write(list_file, list)
                        .map_err(|source| ApplyError::Read { source })?;
                    pg_restore_stream(feed, list_file)?
                }
            },
            None => self.list_stream(self.native_rows(&ids, None).as_ref(), list)?,
        })
    }

    /// The archive's head if the native reader writes the rows of the entries `ids` (read
    /// from the dump file, or, for a stream, from `stream_head`, the head file it kept), else
    /// `None`, said with the reason: the section then goes through pg_restore.
    pub(super) fn native_rows(
        &self,
        ids: &[i64],
        stream_head: Option<Option<&Path>>,
    ) -> Option<Arc<ArchiveToc>> {
        if !READ_ROWS_NATIVELY {
            return None;
        }
        match self.native_toc(ids, stream_head) {
            Ok(toc) => {
                tracing::info!(
                    entries = ids.len(),
                    "the rows are read from the archive natively (no pg_restore for them)"
                );
                Some(toc)
            }
            Err(why) => {
                tracing::info!(
                    reason = %why,
                    "the rows' section goes through pg_restore (not read natively: {why})"
                );
                None
            }
        }
    }

    /// Whether the rows of the entries `ids` may load side by side, each table's from a reader
    /// of its own: they are read natively from the dump file, and the archive says where each
    /// block starts. Nothing said: [`Applier::run_parallel`] says how it reads the rows.
    pub fn rows_located(&self, ids: &[i64]) -> bool {
        self.native_toc(ids, None)
            .is_ok_and(|toc| toc.blocks_located(ids))
    }

    /// [`Applier::native_rows`] without a word: `Err(why not)`.
    fn native_toc(
        &self,
        ids: &[i64],
        stream_head: Option<Option<&Path>>,
    ) -> Result<Arc<ArchiveToc>, String> {
        if !READ_ROWS_NATIVELY {
            return Err("READ_ROWS_NATIVELY is off".into());
        }
        let read = |path: &Path| crate::dump::rows::read_rows_toc_of(path).map(Arc::new);
        let toc = match stream_head {
            Some(Some(head)) => read(head),
            Some(None) => Err("the stream's head was not kept".to_string()),
            None => self.archive.get_or_init(|| read(&self.dump)).clone(),
        }?;
        crate::dump::rows::natively_readable(&toc, ids)?;
        Ok(toc)
    }
}
