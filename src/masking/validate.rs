//! The rules checked against the dump's tables, before anything is touched: every table and
//! column exists, every rule fits its column's type, no `null` on a `NOT NULL` or unique
//! column, and (strict mode) every column of every restored table is named. What passes is a
//! [`Plan`]: per table, per column, the rule and the column's type.

use std::collections::BTreeMap;

use super::schema::{Column, Schema};
use super::{Keep, Rule, RulesFile, split_table_key};

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
fn unfit(rule: &Rule, col: &Column, class: TypeClass) -> Option<String> {
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

/// Checks `rules` against `schema`; `restored` lists the tables whose rows the run restores
/// (what strict mode covers). The error lists every problem, one per line, each naming the
/// table, the column and the rule.
pub fn validate(
    rules: &RulesFile,
    schema: &Schema,
    restored: &[(String, String)],
) -> Result<Plan, String> {
    let mut errors = Vec::new();
    let mut plan = Plan::default();
    // key as written -> (schema, table)
    let mut resolved: BTreeMap<(String, String), &super::TableRules> = BTreeMap::new();
    for (key, table_rules) in &rules.tables {
        let k = if schema.table("public", key).is_some() {
            ("public".to_string(), key.clone())
        } else {
            split_table_key(key)
        };
        let Some(table) = schema.tables.get(&k) else {
            errors.push(format!(
                "table {key:?}: the dump has no such table (names are exact; a table outside schema public is written \"schema.table\")"
            ));
            continue;
        };
        let mut tp = TablePlan::default();
        for (col, rule) in &table_rules.columns {
            let Some(c) = table.column(col) else {
                errors.push(format!(
                    "table {key:?}, column {col:?} (rule {}): the table has no such column",
                    rule.name()
                ));
                continue;
            };
            let class = TypeClass::of(&c.ty);
            if c.generated && *rule != Rule::Keep {
                errors.push(format!(
                    "table {key:?}, column {col:?} (rule {}): a generated column is computed by the target from the others: mask those instead",
                    rule.name()
                ));
                continue;
            }
            if let Some(why) = unfit(rule, c, class) {
                errors.push(format!(
                    "table {key:?}, column {col:?}, rule {}: {why}",
                    rule.name()
                ));
                continue;
            }
            if *rule != Rule::Keep {
                tp.columns.insert(col.clone(), (rule.clone(), class));
            }
        }
        if let Some(f) = &table_rules.rows {
            match table.column(&f.column) {
                None => errors.push(format!(
                    "table {key:?}, row filter on column {:?}: the table has no such column",
                    f.column
                )),
                Some(c) => {
                    let class = TypeClass::of(&c.ty);
                    if matches!(f.keep, Keep::NewerThan(_)) && !class.is_date() {
                        errors.push(format!(
                            "table {key:?}, row filter newer_than on column {:?}: its type {} is not a date or timestamp",
                            f.column, c.ty
                        ));
                    } else {
                        tp.filter = Some((f.column.clone(), f.keep.clone(), class));
                    }
                }
            }
        }
        resolved.insert(k.clone(), table_rules);
        if tp != TablePlan::default() {
            plan.tables.insert(k, tp);
        }
    }
    // A partition (or child) without rules of its own gets its parent's: its rows are the
    // parent's rows.
    for (key, table) in &schema.tables {
        if resolved.contains_key(key) {
            continue;
        }
        let mut parent = table.parent.clone();
        let mut depth = 0;
        while let Some(p) = parent {
            depth += 1;
            if depth > 16 {
                break;
            }
            if let Some(tp) = plan.tables.get(&p).cloned() {
                plan.tables.insert(key.clone(), tp);
                break;
            }
            if resolved.contains_key(&p) {
                break;
            }
            parent = schema.tables.get(&p).and_then(|t| t.parent.clone());
        }
    }
    if rules.strict {
        for key in restored {
            let Some(table) = schema.tables.get(key) else {
                continue;
            };
            let own = resolved.get(key).copied();
            let parent_rules = |col: &str| {
                let mut parent = table.parent.clone();
                let mut depth = 0;
                while let Some(p) = parent {
                    depth += 1;
                    if depth > 16 {
                        break;
                    }
                    if resolved
                        .get(&p)
                        .is_some_and(|r| r.columns.contains_key(col))
                    {
                        return true;
                    }
                    parent = schema.tables.get(&p).and_then(|t| t.parent.clone());
                }
                false
            };
            let missing: Vec<&str> = table
                .columns
                .iter()
                .filter(|c| !c.generated)
                .filter(|c| !own.is_some_and(|r| r.columns.contains_key(&c.name)))
                .filter(|c| !parent_rules(&c.name))
                .map(|c| c.name.as_str())
                .collect();
            if !missing.is_empty() {
                let name = if key.0 == "public" {
                    key.1.clone()
                } else {
                    format!("{}.{}", key.0, key.1)
                };
                errors.push(format!(
                    "strict mode: table {name:?} has no rule for column(s) {} (add them to the rules file, `keep` included)",
                    missing
                        .iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
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
}
