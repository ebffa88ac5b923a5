//! How many sessions the target lets the replicator open, against how many a restore opens.
//!
//! A restore holds, at its peak, the advisory lock's session, the records' session, and two
//! sessions per `PG_RESTORE_JOBS`: one loading rows and one building the indexes of a table
//! already loaded. A small replica's server (few `max_connections`, a role or database
//! `CONNECTION LIMIT`, an analysts' tool holding sessions) may not have that many: a session
//! refused in the middle of the rows would fail the night after the wipe. So the room is
//! measured before the wipe (by `check` and `run`, in the pre-wipe checks), and again when the
//! rows start, where `PG_RESTORE_JOBS` is lowered to what fits, with a warning.

use tokio_postgres::Client;

use super::url::PgEndpoint;
use crate::error::StepError;

/// Sessions a restore holds whatever `PG_RESTORE_JOBS` is: the advisory lock's and the
/// records'.
pub const FIXED_SESSIONS: u32 = 2;

/// The most sessions a restore over `jobs` holds at once.
pub fn peak_sessions(jobs: u32) -> u32 {
    FIXED_SESSIONS + 2 * jobs
}

/// The tightest of the limits on the target's sessions, for the replicator's role in its
/// database: what it allows in all, and how many of those other clients hold now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// Which limit is the tightest, as an operator would look it up.
    pub limit: String,
    /// Sessions the limit allows in all.
    pub allowed: u32,
    /// Sessions under that limit held by others than this replicator (other clients, other
    /// roles or databases for the server's limit).
    pub others: u32,
}

impl Room {
    /// Sessions the replicator may hold at once.
    pub fn free(&self) -> u32 {
        self.allowed.saturating_sub(self.others)
    }

    /// The largest `PG_RESTORE_JOBS` up to `wanted` whose peak fits, or `None` if not even
    /// one does.
    pub fn jobs_that_fit(&self, wanted: u32) -> Option<u32> {
        (1..=wanted.max(1))
            .rev()
            .find(|j| peak_sessions(*j) <= self.free())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error(
        "{target} allows the role {role} at most {allowed} session(s) ({limit}), and a restore needs at least {needed} (the advisory lock's, the records', one for rows and one for indexes; with PG_RESTORE_JOBS=J it holds 2 + 2 x J); raise the limit (ALTER ROLE ... CONNECTION LIMIT, ALTER DATABASE ... CONNECTION LIMIT, or max_connections, by the database provider's plan); nothing was touched"
    )]
    TooFewAllowed {
        target: String,
        role: String,
        limit: String,
        allowed: u32,
        needed: u32,
    },
    #[error(
        "{target} has {free} session(s) free for the role {role} ({limit}: {allowed} allowed, {others} held by other clients), and a restore needs at least {needed}; it is retried later; to run now, close idle sessions of the other clients (SELECT application_name, usename, state FROM pg_stat_activity tells who holds them)"
    )]
    HeldByOthers {
        target: String,
        role: String,
        limit: String,
        allowed: u32,
        others: u32,
        free: u32,
        needed: u32,
    },
}

impl crate::error::Classify for SessionsError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            SessionsError::TooFewAllowed { .. } => crate::error::FailureKind::Permanent,
            // Other clients come and go: the next attempt may find the room.
            SessionsError::HeldByOthers { .. } => crate::error::FailureKind::Transient,
        }
    }
}

/// The room on the target, read on `client` (a session of the replicator's role in the target
/// database). The replicator's own sessions (its `application_name`s all start with
/// `replicator`: this one, a lock's, a running restore's) are not counted as others': they are
/// gone, or this run's, by the time the restore opens its own.
pub async fn room(client: &Client) -> Result<Room, tokio_postgres::Error> {
    let row = client
        .query_one(
            "WITH s AS (
                 SELECT usename = current_user AS mine_role,
                        datname = current_database() AS mine_db,
                        application_name LIKE 'replicator%' AND usename = current_user
                            AND datname = current_database() AS ours
                   FROM pg_stat_activity WHERE backend_type = 'client backend'
             ), me AS (
                 SELECT rolsuper, rolconnlimit FROM pg_roles WHERE rolname = current_user
             )
             SELECT current_setting('max_connections')::int
                    - CASE WHEN me.rolsuper THEN 0 ELSE
                        current_setting('superuser_reserved_connections')::int
                        + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)
                      END,
                    (SELECT count(*) FROM s WHERE NOT ours)::int,
                    me.rolconnlimit,
                    (SELECT count(*) FROM s WHERE mine_role AND NOT ours)::int,
                    (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
                    (SELECT count(*) FROM s WHERE mine_db AND NOT ours)::int
               FROM me",
            &[],
        )
        .await?;
    // Each limit is a column, and the sessions others hold under it the next one.
    let room = |name: &str, column: usize| Room {
        limit: format!("{name} {}", row.get::<_, i32>(column)),
        allowed: row.get::<_, i32>(column).max(0) as u32,
        others: row.get::<_, i32>(column + 1).max(0) as u32,
    };
    let mut rooms = vec![room(
        "the server's max_connections less its reserved sessions,",
        0,
    )];
    // A role's or a database's CONNECTION LIMIT of -1 is none.
    if row.get::<_, i32>(2) >= 0 {
        rooms.push(room("the role's CONNECTION LIMIT", 2));
    }
    if row.get::<_, i32>(4) >= 0 {
        rooms.push(room("the database's CONNECTION LIMIT", 4));
    }
    Ok(rooms
        .into_iter()
        .min_by_key(Room::free)
        .expect("the server's limit is always there"))
}

/// `Ok(jobs)` that fit the room, up to `wanted`; the error says which limit, and whether it
/// is the limit itself (permanent) or other clients' sessions (transient).
pub fn fit(target: &PgEndpoint, room: &Room, wanted: u32) -> Result<u32, SessionsError> {
    if let Some(jobs) = room.jobs_that_fit(wanted) {
        return Ok(jobs);
    }
    let needed = peak_sessions(1);
    if room.allowed < needed {
        Err(SessionsError::TooFewAllowed {
            target: target.describe(),
            role: target.user().to_string(),
            limit: room.limit.clone(),
            allowed: room.allowed,
            needed,
        })
    } else {
        Err(SessionsError::HeldByOthers {
            target: target.describe(),
            role: target.user().to_string(),
            limit: room.limit.clone(),
            allowed: room.allowed,
            others: room.others,
            free: room.free(),
            needed,
        })
    }
}

/// The `PG_RESTORE_JOBS` the restore uses on `target`: `wanted`, or fewer with a warning when
/// the target's room is short. Read when the rows start (the room may have changed since the
/// pre-wipe check).
pub async fn jobs_for_restore(target: &PgEndpoint, wanted: u32) -> Result<u32, StepError> {
    let client = target.connect().await?;
    let room = room(&client)
        .await
        .map_err(|e| target.query_error("reading the target's session limits", e))?;
    drop(client);
    let jobs = fit(target, &room, wanted)?;
    if jobs < wanted {
        tracing::warn!(
            jobs,
            wanted,
            free = room.free(),
            "PG_RESTORE_JOBS={wanted} needs {} sessions at once, and the target has {} free for this role ({}: {} allowed, {} held by other clients): restoring over {jobs} job(s), which need {}",
            peak_sessions(wanted),
            room.free(),
            room.limit,
            room.allowed,
            room.others,
            peak_sessions(jobs)
        );
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(allowed: u32, others: u32) -> Room {
        Room {
            limit: "test".into(),
            allowed,
            others,
        }
    }

    #[test]
    fn the_most_jobs_whose_peak_fits() {
        assert_eq!(peak_sessions(4), 10);
        assert_eq!(room(100, 3).jobs_that_fit(4), Some(4));
        assert_eq!(room(10, 0).jobs_that_fit(4), Some(4));
        assert_eq!(room(9, 0).jobs_that_fit(4), Some(3));
        assert_eq!(room(10, 4).jobs_that_fit(4), Some(2));
        assert_eq!(room(4, 0).jobs_that_fit(4), Some(1));
        assert_eq!(room(3, 0).jobs_that_fit(4), None);
        assert_eq!(room(5, 3).jobs_that_fit(4), None);
        // More others than allowed (a superuser's sessions past a role's limit).
        assert_eq!(room(4, 9).jobs_that_fit(1), None);
    }
}
