use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

fn rw() -> Rewriter {
    Rewriter::new(
        HashMap::from([
            ("public".to_string(), "replicator_next_public".to_string()),
            ("Sales".to_string(), "replicator_next_Sales".to_string()),
        ]),
        HashSet::from([("public".to_string(), "gin_trgm_ops".to_string())]),
    )
}

fn check(input: &str, expected: &str) {
    assert_eq!(rw().rewrite(input), expected, "rewriting {input:?}");
}

#[test]
fn qualified_names_in_ddl_point_at_the_shadow() {
    check(
        "CREATE TABLE public.actor (\n    id integer DEFAULT nextval('public.actor_id_seq'::regclass) NOT NULL,\n    mood public.mood\n);",
        "CREATE TABLE replicator_next_public.actor (\n    id integer DEFAULT nextval('replicator_next_public.actor_id_seq'::regclass) NOT NULL,\n    mood replicator_next_public.mood\n);",
    );
    check(
        "ALTER TABLE ONLY \"Sales\".\"Orders\" ADD CONSTRAINT o_fk FOREIGN KEY (a) REFERENCES public.actor(id);",
        "ALTER TABLE ONLY \"replicator_next_Sales\".\"Orders\" ADD CONSTRAINT o_fk FOREIGN KEY (a) REFERENCES replicator_next_public.actor(id);",
    );
    check(
        "SELECT pg_catalog.setval('public.actor_id_seq', 200, true);",
        "SELECT pg_catalog.setval('replicator_next_public.actor_id_seq', 200, true);",
    );
    check(
        "ALTER SEQUENCE public.s OWNED BY public.t.id;",
        "ALTER SEQUENCE replicator_next_public.s OWNED BY replicator_next_public.t.id;",
    );
    check(
        "COPY public.actor (id, name) FROM stdin;",
        "COPY replicator_next_public.actor (id, name) FROM stdin;",
    );
}

#[test]
fn schemas_named_alone_after_schema_are_rewritten() {
    check(
        "CREATE SCHEMA \"Sales\";",
        "CREATE SCHEMA \"replicator_next_Sales\";",
    );
    check(
        "GRANT USAGE ON SCHEMA public TO reader;",
        "GRANT USAGE ON SCHEMA replicator_next_public TO reader;",
    );
    check(
        "COMMENT ON SCHEMA public IS 'standard public schema';",
        "COMMENT ON SCHEMA replicator_next_public IS 'standard public schema';",
    );
    check(
        "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO reader;",
        "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA replicator_next_public GRANT SELECT ON TABLES TO reader;",
    );
}

#[test]
fn views_atomic_bodies_statistics_and_object_literals() {
    check(
        "CREATE VIEW public.v AS\n SELECT a.id\n   FROM (public.actor a\n     JOIN \"Sales\".\"Orders\" o ON ((o.a = a.id)));",
        "CREATE VIEW replicator_next_public.v AS\n SELECT a.id\n   FROM (replicator_next_public.actor a\n     JOIN \"replicator_next_Sales\".\"Orders\" o ON ((o.a = a.id)));",
    );
    check(
        "CREATE FUNCTION public.n() RETURNS bigint\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT count(*) AS count\n    FROM public.actor;\nEND;",
        "CREATE FUNCTION replicator_next_public.n() RETURNS bigint\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT count(*) AS count\n    FROM replicator_next_public.actor;\nEND;",
    );
    check(
        "SELECT * FROM pg_catalog.pg_restore_relation_stats(\n\t'version', '180000'::integer,\n\t'schemaname', 'public',\n\t'relname', 'actor',\n\t'relpages', '1'::integer\n);",
        "SELECT * FROM pg_catalog.pg_restore_relation_stats(\n\t'version', '180000'::integer,\n\t'schemaname', 'replicator_next_public',\n\t'relname', 'actor',\n\t'relpages', '1'::integer\n);",
    );
    check(
        "SELECT 'public'::regnamespace, '\"Sales\".f(integer)'::regprocedure, 'public.actor'::text;",
        "SELECT 'replicator_next_public'::regnamespace, '\"replicator_next_Sales\".f(integer)'::regprocedure, 'public.actor'::text;",
    );
}

#[test]
fn what_resolves_at_call_time_or_lives_in_the_live_schema_stays() {
    // Dollar-quoted bodies, strings, comments, columns named like a schema.
    for stmt in [
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN (SELECT count(*) FROM public.actor); END$$;",
        "SELECT 'public.actor', E'public.x';",
        "-- public.actor\nSELECT 1;",
        "SELECT t.public FROM x.t;",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;",
        "COMMENT ON EXTENSION pg_trgm IS 'text similarity in public.x';",
        "SET search_path = public, pg_catalog;",
    ] {
        let out = rw().rewrite(stmt);
        let stays = stmt.replace("public.f()", "replicator_next_public.f()");
        assert_eq!(out, stays, "{stmt}");
    }
    // An extension's operator class stays where the extension is.
    check(
        "CREATE INDEX t_name ON public.actor USING gin (name public.gin_trgm_ops);",
        "CREATE INDEX t_name ON replicator_next_public.actor USING gin (name public.gin_trgm_ops);",
    );
}

#[test]
fn names_needing_quotes_are_quoted() {
    assert_eq!(
        quote_ident("replicator_next_public"),
        "replicator_next_public"
    );
    assert_eq!(
        quote_ident("replicator_next_Sales"),
        "\"replicator_next_Sales\""
    );
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

proptest! {
    /// Text with no reference to a switched schema comes out as it went in, whatever it holds.
    #[test]
    fn text_without_a_switched_schema_is_unchanged(s in "[a-y0-9_ .,;:'\"$()\\n*/-]{0,80}") {
        let r = Rewriter::new(
            HashMap::from([("zz".to_string(), "shadow".to_string())]),
            HashSet::new(),
        );
        prop_assert_eq!(r.rewrite(&s), s.as_str());
    }

    /// Every qualified reference to a switched schema is rewritten, and only those.
    #[test]
    fn every_qualified_reference_moves(names in prop::collection::vec("[a-y][a-y0-9_]{0,8}", 1..8)) {
        let r = Rewriter::new(
            HashMap::from([("zz".to_string(), "shadow".to_string())]),
            HashSet::new(),
        );
        let stmt: String = names.iter().map(|n| format!("zz.{n}, other.{n}, ")).collect();
        let expected: String = names.iter().map(|n| format!("shadow.{n}, other.{n}, ")).collect();
        prop_assert_eq!(r.rewrite(&stmt), expected.as_str());
    }
}
