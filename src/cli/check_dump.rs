//! The lines of `replicator check` that read the backup's dump: its first MiBs only (they hold
//! the header and the table of contents), judged as a run judges them before the wipe, and
//! `REPLICA_RULES` against it. For a live source (`SOURCE_DATABASE_URL`), the head of a
//! `pg_dump` of it, started and stopped as soon as its head is read.

use std::path::{Path, PathBuf};

use super::report::Check;
use crate::machine::Backup;
use crate::replica::{self, PgEndpoint};
use crate::source::scalingo::ScalingoClient;

/// How much of the archive `check` reads, growing until the dump's table of contents is
/// whole in it (a schema of thousands of objects has a table of contents of a few MiB).
const HEAD_SIZES: [u64; 3] = [4 << 20, 64 << 20, 512 << 20];

/// The dump of `backup`, from the archive's first bytes: its versions against pg_restore's
/// and the target's, then the pre-wipe checks of a run ([`replica::preflight::check_restorable`],
/// and `REPLICA_RULES` against the dump's tables). The flag says whether the rules were
/// checked.
pub(super) async fn dump_checks(
    client: &ScalingoClient,
    backup: &Backup,
    t: &PgEndpoint,
    restore: &crate::config::RestoreConfig,
    client_version: Option<&String>,
) -> (Vec<Check>, bool) {
    let checks = dump_checks_inner(client, backup, t, restore, client_version).await;
    with_rules(checks, restore).await
}

/// [`dump_checks`] of a live source: `pg_dump` of it is started as a run starts it (after
/// the refusal of a source that is the target), its head read into a private temporary
/// directory, and `pg_dump` stopped.
pub(super) async fn live_dump_checks(
    source: &PgEndpoint,
    t: &PgEndpoint,
    restore: &crate::config::RestoreConfig,
    client_version: Option<&String>,
) -> (Vec<Check>, bool) {
    let checks = live_dump_checks_inner(source, t, restore, client_version).await;
    with_rules(checks, restore).await
}

type Found = Result<(Vec<Check>, Option<PathBuf>, tempfile::TempDir), Vec<Check>>;

/// The dump's checks, then `REPLICA_RULES` against its head; the flag says whether the rules
/// were checked.
async fn with_rules(checks: Found, restore: &crate::config::RestoreConfig) -> (Vec<Check>, bool) {
    match checks {
        Ok((mut checks, Some(path), _dir)) => {
            let rules = rules_check(restore, Some(&path)).await;
            let checked = rules.is_some();
            checks.extend(rules);
            (checks, checked)
        }
        Ok((checks, None, _)) | Err(checks) => (checks, false),
    }
}

/// [`dump_checks`] up to the restore plan: the checks, and the dump's head (kept in its
/// temporary directory while the rules are checked against it) when it could be read.
async fn dump_checks_inner(
    client: &ScalingoClient,
    backup: &Backup,
    t: &PgEndpoint,
    restore: &crate::config::RestoreConfig,
    client_version: Option<&String>,
) -> Found {
    let skip_plan = |why: &str| Check::skip("restore plan", why);
    let url = match client.download_url(&backup.id).await {
        Ok(u) => u,
        Err(e) => {
            return Err(vec![
                Check::fail("dump", e.to_string()),
                skip_plan("no dump"),
            ]);
        }
    };
    let dir = match tempfile::Builder::new()
        .prefix("replicator-check-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            return Err(vec![
                Check::fail("dump", format!("cannot create a temporary directory: {e}")),
                skip_plan("no dump"),
            ]);
        }
    };
    let path = dir.path().join("dump-head.pgsql");
    let http = crate::source::http::http_client(std::time::Duration::from_secs(60));
    let mut read = None;
    for max in HEAD_SIZES {
        let head = match crate::source::download::fetch_head(&http, &url, max).await {
            Ok(h) => h,
            Err(e) => {
                return Err(vec![
                    Check::fail("dump", e.to_string()),
                    skip_plan("no dump"),
                ]);
            }
        };
        let whole = (head.len() as u64) < max;
        let p = path.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::source::extract::extract_head(&head, &p))
                .await;
        match written {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Err(e)) => {
                return Err(vec![
                    Check::fail("dump", e.to_string()),
                    skip_plan("no dump"),
                ]);
            }
            _ if whole => {
                return Err(vec![
                    Check::fail("dump", "the backup's archive holds no *.pgsql dump"),
                    skip_plan("no dump"),
                ]);
            }
            _ => continue,
        }
        match replica::check_dump_toc(&path, None).await {
            Ok(found) => {
                read = Some(found);
                break;
            }
            Err(e) if whole => {
                return Err(vec![
                    Check::fail("dump", e.to_string()),
                    skip_plan("no dump"),
                ]);
            }
            Err(_) => continue,
        }
    }
    let Some((toc, info)) = read else {
        return Err(vec![
            Check::fail(
                "dump",
                "the dump's table of contents is not whole in the archive's first 512 MiB",
            ),
            skip_plan("no dump"),
        ]);
    };
    judge_head(
        &backup.name,
        toc,
        info,
        path,
        dir,
        t,
        restore,
        client_version,
    )
    .await
}

/// [`live_dump_checks`] up to the restore plan.
async fn live_dump_checks_inner(
    source: &PgEndpoint,
    t: &PgEndpoint,
    restore: &crate::config::RestoreConfig,
    client_version: Option<&String>,
) -> Found {
    let fail = |e: String| {
        vec![
            Check::fail("dump", e),
            Check::skip("restore plan", "no dump"),
        ]
    };
    let dir = tempfile::Builder::new()
        .prefix("replicator-check-")
        .tempdir()
        .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let path = dir.path().join("dump-head.pgsql");
    let (mut feed, _) =
        crate::engine::live_feed(source, t, dir.path(), &restore.exclude_table_data)
            .await
            .map_err(|e| fail(e.to_string()))?;
    let what = feed.what.clone();
    let p = path.clone();
    // The head only: pg_dump is stopped (killed with the feed) as soon as it is read.
    let read = tokio::task::spawn_blocking(move || feed.read_head(&p))
        .await
        .map_err(|e| fail(format!("reading pg_dump's output: {e}")))?;
    read.map_err(|e| fail(e.to_string()))?;
    let (toc, info) = replica::check_dump_toc(&path, None)
        .await
        .map_err(|e| fail(e.to_string()))?;
    judge_head(&what, toc, info, path, dir, t, restore, client_version).await
}

/// The dump `name` from its head at `path` (in `dir`, kept while the rules are checked):
/// its versions against pg_restore's and the target's, then the run's pre-wipe checks.
#[allow(clippy::too_many_arguments)]
async fn judge_head(
    name: &str,
    toc: crate::dump::toc::Toc,
    info: replica::DumpInfo,
    path: PathBuf,
    dir: tempfile::TempDir,
    t: &PgEndpoint,
    restore: &crate::config::RestoreConfig,
    client_version: Option<&String>,
) -> Found {
    let skip_plan = |why: &str| Check::skip("restore plan", why);
    let (target_version, target_num) = match replica::server_version(t).await {
        Ok(v) => (v.text, v.num),
        Err(e) => {
            return Err(vec![
                Check::fail("dump", format!("reading the target's version: {e}")),
                skip_plan("no target"),
            ]);
        }
    };
    let from = info.dumped_from.clone().unwrap_or_else(|| "unknown".into());
    let by = info.dumped_by.clone().unwrap_or_else(|| "unknown".into());
    let major = |v: &str| {
        v.split(['.', ' '])
            .next()
            .and_then(|m| m.parse::<u32>().ok())
    };
    let newer_than_target = match (major(&from), u32::try_from(target_num / 10000).ok()) {
        (Some(d), Some(t)) if d > t => format!(
            "; the dump comes from a newer server than the target: objects that PostgreSQL {t} lacks would fail"
        ),
        _ => String::new(),
    };
    let mut checks = vec![Check::ok(
        "dump",
        format!(
            "{name}: dumped from PostgreSQL {from} by pg_dump {by}; {}; target PostgreSQL {target_version}{newer_than_target}",
            client_version.map_or("pg_restore unknown".to_string(), |v| v.clone()),
        ),
    )];
    let p = path.clone();
    let deps = tokio::task::spawn_blocking(move || crate::dump::verify::dependencies(&p))
        .await
        .ok()
        .flatten();
    // The run's own decision, by the same function: what `run` would restore, and why not.
    let decided = crate::engine::planning::decide(
        t,
        &toc,
        &path,
        deps.as_ref(),
        restore,
        target_num as u32,
        &dir.path().join("fk.list"),
    )
    .await;
    let decided = match decided {
        Ok(mut d) => {
            // The run's rehearsal, on what of the dump this check read: its rows where the
            // part read holds them.
            let rehearsal = crate::engine::planning::rehearse(
                t,
                &path,
                &toc,
                &mut d.plan,
                d.masking.as_ref(),
                restore.masking_key.as_ref(),
                true,
                chrono::Utc::now(),
            )
            .await;
            checks.push(match rehearsal {
                Ok(()) => Check::ok(
                    "rehearsal",
                    d.plan
                        .rehearsed
                        .as_ref()
                        .map(describe_rehearsal)
                        .unwrap_or_default(),
                ),
                Err(e) => Check::fail("rehearsal", e.to_string()),
            });
            checks.push(match crate::replica::locks::budget(t).await {
                Ok(b) => Check::ok("locks", b.describe()),
                Err(e) => Check::fail("locks", e.to_string()),
            });
            Ok(d)
        }
        Err(e) => {
            checks.push(Check::skip("rehearsal", "no restore plan"));
            Err(e)
        }
    };
    let rehearsed = decided.is_ok();
    let plan_line = match decided {
        Ok(d) => {
            let jobs = d.plan.jobs;
            let over = if jobs < restore.jobs {
                format!(
                    "; over {jobs} job(s) ({} sessions at once), not PG_RESTORE_JOBS={} ({}): the target has fewer sessions free for this role (see the run's warning)",
                    replica::sessions::peak_sessions(jobs),
                    restore.jobs,
                    replica::sessions::peak_sessions(restore.jobs)
                )
            } else {
                String::new()
            };
            Check::ok("restore plan", format!("{}{over}", d.plan.summary()))
        }
        Err(e) => Check::fail("restore plan", e.to_string()),
    };
    // The plan's line before the rehearsal's (and the locks'), as a run decides then
    // rehearses.
    let at = checks.len() - if rehearsed { 2 } else { 1 };
    checks.insert(at, plan_line);
    Ok((checks, Some(path), dir))
}

/// `REPLICA_RULES`: parsed (the configuration check), and checked against `dump` as a run
/// checks them against its backup before the wipe.
pub(super) async fn rules_check(
    restore: &crate::config::RestoreConfig,
    dump: Option<&Path>,
) -> Option<Check> {
    let rules = restore.rules.as_ref()?;
    let name = "replica rules";
    let key = if restore.masking_key.is_some() {
        "MASKING_KEY set"
    } else {
        "MASKING_KEY not set (no rule is keyed)"
    };
    let Some(dump) = dump else {
        return Some(Check::ok(
            name,
            format!(
                "{} table(s), strict={}, {key}; each run checks them against its backup before the wipe (`check --dump FILE` checks them now)",
                rules.tables.len(),
                rules.strict
            ),
        ));
    };
    let toc = match crate::dump::toc::Toc::read(dump).await {
        Ok(t) => t,
        Err(e) => return Some(Check::fail(name, e.to_string())),
    };
    let opts = crate::dump::selection::SelectOptions {
        schemas: restore.restore_schemas.clone(),
        target_version_num: 0,
        drop_comments: rules.dump.drops_comments(),
        drop_large_objects: rules.dump.drops_large_objects(),
    };
    let skip = crate::dump::selection::select(&toc, &opts).skip;
    let restored = replica::masking::restored_tables(&toc, &skip, &restore.exclude_table_data);
    if let Err(e) = replica::masking::check_dump_parts(rules, &toc, &skip) {
        return Some(Check::fail(name, e));
    }
    Some(
        match replica::masking::check_rules_with_schema(rules, dump, &restored).await {
            Ok((plan, schema)) => {
                let literals = replica::masking::ddl_literals(&plan, &schema);
                Check::ok(
                    name,
                    format!(
                        "every rule applies to {} ({} table(s) masked or filtered, strict={}, {key}){}",
                        dump.display(),
                        plan.tables.len(),
                        rules.strict,
                        if literals.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; the DDL of masked tables holds these string literals, copied as written (schema, not masked: docs/masking.md): {}",
                                literals.join("; ")
                            )
                        }
                    ),
                )
            }
            Err(e) => Check::fail(name, e.to_string().replace('\n', "; ")),
        },
    )
}

/// What a rehearsal tried, in one line of `check`.
fn describe_rehearsal(r: &crate::dump::plan::Rehearsed) -> String {
    let mut text = if r.pre_data + r.post_data + r.rows == 0 && !r.not_rehearsed.is_empty() {
        "not tried".to_string()
    } else {
        format!(
            "the restore tried on the target in a transaction rolled back ({} ms): {}{} schema statements, {} rows into {} table(s), {} index and constraint statements",
            r.millis,
            if r.wipe { "the wipe, " } else { "" },
            r.pre_data,
            r.rows,
            r.tables,
            r.post_data
        )
    };
    if !r.not_rehearsed.is_empty() {
        text.push_str(&format!("; not rehearsed: {}", r.not_rehearsed.join("; ")));
    }
    text
}
