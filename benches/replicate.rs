//! End-to-end benchmark: `replicator run` against the seed's procedure done with standard
//! tools, on the same source, the same server and the same fake Scalingo on loopback.
//!
//! ```sh
//! cargo bench --bench replicate -- --size-mb 1400 --cache-dir /work/bench-cache
//! cargo bench --bench replicate -- --help
//! ```
//!
//! What it does (see `docs/performance.md` for the results and what each lever is worth):
//!
//! 1. Builds a source of about `--size-mb` MiB on disk in a throwaway PostgreSQL 15 (six
//!    tables shaped like Pix's, secondary indexes, validated foreign keys, text and jsonb that
//!    do not compress to nothing), dumps it with `pg_dump -Fc`, wraps the dump as Scalingo
//!    wraps its backups and caches the dump, the archive and the source's fingerprint under
//!    `--cache-dir` (a source of 1.4 GB takes minutes to build: the next runs reuse it).
//! 2. Serves the archive from the fake Scalingo on 127.0.0.1.
//! 3. Alternates, `--rounds` times, A = `replicator run` (its defaults, plus
//!    `USE_UNLOGGED_TABLES=true` and any `--env`) and B = the seed's procedure (`curl`,
//!    `tar xzf`, `psql DROP OWNED`, `pg_restore -j4 --section=pre-data`, `ALTER TABLE ... SET
//!    UNLOGGED` on each table, `pg_restore -j4 --section=data --section=post-data`), into the
//!    same target database.
//! 4. After each run, checks that the target holds the source (rows of every table, sequences,
//!    indexes and constraints); the only difference allowed is a foreign key that the
//!    replicator created `NOT VALID` (`FK_MODE=trust`).
//!    Before each run the server settles: its autovacuum workers done, a checkpoint.
//! 5. Reports per-phase times, the end-to-end ratio A / B, the replicator's peak RSS
//!    (`VmHWM` of its process) and the disk high-water mark of its state directory.
//! 6. With `--floor`, each round ends with F: the server alone doing the restore's work, one
//!    statement at a time (rows `COPY`ed from the server's own files, then the post-data
//!    section). Its sum over the cores is the floor of any restore's rows section on this
//!    host, the replicator's, the seed's or another tool's.
//!
//! It never talks to anything but 127.0.0.1 and stops by itself.

#[path = "../tests/it/common/fake_scalingo.rs"]
mod fake_scalingo;
#[path = "replicate/many.rs"]
mod many;
#[path = "../tests/it/common/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_scalingo::{API_TOKEN, APP, DONE_BACKUP_ID, FakeConfig, FakeScalingo, write_archive};
use pg::{PgCluster, TargetDb};

const BIN: &str = env!("CARGO_BIN_EXE_replicator");
const BACKUP_NAME: &str = "20261123041000_my_app_4553";
/// Bumped whenever the generated source changes, so that a stale cache is not reused.
const SOURCE_VERSION: u32 = 2;

const USAGE: &str = "\
cargo bench --bench replicate -- [options]

  --size-mb N        size of the source on disk, in MiB (default 1400)
  --rounds N         A B pairs to run, alternated (default 2)
  --cache-dir DIR    where the built source's dump, archive and fingerprint are kept
                     (default $REPLICATOR_BENCH_CACHE, else /work/bench-cache)
  --only a|b         run only the replicator (a) or only the seed (b)
  --env K=V          extra environment for the replicator (repeatable), e.g. FK_MODE=validate
  --seed-jobs N      pg_restore -j of the seed (default 4)
  --no-verify        skip the content check after each run
  --shared-buffers S the server's shared_buffers (default 512MB)
  --default-settings the server with PostgreSQL's defaults (shared_buffers 128MB,
                     max_wal_size 1GB, max_connections 100), fsync on
  --no-ready         do not wait, after A and B, until the replica is ready for its readers
                     (every table with rows analyzed, no autovacuum worker on the target's
                     database, no table above autovacuum's vacuum, insert or analyze
                     thresholds): the time to ready is reported by default
  --replicator PATH  the binary to time (default: the one cargo just built)
  --b-replicator P   B is this replicator binary instead of the seed (measures one lever
                     against another, alternated)
  --b-env K=V        extra environment for the B replicator (repeatable); implies B is the
                     replicator (the same binary unless --b-replicator)
  --throttle-mb N    the fake's downloads are throttled to N MB/s (10^6 bytes), for both
                     sides (the seed's curl too): a Scalingo download over the internet
                     rather than loopback; with --env MAX_WORK_DISK=64MiB the replicator
                     streams
  --rules            A runs with REPLICA_RULES (docs/masking.md): answers.value `hash`,
                     knowledge_elements.skill_id `first_name`, knowledge_elements.details
                     `redact`, answers filtered on result (4 of 5 values kept), MASKING_KEY set;
                     B is the same replicator without rules (unless --b-replicator/--b-env);
                     A's content check is skipped (its target is masked on purpose)
  --reader           during each replicator run, a reader queries `SELECT count(*) FROM
                     organizations` every 100 ms as the target's role: its latency (p50, p99,
                     max) and errors are reported
  --floor            each round ends with F, the server's own work: the schema, then each
                     table's rows COPYed by the server from its own files (written from the
                     target after the round's first run), then the post-data section one
                     statement at a time without parallel workers, foreign keys NOT VALID; its
                     statements' sum over the cores is the shortest any restore's rows section
                     can take on this host (needs a first run that leaves the source in place)
  --many SxT         the source is S schemas of T small tables each (a serial key, an index and
                     5 rows a table) instead of --size-mb's six tables; the seed restores every
                     schema; the report gives each step's time per table. The server's
                     max_locks_per_transaction is raised where the seed's DROP OWNED needs it
  --no-fsync         the server runs with fsync, synchronous_commit and full_page_writes off
                     (the test harness's settings) instead of a production server's: what is
                     left is each object's CPU and round trips, no disk flush
";

/// `--rules`: three masked columns on the two largest tables and a row filter on the largest.
const BENCH_RULES: &str = r#"
[tables.answers.columns]
value = "hash"
[tables.answers.rows]
column = "result"
in = ["ok", "ko", "aband", "timedout"]
[tables.knowledge_elements.columns]
skill_id = "first_name"
details = "redact"
"#;

struct Args {
    size_mb: u64,
    rounds: u32,
    cache_dir: PathBuf,
    only: Option<char>,
    env: Vec<(String, String)>,
    seed_jobs: u32,
    verify: bool,
    shared_buffers: String,
    bin: PathBuf,
    b_bin: Option<PathBuf>,
    b_env: Vec<(String, String)>,
    rules: bool,
    throttle_mb: Option<u64>,
    floor: bool,
    reader: bool,
    default_settings: bool,
    ready: bool,
    many: Option<many::Many>,
    no_fsync: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        size_mb: 1400,
        rounds: 2,
        cache_dir: std::env::var_os("REPLICATOR_BENCH_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/bench-cache")),
        only: None,
        env: Vec::new(),
        seed_jobs: 4,
        verify: true,
        shared_buffers: "512MB".into(),
        bin: PathBuf::from(BIN),
        b_bin: None,
        b_env: Vec::new(),
        rules: false,
        throttle_mb: None,
        floor: false,
        reader: false,
        default_settings: false,
        ready: true,
        many: None,
        no_fsync: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value\n\n{USAGE}")))
        };
        match arg.as_str() {
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            "--size-mb" => a.size_mb = number(&value("--size-mb")),
            "--rounds" => a.rounds = number(&value("--rounds")) as u32,
            "--cache-dir" => a.cache_dir = PathBuf::from(value("--cache-dir")),
            "--only" => {
                a.only = match value("--only").as_str() {
                    "a" => Some('a'),
                    "b" => Some('b'),
                    other => die(&format!("--only {other}: expected a or b")),
                }
            }
            "--env" => {
                let kv = value("--env");
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| die(&format!("--env {kv}: expected K=V")));
                a.env.push((k.into(), v.into()));
            }
            "--seed-jobs" => a.seed_jobs = number(&value("--seed-jobs")) as u32,
            "--no-verify" => a.verify = false,
            "--rules" => a.rules = true,
            "--floor" => a.floor = true,
            "--reader" => a.reader = true,
            "--default-settings" => a.default_settings = true,
            "--no-ready" => a.ready = false,
            "--no-fsync" => a.no_fsync = true,
            "--many" => {
                let v = value("--many");
                a.many = Some(
                    many::Many::parse(&v)
                        .unwrap_or_else(|| die(&format!("--many {v}: expected SxT, e.g. 25x100"))),
                );
            }
            "--throttle-mb" => a.throttle_mb = Some(number(&value("--throttle-mb"))),
            "--shared-buffers" => a.shared_buffers = value("--shared-buffers"),
            "--replicator" => a.bin = PathBuf::from(value("--replicator")),
            "--b-replicator" => a.b_bin = Some(PathBuf::from(value("--b-replicator"))),
            "--b-env" => {
                let kv = value("--b-env");
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| die(&format!("--b-env {kv}: expected K=V")));
                a.b_env.push((k.into(), v.into()));
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    a
}

fn number(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| die(&format!("{s}: expected a whole number")))
}

fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

fn log(msg: &str) {
    eprintln!("[bench {:>8.1}s] {msg}", started().elapsed().as_secs_f64());
}

fn started() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------------------
// The source
// ---------------------------------------------------------------------------------------

/// Six tables shaped like Pix's (users, organizations, memberships, assessments, answers,
/// knowledge elements): hex and base64 text and jsonb derived from md5 (deterministic, and
/// compressing to about 55-75%, not to nothing), eleven secondary indexes, a unique
/// constraint, eight foreign keys validated by `ALTER TABLE ... ADD CONSTRAINT`.
fn source_sql(units: u64) -> String {
    let orgs = units / 100 + 10;
    format!(
        r#"
SET synchronous_commit = off;
SET maintenance_work_mem = '256MB';
CREATE TABLE organizations (
    id serial PRIMARY KEY, name text NOT NULL, type text NOT NULL,
    settings jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE users (
    id serial PRIMARY KEY, email text NOT NULL, first_name text, last_name text,
    created_at timestamptz NOT NULL, profile jsonb,
    CONSTRAINT users_email_unique UNIQUE (email));
CREATE TABLE memberships (
    id serial PRIMARY KEY, user_id integer NOT NULL, organization_id integer NOT NULL,
    role text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE assessments (
    id bigserial PRIMARY KEY, user_id integer NOT NULL, organization_id integer,
    state text NOT NULL, type text NOT NULL, created_at timestamptz NOT NULL, result jsonb);
CREATE TABLE answers (
    id bigserial PRIMARY KEY, assessment_id bigint NOT NULL, challenge_id text NOT NULL,
    value text NOT NULL, result text NOT NULL, time_spent integer,
    created_at timestamptz NOT NULL);
CREATE TABLE knowledge_elements (
    id bigserial PRIMARY KEY, user_id integer NOT NULL, assessment_id bigint NOT NULL,
    answer_id bigint NOT NULL, skill_id text NOT NULL, earned_pix real NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL, details jsonb);

INSERT INTO organizations (name, type, settings, created_at)
SELECT 'Organization ' || md5(i::text), (ARRAY['SCO', 'SUP', 'PRO'])[1 + i % 3],
       jsonb_build_object('code', upper(left(md5('o' || i), 8)), 'archived', i % 17 = 0,
                          'tags', jsonb_build_array(left(md5('t' || i), 6), i % 50)),
       '2016-01-01'::timestamptz + i * interval '1 hour'
  FROM generate_series(1, {orgs}) i;

INSERT INTO users (email, first_name, last_name, created_at, profile)
SELECT left(md5('e' || i), 12) || '.' || i || '@example.' || (ARRAY['org', 'net', 'fr'])[1 + i % 3],
       initcap(left(md5('f' || i), 3 + i % 7)), initcap(left(md5('l' || i), 4 + i % 9)),
       '2016-01-01'::timestamptz + i * interval '37 seconds',
       CASE WHEN i % 4 = 0 THEN NULL ELSE jsonb_build_object(
           'lang', (ARRAY['fr', 'en', 'nl'])[1 + i % 3], 'cgu', i % 5 <> 0,
           'token', encode(decode(md5('k' || i) || md5('K' || i), 'hex'), 'base64')) END
  FROM generate_series(1, {units}) i;

INSERT INTO memberships (user_id, organization_id, role, created_at)
SELECT 1 + (i::bigint * 7919) % {units}, 1 + (i::bigint * 31) % {orgs}, (ARRAY['MEMBER', 'ADMIN'])[1 + (i % 9 = 0)::int],
       '2017-01-01'::timestamptz + i * interval '41 seconds'
  FROM generate_series(1, {units}) i;

INSERT INTO assessments (user_id, organization_id, state, type, created_at, result)
SELECT 1 + (i::bigint * 104729) % {units}, CASE WHEN i % 3 = 0 THEN NULL ELSE 1 + i % {orgs} END,
       (ARRAY['completed', 'started', 'aborted', 'endedByInvigilator'])[1 + i % 4],
       (ARRAY['CAMPAIGN', 'CERTIFICATION', 'COMPETENCE_EVALUATION', 'DEMO'])[1 + (i / 7) % 4],
       '2018-01-01'::timestamptz + i * interval '19 seconds',
       CASE WHEN i % 2 = 0 THEN jsonb_build_object('level', i % 8, 'pix', (i::bigint * 13) % 640,
            'competences', jsonb_build_array(left(md5('c' || i), 10), left(md5('C' || i), 10))) END
  FROM generate_series(1, {units} * 2) i;

INSERT INTO answers (assessment_id, challenge_id, value, result, time_spent, created_at)
SELECT 1 + (i::bigint * 15485863) % ({units} * 2), 'rec' || left(md5('ch' || (i % 5000)), 14),
       left(md5('v' || i) || ' ' || encode(decode(md5('w' || i), 'hex'), 'base64') || ' ' || md5('x' || i),
            20 + i % 90),
       (ARRAY['ok', 'ko', 'aband', 'timedout', 'partially'])[1 + i % 5],
       CASE WHEN i % 11 = 0 THEN NULL ELSE i % 600 END,
       '2018-01-01'::timestamptz + i * interval '3 seconds'
  FROM generate_series(1, {units} * 8) i;

INSERT INTO knowledge_elements (user_id, assessment_id, answer_id, skill_id, earned_pix, status, created_at, details)
SELECT 1 + (i::bigint * 7907) % {units}, 1 + (i::bigint * 7901) % ({units} * 2), 1 + (i::bigint * 7877) % ({units} * 8),
       'rec' || left(md5('sk' || (i % 3000)), 10), (i % 8)::real / 2,
       (ARRAY['validated', 'invalidated', 'reset'])[1 + i % 3],
       '2018-01-01'::timestamptz + i * interval '4 seconds',
       CASE WHEN i % 3 = 0 THEN NULL ELSE jsonb_build_object('source', (ARRAY['direct', 'inferred'])[1 + i % 2],
            'competenceId', 'rec' || left(md5('cp' || (i % 16)), 10), 'hash', left(md5('h' || i), 16)) END
  FROM generate_series(1, {units} * 6) i;

CREATE INDEX users_lower_last_name_idx ON users (lower(last_name));
CREATE INDEX memberships_user_id_idx ON memberships (user_id);
CREATE INDEX memberships_organization_id_idx ON memberships (organization_id);
CREATE INDEX assessments_user_id_idx ON assessments (user_id);
CREATE INDEX assessments_created_at_idx ON assessments (created_at);
CREATE INDEX answers_assessment_id_idx ON answers (assessment_id);
CREATE INDEX answers_challenge_id_idx ON answers (challenge_id);
CREATE INDEX knowledge_elements_user_id_idx ON knowledge_elements (user_id);
CREATE INDEX knowledge_elements_assessment_id_idx ON knowledge_elements (assessment_id);
CREATE INDEX knowledge_elements_answer_id_idx ON knowledge_elements (answer_id);
CREATE INDEX knowledge_elements_skill_id_idx ON knowledge_elements (skill_id);

ALTER TABLE memberships ADD CONSTRAINT memberships_user_id_foreign FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE memberships ADD CONSTRAINT memberships_organization_id_foreign FOREIGN KEY (organization_id) REFERENCES organizations(id);
ALTER TABLE assessments ADD CONSTRAINT assessments_user_id_foreign FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE assessments ADD CONSTRAINT assessments_organization_id_foreign FOREIGN KEY (organization_id) REFERENCES organizations(id);
ALTER TABLE answers ADD CONSTRAINT answers_assessment_id_foreign FOREIGN KEY (assessment_id) REFERENCES assessments(id);
ALTER TABLE knowledge_elements ADD CONSTRAINT knowledge_elements_user_id_foreign FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE knowledge_elements ADD CONSTRAINT knowledge_elements_assessment_id_foreign FOREIGN KEY (assessment_id) REFERENCES assessments(id);
ALTER TABLE knowledge_elements ADD CONSTRAINT knowledge_elements_answer_id_foreign FOREIGN KEY (answer_id) REFERENCES answers(id);
"#
    )
}

/// Rows per "unit" were calibrated so that `units = size_mb * UNITS_PER_MB` gives about
/// `size_mb` MiB of `pg_database_size`.
const UNITS_PER_MB: f64 = 277.0;

/// What a run must reproduce: every table's row count and an order-independent hash of its
/// rows (a sum of per-row md5 prefixes: `string_agg` of a 1 GB table would exceed
/// PostgreSQL's 1 GB string limit), sequences, index definitions, constraints.
fn fingerprint(cluster: &PgCluster, db: &str) -> Vec<String> {
    let sql = r#"
\pset fieldsep '|'
SELECT format('SELECT ''table'', %L, count(*), coalesce(sum((''x'' || left(md5(t::text), 15))::bit(60)::bigint), 0) FROM public.%I t', c.relname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname \gexec
SELECT format('SELECT ''sequence'', %L, last_value, is_called FROM public.%I', c.relname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind = 'S' ORDER BY c.relname \gexec
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 2;
SELECT 'constraint', conrelid::regclass::text, conname, contype, convalidated, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 2, 3;
"#;
    cluster
        .superuser_psql(db, sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The fingerprint of the source's shape: schema public's six tables, or every schema.
fn fingerprint_of(args: &Args, cluster: &PgCluster, db: &str) -> Vec<String> {
    match args.many {
        Some(_) => many::fingerprint(cluster, db),
        None => fingerprint(cluster, db),
    }
}

/// `Ok(n)`: the target is the source, except `n` foreign keys that are `NOT VALID` there.
fn compare(source: &[String], target: &[String]) -> Result<usize, String> {
    let mut not_valid = 0;
    let mut diffs = Vec::new();
    for (i, s) in source.iter().enumerate() {
        let t = target.get(i).map(String::as_str).unwrap_or("<missing>");
        if s == t {
            continue;
        }
        // constraint|table|name|f|t|def vs constraint|table|name|f|f|def
        let sp: Vec<&str> = s.split('|').collect();
        let tp: Vec<&str> = t.split('|').collect();
        let fk_not_valid = sp.len() == 6
            && tp.len() == 6
            && sp[0] == "constraint"
            && sp[3] == "f"
            && sp[4] == "t"
            && tp[4] == "f"
            && sp[..4] == tp[..4]
            && tp[5] == format!("{} NOT VALID", sp[5]);
        if fk_not_valid {
            not_valid += 1;
        } else {
            diffs.push(format!("  source: {s}\n  target: {t}"));
        }
    }
    for t in target.iter().skip(source.len()) {
        diffs.push(format!("  source: <missing>\n  target: {t}"));
    }
    if diffs.is_empty() {
        Ok(not_valid)
    } else {
        Err(diffs.join("\n"))
    }
}

struct Cached {
    dump: PathBuf,
    archive: PathBuf,
    fingerprint: Vec<String>,
    source_bytes: u64,
}

/// Builds (or finds in the cache) the source's dump, archive and fingerprint.
fn cached_source(cluster: &PgCluster, args: &Args) -> Cached {
    let dir = match args.many {
        Some(m) => args.cache_dir.join(m.cache_name(SOURCE_VERSION)),
        None => args
            .cache_dir
            .join(format!("source-v{SOURCE_VERSION}-{}mb", args.size_mb)),
    };
    let dump = dir.join(format!("{BACKUP_NAME}.pgsql"));
    let archive = dir.join(format!("{BACKUP_NAME}.tar.gz"));
    let fp_file = dir.join("fingerprint.txt");
    let size_file = dir.join("source_bytes.txt");
    if !(dump.exists() && archive.exists() && fp_file.exists() && size_file.exists()) {
        fs::create_dir_all(&dir).expect("create the cache directory");
        cluster.create_source("bench_source");
        if let Some(m) = args.many {
            log(&format!(
                "building a source of {} schemas x {} tables in {}",
                m.schemas,
                m.tables,
                dir.display()
            ));
            cluster.superuser_psql("bench_source", &m.source_sql());
        } else {
            let units = ((args.size_mb as f64) * UNITS_PER_MB).max(1000.0) as u64;
            log(&format!(
                "building a source of ~{} MiB ({units} users) in {}",
                args.size_mb,
                dir.display()
            ));
            cluster.superuser_psql("bench_source", &source_sql(units));
        }
        cluster.superuser_psql("bench_source", "VACUUM ANALYZE");
        let bytes: u64 = cluster
            .superuser_psql(
                "bench_source",
                "SELECT pg_database_size(current_database())",
            )
            .trim()
            .parse()
            .unwrap();
        log(&format!(
            "source built: {} MiB on disk; dumping",
            bytes >> 20
        ));
        let partial = dir.join("dump.partial");
        cluster.pg_dump("bench_source", &partial);
        fs::rename(&partial, &dump).unwrap();
        log("archiving (tar + gzip, as Scalingo does)");
        let partial = dir.join("archive.partial");
        write_archive(&dump, &format!("{BACKUP_NAME}.pgsql"), &partial).expect("archive");
        fs::rename(&partial, &archive).unwrap();
        log("fingerprinting the source");
        let fp = fingerprint_of(args, cluster, "bench_source");
        fs::write(&fp_file, fp.join("\n")).unwrap();
        fs::write(&size_file, bytes.to_string()).unwrap();
        // Not needed any more: it would only take the target's place in the page cache.
        cluster.superuser_psql("postgres", "DROP DATABASE bench_source");
    } else {
        log(&format!("reusing the source cached in {}", dir.display()));
    }
    Cached {
        fingerprint: fs::read_to_string(&fp_file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
        source_bytes: fs::read_to_string(&size_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
        dump,
        archive,
    }
}

// ---------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += dir_size(&e.path());
        } else {
            // Allocated blocks: what the disk actually holds (sled preallocates sparsely).
            total += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
        }
    }
    total
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` to completion, polling the peak RSS of its process and the size of `watch`.
/// Returns (success, peak RSS KiB, disk high-water bytes).
fn run_watched(cmd: &mut Command, watch: &Path) -> (bool, u64, u64) {
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (mut rss, mut disk) = (0u64, 0u64);
    loop {
        if let Some(h) = vm_hwm_kib(pid) {
            rss = rss.max(h);
        }
        disk = disk.max(dir_size(watch));
        if let Some(status) = child.try_wait().unwrap() {
            return (status.success(), rss, disk);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct RunResult {
    label: &'static str,
    phases: Vec<(String, f64)>,
    total: f64,
    peak_rss_kib: Option<u64>,
    disk_high_water: u64,
    /// Seconds from the start until the replica was ready for its readers ([`wait_ready`]).
    ready: Option<f64>,
}

// ---------------------------------------------------------------------------------------
// A: the replicator
// ---------------------------------------------------------------------------------------

fn replicator_env(
    cmd: &mut Command,
    fake: &FakeScalingo,
    target: &TargetDb,
    state: &Path,
    env: &[(String, String)],
) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", state)
        .env("SCALINGO_APP", APP)
        .env("SCALINGO_API_TOKEN", API_TOKEN)
        .env("SCALINGO_AUTH_URL", fake.url())
        .env("SCALINGO_API_URL", fake.url())
        .env("SCALINGO_DB_URL", fake.url())
        .env("DATABASE_URL", &target.url)
        // The seed's rounds wipe the replicator's records with the rest: each replicator
        // round is then a "first wipe" of a database holding tables, which must be confirmed.
        .env("REPLICATOR_TARGET_CONFIRM", &target.dbname)
        .env("REPLICATOR_STATE_DIR", state)
        .env("USE_UNLOGGED_TABLES", "true")
        .env("RETRY_INITIAL_DELAY_SECONDS", "1")
        .env("MAX_RETRY_COUNT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Which replicator a side runs.
struct Side<'a> {
    label: &'static str,
    bin: &'a Path,
    env: &'a [(String, String)],
    reader: bool,
}

/// A reader of the target while a run works: `SELECT count(*) FROM organizations` every
/// 100 ms, as the target's role; each answer's time, and the errors.
fn spawn_reader(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<f64>, Vec<String>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut millis, mut errors) = (Vec::new(), Vec::new());
            let (client, conn) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok(c) => c,
                Err(e) => return (millis, vec![e.to_string()]),
            };
            tokio::spawn(conn);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                match client
                    .query_one("SELECT count(*) FROM organizations", &[])
                    .await
                {
                    Ok(_) => millis.push(t0.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => errors.push(
                        e.as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_else(|| e.to_string()),
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (millis, errors)
        })
    })
}

fn run_replicator(
    fake: &FakeScalingo,
    target: &TargetDb,
    work: &Path,
    side: &Side,
    round: u32,
) -> RunResult {
    let state = work.join("replicator-state");
    let _ = fs::remove_dir_all(&state);
    fs::create_dir_all(&state).unwrap();
    let tag = &side.label[..1];
    let log_path = work.join(format!("replicator-{tag}-round{round}.log"));
    let mut cmd = Command::new(side.bin);
    // Every round restores the same backup: without --force the records kept in the target
    // would (rightly) make the replicator skip it as already restored.
    cmd.args(["run", "--force"]);
    replicator_env(&mut cmd, fake, target, &state, side.env);
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&log_path).unwrap())
        .stderr(fs::File::create(work.join(format!("replicator-{tag}-round{round}.err"))).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = side
        .reader
        .then(|| spawn_reader(target.url.clone(), stop.clone()));
    let t0 = Instant::now();
    let (ok, rss, disk) = run_watched(&mut cmd, &state);
    let total = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(reader) = reader {
        let (mut millis, errors) = reader.join().unwrap();
        millis.sort_by(f64::total_cmp);
        let at = |q: f64| {
            millis
                .get(((millis.len().max(1) - 1) as f64 * q) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        log(&format!(
            "round {round}: {}: reader: {} queries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} error(s){}",
            side.label,
            millis.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            errors.len(),
            errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ));
    }
    if !ok {
        die(&format!(
            "replicator run failed; see {} and its .err",
            log_path.display()
        ));
    }
    let mut status = Command::new(side.bin);
    status.args(["status", "--json"]);
    replicator_env(&mut status, fake, target, &state, side.env);
    let out = status.output().expect("replicator status");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let phases = json["durations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["step"].as_str().unwrap_or("?").to_string(),
                        d["seconds"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = fs::remove_dir_all(&state);
    RunResult {
        label: side.label,
        phases,
        total,
        peak_rss_kib: Some(rss),
        disk_high_water: disk,
        ready: None,
    }
}

// ---------------------------------------------------------------------------------------
// B: the seed's procedure, with standard tools
// ---------------------------------------------------------------------------------------

fn pg_env(cmd: &mut Command, cluster: &PgCluster, target: &TargetDb) {
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port().to_string())
        .env("PGUSER", &target.role)
        .env("PGPASSWORD", &target.password)
        .env("PGDATABASE", &target.dbname)
        .env_remove("PGOPTIONS");
}

fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| die(&format!("{what}: {e}")));
    if !out.status.success() {
        die(&format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f`, and adds how long it took to `phases` as `name`.
fn timed(phases: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    phases.push((name.to_string(), t.elapsed().as_secs_f64()));
}

/// `psql -c sql` as the target's role (what the seed's script does); its output.
fn target_psql(cluster: &PgCluster, target: &TargetDb, sql: &str) -> String {
    let mut c = Command::new("psql");
    c.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    pg_env(&mut c, cluster, target);
    must(&mut c, "psql")
}

/// `pg_restore -j<jobs>` of `sections` of `dump`'s schema public into the target, as its role,
/// as the seed's script does.
fn pg_restore_into(
    cluster: &PgCluster,
    target: &TargetDb,
    dump: &Path,
    jobs: u32,
    sections: &[&str],
    every_schema: bool,
) {
    let mut c = Command::new("pg_restore");
    c.arg(format!("-j{jobs}"))
        .args(["--no-owner", "--no-comments"]);
    if !every_schema {
        c.args(["--schema", "public"]);
    }
    for s in sections {
        c.arg(format!("--section={s}"));
    }
    c.arg("--dbname").arg(&target.dbname).arg(dump);
    pg_env(&mut c, cluster, target);
    must(&mut c, "pg_restore");
}

fn run_seed(
    cluster: &PgCluster,
    fake: &FakeScalingo,
    target: &TargetDb,
    work: &Path,
    args: &Args,
) -> RunResult {
    let dir = work.join("seed");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let watch_dir = dir.clone();
    // The seed's disk, polled on a thread while its steps run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut high = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                high = dir_size(&watch_dir).max(high);
                std::thread::sleep(Duration::from_millis(100));
            }
            high
        })
    };
    let mut phases = Vec::new();
    let t0 = Instant::now();
    let archive = dir.join("archive.tar.gz");
    let url = fake.issue_download_url(DONE_BACKUP_ID);
    timed(&mut phases, "downloading", || {
        must(
            Command::new("curl")
                .args(["--silent", "--show-error", "--fail", "--output"])
                .arg(&archive)
                .arg(&url),
            "curl",
        );
    });
    timed(&mut phases, "extracting", || {
        must(
            Command::new("tar")
                .arg("xzf")
                .arg(&archive)
                .arg("-C")
                .arg(&dir),
            "tar xzf",
        );
    });
    let dump = dir.join(format!("{BACKUP_NAME}.pgsql"));
    let psql = |sql: &str| target_psql(cluster, target, sql);
    timed(&mut phases, "dropping", || {
        psql("DROP OWNED BY CURRENT_USER CASCADE");
    });
    let restore = |sections: &[&str]| {
        pg_restore_into(
            cluster,
            target,
            &dump,
            args.seed_jobs,
            sections,
            args.many.is_some(),
        );
    };
    timed(&mut phases, "restoring_pre_data", || restore(&["pre-data"]));
    timed(&mut phases, "unlogging", || {
        if args.many.is_some() {
            many::seed_unlogging(cluster, target);
            return;
        }
        let tables = psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'");
        for t in tables.lines().filter(|l| !l.is_empty()) {
            psql(&format!("ALTER TABLE \"{t}\" SET UNLOGGED"));
        }
    });
    timed(&mut phases, "restoring_data", || {
        restore(&["data", "post-data"])
    });
    let total = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let disk = poller.join().unwrap();
    let _ = fs::remove_dir_all(&dir);
    RunResult {
        label: "B seed",
        phases,
        total,
        peak_rss_kib: None,
        disk_high_water: disk,
        ready: None,
    }
}

// ---------------------------------------------------------------------------------------
// F: the server's own work, the floor under any restore of this dump into this server
// ---------------------------------------------------------------------------------------

/// Where the server keeps table `t`'s rows for F: in its data directory, which it can write.
fn floor_file(cluster: &PgCluster, table: &str) -> String {
    cluster
        .dir()
        .join("data")
        .join(format!("floor_{table}.copy"))
        .display()
        .to_string()
        .replace('\'', "''")
}

/// The bench's tables, written by the server to files of its own from a target that was just
/// checked to hold the source.
fn export_floor_files(cluster: &PgCluster, target: &TargetDb) -> Vec<String> {
    let tables: Vec<String> = cluster
        .superuser_psql(
            &target.dbname,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    for t in &tables {
        cluster.superuser_psql(
            &target.dbname,
            &format!("COPY public.\"{t}\" TO '{}'", floor_file(cluster, t)),
        );
    }
    tables
}

/// Busy jiffies (user, nice, system, irq, softirq, steal) of the whole host, from /proc/stat.
fn host_busy_jiffies() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| cpu.get(i).copied().unwrap_or(0))
        .sum()
}

/// Sum of psql's `\timing` lines ("Time: 2362.658 ms (00:02.363)"), in seconds.
fn timed_seconds(psql_output: &str) -> f64 {
    psql_output
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1000.0
}

/// What no client can save: the same schema, then every table's rows read by the server from
/// its own files (no download, no decompression, no client process, no network) and the
/// post-data section one statement at a time with no parallel workers, foreign keys `NOT
/// VALID` as the replicator's `FK_MODE=trust` adds them. Run alone on a quiet host, the
/// statements' time is the server's CPU time for the restore; divided by the cores it is the
/// shortest the rows' section of any restore can take on this host.
fn run_floor(cluster: &PgCluster, target: &TargetDb, dump: &Path, tables: &[String]) -> RunResult {
    let psql = |sql: &str| target_psql(cluster, target, sql);
    let mut phases = Vec::new();
    let t0 = Instant::now();
    timed(&mut phases, "dropping", || {
        psql("DROP OWNED BY CURRENT_USER CASCADE");
    });
    timed(&mut phases, "restoring_pre_data", || {
        pg_restore_into(cluster, target, dump, 1, &["pre-data"], false)
    });
    timed(&mut phases, "unlogging", || {
        for table in tables {
            psql(&format!("ALTER TABLE public.\"{table}\" SET UNLOGGED"));
        }
    });
    // The drop's and the schema's dirty pages are not the floor's to write.
    cluster.superuser_psql(&target.dbname, "CHECKPOINT");

    let post_data = must(
        Command::new("pg_restore")
            .args(["--no-owner", "--no-comments", "--schema", "public"])
            .args(["--section=post-data", "--file", "-"])
            .arg(dump),
        "pg_restore --section=post-data --file -",
    );
    // pg_dump writes each key as "ALTER TABLE ONLY t\n    ADD CONSTRAINT k FOREIGN KEY ...;".
    let post_data: String = post_data
        .lines()
        .map(|l| {
            if l.starts_with("    ADD CONSTRAINT ") && l.contains(" FOREIGN KEY ") {
                format!("{} NOT VALID;\n", l.trim_end_matches(';'))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    // The data section's other entries: the sequences' values.
    let list = must(
        Command::new("pg_restore").arg("--list").arg(dump),
        "pg_restore --list",
    );
    let list_file = cluster.dir().join("floor-sequences.list");
    fs::write(
        &list_file,
        list.lines()
            .filter(|l| l.contains(" SEQUENCE SET "))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let sequences = must(
        Command::new("pg_restore")
            .arg("--use-list")
            .arg(&list_file)
            .args(["--file", "-"])
            .arg(dump),
        "pg_restore --use-list (sequences) --file -",
    );
    let copies: String = tables
        .iter()
        .map(|t| format!("COPY public.\"{t}\" FROM '{}';\n", floor_file(cluster, t)))
        .collect();
    let serial = "\\timing on\nSET max_parallel_maintenance_workers = 0;\n";
    let busy0 = host_busy_jiffies();
    let copy_out = cluster.superuser_psql(&target.dbname, &format!("{serial}{copies}{sequences}"));
    let post_out = cluster.superuser_psql(&target.dbname, &format!("{serial}{post_data}"));
    let busy = (host_busy_jiffies() - busy0) as f64 / 100.0;
    phases.push((
        "copy_from_server_files".to_string(),
        timed_seconds(&copy_out),
    ));
    phases.push(("post_data_serial".to_string(), timed_seconds(&post_out)));
    log(&format!(
        "floor: host CPU busy {busy:.1} s during the server's work (the statements' sum should be close: the server's own CPU)"
    ));
    RunResult {
        label: "F server floor",
        phases,
        total: t0.elapsed().as_secs_f64(),
        peak_rss_kib: None,
        disk_high_water: 0,
        ready: None,
    }
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

/// Waits until the server is done with the last run: its autovacuum workers (a restore's new
/// tables get a `VACUUM` and an `ANALYZE` after it) and a checkpoint of its dirty buffers.
/// Without it the run after a restore pays for that restore's leftovers, and not evenly: the
/// seed's throttled download leaves the server idle long enough to absorb them, the
/// replicator's streamed download does not.
fn settle(cluster: &PgCluster) {
    let t = Instant::now();
    loop {
        let busy = cluster.superuser_psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        );
        if busy.trim() == "0" || t.elapsed() > Duration::from_secs(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.superuser_psql("postgres", "CHECKPOINT");
    if t.elapsed() > Duration::from_secs(1) {
        log(&format!(
            "settled: waited {:.1}s for the server's autovacuum and checkpoint",
            t.elapsed().as_secs_f64()
        ));
    }
}

/// Issue 23's readiness: every table of the target with rows has planner statistics, no
/// autovacuum worker is on the target's database, and no table is above autovacuum's vacuum,
/// insert or analyze thresholds (the server's settings; per-table options are not read).
const NOT_READY_SQL: &str = "SELECT
    (SELECT count(*) FROM pg_stat_activity
      WHERE backend_type = 'autovacuum worker' AND datname = current_database())
  + (SELECT count(*) FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
      WHERE c.relkind IN ('r', 'm') AND s.schemaname <> 'replicator'
        AND ((s.n_live_tup > 0 AND s.last_analyze IS NULL AND s.last_autoanalyze IS NULL)
          OR s.n_dead_tup > current_setting('autovacuum_vacuum_threshold')::float8
               + current_setting('autovacuum_vacuum_scale_factor')::float8 * greatest(c.reltuples, 0)
          OR s.n_ins_since_vacuum > current_setting('autovacuum_vacuum_insert_threshold')::float8
               + current_setting('autovacuum_vacuum_insert_scale_factor')::float8 * greatest(c.reltuples, 0)
          OR s.n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8
               + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(c.reltuples, 0)))";

/// Waits (at most 15 minutes) until the target is ready for its readers ([`NOT_READY_SQL`]);
/// returns how long it waited.
fn wait_ready(cluster: &PgCluster, target: &TargetDb) -> f64 {
    let t = Instant::now();
    loop {
        let left = cluster.superuser_psql(&target.dbname, NOT_READY_SQL);
        if left.trim() == "0" || t.elapsed() > Duration::from_secs(900) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    t.elapsed().as_secs_f64()
}

fn tune(cluster: &PgCluster, shared_buffers: &str, max_locks: u64, no_fsync: bool, defaults: bool) {
    // A production-like server, not the test harness's (fsync off, 16 MB of buffers), unless
    // --no-fsync; with --default-settings, PostgreSQL's own settings.
    let durable = if no_fsync { "off" } else { "on" };
    let (buffers, wal, connections) = if defaults {
        ("128MB", "1GB", 100)
    } else {
        (shared_buffers, "2GB", 40)
    };
    cluster.superuser_psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET fsync = {durable};\n\
             ALTER SYSTEM SET synchronous_commit = {durable};\n\
             ALTER SYSTEM SET full_page_writes = {durable};\n\
             ALTER SYSTEM SET shared_buffers = '{buffers}';\n\
             ALTER SYSTEM SET max_wal_size = '{wal}';\n\
             ALTER SYSTEM SET max_connections = {connections};\n\
             ALTER SYSTEM SET max_locks_per_transaction = {max_locks};"
        ),
    );
    cluster.stop();
    cluster.start_again();
}

fn main() {
    started();
    let mut args = parse_args();
    log(&format!(
        "replicator {}; {} cores; cache {}",
        args.bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.cache_dir.display()
    ));
    if args.many.is_some() && (args.floor || args.rules || args.reader) {
        die("--many runs without --floor, --rules or --reader");
    }
    let cluster = PgCluster::start();
    let max_locks = args.many.map_or(64, |m| m.max_locks_per_transaction());
    // pg_dump of a many-object source locks every table in one transaction.
    if args.many.is_some() {
        tune(
            &cluster,
            &args.shared_buffers,
            max_locks,
            args.no_fsync,
            args.default_settings,
        );
    }
    let source = cached_source(&cluster, &args);
    tune(
        &cluster,
        &args.shared_buffers,
        max_locks,
        args.no_fsync,
        args.default_settings,
    );
    if args.default_settings {
        log("the server runs with PostgreSQL's default settings (shared_buffers 128MB)");
    }
    if let Some(m) = args.many {
        log(&format!(
            "many objects: {} tables; max_locks_per_transaction = {max_locks}",
            m.total()
        ));
    }
    if args.no_fsync {
        log("the server runs with fsync, synchronous_commit and full_page_writes off");
    }
    let archive_len = fs::metadata(&source.archive).unwrap().len();
    let dump_len = fs::metadata(&source.dump).unwrap().len();
    log(&format!(
        "source {} MiB on disk, dump {} MiB, archive {} MiB",
        source.source_bytes >> 20,
        dump_len >> 20,
        archive_len >> 20
    ));
    let target = cluster.create_target("bench_target");
    let fake = FakeScalingo::start(FakeConfig::new(source.archive.clone()));
    if let Some(mb) = args.throttle_mb {
        fake.faults(|f| f.bytes_per_second = Some(mb * 1_000_000));
        log(&format!("downloads throttled to {mb} MB/s"));
    }
    let work = args.cache_dir.join("work");
    fs::create_dir_all(&work).unwrap();
    if args.rules {
        let rules = work.join("bench-rules.toml");
        fs::write(&rules, BENCH_RULES).unwrap();
        args.env
            .push(("REPLICA_RULES".into(), rules.display().to_string()));
        args.env.push((
            "MASKING_KEY".into(),
            "7c4e1a9b3f6d2e8a0b5c7d9e1f3a5b7c".into(),
        ));
        if args.b_bin.is_none() && args.b_env.is_empty() {
            args.b_bin = Some(args.bin.clone());
        }
    }
    // Both sides read the archive from the page cache, the first run included.
    must(
        Command::new("cat")
            .arg(&source.archive)
            .stdout(Stdio::null()),
        "cat",
    );

    let mut results: Vec<RunResult> = Vec::new();
    let mut floor_tables: Vec<String> = Vec::new();
    for round in 1..=args.rounds {
        for side in ['a', 'b', 'f'] {
            if side == 'f' && !args.floor {
                continue;
            }
            if side != 'f' && args.only.is_some_and(|o| o != side) {
                continue;
            }
            settle(&cluster);
            log(&format!("round {round}: {}", side.to_ascii_uppercase()));
            let r = if side == 'f' {
                if floor_tables.is_empty() {
                    // The run before this one left the source in the target (checked).
                    floor_tables = export_floor_files(&cluster, &target);
                }
                run_floor(&cluster, &target, &source.dump, &floor_tables)
            } else if side == 'a' {
                let a = Side {
                    label: "A replicator",
                    bin: &args.bin,
                    env: &args.env,
                    reader: args.reader,
                };
                run_replicator(&fake, &target, &work, &a, round)
            } else if args.b_bin.is_some() || !args.b_env.is_empty() {
                let b = Side {
                    label: "B replicator (variant)",
                    bin: args.b_bin.as_deref().unwrap_or(&args.bin),
                    env: &args.b_env,
                    reader: args.reader,
                };
                run_replicator(&fake, &target, &work, &b, round)
            } else {
                run_seed(&cluster, &fake, &target, &work, &args)
            };
            let mut r = r;
            if args.ready && side != 'f' {
                let waited = wait_ready(&cluster, &target);
                r.ready = Some(r.total + waited);
                log(&format!(
                    "round {round}: {} ready for its readers {waited:.1}s after it ended ({:.1}s from its start)",
                    r.label,
                    r.total + waited
                ));
            }
            log(&format!(
                "round {round}: {} took {:.1}s ({})",
                r.label,
                r.total,
                r.phases
                    .iter()
                    .map(|(p, s)| format!("{p}={s:.1}s"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            if args.verify && args.rules && side == 'a' {
                log(&format!(
                    "round {round}: {}: content check skipped (REPLICA_RULES masks the target on purpose)",
                    r.label
                ));
            } else if args.verify {
                let t = Instant::now();
                let fp = fingerprint_of(&args, &cluster, &target.dbname);
                match compare(&source.fingerprint, &fp) {
                    Ok(n) => log(&format!(
                        "round {round}: {}: the target holds the source ({n} foreign key(s) NOT VALID; checked in {:.0}s)",
                        r.label,
                        t.elapsed().as_secs_f64()
                    )),
                    Err(d) => die(&format!(
                        "round {round}: {}: the target differs from the source:\n{d}",
                        r.label
                    )),
                }
            }
            results.push(r);
        }
    }
    report(&args, &source, archive_len, dump_len, &results);
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(args: &Args, source: &Cached, archive_len: u64, dump_len: u64, results: &[RunResult]) {
    let mut out = String::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    out.push_str(&format!(
        "\n## replicate benchmark: source {} MiB on disk, dump {} MiB, archive {} MiB, {cores} cores, {} round(s)\n",
        source.source_bytes >> 20,
        dump_len >> 20,
        archive_len >> 20,
        args.rounds
    ));
    if !args.env.is_empty() {
        let shown: Vec<(String, String)> = args
            .env
            .iter()
            .map(|(k, v)| {
                let v = if k == "MASKING_KEY" {
                    "[redacted]".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        out.push_str(&format!("A replicator extra env: {shown:?}\n"));
    }
    if args.rules {
        out.push_str(&format!(
            "A runs with REPLICA_RULES:\n```toml{BENCH_RULES}```\n"
        ));
    }
    if let Some(b) = &args.b_bin {
        out.push_str(&format!(
            "B is the replicator {} (not the seed)\n",
            b.display()
        ));
    }
    if !args.b_env.is_empty() {
        out.push_str(&format!("B replicator extra env: {:?}\n", args.b_env));
    }
    // Phase order as first seen.
    let mut order: Vec<String> = Vec::new();
    for r in results {
        for (p, _) in &r.phases {
            if !order.contains(p) {
                order.push(p.clone());
            }
        }
    }
    out.push_str("\n| run | ");
    out.push_str(&order.join(" | "));
    out.push_str(" | total (s) | ready (s) | peak RSS (MiB) | disk high-water (MiB) |\n|---|");
    out.push_str(&"---|".repeat(order.len() + 4));
    out.push('\n');
    for r in results {
        let by: BTreeMap<&str, f64> = r.phases.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        out.push_str(&format!("| {} |", r.label));
        for p in &order {
            match by.get(p.as_str()) {
                Some(s) => out.push_str(&format!(" {s:.1} |")),
                None => out.push_str(" - |"),
            }
        }
        out.push_str(&format!(
            " {:.1} | {} | {} | {} |\n",
            r.total,
            r.ready
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.peak_rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            r.disk_high_water >> 20
        ));
    }
    let a: Vec<f64> = results
        .iter()
        .filter(|r| r.label.starts_with('A'))
        .map(|r| r.total)
        .collect();
    let b: Vec<f64> = results
        .iter()
        .filter(|r| r.label.starts_with('B'))
        .map(|r| r.total)
        .collect();
    if !a.is_empty() && !b.is_empty() {
        let (ma, mb) = (median(a.clone()), median(b.clone()));
        out.push_str(&format!(
            "\nend to end, median: A {ma:.1}s, B {mb:.1}s, ratio A / B = {:.2} (targets against the seed: <= 0.60 on loopback with the defaults, <= 0.55 streamed with --throttle-mb 25 --env MAX_WORK_DISK=64MiB; <= 1.10 with --rules)\n",
            ma / mb
        ));
    }
    let ready = |side: char| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.label.starts_with(side))
            .filter_map(|r| r.ready)
            .collect()
    };
    let (ra, rb) = (ready('A'), ready('B'));
    if !ra.is_empty() && !rb.is_empty() {
        let pairs: Vec<String> = ra
            .iter()
            .zip(&rb)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        out.push_str(&format!(
            "time to ready, median: A {:.1}s, B {:.1}s, ratio A / B = {:.2} (pairs {}; target <= 0.50)\n",
            median(ra.clone()),
            median(rb.clone()),
            median(ra) / median(rb),
            pairs.join(", ")
        ));
    }
    let f: Vec<f64> = results
        .iter()
        .filter(|r| r.label.starts_with('F'))
        .map(|r| {
            r.phases
                .iter()
                .filter(|(p, _)| p == "copy_from_server_files" || p == "post_data_serial")
                .map(|(_, s)| s)
                .sum()
        })
        .collect();
    if !f.is_empty() {
        let work = median(f);
        let a_rows = median(
            results
                .iter()
                .filter(|r| r.label.starts_with('A'))
                .filter_map(|r| r.phases.iter().find(|(p, _)| p == "restoring_data"))
                .map(|(_, s)| *s)
                .collect(),
        );
        out.push_str(&format!(
            "\nF, the server's own work, one statement at a time (median): {work:.1}s; over {cores} cores: {:.1}s, the floor of any restore's rows section on this host (A's restoring_data, median: {a_rows:.1}s)\n",
            work / cores as f64
        ));
        if !b.is_empty() {
            out.push_str(&format!(
                "0.60 x B's median = {:.1}s end to end\n",
                0.6 * median(b.clone())
            ));
        }
    }
    if let Some(m) = args.many {
        if args.no_fsync {
            out.push_str("\nserver: fsync, synchronous_commit, full_page_writes off\n");
        }
        out.push_str(&many::per_table(results, m.total()));
    }
    let rss = results.iter().filter_map(|r| r.peak_rss_kib).max();
    let disk = results
        .iter()
        .filter(|r| r.label.starts_with('A'))
        .map(|r| r.disk_high_water)
        .max();
    if let (Some(rss), Some(disk)) = (rss, disk) {
        out.push_str(&format!(
            "replicator peak RSS {:.1} MiB (target <= 64); disk high-water {} MiB vs archive + dump {} MiB (target <=)\n",
            rss as f64 / 1024.0,
            disk >> 20,
            (archive_len + dump_len) >> 20
        ));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    let results_file = args.cache_dir.join("results.md");
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_file)
    {
        let _ = writeln!(
            f,
            "{out}\n(at unix time {})",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
    }
}
