//! What the dump needs of the target, checked before the wipe: a restore that would fail on
//! it must fail while the target is still whole.
//!
//! - `RESTORE_SCHEMAS` must not cut a restored object from what it needs (a view from the
//!   table it reads, a partition from its table, a foreign key from the table it references):
//!   the dependencies pg_dump recorded in the archive tell.
//! - Every extension the dump creates exists on the target or can be created by the role
//!   (available on the server, trusted, and the role may create in the database).
//! - Nothing the dump creates collides with an object of the same name that another role owns
//!   (`DROP OWNED BY CURRENT_USER` leaves those), and the role may create in every schema
//!   it restores into.
//! - The target lets the role open the sessions of a restore over one job at least
//!   ([`super::sessions`]).

use std::collections::{HashMap, HashSet};

use crate::dump::plan::{ExtensionAction, PlannedExtension};
use crate::dump::selection::{SelectOptions, Selection, select};
use crate::dump::toc::{Toc, TocEntry};
use crate::error::StepError;
use crate::replica::PgEndpoint;

/// Extensions for watching or maintaining a server, which application objects do not use:
/// a target that cannot have them gets a warning, not a refusal.
const SERVER_TOOLS: &[&str] = &[
    "pg_stat_statements",
    "pg_buffercache",
    "pgstattuple",
    "pg_prewarm",
    "pg_repack",
    "pgaudit",
    "pg_cron",
    "amcheck",
    "pageinspect",
    "pg_visibility",
    "pg_freespacemap",
    "pg_walinspect",
    "pg_stat_kcache",
    "pg_qualstats",
    "hypopg",
    "plpgsql",
];

/// Kinds of entries that create an object with a name of its own in a schema.
const NAMED_KINDS: &[&str] = &[
    "TABLE",
    "VIEW",
    "MATERIALIZED VIEW",
    "SEQUENCE",
    "FOREIGN TABLE",
    "TYPE",
    "DOMAIN",
];

#[derive(Debug, thiserror::Error)]
pub enum PreWipeError {
    #[error(
        "RESTORE_SCHEMAS leaves out what restored objects need: {pairs}; add the schemas they need to RESTORE_SCHEMAS (or leave RESTORE_SCHEMAS unset to restore every schema); nothing was touched"
    )]
    BrokenRestriction { pairs: String },
    #[error(
        "the dump needs the extension(s) {names}, which the role {role} cannot create on {target} ({why}); ask the database provider to make them available, or have a superuser run `CREATE EXTENSION ...` once in the target database (the replicator then keeps it), or leave out what needs them with RESTORE_SCHEMAS; nothing was touched"
    )]
    Extensions {
        names: String,
        role: String,
        target: String,
        why: String,
    },
    #[error(
        "the target {target} holds objects that the dump restores but that another role owns ({objects}); DROP OWNED BY CURRENT_USER cannot remove them and the restore would collide with them: drop them or change their owner (ALTER ... OWNER TO {role}), or set DATABASE_URL to the role that owns them"
    )]
    ForeignOwned {
        target: String,
        role: String,
        objects: String,
    },
    #[error(
        "the role {role} may not create objects in {place} of {target}, so the restore cannot create what the dump holds there: set DATABASE_URL to the role that owns the database (or GRANT CREATE ON {grant} TO {role})"
    )]
    NoCreate {
        target: String,
        role: String,
        place: String,
        grant: String,
    },
    #[error("checking the target {target} before the wipe failed: {detail}; will retry")]
    Query { target: String, detail: String },
}

impl crate::error::Classify for PreWipeError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            PreWipeError::Query { .. } => crate::error::FailureKind::Transient,
            _ => crate::error::FailureKind::Permanent,
        }
    }
}

fn qualified(e: &TocEntry) -> String {
    if e.schema == "-" || e.schema.is_empty() {
        format!("{} {}", e.desc, e.tag)
    } else {
        format!("{} {}.{}", e.desc, e.schema, e.tag)
    }
}

/// The pairs (restored entry, entry it needs) that `RESTORE_SCHEMAS` cuts apart: first those
/// whose restored entry creates an object with a name of its own (a view, a table, a
/// partition), then the rest (keys, index attachments, comments), each group sorted. The
/// message shows the first ten: a partition's key and index entries, which follow from the
/// partition, must not hide a view cut from its tables.
pub fn broken_by_restriction(
    toc: &Toc,
    deps: &HashMap<u32, Vec<u32>>,
    schemas: &[String],
    skip: &HashSet<u32>,
) -> Vec<(String, String)> {
    let wanted: HashSet<&str> = schemas.iter().map(String::as_str).collect();
    let by_id: HashMap<u32, &TocEntry> = toc.entries().map(|e| (e.id, e)).collect();
    let outside = |e: &TocEntry| {
        let schema = if e.desc == "SCHEMA" {
            e.tag.as_str()
        } else {
            e.schema.as_str()
        };
        schema != "-" && !schema.is_empty() && !wanted.contains(schema)
    };
    let mut pairs = Vec::new();
    for e in toc.entries().filter(|e| !skip.contains(&e.id)) {
        let named = NAMED_KINDS.contains(&e.desc.as_str());
        for d in deps.get(&e.id).into_iter().flatten() {
            if let Some(needed) = by_id.get(d).filter(|n| outside(n)) {
                pairs.push((!named, qualified(e), qualified(needed)));
            }
        }
    }
    pairs.sort();
    pairs.dedup();
    pairs
        .into_iter()
        .map(|(_, e, needed)| (e, needed))
        .collect()
}

/// Decides what is restored and checks that the target can take it; returns the selection
/// (with the extensions left out), the `PG_RESTORE_JOBS` (at most `jobs`) whose sessions the
/// target has room for, and each extension's action.
/// `deps` are the archive's recorded dependencies (`None` when the archive could not be read
/// natively: the restriction is then not checked, and a warning says so).
pub async fn check_restorable(
    target: &PgEndpoint,
    toc: &Toc,
    deps: Option<&HashMap<u32, Vec<u32>>>,
    opts: &SelectOptions,
    jobs: u32,
) -> Result<(Selection, u32, Vec<PlannedExtension>), StepError> {
    let selection = select(toc, opts);
    if let Some(schemas) = &opts.schemas {
        match deps {
            Some(deps) => {
                let pairs = broken_by_restriction(toc, deps, schemas, &selection.skip);
                if !pairs.is_empty() {
                    let shown: Vec<String> = pairs
                        .iter()
                        .take(10)
                        .map(|(a, b)| format!("{a} needs {b}"))
                        .collect();
                    let more = pairs.len().saturating_sub(10);
                    let mut text = shown.join(", ");
                    if more > 0 {
                        text.push_str(&format!(" and {more} more"));
                    }
                    return Err(PreWipeError::BrokenRestriction { pairs: text }.into());
                }
            }
            None => tracing::warn!(
                "could not read the dump's dependencies: RESTORE_SCHEMAS is not checked for objects it would cut from what they need"
            ),
        }
    }
    let client = target.connect().await?;
    let query = |e: tokio_postgres::Error| PreWipeError::Query {
        target: target.describe(),
        detail: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    };
    // Sessions: a restore refused one in the middle of its rows would fail after the wipe.
    let room = super::sessions::room(&client).await.map_err(query)?;
    let jobs = super::sessions::fit(target, &room, jobs)?;
    // Which extensions a restored entry depends on (pg_dump points a dependency on an
    // extension's member at the extension's entry).
    let ext_ids: HashMap<&str, u32> = toc
        .entries()
        .filter(|e| e.desc == "EXTENSION")
        .map(|e| (e.tag.as_str(), e.id))
        .collect();
    let used: Option<HashSet<String>> = deps.map(|deps| {
        ext_ids
            .iter()
            .filter(|(_, id)| {
                toc.entries().any(|e| {
                    !selection.skip.contains(&e.id)
                        && e.id != **id
                        && deps.get(&e.id).is_some_and(|d| d.contains(id))
                })
            })
            .map(|(name, _)| name.to_string())
            .collect()
    });
    let extensions = decide_extensions(&client, target, &selection.extensions, used.as_ref())
        .await
        .map_err(|e| e.or_query(&query))?;
    let mut selection = selection;
    for x in &extensions {
        if let ExtensionAction::LeftOut { why } = &x.action {
            tracing::warn!(extension = %x.name, "the dump has the extension {}, which the restore leaves out: {why}", x.name);
            for e in toc.entries().filter(|e| {
                (e.desc == "EXTENSION" && e.tag == x.name)
                    || (e.desc == "COMMENT" && e.tag == format!("EXTENSION {}", x.name))
            }) {
                selection.skip.insert(e.id);
                selection.why.insert(e.id, why.clone());
            }
        }
    }

    let restored: Vec<&TocEntry> = toc
        .entries()
        .filter(|e| !selection.skip.contains(&e.id))
        .collect();
    // Objects of the dump's names that another role owns.
    let (mut schemas, mut names): (Vec<String>, Vec<String>) = restored
        .iter()
        .filter(|e| NAMED_KINDS.contains(&e.desc.as_str()))
        .map(|e| (e.schema.clone(), e.name.clone()))
        .unzip();
    for e in restored.iter().filter(|e| e.desc == "SCHEMA") {
        schemas.push("-".into());
        names.push(e.tag.clone());
    }
    let rows = client
        .query(
            "SELECT o.schema || '.' || o.name, o.owner FROM (
                 SELECT n.nspname::text AS schema, c.relname::text AS name,
                        pg_get_userbyid(c.relowner)::text AS owner, c.relowner AS owner_oid
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r','p','v','m','S','f')
                 UNION ALL
                 SELECT n.nspname::text, t.typname::text, pg_get_userbyid(t.typowner)::text,
                        t.typowner
                   FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                  WHERE t.typrelid = 0 AND t.typelem = 0
                 UNION ALL
                 SELECT '-', n.nspname::text, pg_get_userbyid(n.nspowner)::text, n.nspowner
                   FROM pg_namespace n
             ) o
             JOIN unnest($1::text[], $2::text[]) AS w(schema, name)
               ON w.schema = o.schema AND w.name = o.name
             WHERE o.owner_oid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
             ORDER BY 1",
            &[&schemas, &names],
        )
        .await
        .map_err(query)?;
    if !rows.is_empty() {
        let objects: Vec<String> = rows
            .iter()
            .take(10)
            .map(|r| {
                let name: String = r.get(0);
                format!(
                    "{} owned by {}",
                    name.strip_prefix("-.").unwrap_or(&name),
                    r.get::<_, String>(1)
                )
            })
            .collect();
        let more = rows.len().saturating_sub(10);
        return Err(PreWipeError::ForeignOwned {
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
    // After the wipe, a schema the dump does not create is either still there (owned by
    // someone else, or pg_database_owner) or must be created by the role.
    let created: HashSet<&str> = restored
        .iter()
        .filter(|e| e.desc == "SCHEMA")
        .map(|e| e.tag.as_str())
        .collect();
    let mut into: Vec<String> = restored
        .iter()
        .map(|e| e.schema.clone())
        .filter(|s| s != "-" && !s.is_empty() && !created.contains(s.as_str()))
        .collect();
    into.sort();
    into.dedup();
    let privileges = super::privileges(&client, &into).await.map_err(query)?;
    if !created.is_empty() && !privileges.create_schemas {
        return Err(PreWipeError::NoCreate {
            target: target.describe(),
            role: target.user().to_string(),
            place: "the database (the dump creates schemas)".into(),
            grant: "DATABASE <name>".into(),
        }
        .into());
    }
    if let Some((schema, _)) = privileges
        .create_in
        .iter()
        .find(|(_, ok)| *ok != Some(true))
    {
        return Err(PreWipeError::NoCreate {
            target: target.describe(),
            role: target.user().to_string(),
            place: format!("schema {schema}"),
            grant: format!("SCHEMA {schema}"),
        }
        .into());
    }
    Ok((selection, jobs, extensions))
}

enum ExtError {
    Refused(PreWipeError),
    Query(tokio_postgres::Error),
}

impl ExtError {
    fn or_query(self, query: &impl Fn(tokio_postgres::Error) -> PreWipeError) -> PreWipeError {
        match self {
            ExtError::Refused(e) => e,
            ExtError::Query(e) => query(e),
        }
    }
}

/// Decides each extension of the dump: present (another role's, which the wipe leaves), created
/// by the restore (the role may), or left out (the target cannot have it, it is a server tool,
/// and no restored entry depends on it: its `CREATE EXTENSION` is then never sent); any other
/// is refused. `used` names the extensions a restored entry depends on (`None`: the archive's
/// dependencies are unknown, and every extension counts as used).
async fn decide_extensions(
    client: &tokio_postgres::Client,
    target: &PgEndpoint,
    extensions: &[String],
    used: Option<&HashSet<String>>,
) -> Result<Vec<PlannedExtension>, ExtError> {
    if extensions.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT w.name,
                    EXISTS (SELECT 1 FROM pg_extension e WHERE e.extname = w.name),
                    EXISTS (SELECT 1 FROM pg_available_extensions a WHERE a.name = w.name),
                    EXISTS (SELECT 1 FROM pg_available_extension_versions v
                             WHERE v.name = w.name AND (v.trusted OR NOT v.superuser)),
                    has_database_privilege(current_database(), 'CREATE'),
                    EXISTS (SELECT 1 FROM pg_extension e
                             WHERE e.extname = w.name AND e.extowner =
                                   (SELECT oid FROM pg_roles WHERE rolname = current_user))
               FROM unnest($1::text[]) AS w(name)",
            &[&extensions],
        )
        .await
        .map_err(ExtError::Query)?;
    let mut refused: Vec<(String, &'static str)> = Vec::new();
    let mut planned = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        let (installed, available, trusted, can_create, ours): (bool, bool, bool, bool, bool) =
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        // The wipe drops what the role owns: its own extensions are created again.
        let action = |a| PlannedExtension {
            name: name.clone(),
            action: a,
        };
        let why = if installed && !ours {
            planned.push(action(ExtensionAction::Present));
            continue;
        } else if !available {
            "not available on the server"
        } else if !trusted {
            "only a superuser may create it"
        } else if !can_create {
            "the role may not create in the database"
        } else {
            if !installed {
                tracing::info!(extension = %name, "the target lacks the extension {name}: the restore creates it (the role may)");
            }
            planned.push(action(ExtensionAction::Created));
            continue;
        };
        // A server tool nothing restored depends on is left out: its CREATE EXTENSION is
        // never sent (sending it failed the restore after the wipe).
        if SERVER_TOOLS.contains(&name.as_str()) && used.is_some_and(|u| !u.contains(&name)) {
            planned.push(action(ExtensionAction::LeftOut {
                why: format!(
                    "the target cannot have it ({why}); it is a server tool that no restored object uses"
                ),
            }));
            continue;
        }
        refused.push((name, why));
    }
    if refused.is_empty() {
        return Ok(planned);
    }
    let names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    let why: Vec<String> = refused.iter().map(|(n, w)| format!("{n}: {w}")).collect();
    Err(ExtError::Refused(PreWipeError::Extensions {
        names: names.join(", "),
        role: target.user().to_string(),
        target: target.describe(),
        why: why.join("; "),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restriction_that_cuts_a_view_from_its_table_is_named() {
        let toc = Toc::parse(
            "7; 2615 16477 SCHEMA - analytics postgres\n\
             217; 1259 16478 TABLE analytics ev postgres\n\
             216; 1259 16384 TABLE public t postgres\n\
             218; 1259 16483 VIEW public v postgres\n\
             3418; 0 16478 TABLE DATA analytics ev postgres\n",
        );
        let deps: HashMap<u32, Vec<u32>> =
            HashMap::from([(217, vec![7]), (218, vec![217]), (3418, vec![217])]);
        let opts = SelectOptions {
            schemas: Some(vec!["public".into()]),
            target_version_num: 170000,
            ..Default::default()
        };
        let sel = select(&toc, &opts);
        let pairs = broken_by_restriction(&toc, &deps, &["public".into()], &sel.skip);
        assert_eq!(
            pairs,
            vec![(
                "VIEW public.v".to_string(),
                "TABLE analytics.ev".to_string()
            )]
        );
        let both = ["public".to_string(), "analytics".to_string()];
        let sel = select(
            &toc,
            &SelectOptions {
                schemas: Some(both.to_vec()),
                target_version_num: 170000,
                ..Default::default()
            },
        );
        assert!(broken_by_restriction(&toc, &deps, &both, &sel.skip).is_empty());
    }

    /// A partition's key and index attachment sort before a view by name; the view, an
    /// object of its own, comes first all the same.
    #[test]
    fn objects_with_a_name_of_their_own_come_first() {
        let toc = Toc::parse(
            "7; 2615 16477 SCHEMA - reporting postgres\n\
             216; 1259 16384 TABLE public parent postgres\n\
             217; 1259 16390 TABLE reporting part postgres\n\
             218; 1259 16483 VIEW reporting v postgres\n\
             219; 2606 16490 CONSTRAINT public parent parent_pkey postgres\n\
             220; 2606 16491 CONSTRAINT reporting part part_pkey postgres\n\
             221; 0 0 INDEX ATTACH reporting part_pkey postgres\n",
        );
        let deps: HashMap<u32, Vec<u32>> = HashMap::from([
            (217, vec![7, 216]),
            (218, vec![7, 216]),
            (219, vec![216]),
            (220, vec![217, 219]),
            (221, vec![219, 220]),
        ]);
        let schemas = ["reporting".to_string()];
        let sel = select(
            &toc,
            &SelectOptions {
                schemas: Some(schemas.to_vec()),
                target_version_num: 170000,
                ..Default::default()
            },
        );
        let restored: Vec<String> = broken_by_restriction(&toc, &deps, &schemas, &sel.skip)
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            restored,
            [
                "TABLE reporting.part",
                "VIEW reporting.v",
                "CONSTRAINT reporting.part part_pkey",
                "INDEX ATTACH reporting.part_pkey",
            ]
        );
    }
}
