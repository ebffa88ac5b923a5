//! Issue 10: real dumps restore exactly. Real schemas (tests/fixtures/), dumps made by
//! PostgreSQL 15 to 18, restored by the pg_restore a Scalingo deployment has first on `PATH`
//! (client 18) into targets of older and newer versions, by a non-superuser role that owns its
//! database, with `USE_UNLOGGED_TABLES=true`. A case that cannot complete must leave the
//! target's previous content untouched and say why, before the wipe.
//!
//! Unless a case is about versions, source and target run PostgreSQL 17 (Scalingo's default)
//! and the client is 18, so that each case fails, if it does, for its own reason.

use std::time::Instant;

use serde_json::Value;

use crate::common::pg::{PgCluster, shared_cluster_version, unique_name};
use crate::common::scenario::{Scenario, stderr, stdout};

const PAGILA: &str = include_str!("../fixtures/pagila.sql");
const GITLAB: &str = include_str!("../fixtures/gitlab.sql");
const APP: &str = include_str!("../fixtures/app-two-schemas.sql");

/// The five extensions of the GitLab fixture, all trusted (a database owner may create them).
const GITLAB_EXTENSIONS: [&str; 5] = ["btree_gin", "btree_gist", "citext", "pg_trgm", "pgcrypto"];

/// The contents of the large object the app fixture creates with a fixed OID.
const CONTRACT: &str = "%PDF-1.4 the signed contract, é and ü";

/// Prints how long a test took when it ends (passed or not): the suite runs in parallel, a
/// case should take seconds.
struct Timer(&'static str, Instant);

impl Timer {
    fn start(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("[fidelity] {} took {:.1?}", self.0, self.1.elapsed());
    }
}

/// A source of PostgreSQL `source` filled with `sql`, dumped by `dump`'s pg_dump with
/// `dump_args`, a target of PostgreSQL `target`, client `client` first on `PATH`, unlogged
/// tables.
fn scenario(
    prefix: &str,
    source: u32,
    dump: u32,
    dump_args: &'static [&'static str],
    target: u32,
    client: u32,
    fill: impl FnOnce(&PgCluster, &str),
) -> Scenario {
    let mut s = Scenario::across(
        prefix,
        shared_cluster_version(source),
        shared_cluster_version(target),
        fill,
        |c, db, out| c.pg_dump_with(dump, db, out, dump_args),
    );
    s.set_env("USE_UNLOGGED_TABLES", "true");
    s.use_client(client);
    s
}

/// [`scenario`] on 17, dumped by 17, client 18.
fn on_17(prefix: &str, fill: impl FnOnce(&PgCluster, &str)) -> Scenario {
    scenario(prefix, 17, 17, &[], 17, 18, fill)
}

fn load(sql: &'static str) -> impl FnOnce(&PgCluster, &str) {
    move |c, db| {
        c.superuser_psql(db, sql);
    }
}

/// The same SQL loaded as the superuser into a new database of `cluster`: the reference when
/// the source runs another version.
fn reference(cluster: &PgCluster, prefix: &str, sql: &str) -> String {
    let db = unique_name(&format!("{prefix}_ref"));
    cluster.create_source(&db);
    cluster.superuser_psql(&db, sql);
    db
}

/// The target holds exactly the source's content, and a second night does too.
fn assert_exact(s: &Scenario) {
    let expected = s.expected_fingerprint();
    assert!(!expected.tables.is_empty(), "the source has no table");
    assert_eq!(s.target_fingerprint(), expected);
}

fn assert_previous_content_intact(s: &Scenario) {
    assert!(
        s.table_exists("stale_leftover"),
        "the target was wiped although the run could not complete"
    );
    assert_eq!(
        s.target_psql("SELECT note FROM stale_leftover WHERE id = 1"),
        "from yesterday"
    );
}

fn extensions_of_target(s: &Scenario) -> Vec<String> {
    let out = s.target_psql("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension");
    out.split(',').map(str::to_string).collect()
}

fn server_version(cluster: &PgCluster) -> String {
    // "15.14 (Debian 15.14-0+deb12u1)" -> "15.14"
    cluster
        .superuser_psql("postgres", "SHOW server_version")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn client_version(major: u32) -> String {
    let out = std::process::Command::new(crate::common::pg::pg_bin_dir(major).join("pg_restore"))
        .arg("--version")
        .output()
        .unwrap();
    // "pg_restore (PostgreSQL) 18.6"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

/// The wheels of `scripts/test` are whole builds: their contrib modules load (the fixtures'
/// extensions, and the untrusted ones a superuser creates on a source).
#[test]
fn every_version_s_cluster_creates_the_fixtures_extensions() {
    let _t = Timer::start("every_version_s_cluster_creates_the_fixtures_extensions");
    for major in [16, 17, 18] {
        let c = shared_cluster_version(major);
        let db = unique_name(&format!("ext{major}"));
        c.create_source(&db);
        let out = c.superuser_psql(
            &db,
            "CREATE EXTENSION pg_trgm; CREATE EXTENSION btree_gin; CREATE EXTENSION btree_gist;\
             CREATE EXTENSION citext; CREATE EXTENSION pgcrypto; CREATE EXTENSION dblink;\
             CREATE EXTENSION postgres_fdw;\
             SELECT similarity('replicator', 'replica') > 0, 'A'::citext = 'a',\
                    length(digest('x', 'sha256')), current_setting('server_version_num')::int / 10000;",
        );
        assert_eq!(out.trim(), format!("t|t|32|{major}"), "PostgreSQL {major}");
    }
}

/// A PostgreSQL 14 target (Scalingo offers 14 to 17), dumped by pg_dump 18 from a 14 source:
/// its `public` belongs to the bootstrap superuser, so the role cannot rename it; the swap
/// moves the role's objects in and out of it instead. `check` says so, and pagila (a range
/// type-free sample with partitions, domains, a materialized view) restores exactly, twice in
/// a row, with nothing of the swap's left behind.
#[test]
fn a_pg14_target_is_swapped_object_by_object() {
    let _t = Timer::start("a_pg14_target_is_swapped_object_by_object");
    let s = scenario("pg14", 14, 18, &[], 14, 18, load(PAGILA));
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("refresh: swap") && text.contains("public switched object by object"),
        "{text}"
    );
    s.run_ok(&["run"]);
    assert_exact(&s);
    s.run_ok(&["run", "--force"]);
    assert_exact(&s);
    assert_eq!(
        s.target_psql(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'replicator\\_%' AND nspname <> 'replicator'"
        ),
        "0",
        "a schema of the swap was left behind"
    );
}

/// (i) A public sample database (partitions, triggers, a materialized view, domains, an
/// aggregate), twice in a row on the same target.
#[test]
fn pagila_restores_exactly_twice_in_a_row() {
    let _t = Timer::start("pagila_restores_exactly_twice_in_a_row");
    let s = on_17("pagila", load(PAGILA));
    s.put_stale_table_in_target();
    s.run_ok(&["run"]);
    assert_exact(&s);
    assert!(!s.table_exists("stale_leftover"));
    assert_eq!(s.target_psql("SELECT count(*) FROM payment"), "30");
    assert_eq!(
        s.target_psql("SELECT count(*) FROM rental_by_category"),
        "4",
        "the materialized view was not refreshed"
    );
    s.run_ok(&["run", "--force"]);
    assert_exact(&s);
    assert_eq!(s.status_json()["phase"], "Done");
}

/// Primary keys and unique constraints of every form pg_dump writes come out as the source has
/// them: the plain ones are built as a unique index first, beside the table's other indexes,
/// then made the constraint; deferrable keys and the keys of a partitioned table are built as
/// written. Two keys of one table (built one after the other: side by side they would
/// deadlock), quoted names, `INCLUDE`, `WITH`, `NULLS NOT DISTINCT` and a replica identity.
#[test]
fn keys_of_every_form_restore_with_the_source_s_names_options_and_flags() {
    let _t = Timer::start("keys_of_every_form_restore_with_the_source_s_names_options_and_flags");
    let mut s = on_17(
        "keys",
        load(
            "CREATE TABLE plain (id text PRIMARY KEY, code text NOT NULL, note text);
             INSERT INTO plain SELECT md5(g::text), md5((-g)::text), 'n' || g
               FROM generate_series(1, 200000) g;
             ALTER TABLE plain ADD CONSTRAINT plain_code_key UNIQUE (code);
             CREATE INDEX plain_note_idx ON plain (lower(note));
             ALTER TABLE plain REPLICA IDENTITY USING INDEX plain_pkey;
             CREATE TABLE \"Mixed Case\" (\"Id\" int NOT NULL, \"Part\" text NOT NULL, extra int, payload text);
             INSERT INTO \"Mixed Case\" SELECT g, 'p' || (g % 7), CASE WHEN g > 1 THEN g END, 'x'
               FROM generate_series(1, 50000) g;
             ALTER TABLE \"Mixed Case\" ADD CONSTRAINT \"Mixed PK\" PRIMARY KEY (\"Id\", \"Part\")
               INCLUDE (extra) WITH (fillfactor = 70);
             ALTER TABLE \"Mixed Case\" ADD CONSTRAINT nnd UNIQUE NULLS NOT DISTINCT (extra);
             CREATE TABLE deferred (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED,
                                    slot int UNIQUE DEFERRABLE);
             INSERT INTO deferred SELECT g, g FROM generate_series(1, 1000) g;
             CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
             CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
             INSERT INTO parted SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END
               FROM generate_series(1, 10000) g;",
        ),
    );
    // Wide enough for plain's index and both its keys at once.
    s.set_env("PG_RESTORE_JOBS", "4");
    s.run_ok(&["run"]);
    assert_exact(&s);
    // What a user would check by hand: the keys are there, and they refuse a duplicate.
    let dup = s.target_psql_result("INSERT INTO plain VALUES (md5('1'), 'new', 'n')");
    assert!(
        dup.is_err_and(|e| e.contains("plain_pkey")),
        "the restored primary key does not refuse a duplicate id"
    );
    let dup = s.target_psql_result("INSERT INTO \"Mixed Case\" VALUES (99999, 'q', NULL, 'y')");
    assert!(
        dup.is_err_and(|e| e.contains("nnd")),
        "NULLS NOT DISTINCT was lost: a second NULL was accepted"
    );
}

/// (ii) An application's real schema with five trusted extensions, trigram and btree_gin
/// indexes and partitions in another schema; the target role created the extensions itself
/// in `public` (their members belong to the superuser): two nights in a row, each swapped.
#[test]
fn gitlab_schema_with_five_extensions_the_role_created_restores_twice_in_a_row() {
    let _t =
        Timer::start("gitlab_schema_with_five_extensions_the_role_created_restores_twice_in_a_row");
    let s = on_17("gitlab_own", load(GITLAB));
    // What a user does on a fresh Scalingo database before the first night.
    s.target_psql(
        &GITLAB_EXTENSIONS
            .iter()
            .map(|e| format!("CREATE EXTENSION \"{e}\";"))
            .collect::<String>(),
    );
    s.put_stale_table_in_target();
    for night in 1..=2 {
        let out = s.run_ok(&["run", "--force"]);
        // The extensions' members belong to the superuser: public cannot be renamed with
        // them, and is switched object by object.
        let log = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            log.contains("readers see tonight's copy from now on"),
            "night {night} did not swap:\n{log}"
        );
        assert_exact(&s);
        for e in GITLAB_EXTENSIONS {
            assert!(
                extensions_of_target(&s).contains(&e.to_string()),
                "{e} is gone after night {night}"
            );
        }
    }
    assert_eq!(
        s.target_psql("SELECT count(*) FROM audit_events"),
        "400",
        "rows of partitions in gitlab_partitions_dynamic are missing"
    );
}

/// (ii) The same dump onto a target that has none of its extensions: they are trusted, the
/// role creates them after the wipe.
#[test]
fn gitlab_schema_restores_onto_a_target_without_its_extensions() {
    let _t = Timer::start("gitlab_schema_restores_onto_a_target_without_its_extensions");
    let s = on_17("gitlab_bare", load(GITLAB));
    s.put_stale_table_in_target();
    s.run_ok(&["run"]);
    assert_exact(&s);
    for e in GITLAB_EXTENSIONS {
        assert!(extensions_of_target(&s).contains(&e.to_string()), "{e}");
    }
    s.run_ok(&["run", "--force"]);
    assert_exact(&s);
}

/// Pagila dumped by PostgreSQL `dump_version`, restored with pg_restore 18 into a
/// `target_version` target that held a stale table: exact, and the stale table gone.
fn pagila_across_versions_is_exact(prefix: &str, dump_version: u32, target_version: u32) {
    let s = scenario(
        prefix,
        dump_version,
        dump_version,
        &[],
        target_version,
        18,
        load(PAGILA),
    );
    s.put_stale_table_in_target();
    s.run_ok(&["run"]);
    let reference = reference(s.cluster, prefix, PAGILA);
    assert_eq!(
        s.target_fingerprint(),
        s.expected_fingerprint_of(s.cluster, &reference)
    );
    assert!(!s.table_exists("stale_leftover"));
}

/// (iii) The newest client against an older target: a PostgreSQL 17 dump, pg_restore 18, a 15
/// target.
#[test]
fn a_17_dump_restored_by_pg_restore_18_into_15_is_exact() {
    let _t = Timer::start("a_17_dump_restored_by_pg_restore_18_into_15_is_exact");
    pagila_across_versions_is_exact("v17to15", 17, 15);
}

/// (iii) A PostgreSQL 15 dump, pg_restore 18, a 16 target.
#[test]
fn a_15_dump_restored_by_pg_restore_18_into_16_is_exact() {
    let _t = Timer::start("a_15_dump_restored_by_pg_restore_18_into_16_is_exact");
    pagila_across_versions_is_exact("v15to16", 15, 16);
}

/// (iv) A dump of PostgreSQL 18 with its statistics entries (`pg_dump --statistics`), into an
/// older (16) and a same-version (18) target.
#[test]
fn an_18_dump_with_statistics_restores_into_16_and_into_18() {
    let _t = Timer::start("an_18_dump_with_statistics_restores_into_16_and_into_18");
    let analyzed = |c: &PgCluster, db: &str| {
        c.superuser_psql(db, PAGILA);
        c.superuser_psql(db, "ANALYZE;");
    };
    let into_16 = scenario("stats16", 18, 18, &["--statistics"], 16, 18, analyzed);
    let toc = std::process::Command::new(crate::common::pg::pg_bin_dir(18).join("pg_restore"))
        .arg("-l")
        .arg(&into_16.dump)
        .output()
        .unwrap();
    assert!(
        stdout(&toc).contains("STATISTICS DATA"),
        "the dump has no statistics entries: {}",
        stdout(&toc)
    );
    into_16.put_stale_table_in_target();
    into_16.run_ok(&["run"]);
    let reference = reference(into_16.cluster, "stats16", PAGILA);
    assert_eq!(
        into_16.target_fingerprint(),
        into_16.expected_fingerprint_of(into_16.cluster, &reference)
    );

    let into_18 = scenario("stats18", 18, 18, &["--statistics"], 18, 18, analyzed);
    into_18.put_stale_table_in_target();
    into_18.run_ok(&["run"]);
    assert_exact(&into_18);
    eprintln!(
        "[fidelity] 18 into 18: pg_stats rows of public.film after the restore: {}",
        into_18.cluster.superuser_psql(
            &into_18.target.dbname,
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'film'"
        )
    );
}

/// (v) A second schema, a view of public reading it, a large object referenced by a row,
/// and a public partitioned table whose partitions live in a third schema: all there, owned by
/// the role (so the next wipe takes them), and a second night works.
#[test]
fn a_second_schema_a_cross_schema_view_a_large_object_and_partitions_elsewhere_are_restored() {
    let _t = Timer::start(
        "a_second_schema_a_cross_schema_view_a_large_object_and_partitions_elsewhere_are_restored",
    );
    let s = on_17("app2", load(APP));
    s.put_stale_table_in_target();
    for night in 1..=2 {
        s.run_ok(if night == 1 {
            &["run"]
        } else {
            &["run", "--force"]
        });
        assert_exact(&s);
        assert_eq!(
            s.target_psql("SELECT count(*) FROM public.events"),
            "1000",
            "night {night}: partitions in app_partitions are missing"
        );
        assert_eq!(
            s.target_psql("SELECT count(*), count(band) FROM public.account_overview"),
            "40|40",
            "night {night}"
        );
        assert_eq!(
            s.target_psql(
                "SELECT convert_from(lo_get(content_oid), 'UTF8') FROM documents WHERE id = 1"
            ),
            CONTRACT,
            "night {night}: the large object"
        );
        assert_eq!(
            s.target_psql("SELECT count(*) FROM analytics.account_scores"),
            "40",
            "night {night}"
        );
        // Everything restored is the role's: the next wipe takes it all.
        let foreign = s.cluster.superuser_psql(
            &s.target.dbname,
            &format!(
                "SELECT string_agg(n.nspname || '.' || c.relname, ', ') FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname IN ('public', 'analytics', 'app_partitions') \
                   AND c.relowner <> '{}'::regrole",
                s.target.role
            ),
        );
        assert_eq!(foreign.trim(), "", "not owned by the role");
        let lo_owners = s.cluster.superuser_psql(
            &s.target.dbname,
            &format!(
                "SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner <> '{}'::regrole",
                s.target.role
            ),
        );
        assert_eq!(lo_owners.trim(), "0", "large objects not owned by the role");
    }
    assert!(!s.table_exists("stale_leftover"));
}

/// The two-schema app with `RESTORE_SCHEMAS=public`.
fn restricted_app(prefix: &str) -> Scenario {
    let mut s = on_17(prefix, load(APP));
    s.set_env("RESTORE_SCHEMAS", "public");
    s.put_stale_table_in_target();
    s
}

/// (vi) A restriction that would break a view (public.account_overview reads analytics) is
/// refused before anything is touched, naming both sides.
#[test]
fn restore_schemas_public_that_would_break_a_view_is_refused_before_the_wipe() {
    let _t =
        Timer::start("restore_schemas_public_that_would_break_a_view_is_refused_before_the_wipe");
    let s = restricted_app("restrict");
    let out = s.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(&out)
    );
    assert!(err.contains("account_overview"), "names no view: {err}");
    assert!(err.contains("analytics"), "names no schema: {err}");
    assert_previous_content_intact(&s);
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed", "{st:#}");
    assert_ne!(st["failed_in"], "Dropping", "{st:#}");
    assert_ne!(st["failed_in"], "Restoring", "{st:#}");
}

/// A source with an extension the target role cannot create (dblink is not trusted), created
/// by the superuser and used by a view.
fn untrusted_extension_source(c: &PgCluster, db: &str) {
    c.superuser_psql(
        db,
        "CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL);\
         INSERT INTO public.customers SELECT i, 'customer ' || i FROM generate_series(1, 20) i;\
         CREATE EXTENSION dblink;\
         CREATE VIEW public.remote_customers AS \
           SELECT * FROM public.dblink('dbname=postgres', 'SELECT 1, ''x''') AS t(id int, name text);",
    );
}

/// (vii) An extension the role cannot create, needed by what is restored: refused before the
/// wipe, naming the extension.
#[test]
fn an_extension_the_role_cannot_create_is_refused_before_the_wipe() {
    let _t = Timer::start("an_extension_the_role_cannot_create_is_refused_before_the_wipe");
    let s = on_17("untrusted", untrusted_extension_source);
    s.put_stale_table_in_target();
    let out = s.run(&["run"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(&out)
    );
    assert!(err.contains("dblink"), "names no extension: {err}");
    assert_previous_content_intact(&s);
    let st = s.status_json();
    assert_eq!(st["phase"], "Failed", "{st:#}");
    assert_ne!(st["failed_in"], "Dropping", "{st:#}");
    assert_ne!(st["failed_in"], "Restoring", "{st:#}");
}

fn fail_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// (viii) `check` sees what `run` would refuse, and changes nothing.
#[test]
fn check_fails_on_a_breaking_restriction_and_on_an_extension_the_role_cannot_create() {
    let _t = Timer::start(
        "check_fails_on_a_breaking_restriction_and_on_an_extension_the_role_cannot_create",
    );
    let s = restricted_app("check_restrict");
    let out = s.run(&["check"]);
    let text = stdout(&out);
    println!("$ RESTORE_SCHEMAS=public replicator check\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        fail_lines(&text)
            .iter()
            .any(|l| l.contains("account_overview") && l.contains("analytics")),
        "no FAIL line naming the view and the schema:\n{text}"
    );
    assert_previous_content_intact(&s);

    let s = on_17("check_untrusted", untrusted_extension_source);
    s.put_stale_table_in_target();
    let out = s.run(&["check"]);
    let text = stdout(&out);
    println!("$ replicator check\n{text}");
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        fail_lines(&text).iter().any(|l| l.contains("dblink")),
        "no FAIL line naming dblink:\n{text}"
    );
    assert_previous_content_intact(&s);
}

/// (viii) `check` prints the dump's server version, pg_restore's and the target's, and a
/// combination that works (17 dump, client 18, 15 target) is `ok`.
#[test]
fn check_prints_the_dump_s_the_client_s_and_the_target_s_versions() {
    let _t = Timer::start("check_prints_the_dump_s_the_client_s_and_the_target_s_versions");
    let s = scenario("check_versions", 17, 17, &[], 15, 18, load(PAGILA));
    s.put_stale_table_in_target();
    let out = s.run(&["check"]);
    let text = stdout(&out);
    println!("$ replicator check\n{text}");
    for (what, version) in [
        ("the dump's server", server_version(s.source_cluster)),
        ("pg_restore's", client_version(18)),
        ("the target's", server_version(s.cluster)),
    ] {
        assert!(
            text.contains(&version),
            "{what} version {version} is not printed:\n{text}"
        );
    }
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert_previous_content_intact(&s);
}

/// (ix) What the role cannot own (an event trigger, the superuser's on the source) is left out
/// and said: counted by kind and named in `status --json` (field `left_out` of the run) and in
/// `status`.
#[test]
fn status_names_what_was_left_out() {
    let _t = Timer::start("status_names_what_was_left_out");
    let s = on_17("leftout", |c, db| {
        c.superuser_psql(db, APP);
        c.superuser_psql(
            db,
            "CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE NOTICE 'ddl: %', tg_tag; END $$;\
             CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl();",
        );
    });
    s.run_ok(&["run"]);
    assert_exact(&s);
    let st = s.status_json();
    let expected = serde_json::json!({"kind": "EVENT TRIGGER", "count": 1, "names": ["audit_ddl"]});
    // Each entry also says why (`why`): the kind, the count and the names must match.
    let has_it = |run: &Value| {
        run["left_out"].as_array().is_some_and(|a| {
            a.iter().any(|l| {
                ["kind", "count", "names"]
                    .iter()
                    .all(|k| l[*k] == expected[*k])
                    && l["why"].as_str().is_some_and(|w| !w.is_empty())
            })
        })
    };
    assert!(has_it(&st), "no left_out entry {expected} in:\n{st:#}");
    assert!(
        st["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(has_it)),
        "the finished run in history has no left_out entry:\n{st:#}"
    );
    let text = stdout(&s.run_ok(&["status"]));
    assert!(
        text.contains("EVENT TRIGGER") && text.contains("audit_ddl"),
        "status does not name what was left out:\n{text}"
    );
}
