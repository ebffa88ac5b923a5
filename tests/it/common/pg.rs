//! A throwaway PostgreSQL cluster for integration tests.
//!
//! Each [`PgCluster`] is an `initdb` in a temp dir, listening on 127.0.0.1 only (a free port)
//! and on a unix socket inside the temp dir. Local (socket) connections are `trust` for the
//! superuser `postgres`; TCP connections need a password (scram-sha-256), so a target role is
//! reached like a Scalingo database: `postgres://role:password@127.0.0.1:port/db`.
//!
//! No server may outlive the test binary, even when the binary is killed with `kill -9` or a
//! test aborts: every cluster has a *watchdog*, a `sh` in its own process group whose stdin is
//! a pipe whose only write end this process holds. When this process ends, however it ends,
//! the kernel closes the pipe, `cat` sees EOF, and the watchdog runs
//! `pg_ctl stop -m immediate` and removes the directory. (`PR_SET_PDEATHSIG` on the postmaster
//! would not do: it fires when the *thread* that spawned it exits, and each test runs on its
//! own thread; `atexit` does not run on a signal.)
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn bin(name: &str) -> PathBuf {
    let p = Path::new(BIN).join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// The uid/gid to run server binaries as: PostgreSQL refuses to run as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root but there is no `postgres` user"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A command for a server binary, as the `postgres` user when we are root.
fn server_command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
        // initdb and pg_ctl look at HOME and the cwd; root's are not readable to postgres.
        cmd.current_dir("/").env("HOME", "/tmp");
    }
    // initdb and pg_ctl must not outlive a killed test binary either (they would write into a
    // directory the watchdog is removing). The postmaster that pg_ctl forks does not inherit
    // this setting, and the calling thread waits for these short-lived commands.
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    cmd
}

/// The target of a test: a non-superuser role that owns its database, as on Scalingo.
#[derive(Clone, Debug)]
pub struct TargetDb {
    pub url: String,
    pub role: String,
    pub password: String,
    pub dbname: String,
}

pub struct PgCluster {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    watchdog: Mutex<Option<Child>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl PgCluster {
    /// `initdb` + `pg_ctl start`. Panics (with the server log) on failure.
    pub fn start() -> PgCluster {
        let t0 = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "replicator-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.join("data");
        let watchdog = spawn_watchdog(&dir, &data);
        let out = server_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "\n# replicator test harness\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 40\nshared_buffers = 16MB\n\
             max_wal_size = 256MB\nlog_min_messages = warning",
            dir.display()
        )
        .unwrap();
        drop(conf);
        let mut cluster = PgCluster {
            dir,
            data,
            port: 0,
            watchdog: Mutex::new(Some(watchdog)),
        };
        // Another test binary may take the port between the probe and the bind: try again.
        let mut last_err = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            let mut conf = fs::OpenOptions::new()
                .append(true)
                .open(cluster.data.join("postgresql.conf"))
                .unwrap();
            writeln!(conf, "port = {}", cluster.port).unwrap();
            match cluster.try_start() {
                Ok(()) => {
                    eprintln!(
                        "[pg harness] cluster on port {} ready in {:?} ({})",
                        cluster.port,
                        t0.elapsed(),
                        cluster.dir.display()
                    );
                    return cluster;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("cannot start PostgreSQL: {last_err}");
    }

    fn try_start(&self) -> Result<(), String> {
        let out = server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            // pg_ctl's postmaster must not keep our stdout/stderr pipes open (cargo test
            // would wait for it).
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            ))
        }
    }

    /// Starts the server again after [`PgCluster::stop`] (same port, same data).
    pub fn start_again(&self) {
        self.try_start().unwrap();
    }

    /// Fast shutdown: sessions are ended with "terminating connection due to administrator
    /// command", as in a maintenance restart.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Like a crash: no checkpoint, sessions cut.
    pub fn stop_immediate(&self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let _ = server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", mode, "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (superuser connections, no password).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// psql as the superuser over the unix socket; `Err(stderr)` on failure.
    pub fn try_superuser_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = Command::new(bin("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-q"])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// psql as the superuser over the unix socket (`-X -v ON_ERROR_STOP=1 -At`); panics on
    /// error with psql's stderr.
    pub fn superuser_psql(&self, db: &str, sql: &str) -> String {
        self.try_superuser_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\nSQL:\n{sql}"))
    }

    /// A non-superuser LOGIN role (no CREATEDB) with a password, owning a new database of the
    /// same name: what Scalingo gives an app.
    pub fn create_target(&self, name: &str) -> TargetDb {
        let password = format!("pw-{name}-S3cr3t-{}", std::process::id());
        self.superuser_psql(
            "postgres",
            &format!(
                "CREATE ROLE \"{name}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}';\n\
                 CREATE DATABASE \"{name}\" OWNER \"{name}\";"
            ),
        );
        TargetDb {
            url: format!(
                "postgres://{name}:{password}@127.0.0.1:{}/{name}?sslmode=prefer",
                self.port
            ),
            role: name.to_string(),
            password,
            dbname: name.to_string(),
        }
    }

    /// A database (owned by the superuser) for tests to fill as the production source.
    pub fn create_source(&self, name: &str) {
        self.superuser_psql("postgres", &format!("CREATE DATABASE \"{name}\";"));
    }

    /// `pg_dump -Fc` of `db` into `out` with the real pg_dump, as Scalingo makes its backups.
    pub fn pg_dump(&self, db: &str, out: &Path) {
        let o = Command::new(bin("pg_dump"))
            .args(["-Fc", "--no-sync"])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-f"])
            .arg(out)
            .output()
            .expect("run pg_dump");
        assert!(
            o.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `pg_restore` by hand as the superuser (the reference a test compares against).
    pub fn pg_restore_as_superuser(&self, db: &str, dump: &Path) {
        let o = Command::new(bin("pg_restore"))
            .args(["--no-owner", "--exit-on-error"])
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db])
            .arg(dump)
            .output()
            .expect("run pg_restore");
        assert!(
            o.status.success(),
            "pg_restore failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        // Closing the watchdog's stdin makes it clean up (a no-op stop, rm -rf) and exit.
        if let Some(mut w) = self.watchdog.lock().unwrap().take() {
            drop(w.stdin.take());
            let _ = w.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// See the module doc. The pipe's write end is close-on-exec, so no other child inherits it
/// (which would keep the watchdog waiting after we die).
fn spawn_watchdog(dir: &Path, data: &Path) -> Child {
    let pg_ctl = bin("pg_ctl");
    let stop = match server_user() {
        Some(_) => "runuser -u postgres -- \"$PG_CTL\" -D \"$PGDATA_DIR\" -m immediate stop",
        None => "\"$PG_CTL\" -D \"$PGDATA_DIR\" -m immediate stop",
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "cat >/dev/null; {stop} >/dev/null 2>&1; rm -rf \"$HARNESS_DIR\"; \
             sleep 1; rm -rf \"$HARNESS_DIR\""
        ))
        .env("PG_CTL", pg_ctl)
        .env("PGDATA_DIR", data)
        .env("HARNESS_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setpgid is async-signal-safe. Its own group: a Ctrl-C on the test run must not
    // kill the watchdog before it has stopped the server.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn the harness watchdog")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One cluster per test binary, for tests that need no stop/start of their own. It is never
/// dropped (statics are not); its watchdog stops it when the binary exits.
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

/// A unique name for a database or role in the shared cluster.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst))
}

/// What a test compares between a source and its restored copy.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Fingerprint {
    /// (table, rows, md5 of its rows in text order), partitioned parents and leaves alike.
    pub tables: Vec<(String, i64, String)>,
    /// (sequence, last_value, is_called).
    pub sequences: Vec<(String, i64, bool)>,
    /// (index, definition).
    pub indexes: Vec<(String, String)>,
    /// (table, constraint, contype, convalidated, definition).
    pub constraints: Vec<(String, String, String, bool, String)>,
    /// (name, relkind, definition) of views and materialized views.
    pub views: Vec<(String, String, String)>,
    /// (table, trigger, definition).
    pub triggers: Vec<(String, String, String)>,
    /// (type, kind, detail): enum labels, domain base type and checks, composite columns.
    pub types: Vec<(String, String, String)>,
    /// (table, column, type, default, identity, generated) of every column.
    pub columns: Vec<(String, String, String, String, String, String)>,
}

fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\x1f').map(str::to_string).collect())
        .collect()
}

/// The [`Fingerprint`] of schema public of `db`, read as the superuser.
pub fn fingerprint(cluster: &PgCluster, db: &str) -> Fingerprint {
    // Unit separator as field separator: names and definitions may contain '|'. Definitions
    // that span lines (views) have their whitespace squeezed, one row per line.
    let q = |sql: &str| -> Vec<Vec<String>> {
        rows(&cluster.superuser_psql(db, &format!("\\pset fieldsep '\\x1f'\n{sql}")))
    };
    // One generated query per table and sequence, run by \gexec in the same psql.
    let mut tables: Vec<(String, i64, String)> = q(
        "SELECT format('SELECT %L, count(*), coalesce(md5(string_agg(t::text, E''\\n'' ORDER BY t::text)), ''empty'') FROM public.%I t', c.relname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          ORDER BY c.relname \\gexec",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].clone()))
    .collect();
    tables.sort();
    let mut sequences: Vec<(String, i64, bool)> = q(
        "SELECT format('SELECT %L, last_value, is_called FROM public.%I', c.relname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind = 'S' ORDER BY c.relname \\gexec",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2] == "t"))
    .collect();
    sequences.sort();
    let indexes =
        q("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
    let constraints = q(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype::text, c.convalidated,
                pg_get_constraintdef(c.oid)
           FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
          WHERE n.nspname = 'public' ORDER BY 1, 2",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].clone(),
            r[1].clone(),
            r[2].clone(),
            r[3] == "t",
            r[4].clone(),
        )
    })
    .collect();
    let views = q(
        "SELECT c.relname, c.relkind::text, regexp_replace(pg_get_viewdef(c.oid), '\\s+', ' ', 'g')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm') ORDER BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let triggers = q(
        "SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY 1, 2",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let types = q(
        "SELECT t.typname, t.typtype::text,
                CASE t.typtype
                  WHEN 'e' THEN (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
                  WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || ' ' ||
                       coalesce((SELECT string_agg(pg_get_constraintdef(oid), ' ' ORDER BY conname) FROM pg_constraint WHERE contypid = t.oid), '')
                  ELSE ''
                END
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')
          ORDER BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let columns = q(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                regexp_replace(coalesce(pg_get_expr(d.adbin, d.adrelid), ''), '\\s+', ' ', 'g'), a.attidentity::text, a.attgenerated::text
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0
            AND NOT a.attisdropped
          ORDER BY 1, a.attnum",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].clone(),
            r[1].clone(),
            r[2].clone(),
            r[3].clone(),
            r[4].clone(),
            r[5].clone(),
        )
    })
    .collect();
    Fingerprint {
        tables,
        sequences,
        indexes,
        constraints,
        views,
        triggers,
        types,
        columns,
    }
}

/// The rich sample schema: quoted mixed-case and hyphenated names, a range-partitioned table,
/// generated and identity columns, serial, an enum, a checked domain, a plpgsql trigger, a view
/// and a materialized view, foreign keys, secondary indexes, a unique constraint, jsonb and
/// text, a few hundred rows and advanced sequences.
pub const RICH_SOURCE_SQL: &str = r#"
CREATE TYPE "Mood" AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_score AS integer CHECK (VALUE >= 0);

CREATE TABLE "UserAccounts" (
    id serial PRIMARY KEY,
    "Email" text NOT NULL UNIQUE,
    "firstName" text,
    mood "Mood" NOT NULL DEFAULT 'ok',
    created_at timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00',
    updated_at timestamptz
);

CREATE TABLE "knowledge-elements" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "userId" integer NOT NULL REFERENCES "UserAccounts"(id) ON DELETE CASCADE,
    "skill-id" text NOT NULL,
    earned_pix positive_score NOT NULL,
    double_pix integer GENERATED ALWAYS AS (earned_pix * 2) STORED,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX "knowledge-elements_userId_idx" ON "knowledge-elements" ("userId");
CREATE INDEX ke_details_gin ON "knowledge-elements" USING gin (details);

CREATE TABLE answers (
    id bigserial PRIMARY KEY,
    "knowledgeElementId" bigint REFERENCES "knowledge-elements"(id),
    value text NOT NULL,
    result text CHECK (result IN ('ok', 'ko', 'aband')),
    CONSTRAINT answers_value_unique UNIQUE ("knowledgeElementId", value)
);
CREATE INDEX answers_lower_value ON answers (lower(value)) WHERE result IS NOT NULL;

CREATE TABLE "Events" (
    id integer GENERATED BY DEFAULT AS IDENTITY,
    "occurredAt" date NOT NULL,
    "userId" integer REFERENCES "UserAccounts"(id),
    payload text,
    PRIMARY KEY (id, "occurredAt")
) PARTITION BY RANGE ("occurredAt");
CREATE TABLE "Events_2020" PARTITION OF "Events" FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE "events-2021" PARTITION OF "Events" FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
CREATE INDEX "Events_user_idx" ON "Events" ("userId");

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := '2024-06-01 12:00:00+00';
    RETURN NEW;
END
$$;
CREATE TRIGGER "UserAccounts_touch" BEFORE UPDATE ON "UserAccounts"
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE SEQUENCE "order-numbers" START 1000 INCREMENT 7;

INSERT INTO "UserAccounts" ("Email", "firstName", mood, created_at)
SELECT 'user' || i || '@example.org',
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'Prénom ' || i || ' "quoted" | pipe' END,
       (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::"Mood",
       '2020-01-01 00:00:00+00'::timestamptz + i * interval '1 hour'
  FROM generate_series(1, 120) i;
UPDATE "UserAccounts" SET "firstName" = "firstName" || ' (edited)' WHERE id % 10 = 0;
DELETE FROM "UserAccounts" WHERE id IN (7, 8);

INSERT INTO "knowledge-elements" ("userId", "skill-id", earned_pix, details)
SELECT 1 + (i % 118) + CASE WHEN 1 + (i % 118) >= 7 THEN 2 ELSE 0 END,
       'rec' || md5(i::text),
       i % 9,
       jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i % 4), 'text', E'line\nbreak\ttab')
  FROM generate_series(1, 200) i;

INSERT INTO answers ("knowledgeElementId", value, result)
SELECT 1 + i % 200, 'answer #' || i, (ARRAY['ok', 'ko', 'aband', NULL])[1 + i % 4]
  FROM generate_series(1, 150) i;

INSERT INTO "Events" ("occurredAt", "userId", payload)
SELECT DATE '2020-03-01' + (i * 3), CASE WHEN i % 6 = 0 THEN NULL ELSE 1 + i % 5 END, repeat('x', i % 50)
  FROM generate_series(1, 180) i;

CREATE VIEW "active-users" AS
    SELECT u.id, u."Email", count(ke.id) AS elements
      FROM "UserAccounts" u JOIN "knowledge-elements" ke ON ke."userId" = u.id
     GROUP BY u.id, u."Email";
CREATE MATERIALIZED VIEW "PixTotals" AS
    SELECT "userId", sum(earned_pix)::bigint AS total FROM "knowledge-elements" GROUP BY "userId";
CREATE UNIQUE INDEX "PixTotals_userId" ON "PixTotals" ("userId");

SELECT setval('"order-numbers"', 4242);
SELECT nextval('answers_id_seq') FROM generate_series(1, 5);
"#;

/// Creates the rich sample schema and data in `db` (as the superuser).
pub fn create_rich_source(cluster: &PgCluster, db: &str) {
    cluster.superuser_psql(db, RICH_SOURCE_SQL);
}
