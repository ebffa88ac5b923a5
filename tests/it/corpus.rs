//! Issue 20: a corpus of real schemas (tests/fixtures/, each file's header names its source
//! and licence), each dumped by pg_dump 15 and by pg_dump 18, restores exactly into a fresh
//! target owned by a non-superuser role, twice in a row on the same target in the default
//! refresh mode (swap), then (dumps of 18) twice more in wipe mode, and `check` agrees with
//! the run.
//!
//! Across the corpus: extensions only a superuser may create that nothing uses (added by the
//! tests on top of Pagila, e-petitions and OpenStreetMap), the same extensions created beforehand by a
//! superuser in the target's `public` (OpenStreetMap), trusted extensions the role
//! creates (intarray, btree_gist, citext, hstore, GitLab's five), several schemas, domains,
//! enums, a libc collation, stored generated columns, an exclusion constraint, partitions in
//! another schema, views and materialized views across schemas.
//!
//! Source and target run the dump's version (15: Debian's; 18: `scripts/test`'s), so that the
//! target is compared with the source itself; the client is 18, as on Scalingo.

use std::time::Instant;

use crate::common::pg::{APP_SCHEMAS, Fingerprint, PgCluster, shared_cluster_version};
use crate::common::scenario::{Scenario, stderr, stdout};

const PAGILA: &str = include_str!("../fixtures/pagila.sql");
const GITLAB: &str = include_str!("../fixtures/gitlab.sql");
const E_PETITIONS: &str = include_str!("../fixtures/e-petitions.sql");
const OPENSTREETMAP: &str = include_str!("../fixtures/openstreetmap.sql");
const CHINOOK: &str = include_str!("../fixtures/chinook.sql");

/// Server tools only a superuser may create, which no application object uses.
const SERVER_TOOLS: &str = "CREATE EXTENSION pg_stat_statements; CREATE EXTENSION pgstattuple;";

/// One source of the corpus.
struct Source {
    name: &'static str,
    sql: &'static str,
    /// SQL the superuser runs on the source after the fixture (what the test adds on top).
    on_source: &'static str,
    /// SQL the superuser runs on the fresh target before the first night.
    on_target: &'static str,
    /// The refresh the plan chooses by default: `swap` unless the target cannot (every source
    /// here swaps: those with extensions in `public` switch it object by object).
    refresh: &'static str,
}

/// Prints how long a case took, passed or not.
struct Timer(String, Instant);

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("[corpus] {} took {:.1?}", self.0, self.1.elapsed());
    }
}

/// What the fingerprint does not compare and a restore must keep: the collations of the
/// application's schemas and of their columns, and the comments (first), and each extension
/// with its schema (second).
fn catalog_extras(cluster: &PgCluster, db: &str) -> (String, String) {
    let collations = cluster.superuser_psql(
        db,
        &format!(
            "SELECT string_agg(x, ', ' ORDER BY x) FROM (
               SELECT n.nspname || '.' || c.collname || ' ' || c.collprovider::text || ' ' ||
                      coalesce(c.collcollate, '') AS x
                 FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
                WHERE {APP_SCHEMAS}
               UNION ALL
               SELECT n.nspname || '.' || r.relname || '.' || a.attname || ' COLLATE ' ||
                      cn.nspname || '.' || co.collname
                 FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = r.relnamespace
                 JOIN pg_collation co ON co.oid = a.attcollation
                 JOIN pg_namespace cn ON cn.oid = co.collnamespace
                WHERE {APP_SCHEMAS} AND r.relkind IN ('r', 'p') AND a.attnum > 0
                  AND co.collname <> 'default') s"
        ),
    );
    // Every comment but those of system objects, of extensions and of their members (an
    // extension's script writes its own) and of the replicator's own records, by what
    // pg_describe_object calls the object.
    let comments = cluster.superuser_psql(
        db,
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
           SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description AS x
             FROM pg_description d
            WHERE (d.objoid >= 16384 OR d.classoid = 'pg_namespace'::regclass)
              AND d.classoid <> 'pg_extension'::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid
                              AND e.objid = d.objoid AND e.deptype = 'e')
              AND NOT (d.classoid = 'pg_class'::regclass AND d.objoid IN
                       (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'replicator'))) s",
    );
    let extensions = cluster.superuser_psql(
        db,
        "SELECT string_agg(e.extname || '@' || n.nspname, ', ' ORDER BY e.extname) \
         FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace",
    );
    (
        format!("{}\n{}", collations.trim(), comments.trim()),
        extensions.trim().to_string(),
    )
}

/// The fingerprint of `db` without the relations that belong to an extension (the views of
/// `pg_stat_statements`): those are the extension's, not the application's, and a server tool
/// may be in the target and not in the dump, or the reverse.
fn without_extension_members(cluster: &PgCluster, db: &str, mut f: Fingerprint) -> Fingerprint {
    let members = cluster.superuser_psql(
        db,
        &format!(
            "SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE {APP_SCHEMAS} AND EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
        ),
    );
    let members: Vec<&str> = members.lines().filter(|l| !l.is_empty()).collect();
    let kept = |name: &String| !members.contains(&name.as_str());
    f.tables.retain(|x| kept(&x.0));
    f.matviews.retain(|x| kept(&x.0));
    f.sequences.retain(|x| kept(&x.0));
    f.indexes.retain(|x| kept(&x.0));
    f.views.retain(|x| kept(&x.0));
    f.columns.retain(|x| kept(&x.0));
    f
}

/// What differs between two fingerprints, field by field: what only the target has, what
/// only the source has.
fn differences(target: &Fingerprint, source: &Fingerprint) -> String {
    fn one<T: std::fmt::Debug + PartialEq>(name: &str, t: &[T], s: &[T], out: &mut String) {
        for x in t.iter().filter(|x| !s.contains(x)) {
            out.push_str(&format!("{name}: only in the target: {x:?}\n"));
        }
        for x in s.iter().filter(|x| !t.contains(x)) {
            out.push_str(&format!("{name}: only in the source: {x:?}\n"));
        }
    }
    let mut out = String::new();
    one("tables", &target.tables, &source.tables, &mut out);
    one("matviews", &target.matviews, &source.matviews, &mut out);
    one("sequences", &target.sequences, &source.sequences, &mut out);
    one("indexes", &target.indexes, &source.indexes, &mut out);
    one(
        "constraints",
        &target.constraints,
        &source.constraints,
        &mut out,
    );
    one("views", &target.views, &source.views, &mut out);
    one("triggers", &target.triggers, &source.triggers, &mut out);
    one("types", &target.types, &source.types, &mut out);
    one("columns", &target.columns, &source.columns, &mut out);
    one(
        "large objects",
        &target.large_objects,
        &source.large_objects,
        &mut out,
    );
    out
}

/// `source` dumped by pg_dump `major` from a server of that version, restored into a fresh
/// target of the same server, twice: `check` passes, each night is exact, and the extensions
/// are the source's, less the server tools nothing uses, plus what the target had.
fn restores_exactly_twice_in_each_mode(source: &Source, major: u32) {
    let _t = Timer(
        format!("{} dumped by pg_dump {major}", source.name),
        Instant::now(),
    );
    let cluster = shared_cluster_version(major);
    let mut s = Scenario::across(
        &format!("corpus_{}{major}", source.name.replace('-', "_")),
        cluster,
        cluster,
        |c, db| {
            c.superuser_psql(db, source.sql);
            if !source.on_source.is_empty() {
                c.superuser_psql(db, source.on_source);
            }
        },
        |c, db, out| c.pg_dump_with(major, db, out, &[]),
    );
    s.use_client(18);
    if !source.on_target.is_empty() {
        cluster.superuser_psql(&s.target.dbname, source.on_target);
    }
    s.put_stale_table_in_target();
    let what = format!("{} (pg_dump {major})", source.name);

    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: check does not pass:\n{text}\n{}",
        stderr(&out)
    );
    let plan = text
        .lines()
        .find(|l| l.contains("restore plan"))
        .unwrap_or_default();
    eprintln!("[corpus] {what}: {plan}");
    assert!(
        plan.contains(&format!("refresh: {}", source.refresh)),
        "{what}: the plan does not {}:\n{text}",
        source.refresh
    );

    let (src_collations, src_extensions) = catalog_extras(cluster, &s.source_db);
    let (_, target_before) = catalog_extras(cluster, &s.target.dbname);
    let tools = ["pg_stat_statements", "pgstattuple"];
    // The source's extensions but the server tools, plus those the target already had.
    let mut expected: Vec<String> = src_extensions
        .split(", ")
        .filter(|e| !tools.iter().any(|t| e.starts_with(&format!("{t}@"))))
        .chain(target_before.split(", "))
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    expected.sort();
    expected.dedup();

    // Dumps of 18 go on for two nights in wipe mode on the same target: every source is
    // then restored exactly twice in a row in each mode.
    let nights = if major == 18 { 4 } else { 2 };
    for night in 1..=nights {
        let args: &[&str] = if night == 1 {
            &["run"]
        } else {
            &["run", "--force"]
        };
        if night == 3 {
            s.set_env("REFRESH_MODE", "wipe");
        }
        let out = s.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}, night {night}: the run failed\nstdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        );
        let expected_fp =
            without_extension_members(cluster, &s.source_db, s.expected_fingerprint());
        assert!(!expected_fp.tables.is_empty(), "{what}: no table");
        let got_fp = without_extension_members(cluster, &s.target.dbname, s.target_fingerprint());
        assert!(
            got_fp == expected_fp,
            "{what}, night {night}: the target is not the source:\n{}",
            differences(&got_fp, &expected_fp)
        );
        let (collations, extensions) = catalog_extras(cluster, &s.target.dbname);
        assert_eq!(
            collations, src_collations,
            "{what}, night {night}: collations and comments"
        );
        let mut got: Vec<String> = extensions.split(", ").map(str::to_string).collect();
        got.sort();
        assert_eq!(got, expected, "{what}, night {night}: extensions");
        assert!(
            !s.table_exists("stale_leftover"),
            "{what}, night {night}: yesterday's table is still there"
        );
        let status = s.status_json();
        assert_eq!(status["phase"], "Done", "{what}, night {night}");
        assert_eq!(
            status["refresh"]["mode"],
            if night <= 2 { source.refresh } else { "wipe" },
            "{what}, night {night}"
        );
    }
    // The check a user runs before the next night, on a target the replicator refreshed.
    let out = s.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: check after two nights does not pass:\n{text}\n{}",
        stderr(&out)
    );
}

/// Pagila (domains, an enum, partitions, a materialized view, an aggregate) with two server
/// tools nothing uses: they are left out, and nothing keeps the plan from swapping.
const PAGILA_SOURCE: Source = Source {
    name: "pagila",
    sql: PAGILA,
    on_source: SERVER_TOOLS,
    on_target: "",
    refresh: "swap",
};

/// GitLab (five trusted extensions the role creates, partitions in another schema).
const GITLAB_SOURCE: Source = Source {
    name: "gitlab",
    sql: GITLAB,
    on_source: "",
    on_target: "",
    refresh: "swap",
};

/// e-petitions (intarray, trusted), with two server tools only a superuser may create that
/// nothing uses: left out, never sent.
const E_PETITIONS_SOURCE: Source = Source {
    name: "e-petitions",
    sql: E_PETITIONS,
    on_source: SERVER_TOOLS,
    on_target: "",
    refresh: "swap",
};

/// OpenStreetMap (btree_gist, enums, plpgsql, an exclusion constraint, a generated column, a
/// domain, a collation), with the same server tools in the dump and created beforehand by a
/// superuser in the target's `public`.
const OPENSTREETMAP_SOURCE: Source = Source {
    name: "openstreetmap",
    sql: OPENSTREETMAP,
    on_source: SERVER_TOOLS,
    on_target: "CREATE EXTENSION pg_stat_statements SCHEMA public; \
                CREATE EXTENSION pgstattuple SCHEMA public;",
    refresh: "swap",
};

/// Chinook (identity columns; citext, hstore, a second schema with views over public and the
/// partitions of a public table, a generated column).
const CHINOOK_SOURCE: Source = Source {
    name: "chinook",
    sql: CHINOOK,
    on_source: "",
    on_target: "",
    refresh: "swap",
};

#[test]
fn pagila_dumped_by_15() {
    restores_exactly_twice_in_each_mode(&PAGILA_SOURCE, 15);
}

#[test]
fn pagila_dumped_by_18() {
    restores_exactly_twice_in_each_mode(&PAGILA_SOURCE, 18);
}

#[test]
fn gitlab_dumped_by_15() {
    restores_exactly_twice_in_each_mode(&GITLAB_SOURCE, 15);
}

#[test]
fn gitlab_dumped_by_18() {
    restores_exactly_twice_in_each_mode(&GITLAB_SOURCE, 18);
}

#[test]
fn e_petitions_dumped_by_15() {
    restores_exactly_twice_in_each_mode(&E_PETITIONS_SOURCE, 15);
}

#[test]
fn e_petitions_dumped_by_18() {
    restores_exactly_twice_in_each_mode(&E_PETITIONS_SOURCE, 18);
}

#[test]
fn openstreetmap_dumped_by_15() {
    restores_exactly_twice_in_each_mode(&OPENSTREETMAP_SOURCE, 15);
}

#[test]
fn openstreetmap_dumped_by_18() {
    restores_exactly_twice_in_each_mode(&OPENSTREETMAP_SOURCE, 18);
}

#[test]
fn chinook_dumped_by_15() {
    restores_exactly_twice_in_each_mode(&CHINOOK_SOURCE, 15);
}

#[test]
fn chinook_dumped_by_18() {
    restores_exactly_twice_in_each_mode(&CHINOOK_SOURCE, 18);
}

/// `rules init` on a real dump, every `# REVIEW` suggestion taken as written: `check` passes
/// and the run masks. Before: on e-petitions and OpenStreetMap the suggestions put `hash` on
/// booleans and timestamps whose names hold "email", and `null` on `NOT NULL` text.
#[test]
fn rules_init_s_suggestions_taken_as_written_pass_check_on_real_schemas() {
    for source in [&E_PETITIONS_SOURCE, &OPENSTREETMAP_SOURCE, &CHINOOK_SOURCE] {
        let mut s = Scenario::new(
            &format!("corpus_rules_{}", source.name.replace('-', "_")),
            |c, db| {
                c.superuser_psql(db, source.sql);
            },
        );
        let out = s.run(&["rules", "init", "--dump", s.dump.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let taken: String = stdout(&out)
            .lines()
            .map(|l| match l.split_once(" = \"keep\"  # REVIEW: ") {
                Some((column, review)) if !review.contains("\"drop\"") => {
                    let rule = review.rsplit('"').nth(1).unwrap();
                    format!("{column} = \"{rule}\"\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        assert!(taken.contains("= \"hash\""), "{taken}");
        let rules = s.files.path().join("rules.toml");
        std::fs::write(&rules, &taken).unwrap();
        s.set_env("REPLICA_RULES", rules.to_str().unwrap());
        s.set_env("MASKING_KEY", "0123456789abcdef0123456789abcdef");
        let out = s.run(&["check"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: check refuses rules init's suggestions:\n{}\n{taken}",
            source.name,
            stdout(&out)
        );
        s.run_ok(&["run"]);
    }
}
