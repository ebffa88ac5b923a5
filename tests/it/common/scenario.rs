//! A whole replication setting, as a new user would have it: a source database dumped with
//! the real `pg_dump`, wrapped as Scalingo wraps its backups and served by the fake Scalingo,
//! a target owned by a non-superuser role, a state directory, and the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_scalingo::{API_TOKEN, APP, FakeConfig, FakeScalingo, write_archive};
use super::pg::{
    APP_SCHEMAS, Fingerprint, PgCluster, TargetDb, create_rich_source, fingerprint,
    path_with_client_first, shared_cluster, unique_name,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_replicator");

/// Name of the dump inside the archive, as Scalingo names it.
pub const BACKUP_NAME: &str = "20261123041000_my_app_4553";

pub struct Scenario {
    /// The target's cluster.
    pub cluster: &'static PgCluster,
    /// The source's cluster: [`Scenario::cluster`] unless made by [`Scenario::across`].
    pub source_cluster: &'static PgCluster,
    pub source_db: String,
    pub target: TargetDb,
    pub fake: FakeScalingo,
    pub dump: PathBuf,
    pub archive: PathBuf,
    pub state_dir: PathBuf,
    pub files: tempfile::TempDir,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
    /// The target held tables before the first run ([`Scenario::put_stale_table_in_target`]):
    /// every command confirms its first wipe (`REPLICATOR_TARGET_CONFIRM`).
    pub confirm_target: std::cell::Cell<bool>,
}

impl Scenario {
    /// A source filled by `fill` (as the superuser), dumped, archived and served.
    pub fn new(prefix: &str, fill: impl FnOnce(&PgCluster, &str)) -> Scenario {
        let cluster = shared_cluster();
        Scenario::across(prefix, cluster, cluster, fill, |c, db, out| {
            c.pg_dump(db, out)
        })
    }

    /// A source in `source_cluster` filled by `fill` (as the superuser), dumped into the given
    /// path by `dump` (e.g. another version's pg_dump, other flags), archived and served; the
    /// target is a new role and database of `target_cluster`.
    pub fn across(
        prefix: &str,
        source_cluster: &'static PgCluster,
        cluster: &'static PgCluster,
        fill: impl FnOnce(&PgCluster, &str),
        dump_with: impl FnOnce(&PgCluster, &str, &Path),
    ) -> Scenario {
        let source_db = unique_name(&format!("{prefix}_src"));
        source_cluster.create_source(&source_db);
        fill(source_cluster, &source_db);
        let target = cluster.create_target(&unique_name(&format!("{prefix}_dst")));
        let files = tempfile::tempdir().expect("temp dir");
        let dump = files.path().join(format!("{BACKUP_NAME}.pgsql"));
        dump_with(source_cluster, &source_db, &dump);
        let archive = files.path().join(format!("{BACKUP_NAME}.tar.gz"));
        write_archive(&dump, &format!("{BACKUP_NAME}.pgsql"), &archive).expect("archive");
        let fake = FakeScalingo::start(FakeConfig::new(archive.clone()));
        let state_dir = files.path().join("state");
        Scenario {
            cluster,
            source_cluster,
            source_db,
            target,
            fake,
            dump,
            archive,
            state_dir,
            files,
            env: Vec::new(),
            confirm_target: std::cell::Cell::new(false),
        }
    }

    /// Archives [`Scenario::dump`] again (after a test edited it) and serves the new archive.
    pub fn rearchive(&self) {
        let len = write_archive(&self.dump, &format!("{BACKUP_NAME}.pgsql"), &self.archive)
            .expect("archive");
        self.fake.set_archive(self.archive.clone());
        self.fake
            .set_backups(super::fake_scalingo::default_backups(len));
    }

    /// The rich schema: quoted mixed-case and hyphenated names, partitions, generated and
    /// identity columns, enums, domains, triggers, views and materialized views.
    pub fn rich(prefix: &str) -> Scenario {
        Scenario::new(prefix, create_rich_source)
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// Puts PostgreSQL `major`'s client `bin` directory first on the binary's `PATH`, so that
    /// its `pg_restore` is the one the replicator runs (on Scalingo, client 18 comes first).
    pub fn use_client(&mut self, major: u32) {
        self.set_env("PATH", &path_with_client_first(major));
    }

    /// The binary with a clean environment: only what a user would set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_with_state(args, &self.state_dir)
    }

    pub fn cmd_with_state(&self, args: &[&str], state_dir: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.files.path())
            .env("SCALINGO_APP", APP)
            .env("SCALINGO_API_TOKEN", API_TOKEN)
            .env("SCALINGO_AUTH_URL", self.fake.url())
            .env("SCALINGO_API_URL", self.fake.url())
            .env("SCALINGO_DB_URL", self.fake.url())
            .env("DATABASE_URL", &self.target.url)
            .env("REPLICATOR_STATE_DIR", state_dir)
            .env("RETRY_INITIAL_DELAY_SECONDS", "1")
            .env("RETRY_MAX_DELAY_SECONDS", "2")
            .env("MAX_RETRY_COUNT", "3")
            .env("PG_RESTORE_JOBS", "2")
            .stdin(Stdio::null());
        if self.confirm_target.get() {
            c.env("REPLICATOR_TARGET_CONFIRM", &self.target.dbname);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run the replicator")
    }

    /// Runs and asserts exit 0, printing the output on failure.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "replicator {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the replicator")
    }

    pub fn status_json(&self) -> Value {
        let out = self.run_ok(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls `status --json` until `pred` holds; panics after `timeout`.
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status_json();
            if pred(&s) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "status never matched within {timeout:?}; last: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn source_fingerprint(&self) -> Fingerprint {
        fingerprint(self.source_cluster, &self.source_db)
    }

    pub fn target_fingerprint(&self) -> Fingerprint {
        fingerprint(self.cluster, &self.target.dbname)
    }

    /// The target holds exactly the source's content: every table's rows, every sequence,
    /// indexes, constraints, views, triggers, types and columns.
    pub fn assert_target_is_source(&self) {
        let src = self.expected_fingerprint();
        assert!(!src.tables.is_empty(), "the source has no table");
        assert_eq!(self.target_fingerprint(), src);
    }

    /// The source's fingerprint with its foreign keys as the scenario's `FK_MODE` restores
    /// them: `trust` (the default) adds them `NOT VALID`, except on partitioned tables and
    /// the copies their partitions inherit (PostgreSQL before 18 cannot), `skip` leaves them
    /// out, `validate`
    /// keeps them as they are.
    pub fn expected_fingerprint(&self) -> Fingerprint {
        self.expected_fingerprint_of(self.source_cluster, &self.source_db)
    }

    /// [`Scenario::expected_fingerprint`] of another reference than the source: e.g. the same
    /// SQL loaded into a database of the target's cluster, when the source runs another
    /// PostgreSQL version (whose `pg_get_viewdef` and the like may print differently).
    pub fn expected_fingerprint_of(&self, cluster: &PgCluster, db: &str) -> Fingerprint {
        let mut f = fingerprint(cluster, db);
        let mode = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "FK_MODE")
            .map_or("trust", |(_, v)| v.as_str());
        // The keys that stay validated: those of partitioned tables and the copies their
        // partitions inherit (conparentid). A key declared on a partition itself (Pagila's
        // payment_p2022_01_customer_id_fkey) is a plain table's key: NOT VALID.
        let validated = cluster.superuser_psql(
            db,
            &format!(
                "SELECT k.conrelid::regclass::text || '\x1f' || k.conname FROM pg_constraint k \
                 JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {APP_SCHEMAS} AND k.contype = 'f' AND (c.relkind = 'p' OR k.conparentid <> 0)"
            ),
        );
        let validated: Vec<(&str, &str)> = validated
            .lines()
            .filter_map(|l| l.split_once('\x1f'))
            .collect();
        match mode {
            "skip" => f.constraints.retain(|c| c.2 != "f"),
            "trust" => {
                for c in f.constraints.iter_mut() {
                    if c.2 == "f" && !validated.contains(&(c.0.as_str(), c.1.as_str())) {
                        c.3 = false;
                        c.4.push_str(" NOT VALID");
                    }
                }
            }
            _ => {}
        }
        f
    }

    /// Something the previous replica had that the source does not: must be gone after a run.
    /// The target then holds a table and no record of a replicator run, so every command
    /// from now on confirms the first wipe (`REPLICATOR_TARGET_CONFIRM`).
    pub fn put_stale_table_in_target(&self) {
        self.confirm_target.set(true);
        let sql = "CREATE TABLE stale_leftover (id int PRIMARY KEY, note text);\
                   INSERT INTO stale_leftover VALUES (1, 'from yesterday');";
        self.target_psql(sql);
    }

    /// Yesterday's replica as another role restored it: a table of the dump's name
    /// (`UserAccounts`) that a role other than the target's owns, which `DROP OWNED BY
    /// CURRENT_USER` leaves and the restore would collide with.
    pub fn put_foreign_owned_table_in_target(&self) {
        let other = format!("{}_admin", self.target.role);
        self.cluster.superuser_psql(
            &self.target.dbname,
            &format!(
                "CREATE ROLE \"{other}\" NOLOGIN; \
                 CREATE TABLE public.\"UserAccounts\" (id int); \
                 ALTER TABLE public.\"UserAccounts\" OWNER TO \"{other}\";"
            ),
        );
    }

    /// SQL as the target's own role (over TCP, with its password).
    pub fn target_psql(&self, sql: &str) -> String {
        self.target_psql_result(sql)
            .unwrap_or_else(|e| panic!("psql as the target role failed: {e}"))
    }

    /// [`Scenario::target_psql`] that may fail: the server's error text.
    pub fn target_psql_result(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.cluster.port().to_string())
            .env("PGUSER", &self.target.role)
            .env("PGPASSWORD", &self.target.password)
            .env("PGDATABASE", &self.target.dbname)
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Tables of schema public and their persistence (`p` logged, `u` unlogged).
    pub fn table_persistence(&self) -> Vec<(String, String)> {
        self.cluster
            .superuser_psql(
                &self.target.dbname,
                "SELECT relname || '|' || relpersistence::text FROM pg_class \
                 WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1",
            )
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (a, b) = l.rsplit_once('|').unwrap();
                (a.to_string(), b.to_string())
            })
            .collect()
    }

    /// Sessions of `pg_restore` still connected to the target.
    pub fn restore_sessions(&self) -> u32 {
        self.cluster
            .superuser_psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                     AND (application_name LIKE '%restore%')",
                    self.target.dbname
                ),
            )
            .trim()
            .parse()
            .unwrap()
    }

    pub fn table_exists(&self, name: &str) -> bool {
        self.target_psql(&format!("SELECT to_regclass('{name}') IS NOT NULL")) == "t"
    }
}

/// The rich source plus 1.5 M rows: its data section takes long enough (seconds) to be killed
/// or stopped in the middle of.
pub fn big_source(cluster: &PgCluster, db: &str) {
    create_rich_source(cluster, db);
    cluster.superuser_psql(
        db,
        "CREATE TABLE \"Big-Events\" (id bigserial PRIMARY KEY, payload text, n int);\
         INSERT INTO \"Big-Events\" (payload, n) SELECT md5(g::text) || md5((g*7)::text), g % 1000 \
         FROM generate_series(1, 1500000) g;\
         CREATE INDEX big_events_n ON \"Big-Events\" (n);",
    );
}

/// The rich source plus a table of 60 000 rows that compress poorly: an archive of about
/// 2 MiB, whose download shows progress (the downloader reports what it flushed, by 256 KiB).
pub fn payload_source(cluster: &PgCluster, db: &str) {
    create_rich_source(cluster, db);
    cluster.superuser_psql(
        db,
        "CREATE TABLE payload (id int PRIMARY KEY, a text, b text);\
         INSERT INTO payload SELECT g, md5(g::text) || md5((g * 7)::text), md5((g * 13)::text) \
         FROM generate_series(1, 60000) g;",
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends SIGKILL, as `kill -9` does, and reaps the child.
pub fn kill_9(child: &mut Child) {
    // SAFETY: plain kill(2) on a child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Polls until `pred` holds, up to `timeout`.
pub fn eventually(timeout: Duration, what: &str, pred: impl Fn() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
