//! A PostgreSQL database the replicator connects to, as its URL names it ([`PgEndpoint`]):
//! the target of `DATABASE_URL`, or a live source of `SOURCE_DATABASE_URL`. Parsing (the
//! password kept in a [`Secret`]), the connection parameters of a `pg_dump` child, and
//! sessions.

use std::fmt;
use std::time::Duration;

use tokio_postgres::Client;

use super::sqlstate::{PostgresError, Side, classify_on, error_text};
use super::tls::{TlsFailure, TlsSettings, tls_failure};
use crate::error::StepError;
use crate::secret::Secret;

/// `application_name` of the short-lived sessions of the checks, the wipe and
/// `set_unlogged_with_dump`.
pub const CONTROL_APPLICATION_NAME: &str = "replicator";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL database the replicator connects to: the target, parsed from `DATABASE_URL`
/// ([`PgEndpoint::parse`]), or a live source, parsed from `SOURCE_DATABASE_URL` by the same
/// rules ([`PgEndpoint::parse_source`]); which one it is, its messages say (`Side`).
#[derive(Clone)]
pub struct PgEndpoint {
    /// Which variable this came from: the messages name it.
    pub(super) side: Side,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: Option<Secret>,
    pub(super) dbname: String,
    pub(super) sslmode: Option<String>,
    /// libpq's `sslrootcert`: a PEM file, or `system` for the public web roots.
    pub(super) sslrootcert: Option<String>,
    /// `REPLICATOR_TARGET_CONFIRM`: the database name that allows the first wipe of a
    /// database holding objects ([`crate::machine::first_wipe`]).
    pub(super) confirm: Option<String>,
    /// libpq's `options` (e.g. `-c statement_timeout=0`), sent at connection start.
    pub(super) options: Option<String>,
    /// libpq's `connect_timeout`, instead of the default.
    pub(super) connect_timeout: Option<Duration>,
}

impl fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgEndpoint({})", self.describe())
    }
}

fn percent_decode(s: &str, what: &str, side: Side) -> Result<String, PostgresError> {
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
                    var: side.var(),
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
        var: side.var(),
        reason: format!("the {what} is not UTF-8 once decoded"),
    })
}

impl PgEndpoint {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=prefer` (or `postgresql://`),
    /// the form Scalingo gives. Error messages never quote the URL: it holds the password.
    pub fn parse(database_url: &Secret) -> Result<PgEndpoint, StepError> {
        Ok(Self::parse_inner(database_url.expose())?)
    }

    /// `SOURCE_DATABASE_URL`, by the same rules as `DATABASE_URL` (TLS included); its
    /// messages name `SOURCE_DATABASE_URL`.
    pub fn parse_source(source_url: &Secret) -> Result<PgEndpoint, PostgresError> {
        Self::parse_as(source_url.expose(), Side::Source)
    }

    pub(super) fn parse_inner(url: &str) -> Result<PgEndpoint, PostgresError> {
        Self::parse_as(url, Side::Target)
    }

    fn parse_as(url: &str, side: Side) -> Result<PgEndpoint, PostgresError> {
        let invalid = |reason: &str| PostgresError::InvalidUrl {
            var: side.var(),
            reason: reason.to_string(),
        };
        let percent_decode = |s: &str, what: &str| percent_decode(s, what, side);
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
        if host.contains(',') || port.is_some_and(|p| p.contains(',')) {
            return Err(invalid(
                "it names several hosts (h1:5432,h2:5432): the replicator connects to one; name the primary",
            ));
        }
        // A Unix-socket directory, percent-encoded in the host (`%2Fvar%2Frun%2Fpostgresql`).
        let mut host = percent_decode(&host, "host")?;
        let mut port = match port {
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
        let mut options = None;
        let mut connect_timeout = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "host" {
                let v = percent_decode(v, "host")?;
                if v.contains(',') {
                    return Err(invalid(
                        "host= names several hosts: the replicator connects to one; name the primary",
                    ));
                }
                host = v;
            } else if k == "port" {
                port = percent_decode(v, "port")?
                    .parse::<u16>()
                    .map_err(|_| invalid("port= is not a number between 1 and 65535"))?;
            } else if k == "options" {
                options = Some(percent_decode(v, "options")?).filter(|o| !o.is_empty());
            } else if k == "connect_timeout" {
                let secs = percent_decode(v, "connect_timeout")?
                    .parse::<u64>()
                    .map_err(|_| invalid("connect_timeout= is not a number of seconds"))?;
                // libpq: 0 (or none) waits forever; less than 2 s is taken as 2 s.
                connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
            } else if k == "application_name" {
                // Accepted, not used: the replicator names its sessions itself (`replicator
                // lock`, `replicator restore`) to find its own in pg_stat_activity.
                tracing::debug!(
                    "DATABASE_URL's application_name is replaced by the replicator's own session names"
                );
            } else if k == "sslmode" {
                let v = percent_decode(v, "sslmode")?;
                match v.as_str() {
                    "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => {}
                    _ => return Err(invalid(&format!("unknown sslmode={v}"))),
                }
                sslmode = Some(v);
            } else if k == "sslrootcert" {
                sslrootcert = Some(percent_decode(v, "sslrootcert")?).filter(|v| !v.is_empty());
            } else {
                return Err(invalid(&format!(
                    "the parameter {k}= is not supported (supported: sslmode, sslrootcert, host, port, options, application_name, connect_timeout)"
                )));
            }
        }
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        // As libpq: `sslrootcert=system` means the public web roots, which any host can get a
        // certificate from, so only `verify-full` (the name checked) makes sense with it, and
        // it is the default mode then (libpq 16); `verify-ca` needs the CA that signed the
        // server's certificate, not the whole web's.
        if sslrootcert.as_deref() == Some("system") {
            match sslmode.as_deref() {
                None => sslmode = Some("verify-full".to_string()),
                Some("verify-full") => {}
                Some(m) => {
                    return Err(invalid(&format!(
                        "sslmode={m} with sslrootcert=system would accept any publicly trusted certificate of any host (libpq refuses it too): use sslmode=verify-full, or sslrootcert=/path/to/the-ca.pem"
                    )));
                }
            }
        }
        if sslmode.as_deref() == Some("verify-ca") && sslrootcert.is_none() {
            return Err(invalid(
                "sslmode=verify-ca needs sslrootcert=/path/to/the-ca.pem (libpq refuses it without one): checked against the public web roots without the host name, any publicly trusted certificate of any host would pass; give the CA's file, or use sslmode=verify-full",
            ));
        }
        Ok(PgEndpoint {
            side,
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            options,
            connect_timeout,
            confirm: None,
        })
    }

    /// `user@host:port/db`: how every log line and error names the target.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Whether this is the target (`DATABASE_URL`) or a live source (`SOURCE_DATABASE_URL`).
    pub fn side(&self) -> Side {
        self.side
    }

    /// The password, for the one place that hands it to a `pg_dump` child (through a file or
    /// its environment, never its command line).
    pub(crate) fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The connection of a `pg_dump` child to this database, without the password: a libpq
    /// connection string (host, port, user, database, keepalives; none of them secret, and a
    /// database or host named like a connection string is quoted as a value, so libpq never
    /// reads it as one) and the `PG*` variables of the rest (TLS, options, timeout), with the
    /// same meaning as this replicator's own sessions give them.
    pub fn libpq_conninfo(&self, application_name: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} dbname={} application_name={} keepalives=1 keepalives_idle=60 keepalives_interval=15 keepalives_count=4",
            quote(&self.host),
            self.port,
            quote(&self.user),
            quote(&self.dbname),
            quote(application_name)
        )
    }

    /// See [`PgEndpoint::libpq_conninfo`]: the `PG*` variables of a `pg_dump` child.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "PGCONNECT_TIMEOUT",
            self.connect_timeout
                .unwrap_or(CONNECT_TIMEOUT)
                .as_secs()
                .to_string(),
        )];
        if let Some(mode) = &self.sslmode {
            env.push(("PGSSLMODE", mode.clone()));
        }
        match (&self.sslrootcert, self.sslmode.as_deref()) {
            (Some(root), _) => env.push(("PGSSLROOTCERT", root.clone())),
            // The replicator's own sessions check a verify-* server against the public web
            // roots when no sslrootcert is given; libpq would look for ~/.postgresql/root.crt.
            (None, Some("verify-ca" | "verify-full")) => {
                env.push(("PGSSLROOTCERT", "system".to_string()))
            }
            _ => {}
        }
        if let Some(o) = &self.options {
            env.push(("PGOPTIONS", o.clone()));
        }
        env
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

    /// This target with `REPLICATOR_TARGET_CONFIRM`'s value.
    pub fn confirmed(mut self, confirm: Option<String>) -> PgEndpoint {
        self.confirm = confirm.filter(|c| !c.trim().is_empty());
        self
    }

    pub fn confirm(&self) -> Option<&str> {
        self.confirm.as_deref()
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    pub fn sslmode(&self) -> Option<&str> {
        self.sslmode.as_deref()
    }

    fn config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(self.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            // The lock's connection is idle for hours: notice a dead peer in minutes.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60));
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        if let Some(o) = &self.options {
            config.options(o);
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

    /// What the URL says of TLS.
    pub(super) fn tls_settings(&self) -> TlsSettings<'_> {
        TlsSettings {
            sslmode: self.sslmode.as_deref(),
            sslrootcert: self.sslrootcert.as_deref(),
            var: self.side.var(),
            describe: self.describe(),
        }
    }

    /// A new session, its connection driven by a spawned task.
    pub async fn connect(&self) -> Result<Client, StepError> {
        Ok(self.connect_as(CONTROL_APPLICATION_NAME).await?)
    }

    pub async fn connect_as(&self, application_name: &str) -> Result<Client, PostgresError> {
        let config = self.config(application_name);
        let tls = self.tls_settings();
        let (client, connection) = config.connect(tls.connector()?).await.map_err(|e| {
            let (transient, hint) = match tls_failure(&e) {
                Some(TlsFailure::Refused) => (false, tls.refused_hint()),
                Some(TlsFailure::Certificate) => (false, tls.certificate_hint()),
                None => {
                    let (transient, hint) = classify_on(&e, self.side);
                    (transient, hint.to_string())
                }
            };
            PostgresError::Connect {
                side: self.side,
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

    pub(crate) fn query_error(
        &self,
        what: &'static str,
        e: tokio_postgres::Error,
    ) -> PostgresError {
        let (transient, hint) = classify_on(&e, self.side);
        PostgresError::Query {
            side: self.side,
            target: self.describe(),
            what,
            detail: error_text(&e),
            hint,
            transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PgEndpoint, PostgresError> {
        PgEndpoint::parse_inner(url)
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
        assert!(!format!("{t:?}").contains("s3cr"));
    }

    #[test]
    fn socket_hosts_options_and_timeouts_are_read_other_forms_refused_by_name() {
        let t = parse("postgres://u:p@%2Fvar%2Frun%2Fpostgresql:5433/d").unwrap();
        assert_eq!((t.host(), t.port()), ("/var/run/postgresql", 5433));
        let t = parse("postgres://u:p@/d?host=/tmp/pg&port=6000").unwrap();
        assert_eq!((t.host(), t.port()), ("/tmp/pg", 6000));
        let t = parse(
            "postgres://u:p@h/d?options=-c%20statement_timeout%3D0&application_name=x&connect_timeout=7",
        )
        .unwrap();
        assert_eq!(t.options.as_deref(), Some("-c statement_timeout=0"));
        assert_eq!(t.connect_timeout, Some(Duration::from_secs(7)));
        for (bad, says) in [
            ("postgres://u:p@h1:5432,h2:5432/d", "several hosts"),
            ("postgres://u:p@/d?host=h1,h2", "several hosts"),
            (
                "postgres://u:p@h/d?target_session_attrs=read-write",
                "target_session_attrs",
            ),
            ("postgres://u:p@h/d?sslcert=/c.pem", "sslcert"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains(":p@"), "{bad}: {e}");
        }
    }

    #[test]
    fn weak_modes_with_the_public_roots_are_refused_as_libpq_does() {
        for bad in [
            "postgres://u:p@h/d?sslmode=verify-ca",
            "postgres://u:p@h/d?sslmode=require&sslrootcert=system",
            "postgres://u:p@h/d?sslmode=verify-ca&sslrootcert=system",
            "postgres://u:p@h/d?sslmode=prefer&sslrootcert=system",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("sslrootcert") && e.contains("verify-full"),
                "{bad}: {e}"
            );
            assert!(!e.contains(":p@"), "{e}");
        }
        let t = parse("postgres://u:p@h/d?sslrootcert=system").unwrap();
        assert_eq!(t.sslmode(), Some("verify-full"));
        assert!(parse("postgres://u:p@h/d?sslmode=verify-ca&sslrootcert=/ca.pem").is_ok());
        assert!(parse("postgres://u:p@h/d?sslmode=verify-full").is_ok());
    }

    #[test]
    fn a_pg_dump_child_gets_the_connection_but_not_the_password() {
        let t = PgEndpoint::parse_source(&Secret::new(
            "postgres://o%27brien:s3cr3t@db.example:6543/my%20db?sslmode=verify-full&options=-c%20x%3D1",
        ))
        .unwrap();
        assert_eq!(t.side(), Side::Source);
        let conninfo = t.libpq_conninfo("replicator pg_dump");
        assert!(
            conninfo.starts_with(
                "host='db.example' port=6543 user='o\\'brien' dbname='my db' application_name='replicator pg_dump' "
            ),
            "{conninfo}"
        );
        let env = t.libpq_env();
        for want in [
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "system"),
            ("PGOPTIONS", "-c x=1"),
            ("PGCONNECT_TIMEOUT", "30"),
        ] {
            assert!(env.contains(&(want.0, want.1.to_string())), "{env:?}");
        }
        assert!(!conninfo.contains("s3cr3t") && !format!("{env:?}").contains("s3cr3t"));
        // Its messages name its own variable.
        let e = PgEndpoint::parse_source(&Secret::new("postgres://u:p@h/d?sslmode=sometimes"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("SOURCE_DATABASE_URL is not a usable"), "{e}");
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
}
