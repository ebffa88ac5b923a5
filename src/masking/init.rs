//! `replicator rules init`: a starting rules file from the dump's tables. Every column of every
//! restored table is listed with `keep` (and `strict = true`, so that a column added later in
//! production stops the run until someone decides); the columns whose names or types look
//! personal get a `# REVIEW` comment with the rule that would fit.

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

/// The file's text: `tables` in the order given, each with its columns (generated ones left
/// out: they are computed by the target).
pub fn starting_file(schema: &Schema, tables: &[(String, String)], from: &str) -> String {
    let mut out = format!(
        "# REPLICA_RULES: what of each column and row reaches the replica (docs/masking.md).\n\
         # Written by `replicator rules init` from {from}.\n\
         # Every column is listed with \"keep\". Columns marked REVIEW look personal: decide,\n\
         # e.g. replace \"keep\" with the suggested rule. strict = true refuses a run whose dump\n\
         # has a column this file does not name (one added in production since).\n\
         strict = true\n"
    );
    for (schema_name, name) in tables {
        let Some(table) = schema.table(schema_name, name) else {
            continue;
        };
        let key = if schema_name == "public" {
            name.clone()
        } else {
            format!("{schema_name}.{name}")
        };
        out.push_str(&format!("\n[tables.{}.columns]\n", toml_key(&key)));
        for c in table.columns.iter().filter(|c| !c.generated) {
            let mut line = format!("{} = \"keep\"", toml_key(&c.name));
            if let Some((rule, why)) = suggestion(name, &c.name, &c.ty) {
                line.push_str(&format!(
                    "  # REVIEW: looks like {why} ({}): \"{rule}\"?",
                    c.ty
                ));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
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
        let text = starting_file(&s, &tables, "test.pgsql");
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
}
