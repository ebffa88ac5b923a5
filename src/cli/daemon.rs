//! `replicator daemon`: replicate on a cron schedule, for months, as Scalingo's `background`
//! process. One run at a time; an interrupted run is resumed at start, before the first tick;
//! a tick that comes while a run is going is skipped with a log line, never stacked; SIGTERM
//! stops the step in progress, persists a resumable state and exits 0.
//!
//! The loop itself ([`cron_loop`]) knows neither the driver nor the locks: it is handed a
//! clock and a "replicate once" closure, so that its tests drive it on tokio's paused clock.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{CliError, DaemonArgs, exit};
use crate::app;
use crate::config::engine::origin_of;
use crate::config::{ConfigError, EngineConfig, Wants};
use crate::engine::{Driver, Outcome};
use crate::machine::Phase;
use crate::machine::start::{Asked, Choice, Refusal};
use crate::schedule::Schedule;

/// Longest single sleep while waiting for a tick. The schedule is wall-clock time, tokio's
/// timer is monotonic: waking at least this often re-reads the wall clock, so a container that
/// was frozen or a clock that was stepped delays a tick by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The wall clock, behind a trait so that the loop's tests can run on tokio's paused time.
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why the loop calls the replication closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// At start: a run left unfinished in the state store (crash, SIGTERM, redeploy).
    Resume,
    /// A tick of the schedule, at this time.
    Tick(DateTime<Utc>),
}

/// What the loop does after one replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Wait for the next tick.
    Continue,
    /// Shutdown was asked: leave the loop.
    Stop,
}

/// What the loop did, for its tests and its last log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub runs: u32,
    pub skipped_ticks: u32,
}

/// `replicator daemon`.
pub async fn run(
    state_dir: PathBuf,
    args: DaemonArgs,
    shutdown: CancellationToken,
) -> Result<u8, CliError> {
    let schedule = parse_schedule(&args)?;
    let config = EngineConfig::from_args(&args.engine, Wants::Backups)?;
    let target = config.target.clone();
    let from = match &config.source {
        Some(source) => format!(
            "the live database {} (SOURCE_DATABASE_URL)",
            source.describe()
        ),
        None => "the Scalingo app's newest backup".to_string(),
    };
    let driver = app::driver(state_dir, config, false, shutdown.clone());
    info!(
        schedule = %schedule.describe(),
        "daemon started: replicating {from} into {} on schedule {}",
        target.describe(),
        schedule.describe()
    );
    // The interrupted run, or (a new container: Scalingo empties the disk at each restart)
    // the one the target's records say its predecessor left unfinished, by the rule `resume`
    // follows; chosen again under the locks.
    let resume_first = match app::choose_run(&driver.store, &target, Asked::Resume, false).await {
        Ok(Choice::Resume(_) | Choice::Adopt(_)) => true,
        Ok(Choice::Refused(Refusal::NothingRecorded | Refusal::Finished(_))) => false,
        Ok(Choice::Refused(why)) => {
            warn!(
                "nothing is resumed at start: {}",
                app::refused(&why, &driver.state_dir)
            );
            false
        }
        Ok(Choice::New | Choice::AbandonThenNew(_)) => false,
        Err(e) => {
            warn!("nothing is resumed at start: {e}");
            false
        }
    };
    let stats = cron_loop(
        &schedule,
        &SystemClock,
        &shutdown,
        resume_first,
        |trigger| attempt(&driver, trigger),
    )
    .await;
    info!(
        runs = stats.runs,
        skipped_ticks = stats.skipped_ticks,
        "daemon stopped"
    );
    Ok(exit::OK)
}

/// `SCHEDULE` and `SCHEDULE_TIMEZONE`, checked before anything else: a daemon that cannot
/// tell when to run must not start.
fn parse_schedule(args: &DaemonArgs) -> Result<Schedule, CliError> {
    let expr = args
        .schedule
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or(ConfigError::Missing {
            var: "SCHEDULE",
            hint: "set it to a cron expression, e.g. `10 5 * * *` for 05:10 UTC every day",
        })?;
    let schedule = Schedule::parse(expr, args.schedule_timezone.as_deref())?;
    if !args.schedule_allow_frequent {
        schedule.refuse_frequent()?;
    }
    Ok(schedule)
}

/// The cron loop: an optional resume first, then one replication per tick until shutdown.
///
/// Logs the next run time at start and after each run. A replication is awaited here, not
/// spawned, so two can never overlap; the ticks that fall meanwhile are logged and dropped.
pub async fn cron_loop<C, F, Fut>(
    schedule: &Schedule,
    clock: &C,
    shutdown: &CancellationToken,
    resume_first: bool,
    mut replicate: F,
) -> LoopStats
where
    C: Clock,
    F: FnMut(Trigger) -> Fut,
    Fut: Future<Output = After>,
{
    let mut stats = LoopStats::default();
    let mut next = log_next_run(schedule, clock);
    if resume_first {
        let after = replicate_skipping_ticks(
            schedule,
            clock,
            &mut stats,
            replicate(Trigger::Resume),
            "resumed run",
        )
        .await;
        if after == After::Stop || shutdown.is_cancelled() {
            return stats;
        }
        next = log_next_run(schedule, clock);
    }
    loop {
        let Some(at) = next else {
            // Unreachable in practice: `Schedule::parse` refuses an expression that never
            // fires, and one that did fire has a next firing within 28 years.
            warn!("the schedule has no next run time; waiting for SIGTERM");
            shutdown.cancelled().await;
            return stats;
        };
        tokio::select! {
            _ = sleep_until(clock, at) => {}
            _ = shutdown.cancelled() => return stats,
        }
        let after = replicate_skipping_ticks(
            schedule,
            clock,
            &mut stats,
            replicate(Trigger::Tick(at)),
            "run",
        )
        .await;
        if after == After::Stop || shutdown.is_cancelled() {
            return stats;
        }
        next = log_next_run(schedule, clock);
    }
}

/// Drives `run` to its end while logging every tick that comes meanwhile.
async fn replicate_skipping_ticks<C: Clock>(
    schedule: &Schedule,
    clock: &C,
    stats: &mut LoopStats,
    run: impl Future<Output = After>,
    what: &str,
) -> After {
    stats.runs += 1;
    let started = clock.now();
    tokio::pin!(run);
    loop {
        let tick = schedule.next_after(clock.now());
        tokio::select! {
            after = &mut run => return after,
            _ = sleep_until_opt(clock, tick) => {
                let at = tick.expect("a pending sleep has a time");
                stats.skipped_ticks += 1;
                info!(
                    tick_at = %at.to_rfc3339(),
                    run_started_at = %started.to_rfc3339(),
                    "tick of {} skipped: the {what} started at {} is still going",
                    at.to_rfc3339(),
                    started.to_rfc3339()
                );
            }
        }
    }
}

fn log_next_run<C: Clock>(schedule: &Schedule, clock: &C) -> Option<DateTime<Utc>> {
    let next = schedule.next_after(clock.now());
    if let Some(at) = next {
        info!(
            next_run_at = %at.to_rfc3339(),
            "next run at {} ({})",
            at.to_rfc3339(),
            schedule.describe()
        );
    }
    next
}

/// Sleeps until the wall clock reaches `at`, in steps of at most [`MAX_SLEEP`].
async fn sleep_until<C: Clock>(clock: &C, at: DateTime<Utc>) {
    loop {
        let left = (at - clock.now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

async fn sleep_until_opt<C: Clock>(clock: &C, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => sleep_until(clock, at).await,
        None => std::future::pending().await,
    }
}

/// One replication with both locks held: the interrupted run if there is one, else a new one.
/// Whatever stops it (the target held by another replicator, a failed run) is logged and the
/// daemon waits for the next tick; only a shutdown stops the loop.
async fn attempt(driver: &Driver, trigger: Trigger) -> After {
    match try_attempt(driver, trigger).await {
        Ok(after) => after,
        Err(CliError::Refused(why)) => {
            warn!("{} skipped: {why}", label(trigger));
            stop_if_asked(driver)
        }
        Err(e) => {
            warn!("{} failed before its run could start: {e}", label(trigger));
            stop_if_asked(driver)
        }
    }
}

fn label(trigger: Trigger) -> String {
    match trigger {
        Trigger::Resume => "resuming the interrupted run".into(),
        Trigger::Tick(at) => format!("tick of {}", at.to_rfc3339()),
    }
}

fn stop_if_asked(driver: &Driver) -> After {
    if driver.shutdown.is_cancelled() {
        After::Stop
    } else {
        After::Continue
    }
}

async fn try_attempt(driver: &Driver, trigger: Trigger) -> Result<After, CliError> {
    let locks = app::lock(driver).await?;
    // A SIGTERM that came while the locks were being taken: start nothing.
    if driver.shutdown.is_cancelled() {
        return Ok(After::Stop);
    }
    // Chosen under the lock: another process (a `resume` by hand) may have moved it since.
    let asked = match trigger {
        Trigger::Resume => Asked::Resume,
        Trigger::Tick(_) => Asked::Tick,
    };
    let origin = origin_of(driver.steps.source.as_ref());
    let run = app::run_to_drive(driver, asked, origin).await?;
    let outcome = driver
        .drive(run, Some(locks.target()))
        .await
        .map_err(|e| CliError::Fatal(e.to_string()))?;
    Ok(match outcome {
        Outcome::Interrupted(_) => After::Stop,
        Outcome::Finished(r) => {
            if !matches!(r.phase, Phase::Done { .. }) {
                warn!(
                    run_id = %r.run_id,
                    "run {} failed; the next tick tries again",
                    r.run_id
                );
            }
            After::Continue
        }
        Outcome::AlreadyRestored(_) => After::Continue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Wall time that moves with tokio's (paused, auto-advancing) clock.
    struct VirtualClock {
        wall0: DateTime<Utc>,
        t0: tokio::time::Instant,
    }

    impl VirtualClock {
        fn at(wall0: DateTime<Utc>) -> VirtualClock {
            VirtualClock {
                wall0,
                t0: tokio::time::Instant::now(),
            }
        }
    }

    impl Clock for VirtualClock {
        fn now(&self) -> DateTime<Utc> {
            self.wall0 + chrono::Duration::from_std(self.t0.elapsed()).unwrap()
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_fire_on_ticks_and_ticks_during_a_run_are_skipped_not_stacked() {
        let schedule = Schedule::parse("*/4 * * * * *", None).unwrap();
        let clock = VirtualClock::at(t(1));
        let shutdown = CancellationToken::new();
        let starts = Rc::new(RefCell::new(Vec::new()));
        let ends = Rc::new(RefCell::new(Vec::new()));
        let stats = cron_loop(&schedule, &clock, &shutdown, false, |trigger| {
            let (starts, ends, clock) = (starts.clone(), ends.clone(), &clock);
            async move {
                starts.borrow_mut().push((trigger, clock.now()));
                // A run of 9 s: two ticks fall inside it.
                tokio::time::sleep(Duration::from_secs(9)).await;
                ends.borrow_mut().push(clock.now());
                if starts.borrow().len() == 3 {
                    After::Stop
                } else {
                    After::Continue
                }
            }
        })
        .await;
        let starts = starts.borrow();
        let at: Vec<_> = starts.iter().map(|(_, at)| *at).collect();
        // 4 -> ends 13, skips 8 and 12; 16 -> ends 25, skips 20 and 24; 28 -> skips 32, 36.
        assert_eq!(at, vec![t(4), t(16), t(28)]);
        for (trigger, at) in starts.iter() {
            assert_eq!(*trigger, Trigger::Tick(*at), "a run starts on its tick");
        }
        for (end, next_start) in ends.borrow().iter().zip(at.iter().skip(1)) {
            assert!(end <= next_start, "runs overlap: {end} > {next_start}");
        }
        assert_eq!(
            stats,
            LoopStats {
                runs: 3,
                skipped_ticks: 6
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_run_is_resumed_before_the_first_tick() {
        // Nightly: the first tick is hours away, the resume must not wait for it.
        let schedule = Schedule::parse("10 5 * * *", None).unwrap();
        let clock = VirtualClock::at(t(0));
        let shutdown = CancellationToken::new();
        let calls = Rc::new(RefCell::new(Vec::new()));
        let stats = cron_loop(&schedule, &clock, &shutdown, true, |trigger| {
            let (calls, clock) = (calls.clone(), &clock);
            async move {
                calls.borrow_mut().push((trigger, clock.now()));
                if calls.borrow().len() == 2 {
                    After::Stop
                } else {
                    After::Continue
                }
            }
        })
        .await;
        let next_day = Utc.with_ymd_and_hms(2024, 3, 2, 5, 10, 0).unwrap();
        assert_eq!(
            *calls.borrow(),
            vec![(Trigger::Resume, t(0)), (Trigger::Tick(next_day), next_day)]
        );
        assert_eq!(stats.runs, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_waiting_for_a_tick_ends_the_loop_without_a_run() {
        let schedule = Schedule::parse("10 5 * * *", None).unwrap();
        let clock = VirtualClock::at(t(0));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            stop.cancel();
        });
        let stats = cron_loop(&schedule, &clock, &shutdown, false, |_| async {
            panic!("no run was due")
        })
        .await;
        assert_eq!(stats, LoopStats::default());
        assert_eq!(
            clock.now(),
            t(3600),
            "it stopped when asked, not at the tick"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_run_stops_the_loop_once_the_run_returns() {
        let schedule = Schedule::parse("*/4 * * * * *", None).unwrap();
        let clock = VirtualClock::at(t(1));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let stats = cron_loop(&schedule, &clock, &shutdown, false, |_| {
            let token = token.clone();
            async move {
                // The driver sees the token, persists a resumable state and returns.
                token.cancel();
                After::Continue
            }
        })
        .await;
        assert_eq!(stats.runs, 1);
    }
}
