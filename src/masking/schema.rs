//! The dump's tables as the rules need them: each column's name and type, whether it is
//! `NOT NULL`, part of a primary key or unique constraint or index, or generated; the tables a
//! table takes rows' columns from (`PARTITION OF`, `ATTACH PARTITION`, `INHERITS`), the
//! composite type a typed table (`OF type`) takes its columns from; which table each index
//! belongs to; the string literals each table's DDL carries. Read from the SQL pg_dump writes,
//! one statement at a time: the caller feeds the schema's statements, then calls
//! [`Schema::finish`].

use std::collections::{BTreeMap, BTreeSet};

/// `(schema, name)`.
pub type QualifiedName = (String, String);

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
    /// The tables it is a partition or an inheritance child of (`PARTITION OF`, `ALTER TABLE
    /// parent ATTACH PARTITION`, `INHERITS (a, b)`): their rows' columns are its columns.
    pub parents: Vec<QualifiedName>,
    /// `CREATE TABLE t OF type`: its columns are the composite type's.
    pub of_type: Option<QualifiedName>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The dump's tables, by `(schema, name)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schema {
    pub tables: BTreeMap<QualifiedName, Table>,
    /// Composite types (`CREATE TYPE t AS (...)`), the columns of typed tables.
    pub types: BTreeMap<QualifiedName, Vec<Column>>,
    /// Each index (and each key's index, named as its constraint) to its table or
    /// materialized view.
    pub indexes: BTreeMap<QualifiedName, QualifiedName>,
    pub materialized_views: BTreeSet<QualifiedName>,
    /// String literals in the DDL of each table: defaults, checks, index expressions and
    /// predicates, policies, triggers' arguments.
    literals: BTreeMap<QualifiedName, BTreeSet<String>>,
    /// The text of views and materialized views, searched for the tables they read.
    views: Vec<String>,
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
            self.index(rest, true);
        } else if let Some(rest) = s.strip_prefix("CREATE INDEX ") {
            self.index(rest, false);
        } else if let Some(rest) = s.strip_prefix("CREATE TYPE ") {
            self.composite_type(rest);
        } else if let Some(rest) = s.strip_prefix("CREATE MATERIALIZED VIEW ") {
            if let Some((q, _)) = qualified(rest) {
                self.materialized_views.insert(q);
            }
            self.views.push(s.to_string());
        } else if s.starts_with("CREATE VIEW ") || s.starts_with("CREATE OR REPLACE VIEW ") {
            self.views.push(s.to_string());
        } else if let Some(rest) = s
            .strip_prefix("CREATE POLICY ")
            .or_else(|| s.strip_prefix("CREATE TRIGGER "))
            .or_else(|| s.strip_prefix("CREATE CONSTRAINT TRIGGER "))
            && let Some(pos) = rest.find(" ON ")
            && let Some((q, _)) = qualified(&rest[pos + 4..])
        {
            self.add_literals(&q, s);
        }
    }

    /// Columns of typed tables from their types, and inherited from parents, added once every
    /// statement was read.
    pub fn finish(&mut self) {
        let keys: Vec<QualifiedName> = self.tables.keys().cloned().collect();
        for key in &keys {
            let Some(ty) = self.tables[key].of_type.clone() else {
                continue;
            };
            let from_type = self.types.get(&ty).cloned().unwrap_or_default();
            let table = self.tables.get_mut(key).expect("listed");
            // The table's own lines only add options (`name WITH OPTIONS NOT NULL`).
            let options = std::mem::take(&mut table.columns);
            for mut c in from_type {
                if let Some(o) = options.iter().find(|o| o.name == c.name) {
                    c.not_null |= o.not_null;
                    c.unique |= o.unique;
                }
                table.columns.push(c);
            }
        }
        for key in &keys {
            let inherited: Vec<Column> = self
                .ancestors(key)
                .iter()
                .filter_map(|p| self.tables.get(p))
                .flat_map(|t| t.columns.iter().cloned())
                .collect();
            let table = self.tables.get_mut(key).expect("listed");
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

    /// The tables `key` takes rows' columns from, nearest first (parents, then theirs), each
    /// once; a cycle or a chain deeper than 16 stops there.
    pub fn ancestors(&self, key: &QualifiedName) -> Vec<QualifiedName> {
        let mut out: Vec<QualifiedName> = Vec::new();
        let mut frontier: Vec<QualifiedName> = self
            .tables
            .get(key)
            .map(|t| t.parents.clone())
            .unwrap_or_default();
        for _ in 0..16 {
            let mut next = Vec::new();
            for p in frontier {
                if p == *key || out.contains(&p) {
                    continue;
                }
                if let Some(t) = self.tables.get(&p) {
                    next.extend(t.parents.iter().cloned());
                }
                out.push(p);
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        out
    }

    /// The string literals of `key`'s DDL (its table, its indexes, checks, defaults, policies,
    /// triggers) and of the views that read it, in order, each once.
    pub fn literals(&self, key: &QualifiedName) -> Vec<String> {
        let mut out: BTreeSet<String> = self.literals.get(key).cloned().unwrap_or_default();
        let name = format!("{}.{}", sql_ident(&key.0), sql_ident(&key.1));
        for v in &self.views {
            if mentions(v, &name) {
                out.extend(string_literals(v));
            }
        }
        out.into_iter().collect()
    }

    fn add_literals(&mut self, key: &QualifiedName, sql: &str) {
        let found = string_literals(sql);
        if !found.is_empty() {
            self.literals.entry(key.clone()).or_default().extend(found);
        }
    }

    fn create_table(&mut self, rest: &str) {
        let Some(((schema, name), after)) = qualified(rest) else {
            return;
        };
        let key = (schema, name);
        self.add_literals(&key, after);
        let mut table = Table::default();
        let after = after.trim_start();
        let mut body = after;
        if let Some(p) = after.strip_prefix("PARTITION OF ") {
            if let Some((q, r)) = qualified(p) {
                table.parents.push(q);
                body = r.trim_start();
            }
        } else if let Some(t) = after.strip_prefix("OF ")
            && let Some((q, r)) = qualified(t)
        {
            table.of_type = Some(q);
            body = r.trim_start();
        }
        if let Some(pos) = after.find("\nINHERITS (") {
            let mut list = &after[pos + "\nINHERITS (".len()..];
            while let Some((q, r)) = qualified(list.trim_start()) {
                table.parents.push(q);
                match r.trim_start().strip_prefix(',') {
                    Some(r) => list = r,
                    None => break,
                }
            }
        }
        if body.starts_with('(') {
            for line in body.lines().skip(1) {
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
        self.tables.insert(key, table);
    }

    /// `CREATE TYPE s.t AS (\n\tname text,\n\temail text\n);` (enums, ranges and base types are
    /// not composite: no columns).
    fn composite_type(&mut self, rest: &str) {
        let Some((key, after)) = qualified(rest) else {
            return;
        };
        let Some(body) = after.trim_start().strip_prefix("AS (") else {
            return;
        };
        let mut columns = Vec::new();
        for line in body.lines().skip(1) {
            if line.starts_with(')') {
                break;
            }
            if let Some(c) = column_line(line.trim().trim_end_matches(',')) {
                columns.push(c);
            }
        }
        self.types.insert(key, columns);
    }

    fn alter_table(&mut self, rest: &str) {
        let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
        let Some((key, after)) = qualified(rest) else {
            return;
        };
        let after = after.trim_start();
        // `ALTER TABLE ONLY parent ATTACH PARTITION child FOR VALUES ...` (pg_dump 12 and later).
        if let Some(child) = after.strip_prefix("ATTACH PARTITION ") {
            if let Some((child, _)) = qualified(child)
                && let Some(t) = self.tables.get_mut(&child)
                && !t.parents.contains(&key)
            {
                t.parents.push(key);
            }
            return;
        }
        if after.starts_with("ALTER COLUMN ") || after.starts_with("ADD CONSTRAINT ") {
            self.add_literals(&key, after);
        }
        let Some(c) = after.strip_prefix("ADD CONSTRAINT ") else {
            return;
        };
        let Some((constraint, c)) = ident(c) else {
            return;
        };
        let c = c.trim_start();
        let list = if let Some(l) = c.strip_prefix("PRIMARY KEY ") {
            l
        } else if let Some(l) = c.strip_prefix("UNIQUE ") {
            l.strip_prefix("NULLS NOT DISTINCT ").unwrap_or(l)
        } else {
            if c.starts_with("EXCLUDE ") {
                self.indexes.insert((key.0.clone(), constraint), key);
            }
            return;
        };
        self.indexes
            .insert((key.0.clone(), constraint), key.clone());
        self.mark_unique(&key, list);
    }

    /// `name ON [ONLY] s.t [USING m] (columns) [WHERE ...]` after `CREATE [UNIQUE] INDEX `.
    fn index(&mut self, rest: &str, unique: bool) {
        let Some(pos) = rest.find(" ON ") else {
            return;
        };
        let index = ident(rest).map(|(n, _)| n);
        let on = &rest[pos + 4..];
        let on = on.strip_prefix("ONLY ").unwrap_or(on);
        let Some((key, after)) = qualified(on) else {
            return;
        };
        if let Some(index) = index {
            self.indexes.insert((key.0.clone(), index), key.clone());
        }
        self.add_literals(&key, after);
        if !unique {
            return;
        }
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

/// The string literals of `sql` (`'...'`, `E'...'`), unescaped as far as `''` goes; a
/// literal cast to `regclass` (a sequence's name in `nextval`) is a name, not text.
pub fn string_literals(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A quoted identifier: skip it.
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'\'' => {
                let mut value = String::new();
                let mut j = i + 1;
                let mut start = j;
                loop {
                    match sql[j..].find('\'') {
                        Some(n) if sql[j + n + 1..].starts_with('\'') => {
                            value.push_str(&sql[start..j + n + 1]);
                            j += n + 2;
                            start = j;
                        }
                        Some(n) => {
                            value.push_str(&sql[start..j + n]);
                            j += n + 1;
                            break;
                        }
                        None => {
                            value.push_str(&sql[start..]);
                            j = b.len();
                            break;
                        }
                    }
                }
                if !sql[j..].starts_with("::regclass") && !value.is_empty() {
                    out.push(value);
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

/// `name` as pg_dump writes it: bare when it is a plain lower-case identifier.
fn sql_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Whether `sql` names `qualified` (`public.users`), not as the start of a longer name.
fn mentions(sql: &str, qualified: &str) -> bool {
    sql.match_indices(qualified).any(|(pos, _)| {
        let next = sql[pos + qualified.len()..].chars().next();
        !next.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
    })
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
        assert_eq!(
            p.parents,
            vec![("public".to_string(), "events".to_string())]
        );
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

    /// pg_dump 12 to 18 write a partition as a table of its own, attached after; a typed
    /// table's columns are its type's; a child may inherit from several parents.
    #[test]
    fn attached_partitions_typed_tables_and_several_parents() {
        let mut s = Schema::default();
        for stmt in [
            "CREATE TYPE public.person AS (\n\tname text,\n\temail character varying(80)\n);",
            "CREATE TABLE public.people OF public.person (\n    name NOT NULL\n);",
            "CREATE TABLE public.events (\n    id integer,\n    email text\n)\nPARTITION BY RANGE (id);",
            "CREATE TABLE public.events_1 (\n    id integer,\n    email text\n);",
            "ALTER TABLE ONLY public.events ATTACH PARTITION public.events_1 FOR VALUES FROM (0) TO (10);",
            "CREATE TABLE public.a (\n    x text\n);",
            "CREATE TABLE public.b (\n    y text\n);",
            "CREATE TABLE public.c (\n    z text\n)\nINHERITS (public.a, public.b);",
            "CREATE TABLE public.d (\n    w text\n)\nINHERITS (public.c);",
            "CREATE INDEX events_email ON ONLY public.events USING btree (lower(email)) WHERE (email <> 'x@y'::text);",
            "ALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_pkey PRIMARY KEY (x);",
            "ALTER TABLE ONLY public.a ALTER COLUMN x SET DEFAULT nextval('public.a_seq'::regclass);",
            "CREATE VIEW public.v AS\n SELECT x FROM public.a WHERE (x <> 'it''s'::text);",
            "CREATE MATERIALIZED VIEW public.mv AS\n SELECT y FROM public.b\n  WITH NO DATA;",
        ] {
            s.statement(stmt);
        }
        s.finish();
        let people = s.table("public", "people").unwrap();
        assert_eq!(people.of_type, Some(("public".into(), "person".into())));
        let names: Vec<&str> = people.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["name", "email"]);
        assert!(people.column("name").unwrap().not_null);
        assert_eq!(people.column("email").unwrap().ty, "character varying(80)");
        let q = |n: &str| ("public".to_string(), n.to_string());
        assert_eq!(
            s.table("public", "events_1").unwrap().parents,
            vec![q("events")]
        );
        assert_eq!(
            s.table("public", "c").unwrap().parents,
            vec![q("a"), q("b")]
        );
        assert_eq!(s.ancestors(&q("d")), vec![q("c"), q("a"), q("b")]);
        let d: Vec<&str> = s
            .table("public", "d")
            .unwrap()
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(d, ["w", "z", "x", "y"]);
        assert_eq!(s.indexes[&q("events_email")], q("events"));
        assert_eq!(s.indexes[&q("a_pkey")], q("a"));
        assert!(s.materialized_views.contains(&q("mv")));
        assert_eq!(s.literals(&q("events")), vec!["x@y".to_string()]);
        assert_eq!(
            s.literals(&q("a")),
            vec!["it's".to_string()],
            "the view's, not the sequence's name"
        );
        assert!(s.literals(&q("b")).is_empty());
    }
}
