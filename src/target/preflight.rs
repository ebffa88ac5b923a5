//! Before the wipe, the target can take the dump: objects of the dump's names that another
//! role owns survive `DROP OWNED BY CURRENT_USER` and make the restore collide with them; a
//! role that may not create in schema `public` cannot restore at all. (That the dump's data is
//! whole is `dump::verify`.)

use crate::dump::toc::Toc;
use crate::error::StepError;
use crate::target::Target;

#[derive(Debug, thiserror::Error)]
pub enum CanTakeError {
    #[error(
        "the target {target} holds objects that the dump restores but that another role owns \
         ({objects}); DROP OWNED BY CURRENT_USER cannot remove them and the restore would collide \
         with them: drop them or change their owner (ALTER ... OWNER TO {role}), or set \
         DATABASE_URL to the role that owns them"
    )]
    ForeignOwned {
        target: String,
        role: String,
        objects: String,
    },
    #[error(
        "the role {role} may not create objects in schema public of {target}, so pg_restore cannot \
         create the tables: set DATABASE_URL to the role that owns the database (or GRANT CREATE \
         ON SCHEMA public TO {role})"
    )]
    NoCreate { target: String, role: String },
    #[error("checking the target {target} before the wipe failed: {detail}; will retry")]
    Query { target: String, detail: String },
}

impl From<CanTakeError> for StepError {
    fn from(e: CanTakeError) -> StepError {
        match e {
            CanTakeError::Query { .. } => StepError::transient(e.to_string()),
            _ => StepError::permanent(e.to_string()),
        }
    }
}

/// Kinds of dump entries that create a named object in their schema.
const NAMED_KINDS: &[&str] = &[
    "TABLE",
    "VIEW",
    "MATERIALIZED VIEW",
    "SEQUENCE",
    "FOREIGN TABLE",
    "TYPE",
    "DOMAIN",
];

/// Checks, before the wipe, that the restore will be able to create what the dump holds.
/// `toc` is the run's one read of the dump's table of contents.
pub async fn check_target_can_take(target: &Target, toc: &Toc) -> Result<(), StepError> {
    let names: Vec<String> = toc
        .entries()
        .filter(|e| e.schema == "public" && NAMED_KINDS.contains(&e.desc.as_str()))
        .map(|e| e.name.clone())
        .collect();
    let client = target.connect().await?;
    let query = |e: tokio_postgres::Error| CanTakeError::Query {
        target: target.describe(),
        detail: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    };
    let rows = client
        .query(
            "SELECT o.name, o.owner FROM (
                 SELECT c.relname::text AS name, pg_get_userbyid(c.relowner)::text AS owner,
                        c.relowner AS owner_oid
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','S','f')
                 UNION ALL
                 SELECT t.typname::text, pg_get_userbyid(t.typowner)::text, t.typowner
                   FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                  WHERE n.nspname = 'public' AND t.typrelid = 0 AND t.typelem = 0
             ) o
             WHERE o.owner_oid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
               AND o.name = ANY($1)
             ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(query)?;
    if !rows.is_empty() {
        let objects: Vec<String> = rows
            .iter()
            .take(10)
            .map(|r| {
                format!(
                    "{} owned by {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1)
                )
            })
            .collect();
        let more = rows.len().saturating_sub(10);
        return Err(CanTakeError::ForeignOwned {
            target: target.describe(),
            role: target.user().to_string(),
            objects: if more > 0 {
                format!("{} and {more} more", objects.join(", "))
            } else {
                objects.join(", ")
            },
        }
        .into());
    }
    // After the wipe, public is either still there (owned by someone else, or
    // pg_database_owner) or created again by the role (which then needs CREATE on the database).
    let can_create: bool = client
        .query_one(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')
                         THEN has_schema_privilege('public', 'CREATE')
                         ELSE has_database_privilege(current_database(), 'CREATE') END",
            &[],
        )
        .await
        .map_err(query)?
        .get(0);
    if !can_create {
        return Err(CanTakeError::NoCreate {
            target: target.describe(),
            role: target.user().to_string(),
        }
        .into());
    }
    Ok(())
}
