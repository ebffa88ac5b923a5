//! `replicator check`: a dry run that changes nothing. It answers "would a run work now, and
//! what would it restore?" one line per check, each `ok`, `FAIL` with what to fix, or `skip`
//! when an earlier failure makes it pointless.
//!
//! Nothing is written: no state directory is created, the target is only read (no lock is
//! taken, so a check can run beside a live run), Scalingo is only asked. Of the backup, only
//! its first bytes are read (a few MiB, into a private temporary directory removed at once):
//! they hold the dump's header and table of contents, which the same pre-wipe checks as a
//! run's judge against the target (versions, extensions, `RESTORE_SCHEMAS`, objects the wipe
//! cannot remove).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;

use super::check_dump::{dump_checks, live_dump_checks, rules_check};
use super::report::{Check, Verdict};
use super::{CliError, EngineArgs, exit};
use crate::config::{Settings, Wants};
use crate::engine::workdir::{free_bytes, nearest_existing};
use crate::machine::{Backup, Phase, Run};
use crate::replica::{self, PgEndpoint};
use crate::source::scalingo::ScalingoClient;
use crate::state::store::Store;
use crate::status::human_duration;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print one JSON object per check, then a summary object (also the default in
    /// LOG_FORMAT=json when stdout is not a terminal)
    #[arg(long)]
    pub json: bool,
    /// A dump (pg_dump -Fc) to check REPLICA_RULES against now (without it, a run checks them
    /// against its backup before the wipe)
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// `replicator check`.
pub async fn run(state_dir: PathBuf, args: CheckArgs) -> Result<u8, CliError> {
    let checks = gather(&state_dir, &args.engine, args.dump.as_deref()).await;
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    // A setting `run` refuses is a check that failed, like any other (its `FAIL` line names
    // it): `check` exits 1. `run` exits 2 for it, a usage error.
    let code = if failed > 0 { exit::FAILED } else { exit::OK };
    let summary = if failed == 0 {
        format!(
            "all {} checks passed: `replicator run` would work now",
            checks.len()
        )
    } else {
        format!(
            "{failed} of {} checks failed: fix them, then run `replicator check` again",
            checks.len()
        )
    };
    let json = args.json
        || (crate::logging::is_json() && !std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if json {
        for c in &checks {
            let mut line =
                json!({"check": c.name, "status": c.verdict.as_str(), "detail": c.detail});
            if let Some(data) = &c.data {
                line["data"] = data.clone();
            }
            println!("{line}");
        }
        println!(
            "{}",
            json!({"summary": summary, "failed": failed, "exit_code": code})
        );
    } else {
        print!("{}", render(&checks));
        println!("{summary}");
    }
    Ok(code)
}

/// The text form: `ok    name            detail`.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        };
        out.push_str(&format!("{tag:<5} {:<15} {}\n", c.name, c.detail));
    }
    out
}

/// Runs every check, in the order a run meets them.
pub async fn gather(state_dir: &Path, engine: &EngineArgs, dump: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();

    // Configuration: every setting a run reads, validated as a run validates it
    // (`EngineConfig::from_args`), each problem on its own FAIL line.
    let settings = Settings::read(engine, Wants::Backups);
    let Settings {
        target,
        source,
        live,
        scalingo,
        restore,
        retry,
        max_backup_age,
        errors,
        ..
    } = settings;
    let max_age_hours = max_backup_age.map(|a| a.as_secs() / 3600);
    if errors.0.is_empty() {
        let (t, r, y) = (
            target.as_ref().expect("validated"),
            restore.as_ref().expect("validated"),
            retry.as_ref().expect("validated"),
        );
        let from = match (&source, &scalingo) {
            (Some(src), _) => format!("live source {} (SOURCE_DATABASE_URL)", src.describe()),
            (None, Some(s)) => format!("app {} ({})", s.app, s.region),
            (None, None) => unreachable!("validated: a live source or Scalingo"),
        };
        checks.push(Check::ok(
            "configuration",
            format!(
                "{from}, target {}, PG_RESTORE_JOBS={}, USE_UNLOGGED_TABLES={}, MAX_RETRY_COUNT={}{}",
                t.describe(),
                r.jobs,
                r.use_unlogged_tables,
                y.max_retry_count,
                max_age_hours
                    .map(|h| format!(", MAX_BACKUP_AGE_HOURS={h}"))
                    .unwrap_or_default()
            ),
        ));
    } else {
        for e in &errors.0 {
            checks.push(Check::fail("configuration", e.to_string()));
        }
    }

    checks.push(state_dir_check(state_dir));

    // Scalingo: the token, the addon, the backup a run would take now. Or the live source:
    // it answers, it is not the target.
    let mut backup = None;
    match &scalingo {
        None if live => match (&source, &target) {
            (Some(src), Some(t)) => {
                checks.extend(super::check_live::live_source_checks(src, t).await)
            }
            _ => {
                for name in ["source", "target is not the source"] {
                    checks.push(Check::skip(
                        name,
                        "needs a valid SOURCE_DATABASE_URL and DATABASE_URL",
                    ));
                }
            }
        },
        None => {
            for name in ["scalingo token", "addon", "backup"] {
                checks.push(Check::skip(
                    name,
                    "SCALINGO_APP and SCALINGO_API_TOKEN are needed",
                ));
            }
        }
        Some(s) => {
            let client =
                ScalingoClient::new(s.endpoints.clone(), s.app.clone(), s.api_token.clone());
            match client.check_token().await {
                Err(e) => {
                    checks.push(Check::fail("scalingo token", e.to_string()));
                    checks.push(Check::skip("addon", "the token was refused"));
                    checks.push(Check::skip("backup", "the token was refused"));
                }
                Ok(()) => {
                    checks.push(Check::ok(
                        "scalingo token",
                        format!(
                            "Scalingo accepted SCALINGO_API_TOKEN ({})",
                            s.endpoints.auth
                        ),
                    ));
                    match client.postgres_addon().await {
                        Err(e) => {
                            checks.push(Check::fail("addon", e.to_string()));
                            checks.push(Check::skip("backup", "no PostgreSQL addon"));
                        }
                        Ok(id) => {
                            checks.push(Check::ok(
                                "addon",
                                format!("app {} has the PostgreSQL addon {id}", s.app),
                            ));
                            if let Some(t) = target.as_ref() {
                                checks.push(source_check(&client, t).await);
                            }
                            match client.newest_done_backup().await {
                                Err(e) => checks.push(Check::fail("backup", e.to_string())),
                                Ok(b) => {
                                    let restored =
                                        already_restored(state_dir, target.as_ref(), &b).await;
                                    checks.push(backup_check(
                                        &b,
                                        max_age_hours,
                                        restored,
                                        Utc::now(),
                                    ));
                                    backup = Some(b);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    checks.push(match backup.as_ref() {
        Some(b) => disk_check(state_dir, b, restore.as_ref().and_then(|r| r.max_work_disk)),
        None if live => Check::ok(
            "disk",
            "live source: nothing of the dump is written to disk but its head (header and table of contents)",
        ),
        None => Check::skip("disk", "the backup's size is unknown"),
    });

    // The target: answers, and the role can do what a run needs.
    match &target {
        None => {
            for name in ["target", "target role", "target lock"] {
                checks.push(Check::skip(name, "DATABASE_URL is needed"));
            }
        }
        Some(t) => match replica::check_target(t).await {
            Err(e) => {
                checks.push(Check::fail("target", e.to_string()));
                checks.push(Check::skip("target role", "the target did not answer"));
                checks.push(Check::skip("target lock", "the target did not answer"));
            }
            Ok(info) => {
                checks.push(Check::ok(
                    "target",
                    format!(
                        "{} answers: PostgreSQL {}, role {} (not a superuser)",
                        t.describe(),
                        info.server_version,
                        info.current_user
                    ),
                ));
                checks.push(role_check(t, info.owns_database).await);
                checks.push(
                    match crate::machine::first_wipe(&info.contents, t.confirm()) {
                        Ok(()) => Check::ok(
                            "target confirmation",
                            if info.contents.objects == 0 {
                                "the target database is empty".to_string()
                            } else if info.contents.replicator_ran {
                                "the replicator restored this database before".to_string()
                            } else {
                                format!(
                                    "{} confirms the first wipe of {}",
                                    crate::machine::TARGET_CONFIRM_VAR,
                                    info.database
                                )
                            },
                        ),
                        Err(e) => Check::fail("target confirmation", e.to_string()),
                    },
                );
                checks.push(lock_check(t).await);
            }
        },
    }

    let client_version = replica::pg_restore_version().await;
    // What a run would restore, judged against the target as a run judges it before the wipe.
    let mut backup_rules_checked = false;
    // A target that is production gets nothing more: not even the backup's first bytes.
    let is_source = checks
        .iter()
        .any(|c| c.name == "target is not the source" && c.verdict == Verdict::Fail);
    match (&scalingo, &backup, &target, &restore) {
        _ if is_source => {
            checks.push(Check::skip("dump", "the target is the source's database"));
            checks.push(Check::skip(
                "restore plan",
                "the target is the source's database",
            ));
        }
        (Some(s), Some(b), Some(t), Some(r)) => {
            let client =
                ScalingoClient::new(s.endpoints.clone(), s.app.clone(), s.api_token.clone());
            let (found, rules_checked) =
                dump_checks(&client, b, t, r, client_version.as_ref().ok()).await;
            checks.extend(found);
            backup_rules_checked = rules_checked;
        }
        _ if live
            && checks
                .iter()
                .any(|c| c.name == "source" && c.verdict != Verdict::Ok) =>
        {
            checks.push(Check::skip("dump", "the source's check failed"));
            checks.push(Check::skip(
                "restore plan",
                "needs the dump's table of contents",
            ));
        }
        (_, _, Some(t), Some(r)) if live && source.is_some() => {
            let src = source.as_ref().expect("matched");
            let (found, rules_checked) =
                live_dump_checks(src, t, r, client_version.as_ref().ok()).await;
            checks.extend(found);
            backup_rules_checked = rules_checked;
        }
        _ => {
            checks.push(Check::skip(
                "dump",
                "needs the backup, the target and a valid configuration",
            ));
            checks.push(Check::skip(
                "restore plan",
                "needs the dump's table of contents",
            ));
        }
    }

    checks.push(match client_version {
        Ok(v) => Check::ok(
            "pg_restore",
            format!("{v}: reads dumps made by pg_dump up to its own major version"),
        ),
        Err(e) => Check::fail(
            "pg_restore",
            format!(
                "{e}; install the PostgreSQL client of the production database's major version (e.g. apt-get install postgresql-client-15) and put pg_restore on PATH"
            ),
        ),
    });
    // REPLICA_RULES against a dump given with --dump (the backup's was checked above).
    if let Some(r) = restore.as_ref()
        && (dump.is_some() || !backup_rules_checked)
        && let Some(c) = rules_check(r, dump).await
    {
        checks.push(c);
    }
    checks
}

/// The target is not the source's database (the rule `run` applies in `FetchingUrl`).
async fn source_check(client: &ScalingoClient, target: &PgEndpoint) -> Check {
    let name = "target is not the source";
    match client.source_database().await {
        Err(e) => Check::fail(name, e.to_string()),
        Ok(source) if crate::machine::target_is_source(target.dbname(), source.as_deref()) => {
            Check::fail(name, crate::engine::target_is_source_message(target))
        }
        Ok(source) => Check::ok(
            name,
            format!(
                "the target database {} is not the addon's ({})",
                target.dbname(),
                source.as_deref().unwrap_or("unknown")
            ),
        ),
    }
}

/// The state directory exists and is writable (or can be created), and holds no run that
/// would make `replicator run` refuse.
fn state_dir_check(state_dir: &Path) -> Check {
    let name = "state directory";
    let existing = state_dir.ancestors().find(|p| p.exists());
    let Some(existing) = existing else {
        return Check::fail(
            name,
            format!(
                "{} cannot be created (no parent exists); set REPLICATOR_STATE_DIR",
                state_dir.display()
            ),
        );
    };
    if !writable(existing) {
        return Check::fail(
            name,
            format!(
                "{} is not writable by this user{}; point REPLICATOR_STATE_DIR at a writable directory",
                existing.display(),
                if existing == state_dir {
                    String::new()
                } else {
                    format!(" (so {} cannot be created)", state_dir.display())
                }
            ),
        );
    }
    if existing != state_dir {
        return Check::ok(
            name,
            format!(
                "{} will be created (no run recorded yet)",
                state_dir.display()
            ),
        );
    }
    let live = crate::state::liveness::holder(state_dir).ok().flatten();
    // The run that would make `replicator run` refuse, by the rule `run` applies.
    let interrupted = Store::new(state_dir)
        .current()
        .map(|current| crate::machine::interrupted(current.as_ref()).cloned());
    match (live, interrupted) {
        (Some(h), _) => Check::ok(
            name,
            format!(
                "{}: a run is live now{} (`replicator status` shows it); a new run would wait for the next tick or be refused until it ends",
                state_dir.display(),
                h.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
            ),
        ),
        (None, Err(e)) => Check::fail(name, e.to_string()),
        (None, Ok(Some(run))) => Check::fail(
            name,
            format!(
                "run {} was interrupted in {}: `replicator run` would refuse; `replicator resume` continues it, `replicator run --restart` abandons it",
                run.run_id,
                run.phase.name()
            ),
        ),
        (None, Ok(_)) => Check::ok(name, format!("{} is writable", state_dir.display())),
    }
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// The last `Done` run that restored `backup`, from this state directory or, when it has
/// none, from the target's records (a fresh container).
async fn already_restored(
    state_dir: &Path,
    target: Option<&PgEndpoint>,
    backup: &Backup,
) -> Option<Run> {
    let local = Store::new(state_dir).last_done().ok().flatten();
    let last_done = match (local, target) {
        (Some(r), _) => Some(r),
        (None, Some(t)) => crate::state::remote::read(t).await.ok().and_then(|runs| {
            runs.history
                .into_iter()
                .find(|r| matches!(r.phase, Phase::Done { .. }))
        }),
        (None, None) => None,
    };
    crate::machine::already_restored(last_done.as_ref(), backup, false).cloned()
}

fn backup_check(
    b: &Backup,
    max_age_hours: Option<u64>,
    restored: Option<Run>,
    now: DateTime<Utc>,
) -> Check {
    let age = b.created_at.map(|c| (now - c).num_seconds().max(0) as f64);
    let mut detail = format!(
        "a run now would take {} (id {}{}{})",
        b.name,
        b.id,
        age.map(|a| format!(", {} old", human_duration(a)))
            .unwrap_or_default(),
        b.size
            .map(|s| format!(", {}", crate::status::size(s)))
            .unwrap_or_default()
    );
    match &restored {
        Some(r) => detail.push_str(&format!(
            "; already restored by run {}{}: `replicator run` would do nothing (`--force` restores it again)",
            r.run_id,
            r.finished_at
                .map(|f| format!(" at {}", f.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default()
        )),
        None => detail.push_str("; not restored yet"),
    }
    let data = json!({
        "name": b.name,
        "id": b.id,
        "created_at": b.created_at.map(|t| t.to_rfc3339()),
        "size": b.size,
        "age_seconds": age.map(|a| a as u64),
        "already_restored": restored.is_some(),
    });
    let max_age = max_age_hours.map(|h| std::time::Duration::from_secs(h * 3600));
    let too_old = crate::machine::too_old(b, max_age, now).map(|t| t.max_age.as_secs() / 3600);
    let mut check = match too_old {
        Some(h) => Check::fail(
            "backup",
            format!(
                "{detail}; it is older than MAX_BACKUP_AGE_HOURS ({h}h): a run now would wait for a newer one; wait for tonight's backup, or raise MAX_BACKUP_AGE_HOURS"
            ),
        ),
        None => Check::ok("backup", detail),
    };
    check.data = Some(data);
    check
}

/// Whole or streamed, as a run decides it ([`crate::machine::work_mode`] on the same budget).
fn disk_check(state_dir: &Path, b: &Backup, max_work_disk: Option<u64>) -> Check {
    let name = "disk";
    let probe = nearest_existing(state_dir);
    let budget = crate::engine::workdir::work_budget(state_dir, max_work_disk);
    let origin = crate::machine::Origin::Scalingo;
    if let Err(e) = crate::machine::enough_disk(&origin, budget, probe) {
        return Check::fail(name, e.to_string());
    }
    let mode = crate::machine::work_mode(&origin, b.size, budget);
    let mut check = Check::ok(name, format!("a run is {}", mode.describe()));
    check.data = Some(serde_json::json!({
        "mode": mode.label(),
        "budget": budget,
        "free": free_bytes(probe),
    }));
    check
}

/// What a run does as the role: `DROP OWNED BY CURRENT_USER` (only what it owns goes),
/// `CREATE SCHEMA public` when the drop took it, and creating tables in `public`; asked by
/// the query the run's pre-wipe check asks ([`replica::privileges`]). Objects of another role
/// that the restore would collide with are the restore plan's line: only the dump knows them.
async fn role_check(target: &PgEndpoint, owns_database: bool) -> Check {
    let name = "target role";
    let client = match target.connect().await {
        Ok(c) => c,
        Err(e) => return Check::fail(name, e.to_string()),
    };
    let privileges = match replica::privileges(&client, &["public".to_string()]).await {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "cannot read the role's privileges on {}: {e}",
                    target.describe()
                ),
            );
        }
    };
    let role = &privileges.role;
    let mut problems = Vec::new();
    if !privileges.create_schemas {
        problems.push(format!(
            "role {role} cannot CREATE in the database (the restore recreates schema public): `GRANT CREATE ON DATABASE {} TO {role}` as its owner",
            target.dbname()
        ));
    }
    if privileges
        .create_in
        .iter()
        .any(|(_, ok)| *ok == Some(false))
    {
        problems.push(format!(
            "role {role} cannot create tables in schema public: `GRANT CREATE ON SCHEMA public TO {role}` (or make it the schema's owner)"
        ));
    }
    if problems.is_empty() {
        Check::ok(
            name,
            format!(
                "role {role} can wipe and restore schema public{}",
                if owns_database {
                    " (it owns the database)"
                } else {
                    " (it does not own the database, but has the privileges a run needs)"
                }
            ),
        )
    } else {
        Check::fail(name, problems.join("; "))
    }
}

/// Whether another replicator holds the target now: not a fault, but a run now would be
/// refused (exit 3) until it ends.
async fn lock_check(target: &PgEndpoint) -> Check {
    let name = "target lock";
    match crate::state::remote::read(target).await {
        Ok(r) if r.lock_held => Check::ok(
            name,
            "a replicator is restoring into the target now: a run would be refused (exit 3) until it ends",
        ),
        Ok(_) => Check::ok(name, "free: no replicator is using the target now"),
        Err(e) => Check::fail(name, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backup(hours_old: i64) -> (Backup, DateTime<Utc>) {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        (
            Backup {
                id: "6761a1f0c2d4e5f6a7b8c9d0".into(),
                name: "20261123041000_my_app_4553".into(),
                created_at: Some(now - chrono::Duration::hours(hours_old)),
                size: Some(3 << 20),
            },
            now,
        )
    }

    #[test]
    fn a_backup_older_than_max_backup_age_hours_fails_and_says_what_to_do() {
        let (b, now) = backup(30);
        let c = backup_check(&b, Some(24), None, now);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.detail.contains("MAX_BACKUP_AGE_HOURS"), "{}", c.detail);
        let (b, now) = backup(8);
        let c = backup_check(&b, Some(24), None, now);
        assert_eq!(c.verdict, Verdict::Ok, "{}", c.detail);
        assert!(
            c.detail.contains("20261123041000_my_app_4553"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("8h00m old"), "{}", c.detail);
        assert!(c.detail.contains("3.0 MiB"), "{}", c.detail);
        assert_eq!(c.data.unwrap()["already_restored"], false);
    }

    #[test]
    fn the_text_has_one_line_per_check() {
        let text = render(&[
            Check::ok("configuration", "fine"),
            Check::fail("target", "down; start it"),
            Check::skip("target role", "the target did not answer"),
        ]);
        assert_eq!(
            text,
            "ok    configuration   fine\nFAIL  target          down; start it\nskip  target role     not checked: the target did not answer\n"
        );
    }

    #[test]
    fn a_state_directory_that_does_not_exist_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        let c = state_dir_check(&state);
        assert_eq!(c.verdict, Verdict::Ok, "{}", c.detail);
        assert!(!state.exists());
    }
}
