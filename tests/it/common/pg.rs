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

/// Debian's PostgreSQL 15, installed by `scripts/test` (`apt-get install postgresql`).
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// `dir/name`, else `name` alone (found on `PATH`).
fn bin_in(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// The majors the tests can run: 15 is Debian's, 16 to 18 come from `scripts/test`'s cache.
pub const VERSIONS: [u32; 5] = [14, 15, 16, 17, 18];

/// Where `scripts/test` unpacks PostgreSQL 14, 16, 17 and 18 (`<cache>/<major>/bin`):
/// `$REPLICATOR_PG_CACHE`, else `/var/cache/replicator-pg` as root, else
/// `$XDG_CACHE_HOME/replicator-pg` or `~/.cache/replicator-pg`, as the script chooses.
pub fn pg_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REPLICATOR_PG_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: plain libc call.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/replicator-pg");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("replicator-pg")
}

/// The `bin` directory of PostgreSQL `major` (server and client). Panics, saying to run
/// `scripts/test`, when it is not installed: a test that needs a version never skips.
pub fn pg_bin_dir(major: u32) -> PathBuf {
    let dir = if major == 15 {
        PathBuf::from(BIN)
    } else {
        pg_cache_dir().join(major.to_string()).join("bin")
    };
    for tool in [
        "initdb",
        "pg_ctl",
        "postgres",
        "pg_dump",
        "pg_restore",
        "psql",
    ] {
        assert!(
            dir.join(tool).exists(),
            "PostgreSQL {major} is not installed: {} is missing. Run scripts/test once (it \
             installs Debian's PostgreSQL 15 and fetches 14, 16, 17 and 18 into {}; \
             REPLICATOR_PG_CACHE overrides where)",
            dir.join(tool).display(),
            pg_cache_dir().display()
        );
    }
    dir
}

/// A `PATH` whose first entry is PostgreSQL `major`'s client `bin` directory, then this
/// process's `PATH`: what the replicator sees on Scalingo, where `.profile.d` puts
/// postgresql-client-18 first.
pub fn path_with_client_first(major: u32) -> String {
    format!(
        "{}:{}",
        pg_bin_dir(major).display(),
        std::env::var("PATH").unwrap_or_default()
    )
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

/// A command for a server binary (a path from [`bin_in`]), as the `postgres` user when we are
/// root.
fn server_command(program: PathBuf) -> Command {
    let mut cmd = Command::new(&program);
    // The wheels' contrib modules (dblink.so, postgres_fdw.so) need their own libpq, but their
    // RUNPATH is the build's /opt/postgresql/lib: point the loader at the wheel's lib/.
    let lib = program
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("lib"));
    if let Some(lib) = lib.filter(|lib| lib.join("libpq.so.5").exists()) {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
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
    /// The server's (and its psql's, pg_dump's) `bin` directory.
    bin_dir: PathBuf,
    /// The major version, when started by [`PgCluster::start_version`].
    version: Option<u32>,
    watchdog: Mutex<Option<Child>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl PgCluster {
    /// `initdb` + `pg_ctl start` with Debian's PostgreSQL 15 (else the `initdb` on `PATH`).
    /// Panics (with the server log) on failure.
    pub fn start() -> PgCluster {
        Self::start_in(PathBuf::from(BIN), None)
    }

    /// A cluster of PostgreSQL `major` (15: Debian's; 16, 17, 18: `scripts/test`'s cache).
    /// Panics, saying to run `scripts/test`, when that version is not installed.
    pub fn start_version(major: u32) -> PgCluster {
        let cluster = Self::start_in(pg_bin_dir(major), Some(major));
        let reported = cluster.superuser_psql("postgres", "SHOW server_version_num");
        assert_eq!(
            reported.trim().parse::<u32>().unwrap() / 10000,
            major,
            "the cluster of {} is not PostgreSQL {major}",
            cluster.bin_dir.display()
        );
        cluster
    }

    fn start_in(bin_dir: PathBuf, version: Option<u32>) -> PgCluster {
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
        let watchdog = spawn_watchdog(&bin_in(&bin_dir, "pg_ctl"), &dir, &data);
        let out = server_command(bin_in(&bin_dir, "initdb"))
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
            bin_dir,
            version,
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
                        "[pg harness] cluster {}on port {} ready in {:?} ({})",
                        version.map_or(String::new(), |v| format!("(PostgreSQL {v}) ")),
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
        let out = server_command(self.tool("pg_ctl"))
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
        let _ = server_command(self.tool("pg_ctl"))
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

    /// The major version given to [`PgCluster::start_version`] (`None`: [`PgCluster::start`]).
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// This cluster's own `bin` directory (its server's version).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A tool of this cluster's version.
    fn tool(&self, name: &str) -> PathBuf {
        bin_in(&self.bin_dir, name)
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
        let mut child = Command::new(self.tool("psql"))
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

    /// `pg_dump -Fc` of `db` into `out` with the real pg_dump (this cluster's version), as
    /// Scalingo makes its backups.
    pub fn pg_dump(&self, db: &str, out: &Path) {
        self.dump_with_tool(self.tool("pg_dump"), db, out, &[]);
    }

    /// `pg_dump -Fc` of `db` into `out` with PostgreSQL `major`'s pg_dump (not older than the
    /// server) and `extra_args` (`--compress=lz4`, `--statistics`, ...).
    pub fn pg_dump_with(&self, major: u32, db: &str, out: &Path, extra_args: &[&str]) {
        self.dump_with_tool(pg_bin_dir(major).join("pg_dump"), db, out, extra_args);
    }

    fn dump_with_tool(&self, pg_dump: PathBuf, db: &str, out: &Path, extra_args: &[&str]) {
        let o = Command::new(&pg_dump)
            .args(["-Fc", "--no-sync"])
            .args(extra_args)
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
            "{} failed: {}",
            pg_dump.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `pg_restore` by hand as the superuser (the reference a test compares against).
    pub fn pg_restore_as_superuser(&self, db: &str, dump: &Path) {
        let o = Command::new(self.tool("pg_restore"))
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
fn spawn_watchdog(pg_ctl: &Path, dir: &Path, data: &Path) -> Child {
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

/// A port free on 127.0.0.1 now (another process may take it before it is bound).
pub fn free_port() -> u16 {
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

/// Like [`shared_cluster`], one cluster of PostgreSQL `major` per test binary; 15 is
/// [`shared_cluster`] itself (Debian's 15, required here).
pub fn shared_cluster_version(major: u32) -> &'static PgCluster {
    if major == 15 {
        pg_bin_dir(15);
        return shared_cluster();
    }
    static SHARED: [OnceLock<PgCluster>; 5] = [const { OnceLock::new() }; 5];
    let i = VERSIONS
        .iter()
        .position(|v| *v == major)
        .unwrap_or_else(|| panic!("no PostgreSQL {major} for the tests (only {VERSIONS:?})"));
    SHARED[i].get_or_init(|| PgCluster::start_version(major))
}

/// A unique name for a database or role in the shared cluster.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst))
}

/// The schemas a [`Fingerprint`] covers, as a condition on `n.nspname`: every schema but the
/// system's (`pg_catalog`, `information_schema`, `pg_toast`, `pg_temp_*`: `pg_` is reserved)
/// and `replicator`, the replicator's own run records in the target.
pub const APP_SCHEMAS: &str =
    "n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'replicator')";

/// A relation's name in a [`Fingerprint`]: bare in `public`, `schema.name` elsewhere.
const NAME: &str =
    "CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END";

/// What a test compares between a source and its restored copy, over every schema of
/// [`APP_SCHEMAS`]. Relations are named bare in `public`, `schema.name` elsewhere (constraints
/// and triggers: their table as `regclass` prints it).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Fingerprint {
    /// (table, rows, md5 of its rows in text order), partitioned parents and leaves alike.
    pub tables: Vec<(String, i64, String)>,
    /// (materialized view, rows, md5 of its rows in text order).
    pub matviews: Vec<(String, i64, String)>,
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
    /// (oid, bytes, md5 of the content) of every large object.
    pub large_objects: Vec<(u32, i64, String)>,
}

fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\x1f').map(str::to_string).collect())
        .collect()
}

/// The [`Fingerprint`] of every application schema of `db` and its large objects, read as the
/// superuser.
pub fn fingerprint(cluster: &PgCluster, db: &str) -> Fingerprint {
    // Unit separator as field separator: names and definitions may contain '|'. Definitions
    // that span lines (views) have their whitespace squeezed, one row per line.
    let q = |sql: &str| -> Vec<Vec<String>> {
        let sql = sql
            .replace("$APP_SCHEMAS", APP_SCHEMAS)
            .replace("$NAME", NAME);
        rows(&cluster.superuser_psql(db, &format!("\\pset fieldsep '\\x1f'\n{sql}")))
    };
    // One generated query per table and sequence, run by \gexec in the same psql.
    let contents = |relkinds: &str| -> Vec<(String, i64, String)> {
        let mut v: Vec<(String, i64, String)> = q(&format!(
            "SELECT format('SELECT %L, count(*), coalesce(md5(string_agg(t::text, E''\\n'' ORDER BY t::text)), ''empty'') FROM %I.%I t', $NAME, n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE $APP_SCHEMAS AND c.relkind IN ({relkinds})
              ORDER BY 1 \\gexec"
        ))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].clone()))
        .collect();
        v.sort();
        v
    };
    let tables = contents("'r', 'p'");
    let matviews = contents("'m'");
    let mut sequences: Vec<(String, i64, bool)> = q(
        "SELECT format('SELECT %L, last_value, is_called FROM %I.%I', $NAME, n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE $APP_SCHEMAS AND c.relkind = 'S' ORDER BY 1 \\gexec",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2] == "t"))
    .collect();
    sequences.sort();
    // With what the definition does not say: which constraint owns the index, and the flags a
    // key sets on it (primary, checked at once or deferred, replica identity, valid).
    let indexes = q("SELECT $NAME, pg_get_indexdef(c.oid)
                || ' owner=' || coalesce((SELECT conname || '/' || contype::text FROM pg_constraint
                                           WHERE conindid = c.oid AND contype IN ('p', 'u', 'x')), '-')
                || ' primary=' || i.indisprimary || ' immediate=' || i.indimmediate
                || ' replident=' || i.indisreplident || ' valid=' || i.indisvalid
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_index i ON i.indexrelid = c.oid
          WHERE $APP_SCHEMAS AND c.relkind IN ('i', 'I') ORDER BY 1, 2")
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect();
    let constraints = q(
        "SELECT c.conrelid::regclass::text, c.conname, c.contype::text, c.convalidated,
                pg_get_constraintdef(c.oid)
           FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
          WHERE $APP_SCHEMAS ORDER BY 1, 2",
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
        "SELECT $NAME, c.relkind::text, regexp_replace(pg_get_viewdef(c.oid), '\\s+', ' ', 'g')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE $APP_SCHEMAS AND c.relkind IN ('v', 'm') ORDER BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let triggers = q(
        "SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE $APP_SCHEMAS AND NOT t.tgisinternal ORDER BY 1, 2",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let types = q(
        "SELECT CASE WHEN n.nspname = 'public' THEN t.typname ELSE n.nspname || '.' || t.typname END, t.typtype::text,
                CASE t.typtype
                  WHEN 'e' THEN (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid)
                  WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) || ' ' ||
                       coalesce((SELECT string_agg(pg_get_constraintdef(oid), ' ' ORDER BY conname) FROM pg_constraint WHERE contypid = t.oid), '')
                  ELSE ''
                END
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE $APP_SCHEMAS AND t.typtype IN ('e', 'd')
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                            AND d.objid = t.oid AND d.deptype = 'e')
          ORDER BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
    .collect();
    let columns = q(
        "SELECT $NAME, a.attname, format_type(a.atttypid, a.atttypmod),
                regexp_replace(coalesce(pg_get_expr(d.adbin, d.adrelid), ''), '\\s+', ' ', 'g'), a.attidentity::text, a.attgenerated::text
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE $APP_SCHEMAS AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0
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
    let large_objects = q(
        "SELECT oid, length(lo_get(oid)), md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid",
    )
    .into_iter()
    .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap(), r[2].clone()))
    .collect();
    Fingerprint {
        tables,
        matviews,
        sequences,
        indexes,
        constraints,
        views,
        triggers,
        types,
        columns,
        large_objects,
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
