//! Issue 20, "for every refusal case": the cases `plan.rs`, `check_parity.rs`, `settings.rs`
//! and `privileges.rs` did not cover yet. For each, `check` exits 1 with a FAIL line naming
//! the cause, `run` fails the same way before the wipe, and the target keeps a table added by
//! hand (`plan::refused_before_the_wipe`).

use crate::common::pg::shared_cluster_version;
use crate::common::scenario::Scenario;
use crate::plan::refused_before_the_wipe;

const CHINOOK: &str = include_str!("../fixtures/chinook.sql");
const MASKING_KEY: &str = "0123456789abcdef0123456789abcdef";

/// The ICU cases need a source server built with ICU (Debian's 15) and a target built without
/// it (`scripts/test`'s 18): said plainly if the test servers change.
fn assert_icu_only_on_15() {
    let icu = |major: u32| {
        shared_cluster_version(major)
            .superuser_psql(
                "postgres",
                "SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'",
            )
            .trim()
            .to_string()
    };
    assert_eq!(icu(15), "1", "PostgreSQL 15 of the tests has no ICU");
    assert_eq!(
        icu(18),
        "0",
        "PostgreSQL 18 of the tests has ICU: this case needs a target built without it"
    );
}

/// A type the target's server cannot build: a range type over ICU's root collation, dumped
/// from a PostgreSQL 15 built with ICU (Debian's), restored into an 18 built without it
/// (`collation "pg_catalog.und-x-icu" for encoding "UTF8" does not exist`). The rehearsal
/// meets it before the wipe and names the type's dump entry.
#[test]
fn a_type_the_target_server_cannot_build_is_refused_before_the_wipe() {
    assert_icu_only_on_15();
    let mut s = Scenario::across(
        "refuse_type",
        shared_cluster_version(15),
        shared_cluster_version(18),
        |c, db| {
            c.superuser_psql(
                db,
                "CREATE TYPE public.shelf_range AS RANGE (subtype = text, collation = \"und-x-icu\");
                 CREATE TABLE public.shelves (id int PRIMARY KEY, titles public.shelf_range);
                 INSERT INTO public.shelves SELECT g, public.shelf_range('a' || g, 'm' || g)
                   FROM generate_series(1, 20) g;",
            );
        },
        |c, db, out| c.pg_dump_with(18, db, out, &[]),
    );
    s.use_client(18);
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "rehearsal", "TYPE public.shelf_range");
}

/// Chinook restored with `RESTORE_SCHEMAS=reporting`: the view `reporting.sales_by_genre`
/// reads tables of `public`, which the restriction leaves out; so do the materialized view
/// `reporting.top_customers` and the partitions `reporting.invoice_archive_*` of a public
/// table. The FAIL line names the objects cut, the view among them, before the entries that
/// only follow from them (the partitions' keys and index attachments, which alone would fill
/// the ten pairs the message shows).
#[test]
fn restore_schemas_that_cuts_a_view_from_its_tables_is_refused_before_the_wipe() {
    let mut s = Scenario::new("refuse_cut", |c, db| {
        c.superuser_psql(db, CHINOOK);
    });
    s.set_env("RESTORE_SCHEMAS", "reporting");
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "restore plan", "VIEW reporting.sales_by_genre needs");
    let out = s.run(&["check"]);
    let text = crate::common::scenario::stdout(&out);
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("restore plan"))
        .unwrap_or_default();
    for cut in [
        "MATERIALIZED VIEW reporting.top_customers needs",
        "TABLE reporting.invoice_archive_2021 needs TABLE public.invoice_archive",
    ] {
        assert!(
            fail.contains(cut),
            "the FAIL line does not name {cut:?}:\n{text}"
        );
    }
}

/// A table of Chinook's (`public.track`) that another role owns in the target (yesterday's
/// replica made by an administrator): `DROP OWNED BY CURRENT_USER` would leave it and the
/// restore would collide with it.
#[test]
fn a_table_of_another_role_the_restore_collides_with_is_refused_before_the_wipe() {
    let mut s = Scenario::new("refuse_owner", |c, db| {
        c.superuser_psql(db, CHINOOK);
    });
    let other = format!("{}_admin", s.target.role);
    s.cluster.superuser_psql(
        &s.target.dbname,
        &format!(
            "CREATE ROLE \"{other}\" NOLOGIN; \
             CREATE TABLE public.track (track_id int PRIMARY KEY, name text); \
             ALTER TABLE public.track OWNER TO \"{other}\";"
        ),
    );
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "restore plan", "track");
    let out = s.run(&["check"]);
    let text = crate::common::scenario::stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("track") && l.contains(&other)),
        "the FAIL line does not name the other role {other}:\n{text}"
    );
    assert_eq!(
        s.cluster
            .superuser_psql(&s.target.dbname, "SELECT count(*) FROM public.track")
            .trim(),
        "0",
        "the other role's table was changed"
    );
}

/// A masking rule that is valid for its column's type but whose values break a CHECK across
/// two columns: `date_shift` moves a subscription's start by up to 30 days, past its end for
/// some rows (`CHECK (ends_on >= starts_on)`). Only loading masked rows finds it: the
/// rehearsal does, before the wipe.
#[test]
fn a_check_the_masked_sample_breaks_is_refused_before_the_wipe() {
    let mut s = Scenario::new("refuse_masked_check", |c, db| {
        c.superuser_psql(
            db,
            "CREATE TABLE subscriptions (id int PRIMARY KEY, starts_on date NOT NULL,
                                         ends_on date NOT NULL,
                                         CONSTRAINT subscriptions_period CHECK (ends_on >= starts_on));
             INSERT INTO subscriptions SELECT g, '2024-01-01'::date + g, '2024-01-01'::date + g + 1
               FROM generate_series(1, 200) g;",
        );
    });
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    s.set_env("MASKING_KEY", MASKING_KEY);
    let rules = s.files.path().join("rules.toml");
    std::fs::write(
        &rules,
        "strict = false\n[tables.subscriptions.columns]\nstarts_on = { date_shift = \"30 days\" }\n",
    )
    .unwrap();
    s.set_env("REPLICA_RULES", rules.to_str().unwrap());
    refused_before_the_wipe(&s, "rehearsal", "subscriptions_period");
}

/// A collation the target's server cannot build, as issue 20 met it: an ICU collation of a
/// dump made on a server built with ICU (Debian's 15), restored into a server built without
/// it (18 here): `ICU is not supported in this build`.
#[test]
fn an_icu_collation_on_a_server_without_icu_is_refused_before_the_wipe() {
    assert_icu_only_on_15();
    let mut s = Scenario::across(
        "refuse_icu",
        shared_cluster_version(15),
        shared_cluster_version(18),
        |c, db| {
            c.superuser_psql(
                db,
                "CREATE COLLATION public.german_phonebook (provider = icu, locale = 'de-u-co-phonebk');
                 CREATE TABLE public.people (id int PRIMARY KEY, name text COLLATE public.german_phonebook);
                 INSERT INTO public.people VALUES (1, 'Müller'), (2, 'Mueller');",
            );
        },
        |c, db, out| c.pg_dump_with(18, db, out, &[]),
    );
    s.use_client(18);
    s.put_stale_table_in_target();
    s.set_env("MAX_RETRY_COUNT", "0");
    refused_before_the_wipe(&s, "rehearsal", "COLLATION public.german_phonebook");
}
