//! Everything the replicator does to the target database: the advisory lock, the checks, the
//! wipe, `pg_restore` in sections, unlogged tables.
//!
//! The steps here know neither the store nor the machine: they take a [`Target`] (and a dump
//! path) and return a result whose error is already sorted into transient or permanent
//! ([`StepError`]), so that the driver's retry loop never burns attempts on a wrong password.
//!
//! The password lives in a [`Secret`] from the moment `DATABASE_URL` is parsed. It reaches the
//! server through `tokio-postgres`'s config, and `pg_restore` through `PGPASSWORD` in the child's
//! environment (never its command line, which any local user can read in `/proc/<pid>/cmdline`).

use std::collections::VecDeque;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::dump::toc::{Toc, TocError, TocSection};
use crate::error::StepError;
use crate::machine::Section;
use crate::secret::Secret;

/// The advisory lock key every replicator takes on its target: the ASCII bytes of "replicat".
/// Fixed forever: two versions of the replicator must exclude each other too.
pub const LOCK_KEY: i64 = i64::from_be_bytes(*b"replicat");

/// `application_name` of the session that holds [`LOCK_KEY`], so that a second replicator (or a
/// human in `pg_stat_activity`) can see who holds the target.
pub const LOCK_APPLICATION_NAME: &str = "replicator lock";

/// `application_name` (`PGAPPNAME`) of `pg_restore`'s sessions: what
/// [`terminate_leftover_restores`] looks for after a crash.
pub const RESTORE_APPLICATION_NAME: &str = "replicator-restore";

/// `application_name` of the short-lived sessions of the checks, the wipe and
/// `set_unlogged_with_dump`.
pub const CONTROL_APPLICATION_NAME: &str = "replicator";

/// How many `pg_restore` stderr lines an error message keeps.
const STDERR_TAIL: usize = 20;

/// A `DROP OWNED` or `ALTER TABLE` that waits this long on a lock held by someone else (a
/// Metabase query on the old copy) fails as transient rather than hanging the night away.
const LOCK_TIMEOUT: &str = "5min";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong on the target. Every message names the target as `role@host:port/db`
/// (never the password) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "DATABASE_URL is not a usable PostgreSQL URL: {reason}; fix DATABASE_URL (expected postgres://user:password@host:port/dbname?sslmode=prefer)"
    )]
    InvalidUrl { reason: String },

    #[error(
        "cannot read the root certificate(s) {path} for {target}: {detail}; fix sslrootcert in DATABASE_URL (a PEM file of the CA that signed the server's certificate, readable by the replicator)"
    )]
    TlsRootCert {
        target: String,
        path: PathBuf,
        detail: String,
    },

    #[error("cannot connect to the target {target}: {detail}{hint}")]
    Connect {
        target: String,
        detail: String,
        hint: &'static str,
        transient: bool,
    },

    #[error("{what} on the target {target} failed: {detail}{hint}")]
    Query {
        target: String,
        what: &'static str,
        detail: String,
        hint: &'static str,
        transient: bool,
    },

    #[error(
        "the target role of {target} is a superuser: the replicator runs DROP OWNED BY CURRENT_USER, which for a superuser would reach objects it must not touch; set DATABASE_URL to the application's own (non-superuser) role that owns the database"
    )]
    SuperuserTarget { target: String },

    #[error(
        "cannot run {program}: {source}; install the PostgreSQL client tools (pg_restore) and make sure they are on PATH"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the dump {path} was written by a newer pg_dump (archive version {archive_version}) than the local pg_restore can read ({local}); install a newer pg_restore (the PostgreSQL client of the production server's major version or later)"
    )]
    DumpTooNew {
        path: PathBuf,
        archive_version: String,
        local: String,
    },

    #[error(
        "the dump {path} is not readable by pg_restore --list ({status}): {stderr}; it is not a complete pg_dump -Fc archive, the backup must be downloaded again or another one chosen"
    )]
    DumpUnreadable {
        path: PathBuf,
        status: String,
        stderr: String,
    },

    #[error(
        "pg_restore ({section}) into {target} failed ({status}); last lines of its output:\n{stderr}{hint}"
    )]
    Restore {
        target: String,
        section: &'static str,
        status: String,
        stderr: String,
        hint: &'static str,
        transient: bool,
    },
}

impl PostgresError {
    pub fn is_transient(&self) -> bool {
        match self {
            PostgresError::Connect { transient, .. }
            | PostgresError::Query { transient, .. }
            | PostgresError::Restore { transient, .. } => *transient,
            PostgresError::InvalidUrl { .. }
            | PostgresError::TlsRootCert { .. }
            | PostgresError::SuperuserTarget { .. }
            | PostgresError::Spawn { .. }
            | PostgresError::DumpTooNew { .. }
            | PostgresError::DumpUnreadable { .. } => false,
        }
    }
}

impl From<PostgresError> for StepError {
    fn from(e: PostgresError) -> StepError {
        if e.is_transient() {
            StepError::transient(e.to_string())
        } else {
            StepError::permanent(e.to_string())
        }
    }
}

/// Transient or permanent, and a hint, for an error from `tokio-postgres`.
fn classify(e: &tokio_postgres::Error) -> (bool, &'static str) {
    if let Some(code) = e.code() {
        let c = code.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            (
                false,
                "; check the role and password in DATABASE_URL (and the server's pg_hba.conf)",
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (
                false,
                "; the database does not exist: fix the database name in DATABASE_URL",
            )
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            (
                false,
                "; the role lacks a privilege: DATABASE_URL must name the role that owns the target database",
            )
        } else if c.starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::QUERY_CANCELED
        {
            (true, "; will retry")
        } else {
            (false, "")
        };
    }
    // No SQLSTATE: the socket (refused, reset, timed out, closed) or the protocol. A refused or
    // cut connection is the server restarting or the network blinking, worth a retry; the
    // retry count bounds a host name that will never resolve.
    let text = error_text(e);
    if text.contains("password missing") || text.contains("authentication") {
        (false, "; check the role and password in DATABASE_URL")
    } else {
        (true, "; will retry")
    }
}

/// `tokio_postgres::Error`'s `Display` says only "db error": add the server's message.
fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        s
    } else {
        match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verification {
    Nothing,
    Chain,
    ChainAndHost,
}

enum TlsFailure {
    /// The server answered the TLS request with "no" and the sslmode insists.
    Refused,
    /// The handshake rejected the server's certificate.
    Certificate,
}

/// A TLS failure is permanent (retrying gets the same certificate), unless it is the network
/// cutting the handshake, which [`classify`] treats like any other cut connection.
fn tls_failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains("server does not support TLS") {
            return Some(TlsFailure::Refused);
        }
        if c.downcast_ref::<rustls::Error>().is_some()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return Some(TlsFailure::Certificate);
        }
        cause = c.source();
    }
    None
}

/// `sslmode=require` without a root certificate: encryption against eavesdropping only, as in
/// libpq. The handshake signatures are still checked, so the session key is the server's.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`. webpki checks the chain before the name, so for `verify-ca`
/// a name error means the chain passed.
///
/// A server certificate that is itself in `sslrootcert` (the self-signed certificate of
/// `openssl req -x509`, which libpq accepts) is trusted by that exact match: webpki refuses it
/// (a CA certificate used as an end entity, often with only a CN and no subjectAltName), so
/// its validity period and, for `verify-full`, its names are checked here as libpq does.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    check_host: bool,
}

fn bad_cert(e: rustls::CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(e)
}

impl Verifier {
    fn verify_pinned(
        &self,
        der: &[u8],
        server_name: &rustls::pki_types::ServerName<'_>,
        now: rustls::pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        use x509_cert::der::Decode;
        use x509_cert::der::oid::AssociatedOid;
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|_| bad_cert(rustls::CertificateError::BadEncoding))?;
        let tbs = &cert.tbs_certificate;
        let now = Duration::from_secs(now.as_secs());
        if now < tbs.validity.not_before.to_unix_duration() {
            return Err(bad_cert(rustls::CertificateError::NotValidYet));
        }
        if now > tbs.validity.not_after.to_unix_duration() {
            return Err(bad_cert(rustls::CertificateError::Expired));
        }
        if !self.check_host {
            return Ok(());
        }
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == SubjectAltName::OID {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad_cert(rustls::CertificateError::BadEncoding))?;
                for name in san.0 {
                    match name {
                        GeneralName::DnsName(n) => dns.push(n.to_string()),
                        GeneralName::IpAddress(ip) => ips.push(ip.as_bytes().to_vec()),
                        _ => {}
                    }
                }
            }
        }
        // libpq looks at the CN only when there is no DNS subjectAltName.
        if dns.is_empty() {
            for rdn in tbs.subject.0.iter() {
                for atv in rdn.0.iter() {
                    if atv.oid == x509_cert::der::oid::db::rfc4519::CN {
                        if let Ok(cn) = std::str::from_utf8(atv.value.value()) {
                            dns.push(cn.to_string());
                        }
                    }
                }
            }
        }
        let matches = match server_name {
            rustls::pki_types::ServerName::DnsName(host) => {
                let host = host.as_ref().to_ascii_lowercase();
                dns.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    match n.strip_prefix("*.") {
                        Some(suffix) => host
                            .split_once('.')
                            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                        None => n == host,
                    }
                })
            }
            rustls::pki_types::ServerName::IpAddress(ip) => {
                let want: Vec<u8> = match std::net::IpAddr::from(*ip) {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                ips.contains(&want)
            }
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(bad_cert(rustls::CertificateError::NotValidForName))
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            self.verify_pinned(end_entity, server_name, now)?;
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The target database, parsed from `DATABASE_URL`.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    user: String,
    password: Option<Secret>,
    dbname: String,
    sslmode: Option<String>,
    /// libpq's `sslrootcert`: a PEM file, or `system` for the public web roots.
    sslrootcert: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", self.describe())
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, PostgresError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PostgresError::InvalidUrl {
                    reason: format!("bad percent-encoding in the {what}"),
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PostgresError::InvalidUrl {
        reason: format!("the {what} is not UTF-8 once decoded"),
    })
}

impl Target {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=prefer` (or `postgresql://`),
    /// the form Scalingo gives. Error messages never quote the URL: it holds the password.
    pub fn parse(database_url: &Secret) -> Result<Target, StepError> {
        Ok(Self::parse_inner(database_url.expose())?)
    }

    fn parse_inner(url: &str) -> Result<Target, PostgresError> {
        let invalid = |reason: &str| PostgresError::InvalidUrl {
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| invalid("it does not start with postgres:// or postgresql://"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, p),
            None => (before_query, ""),
        };
        // The password may contain '@' when not encoded: the host part is after the last one.
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| invalid("it has no user (user:password@host)"))?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let user = percent_decode(user, "user")?;
        if user.is_empty() {
            return Err(invalid("the user is empty"));
        }
        let password = password
            .map(|p| percent_decode(p, "password"))
            .transpose()?
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("unterminated [IPv6] host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        let port = match port {
            None | Some("") => 5432,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| invalid("the port is not a number between 1 and 65535"))?,
        };
        let dbname = percent_decode(path.trim_end_matches('/'), "database name")?;
        let dbname = if dbname.is_empty() {
            user.clone()
        } else {
            dbname
        };
        let mut sslmode = None;
        let mut sslrootcert = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "sslmode" {
                let v = percent_decode(v, "sslmode")?;
                match v.as_str() {
                    "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {}
                    _ => return Err(invalid(&format!("unknown sslmode={v}"))),
                }
                sslmode = Some(v);
            } else if k == "sslrootcert" {
                sslrootcert = Some(percent_decode(v, "sslrootcert")?).filter(|v| !v.is_empty());
            } else {
                tracing::debug!(parameter = k, "ignoring a DATABASE_URL query parameter");
            }
        }
        Ok(Target {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
        })
    }

    /// `user@host:port/db`: how every log line and error names the target.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    pub fn sslmode(&self) -> Option<&str> {
        self.sslmode.as_deref()
    }

    /// The libpq environment for a child (`pg_restore`, `psql`): the only way the password
    /// reaches a child process.
    pub fn child_env(&self, application_name: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGHOST".to_string(), self.host.clone()),
            ("PGPORT".to_string(), self.port.to_string()),
            ("PGUSER".to_string(), self.user.clone()),
            ("PGDATABASE".to_string(), self.dbname.clone()),
            ("PGAPPNAME".to_string(), application_name.to_string()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD".to_string(), p.expose().to_string()));
        }
        if let Some(m) = &self.sslmode {
            env.push(("PGSSLMODE".to_string(), m.clone()));
        }
        if let Some(r) = &self.sslrootcert {
            env.push(("PGSSLROOTCERT".to_string(), r.clone()));
        }
        env
    }

    fn config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(CONNECT_TIMEOUT)
            // The lock's connection is idle for hours: notice a dead peer in minutes.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60));
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        // `allow` is libpq's "plain first, TLS if the server insists"; tokio-postgres has no
        // such mode, and trying TLS first (`prefer`) reaches the same servers.
        let mode = match self.sslmode.as_deref() {
            None | Some("prefer") | Some("allow") => tokio_postgres::config::SslMode::Prefer,
            Some("disable") => tokio_postgres::config::SslMode::Disable,
            Some(_) => tokio_postgres::config::SslMode::Require,
        };
        config.ssl_mode(mode);
        config
    }

    /// How much of the server's certificate to check, with libpq's semantics: `require` is
    /// encryption only, unless a root certificate is given (then it is `verify-ca`);
    /// `prefer`/`allow` check nothing (they would accept plain text anyway).
    fn verification(&self) -> Verification {
        match self.sslmode.as_deref() {
            Some("verify-full") => Verification::ChainAndHost,
            Some("verify-ca") => Verification::Chain,
            Some("require") if self.sslrootcert.is_some() => Verification::Chain,
            _ => Verification::Nothing,
        }
    }

    /// The trust anchors, and the certificates of `sslrootcert` (see [`Verifier`]).
    #[allow(clippy::type_complexity)]
    fn root_store(
        &self,
    ) -> Result<
        (
            rustls::RootCertStore,
            Vec<rustls::pki_types::CertificateDer<'static>>,
        ),
        PostgresError,
    > {
        let path = match self.sslrootcert.as_deref() {
            // libpq's default is ~/.postgresql/root.crt; a daemon has no meaningful home, and
            // a managed database's certificate chains to a public CA: use the web roots.
            None | Some("system") => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                return Ok((roots, Vec::new()));
            }
            Some(p) => PathBuf::from(p),
        };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let err = |detail: String| PostgresError::TlsRootCert {
            target: self.describe(),
            path: path.clone(),
            detail,
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("it holds no PEM certificate".to_string()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(|e| err(e.to_string()))?;
        }
        Ok((roots, certs))
    }

    fn tls(&self) -> Result<MakeRustlsConnect, PostgresError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let config = match self.verification() {
            Verification::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
                .with_no_client_auth(),
            verification => {
                let (roots, pinned) = self.root_store()?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| PostgresError::TlsRootCert {
                    target: self.describe(),
                    path: PathBuf::from(self.sslrootcert.as_deref().unwrap_or("system")),
                    detail: e.to_string(),
                })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        webpki,
                        pinned,
                        check_host: verification == Verification::ChainAndHost,
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// A new session, its connection driven by a spawned task.
    pub async fn connect(&self) -> Result<Client, StepError> {
        Ok(self.connect_as(CONTROL_APPLICATION_NAME).await?)
    }

    pub async fn connect_as(&self, application_name: &str) -> Result<Client, PostgresError> {
        let config = self.config(application_name);
        let tls = self.tls()?;
        let (client, connection) = config.connect(tls).await.map_err(|e| {
            let (transient, hint) = match tls_failure(&e) {
                Some(TlsFailure::Refused) => (false, self.tls_refused_hint()),
                Some(TlsFailure::Certificate) => (false, self.certificate_hint()),
                None => classify(&e),
            };
            PostgresError::Connect {
                target: self.describe(),
                detail: error_text(&e),
                hint,
                transient,
            }
        })?;
        let target = self.describe();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target = %target, error = %error_text(&e), "target connection ended");
            }
        });
        Ok(client)
    }

    fn tls_refused_hint(&self) -> &'static str {
        match self.sslmode.as_deref() {
            Some("verify-full") => {
                "; the server does not accept TLS but DATABASE_URL says sslmode=verify-full: enable ssl on the server, or set sslmode=prefer in DATABASE_URL if plain text is acceptable on this network"
            }
            Some("verify-ca") => {
                "; the server does not accept TLS but DATABASE_URL says sslmode=verify-ca: enable ssl on the server, or set sslmode=prefer in DATABASE_URL if plain text is acceptable on this network"
            }
            _ => {
                "; the server does not accept TLS but DATABASE_URL says sslmode=require: enable ssl on the server, or set sslmode=prefer in DATABASE_URL if plain text is acceptable on this network"
            }
        }
    }

    fn certificate_hint(&self) -> &'static str {
        match (self.verification(), self.sslrootcert.is_some()) {
            (Verification::ChainAndHost, false) => {
                "; the server's certificate is not signed by a public CA (or does not name the host): set sslrootcert=<PEM file of the server's CA> in DATABASE_URL, or sslmode=require for encryption without verification"
            }
            (Verification::ChainAndHost, true) => {
                "; the server's certificate is not signed by the CA in sslrootcert, or does not name the host of DATABASE_URL: fix sslrootcert or the host in DATABASE_URL (or use sslmode=verify-ca to skip the host name check)"
            }
            (_, false) => {
                "; the server's certificate is not signed by a public CA: set sslrootcert=<PEM file of the server's CA> in DATABASE_URL, or sslmode=require for encryption without verification"
            }
            (_, true) => {
                "; the server's certificate is not signed by the CA in sslrootcert: fix sslrootcert in DATABASE_URL"
            }
        }
    }

    fn query_error(&self, what: &'static str, e: tokio_postgres::Error) -> PostgresError {
        let (transient, hint) = classify(&e);
        PostgresError::Query {
            target: self.describe(),
            what,
            detail: error_text(&e),
            hint,
            transient,
        }
    }
}

/// The advisory lock on the target, held by a dedicated session for the whole run. Dropping it
/// closes the session, which releases the lock (so does the death of the process).
pub struct TargetLock {
    client: Client,
    target: String,
}

impl fmt::Debug for TargetLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetLock({})", self.target)
    }
}

impl TargetLock {
    /// False once the session is gone (server restart, network cut): the lock is then lost and
    /// another replicator may take it, so the driver should stop and retry.
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }

    /// Round-trips to the server: proves the session, hence the lock, still exists.
    pub async fn check(&self) -> Result<(), StepError> {
        self.client.simple_query("SELECT 1").await.map_err(|e| {
            let (_, hint) = classify(&e);
            PostgresError::Query {
                target: self.target.clone(),
                what: "checking the advisory lock's session",
                detail: error_text(&e),
                hint,
                // A lost lock is always worth a new attempt: the next one takes it again.
                transient: true,
            }
        })?;
        Ok(())
    }

    /// Releases the lock and waits until the server confirmed it (a plain drop releases it
    /// too, but asynchronously).
    pub async fn release(self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await;
    }
}

/// The outcome of [`lock_target`].
#[derive(Debug)]
pub enum LockOutcome {
    Acquired(TargetLock),
    /// Another session holds the lock. `since` is its `backend_start`, `holder` says who it is,
    /// when `pg_stat_activity` lets this role see it.
    Held {
        since: Option<String>,
        holder: Option<String>,
    },
}

/// Takes the replicator's advisory lock on the target, without waiting.
pub async fn lock_target(target: &Target) -> Result<LockOutcome, StepError> {
    let client = target.connect_as(LOCK_APPLICATION_NAME).await?;
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| target.query_error("taking the advisory lock", e))?;
    if row.get::<_, bool>(0) {
        tracing::info!(target = %target.describe(), "advisory lock acquired");
        return Ok(LockOutcome::Acquired(TargetLock {
            client,
            target: target.describe(),
        }));
    }
    // A bigint advisory key shows in pg_locks as classid = high half, objid = low half,
    // objsubid = 1.
    let classid = LOCK_KEY >> 32;
    let objid = LOCK_KEY & 0xffff_ffff;
    let rows = client
        .query(
            "SELECT to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    a.pid, a.usename::text, a.application_name, host(a.client_addr)
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
              LIMIT 1",
            &[&classid, &objid],
        )
        .await
        .map_err(|e| target.query_error("looking up the advisory lock's holder", e))?;
    let (since, holder) = match rows.first() {
        Some(r) => {
            let pid: i32 = r.get(1);
            let user: Option<String> = r.get(2);
            let app: Option<String> = r.get(3);
            let addr: Option<String> = r.get(4);
            let mut h = format!("pid {pid}");
            if let Some(u) = user {
                h.push_str(&format!(", role {u}"));
            }
            if let Some(a) = app.filter(|a| !a.is_empty()) {
                h.push_str(&format!(", application_name '{a}'"));
            }
            h.push_str(&match addr {
                Some(a) => format!(", from {a}"),
                None => ", over a local socket or not visible to this role".to_string(),
            });
            (r.get::<_, Option<String>>(0), Some(h))
        }
        // Released between the two queries, or invisible to this role.
        None => (None, None),
    };
    tracing::warn!(target = %target.describe(), ?since, ?holder, "advisory lock held by another session");
    Ok(LockOutcome::Held { since, holder })
}

/// What [`check_target`] learnt about the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// `server_version_num`, e.g. `150018`.
    pub server_version_num: i32,
    pub current_user: String,
    pub database: String,
    /// Whether the role owns the database (it should: Scalingo's app role does).
    pub owns_database: bool,
}

/// Connects and checks that the target can be wiped and restored by this role.
pub async fn check_target(target: &Target) -> Result<TargetInfo, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    current_setting('server_version_num')::int4,
                    current_user::text, current_database()::text, r.rolsuper,
                    d.datdba = r.oid
               FROM pg_roles r, pg_database d
              WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| target.query_error("checking the role", e))?;
    if row.get::<_, bool>(4) {
        return Err(PostgresError::SuperuserTarget {
            target: target.describe(),
        }
        .into());
    }
    let info = TargetInfo {
        server_version: row.get(0),
        server_version_num: row.get(1),
        current_user: row.get(2),
        database: row.get(3),
        owns_database: row.get(5),
    };
    if !info.owns_database {
        tracing::warn!(target = %target.describe(), "the role does not own the target database; the restore may lack privileges");
    }
    Ok(info)
}

/// Counts of a dump's table of contents, from `pg_restore --list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpInfo {
    /// `Dumped from database version` (the production server).
    pub dumped_from: Option<String>,
    /// `Dumped by pg_dump version`.
    pub dumped_by: Option<String>,
    /// Every TOC entry listed.
    pub entries: u64,
    /// Entries that a restore of schema `public` runs, by section (comments and privileges
    /// excluded, as the restore skips them).
    pub pre_data: u64,
    pub data: u64,
    pub post_data: u64,
    /// `TABLE` entries (schema public).
    pub tables: u64,
    /// `TABLE DATA` entries (schema public).
    pub table_data: u64,
    pub indexes: u64,
    /// `CONSTRAINT` entries (primary keys, unique, exclusion, separately dumped checks).
    pub constraints: u64,
    pub fk_constraints: u64,
}

impl DumpInfo {
    /// Counts `toc`: a dump's table of contents, or a `--use-list` file (whose commented-out
    /// entries are not counted).
    pub fn from_toc(toc: &Toc) -> DumpInfo {
        let mut info = DumpInfo {
            dumped_from: toc.dumped_from().map(str::to_string),
            dumped_by: toc.dumped_by().map(str::to_string),
            entries: toc.entries().count() as u64,
            ..DumpInfo::default()
        };
        // `--schema public` restores only entries whose schema is public; the schema column is
        // `-` for objects outside any schema.
        for e in toc.entries().filter(|e| e.schema == "public") {
            match e.section() {
                TocSection::None => {}
                TocSection::PreData => info.pre_data += 1,
                TocSection::Data => info.data += 1,
                TocSection::PostData => info.post_data += 1,
            }
            match e.desc.as_str() {
                "TABLE" => info.tables += 1,
                "TABLE DATA" => info.table_data += 1,
                "INDEX" => info.indexes += 1,
                "CONSTRAINT" | "CHECK CONSTRAINT" => info.constraints += 1,
                "FK CONSTRAINT" => info.fk_constraints += 1,
                _ => {}
            }
        }
        info
    }

    /// The number of items [`restore_section`] runs for `section`: its progress total.
    pub fn items(&self, section: Section) -> u64 {
        match section {
            Section::PreData => self.pre_data,
            Section::DataAndPostData => self.data + self.post_data,
        }
    }
}

/// `pg_restore --version`, e.g. `pg_restore (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub async fn pg_restore_version() -> Result<String, StepError> {
    let out = tokio::process::Command::new("pg_restore")
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PostgresError::Spawn {
            program: "pg_restore".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(StepError::permanent(format!(
            "pg_restore --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads the dump's table of contents with `pg_restore --list`: proves the file is an archive
/// this `pg_restore` can read before anything on the target is dropped.
///
/// A file cut after its table of contents still lists; the download's length check and the
/// restore itself (a permanent "could not read from input file") catch that case.
pub async fn check_dump(dump: &Path) -> Result<DumpInfo, StepError> {
    let toc = match Toc::read(dump).await {
        Ok(toc) => toc,
        Err(e) => {
            // "pg_restore: error: unsupported version (1.16) in file header"
            if let TocError::Unreadable { stderr, .. } = &e
                && let Some(v) = stderr
                    .split("unsupported version (")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
            {
                let local = pg_restore_version()
                    .await
                    .unwrap_or_else(|_| "unknown version".into());
                return Err(PostgresError::DumpTooNew {
                    path: dump.to_path_buf(),
                    archive_version: v.to_string(),
                    local,
                }
                .into());
            }
            return Err(dump_error(e));
        }
    };
    let info = DumpInfo::from_toc(&toc);
    if info.entries == 0 {
        return Err(PostgresError::DumpUnreadable {
            path: dump.to_path_buf(),
            status: "exit status: 0".into(),
            stderr: "its table of contents is empty".into(),
        }
        .into());
    }
    tracing::info!(dump = %dump.display(), ?info, "dump checked");
    Ok(info)
}

/// A dump `pg_restore` cannot run on or read, in the words [`check_dump`] has always used.
fn dump_error(e: TocError) -> StepError {
    match e {
        TocError::Spawn(source) => PostgresError::Spawn {
            program: "pg_restore".into(),
            source,
        }
        .into(),
        TocError::Unreadable {
            path,
            status,
            stderr,
            ..
        } => PostgresError::DumpUnreadable {
            path,
            status,
            stderr,
        }
        .into(),
        other => other.into(),
    }
}

/// Ends the sessions a previous, killed replicator's `pg_restore` may have left running (a
/// `CREATE INDEX` keeps going server-side after its client died), so that they neither hold
/// locks against [`drop_owned`] nor write into the fresh copy. Returns how many were ended.
pub async fn terminate_leftover_restores(target: &Target) -> Result<u64, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let select = "SELECT pid FROM pg_stat_activity
                   WHERE usename = current_user AND datname = current_database()
                     AND application_name = $1 AND pid <> pg_backend_pid()";
    let rows = client
        .query(
            &format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ({select}) s"),
            &[&RESTORE_APPLICATION_NAME],
        )
        .await
        .map_err(|e| target.query_error("ending leftover pg_restore sessions", e))?;
    let n = rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64;
    if n > 0 {
        // pg_terminate_backend only signals: wait (briefly) until they are gone, so that their
        // locks are released before the wipe.
        for _ in 0..100 {
            let left = client
                .query(
                    &format!("SELECT count(*) FROM ({select}) s"),
                    &[&RESTORE_APPLICATION_NAME],
                )
                .await
                .map_err(|e| target.query_error("waiting for leftover sessions to end", e))?;
            if left.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(target = %target.describe(), sessions = n, "ended leftover pg_restore sessions");
    }
    Ok(n)
}

/// What [`drop_owned`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropOutcome {
    /// Tables of schema public before the wipe.
    pub tables_before: u64,
    /// Whether `public` had to be created again (it is dropped when the role owns it).
    pub public_recreated: bool,
}

/// Wipes everything the role owns (`DROP OWNED BY CURRENT_USER CASCADE`) and makes sure schema
/// `public` exists again for the restore.
pub async fn drop_owned(target: &Target) -> Result<DropOutcome, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let tables_before = count_tables_with(&client, target).await?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{LOCK_TIMEOUT}'; DROP OWNED BY CURRENT_USER CASCADE"
        ))
        .await
        .map_err(|e| target.query_error("DROP OWNED BY CURRENT_USER CASCADE", e))?;
    let public_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')",
            &[],
        )
        .await
        .map_err(|e| target.query_error("looking for schema public", e))?
        .get(0);
    if !public_exists {
        client
            .batch_execute("CREATE SCHEMA IF NOT EXISTS public")
            .await
            .map_err(|e| target.query_error("creating schema public", e))?;
    }
    let outcome = DropOutcome {
        tables_before,
        public_recreated: !public_exists,
    };
    tracing::info!(
        target = %target.describe(),
        tables_dropped = tables_before,
        public_recreated = outcome.public_recreated,
        "dropped everything the role owns"
    );
    Ok(outcome)
}

/// Ordinary and partitioned tables of schema public.
pub async fn count_tables(target: &Target) -> Result<u64, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    Ok(count_tables_with(&client, target).await?)
}

async fn count_tables_with(client: &Client, target: &Target) -> Result<u64, PostgresError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await
        .map_err(|e| target.query_error("counting tables", e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// `ALTER TABLE ... SET UNLOGGED` on every still-logged ordinary table of schema public owned
/// by the role. Run between the two restore sections: the tables are empty (the rewrite costs
/// nothing) and have no foreign keys yet (which would forbid mixing persistences); the rows and
/// indexes loaded afterwards then skip the WAL.
///
/// Partitioned parents hold no storage and cannot be unlogged (PostgreSQL 15 ignores `SET
/// UNLOGGED` on them), and "constraints on permanent tables may reference only permanent
/// tables": a table that a partitioned table's foreign key references, directly or through a
/// chain of such tables, must stay logged or the post-data section fails. Those foreign keys
/// do not exist yet, so they are read from the dump (`dump`), whose post-data SQL costs no data
/// read. Partitions themselves are ordinary tables and are converted.
pub async fn set_unlogged_with_dump(target: &Target, dump: &Path) -> Result<usize, StepError> {
    let fks = foreign_keys_in_dump(dump).await?;
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let partitioned: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'p'",
            &[],
        )
        .await
        .map_err(|e| target.query_error("listing partitioned tables", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let keep_logged = must_stay_logged(&partitioned, &fks);
    if !keep_logged.is_empty() {
        tracing::info!(
            target = %target.describe(),
            tables = ?keep_logged,
            "tables kept logged: a partitioned table's foreign key references them"
        );
    }
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relpersistence = 'p'
                AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                AND NOT (c.relname::text = ANY($1))
              ORDER BY c.relname",
            &[&keep_logged],
        )
        .await
        .map_err(|e| target.query_error("listing logged tables", e))?;
    client
        .batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(|e| target.query_error("setting lock_timeout", e))?;
    for row in &rows {
        let table: String = row.get(0);
        if let Err(e) = client
            .batch_execute(&format!("ALTER TABLE {table} SET UNLOGGED"))
            .await
        {
            let e = target.query_error("ALTER TABLE ... SET UNLOGGED", e);
            tracing::error!(%table, error = %e, "cannot make the table unlogged");
            return Err(e.into());
        }
    }
    tracing::info!(target = %target.describe(), tables = rows.len(), "tables set unlogged");
    Ok(rows.len())
}

/// The tables (of schema public) that must stay logged: every partitioned table is permanent,
/// and whatever a permanent table references must be permanent too.
fn must_stay_logged(partitioned: &[String], fks: &[(String, String)]) -> Vec<String> {
    let mut keep: Vec<String> = partitioned.to_vec();
    let mut i = 0;
    while i < keep.len() {
        let from = keep[i].clone();
        for (f, to) in fks {
            if *f == from && !keep.contains(to) {
                keep.push(to.clone());
            }
        }
        i += 1;
    }
    keep.retain(|t| !partitioned.contains(t));
    keep.sort();
    keep
}

/// `(table, referenced table)` of every foreign key of schema public in the dump, both in
/// public (a reference to another schema does not matter: it is not restored).
pub async fn foreign_keys_in_dump(dump: &Path) -> Result<Vec<(String, String)>, StepError> {
    Ok(crate::dump::toc::foreign_keys(dump)
        .await
        .map_err(dump_error)?
        .into_iter()
        .filter(|fk| fk.schema == "public" && fk.ref_schema == "public")
        .map(|fk| (fk.table, fk.ref_table))
        .collect())
}

/// The `pg_restore` arguments for one section (no secret in them: the connection comes from
/// the environment of [`Target::child_env`]).
///
/// - `--no-owner`, `--no-privileges`: the production roles do not exist on the target; every
///   object belongs to the target role, which is what `DROP OWNED` wipes the next night.
/// - `--no-comments`: `COMMENT ON EXTENSION` needs ownership of the extension.
/// - `--schema public`: extensions and other schemas are the platform's, not the app's.
/// - `--no-tablespaces`: production tablespaces do not exist on the target.
/// - `--exit-on-error`: with the filters above, the errors left all mean a copy that is not
///   complete; without it `pg_restore` would go on for hours and exit 1 anyway, and the
///   driver could not tell "harmless" from "half the rows missing".
pub fn restore_args(
    dbname: &str,
    dump: &Path,
    section: Section,
    jobs: u32,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "--no-owner",
        "--no-privileges",
        "--no-comments",
        "--no-tablespaces",
        "--schema=public",
        "--exit-on-error",
        "--verbose",
    ]
    .iter()
    .map(Into::into)
    .collect();
    match section {
        Section::PreData => args.push("--section=pre-data".into()),
        Section::DataAndPostData => {
            args.push("--section=data".into());
            args.push("--section=post-data".into());
        }
    }
    args.push(format!("--jobs={}", jobs.max(1)).into());
    // Host, port, role and password come from the environment; the name is no secret.
    args.push(format!("--dbname={dbname}").into());
    args.push(dump.as_os_str().to_owned());
    args
}

/// Builds the `pg_restore` command of a section: environment-only secrets, its own process
/// group, killed with the replicator.
pub fn restore_command(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
) -> tokio::process::Command {
    restore_command_with_list(target, dump, section, jobs, None)
}

/// [`restore_command`] restricted to the entries of a `--use-list` file (see `toc.rs`): the
/// other filters still apply, and what the list comments out is never read.
pub fn restore_command_with_list(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("pg_restore");
    let mut args = restore_args(&target.dbname, dump, section, jobs);
    if let Some(list) = use_list {
        let mut arg = std::ffi::OsString::from("--use-list=");
        arg.push(list);
        // Before the dump, which stays the last argument.
        args.insert(args.len() - 1, arg);
    }
    cmd.args(args);
    // A PGSERVICE or PGOPTIONS of the replicator's own environment must not redirect the restore.
    for var in ["PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGPASSFILE"] {
        cmd.env_remove(var);
    }
    cmd.envs(target.child_env(RESTORE_APPLICATION_NAME));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, raise) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // Own group: the driver can signal pg_restore and its parallel workers at once.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Dies with the replicator, even on kill -9 (the kernel sends it).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal would ever come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    cmd
}

/// Kills the whole process group of a `pg_restore` (its `--jobs` workers are forked children
/// that `kill_on_drop` would not reach) when the restore future is dropped or fails.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: plain syscall; the group is ours (setpgid in pre_exec).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Does this stderr line report one TOC item being run? Items run by the leader print one of
/// these; with `--jobs`, workers' lines can come out interleaved and garbled (a line may lose
/// its `pg_restore: ` prefix or merge with a NOTICE), so they under-count there.
fn is_item_line(line: &str) -> bool {
    let l = line.strip_prefix("pg_restore: ").unwrap_or(line);
    l.starts_with("creating ")
        || l.starts_with("processing data for table ")
        || l.starts_with("executing ")
}

/// How many `finished item N ...` reports a line holds: the leader prints one per item a
/// parallel worker completed, the exact count in parallel mode. Processes write the
/// `pg_restore: ` prefix and the message separately, so a report can land in the middle of
/// another line: count occurrences, not line starts.
fn finished_items_in(line: &str) -> u64 {
    line.matches("finished item ").count() as u64
}

fn stderr_says_transient(tail: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "Connection refused",
        "could not connect to server",
        "connection to server at",
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "connection timed out",
        "Connection reset by peer",
        "could not receive data from server",
        "could not send data to server",
        "SSL SYSCALL error",
        "no connection to the server",
        "deadlock detected",
        "could not serialize access",
        "too many connections",
        "canceling statement due to lock timeout",
    ];
    const PERMANENT: &[&str] = &[
        "password authentication failed",
        "no password supplied",
        "permission denied",
        "must be owner",
        "could not read from input file",
        "unsupported version",
        "input file",
    ];
    if PERMANENT.iter().any(|p| tail.contains(p)) {
        return false;
    }
    TRANSIENT.iter().any(|p| tail.contains(p))
}

/// Runs `pg_restore` for one section into the target. `progress(done, total)` is called as
/// items complete; `total` comes from the dump's table of contents.
pub async fn restore_section(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    restore_section_with_list(target, dump, section, jobs, None, progress).await
}

/// [`restore_section`] restricted to the entries of a `--use-list` file (`toc.rs`). The
/// progress total counts what this restore runs: the list's entries, not those it comments
/// out (rows of `EXCLUDE_TABLE_DATA`, foreign keys `FK_MODE` defers), so that it ends at 100%.
pub async fn restore_section_with_list(
    target: &Target,
    dump: &Path,
    section: Section,
    jobs: u32,
    use_list: Option<&Path>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<(), StepError> {
    let total = match use_list {
        None => check_dump(dump).await?.items(section),
        // Written from this dump's `--list` in the same step: the dump is already read.
        Some(list) => DumpInfo::from_toc(&Toc::read_list(list)?).items(section),
    };
    let mut cmd = restore_command_with_list(target, dump, section, jobs, use_list);
    let mut child = cmd.spawn().map_err(|source| PostgresError::Spawn {
        program: "pg_restore".into(),
        source,
    })?;
    let mut guard = GroupGuard {
        pgid: child.id().map(|p| p as libc::pid_t),
    };
    tracing::info!(
        target = %target.describe(),
        section = section.label(),
        jobs,
        pid = ?child.id(),
        items = total,
        "pg_restore started"
    );
    progress(0, total);
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL + 1);
    let mut done = 0u64;
    let (mut serial_done, mut parallel_done) = (0u64, 0u64);
    let password = target.password.as_ref().map(|p| p.expose().to_string());
    loop {
        match lines.next_line().await {
            Ok(Some(mut line)) => {
                if let Some(p) = password.as_deref().filter(|p| p.len() >= 3) {
                    line = line.replace(p, "[redacted]");
                }
                tracing::debug!(section = section.label(), "{line}");
                // Items run before the workers start print only the serial lines, those run by
                // workers print both kinds: the larger count is the true one in both modes.
                if is_item_line(&line) {
                    serial_done += 1;
                }
                parallel_done += finished_items_in(&line);
                let now = serial_done.max(parallel_done);
                if now > done {
                    done = now;
                    progress(done.min(total), total);
                }
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read pg_restore's stderr");
                break;
            }
        }
    }
    let status = child.wait().await.map_err(|e| PostgresError::Restore {
        target: target.describe(),
        section: section.label(),
        status: format!("waiting for it failed: {e}"),
        stderr: String::new(),
        hint: "",
        transient: true,
    })?;
    if status.success() {
        // Its workers exited before it did; nothing left to kill.
        guard.pgid = None;
        progress(total, total);
        tracing::info!(target = %target.describe(), section = section.label(), "pg_restore finished");
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    let tail = tail.join("\n");
    let transient = if status.signal().is_some() {
        // Killed (OOM killer, an operator): nothing says the next attempt fails too.
        true
    } else {
        stderr_says_transient(&tail)
    };
    let hint = if transient {
        "\nthe run goes back to Dropping and retries"
    } else if tail.contains("password authentication failed") {
        "\ncheck the password in DATABASE_URL"
    } else if tail.contains("permission denied") || tail.contains("must be owner") {
        "\nDATABASE_URL must name the role that owns the target database"
    } else {
        ""
    };
    Err(PostgresError::Restore {
        target: target.describe(),
        section: section.label(),
        status: status.to_string(),
        stderr: tail,
        hint,
        transient,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, PostgresError> {
        Target::parse_inner(url)
    }

    #[test]
    fn parses_a_scalingo_url() {
        let t = parse("postgres://pix_4242:s3cr%40t@pix-4242.postgresql.a.osc-fr1.scalingo-dbs.com:31234/pix_4242?sslmode=prefer").unwrap();
        assert_eq!(
            t.describe(),
            "pix_4242@pix-4242.postgresql.a.osc-fr1.scalingo-dbs.com:31234/pix_4242"
        );
        assert_eq!(t.password.as_ref().unwrap().expose(), "s3cr@t");
        assert_eq!(t.sslmode(), Some("prefer"));
        let env = t.child_env("x");
        assert!(env.contains(&("PGPASSWORD".into(), "s3cr@t".into())));
        assert!(env.contains(&("PGSSLMODE".into(), "prefer".into())));
        assert!(env.contains(&("PGAPPNAME".into(), "x".into())));
        assert!(!format!("{t:?}").contains("s3cr"));
    }

    #[test]
    fn parses_variants_and_rejects_garbage() {
        let t = parse("postgresql://u@[::1]/d").unwrap();
        assert_eq!(t.describe(), "u@::1:5432/d");
        assert!(t.password.is_none());
        let t = parse("postgres://u:p@h:5/").unwrap();
        assert_eq!(t.dbname(), "u");
        for bad in [
            "mysql://u:p@h/d",
            "postgres://h/d",
            "postgres://u:p@h:99999/d",
            "postgres://u:p@:5432/d",
            "postgres://u:p@h/d?sslmode=sometimes",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.to_string().contains(":p@"), "{e}");
            assert!(e.to_string().contains("DATABASE_URL"));
        }
    }

    #[test]
    fn sslmodes_map_to_libpq_semantics() {
        let v = |url: &str| parse(url).unwrap().verification();
        assert!(v("postgres://u:p@h/d?sslmode=require") == Verification::Nothing);
        assert!(v("postgres://u:p@h/d?sslmode=require&sslrootcert=/ca.pem") == Verification::Chain);
        assert!(v("postgres://u:p@h/d?sslmode=verify-ca") == Verification::Chain);
        assert!(v("postgres://u:p@h/d?sslmode=verify-full") == Verification::ChainAndHost);
        let t =
            parse("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert!(
            t.child_env("x")
                .contains(&("PGSSLROOTCERT".into(), "/etc/ca.pem".into()))
        );
        let e = parse("postgres://u:p@h/d?sslmode=verify-ca&sslrootcert=/nonexistent.pem")
            .unwrap()
            .tls()
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        assert!(!StepError::from(e).is_transient());
    }

    #[test]
    fn parses_a_toc_list() {
        let list = ";\n;     Dumped from database version: 12.4\n;     Dumped by pg_dump version: 12.4\n;\n\
            213; 1259 16430 TABLE public answers postgres\n\
            212; 1259 16428 SEQUENCE public answers_id_seq postgres\n\
            3606; 0 0 SEQUENCE OWNED BY public answers_id_seq postgres\n\
            3095; 2604 16433 DEFAULT public answers id postgres\n\
            3530; 0 16430 TABLE DATA public answers postgres\n\
            3645; 0 0 SEQUENCE SET public answers_id_seq postgres\n\
            3213; 1259 17018 INDEX public answers_assessmentid_index postgres\n\
            3215; 2606 16438 CONSTRAINT public answers answers_pkey postgres\n\
            3347; 2606 17130 FK CONSTRAINT public answers answers_assessmentid_foreign postgres\n\
            3600; 0 0 COMMENT public TABLE answers postgres\n\
            2; 3079 16385 EXTENSION - pgcrypto \n\
            5; 0 0 COMMENT - EXTENSION pgcrypto \n";
        let i = DumpInfo::from_toc(&Toc::parse(list));
        assert_eq!(i.dumped_from.as_deref(), Some("12.4"));
        assert_eq!(i.entries, 12);
        assert_eq!((i.pre_data, i.data, i.post_data), (4, 2, 3));
        assert_eq!(
            (
                i.tables,
                i.table_data,
                i.indexes,
                i.constraints,
                i.fk_constraints
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(i.items(Section::DataAndPostData), 5);
    }

    #[test]
    fn keeps_logged_what_partitioned_tables_reference() {
        let fks: Vec<(String, String)> = [
            ("answers", "knowledge-elements"),
            ("Events", "User\"Accounts"),
            ("User\"Accounts", "orgs"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec();
        assert_eq!(
            must_stay_logged(&["Events".to_string()], &fks),
            vec!["User\"Accounts".to_string(), "orgs".to_string()]
        );
        assert!(must_stay_logged(&[], &fks).is_empty());
    }

    #[test]
    fn sorts_restore_failures() {
        assert!(stderr_says_transient(
            "pg_restore: error: could not execute query: FATAL:  terminating connection due to administrator command"
        ));
        assert!(stderr_says_transient(
            "pg_restore: error: connection to server at \"127.0.0.1\", port 5 failed: Connection refused"
        ));
        assert!(!stderr_says_transient(
            "connection to server at \"h\" failed: FATAL:  password authentication failed for user \"u\""
        ));
        assert!(!stderr_says_transient(
            "pg_restore: error: could not execute query: ERROR:  relation \"x\" already exists"
        ));
    }
}
