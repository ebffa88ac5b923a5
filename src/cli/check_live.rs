//! `check`'s lines for a live source (`SOURCE_DATABASE_URL`): it answers, with a server that
//! `pg_dump` can read, and it is not the target.

use super::report::Check;
use crate::replica::PgEndpoint;

/// A live source: it answers (its version, against pg_dump's), and it is not the target
/// (the rule a run applies before its pg_dump starts).
pub(super) async fn live_source_checks(source: &PgEndpoint, target: &PgEndpoint) -> Vec<Check> {
    let refused = "target is not the source";
    let identity = match crate::replica::refuse_same_database(source, target).await {
        Ok(identity) => identity,
        Err(e @ crate::replica::IdentityError::SameDatabase { .. }) => {
            return vec![
                Check::ok(
                    "source",
                    format!("{} answers (SOURCE_DATABASE_URL)", source.describe()),
                ),
                Check::fail(refused, e.to_string()),
            ];
        }
        Err(crate::replica::IdentityError::Postgres(e)) => {
            // Which of the two did not answer: the source's line says it, the target's
            // own lines below say it for the target.
            let line = match e.side() {
                Some(crate::replica::Side::Target) => Check::skip(
                    "source",
                    "the target did not answer (see the target's line)",
                ),
                _ => Check::fail("source", e.to_string()),
            };
            return vec![line, Check::skip(refused, "needs both databases to answer")];
        }
    };
    let pg_dump = crate::replica::pg_dump_version().await;
    let source_line = match &pg_dump {
        Err(e) => Check::fail("source", e.to_string()),
        Ok(v) => {
            let major = |v: &str| {
                v.split(|c: char| !c.is_ascii_digit())
                    .find(|p| !p.is_empty())
                    .and_then(|m| m.parse::<u32>().ok())
            };
            let server = identity.version.split_whitespace().next().unwrap_or("");
            let detail = format!(
                "{} answers (SOURCE_DATABASE_URL): PostgreSQL {server}; {v}",
                source.describe()
            );
            match (
                major(v.trim_start_matches(|c: char| !c.is_ascii_digit())),
                major(server),
            ) {
                (Some(d), Some(s)) if d < s => Check::fail(
                    "source",
                    format!(
                        "{detail}: pg_dump refuses a server newer than itself; install the PostgreSQL client {s} (or newer) and put it first on PATH"
                    ),
                ),
                _ => Check::ok("source", detail),
            }
        }
    };
    vec![
        source_line,
        Check::ok(
            refused,
            format!(
                "the source {} and the target {} are different databases (each server was asked who it is)",
                source.describe(),
                target.describe()
            ),
        ),
    ]
}
