//! `replicator rules init`: a starting rules file from the dump's tables. Every column of every
//! restored table is listed with `keep` (and `strict = true`, so that a column added later in
//! production stops the run until someone decides); the columns whose names or types look
//! personal get a `# REVIEW` comment with the rule that would fit.

use super::Rule;
use super::schema::Schema;
use super::validate::TypeClass;

/// Tables whose free text is likely to be about people.
const PEOPLE_TABLES: &[&str] = &[
    "user",
    "account",
    "customer",
    "member",
    "people",
    "person",
    "profile",
    "contact",
    "client",
    "employee",
    "patient",
    "student",
    "candidate",
];

/// The rule suggested for a column that looks personal, and why.
pub fn suggestion(table: &str, column: &str, ty: &str) -> Option<(&'static str, &'static str)> {
    let c = column.to_ascii_lowercase();
    let class = TypeClass::of(ty);
    let has = |words: &[&str]| words.iter().any(|w| c.contains(w));
    if class == TypeClass::Inet
        || class == TypeClass::Cidr
        || c == "ip"
        || has(&["ip_address", "ipaddress", "remote_addr", "last_ip", "_ip"]) && !c.ends_with("_id")
    {
        return Some(("ip", "an IP address"));
    }
    if has(&["email", "e_mail", "mail"]) {
        return Some((
            "hash",
            "an email (hash keeps it an email, unique and joinable)",
        ));
    }
    if has(&["phone", "mobile", "telephone", "fax"]) || c == "tel" {
        return Some(("phone", "a phone number"));
    }
    if has(&[
        "first_name",
        "firstname",
        "given_name",
        "prenom",
        "forename",
    ]) {
        return Some(("first_name", "a first name"));
    }
    if has(&["last_name", "lastname", "family_name", "surname", "maiden"]) || c == "nom" {
        return Some(("last_name", "a last name"));
    }
    if has(&["birth", "dob", "born"]) {
        return Some(("date_shift", "a birth date"));
    }
    if has(&[
        "address",
        "street",
        "city",
        "zip",
        "postal",
        "postcode",
        "iban",
        "ssn",
        "passport",
        "social_security",
        "password",
        "token",
        "secret",
    ]) {
        return Some(("redact", "an address, identifier or secret"));
    }
    if c == "name" || c.ends_with("_name") || c == "username" || c == "login" {
        return Some(("hash", "a name"));
    }
    let t = table.to_ascii_lowercase();
    let people = PEOPLE_TABLES.iter().any(|p| t.contains(p));
    if people && class.is_free_text() {
        return Some(("null", "free text in a table about people"));
    }
    None
}

/// [`suggestion`]'s rule if it fits the column (its type, its length, `NOT NULL`, a unique
/// index: what validation checks); else, for text, the first of `redact` and `null` that
/// fits; else none. The names are a guess (`email_valid` is a boolean, `email_sent_at` a
/// timestamp): a suggestion taken as written must never make the file fail.
fn fitting_suggestion(
    table: &str,
    col: &super::schema::Column,
) -> Option<(&'static str, &'static str)> {
    let (rule, why) = suggestion(table, &col.name, &col.ty)?;
    let class = TypeClass::of(&col.ty);
    let fits = |name: &str| {
        let rule = match name {
            "ip" => Rule::Ip,
            "hash" => Rule::Hash,
            "phone" => Rule::Phone,
            "first_name" => Rule::FirstName,
            "last_name" => Rule::LastName,
            "date_shift" => Rule::DateShift { days: 365 },
            "redact" => Rule::Redact,
            _ => Rule::Null,
        };
        super::validate::unfit(&rule, col, class).is_none()
    };
    if fits(rule) {
        return Some((rule, why));
    }
    if !matches!(class, TypeClass::Text { .. }) {
        return None;
    }
    ["redact", "null"]
        .into_iter()
        .find(|r| fits(r))
        .map(|r| (r, why))
}

/// The file's text: `tables` in the order given, each with its columns (generated ones left
/// out: they are computed by the target). A partition or an inheritance child gets its
/// parents' rules (docs/masking.md): its parents are listed (before it, even a partitioned
/// table that holds no rows of its own), and its own section names only the columns its
/// parents do not have, so that a rule decided on the parent is never undone by a `keep`
/// written for the child.
///
/// `comments` and `large_objects` count those of the dump: when it holds some, a `[dump]`
/// section says `keep` for them, marked REVIEW (strict mode refuses a dump with comments or
/// large objects the file does not mention).
pub fn starting_file(
    schema: &Schema,
    tables: &[(String, String)],
    from: &str,
    comments: usize,
    large_objects: usize,
) -> String {
    let mut out = format!(
        "# REPLICA_RULES: what of each column and row reaches the replica (docs/masking.md).\n\
         # Written by `replicator rules init` from {from}.\n\
         # Every column is listed with \"keep\". Columns marked REVIEW look personal: decide,\n\
         # e.g. replace \"keep\" with the suggested rule. strict = true refuses a run whose dump\n\
         # has a column this file does not name (one added in production since).\n\
         # A partition or an inheritance child gets its parent's rules for the columns its own\n\
         # section does not name.\n\
         strict = true\n"
    );
    if comments + large_objects > 0 {
        out.push_str("\n[dump]\n");
    }
    if comments > 0 {
        out.push_str(&format!(
            "comments = \"keep\"  # REVIEW: the dump holds {comments} comment(s), text people wrote, copied as written: \"drop\"?\n"
        ));
    }
    if large_objects > 0 {
        out.push_str(&format!(
            "large_objects = \"keep\"  # REVIEW: the dump holds {large_objects} large object(s), their bytes copied as they are: \"drop\"?\n"
        ));
    }
    let mut listed: Vec<(String, String)> = Vec::new();
    for key in tables {
        let mut chain = schema.ancestors(key);
        chain.reverse();
        chain.push(key.clone());
        for k in chain {
            if listed.contains(&k) {
                continue;
            }
            if let Some(table) = schema.tables.get(&k) {
                section(&mut out, schema, &k, table);
            }
            listed.push(k);
        }
    }
    out
}

/// One table's section (or, for a child without columns of its own, one comment line).
fn section(
    out: &mut String,
    schema: &Schema,
    key: &(String, String),
    table: &super::schema::Table,
) {
    let (_, name) = key;
    let toml_name = toml_key(&super::validate::display_name(key));
    let ancestors = schema.ancestors(key);
    let inherited = |c: &str| {
        ancestors
            .iter()
            .filter_map(|a| schema.tables.get(a))
            .any(|t| t.column(c).is_some())
    };
    let own: Vec<_> = table
        .columns
        .iter()
        .filter(|c| !c.generated && !inherited(&c.name))
        .collect();
    let parents = ancestors
        .iter()
        .take(table.parents.len().max(1))
        .map(|a| format!("{:?}", super::validate::display_name(a)))
        .collect::<Vec<_>>()
        .join(", ");
    if !ancestors.is_empty() && own.is_empty() {
        out.push_str(&format!(
            "\n# {toml_name}: a partition or child of {parents}, whose rules apply to it\n"
        ));
        return;
    }
    out.push_str(&format!("\n[tables.{toml_name}.columns]\n"));
    if !ancestors.is_empty() {
        out.push_str(&format!(
            "# a partition or child of {parents}, whose rules apply to its other columns\n"
        ));
    }
    for c in own {
        let mut line = format!("{} = \"keep\"", toml_key(&c.name));
        if let Some((rule, why)) = fitting_suggestion(name, c) {
            line.push_str(&format!(
                "  # REVIEW: looks like {why} ({}): \"{rule}\"?",
                c.ty
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        let mut s = String::from("\"");
        for ch in k.chars() {
            match ch {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::{RulesFile, validate};

    #[test]
    fn lists_every_column_keeps_them_and_marks_personal_ones() {
        let mut s = Schema::default();
        s.statement("CREATE TABLE public.users (\n    id integer NOT NULL,\n    email text,\n    \"Phone Number\" text,\n    bio text,\n    created_at timestamp without time zone,\n    doubled integer GENERATED ALWAYS AS ((id * 2)) STORED\n);");
        s.statement("CREATE TABLE app.\"order lines\" (\n    id bigint,\n    last_ip inet,\n    qty integer\n);");
        s.finish();
        let tables = vec![
            ("public".to_string(), "users".to_string()),
            ("app".to_string(), "order lines".to_string()),
        ];
        let text = starting_file(&s, &tables, "test.pgsql", 0, 0);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .to_string()
        };
        assert!(line("email = \"keep\"").contains("REVIEW"));
        assert!(line("\"Phone Number\" = \"keep\"").contains("\"phone\""));
        assert!(
            line("bio = ").contains("\"null\""),
            "free text of a users table"
        );
        assert!(!line("id = ").contains("REVIEW"));
        assert!(!line("created_at = ").contains("REVIEW"));
        assert!(line("last_ip = ").contains("\"ip\""));
        assert!(!text.contains("doubled"));
        assert!(
            text.contains("[tables.\"app.order lines\".columns]"),
            "{text}"
        );
        // It parses, and passes strict mode against the same tables.
        let rules = RulesFile::parse(&text).unwrap();
        assert!(rules.strict);
        validate(&rules, &s, &tables).unwrap();
    }

    /// Found on real schemas (e-petitions, OpenStreetMap): a name that looks personal on a
    /// column whose type or constraint the rule cannot take (`email_valid boolean`,
    /// `email_requested_at timestamp`, a `NOT NULL` bio). Every suggestion, taken as written,
    /// passes validation; a personal-looking text column whose first rule does not fit gets
    /// one that does.
    #[test]
    fn every_suggestion_fits_its_column() {
        let mut s = Schema::default();
        s.statement("CREATE TABLE public.users (\n    id integer NOT NULL,\n    email_valid boolean DEFAULT false NOT NULL,\n    email_requested_at timestamp without time zone,\n    description text DEFAULT ''::text NOT NULL,\n    email character varying(20),\n    login character varying(255) NOT NULL\n);");
        s.statement("CREATE UNIQUE INDEX users_login ON public.users USING btree (login);");
        s.finish();
        let tables = vec![("public".to_string(), "users".to_string())];
        let text = starting_file(&s, &tables, "test.pgsql", 0, 0);
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .to_string()
        };
        assert!(!line("email_valid = ").contains("REVIEW"), "{text}");
        assert!(!line("email_requested_at = ").contains("REVIEW"), "{text}");
        assert!(line("description = ").contains("\"redact\"?"), "{text}");
        assert!(line("email = ").contains("\"redact\"?"), "{text}");
        assert!(line("login = ").contains("\"hash\"?"), "{text}");
        // Every suggestion taken: the file still passes.
        let taken: String = text
            .lines()
            .map(|l| match l.split_once(" = \"keep\"  # REVIEW: ") {
                Some((col, review)) => {
                    let rule = review.rsplit('"').nth(1).unwrap();
                    format!("{col} = \"{rule}\"\n")
                }
                None => format!("{l}\n"),
            })
            .collect();
        let rules = RulesFile::parse(&taken).unwrap();
        validate(&rules, &s, &tables).unwrap_or_else(|e| panic!("{e}\n{taken}"));
    }

    /// Issue 22: partitions (attached), inheritance children and typed tables: the file
    /// passes strict mode, names each column once, and a rule decided on the parent reaches
    /// the children.
    #[test]
    fn partitions_children_and_typed_tables() {
        let mut s = Schema::default();
        for stmt in [
            "CREATE TABLE public.events (\n    id integer,\n    email text\n)\nPARTITION BY RANGE (id);",
            "CREATE TABLE public.events_1 (\n    id integer,\n    email text\n);",
            "ALTER TABLE ONLY public.events ATTACH PARTITION public.events_1 FOR VALUES FROM (0) TO (10);",
            "CREATE TABLE public.contacts (\n    id integer,\n    email text\n);",
            "CREATE TABLE public.vip (\n    level text\n)\nINHERITS (public.contacts);",
            "CREATE TYPE public.person AS (\n\tname text,\n\temail text\n);",
            "CREATE TABLE public.people OF public.person;",
        ] {
            s.statement(stmt);
        }
        s.finish();
        let q = |n: &str| ("public".to_string(), n.to_string());
        let tables = vec![q("events_1"), q("contacts"), q("vip"), q("people")];
        let text = starting_file(&s, &tables, "t.pgsql", 2, 1);
        assert!(text.contains("[tables.events.columns]"), "{text}");
        assert!(!text.contains("[tables.events_1.columns]"), "{text}");
        let vip = &text[text.find("[tables.vip.columns]").unwrap()..];
        let vip = &vip[..vip.find("\n\n").unwrap_or(vip.len())];
        assert!(vip.contains("level = ") && !vip.contains("email"), "{vip}");
        let people = &text[text.find("[tables.people.columns]").unwrap()..];
        assert!(
            people.contains("name = ") && people.contains("email = "),
            "{text}"
        );
        let rules = RulesFile::parse(&text).unwrap();
        assert_eq!(rules.dump.comments, Some(crate::masking::Disposition::Keep));
        assert_eq!(
            rules.dump.large_objects,
            Some(crate::masking::Disposition::Keep)
        );
        validate(&rules, &s, &tables).unwrap();
        // Decided on the parents: the children's rows are masked.
        let decided = text.replace("email = \"keep\"  # REVIEW", "email = \"hash\"  # REVIEW");
        let plan = validate(&RulesFile::parse(&decided).unwrap(), &s, &tables).unwrap();
        for t in ["events_1", "vip", "people"] {
            assert_eq!(
                plan.table("public", t).unwrap().columns["email"].0,
                crate::masking::Rule::Hash,
                "{t}"
            );
        }
    }
}
