//! A table's primary key or unique constraint built as a unique index first, then made the
//! constraint (`CREATE UNIQUE INDEX`, then `ADD CONSTRAINT ... USING INDEX`), as pgcopydb does.
//!
//! Why: `ALTER TABLE ... ADD CONSTRAINT ... PRIMARY KEY (...)` builds its index under an
//! `ACCESS EXCLUSIVE` lock, so every other index of the table waits for it (and it for them).
//! `CREATE UNIQUE INDEX` takes a `SHARE` lock, which the table's other index builds share: the
//! key's index builds beside them, and only the last step, which builds nothing, needs the
//! exclusive lock. The result is the same catalog: an index named as the constraint, unique
//! (primary), on the same columns with the same options, owned by the constraint.
//!
//! Only the forms pg_dump writes for a plain key are rewritten: `PRIMARY KEY (cols)` or
//! `UNIQUE [NULLS NOT DISTINCT] (cols)`, with optional `INCLUDE (...)` and `WITH (...)`.
//! Anything else (`DEFERRABLE`, `WITHOUT OVERLAPS`, a tablespace, an expression) is left as
//! written. The caller rewrites only keys of tables that hold rows of their own (not a
//! partitioned table, where `USING INDEX` is refused).

use crate::dump::toc::parse_ident;

/// The two statements that replace a key's `ALTER TABLE ... ADD CONSTRAINT`, and the table
/// (as written) whose lock the second one takes.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyAsIndex {
    pub table: String,
    pub create_index: String,
    pub add_constraint: String,
}

/// Rewrites `stmt` if it is a primary key or unique constraint of a form that allows it.
pub fn key_as_index(stmt: &str) -> Option<KeyAsIndex> {
    let s = stmt.trim().strip_suffix(';')?.trim_end();
    let rest = s.strip_prefix("ALTER TABLE ONLY ")?;
    let (table, rest) = qualified_span(rest)?;
    let rest = rest.trim_start().strip_prefix("ADD CONSTRAINT ")?;
    let (name, rest) = ident_span(rest)?;
    let rest = rest.strip_prefix(' ')?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("PRIMARY KEY ") {
        ("PRIMARY KEY", r)
    } else if let Some(r) = rest.strip_prefix("UNIQUE ") {
        ("UNIQUE", r)
    } else {
        return None;
    };
    let (nulls, rest) = match rest.strip_prefix("NULLS NOT DISTINCT ") {
        Some(r) => (" NULLS NOT DISTINCT", r),
        None => ("", rest),
    };
    let (columns, rest) = ident_list(rest)?;
    let (include, rest) = match rest.strip_prefix(" INCLUDE ") {
        Some(r) => {
            let (list, r) = ident_list(r)?;
            (format!(" INCLUDE {list}"), r)
        }
        None => (String::new(), rest),
    };
    let (with, rest) = match rest.strip_prefix(" WITH (") {
        Some(r) => {
            let end = options_end(r)?;
            (format!(" WITH ({}", &r[..=end]), &r[end + 1..])
        }
        None => (String::new(), rest),
    };
    if !rest.is_empty() {
        return None;
    }
    Some(KeyAsIndex {
        table: table.to_string(),
        create_index: format!(
            "CREATE UNIQUE INDEX {name} ON {table} USING btree {columns}{include}{nulls}{with};"
        ),
        add_constraint: format!(
            "ALTER TABLE ONLY {table} ADD CONSTRAINT {name} {kind} USING INDEX {name};"
        ),
    })
}

/// One identifier at the start of `s`, as written (quotes kept), and what follows.
fn ident_span(s: &str) -> Option<(&str, &str)> {
    let (_, rest) = parse_ident(s)?;
    Some(s.split_at(s.len() - rest.len()))
}

/// `schema.name` at the start of `s`, as written, and what follows.
fn qualified_span(s: &str) -> Option<(&str, &str)> {
    let (schema, rest) = ident_span(s)?;
    let (name, rest) = ident_span(rest.strip_prefix('.')?)?;
    Some((&s[..schema.len() + 1 + name.len()], rest))
}

/// `(a, "B", c)` at the start of `s`, identifiers only, as written, and what follows.
fn ident_list(s: &str) -> Option<(&str, &str)> {
    let mut rest = s.strip_prefix('(')?;
    loop {
        let (_, r) = ident_span(rest)?;
        if let Some(r) = r.strip_prefix(", ") {
            rest = r;
        } else {
            let r = r.strip_prefix(')')?;
            return Some(s.split_at(s.len() - r.len()));
        }
    }
}

/// The index of the `)` that closes a `WITH (` whose inside starts `s` (values are quoted
/// with `'`, which may hold a parenthesis).
fn options_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            ')' if !quoted => return Some(i),
            '(' if !quoted => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_key_becomes_an_index_then_the_constraint() {
        let k = key_as_index(
            "ALTER TABLE ONLY public.answers\n    ADD CONSTRAINT answers_pkey PRIMARY KEY (id);\n",
        )
        .expect("rewritten");
        assert_eq!(k.table, "public.answers");
        assert_eq!(
            k.create_index,
            "CREATE UNIQUE INDEX answers_pkey ON public.answers USING btree (id);"
        );
        assert_eq!(
            k.add_constraint,
            "ALTER TABLE ONLY public.answers ADD CONSTRAINT answers_pkey PRIMARY KEY USING INDEX answers_pkey;"
        );
    }

    #[test]
    fn quoted_names_include_nulls_and_options_are_kept_as_written() {
        let k = key_as_index(
            "ALTER TABLE ONLY \"My Schema\".\"we\"\"ird t\"\n    ADD CONSTRAINT \"U k\" UNIQUE NULLS NOT DISTINCT (\"A\", b) INCLUDE (c) WITH (fillfactor='70', deduplicate_items='off');",
        )
        .expect("rewritten");
        assert_eq!(k.table, "\"My Schema\".\"we\"\"ird t\"");
        assert_eq!(
            k.create_index,
            "CREATE UNIQUE INDEX \"U k\" ON \"My Schema\".\"we\"\"ird t\" USING btree (\"A\", b) INCLUDE (c) NULLS NOT DISTINCT WITH (fillfactor='70', deduplicate_items='off');"
        );
        assert_eq!(
            k.add_constraint,
            "ALTER TABLE ONLY \"My Schema\".\"we\"\"ird t\" ADD CONSTRAINT \"U k\" UNIQUE USING INDEX \"U k\";"
        );
    }

    #[test]
    fn forms_that_cannot_be_built_as_a_plain_unique_index_are_left_alone() {
        for stmt in [
            // Deferrable: the index must not check at once.
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id) DEFERRABLE INITIALLY DEFERRED;",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_u UNIQUE (a) DEFERRABLE;",
            // PostgreSQL 18's temporal keys are GiST.
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id, valid_at WITHOUT OVERLAPS);",
            // Not keys.
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_c CHECK ((a > 0));",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_x EXCLUDE USING gist (r WITH &&);",
            "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_f FOREIGN KEY (a) REFERENCES public.u(id);",
            // Any form pg_dump does not write for a key.
            "ALTER TABLE public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
            "ALTER TABLE ONLY public.t REPLICA IDENTITY USING INDEX t_pkey;",
        ] {
            assert_eq!(key_as_index(stmt), None, "{stmt}");
        }
    }
}
