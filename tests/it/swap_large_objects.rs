//! Issue 21: large objects belong to the whole database, not to a schema. In swap mode they
//! are kept in the target during the build and replace yesterday's in the switch's one
//! transaction: a reader sees yesterday's set before the commit and tonight's after, never a
//! mix, and an analyst's own large object stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::pg::{PgCluster, shared_cluster_version};
use crate::common::scenario::{Scenario, kill_9, stderr, stdout};
use crate::swap::switch_sleeping;

/// The reader role every source grants its large objects to (roles are the cluster's, so the
/// dump's `GRANT ... ON LARGE OBJECT` names a role the target knows). Tests running side by
/// side create it at once: the loser of that race gets `unique_violation`, not
/// `duplicate_object`.
fn reader_of(cluster: &PgCluster) -> (String, String) {
    let reader = "lo_reader".to_string();
    let password = "lo-reader-pw".to_string();
    cluster.superuser_psql(
        "postgres",
        &format!(
            "DO $$ BEGIN CREATE ROLE {reader} LOGIN PASSWORD '{password}';
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ),
    );
    (reader, password)
}

/// Night `night`'s source: `documents` pointing at six large objects of oids `night ..
/// night + 5` (so each night drops one of yesterday's, keeps five under new contents, adds
/// one), one of 100 kB (several `lowrite` chunks), one with a comment, all readable by the
/// reader.
fn night_source(night: u32) -> impl Fn(&PgCluster, &str) {
    move |c, db| {
        c.superuser_psql(
            db,
            &format!(
                "SELECT lo_unlink(oid) FROM pg_largeobject_metadata;
                 DROP TABLE IF EXISTS documents;
                 CREATE TABLE documents (id int PRIMARY KEY, content oid NOT NULL);
                 INSERT INTO documents
                 SELECT i, lo_from_bytea(70000 + i,
                          CASE WHEN i % 6 = 0
                               THEN convert_to(repeat(md5(i::text || 'night {night}'), 3200), 'UTF8')
                               ELSE convert_to('document ' || i || ' of night {night}', 'UTF8') END)
                   FROM generate_series({night}, {night} + 5) i;
                 COMMENT ON LARGE OBJECT {oid} IS 'the contract of night {night}';
                 SELECT format('GRANT SELECT ON LARGE OBJECT %s TO lo_reader', oid)
                   FROM pg_largeobject_metadata \\gexec",
                oid = 70000 + night
            ),
        );
    }
}

/// The large objects of `owner` (all when `None`): their count, then a hash of their oids,
/// contents and comments.
fn digest_sql(owner: Option<&str>) -> String {
    format!(
        "SELECT count(*) || ':' || coalesce(md5(string_agg(
                oid || '=' || md5(lo_get(oid)) || '/' || coalesce(obj_description(oid, 'pg_largeobject'), ''),
                ',' ORDER BY oid)), '')
           FROM pg_largeobject_metadata {}",
        owner.map_or(String::new(), |o| format!("WHERE lomowner = '{o}'::regrole"))
    )
}

/// A scenario whose source, target and pg_dump are PostgreSQL `major`'s (pg_dump 17 and later
/// write large objects in groups, `BLOB METADATA`; earlier ones one `BLOB` each).
fn scenario(prefix: &str, major: u32) -> Scenario {
    let cluster = shared_cluster_version(major);
    reader_of(cluster);
    let mut s = Scenario::across(prefix, cluster, cluster, night_source(1), |c, db, out| {
        c.pg_dump_with(major, db, out, &[])
    });
    s.use_client(18);
    s
}

fn new_night(s: &Scenario, major: u32, night: u32) -> String {
    night_source(night)(s.source_cluster, &s.source_db);
    s.source_cluster
        .pg_dump_with(major, &s.source_db, &s.dump, &[]);
    s.rearchive();
    s.source_cluster
        .superuser_psql(&s.source_db, &digest_sql(None))
        .trim()
        .to_string()
}

/// Three swap nights while the reader reads every large object of the replica's every 50 ms.
fn replaced_in_the_switch(major: u32) {
    let s = scenario(&format!("swap_lo{major}"), major);
    let (reader, password) = reader_of(s.cluster);
    let role_digest = digest_sql(Some(&s.target.role));
    let first = s
        .source_cluster
        .superuser_psql(&s.source_db, &digest_sql(None))
        .trim()
        .to_string();
    s.run_ok(&["run"]);
    assert_eq!(s.target_psql(&role_digest), first, "night 1");
    // The DBA lets the reader read every large object (a superuser's setting), and grants it
    // one of them by hand, which every night must carry over; on 18, default privileges
    // give it tonight's new ones.
    s.cluster.superuser_psql(
        "postgres",
        &format!(
            "ALTER ROLE {reader} IN DATABASE \"{}\" SET lo_compat_privileges = on",
            s.target.dbname
        ),
    );
    s.target_psql(&format!("GRANT SELECT ON LARGE OBJECT 70004 TO {reader}"));
    if major >= 18 {
        s.target_psql(&format!(
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON LARGE OBJECTS TO {reader}"
        ));
    }
    // An analyst's own large object, which no night may take.
    s.cluster.superuser_psql(
        &s.target.dbname,
        &format!("SET ROLE {reader}; SELECT lo_from_bytea(99999, convert_to('my notes', 'UTF8'));"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let polling = {
        let conn = format!(
            "host=127.0.0.1 port={} user={reader} password={password} dbname={}",
            s.cluster.port(),
            s.target.dbname
        );
        let sql = role_digest.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = postgres_client(&conn);
            let (mut seen, mut errors) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.query_one(sql.as_str(), &[]) {
                    Ok(r) => seen.push(r.get::<_, String>(0)),
                    Err(e) => errors.push(
                        e.as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string()),
                    ),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (seen, errors)
        })
    };
    let mut nights = vec![first];
    for night in 2..=3 {
        let tonight = new_night(&s, major, night);
        let out = s.run_ok(&["run", "--force"]);
        let logs = stdout(&out) + &stderr(&out);
        assert!(
            logs.contains("large objects: 6 of yesterday's replaced by 6"),
            "night {night}: {logs}"
        );
        assert_eq!(s.status_json()["refresh"]["mode"], "swap", "night {night}");
        assert_eq!(s.target_psql(&role_digest), tonight, "night {night}");
        assert_eq!(
            s.target_psql("SELECT count(*) FROM replicator.staged_large_objects"),
            "0",
            "night {night}: the kept statements stay after the switch"
        );
        assert!(
            granted(&s, &reader, 70004),
            "night {night}: the reader's grant is gone"
        );
        if major >= 18 {
            assert!(
                granted(&s, &reader, 70005 + night),
                "night {night}: the default privileges did not cover tonight's new one"
            );
        }
        nights.push(tonight);
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, errors) = polling.join().unwrap();
    eprintln!(
        "[swap_lo{major}] reader: {} reads of the large objects, {} errors",
        seen.len(),
        errors.len()
    );
    let mut kinds = errors.clone();
    kinds.dedup();
    assert!(errors.is_empty(), "the reader got errors: {kinds:?}");
    assert!(seen.len() > 10, "the reader read {} times", seen.len());
    for d in &seen {
        assert!(
            nights.contains(d),
            "the reader saw {d}: not one night's set of large objects"
        );
    }
    assert!(
        seen.contains(&nights[0]) && seen.contains(&nights[2]),
        "the reader never saw the nights change"
    );
    let notes = "SELECT convert_from(lo_get(99999), 'UTF8')";
    assert_eq!(
        s.cluster.superuser_psql(&s.target.dbname, notes).trim(),
        "my notes",
        "the analyst's own large object, after the swap nights"
    );
    // Wipe mode: the same large objects, the reader's grant given again.
    let mut s = s;
    s.set_env("REFRESH_MODE", "wipe");
    let tonight = new_night(&s, major, 4);
    s.run_ok(&["run", "--force"]);
    assert_eq!(s.target_psql(&role_digest), tonight, "wipe night");
    assert!(
        granted(&s, &reader, 70004),
        "wipe night: the reader's grant is gone"
    );
    assert_eq!(
        s.cluster
            .superuser_psql(
                &s.target.dbname,
                "SELECT convert_from(lo_get(99999), 'UTF8')"
            )
            .trim(),
        "my notes",
        "the analyst's own large object"
    );
}

/// Whether `reader` holds SELECT on large object `oid` of the target.
fn granted(s: &Scenario, reader: &str, oid: u32) -> bool {
    s.target_psql(&format!(
        "SELECT count(*) FROM pg_largeobject_metadata m, aclexplode(m.lomacl) a
          WHERE m.oid = {oid} AND a.grantee = '{reader}'::regrole AND a.privilege_type = 'SELECT'"
    )) == "1"
}

/// A blocking client for the reader's thread.
fn postgres_client(conn: &str) -> SyncClient {
    SyncClient::connect(conn)
}

/// tokio-postgres driven on a thread of its own.
struct SyncClient {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl SyncClient {
    fn connect(conn: &str) -> SyncClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
                .await
                .expect("the reader connects");
            tokio::spawn(connection);
            client
        });
        SyncClient { rt, client }
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        self.rt.block_on(self.client.query_one(sql, params))
    }
}

#[test]
fn large_objects_dumped_by_15_are_replaced_in_the_switch() {
    replaced_in_the_switch(15);
}

#[test]
fn large_objects_dumped_by_18_are_replaced_in_the_switch() {
    replaced_in_the_switch(18);
}

/// `kill -9` while the switch's transaction is open (its large objects replaced, its renames
/// waiting to commit), then the session ended: either nothing switched (yesterday's large
/// objects whole, tonight's still kept in the target) or, where the server finished the
/// transaction first, all of it; `resume` ends with tonight's.
#[test]
fn a_kill_during_the_switch_keeps_yesterdays_large_objects_or_tonights_never_half() {
    let mut s = scenario("swap_lo_kill", 15);
    s.run_ok(&["run"]);
    let role_digest = digest_sql(Some(&s.target.role));
    let yesterday = s.target_psql(&role_digest);
    let tonight = new_night(&s, 15, 2);
    let sleep = replicator::engine::test_hooks::SLEEP_IN_SWITCH_VAR;
    s.set_env(sleep, "30");
    let switched_before = s.target_psql("SELECT count(*) FROM replicator.switches");
    let mut child = s.spawn(&["run", "--force"]);
    let sleeping = format!("SELECT count(*) {}", switch_sleeping(&s));
    crate::common::scenario::eventually(
        Duration::from_secs(120),
        "the switch's transaction sleeping",
        || s.cluster.superuser_psql("postgres", &sleeping).trim() == "1",
    );
    kill_9(&mut child);
    s.cluster.superuser_psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) {}", switch_sleeping(&s)),
    );
    crate::common::scenario::eventually(
        Duration::from_secs(90),
        "the switch's session gone",
        || s.cluster.superuser_psql("postgres", &sleeping).trim() == "0",
    );
    // One snapshot: the large objects, what is still kept, whether the switch committed (a
    // loaded host may let the sleep end before the session is ended: then it committed).
    let state = s.target_psql(&format!(
        "SELECT ({role_digest}) || ' ' || (SELECT count(*) FROM replicator.staged_large_objects)
                || ' ' || (SELECT count(*) FROM replicator.switches)"
    ));
    let parts: Vec<&str> = state.split(' ').collect();
    let (now, kept, switches) = (parts[0], parts[1], parts[2]);
    if switches == switched_before {
        assert_eq!(
            now, yesterday,
            "not switched, yet the large objects changed"
        );
        assert_ne!(kept, "0", "not switched, and tonight's are no longer kept");
    } else {
        assert_eq!(
            (now, kept),
            (tonight.as_str(), "0"),
            "switched, yet not whole"
        );
    }
    s.env.retain(|(k, _)| k != sleep);
    s.run_ok(&["resume"]);
    assert_eq!(s.target_psql(&role_digest), tonight);
    assert_eq!(s.status_json()["phase"], "Done");
}

/// The cost of large objects in the switch, by hand (not for the suite):
/// `REPLICATOR_LO=200x512 cargo test --test it -- --ignored swap_large_objects::replay_cost_by_hand`
/// (objects x KiB each): two nights in swap mode, then two in wipe mode, each printing the
/// run's time and, in swap mode, how long the switch's transaction took (from the JSON log).
#[test]
#[ignore]
fn replay_cost_by_hand() {
    let spec = std::env::var("REPLICATOR_LO").unwrap_or_else(|_| "200x512".into());
    let (n, kib) = spec.split_once('x').unwrap();
    let (n, kib): (u32, u32) = (n.parse().unwrap(), kib.parse().unwrap());
    let mut s = Scenario::new("lo_cost", move |c, db| {
        c.superuser_psql(
            db,
            &format!(
                "CREATE TABLE documents (id int PRIMARY KEY, content oid NOT NULL);
                 INSERT INTO documents
                 SELECT i, lo_from_bytea(0, convert_to(
                          (SELECT string_agg(md5(i::text || j::text), '') FROM generate_series(1, {kib} * 32) j),
                          'UTF8'))
                   FROM generate_series(1, {n}) i;"
            ),
        );
    });
    s.set_env("LOG_FORMAT", "json");
    let switch_seconds = |logs: &str| -> Option<f64> {
        logs.lines()
            .find(|l| l.contains("switched in"))
            .and_then(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["seconds"].as_f64()
            })
    };
    for mode in ["swap", "wipe"] {
        s.set_env("REFRESH_MODE", mode);
        for night in 1..=2 {
            let t0 = std::time::Instant::now();
            let out = s.run_ok(&["run", "--force"]);
            let logs = stdout(&out) + &stderr(&out);
            let switch = switch_seconds(&logs)
                .map(|x| format!(", switch {x:.2} s"))
                .unwrap_or_default();
            eprintln!(
                "[lo_cost] {n} x {kib} KiB, {mode} night {night}: {:.1} s{switch}",
                t0.elapsed().as_secs_f64()
            );
            assert_eq!(
                s.target_psql("SELECT count(*) FROM pg_largeobject_metadata"),
                n.to_string()
            );
        }
    }
}
