//! `POST_RESTORE_SQL`: SQL files run against the target once the rows are in, before the run is
//! `Done` (extra indexes for the analysts, views that keep old table names alive).
//!
//! Each file runs in one transaction: a file that fails leaves nothing of itself behind, and
//! the restored data stays. The files are cut into statements here, and sent one by one, so
//! that an error names the line where its statement is (PostgreSQL's error position only
//! exists for errors found while parsing; an error found while executing, such as a duplicate
//! key in a `CREATE UNIQUE INDEX`, has none).
//!
//! On resume or retry, the phase runs *every* file again (a file that failed half-way was
//! rolled back; a file that committed runs again): files should be idempotent
//! (`CREATE INDEX IF NOT EXISTS`, `CREATE OR REPLACE VIEW`). They are plain SQL, not psql
//! scripts (no `\` meta-commands), and may not use what cannot run in a transaction
//! (`CREATE INDEX CONCURRENTLY`, `VACUUM`) nor `BEGIN`/`COMMIT` of their own.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_postgres::error::ErrorPosition;
use tracing::info;

use crate::error::StepError;
use crate::replica::{self, PgEndpoint};

/// A statement that waits this long on a lock (a reader of the fresh copy holding one) fails
/// as transient rather than hanging.
const LOCK_TIMEOUT: &str = "5min";

#[derive(Debug, thiserror::Error)]
pub enum PostRestoreError {
    #[error("POST_RESTORE_SQL={path:?} {}", self.reason())]
    Unreadable { path: PathBuf, detail: String },
    #[error("POST_RESTORE_SQL={path:?} {}", self.reason())]
    NoFiles { path: PathBuf },
    #[error("POST_RESTORE_SQL={path:?} {}", self.reason())]
    NotSql { path: PathBuf },
    #[error(
        "post-restore SQL file {file}, line {line}, failed on the target {target}: {message}; {what_now}"
    )]
    Sql {
        file: PathBuf,
        line: usize,
        target: String,
        message: String,
        what_now: &'static str,
        transient: bool,
    },
}

impl PostRestoreError {
    /// What is wrong with the path, without naming the variable (for the configuration error,
    /// which names it already).
    pub fn reason(&self) -> String {
        const FIX: &str = "point POST_RESTORE_SQL at a .sql file or at a directory of .sql files";
        match self {
            PostRestoreError::Unreadable { detail, .. } => {
                format!("does not exist or cannot be read ({detail}); {FIX}")
            }
            PostRestoreError::NoFiles { .. } => {
                "is a directory with no .sql file in it; add the files or unset POST_RESTORE_SQL"
                    .into()
            }
            PostRestoreError::NotSql { .. } => format!("is not a .sql file; {FIX}"),
            PostRestoreError::Sql { message, .. } => message.clone(),
        }
    }
}

impl crate::error::Classify for PostRestoreError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            PostRestoreError::Sql {
                transient: true, ..
            } => crate::error::FailureKind::Transient,
            _ => crate::error::FailureKind::Permanent,
        }
    }
}

/// The files `path` names: itself if it is a `.sql` file, or a directory's `.sql` files in
/// name order (byte order of their names: `01-x.sql` before `10-y.sql`). Used at start to
/// refuse a bad `POST_RESTORE_SQL`, and again when the phase runs.
pub fn sql_files(path: &Path) -> Result<Vec<PathBuf>, PostRestoreError> {
    let unreadable = |e: std::io::Error| PostRestoreError::Unreadable {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let is_sql = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("sql"));
    if meta.is_file() {
        if !is_sql(path) {
            return Err(PostRestoreError::NotSql {
                path: path.to_path_buf(),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(unreadable)? {
        let p = entry.map_err(unreadable)?.path();
        if is_sql(&p) && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PostRestoreError::NoFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

/// Runs the files of `path` against the target, each in one transaction, in order; stops at
/// the first that fails. Returns how many ran.
pub async fn run(target: &PgEndpoint, path: &Path) -> Result<usize, StepError> {
    let files = sql_files(path)?;
    // A killed run's session may still be running a file (a long CREATE INDEX goes on
    // server-side) and hold locks this run's files need. Our own session carries the same
    // name, so that shutdown and the next Dropping end it too.
    replica::terminate_leftover_restores(target).await?;
    let mut client = target
        .connect_as(replica::RESTORE_APPLICATION_NAME)
        .await
        .map_err(StepError::from)?;
    for file in &files {
        let sql = std::fs::read_to_string(file).map_err(|e| PostRestoreError::Unreadable {
            path: file.clone(),
            detail: e.to_string(),
        })?;
        let started = Instant::now();
        let statements = split_statements(&sql);
        let tx = client
            .transaction()
            .await
            .map_err(|e| sql_error(target, file, 1, &e))?;
        tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await
            .map_err(|e| sql_error(target, file, 1, &e))?;
        for st in &statements {
            if let Err(e) = tx.batch_execute(st.text).await {
                let line = match e.as_db_error().and_then(|d| d.position()) {
                    Some(ErrorPosition::Original(pos)) => st.line_at_char(*pos as usize),
                    _ => st.first_line,
                };
                // Dropping `tx` rolls the file back.
                return Err(sql_error(target, file, line, &e).into());
            }
        }
        let last_line = statements.last().map_or(1, |s| s.first_line);
        tx.commit()
            .await
            .map_err(|e| sql_error(target, file, last_line, &e))?;
        info!(
            file = %file.display(),
            statements = statements.len(),
            seconds = started.elapsed().as_secs_f64(),
            "post-restore SQL {} applied ({} statement(s) in {:.1}s)",
            file.display(),
            statements.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(files.len())
}

fn sql_error(
    target: &PgEndpoint,
    file: &Path,
    line: usize,
    e: &tokio_postgres::Error,
) -> PostRestoreError {
    let (message, transient) = match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!(" (hint: {h})"));
            }
            let c = db.code();
            let transient = crate::replica::is_transient_sqlstate(c);
            (m, transient)
        }
        // No SQLSTATE: the connection broke.
        None => (
            match std::error::Error::source(e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
            true,
        ),
    };
    PostRestoreError::Sql {
        file: file.to_path_buf(),
        line,
        target: target.describe(),
        message,
        what_now: if transient {
            "the file was rolled back and the phase is retried (every file runs again)"
        } else {
            "the file was rolled back; the restored data is in place. Fix the file (POST_RESTORE_SQL) and run `replicator run --force`, or apply it by hand with psql"
        },
        transient,
    }
}

/// One statement of a file, as sent to the server.
#[derive(Debug, PartialEq, Eq)]
pub struct Statement<'a> {
    /// From just after the previous `;` to this one's `;` included (leading comments too:
    /// PostgreSQL's error positions count from here).
    pub text: &'a str,
    /// 1-based line of `text`'s first character in the file.
    pub start_line: usize,
    /// 1-based line of the statement's first token (what an error without position names).
    pub first_line: usize,
}

impl Statement<'_> {
    /// The file's line of the 1-based character position PostgreSQL reported.
    fn line_at_char(&self, pos: usize) -> usize {
        let before = self.text.chars().take(pos.saturating_sub(1));
        self.start_line + before.filter(|c| *c == '\n').count()
    }
}

/// Cuts SQL into statements at the `;` that end them: not in a string (`'...'`, `E'...'`), a
/// quoted identifier, a dollar-quoted body, a comment (`--`, nested `/* */`), nor the
/// `BEGIN ATOMIC ... END` body of a function (as psql does). Statements with no token (only
/// comments or blanks) are dropped.
pub fn split_statements<'a>(sql: &'a str) -> Vec<Statement<'a>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    // Words of the current statement, upper-cased, while they may still decide whether it is a
    // CREATE FUNCTION/PROCEDURE (whose BEGIN ATOMIC body holds `;`).
    let mut head: Vec<String> = Vec::new();
    let mut routine = false;
    let mut depth = 0usize;
    let push = |start: usize, end: usize, out: &mut Vec<Statement<'a>>| {
        let text = &sql[start..end];
        if let Some(first) = first_token(text) {
            let start_line = 1 + sql[..start].matches('\n').count();
            out.push(Statement {
                text,
                start_line,
                first_line: start_line + text[..first].matches('\n').count(),
            });
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut level = 1;
                i += 2;
                while i < b.len() && level > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident_byte(b[i - 2]));
                i = after_quoted(b, i, b'\'', escapes);
            }
            b'"' => i = after_quoted(b, i, b'"', false),
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => {
                // `$tag$` or `$$`; `$1` is a parameter, not a quote.
                let tag_end = sql[i + 1..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=e];
                        i = sql[e + 1..]
                            .find(tag)
                            .map_or(b.len(), |n| e + 1 + n + tag.len());
                    }
                    _ => i += 1,
                }
            }
            b';' if depth == 0 => {
                push(start, i + 1, &mut out);
                start = i + 1;
                i += 1;
                head.clear();
                routine = false;
            }
            c if is_ident_byte(c) && !c.is_ascii_digit() => {
                let end = sql[i..]
                    .find(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == '$'))
                    .map_or(b.len(), |n| i + n);
                let word = sql[i..end].to_ascii_uppercase();
                if head.len() < 4 {
                    head.push(word.clone());
                    routine = head.first().is_some_and(|w| w == "CREATE")
                        && head.iter().any(|w| w == "FUNCTION" || w == "PROCEDURE");
                }
                if routine {
                    match word.as_str() {
                        "BEGIN" => depth += 1,
                        "CASE" if depth > 0 => depth += 1,
                        "END" if depth > 0 => depth -= 1,
                        _ => {}
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    push(start, sql.len(), &mut out);
    out
}

/// The index just past the quoted string or identifier that opens at `b[open]`: a doubled
/// `quote` stands for itself, and in an `E'...'` string a backslash escapes the next byte.
fn after_quoted(b: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if backslash_escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                break;
            }
        } else {
            i += 1;
        }
    }
    i + 1
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Byte offset of the first character that is neither blank nor comment.
fn first_token(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n + 1);
        } else if b[i..].starts_with(b"/*") {
            let mut level = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    level += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b';' {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(String, usize)> {
        split_statements(sql)
            .into_iter()
            .map(|s| (s.text.trim().to_string(), s.first_line))
            .collect()
    }

    #[test]
    fn cuts_at_the_semicolons_that_end_statements() {
        let sql = "-- header; not a statement\n\
            CREATE INDEX i ON t (a);\n\
            /* a; /* nested; */ still; */\n\
            CREATE VIEW \"v;1\" AS SELECT 'a;''b' AS x, E'\\';' AS y;\n\
            CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;\n\
            CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END;\n\
            SELECT $1, a$b FROM t;\n\
            -- trailing comment only\n";
        let t = texts(sql);
        assert_eq!(t.len(), 5, "{t:#?}");
        assert_eq!(
            t[0],
            (
                "-- header; not a statement\nCREATE INDEX i ON t (a);".into(),
                2
            )
        );
        assert!(t[1].0.ends_with("AS y;"), "{t:#?}");
        assert_eq!(t[1].1, 4);
        assert!(t[2].0.ends_with("$body$;"), "{t:#?}");
        assert!(t[3].0.ends_with("SELECT 2; END;"), "{t:#?}");
        assert_eq!(t[4], ("SELECT $1, a$b FROM t;".into(), 7));
    }

    #[test]
    fn a_last_statement_without_semicolon_counts() {
        let t = texts("SELECT 1;\n\nSELECT\n  2");
        assert_eq!(t, vec![("SELECT 1;".into(), 1), ("SELECT\n  2".into(), 3)]);
        let t = texts("/* é /* ü */ */ SELECT 'é;', \"ü;\" ; -- ö;\nSELECT É;");
        assert_eq!(t.len(), 2, "{t:#?}");
        assert_eq!(t[1], ("-- ö;\nSELECT É;".into(), 2));
    }

    #[test]
    fn error_positions_become_file_lines() {
        let sql = "SELECT 1;\n-- c\nSELECT\n  nope(\n";
        let st = &split_statements(sql)[1];
        assert_eq!(st.start_line, 1);
        let pos = st.text.find("nope").unwrap() + 1;
        assert_eq!(st.line_at_char(pos), 4);
    }

    #[test]
    fn files_are_taken_in_name_order_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(matches!(
            sql_files(d),
            Err(PostRestoreError::NoFiles { .. })
        ));
        for f in ["10-b.sql", "02-a.sql", "notes.txt"] {
            std::fs::write(d.join(f), "SELECT 1;").unwrap();
        }
        let names: Vec<_> = sql_files(d)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["02-a.sql", "10-b.sql"]);
        assert!(matches!(
            sql_files(&d.join("notes.txt")),
            Err(PostRestoreError::NotSql { .. })
        ));
        let e = sql_files(&d.join("missing.sql")).unwrap_err().to_string();
        assert!(e.contains("POST_RESTORE_SQL"), "{e}");
    }
}
