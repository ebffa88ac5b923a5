//! The dump's tables as the rules need them: each column's name and type, whether it is
//! `NOT NULL`, part of a primary key or unique constraint or index, or generated. Read from
//! the SQL pg_dump writes (`CREATE TABLE`, `ADD CONSTRAINT ... PRIMARY KEY/UNIQUE`, `CREATE
//! UNIQUE INDEX`), one statement at a time: the caller feeds the schema's statements.

use std::collections::BTreeMap;

/// One column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// As pg_dump writes it: `character varying(100)`, `timestamp with time zone`, `jsonb`.
    pub ty: String,
    pub not_null: bool,
    /// In a primary key, a unique constraint or a unique index (any of its columns).
    pub unique: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: computed by the target, never in `COPY`.
    pub generated: bool,
}

/// One table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<Column>,
    /// `PARTITION OF` or `INHERITS` this table: its columns come from there too.
    pub parent: Option<(String, String)>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The dump's tables, by `(schema, name)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    pub tables: BTreeMap<(String, String), Table>,
}

impl Schema {
    /// Takes one statement of the schema's SQL; those that are not about tables' columns are
    /// ignored.
    pub fn statement(&mut self, stmt: &str) {
        let s = stmt.trim_start();
        if let Some(rest) = strip_create_table(s) {
            self.create_table(rest);
        } else if let Some(rest) = s.strip_prefix("ALTER TABLE ") {
            self.alter_table(rest);
        } else if let Some(rest) = s.strip_prefix("CREATE UNIQUE INDEX ") {
            self.unique_index(rest);
        }
    }

    /// Columns inherited from parents, added once every statement was read.
    pub fn finish(&mut self) {
        let keys: Vec<(String, String)> = self.tables.keys().cloned().collect();
        for key in keys {
            let mut inherited = Vec::new();
            let mut parent = self.tables[&key].parent.clone();
            let mut depth = 0;
            while let Some(p) = parent {
                depth += 1;
                let Some(t) = self.tables.get(&p).filter(|_| depth < 16) else {
                    break;
                };
                inherited.extend(t.columns.iter().cloned());
                parent = t.parent.clone();
            }
            let table = self.tables.get_mut(&key).expect("listed");
            for c in inherited {
                if table.column(&c.name).is_none() {
                    table.columns.push(c);
                }
            }
        }
    }

    pub fn table(&self, schema: &str, name: &str) -> Option<&Table> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }

    fn create_table(&mut self, rest: &str) {
        let Some(((schema, name), after)) = qualified(rest) else {
            return;
        };
        let mut table = Table::default();
        let after = after.trim_start();
        if let Some(p) = after.strip_prefix("PARTITION OF ") {
            table.parent = qualified(p).map(|(q, _)| q);
        }
        if let Some(pos) = after.find("\nINHERITS (") {
            table.parent = qualified(&after[pos + "\nINHERITS (".len()..]).map(|(q, _)| q);
        }
        if after.starts_with('(') {
            for line in after.lines().skip(1) {
                if line.starts_with(')') {
                    break;
                }
                let line = line.trim().trim_end_matches(',');
                if line.starts_with("CONSTRAINT ") || line.is_empty() {
                    continue;
                }
                if let Some(c) = column_line(line) {
                    table.columns.push(c);
                }
            }
        }
        self.tables.insert((schema, name), table);
    }

    fn alter_table(&mut self, rest: &str) {
        let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
        let Some((key, after)) = qualified(rest) else {
            return;
        };
        let after = after.trim_start();
        let Some(c) = after.strip_prefix("ADD CONSTRAINT ") else {
            return;
        };
        let Some((_, c)) = crate::masking::schema::ident(c) else {
            return;
        };
        let c = c.trim_start();
        let list = if let Some(l) = c.strip_prefix("PRIMARY KEY ") {
            l
        } else if let Some(l) = c.strip_prefix("UNIQUE ") {
            l.strip_prefix("NULLS NOT DISTINCT ").unwrap_or(l)
        } else {
            return;
        };
        self.mark_unique(&key, list);
    }

    fn unique_index(&mut self, rest: &str) {
        let Some(pos) = rest.find(" ON ") else {
            return;
        };
        let on = &rest[pos + 4..];
        let on = on.strip_prefix("ONLY ").unwrap_or(on);
        let Some((key, after)) = qualified(on) else {
            return;
        };
        let after = after.trim_start();
        let after = match after.strip_prefix("USING ") {
            Some(a) => a.split_once(' ').map_or("", |(_, r)| r),
            None => after,
        };
        self.mark_unique(&key, after);
    }

    /// Marks the columns named in the parenthesized list at the start of `list` (every
    /// identifier in it that is a column: an expression's columns too).
    fn mark_unique(&mut self, key: &(String, String), list: &str) {
        let Some(table) = self.tables.get_mut(key) else {
            return;
        };
        let Some(inner) = list.trim_start().strip_prefix('(') else {
            return;
        };
        let end = crate::secret::closing_paren(inner);
        for word in identifiers(&inner[..end]) {
            if let Some(c) = table.columns.iter_mut().find(|c| c.name == word) {
                c.unique = true;
            }
        }
    }
}

fn strip_create_table(s: &str) -> Option<&str> {
    for p in ["CREATE TABLE ", "CREATE UNLOGGED TABLE "] {
        if let Some(r) = s.strip_prefix(p) {
            return Some(r);
        }
    }
    None
}

/// `name type [COLLATE ...] [DEFAULT ...] [NOT NULL] [GENERATED ...]`.
fn column_line(line: &str) -> Option<Column> {
    let (name, rest) = ident(line)?;
    let rest = rest.trim_start();
    const ENDS: &[&str] = &[
        " COLLATE ",
        " DEFAULT ",
        " NOT NULL",
        " GENERATED ",
        " CONSTRAINT ",
        " NULL",
        " COMPRESSION ",
        " STORAGE ",
    ];
    let padded = format!(" {rest}");
    let end = ENDS
        .iter()
        .filter_map(|e| padded.find(e))
        .min()
        .unwrap_or(padded.len());
    let ty = padded[..end].trim().to_string();
    Some(Column {
        name,
        ty,
        not_null: padded.contains(" NOT NULL"),
        unique: false,
        generated: padded.contains(" GENERATED ALWAYS AS ("),
    })
}

/// One SQL identifier at the start of `s` (quoted or not) and what follows.
pub fn ident(s: &str) -> Option<(String, &str)> {
    crate::dump::toc::parse_ident(s)
}

/// `schema.name` at the start of `s`, and what follows.
fn qualified(s: &str) -> Option<((String, String), &str)> {
    let (schema, rest) = ident(s)?;
    let (name, rest) = ident(rest.strip_prefix('.')?)?;
    Some(((schema, name), rest))
}

/// The identifiers of an index's column list: `"Quoted"` kept as written, bare words as they
/// are (pg_dump writes them lower case); keywords and function names included (harmless: only
/// the table's columns are looked up).
fn identifiers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(ch) = rest.chars().next() {
        if (ch == '"' || ch.is_alphabetic() || ch == '_')
            && let Some((w, r)) = ident(rest)
        {
            out.push(w);
            rest = r;
            continue;
        }
        if ch == '\'' {
            // A string literal: skip it.
            let after = &rest[1..];
            rest = match after.find('\'') {
                Some(p) => &after[p + 1..],
                None => "",
            };
            continue;
        }
        rest = &rest[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &[&str] = &[
        "CREATE TABLE public.users (\n    id integer NOT NULL,\n    email character varying(255) NOT NULL,\n    \"First Name\" text COLLATE pg_catalog.\"C\",\n    born date,\n    total numeric(10,2) DEFAULT 0 NOT NULL,\n    doubled integer GENERATED ALWAYS AS ((id * 2)) STORED,\n    seen timestamp(3) with time zone,\n    CONSTRAINT positive CHECK ((id > 0))\n);",
        "CREATE TABLE public.events (\n    id bigint NOT NULL,\n    created_at timestamp with time zone NOT NULL\n)\nPARTITION BY RANGE (created_at);",
        "CREATE TABLE public.events_2024 PARTITION OF public.events\nFOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
        "CREATE UNLOGGED TABLE public.\"knowledge-elements\" (\n    payload jsonb\n);",
        "ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
        "CREATE UNIQUE INDEX users_email_idx ON public.users USING btree (lower((email)::text));",
        "ALTER TABLE ONLY public.\"knowledge-elements\"\n    ADD CONSTRAINT ke_fk FOREIGN KEY (payload) REFERENCES public.users(id);",
    ];

    fn schema() -> Schema {
        let mut s = Schema::default();
        for stmt in SQL {
            s.statement(stmt);
        }
        s.finish();
        s
    }

    #[test]
    fn reads_columns_types_and_constraints() {
        let s = schema();
        let users = s.table("public", "users").unwrap();
        let names: Vec<&str> = users.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "email",
                "First Name",
                "born",
                "total",
                "doubled",
                "seen"
            ]
        );
        let c = |n: &str| users.column(n).unwrap().clone();
        assert_eq!(c("email").ty, "character varying(255)");
        assert!(c("email").not_null && c("email").unique);
        assert!(c("id").unique);
        assert_eq!(c("First Name").ty, "text");
        assert!(!c("First Name").not_null && !c("First Name").unique);
        assert_eq!(c("total").ty, "numeric(10,2)");
        assert!(c("doubled").generated);
        assert_eq!(c("seen").ty, "timestamp(3) with time zone");
        assert!(!c("born").unique);
    }

    #[test]
    fn partitions_get_their_parent_s_columns() {
        let s = schema();
        let p = s.table("public", "events_2024").unwrap();
        assert_eq!(p.parent, Some(("public".into(), "events".into())));
        assert_eq!(
            p.column("created_at").unwrap().ty,
            "timestamp with time zone"
        );
        assert!(
            s.table("public", "knowledge-elements")
                .unwrap()
                .column("payload")
                .is_some()
        );
    }
}
