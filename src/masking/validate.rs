//! The rules checked against the dump's tables, before anything is touched: every table and
//! column exists, every rule fits its column's type, no `null` on a `NOT NULL` or unique
//! column, and (strict mode) every column of every restored table is named. What passes is a
//! [`Plan`]: per table, per column, the rule and the column's type.

use std::collections::BTreeMap;

use super::schema::{Column, QualifiedName, Schema};
use super::{Keep, Rule, RulesFile, TableRules, split_table_key};

/// The kind of a column's type, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    /// `text`, `varchar(n)`, `char(n)`, `citext`: `max` characters if bounded.
    Text {
        max: Option<usize>,
    },
    /// `smallint`, `integer`, `bigint`: their width in bits.
    Int {
        bits: u32,
    },
    Uuid,
    Json,
    Numeric,
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Inet,
    Cidr,
    Bytea,
    Array,
    /// Anything else (enums, domains, geometric types...): keep, null or a fixed value only.
    Other,
}

impl TypeClass {
    pub fn of(ty: &str) -> TypeClass {
        let t = ty.trim().to_ascii_lowercase();
        if t.ends_with("[]") {
            return TypeClass::Array;
        }
        let bound = || {
            t.split_once('(')
                .and_then(|(_, r)| r.trim_end_matches(')').trim().parse().ok())
        };
        match t.split('(').next().unwrap_or("").trim() {
            "text" | "citext" | "public.citext" | "name" => TypeClass::Text { max: None },
            "character varying" | "varchar" => TypeClass::Text { max: bound() },
            "character" | "char" | "bpchar" => TypeClass::Text {
                max: Some(bound().unwrap_or(1)),
            },
            "smallint" => TypeClass::Int { bits: 16 },
            "integer" | "int" => TypeClass::Int { bits: 32 },
            "bigint" => TypeClass::Int { bits: 64 },
            "uuid" => TypeClass::Uuid,
            "json" | "jsonb" => TypeClass::Json,
            "numeric" | "decimal" | "real" | "double precision" | "money" => TypeClass::Numeric,
            "boolean" => TypeClass::Bool,
            "date" => TypeClass::Date,
            "inet" => TypeClass::Inet,
            "cidr" => TypeClass::Cidr,
            "bytea" => TypeClass::Bytea,
            _ if t.starts_with("timestamp") => {
                if t.ends_with("with time zone") {
                    TypeClass::TimestampTz
                } else {
                    TypeClass::Timestamp
                }
            }
            _ => TypeClass::Other,
        }
    }

    /// Unbounded or long text: notes, comments, bios.
    pub fn is_free_text(self) -> bool {
        matches!(self, TypeClass::Text { max: None })
            || matches!(self, TypeClass::Text { max: Some(m) } if m > 255)
    }

    fn is_text(self) -> bool {
        matches!(self, TypeClass::Text { .. })
    }

    fn is_date(self) -> bool {
        matches!(
            self,
            TypeClass::Date | TypeClass::Timestamp | TypeClass::TimestampTz
        )
    }

    /// The shortest bounded text a rule's output needs.
    fn too_short(self, need: usize) -> bool {
        matches!(self, TypeClass::Text { max: Some(m) } if m < need)
    }
}

/// What the rules do to one table's rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    /// Rules other than `keep`, with the column's type.
    pub columns: BTreeMap<String, (Rule, TypeClass)>,
    pub filter: Option<(String, Keep, TypeClass)>,
}

/// The rules, checked: per `(schema, table)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub tables: BTreeMap<(String, String), TablePlan>,
}

impl Plan {
    pub fn table(&self, schema: &str, name: &str) -> Option<&TablePlan> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }

    /// Tables whose rows a filter thins out.
    pub fn filtered(&self) -> impl Iterator<Item = &(String, String)> {
        self.tables
            .iter()
            .filter(|(_, t)| t.filter.is_some())
            .map(|(k, _)| k)
    }
}

/// Why `rule` cannot apply to `col` (of type class `class`), if it cannot.
pub(super) fn unfit(rule: &Rule, col: &Column, class: TypeClass) -> Option<String> {
    let ty = &col.ty;
    let fits = match rule {
        Rule::Keep | Rule::Fixed(_) | Rule::Null => true,
        Rule::Redact => class != TypeClass::Other,
        Rule::Hash => match class {
            TypeClass::Text { .. } => !class.too_short(32),
            TypeClass::Int { .. } | TypeClass::Uuid | TypeClass::Json => true,
            _ => false,
        },
        Rule::Email => class.is_text() && !class.too_short(48),
        Rule::FirstName | Rule::LastName => class.is_text() && !class.too_short(12),
        Rule::Phone => class.is_text() && !class.too_short(17),
        Rule::Ip => {
            matches!(class, TypeClass::Inet | TypeClass::Cidr)
                || class.is_text() && !class.too_short(18)
        }
        Rule::DateShift { .. } => class.is_date(),
    };
    if !fits {
        let what = match rule {
            Rule::Hash => "hash takes text (at least 32 characters), integers, uuid or json",
            Rule::Email => "email takes text of at least 48 characters",
            Rule::FirstName | Rule::LastName => "names take text of at least 12 characters",
            Rule::Phone => "phone takes text of at least 17 characters",
            Rule::Ip => "ip takes inet, cidr or text",
            Rule::DateShift { .. } => "date_shift takes date or timestamp columns",
            _ => "redact has no constant for this type: use null or { fixed = \"...\" }",
        };
        return Some(format!("its type {ty} does not fit: {what}"));
    }
    if let Rule::Fixed(v) = rule
        && let Some(why) = fixed_unfit(v, class)
    {
        return Some(format!("the value {v:?} does not fit its type {ty}: {why}"));
    }
    if *rule == Rule::Null && col.not_null {
        return Some("the column is NOT NULL".into());
    }
    let unique_safe = matches!(rule, Rule::Keep | Rule::Hash | Rule::Email);
    if col.unique && !unique_safe {
        return Some(
            "the column is in a primary key or a unique constraint or index, which this rule would break (use hash, email or keep)"
                .into(),
        );
    }
    None
}

/// Why a fixed value cannot be a value of `class` (the cases that can be told without the
/// server; the others are the server's to refuse).
fn fixed_unfit(v: &str, class: TypeClass) -> Option<&'static str> {
    match class {
        TypeClass::Text { max: Some(m) } if v.chars().count() > m => Some("too long"),
        TypeClass::Int { bits } => {
            let ok = match bits {
                16 => v.trim().parse::<i16>().is_ok(),
                32 => v.trim().parse::<i32>().is_ok(),
                _ => v.trim().parse::<i64>().is_ok(),
            };
            (!ok).then_some("not an integer of that size")
        }
        TypeClass::Bool => (!matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "t" | "f" | "true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0"
        ))
        .then_some("not a boolean"),
        TypeClass::Date => chrono::NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d")
            .is_err()
            .then_some("not a date YYYY-MM-DD"),
        TypeClass::Json => serde_json::from_str::<serde_json::Value>(v)
            .is_err()
            .then_some("not JSON"),
        _ => None,
    }
}

/// How a table is named in messages and in the rules file: `users` (schema public) or
/// `app.users`.
pub fn display_name(key: &QualifiedName) -> String {
    if key.0 == "public" {
        key.1.clone()
    } else {
        format!("{}.{}", key.0, key.1)
    }
}

/// The rules that apply to one table: its own, then for each column it does not name and for
/// its filter, those of its nearest parent that has one (a partition's or an inheritance
/// child's rows are its parents' rows). Each with the table it was written for.
struct Effective<'a> {
    columns: BTreeMap<&'a str, (&'a Rule, &'a QualifiedName)>,
    filter: Option<(&'a super::RowFilter, &'a QualifiedName)>,
}

fn effective<'a>(
    key: &QualifiedName,
    ancestors: &'a [QualifiedName],
    own: &'a BTreeMap<QualifiedName, &'a TableRules>,
) -> Effective<'a> {
    let mut e = Effective {
        columns: BTreeMap::new(),
        filter: None,
    };
    let own_key = own.get_key_value(key).map(|(k, _)| k);
    for k in own_key.into_iter().chain(ancestors.iter()) {
        let Some(rules) = own.get(k) else {
            continue;
        };
        for (col, rule) in &rules.columns {
            e.columns.entry(col.as_str()).or_insert((rule, k));
        }
        if e.filter.is_none() {
            e.filter = rules.rows.as_ref().map(|f| (f, k));
        }
    }
    e
}

/// Checks `rules` against `schema`; `restored` lists the tables whose rows the run restores
/// (what strict mode covers). The error lists every problem, one per line, each naming the
/// table, the column and the rule.
///
/// A table gets the rules of its parents (partitions, inheritance children) for the columns
/// and the filter its own entry does not name; each rule is checked against each table it
/// applies to, and strict mode counts the rules that apply, not the entries written.
pub fn validate(
    rules: &RulesFile,
    schema: &Schema,
    restored: &[(String, String)],
) -> Result<Plan, String> {
    let mut errors = Vec::new();
    let mut plan = Plan::default();
    let mut own: BTreeMap<QualifiedName, &TableRules> = BTreeMap::new();
    for (key, table_rules) in &rules.tables {
        let k = if schema.table("public", key).is_some() {
            ("public".to_string(), key.clone())
        } else {
            split_table_key(key)
        };
        if !schema.tables.contains_key(&k) {
            errors.push(format!(
                "table {key:?}: the dump has no such table (names are exact; a table outside schema public is written \"schema.table\")"
            ));
            continue;
        }
        own.insert(k, table_rules);
    }
    // Rules that do not fit the table they were written for: said once, there.
    let mut unfit_at_home: std::collections::BTreeSet<(QualifiedName, String)> = Default::default();
    for (key, table) in &schema.tables {
        let ancestors = schema.ancestors(key);
        let e = effective(key, &ancestors, &own);
        let name = display_name(key);
        let mut tp = TablePlan::default();
        for (col, (rule, from)) in &e.columns {
            let inherited = *from != key;
            if inherited && unfit_at_home.contains(&((*from).clone(), col.to_string())) {
                continue;
            }
            let at = if inherited {
                format!("table {name:?} (rows of {:?})", display_name(from))
            } else {
                format!("table {name:?}")
            };
            let Some(c) = table.column(col) else {
                errors.push(format!(
                    "{at}, column {col:?} (rule {}): the table has no such column",
                    rule.name()
                ));
                unfit_at_home.insert(((*from).clone(), col.to_string()));
                continue;
            };
            let class = TypeClass::of(&c.ty);
            let why = if c.generated && **rule != Rule::Keep {
                Some("a generated column is computed by the target from the others: mask those instead".to_string())
            } else {
                unfit(rule, c, class)
            };
            if let Some(why) = why {
                errors.push(format!("{at}, column {col:?}, rule {}: {why}", rule.name()));
                if !inherited {
                    unfit_at_home.insert((key.clone(), col.to_string()));
                }
                continue;
            }
            if **rule != Rule::Keep {
                tp.columns.insert(col.to_string(), ((*rule).clone(), class));
            }
        }
        if let Some((f, from)) = e.filter {
            let at = if from != key {
                format!("table {name:?} (rows of {:?})", display_name(from))
            } else {
                format!("table {name:?}")
            };
            match table.column(&f.column) {
                None => errors.push(format!(
                    "{at}, row filter on column {:?}: the table has no such column",
                    f.column
                )),
                Some(c) => {
                    let class = TypeClass::of(&c.ty);
                    if matches!(f.keep, Keep::NewerThan(_)) && !class.is_date() {
                        errors.push(format!(
                            "{at}, row filter newer_than on column {:?}: its type {} is not a date or timestamp",
                            f.column, c.ty
                        ));
                    } else {
                        tp.filter = Some((f.column.clone(), f.keep.clone(), class));
                    }
                }
            }
        }
        if tp != TablePlan::default() {
            plan.tables.insert(key.clone(), tp);
        }
    }
    if rules.strict {
        for key in restored {
            let Some(table) = schema.tables.get(key) else {
                continue;
            };
            let ancestors = schema.ancestors(key);
            let e = effective(key, &ancestors, &own);
            let missing: Vec<String> = table
                .columns
                .iter()
                .filter(|c| !c.generated && !e.columns.contains_key(c.name.as_str()))
                .map(|c| format!("{:?}", c.name))
                .collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "strict mode: table {:?} has no rule for column(s) {} (add them to the rules file, `keep` included{})",
                    display_name(key),
                    missing.join(", "),
                    if ancestors.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; a rule of {} applies to it too",
                            ancestors.iter().map(|a| format!("{:?}", display_name(a))).collect::<Vec<_>>().join(" or ")
                        )
                    }
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let mut s = Schema::default();
        for stmt in [
            "CREATE TABLE public.users (\n    id integer NOT NULL,\n    email text NOT NULL,\n    name character varying(100),\n    code character varying(8),\n    notes text,\n    born date,\n    mood public.mood,\n    payload jsonb\n);",
            "ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_email_key UNIQUE (email);",
            "CREATE TABLE public.events (\n    id bigint NOT NULL,\n    created_at timestamp with time zone NOT NULL,\n    kind text\n)\nPARTITION BY RANGE (created_at);",
            "CREATE TABLE public.events_1 PARTITION OF public.events\nFOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
        ] {
            s.statement(stmt);
        }
        s.finish();
        s
    }

    fn check(toml: &str) -> Result<Plan, String> {
        let restored = vec![
            ("public".to_string(), "users".to_string()),
            ("public".to_string(), "events_1".to_string()),
        ];
        validate(&RulesFile::parse(toml).unwrap(), &schema(), &restored)
    }

    #[test]
    fn a_fitting_file_gives_a_plan() {
        let plan = check(
            "[tables.users.columns]\nemail = \"hash\"\nname = \"first_name\"\nnotes = \"null\"\npayload = \"redact\"\nborn = \"date_shift\"\nid = \"keep\"\n[tables.events.rows]\ncolumn = \"created_at\"\nnewer_than = \"90 days\"\n",
        )
        .unwrap();
        let users = plan.table("public", "users").unwrap();
        assert_eq!(users.columns.len(), 5, "keep is not in the plan");
        assert_eq!(
            users.columns["email"],
            (Rule::Hash, TypeClass::Text { max: None })
        );
        assert_eq!(users.columns["payload"].1, TypeClass::Json);
        // The partition gets its parent's filter.
        assert!(plan.table("public", "events_1").unwrap().filter.is_some());
    }

    #[test]
    fn refuses_what_cannot_apply_naming_table_column_and_rule() {
        let cases = [
            ("[tables.nope.columns]\na = \"null\"", vec!["nope"]),
            (
                "[tables.users.columns]\nphone = \"phone\"",
                vec!["users", "phone", "no such column"],
            ),
            (
                "[tables.users.columns]\nid = \"null\"",
                vec!["users", "id", "null", "NOT NULL"],
            ),
            (
                "[tables.users.columns]\nemail = \"redact\"",
                vec!["email", "redact", "unique"],
            ),
            (
                "[tables.users.columns]\nborn = \"hash\"",
                vec!["born", "hash", "date"],
            ),
            (
                "[tables.users.columns]\nnotes = \"date_shift\"",
                vec!["notes", "date_shift", "text"],
            ),
            (
                "[tables.users.columns]\nmood = \"redact\"",
                vec!["mood", "redact"],
            ),
            (
                "[tables.users.columns]\nborn = { fixed = \"soon\" }",
                vec!["born", "fixed", "date"],
            ),
            (
                "[tables.users.columns]\ncode = { fixed = \"far too long\" }",
                vec!["code", "fixed", "too long"],
            ),
            (
                "[tables.users.columns]\npayload = { fixed = \"{\" }",
                vec!["payload", "fixed", "JSON"],
            ),
            (
                "[tables.users.columns]\ncode = \"hash\"",
                vec!["code", "hash", "character varying(8)"],
            ),
            (
                "[tables.users.rows]\ncolumn = \"notes\"\nnewer_than = \"1 day\"",
                vec!["users", "notes", "newer_than"],
            ),
        ];
        for (toml, words) in cases {
            let e = check(toml).unwrap_err();
            for w in words {
                assert!(e.contains(w), "{toml}: {e:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn strict_mode_lists_the_columns_not_named() {
        let e = check("strict = true\n[tables.users.columns]\nid = \"keep\"\nemail = \"hash\"\n")
            .unwrap_err();
        assert!(
            e.contains("strict") && e.contains("\"users\"") && e.contains("\"notes\""),
            "{e}"
        );
        assert!(!e.contains("\"email\""), "{e}");
        // The partition's columns, named on its parent.
        assert!(e.contains("events_1"), "{e}");
        let ok = check(
            "strict = true\n[tables.users.columns]\nid = \"keep\"\nemail = \"hash\"\nname = \"keep\"\ncode = \"keep\"\nnotes = \"keep\"\nborn = \"keep\"\nmood = \"keep\"\npayload = \"keep\"\n[tables.events.columns]\nid = \"keep\"\ncreated_at = \"keep\"\nkind = \"keep\"\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn classifies_types() {
        assert_eq!(
            TypeClass::of("character varying(255)"),
            TypeClass::Text { max: Some(255) }
        );
        assert_eq!(
            TypeClass::of("character varying"),
            TypeClass::Text { max: None }
        );
        assert_eq!(
            TypeClass::of("timestamp(3) without time zone"),
            TypeClass::Timestamp
        );
        assert_eq!(
            TypeClass::of("timestamp with time zone"),
            TypeClass::TimestampTz
        );
        assert_eq!(TypeClass::of("text[]"), TypeClass::Array);
        assert_eq!(TypeClass::of("bigint"), TypeClass::Int { bits: 64 });
        assert_eq!(TypeClass::of("public.mood"), TypeClass::Other);
    }

    /// Issue 22: a child with an entry of its own still gets its parent's rules for the
    /// columns that entry does not name (its rows were real), a partition attached with
    /// `ATTACH PARTITION` gets its parent's filter, and a typed table's columns are its type's.
    #[test]
    fn children_attached_partitions_and_typed_tables_get_the_rules_that_apply() {
        let mut s = Schema::default();
        for stmt in [
            "CREATE TABLE public.contacts (\n    id integer,\n    email text\n);",
            "CREATE TABLE public.vip (\n    level text\n)\nINHERITS (public.contacts);",
            "CREATE TABLE public.events (\n    id integer,\n    at timestamp with time zone,\n    email text\n)\nPARTITION BY RANGE (at);",
            "CREATE TABLE public.events_1 (\n    id integer,\n    at timestamp with time zone,\n    email text\n);",
            "ALTER TABLE ONLY public.events ATTACH PARTITION public.events_1 FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');",
            "CREATE TYPE public.person AS (\n\tname text,\n\temail text\n);",
            "CREATE TABLE public.people OF public.person;",
        ] {
            s.statement(stmt);
        }
        s.finish();
        let q = |n: &str| ("public".to_string(), n.to_string());
        let restored = vec![q("contacts"), q("vip"), q("events_1"), q("people")];
        let toml = "strict = true\n[tables.contacts.columns]\nid = \"keep\"\nemail = \"hash\"\n[tables.vip.columns]\nlevel = \"keep\"\n[tables.events.columns]\nid = \"keep\"\nat = \"keep\"\nemail = \"hash\"\n[tables.events.rows]\ncolumn = \"at\"\nnewer_than = \"90 days\"\n[tables.people.columns]\nname = \"last_name\"\nemail = \"hash\"\n";
        let plan = validate(&RulesFile::parse(toml).unwrap(), &s, &restored).unwrap();
        assert_eq!(
            plan.table("public", "vip").unwrap().columns["email"].0,
            Rule::Hash
        );
        let p = plan.table("public", "events_1").unwrap();
        assert_eq!(p.columns["email"].0, Rule::Hash);
        assert!(p.filter.is_some());
        assert_eq!(
            plan.table("public", "people").unwrap().columns["email"].0,
            Rule::Hash
        );
        // Strict: the typed table's columns are checked; one the file misses is named.
        let e = validate(
            &RulesFile::parse(&toml.replace("name = \"last_name\"\n", "")).unwrap(),
            &s,
            &restored,
        )
        .unwrap_err();
        assert!(e.contains("\"people\"") && e.contains("\"name\""), "{e}");
        // A rule of the parent that does not fit the child is said for the child.
        let mut s2 = s.clone();
        s2.statement("CREATE TABLE public.short (\n    email character varying(10)\n)\nINHERITS (public.contacts);");
        s2.finish();
        let e = validate(
            &RulesFile::parse("[tables.contacts.columns]\nemail = \"hash\"\n").unwrap(),
            &s2,
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains("\"short\" (rows of \"contacts\")") && e.contains("hash"),
            "{e}"
        );
    }
}
