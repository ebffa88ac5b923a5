//! How tonight's copy replaces yesterday's, as the plan says (`REFRESH_MODE`): the steps of
//! `Dropping` and `Switching`, and the rewriting of the restore to the shadow schemas.
//!
//! - **wipe**: `Dropping` wipes (`DROP OWNED BY CURRENT_USER CASCADE`); `Switching` gives the
//!   readers' privileges again (the wipe dropped them).
//! - **swap**: `Dropping` drops an earlier run's leftovers, creates the shadow schemas and the
//!   extensions the plan creates; the sections restore into the shadows ([`rewriter`]);
//!   `Switching` grants the readers' privileges on tonight's objects, switches in one
//!   transaction (`replica::swap::switch`), then drops yesterday's schemas.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tracing::info;

use super::attempt::Attempt;
use super::steps::RealSteps;
use crate::dump::plan::{RefreshMode, RestorePlan, RestoreSection};
use crate::error::StepError;
use crate::machine::Run;
use crate::replica;

/// The live schemas whose `SCHEMA` entry the plan restores (the dump creates them; their
/// shadow is created by the restore itself).
fn created_by_dump(plan: &RestorePlan) -> HashSet<String> {
    plan.entries
        .iter()
        .filter(|e| {
            e.kind == "SCHEMA"
                && e.fate
                    == crate::dump::plan::Fate::Restored {
                        section: RestoreSection::PreData,
                    }
        })
        .map(|e| e.name.clone())
        .collect()
}

/// The `--use-list` lines of the plan's `EXTENSION` entries (run before the rest in swap mode:
/// an extension lives in the live schema, and its members are not rewritten).
pub fn extension_lines(plan: &RestorePlan, toc: &crate::dump::toc::Toc) -> String {
    plan.sent_in(toc, RestoreSection::PreData)
        .into_iter()
        .filter(|(e, _)| e.desc == "EXTENSION")
        .map(|(_, line)| format!("{line}\n"))
        .collect()
}

impl RealSteps {
    /// The plan this run obeys (`Extracting` wrote it).
    pub(super) async fn plan_of(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<RestorePlan, StepError> {
        let dump = attempt.dump_path(run);
        let toc = self.toc(&attempt.work, &dump).await?;
        self.restore_plan(&attempt.work, &toc, &dump).await
    }

    /// `Dropping`: the wipe, or a swap's preparation.
    pub(super) async fn drop_or_prepare(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<(), StepError> {
        replica::terminate_leftover_restores(&self.target).await?;
        let plan = self.plan_of(run, attempt).await?;
        match plan.refresh.mode {
            RefreshMode::Wipe => {
                let client = self.target.connect().await?;
                let earlier = replica::dependents::earlier_sql(&self.target, &client).await?;
                let keep =
                    replica::dependents::keep_sql(&run.run_id, &plan.readers.views, &earlier);
                replica::drop_owned(&self.target, &keep).await?;
            }
            RefreshMode::Swap => {
                replica::swap::prepare(
                    &self.target,
                    &plan.refresh.schemas,
                    &created_by_dump(&plan),
                )
                .await?;
                let dump = attempt.dump_path(run);
                let toc = self.toc(&attempt.work, &dump).await?;
                let list = extension_lines(&plan, &toc);
                if !list.is_empty() {
                    let applier = replica::apply::Applier::new(&self.target, &dump, 1).await?;
                    applier.run_serial(list, true, &|_| {}).await?;
                }
            }
        }
        Ok(())
    }

    /// `Switching`: readers' privileges given again; in swap mode, the switch, and when it
    /// committed.
    pub(super) async fn switch_step(
        &self,
        run: &Run,
        attempt: &mut Attempt,
    ) -> Result<Option<DateTime<Utc>>, StepError> {
        let plan = self.plan_of(run, attempt).await?;
        match plan.refresh.mode {
            RefreshMode::Wipe => {
                let n = replica::readers::grant_again(
                    &self.target,
                    &plan.readers,
                    &|s| s.to_string(),
                    true,
                )
                .await?;
                if n > 0 {
                    info!(
                        grants = n,
                        "readers' privileges given again: {}",
                        plan.readers.describe()
                    );
                }
                replica::dependents::recreate(&self.target, &plan.readers.views).await?;
            }
            RefreshMode::Swap => {
                let shadow: HashMap<&str, &str> = plan
                    .refresh
                    .schemas
                    .iter()
                    .map(|s| (s.live.as_str(), s.shadow.as_str()))
                    .collect();
                let client = self.target.connect().await?;
                let done =
                    replica::swap::switched_already(&self.target, &client, &run.run_id).await?;
                let mut carried: Vec<String> = Vec::new();
                if done.is_none() {
                    let n = replica::readers::grant_again(
                        &self.target,
                        &plan.readers,
                        &|s| shadow.get(s).map_or(s.to_string(), |x| x.to_string()),
                        false,
                    )
                    .await?;
                    if n > 0 {
                        info!(
                            grants = n,
                            "readers' privileges given on tonight's copy: {}",
                            plan.readers.describe()
                        );
                    }
                    carried.extend(
                        plan.readers
                            .defaults
                            .iter()
                            .map(replica::readers::default_sql),
                    );
                    carried.extend(
                        replica::swap::carry_schemas(&self.target, &client, &plan.refresh.schemas)
                            .await?,
                    );
                    carried.extend(replica::readers::large_object_grants_sql(&plan.readers));
                    carried.extend(replica::dependents::keep_sql(
                        &run.run_id,
                        &plan.readers.views,
                        &[],
                    ));
                    #[cfg(feature = "test-hooks")]
                    carried.extend(super::test_hooks::sleep_in_switch());
                }
                let at = replica::swap::switch(
                    &self.target,
                    &run.run_id,
                    &plan.refresh.schemas,
                    &carried,
                )
                .await?;
                // Before yesterday's tables go, and the views over them with them.
                replica::dependents::recreate(&self.target, &plan.readers.views).await?;
                replica::swap::drop_yesterday(&self.target, &plan.refresh.schemas).await?;
                return Ok(Some(at));
            }
        }
        Ok(None)
    }
}
