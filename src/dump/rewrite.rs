//! The dump's statements rewritten to the shadow schemas of a swap (`REFRESH_MODE=swap`):
//! tonight's copy is built under other schema names beside yesterday's, then switched.
//!
//! pg_dump writes every name schema-qualified (it restores with an empty `search_path`), so a
//! schema is named in a statement in few ways, each rewritten here from the statement's tokens
//! (never inside a string, a quoted identifier, a comment or a dollar-quoted body unless said):
//!
//! - a qualified name, `public.t`, `public."T"`, `"public".t` (an identifier followed by a
//!   dot and not preceded by one): DDL, view and rule definitions, `BEGIN ATOMIC` bodies,
//!   types, casts, operators (`OPERATOR(public.=)`), index definitions;
//! - a schema named on its own after the keyword `SCHEMA` (`CREATE SCHEMA`, `ALTER SCHEMA`,
//!   `COMMENT ON SCHEMA`, `GRANT ... ON SCHEMA`, `... IN SCHEMA`);
//! - a string literal cast to an object identifier type (`'public.t_id_seq'::regclass`,
//!   `'public'::regnamespace`, `::regtype`, `::regproc`...), the first argument of `setval`,
//!   and the value after `'schemaname'` in PostgreSQL 18's statistics calls.
//!
//! Left as written: extensions' own statements (an extension lives in the live schema and is
//! moved at the switch), names of extension members (`public.gin_trgm_ops`, `public.citext`:
//! they are not in the shadow), and function bodies in dollar quotes (PL/pgSQL and SQL bodies
//! resolve names when called: right after the switch).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Object identifier types whose literal names a schema-qualified object.
const REG_TYPES: &[&str] = &[
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regcollation",
];

/// The rewriting of one run: live schema name -> shadow name, and the names that stay.
#[derive(Clone, Debug, Default)]
pub struct Rewriter {
    map: HashMap<String, String>,
    /// `(schema, name)` of extension members in live schemas: references stay.
    keep: HashSet<(String, String)>,
}

/// One token of a statement, as a byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A bare or quoted identifier (or keyword).
    Ident,
    /// A string literal (`'...'`, `E'...'`).
    Str,
    /// `.`
    Dot,
    /// `::`
    Cast,
    /// `(`, `,` and any other punctuation or operator character.
    Punct(u8),
    /// A number, a dollar-quoted body, a parameter: never rewritten.
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Rewriter {
    pub fn new(map: HashMap<String, String>, keep: HashSet<(String, String)>) -> Rewriter {
        Rewriter { map, keep }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live schema whose shadow is `shadow`, if it is one.
    pub fn live_of(&self, shadow: &str) -> Option<&str> {
        self.map
            .iter()
            .find(|(_, s)| s.as_str() == shadow)
            .map(|(l, _)| l.as_str())
    }

    /// The shadow schemas.
    pub fn shadows(&self) -> Vec<String> {
        self.map.values().cloned().collect()
    }

    /// The shadow of `schema`, if it is switched.
    pub fn shadow_of(&self, schema: &str) -> Option<&str> {
        self.map.get(schema).map(String::as_str)
    }

    /// `stmt` with every reference to a switched schema pointed at its shadow.
    pub fn rewrite<'a>(&self, stmt: &'a str) -> Cow<'a, str> {
        if self.map.is_empty() {
            return Cow::Borrowed(stmt);
        }
        let tokens = tokenize(stmt);
        let words: Vec<String> = tokens
            .iter()
            .filter(|t| t.kind == Kind::Ident)
            .take(2)
            .map(|t| ident_text(&stmt[t.start..t.end]).to_ascii_uppercase())
            .collect();
        // An extension's own statements name the schema it lives in: the live one.
        if words.get(1).is_some_and(|w| w == "EXTENSION")
            || (words.first().is_some_and(|w| w == "COMMENT")
                && tokens
                    .iter()
                    .filter(|t| t.kind == Kind::Ident)
                    .nth(2)
                    .is_some_and(|t| {
                        ident_text(&stmt[t.start..t.end]).eq_ignore_ascii_case("EXTENSION")
                    }))
        {
            return Cow::Borrowed(stmt);
        }
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let prev = i.checked_sub(1).map(|j| tokens[j]);
            let next = tokens.get(i + 1).copied();
            match t.kind {
                Kind::Ident => {
                    let name = ident_text(&stmt[t.start..t.end]);
                    let Some(shadow) = self.map.get(name.as_ref()) else {
                        continue;
                    };
                    let qualified = next.is_some_and(|n| n.kind == Kind::Dot)
                        && prev.is_none_or(|p| p.kind != Kind::Dot);
                    let after_schema = prev.is_some_and(|p| {
                        p.kind == Kind::Ident && stmt[p.start..p.end].eq_ignore_ascii_case("SCHEMA")
                    }) && next.is_none_or(|n| n.kind != Kind::Dot);
                    if qualified {
                        let member = tokens
                            .get(i + 2)
                            .filter(|m| m.kind == Kind::Ident)
                            .map(|m| ident_text(&stmt[m.start..m.end]).into_owned());
                        if member.is_some_and(|m| self.keep.contains(&(name.to_string(), m))) {
                            continue;
                        }
                    }
                    if qualified || after_schema {
                        edits.push((t.start, t.end, quote_ident(shadow)));
                    }
                }
                Kind::Str => {
                    let cast = next.is_some_and(|n| n.kind == Kind::Cast)
                        && tokens.get(i + 2).is_some_and(|ty| {
                            ty.kind == Kind::Ident
                                && REG_TYPES.iter().any(|r| {
                                    stmt[ty.start..ty.end].eq_ignore_ascii_case(r)
                                        || stmt[ty.start..ty.end]
                                            .eq_ignore_ascii_case(&format!("\"{r}\""))
                                })
                        });
                    // `setval('public.s', ...)`: the first argument of setval.
                    let setval = prev.is_some_and(|p| p.kind == Kind::Punct(b'('))
                        && i >= 2
                        && tokens[i - 2].kind == Kind::Ident
                        && stmt[tokens[i - 2].start..tokens[i - 2].end]
                            .eq_ignore_ascii_case("setval");
                    // `'schemaname', 'public'` in PostgreSQL 18's statistics calls.
                    let stats = prev.is_some_and(|p| p.kind == Kind::Punct(b','))
                        && i >= 2
                        && tokens[i - 2].kind == Kind::Str
                        && &stmt[tokens[i - 2].start..tokens[i - 2].end] == "'schemaname'";
                    let text = &stmt[t.start..t.end];
                    // E'...' strings are not names pg_dump writes; an unterminated one is not
                    // a name either.
                    if !text.starts_with('\'') || text.len() < 2 || !text.ends_with('\'') {
                        continue;
                    }
                    let inner = text[1..text.len() - 1].replace("''", "'");
                    let rewritten = if stats {
                        self.map.get(&inner).map(|s| s.to_string())
                    } else if cast || setval {
                        self.rewrite_name(&inner)
                    } else {
                        None
                    };
                    if let Some(new) = rewritten {
                        edits.push((t.start, t.end, format!("'{}'", new.replace('\'', "''"))));
                    }
                }
                _ => {}
            }
        }
        if edits.is_empty() {
            return Cow::Borrowed(stmt);
        }
        let mut out = String::with_capacity(stmt.len() + edits.len() * 16);
        let mut at = 0;
        for (start, end, text) in edits {
            out.push_str(&stmt[at..start]);
            out.push_str(&text);
            at = end;
        }
        out.push_str(&stmt[at..]);
        Cow::Owned(out)
    }

    /// The object name inside a literal (`public.t`, `"public"."T"`, `public` alone for a
    /// `regnamespace`, `public.f(integer)`), pointed at the shadow.
    fn rewrite_name(&self, name: &str) -> Option<String> {
        let tokens = tokenize(name);
        let first = tokens.first()?;
        if first.kind != Kind::Ident {
            return None;
        }
        let schema = ident_text(&name[first.start..first.end]);
        let shadow = self.map.get(schema.as_ref())?;
        match tokens.get(1) {
            Some(t) if t.kind == Kind::Dot => {
                let member = tokens
                    .get(2)
                    .filter(|m| m.kind == Kind::Ident)
                    .map(|m| ident_text(&name[m.start..m.end]).into_owned())?;
                if self.keep.contains(&(schema.to_string(), member)) {
                    return None;
                }
            }
            None => {}
            Some(_) => return None,
        }
        Some(format!("{}{}", quote_ident(shadow), &name[first.end..]))
    }
}

/// `name` as an identifier in SQL: bare when it may be, double-quoted otherwise.
pub fn quote_ident(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// An identifier's name: unquoted as written, or the text of a quoted one.
fn ident_text(raw: &str) -> Cow<'_, str> {
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Cow::Owned(inner.replace("\"\"", "\""))
    } else if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        // Unquoted identifiers fold to lower case.
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_byte(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The statement's tokens; comments and white space are dropped.
fn tokenize(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let push = |out: &mut Vec<Token>, kind, start, end| out.push(Token { kind, start, end });
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            // Nested block comments, as PostgreSQL reads them.
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'\'' || ((c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i = past_quoted(b, i + usize::from(escapes), b'\'', escapes);
            push(&mut out, Kind::Str, start, i);
        } else if c == b'"' {
            i = past_quoted(b, i, b'"', false);
            push(&mut out, Kind::Ident, start, i);
        } else if c == b'$' && dollar_tag(b, i).is_some() {
            let tag_end = dollar_tag(b, i).expect("tag");
            let tag = &b[i..tag_end];
            i = tag_end;
            while i < b.len() && !b[i..].starts_with(tag) {
                i += 1;
            }
            i = (i + tag.len()).min(b.len());
            push(&mut out, Kind::Other, start, i);
        } else if is_ident_start(c) {
            while i < b.len() && is_ident_byte(b[i]) {
                i += 1;
            }
            push(&mut out, Kind::Ident, start, i);
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            push(&mut out, Kind::Other, start, i);
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            i += 2;
            push(&mut out, Kind::Cast, start, i);
        } else if c == b'.' {
            i += 1;
            push(&mut out, Kind::Dot, start, i);
        } else {
            i += 1;
            push(&mut out, Kind::Punct(c), start, i);
        }
    }
    out
}

/// Where the quoted text opening at `open` (`'...'` or `"..."`, its quote doubled inside;
/// with `escapes`, backslashes escape too) ends: just past its closing quote, or the end of
/// `b` when it is not closed.
fn past_quoted(b: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The end of a dollar-quote tag starting at `i` (`$$`, `$body$`), if one starts there.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && b[j] != b'$' {
        if !(is_ident_byte(b[j]) && b[j] != b'$') || (j == i + 1 && b[j].is_ascii_digit()) {
            return None;
        }
        j += 1;
    }
    (j < b.len()).then_some(j + 1)
}

#[cfg(test)]
mod tests;
