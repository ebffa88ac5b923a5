//! The dress rehearsal: the restore tried on the target before anything is touched, in one
//! transaction that is rolled back.
//!
//! Reading the dump cannot prove a restore (an extension the role cannot create, a collation
//! the server cannot build, a masked value a `CHECK` refuses only show on the server); trying
//! it can. On one session, inside `BEGIN ... ROLLBACK`: the wipe (wipe mode), the whole
//! pre-data section as the plan sends it, the first rows of every table (masked as the rules
//! say), then the post-data section on those rows. The first error is the run's refusal, named
//! by its dump entry; the target is as it was either way.
//!
//! Foreign keys are tried in a savepoint each: the first rows of a table need not hold the rows
//! their keys point at, so a key the sample violates (`23503`) is not a refusal.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::script::{EntryHeader, Piece};
use super::session::Session;
use super::stream::{Item, pg_restore_script};
use super::{Applier, ApplyError, is_transaction_control};
use std::collections::HashSet;

use crate::dump::plan::{Rehearsed, RestorePlan, RestoreSection, SwitchedSchema};
use crate::dump::toc::Toc;
use crate::masking::Masker;
use crate::replica::swap::large_objects;

/// What the rehearsal tries.
pub struct RehearsalSpec {
    /// Whether the wipe is part of it (wipe mode).
    pub wipe: bool,
    /// Swap mode: the swap's schemas (created, with the plan's extensions first), and the
    /// live schemas the dump creates itself.
    pub swap: Option<(Vec<SwitchedSchema>, HashSet<String>)>,
    /// The most rows of each table it loads (`0`: none).
    pub rows_per_table: u64,
    /// The rows' rules, if any (a masker of its own: its counts are not the run's).
    pub masker: Option<Arc<Masker>>,
}

/// The rows each table gets: some thousands, fewer when there are many tables (the whole
/// rehearsal stays within about 200,000 rows).
pub fn rows_per_table(tables: usize) -> u64 {
    (200_000 / tables.max(1) as u64).clamp(10, 2_000)
}

/// The SQLSTATE of a foreign key violated by rows the sample does not hold.
const FOREIGN_KEY_VIOLATION: &str = "23503";

impl Applier {
    /// Rehearses the restore of `toc` as `plan` sends it, on one session, in a transaction that is
    /// always rolled back. The first failure is returned as the restore would have met it.
    pub async fn rehearse(
        &self,
        toc: &Toc,
        plan: &RestorePlan,
        spec: &RehearsalSpec,
    ) -> Result<Rehearsed, ApplyError> {
        let started = Instant::now();
        let mut session = Session::open(self).await?;
        // Its notices (`... does not exist, skipping`) say nothing to the operator.
        session
            .execute(
                "the rehearsal",
                "BEGIN; SET LOCAL client_min_messages = warning",
            )
            .await?;
        let result = self.rehearse_in(&mut session, toc, plan, spec).await;
        // The transaction is rolled back whatever happened (a failed one too).
        let _ = session.execute("the rehearsal", "ROLLBACK").await;
        let mut done = result?;
        done.millis = started.elapsed().as_millis() as u64;
        Ok(done)
    }

    async fn rehearse_in(
        &self,
        session: &mut Session,
        toc: &Toc,
        plan: &RestorePlan,
        spec: &RehearsalSpec,
    ) -> Result<Rehearsed, ApplyError> {
        let mut done = Rehearsed {
            wipe: spec.wipe,
            ..Rehearsed::default()
        };
        if spec.wipe {
            session
                .execute(
                    "the wipe (rehearsed)",
                    &format!(
                        "SET LOCAL lock_timeout = '{}'; DROP OWNED BY CURRENT_USER CASCADE; CREATE SCHEMA IF NOT EXISTS public",
                        crate::replica::LOCK_TIMEOUT
                    ),
                )
                .await?;
        }
        let lines = |want: RestoreSection, kinds: Option<&[&str]>| -> String {
            plan.sent_in(toc, want)
                .into_iter()
                .filter(|(e, _)| kinds.is_none_or(|k| k.contains(&e.desc.as_str())))
                .map(|(_, line)| format!("{line}\n"))
                .collect()
        };
        if let Some((schemas, created)) = &spec.swap {
            // As `Dropping` does it in swap mode: an earlier run's leftovers go, the schemas
            // are made, the extensions created; then the statements point at the shadows.
            for s in schemas {
                for name in [&s.shadow, &s.old] {
                    session
                        .execute(
                            "the swap's schemas (rehearsed)",
                            &format!(
                                "DROP SCHEMA IF EXISTS {} CASCADE",
                                crate::dump::rewrite::quote_ident(name)
                            ),
                        )
                        .await?;
                }
            }
            // Large objects are kept for the switch, as the build keeps them; the switch's
            // replacement of them is tried after the post-data section.
            session
                .execute(
                    "the swap's large objects (rehearsed)",
                    &format!(
                        "{}; DELETE FROM replicator.staged_large_objects",
                        large_objects::CREATE_SQL
                    ),
                )
                .await?;
            for stmt in crate::replica::swap::create_schemas_sql(schemas, created) {
                session
                    .execute("the swap's schemas (rehearsed)", &stmt)
                    .await?;
            }
            done.pre_data += self
                .rehearse_script(
                    session,
                    lines(RestoreSection::PreData, Some(&["EXTENSION"])),
                )
                .await?;
            let live: Vec<String> = schemas.iter().map(|s| s.live.clone()).collect();
            let keep = session.extension_members(&live).await?;
            let map = schemas
                .iter()
                .map(|s| (s.live.clone(), s.shadow.clone()))
                .collect();
            session.set_rewriter(Some(Arc::new(crate::dump::rewrite::Rewriter::new(
                map, keep,
            ))));
        }
        done.pre_data += self
            .rehearse_script(session, lines(RestoreSection::PreData, None))
            .await?;
        if spec.rows_per_table > 0 {
            let tables: Vec<&str> = plan
                .sent_in(toc, RestoreSection::Data)
                .into_iter()
                .filter(|(e, _)| e.desc == "TABLE DATA")
                .map(|(_, line)| line)
                .collect();
            let mut missing = 0usize;
            for line in &tables {
                if let Some(rows) = self.rehearse_rows(session, line, spec).await? {
                    done.tables += 1;
                    done.rows += rows;
                } else {
                    missing += 1;
                }
            }
            if missing > 0 {
                done.not_rehearsed.push(format!(
                    "the rows of {missing} of {} table(s): not in the part of the dump on disk",
                    tables.len()
                ));
            }
            done.pre_data += self
                .rehearse_script(
                    session,
                    lines(RestoreSection::Data, Some(&["SEQUENCE SET"])),
                )
                .await?;
        } else {
            done.not_rehearsed
                .push("the rows: this dump's data is not on disk before the wipe".into());
        }
        done.post_data = self
            .rehearse_script(session, lines(RestoreSection::PostData, None))
            .await?;
        if spec.swap.is_some() {
            session
                .execute(
                    "the switch's replacement of the large objects (rehearsed)",
                    large_objects::REPLACE_SQL,
                )
                .await?;
        }
        Ok(done)
    }

    /// Runs the statements of `list` (no rows) on `session`, inside the rehearsal's
    /// transaction; foreign keys each in a savepoint. Returns the statements sent.
    async fn rehearse_script(
        &self,
        session: &mut Session,
        list: String,
    ) -> Result<u64, ApplyError> {
        if list.is_empty() {
            return Ok(0);
        }
        let mut stream = pg_restore_script(&self.dump, list)?;
        let mut preamble = Vec::new();
        let mut entry: Option<EntryHeader> = None;
        let mut sent = 0u64;
        while let Some(item) = stream.next().await? {
            match item {
                Item::Piece(Piece::Entry(h)) => {
                    if entry.is_none() {
                        session.prepare(&preamble).await?;
                    }
                    entry = Some(h);
                }
                Item::Piece(Piece::Statement(s)) => match &entry {
                    None => preamble.push(s),
                    Some(_) if is_transaction_control(&s) => {}
                    Some(h) if h.kind == "FK CONSTRAINT" => {
                        let what = h.describe();
                        session.execute(&what, "SAVEPOINT replicator_fk").await?;
                        if !session
                            .execute_tolerating(&what, &s, FOREIGN_KEY_VIOLATION)
                            .await?
                        {
                            session
                                .execute(&what, "ROLLBACK TO SAVEPOINT replicator_fk")
                                .await?;
                        }
                        session
                            .execute(&what, "RELEASE SAVEPOINT replicator_fk")
                            .await?;
                        sent += 1;
                    }
                    Some(h) => {
                        session.execute(&h.describe(), &s).await?;
                        sent += 1;
                    }
                },
                Item::Piece(Piece::Meta(_)) => {}
                Item::Piece(Piece::CopyStart(_)) | Item::Rows(_) | Item::RowsEnd => {
                    // Rows come only from `rehearse_rows`.
                    return Err(super::ScriptError::Unterminated { line: 0 }.into());
                }
            }
        }
        stream.finish().await?;
        Ok(sent)
    }

    /// Loads the first rows of one table's data entry (its list line), through the rules.
    /// `None`: the part of the dump on disk does not hold them (the head of a streamed dump).
    async fn rehearse_rows(
        &self,
        session: &mut Session,
        line: &str,
        spec: &RehearsalSpec,
    ) -> Result<Option<u64>, ApplyError> {
        let mut stream = super::rows_source::rows_script(self, format!("{line}\n"))?;
        let mut preamble = Vec::new();
        let mut entry: Option<EntryHeader> = None;
        let mut copy: Option<String> = None;
        let mut sample: Vec<u8> = Vec::new();
        let mut rows = 0u64;
        // Read up to the first rows; the reader (native, or pg_restore) is ended as soon as
        // they are in hand.
        loop {
            let item = match stream.next().await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                // The data block is past the end of the head on disk.
                Err(_) if copy.is_none() || rows < spec.rows_per_table => return Ok(None),
                Err(e) => return Err(e),
            };
            match item {
                Item::Piece(Piece::Entry(h)) => entry = Some(h),
                Item::Piece(Piece::Statement(s)) if entry.is_none() => preamble.push(s),
                Item::Piece(Piece::CopyStart(s)) => copy = Some(s),
                Item::Rows(chunk) => {
                    for l in chunk.split_inclusive(|b| *b == b'\n') {
                        if rows < spec.rows_per_table {
                            sample.extend_from_slice(l);
                            rows += 1;
                        }
                    }
                    if rows >= spec.rows_per_table {
                        break;
                    }
                }
                Item::RowsEnd => break,
                Item::Piece(_) => {}
            }
        }
        // Stopped early or not, its exit says nothing more (a head cut short fails it).
        drop(stream);
        let (Some(copy), Some(h)) = (copy, entry) else {
            return Ok(None);
        };
        session.prepare(&preamble).await?;
        let what = h.describe();
        let mut transform = match &spec.masker {
            Some(m) => m
                .for_copy(&h.schema, &h.name, &copy)
                .map_err(ApplyError::Masking)?,
            None => None,
        };
        let chunk = match transform.as_mut() {
            Some(t) => {
                let mut out = Vec::with_capacity(sample.len());
                t.apply(&sample, &mut out);
                Bytes::from(out)
            }
            None => Bytes::from(sample),
        };
        session.copy_rows(&what, &copy, chunk).await?;
        Ok(Some(rows))
    }
}
