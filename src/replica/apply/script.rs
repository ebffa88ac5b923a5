//! Reads the SQL script that `pg_restore --file=-` writes, as a stream of pieces: the header
//! of each table-of-contents entry, complete statements, and the rows of each `COPY`.
//!
//! `pg_restore` only *translates* the archive here (it never connects to the target): the
//! replicator sends the statements itself, so that settings a newer client emits and an older
//! server does not know (`SET transaction_timeout` from pg_restore 17 and later) can be left
//! out, and so that rows go through the replicator's own connections.
//!
//! The script is cut at the `;` that end statements, as psql does: not inside a string
//! (`'...'`, `E'...'`), a quoted identifier, a dollar-quoted body, a comment (`--`, nested
//! `/* */`), nor the `BEGIN ATOMIC ... END` body of a SQL-standard function. The lexer keeps
//! its state from one line to the next, so a multi-gigabyte script is read line by line with
//! bounded memory.

/// The comment `pg_restore` writes before each entry it outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The entry's tag (`t`, `t t_pkey`, `BLOBS`).
    pub name: String,
    /// The entry's kind (`TABLE`, `INDEX`, `TABLE DATA`, `FK CONSTRAINT`, ...).
    pub kind: String,
    /// Its schema, `-` for objects outside schemas.
    pub schema: String,
}

impl EntryHeader {
    /// `INDEX public.t_b_idx`, for messages.
    pub fn describe(&self) -> String {
        if self.schema == "-" || self.schema.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}.{}", self.kind, self.schema, self.name)
        }
    }
}

/// One piece of the script.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A new entry starts: what follows belongs to it.
    Entry(EntryHeader),
    /// A complete statement, with its final `;`.
    Statement(String),
    /// A `COPY ... FROM stdin;` statement: its rows follow, fed with
    /// [`ScriptParser::copy_line`] until it returns `true`.
    CopyStart(String),
    /// A psql meta-command (`\restrict KEY`, `\unrestrict KEY`): nothing for the server.
    Meta(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    #[error("pg_restore's output is not valid UTF-8 (line {line}): only UTF-8 dumps are supported")]
    NotUtf8 { line: u64 },
    #[error(
        "pg_restore's output ended inside a statement (line {line}): the archive may be damaged"
    )]
    Unterminated { line: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    Normal,
    /// In `'...'` (with backslash escapes for `E'...'`) or `"..."`.
    Quoted {
        quote: u8,
        escapes: bool,
    },
    /// In a dollar-quoted body opened by this tag (`$$`, `$body$`).
    Dollar(String),
    /// In a `/* */` comment, this deep.
    Block(u32),
}

/// The streaming splitter. Feed it lines with [`ScriptParser::line`] while
/// [`ScriptParser::in_copy`] is false, and with [`ScriptParser::copy_line`] while it is true.
#[derive(Debug)]
pub struct ScriptParser {
    lex: Lex,
    /// The statement read so far.
    buf: String,
    /// Whether `buf` holds anything but blanks and comments.
    has_token: bool,
    /// The first words of the statement, upper-cased, while they may still make it a
    /// `CREATE FUNCTION`/`PROCEDURE`, whose `BEGIN ATOMIC` body holds `;`.
    head: Vec<String>,
    routine: bool,
    depth: usize,
    in_copy: bool,
    line_no: u64,
}

impl Default for ScriptParser {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// `COPY <table> (<columns>) FROM stdin;`, as pg_restore writes each table's data.
fn is_copy_from_stdin(stmt: &str) -> bool {
    let s = stmt.trim();
    let upper = s.to_ascii_uppercase();
    upper.starts_with("COPY ") && upper.ends_with("FROM STDIN;")
}

/// Parses `-- Name: t; Type: TABLE; Schema: public; Owner: -`, `-- Data for Name: ...` (rows
/// and large objects) or `-- Statistics for Name: ...` (pg_dump 18's `STATISTICS DATA`: the
/// planner statistics of one table, index or materialized view, an entry of their own).
fn parse_header(line: &str) -> Option<EntryHeader> {
    let rest = [
        "-- Name: ",
        "-- Data for Name: ",
        "-- Statistics for Name: ",
    ]
    .iter()
    .find_map(|p| line.strip_prefix(p))?;
    let (name, rest) = rest.split_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ")?;
    let schema = rest.split_once("; ").map_or(rest, |(s, _)| s);
    Some(EntryHeader {
        name: name.to_string(),
        kind: kind.to_string(),
        schema: schema.trim_end().to_string(),
    })
}

impl ScriptParser {
    pub fn new() -> ScriptParser {
        ScriptParser {
            lex: Lex::Normal,
            buf: String::new(),
            has_token: false,
            head: Vec::new(),
            routine: false,
            depth: 0,
            in_copy: false,
            line_no: 0,
        }
    }

    /// Whether the next lines are rows of a `COPY` (for [`ScriptParser::copy_line`]).
    pub fn in_copy(&self) -> bool {
        self.in_copy
    }

    /// One row line of the current `COPY` (its newline included). Returns `true` for the
    /// end marker `\.`, which ends the rows (and is not data).
    pub fn copy_line(&mut self, line: &[u8]) -> bool {
        self.line_no += 1;
        let l = line.strip_suffix(b"\n").unwrap_or(line);
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l == b"\\." {
            self.in_copy = false;
            true
        } else {
            false
        }
    }

    /// The end of the script: an error if it stopped inside a statement or a `COPY`.
    pub fn finish(&self) -> Result<(), ScriptError> {
        if self.in_copy || self.has_token || self.lex != Lex::Normal {
            return Err(ScriptError::Unterminated { line: self.line_no });
        }
        Ok(())
    }

    /// One line of SQL (its newline included, or not for the last line).
    pub fn line(&mut self, raw: &[u8], out: &mut Vec<Piece>) -> Result<(), ScriptError> {
        debug_assert!(!self.in_copy, "rows go to copy_line");
        self.line_no += 1;
        let line =
            std::str::from_utf8(raw).map_err(|_| ScriptError::NotUtf8 { line: self.line_no })?;
        if self.lex == Lex::Normal && !self.has_token {
            let bare = line.trim_end_matches(['\n', '\r']);
            if let Some(h) = parse_header(bare) {
                self.buf.clear();
                out.push(Piece::Entry(h));
                return Ok(());
            }
            if bare.starts_with('\\') {
                self.buf.clear();
                out.push(Piece::Meta(bare.to_string()));
                return Ok(());
            }
        }
        self.lex_line(line, out);
        if !self.has_token && self.lex == Lex::Normal {
            // Only blanks and comments since the last statement: nothing to keep.
            self.buf.clear();
        }
        Ok(())
    }

    fn end_statement(&mut self, out: &mut Vec<Piece>) {
        let stmt = std::mem::take(&mut self.buf);
        if self.has_token {
            let stmt = stmt.trim().to_string();
            if is_copy_from_stdin(&stmt) {
                self.in_copy = true;
                out.push(Piece::CopyStart(stmt));
            } else {
                out.push(Piece::Statement(stmt));
            }
        }
        self.has_token = false;
        self.head.clear();
        self.routine = false;
        self.depth = 0;
    }

    fn lex_line(&mut self, line: &str, out: &mut Vec<Piece>) {
        let b = line.as_bytes();
        let mut i = 0;
        // Text of `line` from `from` not yet appended to `buf`.
        let mut from = 0;
        while i < b.len() {
            match self.lex.clone() {
                Lex::Block(level) => {
                    if b[i..].starts_with(b"/*") {
                        self.lex = Lex::Block(level + 1);
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        self.lex = if level == 1 {
                            Lex::Normal
                        } else {
                            Lex::Block(level - 1)
                        };
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                Lex::Quoted { quote, escapes } => {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == quote {
                        if b.get(i + 1) == Some(&quote) {
                            i += 2;
                        } else {
                            self.lex = Lex::Normal;
                            i += 1;
                        }
                    } else {
                        i += 1;
                    }
                }
                Lex::Dollar(tag) => match line[i..].find(tag.as_str()) {
                    Some(n) => {
                        i += n + tag.len();
                        self.lex = Lex::Normal;
                    }
                    None => i = b.len(),
                },
                Lex::Normal => {
                    let c = b[i];
                    match c {
                        b'-' if b.get(i + 1) == Some(&b'-') => {
                            // A comment to the end of the line.
                            i = b.len();
                        }
                        b'/' if b.get(i + 1) == Some(&b'*') => {
                            self.lex = Lex::Block(1);
                            i += 2;
                        }
                        b'\'' | b'"' => {
                            // `E'...'` takes backslash escapes: the E must start a word.
                            let escapes = c == b'\''
                                && i > 0
                                && matches!(b[i - 1], b'e' | b'E')
                                && (i < 2 || !is_ident_byte(b[i - 2]));
                            self.has_token = true;
                            self.lex = Lex::Quoted { quote: c, escapes };
                            i += 1;
                        }
                        b'$' if i == 0 || !is_ident_byte(b[i - 1]) => {
                            self.has_token = true;
                            // `$tag$` or `$$`; `$1` is a parameter, not a quote.
                            let tag_end = line[i + 1..]
                                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                                .map(|n| i + 1 + n);
                            match tag_end {
                                Some(e)
                                    if b[e] == b'$'
                                        && !b.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                                {
                                    self.lex = Lex::Dollar(line[i..=e].to_string());
                                    i = e + 1;
                                }
                                _ => i += 1,
                            }
                        }
                        b';' if self.depth == 0 => {
                            self.buf.push_str(&line[from..=i]);
                            i += 1;
                            from = i;
                            self.end_statement(out);
                            if self.in_copy {
                                // The rows start on the next line.
                                return;
                            }
                        }
                        c if is_ident_byte(c) && !c.is_ascii_digit() => {
                            self.has_token = true;
                            let end = line[i..]
                                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                                .map_or(b.len(), |n| i + n);
                            let word = line[i..end].to_ascii_uppercase();
                            if self.head.len() < 4 {
                                self.head.push(word.clone());
                                self.routine = self.head.first().is_some_and(|w| w == "CREATE")
                                    && self
                                        .head
                                        .iter()
                                        .any(|w| w == "FUNCTION" || w == "PROCEDURE");
                            }
                            if self.routine {
                                match word.as_str() {
                                    "BEGIN" => self.depth += 1,
                                    "CASE" if self.depth > 0 => self.depth += 1,
                                    "END" if self.depth > 0 => self.depth -= 1,
                                    _ => {}
                                }
                            }
                            i = end;
                        }
                        c if c.is_ascii_whitespace() => i += 1,
                        _ => {
                            self.has_token = true;
                            i += 1;
                        }
                    }
                }
            }
        }
        self.buf.push_str(&line[from.min(line.len())..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a whole script, rows included; returns the pieces and each COPY's rows.
    fn parse(script: &str) -> (Vec<Piece>, Vec<String>) {
        let mut p = ScriptParser::new();
        let mut out = Vec::new();
        let mut rows = Vec::new();
        let mut current = String::new();
        for line in script.split_inclusive('\n') {
            if p.in_copy() {
                if p.copy_line(line.as_bytes()) {
                    rows.push(std::mem::take(&mut current));
                } else {
                    current.push_str(line);
                }
            } else {
                p.line(line.as_bytes(), &mut out).unwrap();
            }
        }
        p.finish().unwrap();
        (out, rows)
    }

    fn statements(pieces: &[Piece]) -> Vec<&str> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Statement(s) | Piece::CopyStart(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reads_a_pg_restore_script() {
        let script = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n\
            SET statement_timeout = 0;\nSET transaction_timeout = 0;\n\
            SELECT pg_catalog.set_config('search_path', '', false);\n\n\
            --\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n\
            CREATE TABLE public.t (\n    a integer,\n    b text DEFAULT 'x;y'::text\n);\n\n\
            --\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: -\n--\n\n\
            COPY public.t (a, b) FROM stdin;\n1\t;not a statement\n2\t\\N\n\\.\n\n\n\
            --\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\n\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (a);\n\n\
            \\unrestrict abc\n";
        let (pieces, rows) = parse(script);
        assert_eq!(
            statements(&pieces),
            vec![
                "SET statement_timeout = 0;",
                "SET transaction_timeout = 0;",
                "SELECT pg_catalog.set_config('search_path', '', false);",
                "CREATE TABLE public.t (\n    a integer,\n    b text DEFAULT 'x;y'::text\n);",
                "COPY public.t (a, b) FROM stdin;",
                "ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (a);",
            ]
        );
        assert_eq!(rows, vec!["1\t;not a statement\n2\t\\N\n".to_string()]);
        let headers: Vec<String> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Entry(h) => Some(h.describe()),
                _ => None,
            })
            .collect();
        assert_eq!(
            headers,
            vec![
                "TABLE public.t",
                "TABLE DATA public.t",
                "CONSTRAINT public.t t_pkey"
            ]
        );
        assert!(pieces.contains(&Piece::Meta("\\restrict abc".into())));
        assert!(pieces.contains(&Piece::Meta("\\unrestrict abc".into())));
    }

    #[test]
    fn semicolons_inside_bodies_strings_and_comments_do_not_cut() {
        let script = "CREATE FUNCTION public.f() RETURNS text\n    LANGUAGE plpgsql\n    AS $_$\nBEGIN\n  -- a comment; here\n  RETURN 'a;b';\nEND;\n$_$;\n\
            CREATE FUNCTION public.g(a integer) RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n SELECT 3;\nEND;\n\
            COMMENT ON TABLE public.t IS E'it''s \\\\; \\' fine;';\n\
            /* a /* nested; */ comment; */ SELECT \"a;b\" FROM public.t;\n\
            SELECT $1; SELECT 2;\n";
        let (pieces, _) = parse(script);
        let s = statements(&pieces);
        assert_eq!(s.len(), 6, "{s:#?}");
        assert!(s[0].ends_with("$_$;"));
        assert!(s[1].starts_with("CREATE FUNCTION public.g") && s[1].ends_with("END;"));
        assert!(s[2].starts_with("COMMENT ON TABLE"));
        assert!(s[3].ends_with("FROM public.t;"));
        assert_eq!(s[4], "SELECT $1;");
        assert_eq!(s[5], "SELECT 2;");
    }

    #[test]
    fn a_cut_script_is_an_error() {
        let mut p = ScriptParser::new();
        let mut out = Vec::new();
        p.line(b"CREATE TABLE t (a text DEFAULT 'unfinished\n", &mut out)
            .unwrap();
        assert!(p.finish().is_err());
        let mut p = ScriptParser::new();
        p.line(b"COPY public.t (a) FROM stdin;\n", &mut out)
            .unwrap();
        assert!(p.in_copy());
        assert!(!p.copy_line(b"1\n"));
        assert!(p.finish().is_err());
        assert!(p.copy_line(b"\\.\n"));
        assert!(p.finish().is_ok());
    }

    /// pg_dump 18 `--statistics`: each `STATISTICS DATA` entry under its own header, never
    /// run as part of the entry before it (written as pg_restore 18 prints them).
    #[test]
    fn statistics_entries_have_their_own_header() {
        let script = "--\n-- Name: users_lower; Type: INDEX; Schema: public; Owner: postgres\n--\n\n\
            CREATE INDEX users_lower ON public.users USING btree (lower(email));\n\n\n\
            --\n-- Statistics for Name: users_lower; Type: STATISTICS DATA; Schema: public; Owner: -\n--\n\n\
            SELECT * FROM pg_catalog.pg_restore_relation_stats(\n\t'version', '180006'::integer,\n\t'relname', 'users_lower'\n);\n\
            SELECT * FROM pg_catalog.pg_restore_attribute_stats(\n\t'relname', 'users_lower',\n\t'most_common_vals', '{a@b.example}'::text\n);\n";
        let (pieces, _) = parse(script);
        let mut current = String::new();
        let mut owned: Vec<(String, usize)> = Vec::new();
        for p in &pieces {
            match p {
                Piece::Entry(h) => {
                    current = h.describe();
                    owned.push((current.clone(), 0));
                }
                Piece::Statement(_) => owned.last_mut().unwrap().1 += 1,
                _ => {}
            }
        }
        assert_eq!(current, "STATISTICS DATA public.users_lower");
        assert_eq!(
            owned,
            vec![
                ("INDEX public.users_lower".to_string(), 1),
                ("STATISTICS DATA public.users_lower".to_string(), 2)
            ]
        );
    }

    #[test]
    fn a_header_inside_a_body_is_text() {
        let script = "CREATE FUNCTION f() RETURNS int AS $$\n-- Name: x; Type: TABLE; Schema: public; Owner: -\nSELECT 1\n$$ LANGUAGE sql;\n";
        let (pieces, _) = parse(script);
        assert_eq!(pieces.len(), 1, "{pieces:#?}");
    }
}
