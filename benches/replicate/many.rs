//! `--many SxT`: a source of many small objects (issue 23, "Many objects"): `S` schemas of
//! `T` tables each, every table with a serial key, an index on a text column and a few rows (a
//! schema-per-tenant application). What it measures is the fixed cost per object of each step,
//! which the bytes of the default source hide.

use std::process::Command;

use super::pg::{PgCluster, TargetDb};

/// Rows per table: enough to have a `COPY`, an index entry and a sequence value each.
const ROWS: u32 = 5;

/// The shape of the source: `schemas` x `tables` tables.
#[derive(Clone, Copy, Debug)]
pub struct Many {
    pub schemas: u32,
    pub tables: u32,
}

impl Many {
    /// `25x100` as 25 schemas of 100 tables.
    pub fn parse(s: &str) -> Option<Many> {
        let (a, b) = s.split_once('x')?;
        let m = Many {
            schemas: a.parse().ok()?,
            tables: b.parse().ok()?,
        };
        (m.schemas > 0 && m.tables > 0).then_some(m)
    }

    pub fn total(&self) -> u64 {
        u64::from(self.schemas) * u64::from(self.tables)
    }

    /// The cache's directory name for this shape.
    pub fn cache_name(&self, version: u32) -> String {
        format!("source-many-v{version}-{}x{}", self.schemas, self.tables)
    }

    /// `max_locks_per_transaction` the bench server needs: the seed's `DROP OWNED BY
    /// CURRENT_USER CASCADE` and pg_dump lock every relation in one transaction (a table, its
    /// TOAST table and index, its sequence, its two indexes: 6 each), and the server's lock
    /// table holds `max_locks_per_transaction x max_connections (40)` of them; PostgreSQL's
    /// default, 64, is kept where it is enough.
    pub fn max_locks_per_transaction(&self) -> u64 {
        let needed = self.total() * 6 * 5 / 4 / 40;
        needed.max(64).next_power_of_two()
    }

    /// The source's SQL: each schema's tables in one transaction (a `DO` block each).
    pub fn source_sql(&self) -> String {
        let mut sql = String::from("SET synchronous_commit = off;\n");
        for s in 1..=self.schemas {
            let schema = format!("tenant_{s:04}");
            sql.push_str(&format!(
                r#"CREATE SCHEMA {schema};
DO $$
BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('CREATE TABLE {schema}.item_%s (id serial PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT ''2026-01-01 00:00:00+00'')', lpad(i::text, 5, '0'));
    EXECUTE format('CREATE INDEX item_%s_name_idx ON {schema}.item_%s (name)', lpad(i::text, 5, '0'), lpad(i::text, 5, '0'));
    EXECUTE format('INSERT INTO {schema}.item_%s (name) SELECT md5(%L || g) FROM generate_series(1, {ROWS}) g', lpad(i::text, 5, '0'), '{schema}.' || i);
  END LOOP;
END $$;
"#,
                tables = self.tables
            ));
        }
        sql
    }
}

/// The schemas a fingerprint covers: every one but the server's and the replicator's own.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('information_schema', 'replicator') \
     AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'replicator\\_%'";

/// What a run must reproduce, over every schema: each table's row count and an
/// order-independent hash of its rows, sequences, index definitions, constraints.
pub fn fingerprint(cluster: &PgCluster, db: &str) -> Vec<String> {
    let sql = format!(
        r#"
\pset fieldsep '|'
SELECT format('SELECT ''table'', %L, count(*), coalesce(sum((''x'' || left(md5(t::text), 15))::bit(60)::bigint), 0) FROM %I.%I t', n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {USER_SCHEMAS} AND c.relkind IN ('r', 'p') ORDER BY n.nspname, c.relname \gexec
SELECT format('SELECT ''sequence'', %L, last_value, is_called FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {USER_SCHEMAS} AND c.relkind = 'S' ORDER BY n.nspname, c.relname \gexec
SELECT 'index', n.nspname, i.indexname, i.indexdef FROM pg_indexes i JOIN pg_namespace n ON n.nspname = i.schemaname
 WHERE {USER_SCHEMAS} ORDER BY 2, 3;
SELECT 'constraint', conrelid::regclass::text, conname, contype, convalidated, pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE {USER_SCHEMAS} ORDER BY 2, 3;
"#
    );
    cluster
        .superuser_psql(db, &sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The seed's `SET UNLOGGED`, extended to every schema: one `psql` session, one `ALTER TABLE
/// ... SET UNLOGGED` per table, each its own transaction (psql's autocommit), as a script
/// looping over the tables would send them.
pub fn seed_unlogging(cluster: &PgCluster, target: &TargetDb) {
    let sql = format!(
        "SELECT format('ALTER TABLE %I.%I SET UNLOGGED', n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE {USER_SCHEMAS} AND c.relkind = 'r' AND c.relpersistence = 'p' \\gexec"
    );
    let mut c = Command::new("psql");
    c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    super::pg_env(&mut c, cluster, target);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = c.spawn().expect("psql");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), sql.as_bytes()).unwrap();
    let status = child.wait().expect("psql");
    if !status.success() {
        super::die("the seed's SET UNLOGGED failed");
    }
}

/// Each phase's time per table, in milliseconds: `| run | phase ms/table ... |`.
pub fn per_table(results: &[super::RunResult], tables: u64) -> String {
    let mut order: Vec<&str> = Vec::new();
    for r in results {
        for (p, _) in &r.phases {
            if !order.contains(&p.as_str()) {
                order.push(p);
            }
        }
    }
    let mut out = format!(
        "\nper table ({tables} tables), milliseconds:\n\n| run | {} | total |\n|---|{}\n",
        order.join(" | "),
        "---|".repeat(order.len() + 1)
    );
    for r in results {
        out.push_str(&format!("| {} |", r.label));
        for p in &order {
            match r.phases.iter().find(|(q, _)| q == p) {
                Some((_, s)) => out.push_str(&format!(" {:.2} |", s * 1000.0 / tables as f64)),
                None => out.push_str(" - |"),
            }
        }
        out.push_str(&format!(" {:.2} |\n", r.total * 1000.0 / tables as f64));
    }
    out
}
