//! Which statement gives a freshly loaded table its statistics: `VACUUM (ANALYZE)`, or
//! `ANALYZE` alone where the vacuum would have nothing to do.
//!
//! A table loaded with `COPY ... FREEZE` on PostgreSQL 14 or later has its pages frozen and
//! marked all-visible by the `COPY` itself. The vacuum then only resets the count of rows
//! inserted since the last vacuum, by which autovacuum would come back: and autovacuum comes
//! back for inserts only above `autovacuum_vacuum_insert_threshold` (1,000 rows by default)
//! plus a share of the table. A table that received fewer rows than that threshold needs no
//! vacuum to be ready: `ANALYZE` alone gives its statistics and its counts of pages (all
//! visible ones included), for a fraction of the vacuum's fixed cost (two transactions, the
//! free space map), which on a schema of thousands of small tables is most of their
//! analysis (docs/performance.md, "Many objects").

use tokio_postgres::Client;

/// The rows below which a table loaded with `FREEZE` is `ANALYZE`d without a vacuum: the
/// server's `autovacuum_vacuum_insert_threshold`, or 0 (always vacuum) before PostgreSQL 14
/// (its `COPY FREEZE` leaves the visibility map to the vacuum), where any table of the role
/// sets its own insert threshold (its table would be vacuumed by autovacuum after the run),
/// or when the settings cannot be read.
pub(super) async fn analyze_only_below(client: &Client, server_version_num: u32) -> u64 {
    if server_version_num < 140_000 {
        return 0;
    }
    let sql = "SELECT current_setting('autovacuum_vacuum_insert_threshold')::bigint,
                      EXISTS (SELECT 1 FROM pg_catalog.pg_class
                               WHERE relowner = (SELECT oid FROM pg_catalog.pg_roles
                                                  WHERE rolname = current_user)
                                 AND array_to_string(reloptions, ',')
                                     LIKE '%autovacuum_vacuum_insert_threshold%')";
    match client.query_one(sql, &[]).await {
        // -1: autovacuum never vacuums for inserts.
        Ok(row) if !row.get::<_, bool>(1) => match row.get::<_, i64>(0) {
            -1 => u64::MAX,
            n => n.max(0) as u64,
        },
        _ => 0,
    }
}

/// `ANALYZE "schema"."name"` (as the dump names it: a swap's session points it at the
/// shadow).
pub(crate) fn analyze_only_sql(schema: &str, name: &str) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!("ANALYZE {}.{}", quote(schema), quote(name))
}
