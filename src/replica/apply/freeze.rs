//! Which `COPY` of the rows' section may load its rows frozen (`COPY ... FREEZE`: the pages
//! written frozen and all-visible, so that no later pass of autovacuum rewrites them), and the
//! statement that does. `FREEZE` needs the table created or emptied in the same transaction:
//! the section empties the entry's own table first (`TRUNCATE ONLY`, in `Applier::drive`).

use super::script::EntryHeader;

/// The table of `COPY <table> (<columns>) FROM stdin;` as written (quoted as pg_dump quotes).
pub(super) fn copy_target(stmt: &str) -> Option<&str> {
    let rest = stmt.trim_start().strip_prefix("COPY ")?;
    let end = rest.find(" (").or_else(|| rest.find(" FROM "))?;
    Some(&rest[..end])
}

/// Does `COPY` statement `stmt` fill the table of entry `h` itself? Not with
/// `--load-via-partition-root`, where each partition's rows go through its partitioned root
/// (which `FREEZE` refuses, and which other entries fill too).
pub(super) fn fills_own_table(stmt: &str, h: &EntryHeader) -> bool {
    let Some(target) = copy_target(stmt) else {
        return false;
    };
    let own = |name: &str| {
        let q = format!("\"{}\"", name.replace('"', "\"\""));
        if crate::dump::rewrite::quote_ident(name) == name {
            vec![name.to_string(), q]
        } else {
            vec![q]
        }
    };
    own(&h.schema)
        .iter()
        .any(|s| own(&h.name).iter().any(|n| target == format!("{s}.{n}")))
}

/// `COPY ... FROM stdin;` as `COPY ... FROM stdin WITH (FREEZE);`.
pub(super) fn with_freeze(stmt: &str) -> String {
    let body = stmt.trim_end().trim_end_matches(';').trim_end();
    format!("{body} WITH (FREEZE);")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_only_a_copy_into_the_entrys_own_table() {
        let h = |schema: &str, name: &str| EntryHeader {
            name: name.into(),
            kind: "TABLE DATA".into(),
            schema: schema.into(),
        };
        let own = "COPY public.users (id, email) FROM stdin;";
        assert!(fills_own_table(own, &h("public", "users")));
        assert_eq!(
            with_freeze(own),
            "COPY public.users (id, email) FROM stdin WITH (FREEZE);"
        );
        assert!(fills_own_table(
            "COPY \"App\".\"user\" (id) FROM stdin;",
            &h("App", "user")
        ));
        assert!(fills_own_table(
            "COPY public.\"user\" (id) FROM stdin;",
            &h("public", "user")
        ));
        // --load-via-partition-root: the partition's rows go through its root.
        assert!(!fills_own_table(
            "COPY public.events (id, at) FROM stdin;",
            &h("public", "events_2024")
        ));
    }
}
