//! What of a dump a replica holds: every entry of the application (all its schemas, their
//! objects and rows, the extensions they use, the large objects), minus what a role that is
//! not a superuser cannot own, minus what the operator restricts with `RESTORE_SCHEMAS`.
//!
//! Whatever is left out is *said*: [`Selection::left_out`] lists it by kind, and the run's
//! summary, `status` and `status --json` show it, so that a replica never looks complete when
//! it is not.

use std::collections::{BTreeMap, HashSet};

use crate::dump::toc::{Toc, TocEntry};
pub use crate::machine::LeftOut;

/// Entry kinds that only a superuser (or the owner of the whole cluster's objects) can create,
/// or that make no sense on a replica: never restored, always reported.
const NOT_FOR_A_REPLICA: &[(&str, &str)] = &[
    ("EVENT TRIGGER", "event triggers need a superuser"),
    (
        "SUBSCRIPTION",
        "subscriptions need a superuser and would pull from production",
    ),
    (
        "SUBSCRIPTION TABLE",
        "subscriptions need a superuser and would pull from production",
    ),
    (
        "PUBLICATION",
        "publications are production's replication set, not the replica's",
    ),
    (
        "PUBLICATION TABLE",
        "publications are production's replication set, not the replica's",
    ),
    (
        "PUBLICATION TABLES IN SCHEMA",
        "publications are production's replication set, not the replica's",
    ),
    (
        "USER MAPPING",
        "user mappings hold production's credentials for remote servers",
    ),
];

/// The replicator's own schema in the target: a dump that has one (a replica's dump) must not
/// overwrite the records of this replica.
const OWN_SCHEMA: &str = "replicator";

/// Why an extension's comment is not restored: `CREATE EXTENSION` sets it, and it belongs to
/// the extension's owner.
pub const EXTENSION_COMMENT: &str =
    "an extension's comment is set by CREATE EXTENSION itself and belongs to its owner";

/// Why schema `public` and its comment are not restored: every database has it.
pub const PUBLIC_SCHEMA: &str =
    "schema public exists in every database (its owner keeps it and its comment)";

/// How many names a [`LeftOut`] keeps (the count is always exact).
pub const MAX_NAMES: usize = 20;

/// What the operator asked for, and what the target's server is.
#[derive(Clone, Debug, Default)]
pub struct SelectOptions {
    /// `RESTORE_SCHEMAS`: only these schemas (`None`: all of the application's).
    pub schemas: Option<Vec<String>>,
    /// The target's `server_version_num` (`0` when unknown).
    pub target_version_num: u32,
    /// `[dump] comments = "drop"` of `REPLICA_RULES`: every `COMMENT` left out.
    pub drop_comments: bool,
    /// `[dump] large_objects = "drop"`: large objects, their contents, comments and
    /// privileges left out.
    pub drop_large_objects: bool,
}

/// Entry kinds of large objects (pg_dump 17 and later: `BLOB METADATA` and `BLOBS` per
/// group; before: one `BLOB` each and one `BLOBS` for their contents).
pub const LARGE_OBJECT_DESCS: &[&str] = &["BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT"];

/// Whether `e` is a large object, or a comment, privilege or label of one.
pub fn is_large_object(e: &TocEntry) -> bool {
    LARGE_OBJECT_DESCS.contains(&e.desc.as_str())
        || (matches!(e.desc.as_str(), "COMMENT" | "ACL" | "SECURITY LABEL")
            && e.tag.starts_with("LARGE OBJECT "))
}

#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Dump ids of the entries not restored.
    pub skip: HashSet<u32>,
    /// Why each entry of `skip` is left out (what the restore plan says of it).
    pub why: BTreeMap<u32, String>,
    pub left_out: Vec<LeftOut>,
    /// The extensions the dump creates (and the restore will create if the target lacks them).
    pub extensions: Vec<String>,
}

fn qualified(e: &TocEntry) -> String {
    if e.schema == "-" || e.schema.is_empty() {
        e.tag.clone()
    } else {
        format!("{}.{}", e.schema, e.tag)
    }
}

/// Decides, entry by entry, what the restore leaves out.
pub fn select(toc: &Toc, opts: &SelectOptions) -> Selection {
    let mut skip = HashSet::new();
    let mut why_out = BTreeMap::new();
    // (kind, why) -> names, in a stable order for the report.
    let mut said: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut extensions = Vec::new();
    let wanted: Option<HashSet<&str>> = opts
        .schemas
        .as_ref()
        .map(|s| s.iter().map(String::as_str).collect());
    for e in toc.entries() {
        let desc = e.desc.as_str();
        let mut leave = |why: &str, report: bool| {
            skip.insert(e.id);
            why_out.insert(e.id, why.to_string());
            if report {
                said.entry((e.desc.clone(), why.to_string()))
                    .or_default()
                    .push(qualified(e));
            }
        };
        if desc == "EXTENSION" {
            extensions.push(e.tag.clone());
            continue;
        }
        if let Some((_, why)) = NOT_FOR_A_REPLICA.iter().find(|(d, _)| *d == desc) {
            leave(why, true);
            continue;
        }
        if opts.drop_large_objects && is_large_object(e) {
            leave("[dump] large_objects = \"drop\" in REPLICA_RULES", true);
            continue;
        }
        if opts.drop_comments && desc == "COMMENT" {
            leave("[dump] comments = \"drop\" in REPLICA_RULES", true);
            continue;
        }
        // The comment of an extension belongs to the extension's owner; the public schema
        // exists in every database and belongs to the database owner or a superuser.
        if desc == "COMMENT" && e.tag.starts_with("EXTENSION ") {
            leave(EXTENSION_COMMENT, false);
            continue;
        }
        if (desc == "COMMENT" && e.tag == "SCHEMA public")
            || (desc == "SCHEMA" && e.tag == "public")
        {
            leave(PUBLIC_SCHEMA, false);
            continue;
        }
        if desc == "STATISTICS DATA"
            && opts.target_version_num > 0
            && opts.target_version_num < 180000
        {
            leave(
                "planner statistics from PostgreSQL 18 cannot be restored into an older server (ANALYZE rebuilds them)",
                true,
            );
            continue;
        }
        let schema = if desc == "SCHEMA" {
            e.tag.as_str()
        } else {
            e.schema.as_str()
        };
        if schema == OWN_SCHEMA {
            leave(
                "schema replicator is the replicator's own: it holds this replica's run records",
                true,
            );
            continue;
        }
        if let Some(wanted) = &wanted
            && schema != "-"
            && !schema.is_empty()
            && !wanted.contains(schema)
        {
            leave(
                "not in RESTORE_SCHEMAS",
                desc == "SCHEMA" || desc == "TABLE DATA",
            );
        }
    }
    let left_out = said
        .into_iter()
        .map(|((kind, why), names)| LeftOut {
            kind,
            count: names.len() as u64,
            names: names.into_iter().take(MAX_NAMES).collect(),
            why,
        })
        .collect();
    Selection {
        skip,
        why: why_out,
        left_out,
        extensions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = ";\n;     Dumped from database version: 17.2\n;\n\
        7; 2615 16477 SCHEMA - analytics postgres\n\
        8; 2615 2200 SCHEMA - public pg_database_owner\n\
        9; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
        2; 3079 16391 EXTENSION - pg_trgm \n\
        3429; 0 0 COMMENT - EXTENSION pg_trgm \n\
        217; 1259 16478 TABLE analytics ev postgres\n\
        216; 1259 16384 TABLE public t postgres\n\
        3430; 0 0 COMMENT public TABLE t postgres\n\
        3418; 0 16478 TABLE DATA analytics ev postgres\n\
        3417; 0 16384 TABLE DATA public t postgres\n\
        3421; 0 0 BLOBS - BLOBS \n\
        3500; 3466 16600 EVENT TRIGGER - audit_ddl postgres\n\
        3501; 6104 16601 PUBLICATION - pub postgres\n\
        3600; 0 0 STATISTICS DATA public t \n";

    fn ids(s: &Selection) -> Vec<u32> {
        let mut v: Vec<u32> = s.skip.iter().copied().collect();
        v.sort();
        v
    }

    #[test]
    fn a_replica_holds_every_schema_and_says_what_it_leaves_out() {
        let toc = Toc::parse(LIST);
        let s = select(
            &toc,
            &SelectOptions {
                schemas: None,
                target_version_num: 180001,
                ..Default::default()
            },
        );
        assert_eq!(ids(&s), vec![8, 9, 3429, 3500, 3501]);
        assert_eq!(s.extensions, vec!["pg_trgm"]);
        let kinds: Vec<(&str, u64)> = s
            .left_out
            .iter()
            .map(|l| (l.kind.as_str(), l.count))
            .collect();
        assert_eq!(kinds, vec![("EVENT TRIGGER", 1), ("PUBLICATION", 1)]);
        assert_eq!(s.left_out[0].names, vec!["audit_ddl"]);
    }

    #[test]
    fn older_targets_get_no_statistics_and_schemas_can_be_restricted() {
        let toc = Toc::parse(LIST);
        let s = select(
            &toc,
            &SelectOptions {
                schemas: Some(vec!["public".into()]),
                target_version_num: 160004,
                ..Default::default()
            },
        );
        for id in [7, 217, 3418, 3600] {
            assert!(s.skip.contains(&id), "{id} should be left out");
        }
        for id in [216, 3417, 3430, 3421, 2] {
            assert!(!s.skip.contains(&id), "{id} should be restored");
        }
        let kinds: Vec<(&str, u64)> = s
            .left_out
            .iter()
            .map(|l| (l.kind.as_str(), l.count))
            .collect();
        assert!(kinds.contains(&("SCHEMA", 1)), "{kinds:?}");
        assert!(kinds.contains(&("TABLE DATA", 1)), "{kinds:?}");
        assert!(kinds.contains(&("STATISTICS DATA", 1)), "{kinds:?}");
    }

    /// `[dump] comments = "drop"` and `large_objects = "drop"` of REPLICA_RULES: left out
    /// and said, large objects' own comments and privileges with them.
    #[test]
    fn comments_and_large_objects_can_be_left_out() {
        let list = format!(
            "{LIST}3422; 0 0 COMMENT - LARGE OBJECT 16441 postgres\n\
             3423; 2613 16441 BLOB METADATA - 16441 postgres\n\
             3424; 0 0 ACL - LARGE OBJECT 16441 postgres\n"
        );
        let toc = Toc::parse(&list);
        let s = select(
            &toc,
            &SelectOptions {
                drop_comments: true,
                drop_large_objects: true,
                ..Default::default()
            },
        );
        for id in [3430, 3421, 3422, 3423, 3424] {
            assert!(s.skip.contains(&id), "{id} should be left out");
        }
        assert!(!s.skip.contains(&216) && !s.skip.contains(&3417));
        let said: Vec<(&str, u64)> = s
            .left_out
            .iter()
            .filter(|l| l.why.contains("REPLICA_RULES"))
            .map(|l| (l.kind.as_str(), l.count))
            .collect();
        assert!(said.contains(&("COMMENT", 1)), "{said:?}");
        assert!(said.contains(&("BLOBS", 1)), "{said:?}");
        let kept = select(&toc, &SelectOptions::default());
        assert!(!kept.skip.contains(&3430) && !kept.skip.contains(&3421));
    }
}
