//! TLS to the target (`sslmode` in `DATABASE_URL`) against a real PostgreSQL 15 with `ssl=on`
//! and a self-signed certificate made by `openssl`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use replicator::replica::PgEndpoint;
use replicator::secret::Secret;

use crate::common::pg::{PgCluster, TargetDb, fingerprint, shared_cluster, unique_name};
use crate::common::scenario::Scenario;

/// One TLS cluster for the module: `ssl=on` with a certificate for `localhost`, and a
/// pg_hba.conf that takes TCP connections only over TLS, so that a plain-text session (ours or
/// pg_restore's) cannot pass unnoticed.
fn tls_cluster() -> &'static (PgCluster, PathBuf) {
    static CLUSTER: OnceLock<(PgCluster, PathBuf)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = PgCluster::start();
        let dir = cluster.dir().to_path_buf();
        let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
        self_signed_localhost(&crt, &key);
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&key)
                .arg(&crt)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let hba = dir.join("data/pg_hba.conf");
        let rules: String = fs::read_to_string(&hba)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(&hba, rules).unwrap();
        // `ssl` is reloadable since PostgreSQL 10: no restart, no harness hook needed.
        cluster.superuser_psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl = on; ALTER SYSTEM SET ssl_cert_file = '{}'; \
                 ALTER SYSTEM SET ssl_key_file = '{}'; SELECT pg_reload_conf();",
                crt.display(),
                key.display()
            ),
        );
        for _ in 0..100 {
            if cluster.superuser_psql("postgres", "SHOW ssl").trim() == "on" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(cluster.superuser_psql("postgres", "SHOW ssl").trim(), "on");
        let plain = Command::new("psql")
            .args([
                "-X",
                "-At",
                "-c",
                "SELECT 1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &cluster.port().to_string(), "-d", "postgres"])
            .env("PGSSLMODE", "disable")
            .env("PGPASSWORD", "none")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&plain.stderr).contains("no pg_hba.conf entry"),
            "plain TCP must be refused: {plain:?}"
        );
        (cluster, crt)
    })
}

/// The test target's URL with another host and query.
fn url(db: &TargetDb, host: &str, query: &str) -> String {
    let base = db.url.split_once('?').unwrap().0;
    base.replacen("127.0.0.1", host, 1) + "?" + query
}

async fn session_ssl(url: &str) -> Result<bool, String> {
    let target = PgEndpoint::parse(&Secret::new(url.to_string())).map_err(|e| e.to_string())?;
    let client = target.connect().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_verify_full_connect_over_tls() {
    let (cluster, crt) = tls_cluster();
    let db = cluster.create_target(&unique_name("tls_tgt"));
    assert!(
        session_ssl(&url(&db, "127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    // prefer takes TLS when the server offers it.
    assert!(
        session_ssl(&url(&db, "127.0.0.1", "sslmode=prefer"))
            .await
            .unwrap()
    );
    let full = format!("sslmode=verify-full&sslrootcert={}", crt.display());
    assert!(session_ssl(&url(&db, "localhost", &full)).await.unwrap());
    // verify-ca does not look at the name: 127.0.0.1 is not in the certificate.
    let ca = format!("sslmode=verify-ca&sslrootcert={}", crt.display());
    assert!(session_ssl(&url(&db, "127.0.0.1", &ca)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_failures_are_permanent_and_say_what_to_do() {
    let (cluster, crt) = tls_cluster();
    let db = cluster.create_target(&unique_name("tls_bad"));
    // Self-signed: no public root vouches for it.
    let target =
        PgEndpoint::parse(&Secret::new(url(&db, "localhost", "sslmode=verify-full"))).unwrap();
    let e = target.connect().await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
    assert!(!e.to_string().contains(&db.password), "{e}");
    eprintln!("verify-full without root: {e}");
    // The right root but the wrong name.
    let full = format!("sslmode=verify-full&sslrootcert={}", crt.display());
    let target = PgEndpoint::parse(&Secret::new(url(&db, "127.0.0.1", &full))).unwrap();
    let e = target.connect().await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("host"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_plain_server_fails_clearly_and_prefer_still_works() {
    let cluster = shared_cluster();
    let db = cluster.create_target(&unique_name("tls_plain"));
    let target = PgEndpoint::parse(&Secret::new(url(&db, "127.0.0.1", "sslmode=require"))).unwrap();
    let e = target.connect().await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(
        e.to_string()
            .contains("the server does not accept TLS but DATABASE_URL says sslmode=require"),
        "{e}"
    );
    assert!(
        !session_ssl(&url(&db, "127.0.0.1", "sslmode=prefer"))
            .await
            .unwrap()
    );
    assert!(
        !session_ssl(&url(&db, "127.0.0.1", "sslmode=disable"))
            .await
            .unwrap()
    );
}

#[test]
fn restore_dump_with_sslmode_require_reaches_a_tls_only_target() {
    let (cluster, _) = tls_cluster();
    let mut s = Scenario::rich("tls_e2e");
    let db = cluster.create_target(&unique_name("tls_e2e_dst"));
    // The cluster refuses plain TCP: pg_restore succeeds only if it got PGSSLMODE.
    s.set_env("DATABASE_URL", &url(&db, "127.0.0.1", "sslmode=require"));
    let dump = s.dump.to_str().unwrap().to_string();
    s.run_ok(&["restore", "--dump", &dump]);
    assert_eq!(fingerprint(cluster, &db.dbname), s.expected_fingerprint());
}

/// Issue 13, the deliberate breaks: a certificate pinned by `sslrootcert` is matched by its
/// bytes and signature, not its name. An impostor self-signed certificate with the server's
/// very subject (`CN=localhost`), given as `sslrootcert`, must not let `verify-full` (nor
/// `verify-ca`) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_certificate_with_the_same_subject_fails_verification() {
    let (cluster, _crt) = tls_cluster();
    let db = cluster.create_target(&unique_name("tls_impostor"));
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (
        dir.path().join("impostor.crt"),
        dir.path().join("impostor.key"),
    );
    self_signed_localhost(&crt, &key);
    for (host, mode) in [("localhost", "verify-full"), ("127.0.0.1", "verify-ca")] {
        let query = format!("sslmode={mode}&sslrootcert={}", crt.display());
        let target = PgEndpoint::parse(&Secret::new(url(&db, host, &query))).unwrap();
        let e = target.connect().await.unwrap_err();
        assert!(!e.is_transient(), "{mode}: {e}");
        assert!(e.to_string().contains("sslrootcert"), "{mode}: {e}");
    }
}

/// A new self-signed certificate for `CN=localhost` and its key (openssl).
fn self_signed_localhost(crt: &std::path::Path, key: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(crt)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
