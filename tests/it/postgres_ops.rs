//! The target-side operations of `src/postgres.rs` against real PostgreSQL 15 clusters.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use replicator::machine::Section;
use replicator::replica::{self, LockOutcome, PgEndpoint};
use replicator::secret::Secret;

use crate::common::pg::{
    PgCluster, TargetDb, create_rich_source, fingerprint, shared_cluster, unique_name,
};

fn target_of(db: &TargetDb) -> PgEndpoint {
    PgEndpoint::parse(&Secret::new(db.url.clone())).unwrap()
}

fn no_progress(_: u64, _: u64) {}

/// A `pg_dump -Fc` of a fresh rich source in the shared cluster.
fn rich_dump(dir: &Path) -> (String, PathBuf) {
    let cluster = shared_cluster();
    let src = unique_name("rich_src");
    cluster.create_source(&src);
    create_rich_source(cluster, &src);
    let dump = dir.join(format!("{src}.pgsql"));
    cluster.pg_dump(&src, &dump);
    (src, dump)
}

fn persistence_of_tables(cluster: &PgCluster, db: &str) -> Vec<(String, String)> {
    cluster
        .superuser_psql(
            db,
            "SELECT c.relname || '|' || c.relpersistence::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
        )
        .lines()
        .map(|l| {
            let (a, b) = l.rsplit_once('|').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_owned_wipes_a_non_superuser_target_and_public_exists_afterwards() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("drop_tgt"));
    cluster.superuser_psql(
        &db.dbname,
        &format!(
            "SET ROLE \"{}\";
             CREATE TABLE \"knowledge-elements\" (id serial PRIMARY KEY, v text);
             CREATE TABLE \"UserAccounts\" (id int REFERENCES \"knowledge-elements\"(id));
             CREATE VIEW v AS SELECT * FROM \"UserAccounts\";
             CREATE TYPE mood AS ENUM ('a');
             INSERT INTO \"knowledge-elements\" (v) VALUES ('x');",
            db.role
        ),
    );
    let target = target_of(&db);
    assert_eq!(replica::count_tables(&target).await.unwrap(), 2);

    let out = replica::drop_owned(&target, &[]).await.unwrap();
    assert_eq!(out.tables_before, 2);
    assert_eq!(replica::count_tables(&target).await.unwrap(), 0);
    let left = cluster.superuser_psql(
        &db.dbname,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public';
         SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = 'public';
         SELECT count(*) FROM pg_namespace WHERE nspname = 'public';",
    );
    assert_eq!(left, "0\n0\n1\n");

    // When the role owns public (as on older Scalingo databases), DROP OWNED drops it: it must
    // come back, owned by the role, so that the restore can create in it.
    cluster.superuser_psql(
        &db.dbname,
        &format!(
            "ALTER SCHEMA public OWNER TO \"{0}\"; SET ROLE \"{0}\"; CREATE TABLE t (i int);",
            db.role
        ),
    );
    let out = replica::drop_owned(&target, &[]).await.unwrap();
    assert_eq!(out.tables_before, 1);
    assert!(out.public_recreated);
    let owner = cluster.superuser_psql(
        &db.dbname,
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'",
    );
    assert_eq!(owner.trim(), db.role);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_target_refuses_a_superuser_and_describes_an_owner() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("check_tgt"));
    let info = replica::check_target(&target_of(&db)).await.unwrap();
    assert_eq!(info.current_user, db.role);
    assert_eq!(info.database, db.dbname);
    assert!(info.owns_database);
    assert!(info.server_version_num >= 150000, "{info:?}");

    let su = unique_name("super");
    cluster.superuser_psql(
        "postgres",
        &format!("CREATE ROLE {su} LOGIN SUPERUSER PASSWORD 'su-pass-xyz';"),
    );
    let url = format!(
        "postgresql://{su}:su-pass-xyz@127.0.0.1:{}/{}",
        cluster.port(),
        db.dbname
    );
    let err = replica::check_target(&PgEndpoint::parse(&Secret::new(url)).unwrap())
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("superuser") && msg.contains(&su), "{msg}");
    assert!(!msg.contains("su-pass-xyz"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_are_sorted_and_never_show_the_password() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("auth_tgt"));
    let bad_password = db.url.replace(&db.password, "wrong-password-123");
    let err = replica::check_target(&PgEndpoint::parse(&Secret::new(bad_password)).unwrap())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("28P01"), "{err}");
    assert!(!err.to_string().contains("wrong-password-123"));

    let unknown_db = format!(
        "postgres://{}:{}@127.0.0.1:{}/no_such_db",
        db.role,
        db.password,
        cluster.port()
    );
    let err = replica::check_target(&PgEndpoint::parse(&Secret::new(unknown_db)).unwrap())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("no_such_db"), "{err}");
    assert!(!err.to_string().contains(&db.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_the_rich_source_in_sections_with_unlogged_tables_gives_the_same_database() {
    let cluster = shared_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let (src, dump) = rich_dump(tmp.path());
    let db = cluster.create_target(&unique_name("rich_tgt"));
    let target = target_of(&db);

    let info = replica::check_dump(&dump).await.unwrap();
    // UserAccounts, knowledge-elements, answers, Events and its two partitions.
    assert_eq!(info.tables, 6, "{info:?}");
    assert_eq!(info.table_data, 5, "{info:?}");
    assert_eq!(info.fk_constraints, 3, "{info:?}");
    assert!(info.dumped_by.as_deref().unwrap().starts_with("15."));

    replica::drop_owned(&target, &[]).await.unwrap();
    let seen = Mutex::new(Vec::new());
    let record = |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    replica::restore_section(&target, &dump, Section::PreData, 2, &record)
        .await
        .unwrap();
    let pre = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(pre.last(), Some(&(info.pre_data, info.pre_data)), "{pre:?}");

    // "UserAccounts" stays logged: the partitioned (always permanent) "Events" references it.
    let unlogged = replica::set_unlogged_with_dump(&target, &dump, None)
        .await
        .unwrap();
    assert_eq!(unlogged, 4);
    // A second pass finds nothing left to convert.
    assert_eq!(
        replica::set_unlogged_with_dump(&target, &dump, None)
            .await
            .unwrap(),
        0
    );

    replica::restore_section(&target, &dump, Section::DataAndPostData, 2, &record)
        .await
        .unwrap();
    let data = seen.into_inner().unwrap();
    let total = info.data + info.post_data;
    assert!(data.iter().all(|(d, t)| *t == total && d <= t), "{data:?}");
    assert!(data.windows(2).all(|w| w[0].0 <= w[1].0), "{data:?}");
    assert_eq!(data.last(), Some(&(total, total)));
    // Every item printed one line: the count reached the total before the final call.
    assert!(
        data.iter().filter(|(d, _)| *d == total).count() >= 2,
        "{data:?}"
    );

    assert_eq!(fingerprint(cluster, &src), fingerprint(cluster, &db.dbname));
    let persistence = persistence_of_tables(cluster, &db.dbname);
    assert_eq!(persistence.len(), 5);
    assert!(
        persistence
            .iter()
            .all(|(t, p)| p == if t == "UserAccounts" { "p" } else { "u" }),
        "{persistence:?}"
    );

    // The next night: wipe and restore again on top of the previous copy.
    replica::drop_owned(&target, &[]).await.unwrap();
    replica::restore_section(&target, &dump, Section::PreData, 1, &no_progress)
        .await
        .unwrap();
    replica::restore_section(&target, &dump, Section::DataAndPostData, 1, &no_progress)
        .await
        .unwrap();
    assert_eq!(fingerprint(cluster, &src), fingerprint(cluster, &db.dbname));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_pix_dump_restores_like_a_restore_by_hand() {
    // Read in place, never copied into the project; REPLICATOR_PIX_FIXTURE overrides the path.
    let fixture = std::env::var_os("REPLICATOR_PIX_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/pix-source-2020.pgsql")
        });
    if !fixture.exists() {
        eprintln!(
            "SKIPPED: the Pix fixture {} is absent (it is not part of the project)",
            fixture.display()
        );
        return;
    }
    let cluster = shared_cluster();
    let reference = unique_name("pix_ref");
    cluster.create_source(&reference);
    cluster.pg_restore_as_superuser(&reference, &fixture);

    let db = cluster.create_target(&unique_name("pix_tgt"));
    let target = target_of(&db);
    let info = replica::check_dump(&fixture).await.unwrap();
    assert_eq!(info.dumped_from.as_deref(), Some("12.4"));
    assert_eq!(
        (info.tables, info.table_data, info.fk_constraints),
        (40, 40, 51)
    );

    let t0 = Instant::now();
    replica::drop_owned(&target, &[]).await.unwrap();
    replica::restore_section(&target, &fixture, Section::PreData, 2, &no_progress)
        .await
        .unwrap();
    assert_eq!(
        replica::set_unlogged_with_dump(&target, &fixture, None)
            .await
            .unwrap(),
        40
    );
    replica::restore_section(&target, &fixture, Section::DataAndPostData, 2, &no_progress)
        .await
        .unwrap();
    eprintln!(
        "Pix dump: drop + pre-data + unlogged + data/post-data in {:?}",
        t0.elapsed()
    );

    let expected = fingerprint(cluster, &reference);
    assert_eq!(expected.tables.len(), 40);
    assert!(
        expected
            .tables
            .iter()
            .any(|(t, _, _)| t == "knowledge-elements")
    );
    assert_eq!(expected, fingerprint(cluster, &db.dbname));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_dump_refuses_unreadable_files_permanently() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dump) = rich_dump(tmp.path());

    let random = tmp.path().join("random.pgsql");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, bytes).unwrap();

    let plain = tmp.path().join("plain.sql");
    let out = std::process::Command::new("pg_dump")
        .arg("-h")
        .arg(shared_cluster().socket_dir())
        .args([
            "-p",
            &shared_cluster().port().to_string(),
            "-U",
            "postgres",
            "-d",
            &src,
            "-f",
        ])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success());

    let full = std::fs::read(&dump).unwrap();
    let truncated = tmp.path().join("truncated.pgsql");
    std::fs::write(&truncated, &full[..300]).unwrap();

    let empty = tmp.path().join("empty.pgsql");
    std::fs::write(&empty, b"").unwrap();

    for file in [
        &random,
        &plain,
        &truncated,
        &empty,
        &tmp.path().join("missing.pgsql"),
    ] {
        let err = replica::check_dump(file).await.unwrap_err();
        assert!(!err.is_transient(), "{}: {err}", file.display());
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
    let err = replica::check_dump(&plain).await.unwrap_err().to_string();
    assert!(err.contains("text format"), "{err}");

    // A newer pg_dump's archive: the version in the header (bytes 5..8) says 1.99.
    let mut newer = full.clone();
    newer[6] = 99;
    let newer_path = tmp.path().join("newer.pgsql");
    std::fs::write(&newer_path, newer).unwrap();
    let err = replica::check_dump(&newer_path).await.unwrap_err();
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(
        msg.contains("newer pg_restore") && msg.contains("pg_restore (PostgreSQL) 15"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_cut_in_its_data_fails_the_restore_permanently() {
    let cluster = shared_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let (_src, dump) = rich_dump(tmp.path());
    let full = std::fs::read(&dump).unwrap();
    let cut = tmp.path().join("cut.pgsql");
    std::fs::write(&cut, &full[..full.len() - 2000]).unwrap();
    let db = cluster.create_target(&unique_name("cut_tgt"));
    let target = target_of(&db);
    // The table of contents is intact: --list cannot see the cut.
    replica::check_dump(&cut).await.unwrap();
    replica::restore_section(&target, &cut, Section::PreData, 1, &no_progress)
        .await
        .unwrap();
    let err = replica::restore_section(&target, &cut, Section::DataAndPostData, 1, &no_progress)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    // The rows are read natively (no pg_restore for them): the error names where the archive
    // ends and in which table's data, and what to do.
    let text = err.to_string();
    assert!(text.contains("cut short"), "{text}");
    assert!(text.contains("TABLE DATA public."), "{text}");
    assert!(text.contains("download the backup again"), "{text}");
}

/// pg_restore only translates the archive: whatever runs it sees neither the password nor any
/// other secret of the replicator, in its arguments or its environment. A `pg_restore` first
/// on `PATH` records both, then runs the real one.
#[test]
fn no_secret_reaches_pg_restore_neither_command_line_nor_environment() {
    let mut s = crate::common::scenario::Scenario::rich("child_env");
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v pg_restore"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "no pg_restore on PATH");
    let bin = s.files.path().join("spy-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = s.files.path().join("spy.log");
    let spy = bin.join("pg_restore");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\n{{ echo \"ARGS $*\"; env | sed 's/^/ENV /'; }} >> '{}'\nexec '{real}' \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    s.set_env("PATH", &path);
    s.set_env("NOTIFY_TOKEN", "notify-secret-token-42");
    s.run_ok(&["run"]);
    s.assert_target_is_source();
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("ARGS --file=-"),
        "the spy never saw a restore:\n{seen}"
    );
    for secret in [
        s.target.password.as_str(),
        crate::common::fake_scalingo::API_TOKEN,
        "notify-secret-token-42",
    ] {
        assert!(
            !seen.contains(secret),
            "a secret reached pg_restore:\n{seen}"
        );
    }
    for var in ["ENV PG", "ENV DATABASE_URL", "ENV SCALINGO_", "ENV NOTIFY_"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(var)),
            "pg_restore got {var}*:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_lock_on_the_same_target_is_held() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("lock_tgt"));
    let target = target_of(&db);
    let first = match replica::lock_target(&target).await.unwrap() {
        LockOutcome::Acquired(l) => l,
        other => panic!("{other:?}"),
    };
    assert!(first.is_alive());
    first.check().await.unwrap();
    match replica::lock_target(&target).await.unwrap() {
        LockOutcome::Held { since, holder } => {
            let holder = holder.unwrap();
            assert!(holder.contains("replicator lock"), "{holder}");
            assert!(holder.contains("127.0.0.1"), "{holder}");
            assert!(since.unwrap().ends_with('Z'));
        }
        LockOutcome::Acquired(_) => panic!("two replicators hold the target"),
    }
    // Another database of the same cluster is another target: not excluded.
    let other = cluster.create_target(&unique_name("lock_other"));
    assert!(matches!(
        replica::lock_target(&target_of(&other)).await.unwrap(),
        LockOutcome::Acquired(_)
    ));

    first.release().await;
    let again = replica::lock_target(&target).await.unwrap();
    assert!(matches!(again, LockOutcome::Acquired(_)), "{again:?}");
    drop(again);
    // A plain drop (or a dead process) closes the session, which frees the lock.
    let mut freed = false;
    for _ in 0..50 {
        if let LockOutcome::Acquired(_) = replica::lock_target(&target).await.unwrap() {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_leftover_restores_ends_only_restore_sessions() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("term_tgt"));
    let target = target_of(&db);
    let open = |app: &'static str| {
        let url = db.url.clone();
        async move {
            let mut config: tokio_postgres::Config =
                url.replace("?sslmode=prefer", "").parse().unwrap();
            config.application_name(app);
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        }
    };
    let leftover = open(replica::RESTORE_APPLICATION_NAME).await;
    let metabase = open("Metabase").await;
    let sleeping = tokio::spawn(async move { leftover.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let t0 = Instant::now();
    assert_eq!(
        replica::terminate_leftover_restores(&target).await.unwrap(),
        1
    );
    let res = sleeping.await.unwrap();
    assert!(res.is_err(), "the leftover session survived");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    metabase.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        replica::terminate_leftover_restores(&target).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_a_transient_failure_and_a_restart_recovers() {
    // Its own cluster: stopping the shared one would break the other tests.
    let t0 = Instant::now();
    let cluster = PgCluster::start();
    eprintln!("own cluster initdb + start: {:?}", t0.elapsed());
    let tmp = tempfile::tempdir().unwrap();
    let src = "src";
    cluster.create_source(src);
    create_rich_source(&cluster, src);
    let dump = tmp.path().join("rich.pgsql");
    cluster.pg_dump(src, &dump);
    let db = cluster.create_target("app");
    let target = target_of(&db);
    let lock = match replica::lock_target(&target).await.unwrap() {
        LockOutcome::Acquired(l) => l,
        other => panic!("{other:?}"),
    };

    cluster.stop();
    for _ in 0..50 {
        if !lock.is_alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!lock.is_alive(), "the lock's session outlived the server");
    assert!(lock.check().await.unwrap_err().is_transient());
    let err = replica::check_target(&target).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let err = replica::restore_section(&target, &dump, Section::PreData, 1, &no_progress)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains(&db.password));

    cluster.start_again();
    replica::drop_owned(&target, &[]).await.unwrap();
    replica::restore_section(&target, &dump, Section::PreData, 1, &no_progress)
        .await
        .unwrap();
    replica::restore_section(&target, &dump, Section::DataAndPostData, 2, &no_progress)
        .await
        .unwrap();
    assert_eq!(
        fingerprint(&cluster, src),
        fingerprint(&cluster, &db.dbname)
    );
}
