//! `replicator daemon`: replicate on a cron schedule, for months, as Scalingo's `background`
//! process. One run at a time; an interrupted run is resumed at start; SIGTERM stops the step
//! in progress, persists a resumable state and exits 0.

use std::path::PathBuf;

use chrono::Utc;
use tracing::{info, warn};

use crate::cli::{CliError, DaemonArgs, build_driver, exit, lock, resumable, shutdown_on_signals};
use crate::config::ConfigError;
use crate::driver::{Driver, Outcome, new_run_id};
use crate::machine::{Origin, Phase, Run};
use crate::schedule::Schedule;

pub async fn run(state_dir: PathBuf, args: DaemonArgs) -> Result<u8, CliError> {
    let expr = args
        .schedule
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or(ConfigError::Missing {
            var: "SCHEDULE",
            hint: "set it to a cron expression, e.g. `10 5 * * *` for 05:10 every day",
        })?;
    let schedule = Schedule::parse(expr, args.schedule_timezone.as_deref()).map_err(|e| {
        CliError::Config(ConfigError::Invalid {
            var: if e.to_string().contains("SCHEDULE_TIMEZONE") {
                "SCHEDULE_TIMEZONE"
            } else {
                "SCHEDULE"
            },
            value: if e.to_string().contains("SCHEDULE_TIMEZONE") {
                args.schedule_timezone.clone().unwrap_or_default()
            } else {
                expr.to_string()
            },
            expected: e.to_string(),
        })
    })?;
    let shutdown = shutdown_on_signals();
    let driver = build_driver(state_dir, &args.engine, true, shutdown.clone())?;
    info!(
        schedule = %schedule.describe(),
        "daemon started: replicating into {} on schedule {}",
        driver.steps.target.describe(),
        schedule.describe()
    );

    // A run left behind by a container restart (disk kept) is finished first.
    if let Some(run) = driver.store.current().ok().flatten()
        && !run.is_terminal()
    {
        info!(
            run_id = %run.run_id,
            phase = %run.phase.name(),
            "resuming run {} interrupted in {}",
            run.run_id,
            run.phase.name()
        );
        match attempt(&driver, Some(run)).await {
            Ok(true) => return Ok(exit::OK),
            Ok(false) => {}
            Err(e) => warn!("could not resume the interrupted run: {e}"),
        }
    }

    loop {
        let now = Utc::now();
        let Some(next) = schedule.next_after(now) else {
            return Err(CliError::Config(ConfigError::Invalid {
                var: "SCHEDULE",
                value: expr.to_string(),
                expected: "an expression that fires again in the future".into(),
            }));
        };
        info!(next_run_at = %next.to_rfc3339(), "next run at {}", next.to_rfc3339());
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {
                info!("daemon stopped");
                return Ok(exit::OK);
            }
        }
        let started = Utc::now();
        match attempt(&driver, None).await {
            Ok(true) => {
                info!("daemon stopped");
                return Ok(exit::OK);
            }
            Ok(false) => {}
            Err(e) => warn!("tick skipped: {e}"),
        }
        // Ticks that fell while the run was going are skipped, never stacked.
        let mut skipped = 0;
        let mut t = started;
        while let Some(n) = schedule.next_after(t) {
            if n >= Utc::now() {
                break;
            }
            skipped += 1;
            t = n;
            if skipped > 10_000 {
                break;
            }
        }
        if skipped > 0 {
            info!(
                skipped,
                "skipped {skipped} tick(s) that came while the run was going"
            );
        }
    }
}

/// One run (new, or `resume` of an interrupted one) with both locks held. Returns whether the
/// daemon must stop (shutdown asked).
async fn attempt(driver: &Driver, resume: Option<Run>) -> Result<bool, CliError> {
    let _locks = lock(driver).await?;
    let run = match resume {
        Some(r) => resumable(r)?,
        None => {
            if let Some(r) = driver.store.current().ok().flatten()
                && !r.is_terminal()
            {
                resumable(r)?
            } else {
                Run::new(
                    new_run_id(Utc::now()),
                    Origin::Scalingo,
                    driver.retry.max_retry_count,
                    Utc::now(),
                )
            }
        }
    };
    let outcome = driver
        .drive(run)
        .await
        .map_err(|e| CliError::Fatal(e.to_string()))?;
    Ok(match outcome {
        Outcome::Interrupted(_) => true,
        Outcome::Finished(r) => {
            if !matches!(r.phase, Phase::Done { .. }) {
                warn!("run {} failed; the next tick tries again", r.run_id);
            }
            false
        }
        Outcome::AlreadyRestored(_) => false,
    })
}
