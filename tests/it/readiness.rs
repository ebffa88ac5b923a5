//! Issue 23, ready at `Done`: when a run ends, every restored table has planner statistics
//! and the pages its rows were loaded into are all-visible (`COPY ... FREEZE`), with nothing
//! left for autovacuum to do first. The target's cluster runs without autovacuum, so that
//! whatever statistics and visibility it holds come from the run itself. In swap mode (the
//! default: tonight's copy built in shadow schemas, then renamed) and in wipe mode; a masked
//! column's statistics are the masked values'.

use std::sync::OnceLock;

use crate::common::pg::{PgCluster, shared_cluster};
use crate::common::scenario::{Scenario, stderr, stdout};
use crate::masking_scan::KEY;

/// A cluster of the tests' own, with autovacuum off: nothing but the run analyzes or vacuums.
fn quiet_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = PgCluster::start();
        c.superuser_psql(
            "postgres",
            "ALTER SYSTEM SET autovacuum = off; SELECT pg_reload_conf();",
        );
        c
    })
}

/// Plain, toasted, identity, partitioned, inherited, mixed-case and second-schema tables, an
/// expression index, a materialized view; every table holds rows.
fn fill(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        "CREATE SCHEMA app;
         CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, name text, bio text);
         CREATE INDEX users_lower_email ON users (lower(email));
         INSERT INTO users (email, name, bio)
           SELECT 'user' || i || '.secret@corp.example', 'name' || (i % 50),
                  CASE WHEN i % 20 = 0 THEN
                    (SELECT string_agg(md5(i::text || j::text), '') FROM generate_series(1, 120) j)
                  END
           FROM generate_series(1, 3000) i;
         CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                  user_id int NOT NULL REFERENCES users, total numeric,
                                  created date NOT NULL);
         CREATE INDEX orders_user ON app.orders (user_id);
         INSERT INTO app.orders (user_id, total, created)
           SELECT 1 + i % 3000, (i % 997) * 1.5, date '2024-01-01' + i % 700
           FROM generate_series(1, 20000) i;
         CREATE TABLE events (id int, at date NOT NULL, kind text) PARTITION BY RANGE (at);
         CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE INDEX events_at ON events (at);
         INSERT INTO events SELECT i, date '2024-01-01' + i % 700, 'kind' || (i % 7)
           FROM generate_series(1, 8000) i;
         CREATE TABLE contacts (id int, phone text);
         CREATE TABLE vip_contacts (level text) INHERITS (contacts);
         INSERT INTO contacts SELECT i, '+33' || i FROM generate_series(1, 500) i;
         INSERT INTO vip_contacts SELECT i, '+44' || i, 'gold' FROM generate_series(1, 300) i;
         CREATE TABLE \"Mixed Case\" (id int PRIMARY KEY, \"Value\" text);
         INSERT INTO \"Mixed Case\" SELECT i, 'v' || i FROM generate_series(1, 2000) i;
         CREATE MATERIALIZED VIEW user_names AS SELECT name, count(*) AS n FROM users GROUP BY name;",
    );
}

const RULES: &str = r#"
[tables.users.columns]
email = "hash"
"#;

/// `sql` on the target's database, as the superuser, trimmed.
fn su(s: &Scenario, sql: &str) -> String {
    s.cluster
        .superuser_psql(&s.target.dbname, sql)
        .trim()
        .to_string()
}

/// The restored relations (schemas public and app: tables, partitioned tables, materialized
/// views) that `pg_stats` knows nothing of, as the superuser reads it.
fn without_statistics(s: &Scenario) -> String {
    su(
        s,
        "SELECT coalesce(string_agg(n.nspname || '.' || c.relname, ', ' ORDER BY 1), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname IN ('public', 'app')
            AND NOT EXISTS (SELECT 1 FROM pg_stats st
                             WHERE st.schemaname = n.nspname AND st.tablename = c.relname)",
    )
}

/// `schema.table relallvisible/relpages` of every restored plain table whose pages are not
/// all marked all-visible; and how many tables and pages were looked at.
fn not_all_visible(s: &Scenario) -> (String, String) {
    let bad = su(
        s,
        "SELECT coalesce(string_agg(format('%s.%s %s/%s', n.nspname, c.relname,
                                           c.relallvisible, c.relpages), ', '), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname IN ('public', 'app')
            AND (c.relpages = 0 OR c.relallvisible <> c.relpages)",
    );
    let seen = su(
        s,
        "SELECT count(*) || ' tables, ' || sum(c.relpages) || ' pages, ' || sum(c.relallvisible)
                || ' all-visible'
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname IN ('public', 'app')",
    );
    (bad, seen)
}

/// After a run: every table analyzed by the run (never by autovacuum), all-visible, the
/// masked column's statistics masked, and the run saying so.
fn assert_ready(s: &Scenario, logs: &str, night: &str) {
    assert_eq!(su(s, "SHOW autovacuum"), "off");
    assert_eq!(
        without_statistics(s),
        "",
        "{night}: restored relations without planner statistics"
    );
    let (bad, seen) = not_all_visible(s);
    eprintln!("[readiness] {night}: {seen}");
    for line in logs.lines().filter(|l| l.contains("analyzed")) {
        eprintln!("[readiness] {night}: {line}");
    }
    assert_eq!(bad, "", "{night}: pages not all-visible ({seen})");
    assert_eq!(
        su(
            s,
            "SELECT count(*) FROM pg_stat_user_tables
              WHERE schemaname IN ('public', 'app')
                AND (last_analyze IS NULL OR last_autoanalyze IS NOT NULL OR last_autovacuum IS NOT NULL)
                AND relid IN (SELECT oid FROM pg_class WHERE relkind = 'r')",
        ),
        "0",
        "{night}: a table the run did not analyze itself"
    );
    // Nothing left for autovacuum: no table or materialized view above its thresholds (the
    // counts of inserted and changed rows since the last vacuum and analyze), read once every
    // session of the run has gone. Rows inserted count against autovacuum's insert threshold
    // (a small table loaded frozen is analyzed without a vacuum: it stays below it); any row
    // changed since the last analysis is one too many.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        su(
            s,
            "SELECT coalesce(string_agg(format('%s.%s ins %s mod %s', t.schemaname, t.relname,
                                               n_ins_since_vacuum, n_mod_since_analyze), ', '), '')
               FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
              WHERE schemaname IN ('public', 'app')
                AND (n_ins_since_vacuum > current_setting('autovacuum_vacuum_insert_threshold')::float8
                       + current_setting('autovacuum_vacuum_insert_scale_factor')::float8
                         * greatest(c.reltuples, 0)
                     OR n_mod_since_analyze > 0)",
        ),
        "",
        "{night}: autovacuum would come back for these"
    );
    // The masked column's statistics are the masked values'.
    let email = su(
        s,
        "SELECT coalesce(most_common_vals::text, '') || coalesce(histogram_bounds::text, '')
           FROM pg_stats WHERE schemaname = 'public' AND tablename = 'users' AND attname = 'email'",
    );
    assert!(
        email.contains("example.invalid") && !email.contains("secret"),
        "{night}: {email}"
    );
    // The run says it: its summary line, and status.
    let status = s.status_json();
    let load = &status["load"];
    let relations: u64 = su(
        s,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname IN ('public', 'app')",
    )
    .parse()
    .unwrap();
    assert!(
        load["analyzed"].as_u64().unwrap() >= relations,
        "{night}: {relations} relations, status says {load}"
    );
    assert!(
        logs.contains(&format!(
            "{} relations analyzed",
            load["analyzed"].as_u64().unwrap()
        )),
        "{night}: the summary does not say it: {logs}"
    );
    let text = stdout(&s.run_ok(&["status"]));
    assert!(text.contains("relations analyzed"), "{text}");
}

#[test]
fn a_run_ends_with_every_table_analyzed_and_its_pages_all_visible_in_swap_and_wipe_mode() {
    let mut s = Scenario::across(
        "ready",
        shared_cluster(),
        quiet_cluster(),
        fill,
        |c, db, out| c.pg_dump(db, out),
    );
    let rules = s.files.path().join("replica.toml");
    std::fs::write(&rules, RULES).unwrap();
    s.set_env("REPLICA_RULES", rules.to_str().unwrap());
    s.set_env("MASKING_KEY", KEY);

    // Night 1 and 2: swap (the default); night 2 builds beside yesterday's copy.
    for night in ["swap, night 1", "swap, night 2"] {
        let out = s.run_ok(&["run", "--force"]);
        let logs = stdout(&out) + &stderr(&out);
        assert!(logs.contains("this run swaps"), "{night}: {logs}");
        assert_ready(&s, &logs, night);
    }
    // Night 3: wipe.
    s.set_env("REFRESH_MODE", "wipe");
    let out = s.run_ok(&["run", "--force"]);
    let logs = stdout(&out) + &stderr(&out);
    assert!(!logs.contains("this run swaps"), "{logs}");
    assert_ready(&s, &logs, "wipe");
    assert_eq!(s.target_psql("SELECT count(*) FROM app.orders"), "20000");
    assert_eq!(s.target_psql("SELECT count(*) FROM events"), "8000");
}

/// A dump made with `--load-via-partition-root`: each partition's rows go through the
/// partitioned root, which `FREEZE` refuses and which several entries fill. They go in without
/// `TRUNCATE` (it would empty the other partitions) over two jobs, every row once, and the
/// partitions are vacuumed and analyzed all the same. (Whether the vacuum may mark their pages
/// all-visible depends on the server: printed, not asserted; here it marks none,
/// docs/performance.md.)
#[test]
fn rows_loaded_through_the_partition_root_go_in_once_and_are_ready_too() {
    let s = Scenario::across(
        "ready_root",
        shared_cluster(),
        quiet_cluster(),
        |c, db| {
            c.superuser_psql(
                db,
                "CREATE TABLE events (id int, at date NOT NULL, kind text) PARTITION BY RANGE (at);
                 CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
                 CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
                 CREATE INDEX events_at ON events (at);
                 INSERT INTO events SELECT i, date '2024-01-01' + i % 700, 'kind' || (i % 7)
                   FROM generate_series(1, 8000) i;",
            );
        },
        |c, db, out| c.pg_dump_with(15, db, out, &["--load-via-partition-root"]),
    );
    let out = s.run_ok(&["run"]);
    let logs = stdout(&out) + &stderr(&out);
    assert_eq!(
        s.target_psql("SELECT count(*), count(DISTINCT id) FROM events"),
        "8000|8000",
        "{logs}"
    );
    assert_eq!(
        s.target_psql(
            "SELECT (SELECT count(*) FROM events_2024) || ' ' || (SELECT count(*) FROM events_2025)"
        ),
        s.source_cluster
            .superuser_psql(
                &s.source_db,
                "SELECT (SELECT count(*) FROM events_2024) || ' ' || (SELECT count(*) FROM events_2025)"
            )
            .trim()
    );
    assert_eq!(without_statistics(&s), "");
    let (bad, seen) = not_all_visible(&s);
    eprintln!("[readiness] through the root: {seen}; not all-visible: {bad:?}");
    assert_eq!(
        su(
            &s,
            "SELECT string_agg(relname || ' ' || (last_vacuum IS NOT NULL)
                               || ' ' || (last_analyze IS NOT NULL), ', ' ORDER BY relname)
               FROM pg_stat_user_tables WHERE schemaname = 'public'
                AND relid IN (SELECT oid FROM pg_class WHERE relkind = 'r')"
        ),
        "events_2024 true true, events_2025 true true",
        "the partitions are vacuumed and analyzed by the run"
    );
}
