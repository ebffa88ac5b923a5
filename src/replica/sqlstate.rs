//! What went wrong on the target, and whether it is worth a retry: [`PostgresError`], and the
//! one list of transient SQLSTATEs ([`is_transient_sqlstate`]) that the target's steps and the
//! post-restore SQL share.

use std::path::PathBuf;

use tokio_postgres::error::SqlState;

/// Which database a URL names: the target (`DATABASE_URL`, wiped and restored) or a live
/// source (`SOURCE_DATABASE_URL`, only read by `pg_dump` and by the replicator's checks). Their
/// sessions are the same code; their messages name the right variable and say the right fix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    #[default]
    Target,
    Source,
}

impl Side {
    /// The variable that holds the URL.
    pub fn var(self) -> &'static str {
        match self {
            Side::Target => "DATABASE_URL",
            Side::Source => "SOURCE_DATABASE_URL",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Target => "target",
            Side::Source => "source",
        })
    }
}

/// What went wrong on the target (or a live source). Every message names the database as
/// `role@host:port/db` (never the password) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "{var} is not a usable PostgreSQL URL: {reason}; fix {var} (expected postgres://user:password@host:port/dbname?sslmode=prefer)"
    )]
    InvalidUrl { var: &'static str, reason: String },

    #[error(
        "cannot read the root certificate(s) {path} for {target}: {detail}; fix sslrootcert in {var} (a PEM file of the CA that signed the server's certificate, readable by the replicator)"
    )]
    TlsRootCert {
        var: &'static str,
        target: String,
        path: PathBuf,
        detail: String,
    },

    #[error("cannot connect to the {side} {target}: {detail}{hint}")]
    Connect {
        side: Side,
        target: String,
        detail: String,
        hint: String,
        transient: bool,
    },

    #[error("{what} on the {side} {target} failed: {detail}{hint}")]
    Query {
        side: Side,
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
        "cannot run {program}: {source}; install the PostgreSQL client tools ({program}) and make sure they are on PATH"
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
    /// Which database a session error is about (`None`: not a session's).
    pub fn side(&self) -> Option<Side> {
        match self {
            PostgresError::Connect { side, .. } | PostgresError::Query { side, .. } => Some(*side),
            _ => None,
        }
    }

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

impl crate::error::Classify for PostgresError {
    fn kind(&self) -> crate::error::FailureKind {
        if self.is_transient() {
            crate::error::FailureKind::Transient
        } else {
            crate::error::FailureKind::Permanent
        }
    }
}

/// Whether a statement that failed with `code` is worth running again: the connection was
/// lost or refused (class 08, a server shutting down or starting), or the statement lost a
/// race that a later attempt may win (serialization failure, deadlock, lock timeout, too many
/// connections, a cancelled statement). The one list of the target's steps and of the
/// post-restore SQL.
pub fn is_transient_sqlstate(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::QUERY_CANCELED
}

/// Transient or permanent, and a hint, for an error from `tokio-postgres` on the target.
pub(crate) fn classify(e: &tokio_postgres::Error) -> (bool, &'static str) {
    classify_on(e, Side::Target)
}

/// [`classify`] for a session of `side`: the hints name its variable, and what its role needs.
pub(crate) fn classify_on(e: &tokio_postgres::Error, side: Side) -> (bool, &'static str) {
    let (auth, no_database, privilege, retry) = match side {
        Side::Target => (
            "; check the role and password in DATABASE_URL (and the server's pg_hba.conf)",
            "; the database does not exist: fix the database name in DATABASE_URL",
            "; the role lacks a privilege: DATABASE_URL must name the role that owns the target database",
            "; will retry",
        ),
        Side::Source => (
            "; check the role and password in SOURCE_DATABASE_URL (and the source server's pg_hba.conf)",
            "; the database does not exist: fix the database name in SOURCE_DATABASE_URL",
            "; the role lacks a privilege: SOURCE_DATABASE_URL must name a role that may connect to the database and read all of it (its owner, or a member of pg_read_all_data)",
            "; will retry (if it lasts: check the host and port in SOURCE_DATABASE_URL, and that the source accepts connections from this machine)",
        ),
    };
    if let Some(code) = e.code() {
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            (false, auth)
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (false, no_database)
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            (false, privilege)
        } else if *code == SqlState::DISK_FULL {
            (
                false,
                "; the server's disk is full: in swap mode (REFRESH_MODE=swap, the default) the target holds yesterday's copy and tonight's until the switch, and yesterday's is left as it was; free space on the server, or set REFRESH_MODE=wipe to hold one copy (readers then see an empty replica during the restore)",
            )
        } else if is_transient_sqlstate(code) {
            (true, retry)
        } else {
            (false, "")
        };
    }
    // No SQLSTATE: the socket (refused, reset, timed out, closed) or the protocol. A refused or
    // cut connection is the server restarting or the network blinking, worth a retry; the
    // retry count bounds a host name that will never resolve.
    let text = error_text(e);
    if text.contains("password missing") || text.contains("authentication") {
        (false, auth)
    } else {
        (true, retry)
    }
}

/// `tokio_postgres::Error`'s `Display` says only "db error": add the server's message.
pub(super) fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            // The detail quotes row values (`Key (email)=(...)`): production data.
            s.push_str(&format!(" ({})", crate::secret::redact_row_data(d)));
        }
        s
    } else {
        match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        }
    }
}
