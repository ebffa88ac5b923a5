//! Issue 10: real dumps restore exactly. Real schemas (tests/fixtures/), dumps made by
//! PostgreSQL 15 to 18, restored by the pg_restore a Scalingo deployment has first on `PATH`
//! (client 18) into targets of older and newer versions, by a non-superuser role that owns its
//! database, with `USE_UNLOGGED_TABLES=true`. A case that cannot complete must leave the
//! target's previous content untouched and say why, before the wipe.

use crate::common::pg::shared_cluster_version;

/// The wheels of `scripts/test` are whole builds: their contrib modules load (the fixtures'
/// extensions, and the untrusted ones a superuser creates on a source).
#[test]
fn every_version_s_cluster_creates_the_fixtures_extensions() {
    for major in [16, 17, 18] {
        let c = shared_cluster_version(major);
        let db = crate::common::pg::unique_name(&format!("ext{major}"));
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
