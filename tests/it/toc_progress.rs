//! The restore's progress total, when a `--use-list` leaves entries out (EXCLUDE_TABLE_DATA,
//! FK_MODE=trust), against a real PostgreSQL 15 and a real pg_restore.

use std::collections::HashMap;
use std::sync::Mutex;

use replicator::dump::toc::{self, Toc};
use replicator::machine::Section;
use replicator::replica::fk::{self, FkMode};
use replicator::replica::{self, PgEndpoint};
use replicator::secret::Secret;

use crate::common::pg::{create_rich_source, shared_cluster, unique_name};

fn no_progress(_: u64, _: u64) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_its_total_when_the_list_leaves_rows_and_foreign_keys_out() {
    let cluster = shared_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let src = unique_name("tocp_src");
    cluster.create_source(&src);
    create_rich_source(cluster, &src);
    let dump = tmp.path().join("dump.pgsql");
    cluster.pg_dump(&src, &dump);
    let db = cluster.create_target(&unique_name("tocp_tgt"));
    let target = PgEndpoint::parse(&Secret::new(db.url.clone())).unwrap();

    // What the driver does for EXCLUDE_TABLE_DATA=answers under FK_MODE=trust.
    let full = replica::check_dump(&dump).await.unwrap();
    let toc = Toc::read(&dump).await.unwrap();
    let plan = toc::plan_exclusion(&toc, &["answers".to_string()], &HashMap::new());
    assert_eq!(plan.excluded, vec!["answers".to_string()]);
    let mut skip = plan.skip;
    let fk_list = tmp.path().join("fk.list");
    let deferred = fk::defer(&toc, FkMode::Trust, &skip, &fk_list).unwrap();
    assert_eq!(deferred.len() as u64, full.fk_constraints);
    skip.extend(deferred);
    let list = tmp.path().join("restore.list");
    toc.write_list(&list, &skip).unwrap();

    replica::drop_owned(&target, &[]).await.unwrap();
    replica::restore_section(&target, &dump, Section::PreData, 1, &no_progress)
        .await
        .unwrap();
    let seen = Mutex::new(Vec::new());
    let record = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    replica::restore_section_with_list(
        &target,
        &dump,
        Section::DataAndPostData,
        // Serial: parallel workers' lines are counted less reliably (see the report).
        1,
        Some(&list),
        &record,
    )
    .await
    .unwrap();
    let seen = seen.into_inner().unwrap();

    // One TABLE DATA and the three foreign keys are not run: the total leaves them out.
    let total = full.items(Section::DataAndPostData) - 1 - full.fk_constraints;
    assert!(seen.iter().all(|(d, t)| *t == total && d <= t), "{seen:?}");
    assert_eq!(seen.last(), Some(&(total, total)));
    // Every item pg_restore ran printed its line: the count itself reached the total before
    // the final call, rather than stopping short and jumping to 100% at the end.
    assert!(
        seen.iter().filter(|(d, _)| *d == total).count() >= 2,
        "{seen:?}"
    );

    let rows = |table: &str| {
        cluster
            .superuser_psql(&db.dbname, &format!("SELECT count(*) FROM {table}"))
            .trim()
            .to_string()
    };
    assert_eq!(rows("answers"), "0");
    assert_ne!(rows("\"UserAccounts\""), "0");
    let fks = || {
        cluster
            .superuser_psql(
                &db.dbname,
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0",
            )
            .trim()
            .to_string()
    };
    assert_eq!(fks(), "0");
    let (not_valid, validated) = fk::add_not_valid(&target, &dump, &fk_list, None, None)
        .await
        .unwrap();
    assert_eq!((not_valid + validated) as u64, full.fk_constraints);
    assert_eq!(fks(), full.fk_constraints.to_string());
}

/// A run reads its dump's table of contents once (`pg_restore --list` in `Extracting`, kept in
/// the work dir): the checks, the restore totals of both sections, the exclusions and the
/// deferred foreign keys all use that one read. Counted from the run's log line.
#[test]
fn a_run_reads_the_table_of_contents_once() {
    let mut s = crate::common::scenario::Scenario::rich("tocp_once");
    s.set_env("EXCLUDE_TABLE_DATA", "answers");
    s.set_env("USE_UNLOGGED_TABLES", "true");
    let out = s.run_ok(&["run"]);
    let logs = crate::common::scenario::stdout(&out);
    let reads: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("read the dump's table of contents with pg_restore --list"))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert!(
        reads[0].contains("1 read(s) by this process"),
        "{}",
        reads[0]
    );
}
