//! The real steps: Scalingo, the disk and PostgreSQL, each phase's IO behind [`Steps`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::Steps;
use super::test_hooks::PauseAt;
use super::workdir::{WorkDir, free_bytes_near};
use crate::config::RestoreConfig;
use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::machine::{
    Backup, DiskBudget, LeftOut, Origin, Phase, Progress, Run, Section, disk_budget,
};
use crate::source::scalingo::ScalingoClient;
use crate::source::{download, extract};
use crate::target::{self, LockHandle, Target};

/// The real steps.
pub struct RealSteps {
    pub state_dir: PathBuf,
    pub scalingo: Option<ScalingoClient>,
    pub http: reqwest::Client,
    pub target: Target,
    pub restore: RestoreConfig,
    /// The reliability suite's pause (read once, when the steps are built).
    pub pause_at: Option<PauseAt>,
    /// What `REPLICA_RULES` did in the last restore of the rows.
    pub masking: std::sync::Mutex<Option<crate::machine::MaskingCounts>>,
    /// The target's lock, watched while a run holds it (set by `app::lock`).
    pub lock: LockSlot,
}

/// Where the run's [`LockHandle`] is put once the lock is taken.
#[derive(Clone, Default)]
pub struct LockSlot(Arc<Mutex<Option<LockHandle>>>);

impl LockSlot {
    pub fn set(&self, handle: Option<LockHandle>) {
        *self.0.lock().expect("lock slot") = handle;
    }
    fn get(&self) -> Option<LockHandle> {
        self.0.lock().expect("lock slot").clone()
    }
}

impl RealSteps {
    fn archive_path(&self, run: &Run) -> PathBuf {
        match &run.origin {
            Origin::Archive { path } => path.clone(),
            _ => WorkDir::of(&self.state_dir, &run.run_id).archive(),
        }
    }

    /// Where the dump of `run` is (a file the user gave, or the one extracted in the state dir).
    pub fn dump_path(&self, run: &Run) -> PathBuf {
        match &run.origin {
            Origin::Dump { path } => path.clone(),
            _ => WorkDir::of(&self.state_dir, &run.run_id).dump(),
        }
    }

    /// The entries that leave out the rows of `EXCLUDE_TABLE_DATA` (and the foreign keys that
    /// point at them), warning about names that match no table; and the foreign keys
    /// `FK_MODE` defers (under `trust`, written to `fk.list` to be added after the rows).
    async fn exclusions(
        &self,
        run: &Run,
        toc: &Toc,
        dump: &Path,
        selected_out: &HashSet<u32>,
    ) -> Result<HashSet<u32>, StepError> {
        let fks = crate::dump::toc::foreign_key_targets(dump).await?;
        let plan = crate::dump::toc::plan_exclusion(toc, &self.restore.exclude_table_data, &fks);
        for name in &plan.unmatched {
            warn!(
                table = %name,
                "EXCLUDE_TABLE_DATA names {name:?}, but the dump has no table of that exact name in schema public: nothing is excluded for it; check the spelling (names are exact, case and hyphens included)"
            );
        }
        for (table, fk, referenced) in &plan.dropped_foreign_keys {
            warn!(
                table = %table,
                constraint = %fk,
                references = %referenced,
                "foreign key {fk:?} of {table:?} is not restored: it references {referenced:?}, whose rows EXCLUDE_TABLE_DATA leaves out"
            );
        }
        if !plan.excluded.is_empty() {
            info!(
                tables = %plan.excluded.join(","),
                "rows left out (EXCLUDE_TABLE_DATA): {}",
                plan.excluded.join(", ")
            );
        }
        let mut skip = plan.skip;
        let fk_list = WorkDir::of(&self.state_dir, &run.run_id).fk_list();
        let mut out: HashSet<u32> = skip.union(selected_out).copied().collect();
        out.extend(crate::target::fk::defer(
            toc,
            self.restore.fk_mode,
            &out,
            &fk_list,
        )?);
        skip.extend(out);
        Ok(skip)
    }

    /// What the operator restricts, for the target's server version.
    fn select_options(&self, target_version_num: u32) -> crate::dump::selection::SelectOptions {
        crate::dump::selection::SelectOptions {
            schemas: self.restore.restore_schemas.clone(),
            target_version_num,
        }
    }

    /// The table of contents `Extracting` read for this run (read again, and kept, only when a
    /// resumed run's work dir lacks it).
    async fn toc(&self, run: &Run, dump: &Path) -> Result<Toc, StepError> {
        let saved = WorkDir::of(&self.state_dir, &run.run_id).toc();
        Ok(Toc::load_or_read(dump, &saved).await?)
    }

    fn scalingo(&self) -> Result<&ScalingoClient, StepError> {
        self.scalingo.as_ref().ok_or_else(|| {
            StepError::permanent(
                "this run needs Scalingo but no Scalingo configuration was given: set SCALINGO_APP and SCALINGO_API_TOKEN",
            )
        })
    }
}

fn create_dir_for(path: &Path) -> Result<(), StepError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StepError::permanent(format!(
                "cannot create the working directory {}: {e}; check REPLICATOR_STATE_DIR",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

impl Steps for RealSteps {
    async fn fetch_backup(&self) -> Result<Backup, StepError> {
        let scalingo = self.scalingo()?;
        let source = scalingo.source_database().await?;
        if crate::machine::target_is_source(self.target.dbname(), source.as_deref()) {
            return Err(StepError::permanent(target_is_source_message(&self.target)));
        }
        let backup = scalingo.newest_done_backup().await?;
        check_free_disk(&self.state_dir, backup.size)?;
        Ok(backup)
    }

    async fn download(
        &self,
        run: &Run,
        backup: &Backup,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        let archive = self.archive_path(run);
        create_dir_for(&archive)?;
        let url = self.scalingo()?.download_url(&backup.id).await?;
        let secure = reqwest::Url::parse(url.0.expose())
            .is_ok_and(|u| crate::secret::secure_or_loopback(&u));
        if !secure {
            return Err(StepError::permanent(format!(
                "Scalingo gave a download URL that is not https ({}): its token would cross the network in clear; refused",
                url.redacted()
            )));
        }
        let total = backup.size;
        let report = |done: u64| progress(Progress::Bytes { done, total });
        let dump = self.dump_path(run);
        let fetched =
            download::download_extracting(&self.http, &url, &archive, &dump, backup.size, &report)
                .await?;
        let got = fetched.download;
        if let Some(bytes) = fetched.dump_bytes {
            info!(
                bytes,
                "extracted the dump during the download ({bytes} bytes)"
            );
        }
        info!(
            bytes = got.bytes,
            resumed_from = got.resumed_from,
            "downloaded {} ({} bytes{})",
            backup.name,
            got.bytes,
            if got.resumed_from > 0 {
                format!(", resumed from byte {}", got.resumed_from)
            } else {
                String::new()
            }
        );
        Ok(())
    }

    async fn extract_and_check(&self, run: &Run) -> Result<Vec<LeftOut>, StepError> {
        let dump = self.dump_path(run);
        if !matches!(run.origin, Origin::Dump { .. }) {
            let archive = self.archive_path(run);
            create_dir_for(&dump)?;
            // A dump from the download step (or an earlier attempt of this one) is used only
            // when its marker proves it whole; a file the user gave is always extracted.
            let scalingo = matches!(run.origin, Origin::Scalingo);
            let expected = run.backup().and_then(|b| b.size);
            match extract::complete_dump(&dump, &archive, expected).filter(|_| scalingo) {
                Some(bytes) => info!(
                    bytes,
                    "the dump is already extracted and whole ({bytes} bytes, during the download or by an earlier attempt): not extracting it again"
                ),
                None => {
                    extract::discard_extracted(&dump);
                    let (a, d) = (archive.clone(), dump.clone());
                    let bytes = tokio::task::spawn_blocking(move || {
                        let bytes = extract::extract_dump(&a, &d)?;
                        if scalingo {
                            // Lets a retry of this step after the archive's removal go on.
                            let len = std::fs::metadata(&a).map(|m| m.len()).unwrap_or(0);
                            if let Err(e) = extract::record_complete_dump(&d, len, bytes) {
                                warn!("could not write the marker of {}: {e}", d.display());
                            }
                        }
                        Ok::<_, StepError>(bytes)
                    })
                    .await
                    .map_err(|e| StepError::transient(format!("extraction task failed: {e}")))??;
                    info!(bytes, "extracted the dump ({bytes} bytes)");
                }
            }
            // Only our own download goes: a file the user gave is theirs.
            if matches!(run.origin, Origin::Scalingo) {
                let _ = std::fs::remove_file(&archive);
            }
        }
        // The run's one `pg_restore --list`: read afresh here, kept in the work dir for the
        // steps that follow (and for a resume).
        let saved = WorkDir::of(&self.state_dir, &run.run_id).toc();
        let _ = std::fs::remove_file(&saved);
        let (toc, _) = target::check_dump_toc(&dump, Some(&saved)).await?;
        let info = target::check_target(&self.target).await?;
        crate::machine::first_wipe(&info.contents, self.target.confirm())
            .map_err(|e| StepError::permanent(e.to_string()))?;
        // Before Dropping: a dump cut in its data, a restriction that cuts objects from what
        // they need, an extension the role cannot create or objects the wipe cannot remove
        // would fail the restore only after the target is gone (docs/reliability.md).
        let deps = crate::dump::verify::check_dump_complete(&dump).await?;
        let opts = self.select_options(info.server_version_num as u32);
        let selection =
            crate::target::preflight::check_restorable(&self.target, &toc, deps.as_ref(), &opts)
                .await?;
        for l in &selection.left_out {
            warn!(
                kind = %l.kind,
                count = l.count,
                "the restore leaves out {} {} ({}): {}",
                l.count,
                l.kind,
                l.names.join(", "),
                l.why
            );
        }
        // REPLICA_RULES: every rule fits its column, strict mode names every column.
        if let Some(rules) = &self.restore.rules {
            let restored = crate::target::masking::restored_tables(
                &toc,
                &selection.skip,
                &self.restore.exclude_table_data,
            );
            let plan = crate::target::masking::check_rules(rules, &dump, &restored).await?;
            crate::target::masking::check_filters_fit_fk_mode(&plan, &dump, self.restore.fk_mode)
                .await?;
            info!("REPLICA_RULES checked against the dump: every rule applies");
        }
        Ok(selection.left_out)
    }

    async fn drop_target(&self, _run: &Run) -> Result<(), StepError> {
        let ended = target::terminate_leftover_restores(&self.target).await?;
        if ended > 0 {
            info!("ended {ended} leftover pg_restore session(s) on the target");
        }
        target::drop_owned(&self.target).await?;
        Ok(())
    }

    async fn restore(
        &self,
        run: &Run,
        section: Section,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        let dump = self.dump_path(run);
        let toc = self.toc(run, &dump).await?;
        let mut applier =
            crate::target::apply::Applier::new(&self.target, &dump, self.restore.jobs).await?;
        let selection = crate::dump::selection::select(
            &toc,
            &self.select_options(applier.server_version_num()),
        );
        let mut skip = selection.skip;
        // Rows are left out of the data section only: the tables' schema is pre-data.
        if section == Section::DataAndPostData {
            skip.extend(self.exclusions(run, &toc, &dump, &skip).await?);
        }
        let masker = match (&self.restore.rules, section) {
            (Some(rules), Section::DataAndPostData) => {
                let restored = crate::target::masking::restored_tables(&toc, &skip, &[]);
                let plan = crate::target::masking::check_rules(rules, &dump, &restored).await?;
                let key = match &self.restore.masking_key {
                    Some(k) => k.clone(),
                    None => {
                        warn!(
                            "MASKING_KEY is not set: this run's pseudonyms come from a random key, so they change at each run (joins within the replica still hold); set MASKING_KEY for pseudonyms that stay the same from one night to the next"
                        );
                        crate::masking::MaskingKey::random()
                    }
                };
                let masker =
                    std::sync::Arc::new(crate::masking::Masker::new(plan, &key, run.started_at));
                applier = applier.with_masker(masker.clone());
                Some(masker)
            }
            _ => None,
        };
        let report = |done: u64, total: u64| progress(Progress::Items { done, total });
        target::restore_entries(&applier, &toc, &skip, section, &report).await?;
        // FK_MODE=trust: the keys left out of the list, now that the rows are in.
        if section == Section::DataAndPostData
            && self.restore.fk_mode == crate::target::fk::FkMode::Trust
        {
            let fk_list = WorkDir::of(&self.state_dir, &run.run_id).fk_list();
            let (not_valid, validated) =
                crate::target::fk::add_not_valid(&self.target, &dump, &fk_list).await?;
            info!(
                not_valid,
                validated,
                "{not_valid} foreign key(s) added NOT VALID (FK_MODE=trust){}",
                if validated > 0 {
                    format!(", {validated} validated (partitioned tables)")
                } else {
                    String::new()
                }
            );
        }
        if let Some(masker) = masker {
            let mut counts = masker.counts();
            counts.orphans =
                crate::target::masking::count_orphans(&self.target, masker.plan()).await?;
            for (key, n) in &counts.orphans {
                warn!(
                    foreign_key = %key,
                    rows = n,
                    "foreign key {key}: {n} row(s) reference rows a REPLICA_RULES row filter left out (the key is NOT VALID under FK_MODE=trust; joins on it miss them)"
                );
            }
            info!(
                masking = %serde_json::to_string(&counts).unwrap_or_default(),
                "REPLICA_RULES: {}",
                counts.describe()
            );
            *self.masking.lock().expect("masking lock") = Some(counts);
        }
        Ok(())
    }

    fn masking_counts(&self) -> Option<crate::machine::MaskingCounts> {
        self.masking.lock().expect("masking lock").clone()
    }

    async fn unlog(&self, run: &Run) -> Result<(), StepError> {
        if self.restore.use_unlogged_tables {
            let n = target::set_unlogged_with_dump(&self.target, &self.dump_path(run)).await?;
            info!(tables = n, "{n} table(s) set UNLOGGED before loading rows");
        }
        Ok(())
    }

    async fn post_restore(&self, _run: &Run) -> Result<(), StepError> {
        if let Some(path) = &self.restore.post_restore_sql {
            let n = crate::target::post_restore::run(&self.target, path).await?;
            info!(files = n, "post-restore SQL: {n} file(s) applied");
        }
        Ok(())
    }

    async fn finished(&self, run: &Run) {
        crate::notify::notify(&self.http, &self.restore.notify, run).await;
    }

    async fn before_step(&self, run: &Run) {
        if let Some(pause) = &self.pause_at {
            pause.before_step(run).await;
        }
    }

    async fn hold_target(&self) -> Result<(), StepError> {
        match self.lock.get() {
            Some(lock) => lock.ensure().await,
            None => Ok(()),
        }
    }

    fn target_lost(&self) -> impl Future<Output = StepError> + Send + 'static {
        let lost = self.lock.get().map(|l| l.lost());
        async move {
            match lost {
                Some(lost) => lost.await,
                None => std::future::pending().await,
            }
        }
    }

    async fn on_interrupt(&self, run: &Run) {
        if matches!(
            run.phase,
            Phase::Dropping { .. }
                | Phase::Restoring { .. }
                | Phase::Unlogging { .. }
                | Phase::PostRestoreSql { .. }
        ) {
            let ended = tokio::time::timeout(
                Duration::from_secs(10),
                target::terminate_leftover_restores(&self.target),
            )
            .await;
            if let Ok(Err(e)) = ended {
                warn!("could not end the restore's sessions on the target: {e}");
            }
        }
    }
}

/// Why a target that is the source's database is refused (`run` and `check`).
pub fn target_is_source_message(target: &Target) -> String {
    format!(
        "DATABASE_URL names the production database: {} is the database of the PostgreSQL addon of SCALINGO_APP, the source of the backups; \
         a run would wipe it. Set DATABASE_URL to the replica's database (on Scalingo, an app's own DATABASE_URL is its own addon: deploy the replicator on the replica's app)",
        target.describe()
    )
}

/// Refuses a download that cannot fit (see [`crate::machine::disk_needed`]): the rule
/// `check` applies too.
fn check_free_disk(state_dir: &Path, size: Option<u64>) -> Result<(), StepError> {
    std::fs::create_dir_all(state_dir).ok();
    match disk_budget(size, free_bytes_near(state_dir)) {
        DiskBudget::TooSmall { needed, free } => Err(StepError::permanent(format!(
            "not enough free disk in {}: the backup is {} MiB, and the archive plus the dump need about {} MiB (twice the archive, plus 10% and 64 MiB), but only {} MiB are free; free some space or point REPLICATOR_STATE_DIR at a larger disk",
            state_dir.display(),
            size.unwrap_or(0) >> 20,
            needed >> 20,
            free >> 20
        ))),
        DiskBudget::SizeUnknown | DiskBudget::FreeUnknown { .. } | DiskBudget::Fits { .. } => {
            Ok(())
        }
    }
}
