//! `REPLICA_RULES`: what of each column and row reaches the replica (docs/masking.md).
//!
//! - [`RulesFile`]: the TOML file, parsed (`strict`, per table a rule per column and an
//!   optional row filter).
//! - [`schema`]: the dump's tables, their columns' types, `NOT NULL` and unique columns, read
//!   from the schema's SQL (what [`validate`] checks the rules against, before the wipe).
//! - [`validate`]: every rule fits its column, or the run is refused naming table, column and
//!   rule; the result is a [`Plan`].
//! - [`transform`]: the plan applied to `COPY` rows as they stream to the target, with a keyed
//!   [`MaskingKey`]: the real values of masked columns are never sent.
//!
//! Pure: no IO but reading the rules file; the dump's SQL is read by the caller.

pub mod filter;
pub mod init;
pub mod key;
pub mod schema;
pub mod transform;
pub mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub use transform::{Masker, MaskingCounts, MaskingKey};
pub use validate::{Plan, validate};

/// What reaches the replica of one column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    Keep,
    Null,
    /// This value (in PostgreSQL's text form), for every row.
    Fixed(String),
    /// A constant of the column's type (`REDACTED`, `0`, `{}`, ...).
    Redact,
    /// A keyed, deterministic pseudonym of the same type; unique inputs stay unique.
    Hash,
    Email,
    FirstName,
    LastName,
    Phone,
    Ip,
    /// The date moved by a keyed offset of 1 to `days` days, either way.
    DateShift {
        days: u32,
    },
}

impl Rule {
    /// Its name in the rules file and in the counts.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Keep => "keep",
            Rule::Null => "null",
            Rule::Fixed(_) => "fixed",
            Rule::Redact => "redact",
            Rule::Hash => "hash",
            Rule::Email => "email",
            Rule::FirstName => "first_name",
            Rule::LastName => "last_name",
            Rule::Phone => "phone",
            Rule::Ip => "ip",
            Rule::DateShift { .. } => "date_shift",
        }
    }
}

/// Which rows of a table reach the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowFilter {
    pub column: String,
    pub keep: Keep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Rows whose timestamp or date is within this long before the run's start (or later).
    NewerThan(Duration),
    /// Rows whose value (its text form) is one of these.
    In(Vec<String>),
}

/// The rules of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableRules {
    pub columns: BTreeMap<String, Rule>,
    pub rows: Option<RowFilter>,
}

/// What becomes of a part of the dump that is not rows (`[dump]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Keep,
    Drop,
}

/// `[dump]`: the parts of the dump outside the tables' rows. `None`: the file does not say
/// (kept, and refused under `strict` when the dump has some).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpRules {
    /// `COMMENT ON ...` of every object: free text written by people.
    pub comments: Option<Disposition>,
    /// Large objects (`lo_create`, their bytes, their comments and privileges).
    pub large_objects: Option<Disposition>,
}

impl DumpRules {
    pub fn drops_comments(&self) -> bool {
        self.comments == Some(Disposition::Drop)
    }

    pub fn drops_large_objects(&self) -> bool {
        self.large_objects == Some(Disposition::Drop)
    }
}

/// The rules file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesFile {
    /// Every column of every restored table must have a rule.
    pub strict: bool,
    pub dump: DumpRules,
    /// By table name: `users` (schema public) or `schema.table`.
    pub tables: BTreeMap<String, TableRules>,
}

/// `(schema, table)` of a key of `[tables]`: a bare name is in schema `public`; `s.t` is table
/// `t` of schema `s` unless the dump has a public table named `s.t` (see [`validate`]).
pub fn split_table_key(key: &str) -> (String, String) {
    match key.split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => (s.to_string(), t.to_string()),
        _ => ("public".to_string(), key.to_string()),
    }
}

impl RulesFile {
    /// Reads and parses `path`; the error says what is wrong and where.
    pub fn load(path: &Path) -> Result<RulesFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        RulesFile::parse(&text)
    }

    pub fn parse(text: &str) -> Result<RulesFile, String> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut file = RulesFile::default();
        for (key, value) in &doc {
            match key.as_str() {
                "strict" => {
                    file.strict = value.as_bool().ok_or("`strict` must be true or false")?;
                }
                "dump" => {
                    let t = value.as_table().ok_or("[dump] must be a table")?;
                    file.dump = parse_dump(t)?;
                }
                "tables" => {
                    let tables = value.as_table().ok_or("`tables` must be a table")?;
                    for (name, t) in tables {
                        let t = t
                            .as_table()
                            .ok_or_else(|| format!("[tables.{name:?}] must be a table"))?;
                        file.tables.insert(name.clone(), parse_table(name, t)?);
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key `{other}` (expected `strict`, `dump`, `tables`)"
                    ));
                }
            }
        }
        Ok(file)
    }

    /// Is there any rule that changes something?
    pub fn is_empty(&self) -> bool {
        !self.strict
            && self.dump.comments != Some(Disposition::Drop)
            && self.dump.large_objects != Some(Disposition::Drop)
            && self
                .tables
                .values()
                .all(|t| t.rows.is_none() && t.columns.values().all(|r| *r == Rule::Keep))
    }
}

/// The column rules whose output is keyed (HMAC under `MASKING_KEY`), as
/// `table.column (rule)`: a run with any needs the key.
pub fn keyed_rules(file: &RulesFile) -> Vec<String> {
    let mut out = Vec::new();
    for (table, t) in &file.tables {
        for (col, rule) in &t.columns {
            if !matches!(
                rule,
                Rule::Keep | Rule::Null | Rule::Fixed(_) | Rule::Redact
            ) {
                out.push(format!("{table}.{col} ({})", rule.name()));
            }
        }
    }
    out
}

fn parse_dump(t: &toml::Table) -> Result<DumpRules, String> {
    let mut d = DumpRules::default();
    for (key, value) in t {
        let v = match value.as_str() {
            Some("keep") => Disposition::Keep,
            Some("drop") => Disposition::Drop,
            _ => return Err(format!("[dump] {key} takes \"keep\" or \"drop\"")),
        };
        match key.as_str() {
            "comments" => d.comments = Some(v),
            "large_objects" => d.large_objects = Some(v),
            other => {
                return Err(format!(
                    "[dump]: unknown key `{other}` (expected `comments`, `large_objects`)"
                ));
            }
        }
    }
    Ok(d)
}

fn parse_table(name: &str, t: &toml::Table) -> Result<TableRules, String> {
    let mut rules = TableRules::default();
    for (key, value) in t {
        match key.as_str() {
            "columns" => {
                let cols = value
                    .as_table()
                    .ok_or_else(|| format!("[tables.{name:?}.columns] must be a table"))?;
                for (col, rule) in cols {
                    let r = parse_rule(rule)
                        .map_err(|e| format!("tables.{name:?}.columns.{col:?}: {e}"))?;
                    rules.columns.insert(col.clone(), r);
                }
            }
            "rows" => {
                let rows = value
                    .as_table()
                    .ok_or_else(|| format!("[tables.{name:?}.rows] must be a table"))?;
                rules.rows =
                    Some(parse_filter(rows).map_err(|e| format!("[tables.{name:?}.rows]: {e}"))?);
            }
            other => {
                return Err(format!(
                    "[tables.{name:?}]: unknown key `{other}` (expected `columns`, `rows`)"
                ));
            }
        }
    }
    Ok(rules)
}

const RULE_NAMES: &str = "keep, null, redact, hash, email, first_name, last_name, phone, ip, date_shift, { fixed = \"value\" }, { date_shift = \"N days\" }";

fn parse_rule(v: &toml::Value) -> Result<Rule, String> {
    if let Some(s) = v.as_str() {
        return Ok(match s {
            "keep" => Rule::Keep,
            "null" => Rule::Null,
            "redact" => Rule::Redact,
            "hash" => Rule::Hash,
            "email" => Rule::Email,
            "first_name" => Rule::FirstName,
            "last_name" => Rule::LastName,
            "phone" => Rule::Phone,
            "ip" => Rule::Ip,
            "date_shift" => Rule::DateShift { days: 365 },
            other => return Err(format!("unknown rule {other:?}; rules are {RULE_NAMES}")),
        });
    }
    let t = v
        .as_table()
        .ok_or_else(|| format!("a rule is a string or an inline table; rules are {RULE_NAMES}"))?;
    if t.len() != 1 {
        return Err(format!(
            "an inline rule has exactly one key; rules are {RULE_NAMES}"
        ));
    }
    let (k, v) = t.iter().next().expect("one key");
    match k.as_str() {
        "fixed" => Ok(Rule::Fixed(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err("`fixed` takes a string, a number or a boolean".into()),
        })),
        "date_shift" => {
            let d = parse_duration(
                v.as_str()
                    .ok_or("`date_shift` takes a duration such as \"30 days\"")?,
            )?;
            let days = (d.as_secs() / 86_400) as u32;
            if days == 0 {
                return Err("`date_shift` needs a range of at least 1 day".into());
            }
            Ok(Rule::DateShift { days })
        }
        other => Err(format!("unknown rule `{other}`; rules are {RULE_NAMES}")),
    }
}

fn parse_filter(t: &toml::Table) -> Result<RowFilter, String> {
    let column = t
        .get("column")
        .and_then(|c| c.as_str())
        .ok_or("`column` (the column the filter reads) is required")?
        .to_string();
    let mut keep = None;
    for (k, v) in t {
        match k.as_str() {
            "column" => {}
            "newer_than" => {
                let s = v
                    .as_str()
                    .ok_or("`newer_than` takes a duration such as \"90 days\"")?;
                keep = Some(Keep::NewerThan(parse_duration(s)?));
            }
            "in" => {
                let list = v.as_array().ok_or("`in` takes a list of values")?;
                let mut values = Vec::new();
                for x in list {
                    values.push(match x {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Boolean(b) => if *b { "t" } else { "f" }.to_string(),
                        _ => return Err("`in` takes strings, integers or booleans".into()),
                    });
                }
                keep = Some(Keep::In(values));
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` (expected `column` and one of `newer_than`, `in`)"
                ));
            }
        }
    }
    let keep = keep.ok_or("one of `newer_than` or `in` is required")?;
    Ok(RowFilter { column, keep })
}

/// `90 days`, `12 hours`, `2 weeks`, `30 minutes`, `1 year` (365 days).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a duration such as \"90 days\", \"12 hours\" or \"2 weeks\"");
    let mut parts = s.split_whitespace();
    let n: u64 = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    let unit = parts.next().ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    let secs = match unit.trim_end_matches('s') {
        "second" | "sec" => 1,
        "minute" | "min" => 60,
        "hour" => 3600,
        "day" => 86_400,
        "week" => 7 * 86_400,
        "month" => 30 * 86_400,
        "year" => 365 * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.checked_mul(secs).ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_issue_s_shape() {
        let f = RulesFile::parse(
            r#"
strict = false                      # true: every column of every restored table must be named
[tables.users.columns]              # table name as in the dump (schema public), then column = rule
email = "hash"
first_name = "first_name"
notes = "null"
[tables."knowledge-elements".columns]
payload = "redact"
[tables.events.rows]                # a row filter
column = "created_at"
newer_than = "90 days"
"#,
        )
        .unwrap();
        assert!(!f.strict);
        let users = &f.tables["users"];
        assert_eq!(users.columns["email"], Rule::Hash);
        assert_eq!(users.columns["first_name"], Rule::FirstName);
        assert_eq!(users.columns["notes"], Rule::Null);
        assert_eq!(
            f.tables["knowledge-elements"].columns["payload"],
            Rule::Redact
        );
        assert_eq!(
            f.tables["events"].rows,
            Some(RowFilter {
                column: "created_at".into(),
                keep: Keep::NewerThan(Duration::from_secs(90 * 86_400))
            })
        );
    }

    #[test]
    fn accepts_inline_rules_and_in_filters() {
        let f = RulesFile::parse(
            r#"
strict = true
[tables.t.columns]
a = { fixed = "x" }
b = { fixed = 3 }
c = { date_shift = "30 days" }
d = "date_shift"
[tables.t.rows]
column = "kind"
in = ["a", 2, true]
"#,
        )
        .unwrap();
        let t = &f.tables["t"];
        assert_eq!(t.columns["a"], Rule::Fixed("x".into()));
        assert_eq!(t.columns["b"], Rule::Fixed("3".into()));
        assert_eq!(t.columns["c"], Rule::DateShift { days: 30 });
        assert_eq!(t.columns["d"], Rule::DateShift { days: 365 });
        assert_eq!(
            t.rows.as_ref().unwrap().keep,
            Keep::In(vec!["a".into(), "2".into(), "t".into()])
        );
    }

    #[test]
    fn refuses_what_it_does_not_know_and_says_where() {
        let e = RulesFile::parse("[tables.users.columns]\nemail = \"md5\"\n").unwrap_err();
        assert!(
            e.contains("users") && e.contains("email") && e.contains("md5"),
            "{e}"
        );
        let e = RulesFile::parse("strikt = true").unwrap_err();
        assert!(e.contains("strikt"), "{e}");
        let e =
            RulesFile::parse("[tables.e.rows]\ncolumn = \"c\"\nnewer_than = \"soon\"").unwrap_err();
        assert!(e.contains("soon"), "{e}");
        let e = RulesFile::parse("[tables.e.rows]\nnewer_than = \"1 day\"").unwrap_err();
        assert!(e.contains("column"), "{e}");
    }

    #[test]
    fn reads_what_becomes_of_comments_and_large_objects() {
        let f =
            RulesFile::parse("[dump]\ncomments = \"drop\"\nlarge_objects = \"keep\"\n").unwrap();
        assert_eq!(f.dump.comments, Some(Disposition::Drop));
        assert_eq!(f.dump.large_objects, Some(Disposition::Keep));
        assert!(!f.is_empty());
        assert_eq!(RulesFile::parse("").unwrap().dump, DumpRules::default());
        let e = RulesFile::parse("[dump]\ncomments = \"mask\"\n").unwrap_err();
        assert!(e.contains("comments") && e.contains("drop"), "{e}");
        let e = RulesFile::parse("[dump]\nblobs = \"drop\"\n").unwrap_err();
        assert!(e.contains("blobs"), "{e}");
    }

    #[test]
    fn keyed_rules_are_listed() {
        let f = RulesFile::parse(
            "[tables.u.columns]\na = \"hash\"\nb = \"null\"\nc = { fixed = 1 }\nd = \"redact\"\ne = \"date_shift\"\n",
        )
        .unwrap();
        assert_eq!(keyed_rules(&f), vec!["u.a (hash)", "u.e (date_shift)"]);
    }

    #[test]
    fn reads_durations() {
        assert_eq!(
            parse_duration("90 days").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("1 hour").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("2 weeks").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("days").is_err());
    }

    #[test]
    fn table_keys() {
        assert_eq!(split_table_key("users"), ("public".into(), "users".into()));
        assert_eq!(split_table_key("app.users"), ("app".into(), "users".into()));
    }
}
