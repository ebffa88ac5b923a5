//! The demo `scripts/run` gives with nothing configured (`examples/demo.rs` is its `main`;
//! `tests/it/demo.rs` runs it too): a throwaway PostgreSQL cluster, a sample shop database
//! (`examples/demo/shop.sql`) dumped with the real `pg_dump` and wrapped as Scalingo wraps its
//! backups, served by the fake Scalingo on loopback; a real `replicator run` into a target
//! owned by a non-superuser role, with the demo's masking rules; then `replicator status`,
//! what to set for a real run, and everything it started stopped and removed.
//!
//! The cluster's watchdog (`pg.rs`) stops it even when the demo is killed or interrupted.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::fake_scalingo::{API_TOKEN, APP, FakeConfig, FakeScalingo, write_archive};
use super::pg::PgCluster;

const SHOP_SQL: &str = include_str!("../../../examples/demo/shop.sql");
const RULES: &str = include_str!("../../../examples/demo/replica-rules.toml");
/// The dump's name inside the archive, as Scalingo names a backup.
const BACKUP: &str = "20261123041000_my_app_4553";
/// How long the sample's download takes (throttled, so that its progress can be seen).
const DOWNLOAD_SECONDS: u64 = 4;

/// What the demo did, for a caller that checks it.
pub struct Demo {
    /// `replicator run`'s and `replicator status`' output, when captured.
    pub run: Option<Output>,
    pub status: Option<Output>,
    /// Rows of each table in the source and in the replica, by name.
    pub rows: Vec<(String, u64, u64)>,
    /// A customer's email in the source and in the replica.
    pub email: (String, String),
    /// The cluster's directory and port, gone once [`run`] returned.
    pub cluster_dir: PathBuf,
    pub cluster_port: u16,
    pub seconds: f64,
}

/// Runs the demo with the `replicator` binary at `bin`. `capture`: keep the replicator's
/// output (a test) instead of showing it on this terminal (a person, who sees the bar).
pub fn run(bin: &Path, capture: bool) -> Result<Demo, String> {
    let started = Instant::now();
    say(
        "Demo: nothing is configured (SCALINGO_APP, SOURCE_DATABASE_URL, DATABASE_URL), so this replicates a sample shop database on this machine.",
    );
    let files = tempfile::Builder::new()
        .prefix("replicator-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;

    say("Starting a throwaway PostgreSQL cluster on 127.0.0.1...");
    let cluster = PgCluster::start();
    let (cluster_dir, cluster_port) = (cluster.dir().to_path_buf(), cluster.port());
    cluster.create_source("demo_shop");
    cluster.superuser_psql("demo_shop", SHOP_SQL);
    let dump = files.path().join(format!("{BACKUP}.pgsql"));
    cluster.pg_dump("demo_shop", &dump);
    let archive = files.path().join(format!("{BACKUP}.tar.gz"));
    let len = write_archive(&dump, &format!("{BACKUP}.pgsql"), &archive)
        .map_err(|e| format!("cannot write the sample backup: {e}"))?;
    let target = cluster.create_target("demo_replica");
    let rules = files.path().join("replica-rules.toml");
    std::fs::write(&rules, RULES).map_err(|e| format!("cannot write the rules: {e}"))?;
    say(&format!(
        "Sample backup: database demo_shop (customers, products, orders, order_items, page_views: {} rows), dumped with pg_dump -Fc into {BACKUP}.tar.gz ({} KiB).",
        count_rows(&cluster, "demo_shop")
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        len / 1024
    ));

    let fake = FakeScalingo::start(FakeConfig::new(archive.clone()));
    fake.faults(|f| f.bytes_per_second = Some((len / DOWNLOAD_SECONDS).max(1024)));
    say(&format!(
        "A fake Scalingo API on {} serves it as app {APP}'s newest backup; the target is database demo_replica, owned by role demo_replica (not a superuser); REPLICA_RULES masks the customers' emails and names.\n",
        fake.url()
    ));

    let state = files.path().join("state");
    let replicator = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env_remove("SOURCE_DATABASE_URL")
            .env_remove("REPLICATOR_TARGET_CONFIRM")
            .env("SCALINGO_APP", APP)
            .env("SCALINGO_API_TOKEN", API_TOKEN)
            .env("SCALINGO_AUTH_URL", fake.url())
            .env("SCALINGO_API_URL", fake.url())
            .env("SCALINGO_DB_URL", fake.url())
            .env("DATABASE_URL", &target.url)
            .env("REPLICATOR_STATE_DIR", &state)
            .env("REPLICA_RULES", &rules)
            .env("MASKING_KEY", random_key())
            .stdin(Stdio::null());
        if capture {
            c.output()
        } else {
            c.status().map(|status| Output {
                status,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        }
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))
    };
    say("$ replicator run");
    let run = replicator(&["run"])?;
    if !run.status.success() {
        return Err(format!(
            "replicator run failed ({}){}",
            run.status,
            captured(&run)
        ));
    }
    say("\n$ replicator status");
    let status = replicator(&["status"])?;

    let source_rows = count_rows(&cluster, "demo_shop");
    let replica_rows = count_rows(&cluster, "demo_replica");
    let rows: Vec<(String, u64, u64)> = source_rows
        .iter()
        .map(|(t, n)| {
            let r = replica_rows
                .iter()
                .find(|(rt, _)| rt == t)
                .map_or(0, |(_, r)| *r);
            (t.clone(), *n, r)
        })
        .collect();
    let email_of = |db: &str| {
        cluster
            .superuser_psql(db, "SELECT email FROM customers WHERE id = 42")
            .trim()
            .to_string()
    };
    let email = (email_of("demo_shop"), email_of("demo_replica"));
    say(&format!(
        "\nThe replica (database demo_replica): {}; customer 42's email is {} in the source, {} in the replica.",
        rows.iter()
            .map(|(t, _, r)| format!("{t} {r} rows"))
            .collect::<Vec<_>>()
            .join(", "),
        email.0,
        email.1
    ));
    say("\nFor a real run, set (README.md, Configuration):");
    say(
        "  SCALINGO_APP=<production app> SCALINGO_API_TOKEN=<token>, or SOURCE_DATABASE_URL=<live database>",
    );
    say(
        "  DATABASE_URL=postgres://<role>:<password>@<host>/<database>: the replica, owned by a role that is not a superuser",
    );
    say(
        "  then `scripts/run check` (changes nothing), `scripts/run` for one replication, SCHEDULE for `replicator daemon`",
    );

    drop(fake);
    drop(target);
    drop(cluster);
    drop(files);
    let seconds = started.elapsed().as_secs_f64();
    say(&format!(
        "\nDemo done in {seconds:.1}s; stopped and removed: the PostgreSQL cluster (port {cluster_port}), the fake Scalingo, the sample backup and the state directory."
    ));
    Ok(Demo {
        run: capture.then_some(run),
        status: capture.then_some(status),
        rows,
        email,
        cluster_dir,
        cluster_port,
        seconds,
    })
}

fn say(line: &str) {
    println!("{line}");
}

fn captured(o: &Output) -> String {
    if o.stdout.is_empty() && o.stderr.is_empty() {
        return String::new();
    }
    format!(
        ":\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rows of each table of schema public in `db`, by name.
fn count_rows(cluster: &PgCluster, db: &str) -> Vec<(String, u64)> {
    [
        "customers",
        "products",
        "orders",
        "order_items",
        "page_views",
    ]
    .into_iter()
    .map(|t| {
        let n = cluster
            .try_superuser_psql(db, &format!("SELECT count(*) FROM public.{t}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        (t.to_string(), n)
    })
    .collect()
}

/// A fresh 128-bit masking key for the demo's run (never shown).
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether anything still listens on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}
