//! The real steps: Scalingo, the disk and PostgreSQL, each phase's IO behind [`Steps`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Steps;
use super::attempt::Attempt;
#[cfg(feature = "test-hooks")]
use super::test_hooks::PauseAt;
use super::workdir::WorkDir;
use crate::config::RestoreConfig;
use crate::dump::feed::Feed;
use crate::dump::plan::RestorePlan;
use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::machine::{
    Backup, Event, LoadCounts, MaskingCounts, Origin, Phase, Progress, Run, Section, WorkMode,
};
use crate::replica::records::{FOREIGN_KEYS_ID, Recorder};
use crate::replica::{self, PgEndpoint};
use crate::replica::{LoadSetup, TablesLoaded};
use crate::source::feed::UrlSource;
use crate::source::scalingo::ScalingoClient;
use crate::source::{download, extract};

/// The real steps.
pub struct RealSteps {
    pub state_dir: PathBuf,
    pub scalingo: Option<Arc<ScalingoClient>>,
    pub http: reqwest::Client,
    pub target: PgEndpoint,
    /// The live source (`SOURCE_DATABASE_URL`), when runs copy one instead of a backup.
    pub source: Option<PgEndpoint>,
    pub restore: RestoreConfig,
    /// The reliability suite's pause (read once, when the steps are built; only in a build
    /// with the `test-hooks` feature, which the tests enable).
    #[cfg(feature = "test-hooks")]
    pub pause_at: Option<PauseAt>,
}

impl RealSteps {
    /// The disk the working files may use: `MAX_WORK_DISK`, within 90% of the state
    /// directory's free space (`None`: neither is known).
    fn budget(&self) -> Option<u64> {
        std::fs::create_dir_all(&self.state_dir).ok();
        super::workdir::work_budget(&self.state_dir, self.restore.max_work_disk)
    }

    /// A new stream of `run`'s archive, from its first byte.
    async fn open_feed(&self, run: &Run, work: &WorkDir) -> Result<Feed, StepError> {
        create_dir_for(&work.head())?;
        match &run.origin {
            Origin::Scalingo => {
                let backup = run
                    .backup()
                    .cloned()
                    .ok_or_else(|| StepError::permanent("internal error: no backup to stream"))?;
                let scalingo = self.scalingo()?.clone();
                let id = backup.id.clone();
                let urls: UrlSource = Arc::new(move || {
                    let scalingo = scalingo.clone();
                    let id = id.clone();
                    Box::pin(async move { scalingo.download_url(&id).await })
                });
                // The spool takes what the head and the lists leave of the budget.
                let budget = self.budget().unwrap_or(crate::config::MIN_WORK_DISK);
                let cap = budget.saturating_sub(budget / 4).max(4 << 20);
                Ok(crate::source::feed::download(
                    self.http.clone(),
                    urls,
                    format!("the backup {}", backup.name),
                    backup.size,
                    &work.spool(),
                    cap,
                )?)
            }
            Origin::Archive { path } => Ok(crate::source::feed::archive_file(path)?),
            Origin::Live { source } => self.live_feed(source, work).await,
            Origin::Dump { path } => Err(StepError::permanent(format!(
                "internal error: the dump {} is a file, it is not streamed",
                path.display()
            ))),
        }
    }

    /// `pg_dump` of `SOURCE_DATABASE_URL`, streamed; `named` is the source the run was
    /// started with (a resumed run must still name it).
    async fn live_feed(&self, named: &str, work: &WorkDir) -> Result<Feed, StepError> {
        let source = self.source.as_ref().ok_or_else(|| {
            StepError::permanent(format!(
                "this run copies the live database {named}, but SOURCE_DATABASE_URL is not set now: set it again to continue the run, or `replicator run --restart` to abandon it"
            ))
        })?;
        if source.describe() != named {
            return Err(StepError::permanent(format!(
                "this run copies the live database {named}, but SOURCE_DATABASE_URL now names {}: set it back to continue the run, or `replicator run --restart` to abandon it and copy the new one",
                source.describe()
            )));
        }
        let (feed, identity) = live_feed(
            source,
            &self.target,
            work.path(),
            &self.restore.exclude_table_data,
        )
        .await?;
        info!(
            source = %source.describe(),
            "pg_dump of {} (PostgreSQL {}) started: one snapshot, streamed into the target; nothing of it is written to disk but its head",
            source.describe(),
            identity.version
        );
        Ok(feed)
    }

    /// A new stream of `run`'s archive with its head read into the work dir.
    async fn feed_with_head(&self, run: &Run, work: &WorkDir) -> Result<Feed, StepError> {
        let mut feed = self.open_feed(run, work).await?;
        let head = work.head();
        let (feed, bytes) = tokio::task::spawn_blocking(move || {
            let r = feed.read_head(&head);
            (feed, r)
        })
        .await
        .map_err(|e| StepError::transient(format!("the stream's reading task failed: {e}")))?;
        let bytes = bytes?;
        info!(
            bytes,
            "read the dump's header and table of contents from the stream ({} KiB)",
            bytes >> 10
        );
        Ok(feed)
    }

    /// Where the rows of `run` come from: the dump on disk (`None`), or a stream whose head
    /// is in the work dir. A stream is read again from its start when this process holds none
    /// (a resumed run, a new container).
    async fn rows_source(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<Option<Feed>, StepError> {
        let streams = run.mode.as_ref().is_some_and(WorkMode::streams);
        if !streams && attempt.dump_path(run).exists() {
            return Ok(None);
        }
        if let Some(feed) = attempt.take_feed() {
            return Ok(Some(feed));
        }
        if !streams {
            info!(
                "the dump is not on this disk any more (a new container, or the state directory was emptied): streaming it from its start, the tables already in the target are not loaded again"
            );
        }
        Ok(Some(self.feed_with_head(run, &attempt.work).await?))
    }

    /// The restore plan `Extracting` decided for this run (decided again, and kept, only when
    /// a resumed run's work dir lacks it: a new container).
    pub(super) async fn restore_plan(
        &self,
        work: &WorkDir,
        toc: &Toc,
        dump: &Path,
    ) -> Result<RestorePlan, StepError> {
        if let Some(plan) = RestorePlan::load(&work.plan()).filter(|p| p.fits(toc)) {
            return Ok(plan);
        }
        info!(
            "the run's restore plan is not on this disk (a new container): deciding it again from the dump and the target"
        );
        let version = replica::check_target(&self.target)
            .await?
            .server_version_num as u32;
        let deps = crate::dump::verify::dependencies(dump);
        let decided = super::planning::decide(
            &self.target,
            toc,
            dump,
            deps.as_ref(),
            &self.restore,
            version,
            &work.fk_list(),
        )
        .await?;
        let _ = decided.plan.save(&work.plan());
        Ok(decided.plan)
    }

    /// The table of contents `Extracting` read for this run (read again, and kept, only when a
    /// resumed run's work dir lacks it).
    pub(super) async fn toc(&self, work: &WorkDir, dump: &Path) -> Result<Toc, StepError> {
        Ok(Toc::load_or_read(dump, &work.toc()).await?)
    }

    fn scalingo(&self) -> Result<&Arc<ScalingoClient>, StepError> {
        self.scalingo.as_ref().ok_or_else(|| {
            StepError::permanent(
                "this run needs Scalingo but no Scalingo configuration was given: set SCALINGO_APP and SCALINGO_API_TOKEN",
            )
        })
    }
}

/// How `pg_dump` reaches the live source `source` (its password kept apart).
pub fn pg_dump_connection(
    source: &PgEndpoint,
    exclude_table_data: &[String],
) -> crate::source::live::PgDumpConnection {
    crate::source::live::PgDumpConnection {
        describe: source.describe(),
        conninfo: source.libpq_conninfo("replicator pg_dump"),
        env: source.libpq_env(),
        password: source.password().cloned(),
        exclude_table_data: exclude_table_data.to_vec(),
    }
}

/// `pg_dump` of the live source `source` without the rows of `exclude_table_data` as a feed,
/// its password file in `dir`; first, the refusal of a source that is `target` (so before
/// pg_dump starts, and before any wipe). Returns what the source's server said of itself too.
/// `run` and `check` start here.
pub async fn live_feed(
    source: &PgEndpoint,
    target: &PgEndpoint,
    dir: &Path,
    exclude_table_data: &[String],
) -> Result<(Feed, crate::replica::ServerIdentity), StepError> {
    let identity = crate::replica::refuse_same_database(source, target).await?;
    std::fs::create_dir_all(dir).map_err(|e| {
        StepError::permanent(format!(
            "cannot create the working directory {}: {e}; check REPLICATOR_STATE_DIR",
            dir.display()
        ))
    })?;
    let feed =
        crate::source::live::pg_dump_feed(&pg_dump_connection(source, exclude_table_data), dir)?;
    Ok((feed, identity))
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
        Ok(backup)
    }

    async fn plan(&self, run: &Run) -> Result<WorkMode, StepError> {
        let size = match &run.origin {
            Origin::Archive { path } => std::fs::metadata(path).map(|m| m.len()).ok(),
            _ => run.backup().and_then(|b| b.size),
        };
        let budget = self.budget();
        crate::machine::enough_disk(&run.origin, budget, &self.state_dir)?;
        let mode = crate::machine::work_mode(&run.origin, size, budget);
        info!(mode = mode.label(), "this run is {}", mode.describe());
        Ok(mode)
    }

    async fn download(
        &self,
        run: &Run,
        backup: &Backup,
        attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), StepError> {
        if run.mode.as_ref().is_some_and(WorkMode::streams) {
            // Only the head now: the rest flows while the checks, the wipe and the schema run,
            // into the spool, and on into the target with the rows.
            let feed = self.feed_with_head(run, &attempt.work).await?;
            if let Some((done, _)) = feed.download_counts() {
                progress(Progress::Bytes {
                    done,
                    total: backup.size,
                });
            }
            attempt.keep_feed(feed);
            return Ok(());
        }
        let archive = attempt.archive_path(run);
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
        let dump = attempt.dump_path(run);
        let cap = crate::machine::dump_cap(&run.origin, run.mode.as_ref(), backup.size);
        let fetched = download::download_extracting(
            &self.http,
            &url,
            &archive,
            (&dump, cap),
            backup.size,
            &report,
        )
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

    async fn extract_and_check(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<super::DumpChecked, StepError> {
        let dump = attempt.dump_path(run);
        let streams = run.mode.as_ref().is_some_and(WorkMode::streams);
        if streams && !attempt.has_feed() {
            // A local archive streams from here; a download's head was read by `Downloading`
            // in this process, or is read again.
            let feed = self.feed_with_head(run, &attempt.work).await?;
            attempt.keep_feed(feed);
        } else if !streams && !matches!(run.origin, Origin::Dump { .. }) {
            let archive = attempt.archive_path(run);
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
                    let cap = crate::machine::dump_cap(&run.origin, run.mode.as_ref(), expected);
                    let bytes = tokio::task::spawn_blocking(move || {
                        let bytes = extract::extract_dump(&a, &d, cap)?;
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
        let work = &attempt.work;
        let saved = work.toc();
        let _ = std::fs::remove_file(&saved);
        let (toc, _) = replica::check_dump_toc(&dump, Some(&saved)).await?;
        let info = replica::check_target(&self.target).await?;
        crate::machine::first_wipe(&info.contents, self.target.confirm())?;
        // Before Dropping: a dump cut in its data, a restriction that cuts objects from what
        // they need, an extension the role cannot create or objects the wipe cannot remove
        // would fail the restore only after the target is gone (docs/reliability.md).
        // A streamed dump's data is not here yet: its completeness is pg_restore's to find,
        // after the wipe (docs/operations.md, streaming).
        let deps = if streams {
            crate::dump::verify::dependencies(&dump)
        } else {
            crate::dump::verify::check_dump_complete(&dump).await?
        };
        // An abandoned run's shadow schemas take the target's disk: gone before this run
        // rehearses and builds (they are nobody's replica; this run's own are made later).
        replica::swap::drop_abandoned(&self.target, &run.run_id).await?;
        let decided = super::planning::decide(
            &self.target,
            &toc,
            &dump,
            deps.as_ref(),
            &self.restore,
            info.server_version_num as u32,
            &work.fk_list(),
        )
        .await?;
        info!("restore plan: {}", decided.plan.summary());
        let mut plan = decided.plan;
        // The plan tried on the target, rolled back: what the checks cannot know from the
        // dump (an extension, a collation, a masked value a CHECK refuses) fails here.
        super::planning::rehearse(
            &self.target,
            &dump,
            &toc,
            &mut plan,
            decided.masking.as_ref(),
            self.restore.masking_key.as_ref(),
            !streams,
            run.started_at,
        )
        .await?;
        plan.save(&work.plan()).map_err(|e| {
            StepError::permanent(format!(
                "cannot write the restore plan {}: {e}; check REPLICATOR_STATE_DIR",
                work.plan().display()
            ))
        })?;
        Ok(super::DumpChecked {
            left_out: decided.left_out,
            refresh: Some(plan.run_refresh()),
        })
    }

    async fn drop_target(&self, run: &Run, attempt: &mut Attempt) -> Result<(), StepError> {
        self.drop_or_prepare(run, attempt).await
    }

    async fn switch(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StepError> {
        self.switch_step(run, attempt).await
    }

    async fn restore(
        &self,
        run: &Run,
        section: Section,
        attempt: &mut Attempt,
        progress: &(dyn Fn(Progress) + Send + Sync),
        events: &(dyn Fn(Event) + Send + Sync),
    ) -> Result<Option<MaskingCounts>, StepError> {
        // The rows' source first: a resumed run whose dump is gone reads the head again.
        let feed = match section {
            Section::DataAndPostData => self.rows_source(run, attempt).await?,
            Section::PreData => None,
        };
        let work = &attempt.work;
        let dump = match &feed {
            Some(_) => work.head(),
            None => attempt.dump_path(run),
        };
        let toc = self.toc(work, &dump).await?;
        let jobs = match section {
            Section::DataAndPostData => {
                // An earlier attempt's sessions go on server-side after it failed (a lost lock,
                // a cut stream): one still building a key would commit it with its record after
                // this attempt read the records and sent the key again ("multiple primary
                // keys"). Ended before the records are read, each entry of theirs is either in
                // with its record or rolled back. (It says itself what it ended.)
                replica::terminate_leftover_restores(&self.target).await?;
                crate::replica::sessions::jobs_for_restore(&self.target, self.restore.jobs).await?
            }
            Section::PreData => self.restore.jobs,
        };
        let mut applier = crate::replica::apply::Applier::new(&self.target, &dump, jobs).await?;
        // The plan decided before the wipe says what is sent; nothing is selected again here.
        let plan = self.restore_plan(work, &toc, &dump).await?;
        let rewriter = super::planning::rewriter(&self.target, &plan).await?;
        applier = applier.with_rewriter(rewriter.clone());
        if section == Section::PreData && self.restore.use_unlogged_tables {
            // The tables are created unlogged: the unlogging step after has (nearly) nothing
            // left to rewrite.
            let unlogged = replica::unlogged::CreatedUnlogged::of_dump(&dump).await?;
            if let Some(u) = &unlogged {
                info!(
                    tables = u.len(),
                    "{} table(s) created UNLOGGED by the schema's statements",
                    u.len()
                );
            }
            applier = applier.with_created_unlogged(unlogged.map(Arc::new));
        }
        let skip = plan.skip();
        // What an earlier attempt of this run did, as the target records it.
        let mut done = std::collections::HashSet::new();
        // REPLICA_RULES and the tables whose planner statistics are rebuilt from the rows
        // (the plan left theirs out).
        let prepared = match section {
            Section::DataAndPostData => Some(
                crate::replica::masking::prepare(
                    self.restore.rules.as_deref(),
                    self.restore.masking_key.as_ref(),
                    &dump,
                    &toc,
                    &skip,
                    &self.restore.exclude_table_data,
                    run.started_at,
                )
                .await?,
            ),
            Section::PreData => None,
        };
        if let Some(m) = prepared.as_ref().and_then(|p| p.masker.as_ref()) {
            applier = applier.with_masker(m.clone());
        }
        let report = |done: u64, total: u64| progress(Progress::Items { done, total });
        let mut fks_done = false;
        let load = match section {
            Section::PreData => None,
            Section::DataAndPostData => {
                let recorder = Recorder::new(&run.run_id);
                recorder.prepare(&self.target).await?;
                let loaded = recorder.loaded(&self.target).await?;
                fks_done = loaded.ids.contains(&FOREIGN_KEYS_ID);
                let tables_total = toc
                    .entries()
                    .filter(|e| e.desc == "TABLE DATA" && !skip.contains(&e.id))
                    .count() as u64;
                if loaded.tables > 0 || !loaded.ids.is_empty() {
                    info!(
                        tables = loaded.tables,
                        entries = loaded.ids.len(),
                        "resuming from the target's records: {} table(s) ({} rows) and {} other entries are already in and are not loaded again",
                        loaded.tables,
                        loaded.rows,
                        loaded.ids.len() as u64 - loaded.tables
                    );
                }
                events(Event::LoadStarted(LoadCounts {
                    tables_done: loaded.tables,
                    tables_total,
                    rows: loaded.rows,
                    bytes: loaded.bytes,
                    resumed: loaded.tables,
                    // Every relation is analyzed again by this attempt (an earlier one's
                    // analyses are not recorded: cheap to redo, and the count stays whole).
                    analyzed: 0,
                }));
                done.extend(loaded.entries());
                // The rows come in the archive's order from one pg_restore, from the stream or
                // the dump on disk, each table's in one transaction (COPY ... FREEZE).
                let stream = Some((feed, work.data_list()));
                // Where the relations are analyzed: the shadows a swap builds, else the
                // schemas the plan restores into.
                let schemas = match &rewriter {
                    Some(r) if !r.is_empty() => r.shadows(),
                    _ => super::planning::restored_schemas(&plan),
                };
                Some(LoadSetup {
                    recorder,
                    stream,
                    deps: crate::dump::verify::dependencies(&dump),
                    tables: TablesLoaded::default(),
                    analyzed: Default::default(),
                    schemas,
                })
            }
        };
        let tables = load
            .as_ref()
            .map(|l| (l.tables.clone(), l.analyzed.clone()));
        let mut analyzed_said = 0;
        let restoring =
            replica::restore_entries(applier, &toc, &plan, &done, section, load, &report);
        tokio::pin!(restoring);
        // Each table loaded becomes the run's event as it happens (the driver persists them
        // on its own clock).
        let mut drain = || {
            if let Some((t, analyzed)) = &tables {
                for table in std::mem::take(&mut *t.lock().expect("tables lock")) {
                    events(Event::TableLoaded(table));
                }
                let n = analyzed.load(std::sync::atomic::Ordering::Relaxed);
                if n > analyzed_said {
                    events(Event::TablesAnalyzed(n - analyzed_said));
                    analyzed_said = n;
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let result = loop {
            tokio::select! {
                r = &mut restoring => break r,
                _ = tick.tick() => drain(),
            }
        };
        drain();
        result?;
        // FK_MODE=trust: the keys left out of the list, now that the rows are in.
        if section == Section::DataAndPostData
            && self.restore.fk_mode == crate::replica::fk::FkMode::Trust
            && !fks_done
        {
            let fk_list = work.fk_list();
            let record = Recorder::new(&run.run_id).insert_sql(
                FOREIGN_KEYS_ID,
                "FK CONSTRAINT",
                "foreign keys added NOT VALID",
                0,
                0,
            );
            let (not_valid, validated) = crate::replica::fk::add_not_valid(
                &self.target,
                &dump,
                &fk_list,
                Some(&record),
                rewriter.clone(),
            )
            .await?;
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
        // What REPLICA_RULES did, for the run's record.
        match prepared {
            Some(p) => {
                Ok(
                    crate::replica::masking::after_rows(&self.target, p, rewriter.as_deref())
                        .await?,
                )
            }
            None => Ok(None),
        }
    }

    async fn unlog(&self, run: &Run, attempt: &mut Attempt) -> Result<(), StepError> {
        if self.restore.use_unlogged_tables {
            let plan = self.plan_of(run, attempt).await?;
            let rewriter = super::planning::rewriter(&self.target, &plan).await?;
            let n = replica::set_unlogged_with_dump(
                &self.target,
                &attempt.dump_path(run),
                rewriter.as_deref(),
            )
            .await?;
            // Nothing said when the schema created them all unlogged (said then).
            if n > 0 {
                info!(tables = n, "{n} table(s) set UNLOGGED before loading rows");
            }
        }
        Ok(())
    }

    async fn post_restore(&self, _run: &Run, _attempt: &mut Attempt) -> Result<(), StepError> {
        if let Some(path) = &self.restore.post_restore_sql {
            let n = crate::replica::post_restore::run(&self.target, path).await?;
            info!(files = n, "post-restore SQL: {n} file(s) applied");
        }
        Ok(())
    }

    async fn finished(&self, run: &Run) {
        crate::notify::notify(&self.http, &self.restore.notify, run).await;
    }

    #[cfg(feature = "test-hooks")]
    async fn before_step(&self, run: &Run) {
        if let Some(pause) = &self.pause_at {
            pause.before_step(run).await;
        }
    }

    async fn on_interrupt(&self, run: &Run) {
        if matches!(
            run.phase,
            Phase::Dropping { .. }
                | Phase::Restoring { .. }
                | Phase::Unlogging { .. }
                | Phase::Switching { .. }
                | Phase::PostRestoreSql { .. }
        ) {
            let ended = tokio::time::timeout(
                Duration::from_secs(10),
                replica::terminate_leftover_restores(&self.target),
            )
            .await;
            if let Ok(Err(e)) = ended {
                warn!("could not end the restore's sessions on the target: {e}");
            }
        }
    }
}

/// Why a target that is the source's database is refused (`run` and `check`).
pub fn target_is_source_message(target: &PgEndpoint) -> String {
    format!(
        "DATABASE_URL names the production database: {} is the database of the PostgreSQL addon of SCALINGO_APP, the source of the backups; \
         a run would wipe it. Set DATABASE_URL to the replica's database (on Scalingo, an app's own DATABASE_URL is its own addon: deploy the replicator on the replica's app)",
        target.describe()
    )
}
