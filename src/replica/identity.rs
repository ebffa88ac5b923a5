//! Whether a live source (`SOURCE_DATABASE_URL`) and the target (`DATABASE_URL`) are one
//! database: a run would wipe what it copies. The URLs alone cannot tell (`localhost` and
//! `127.0.0.1`, a DNS alias, a pooler in front of the server), so both servers are asked who
//! they are, and the URLs are the last resort.

use std::net::IpAddr;

use super::sqlstate::PostgresError;
use super::url::PgEndpoint;

/// What a server says about itself and the database a session is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `pg_control_system()`'s `system_identifier`: the cluster's (its physical replicas
    /// share it). `None` when the role may not call it.
    pub system_identifier: Option<i64>,
    /// `pg_postmaster_start_time()` and the `port` setting: the same server, whatever the
    /// address it is reached by.
    pub started: Option<String>,
    pub port_setting: Option<String>,
    /// `inet_server_addr()` and `inet_server_port()`: `None` over a unix socket.
    pub addr: Option<String>,
    pub port: Option<i32>,
    pub database: String,
    /// `server_version` (`17.2`, `15.14 (Debian ...)`).
    pub version: String,
}

/// The source is the target.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "SOURCE_DATABASE_URL ({source_db}) and DATABASE_URL ({target_db}) point at the same database ({how}): a run would wipe the database it copies. Set DATABASE_URL to the replica's database (a database the replicator may wipe), or SOURCE_DATABASE_URL to the database to copy"
    )]
    SameDatabase {
        source_db: String,
        target_db: String,
        how: String,
    },
    #[error(transparent)]
    Postgres(#[from] PostgresError),
}

impl crate::error::Classify for IdentityError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            IdentityError::Postgres(e) => e.kind(),
            IdentityError::SameDatabase { .. } => crate::error::FailureKind::Permanent,
        }
    }
}

/// Asks the server of `t` who it is (one short session).
pub async fn identify(t: &PgEndpoint) -> Result<ServerIdentity, PostgresError> {
    let client = t.connect_as(super::CONTROL_APPLICATION_NAME).await?;
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_version'),
                    host(inet_server_addr()), inet_server_port(),
                    pg_postmaster_start_time()::text, current_setting('port')",
            &[],
        )
        .await
        .map_err(|e| t.query_error("reading who the server is", e))?;
    // Revoked from PUBLIC on some managed servers: the other signals decide then.
    let system_identifier = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .ok()
        .map(|r| r.get::<_, i64>(0));
    Ok(ServerIdentity {
        system_identifier,
        database: row.get(0),
        version: row.get(1),
        addr: row.get(2),
        port: row.get(3),
        started: row.get(4),
        port_setting: row.get(5),
    })
}

/// Refuses a source that is the target, from what both servers say; returns what the source
/// said (its version for `check`).
pub async fn refuse_same_database(
    source: &PgEndpoint,
    target: &PgEndpoint,
) -> Result<ServerIdentity, IdentityError> {
    let (s, t) = tokio::try_join!(identify(source), identify(target))?;
    if let Some(how) = same_database((source, &s), (target, &t)) {
        return Err(IdentityError::SameDatabase {
            source_db: source.describe(),
            target_db: target.describe(),
            how,
        });
    }
    Ok(s)
}

/// How `a` and `b` are one database (`None`: they are not). A different database name is
/// another database, on any server. Two system identifiers say for sure (equal: one cluster,
/// or one of its physical replicas, which the wipe reaches too). Without them, any of the
/// weaker signals that says "same" wins: a refused run is said plainly, a wiped source is not
/// undone.
pub fn same_database(
    a: (&PgEndpoint, &ServerIdentity),
    b: (&PgEndpoint, &ServerIdentity),
) -> Option<String> {
    let ((ta, a), (tb, b)) = (a, b);
    if a.database != b.database {
        return None;
    }
    let db = &a.database;
    if let (Some(x), Some(y)) = (a.system_identifier, b.system_identifier) {
        return (x == y).then(|| {
            format!("database {db} of the same PostgreSQL cluster, or of one of its replicas: system identifier {x}")
        });
    }
    if let (Some(sa), Some(sb), Some(pa), Some(pb)) =
        (&a.started, &b.started, &a.port_setting, &b.port_setting)
        && sa == sb
        && pa == pb
    {
        return Some(format!(
            "database {db} of the same server: started at {sa}, port {pa}"
        ));
    }
    if let (Some(xa), Some(xb), Some(pa), Some(pb)) = (&a.addr, &b.addr, a.port, b.port) {
        if same_address(xa, xb) && pa == pb {
            return Some(format!("database {db} of the server at {xa} port {pa}"));
        }
        return None;
    }
    // A unix socket on one side: the server has no address to tell, the URLs do.
    (same_address(ta.host(), tb.host()) && ta.port() == tb.port()).then(|| {
        format!(
            "database {db} of the same host and port in both URLs: {}:{}",
            ta.host(),
            ta.port()
        )
    })
}

/// Two host names or addresses of one machine: equal, or both loopback.
fn same_address(a: &str, b: &str) -> bool {
    let loopback = |h: &str| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    a.eq_ignore_ascii_case(b) || (loopback(a) && loopback(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn target(url: &str) -> PgEndpoint {
        PgEndpoint::parse(&Secret::new(url)).unwrap()
    }

    fn id(sysid: Option<i64>, addr: Option<&str>, db: &str) -> ServerIdentity {
        ServerIdentity {
            system_identifier: sysid,
            started: None,
            port_setting: None,
            addr: addr.map(str::to_string),
            port: addr.map(|_| 5432),
            database: db.into(),
            version: "17.2".into(),
        }
    }

    #[test]
    fn the_system_identifier_decides_when_both_servers_give_it() {
        let t = target("postgres://u:p@db.example:5432/app");
        let s = target("postgres://u:p@other.example:5432/app");
        let same = same_database(
            (&s, &id(Some(7), Some("10.0.0.1"), "app")),
            (&t, &id(Some(7), Some("10.0.0.2"), "app")),
        );
        assert!(same.unwrap().contains("system identifier 7"));
        // One cluster, another database: allowed.
        assert!(
            same_database(
                (&s, &id(Some(7), None, "prod")),
                (&t, &id(Some(7), None, "app"))
            )
            .is_none()
        );
        // Two clusters, even reached at one address (a pooler, a port forward).
        assert!(
            same_database(
                (&s, &id(Some(7), Some("10.0.0.1"), "app")),
                (&t, &id(Some(8), Some("10.0.0.1"), "app"))
            )
            .is_none()
        );
    }

    #[test]
    fn without_it_the_start_time_the_address_or_the_urls_decide() {
        let t = target("postgres://u:p@localhost:5432/app");
        let s = target("postgres://u:p@127.0.0.1:5432/app");
        let mut a = id(None, Some("127.0.0.1"), "app");
        let mut b = id(Some(1), Some("::1"), "app");
        assert!(
            same_database((&s, &a), (&t, &b))
                .unwrap()
                .contains("127.0.0.1 port 5432")
        );
        b.addr = Some("10.1.1.1".into());
        assert!(same_database((&s, &a), (&t, &b)).is_none());
        (a.started, a.port_setting) = (Some("2026-01-01 00:00:00+00".into()), Some("5432".into()));
        (b.started, b.port_setting) = (a.started.clone(), a.port_setting.clone());
        assert!(
            same_database((&s, &a), (&t, &b))
                .unwrap()
                .contains("started at")
        );
        // Unix sockets: the URLs' hosts and ports.
        let (a, b) = (id(None, None, "app"), id(None, None, "app"));
        assert!(same_database((&s, &a), (&t, &b)).is_some());
        let other = target("postgres://u:p@127.0.0.1:5433/app");
        assert!(same_database((&other, &a), (&t, &b)).is_none());
    }
}
