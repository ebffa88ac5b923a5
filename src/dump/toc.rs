//! A dump's table of contents (`pg_restore --list`), and the `--use-list` files that restore
//! only part of it.
//!
//! Filtering the table of contents is how rows are left out without ever being read: an entry
//! commented out of the list given to `pg_restore --use-list` is skipped, while the other
//! filters (`--section`, `--schema`) still apply. [`Toc`] is general (any entry kind can be
//! left out) so that other filters, such as foreign keys, build on it.
//!
//! `pg_restore --list` prints each entry as `<id>; <tableoid> <oid> <desc> <schema> <tag>
//! <owner>`, with names *unquoted* (a table `"my table"` prints as `my table`, `"we""ird"` as
//! `we"ird`, a newline becomes a space). The desc comes from a known set (some have spaces,
//! `TABLE DATA`), the schema never has a space in practice, the owner is the last word: the
//! tag is what lies between.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the table of contents could not be read or a list written.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error(
        "cannot run pg_restore: {0}; install the PostgreSQL client tools (pg_restore) and make sure they are on PATH"
    )]
    Spawn(#[source] std::io::Error),
    #[error(
        "pg_restore {what} of the dump {path} failed ({status}): {stderr}; the dump is not a complete pg_dump -Fc archive, the backup must be downloaded again"
    )]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error(
        "cannot read the restore list {path}: {source}; it is written at the start of the restore step: check that REPLICATOR_STATE_DIR is readable, then run `replicator resume`"
    )]
    ReadList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot write the restore list {path}: {source}; check that REPLICATOR_STATE_DIR is writable and has free space"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for TocError {
    fn kind(&self) -> crate::error::FailureKind {
        // A missing binary, an unreadable dump or a full disk: none goes away by waiting.
        crate::error::FailureKind::Permanent
    }
}

/// The descs that contain a space, longest first, so that `FK CONSTRAINT public t c` is not
/// read as desc `FK` (pg_dump's `pg_backup_archiver.c` and `pg_dump.c`).
const MULTI_WORD_DESCS: &[&str] = &[
    "PUBLICATION TABLES IN SCHEMA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "MATERIALIZED VIEW DATA",
    "STATISTICS DATA",
    "BLOB METADATA",
    "FOREIGN DATA WRAPPER",
    "TEXT SEARCH TEMPLATE",
    "PROCEDURAL LANGUAGE",
    "TEXT SEARCH PARSER",
    "SUBSCRIPTION TABLE",
    "MATERIALIZED VIEW",
    "PUBLICATION TABLE",
    "SEQUENCE OWNED BY",
    "CHECK CONSTRAINT",
    "OPERATOR FAMILY",
    "OPERATOR CLASS",
    "FOREIGN SERVER",
    "SECURITY LABEL",
    "EVENT TRIGGER",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "ROW SECURITY",
    "SEQUENCE SET",
    "TABLE ATTACH",
    "USER MAPPING",
    "DEFAULT ACL",
    "SHELL TYPE",
    "TABLE DATA",
];

/// Descs whose tag is `<table> <object>` (pg_dump builds it as `"%s %s"`).
const TABLE_AND_NAME_DESCS: &[&str] = &[
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "TRIGGER",
    "RULE",
    "POLICY",
    "DEFAULT",
];

/// Descs whose tag is the name of a relation.
const RELATION_DESCS: &[&str] = &["TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"];

/// The section of the dump an entry belongs to, which `pg_restore --section` filters on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocSection {
    /// Comments, security labels and privileges: in no section (`--no-comments` and
    /// `--no-privileges` skip them anyway).
    None,
    PreData,
    Data,
    PostData,
}

/// One entry of the table of contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// The dump id: the first number of the line, what `--use-list` reads.
    pub id: u32,
    /// `TABLE`, `TABLE DATA`, `FK CONSTRAINT`, `INDEX`...
    pub desc: String,
    /// `-` for objects outside any schema (extensions, schemas themselves).
    pub schema: String,
    /// The tag as printed: `answers`, or `answers answers_pkey` for a constraint.
    pub tag: String,
    /// The object's own name: the tag, or its second half for `<table> <object>` tags.
    pub name: String,
    /// The relation the entry belongs to: the tag of a `TABLE DATA`, the first half of a
    /// constraint's, trigger's, rule's or default's tag; `None` for other entries.
    pub table: Option<String>,
    pub owner: String,
}

impl TocEntry {
    /// The section pg_dump assigns to an entry of this desc (`pg_dump.c`: `dumpTableData`,
    /// `dumpIndex`...); the list does not print it.
    pub fn section(&self) -> TocSection {
        match self.desc.as_str() {
            "COMMENT" | "ACL" | "SECURITY LABEL" | "DEFAULT ACL" => TocSection::None,
            "TABLE DATA" | "SEQUENCE SET" | "BLOB" | "BLOBS" | "LARGE OBJECT" => TocSection::Data,
            "INDEX"
            | "INDEX ATTACH"
            | "CONSTRAINT"
            | "CHECK CONSTRAINT"
            | "FK CONSTRAINT"
            | "TRIGGER"
            | "RULE"
            | "EVENT TRIGGER"
            | "MATERIALIZED VIEW DATA"
            | "POLICY"
            | "ROW SECURITY"
            | "STATISTICS"
            | "PUBLICATION TABLE"
            | "PUBLICATION TABLES IN SCHEMA"
            | "PUBLICATION"
            | "SUBSCRIPTION"
            | "SUBSCRIPTION TABLE" => TocSection::PostData,
            _ => TocSection::PreData,
        }
    }
}

/// How many times this process ran `pg_restore --list` ([`Toc::read`]).
static LIST_READS: AtomicU64 = AtomicU64::new(0);

/// A dump's table of contents, with the original lines so that a list can be written back.
#[derive(Clone, Debug, Default)]
pub struct Toc {
    lines: Vec<String>,
    /// Entry and the index of its line in `lines`.
    entries: Vec<(TocEntry, usize)>,
}

impl Toc {
    /// `pg_restore --list` of `dump`. Each read is counted and logged: a run reads its dump's
    /// table of contents once ([`Toc::load_or_read`]).
    pub async fn read(dump: &Path) -> Result<Toc, TocError> {
        let list = pg_restore_stdout(dump, &["--list".into()], "--list").await?;
        let toc = Toc::parse(&list);
        let reads = LIST_READS.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            dump = %dump.display(),
            entries = toc.entries.len(),
            toc_reads = reads,
            "read the dump's table of contents with pg_restore --list ({} entries; {reads} read(s) by this process)",
            toc.entries.len()
        );
        Ok(toc)
    }

    /// The table of contents a run keeps in its work dir (`saved`), or, when there is none yet,
    /// [`Toc::read`] of `dump` saved there: the steps of a run (checks, restore totals,
    /// exclusions, foreign keys) share one `pg_restore --list`, even across a resume.
    pub async fn load_or_read(dump: &Path, saved: &Path) -> Result<Toc, TocError> {
        if saved.is_file() {
            return Toc::read_list(saved);
        }
        let toc = Toc::read(dump).await?;
        toc.save(saved)?;
        Ok(toc)
    }

    /// Writes the whole list to `path` (nothing commented out), for [`Toc::load_or_read`]:
    /// through a `.partial` file renamed into place, so that a crash never leaves half a list
    /// to trust.
    pub fn save(&self, path: &Path) -> Result<(), TocError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        self.write_list(&partial, &HashSet::new())?;
        std::fs::rename(&partial, path).map_err(|source| TocError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A `--use-list` file as [`Toc::write_list`] wrote it: its entries are exactly what a
    /// `pg_restore --use-list` of it runs (before `--section` and `--schema` filter), since
    /// the commented-out ones are not entries.
    pub fn read_list(path: &Path) -> Result<Toc, TocError> {
        let list = std::fs::read_to_string(path).map_err(|source| TocError::ReadList {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Toc::parse(&list))
    }

    /// `Dumped from database version` of the list's header: the production server's.
    pub fn dumped_from(&self) -> Option<&str> {
        self.header("Dumped from database version:")
    }

    /// `Dumped by pg_dump version` of the list's header.
    pub fn dumped_by(&self) -> Option<&str> {
        self.header("Dumped by pg_dump version:")
    }

    fn header(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(';'))
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    }

    /// Parses the output of `pg_restore --list`.
    pub fn parse(list: &str) -> Toc {
        let lines: Vec<String> = list.lines().map(str::to_string).collect();
        let mut entries: Vec<(TocEntry, usize)> = lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| parse_line(l).map(|e| (e, i)))
            .collect();
        // The relations of each schema, to cut `<table> <object>` tags where a table name
        // ends even when the table's name has spaces.
        let mut relations: HashMap<&str, Vec<&str>> = HashMap::new();
        for (e, _) in &entries {
            if RELATION_DESCS.contains(&e.desc.as_str()) {
                relations.entry(&e.schema).or_default().push(&e.tag);
            }
        }
        let splits: Vec<Option<(String, String)>> = entries
            .iter()
            .map(|(e, _)| {
                if !TABLE_AND_NAME_DESCS.contains(&e.desc.as_str()) {
                    return None;
                }
                let known = relations.get(e.schema.as_str());
                // The longest relation name that the tag starts with, then a space.
                let table = known
                    .into_iter()
                    .flatten()
                    .filter(|t| {
                        e.tag
                            .strip_prefix(**t)
                            .is_some_and(|rest| rest.starts_with(' '))
                    })
                    .max_by_key(|t| t.len())
                    .map(|t| t.to_string())
                    .or_else(|| e.tag.split_once(' ').map(|(t, _)| t.to_string()))?;
                let name = e.tag[table.len()..].trim_start().to_string();
                Some((table, name))
            })
            .collect();
        for ((e, _), split) in entries.iter_mut().zip(splits) {
            if let Some((table, name)) = split {
                e.table = Some(table);
                e.name = name;
            } else if e.desc == "TABLE DATA" {
                e.table = Some(e.tag.clone());
            }
        }
        Toc { lines, entries }
    }

    pub fn entries(&self) -> impl Iterator<Item = &TocEntry> {
        self.entries.iter().map(|(e, _)| e)
    }

    /// Each entry with the section it is restored in, and its list line (what `--use-list`
    /// reads): its own section, or for entries in no section (comments, security labels) the
    /// section of the entry before it, as pg_restore does (`pg_dump` writes them right after
    /// their object). Large objects' metadata is pre-data (`lo_create`), their contents data;
    /// statistics (PostgreSQL 18) come last, with the post-data.
    pub fn sectioned(&self) -> Vec<(&TocEntry, TocSection, &str)> {
        let mut current = TocSection::PreData;
        self.entries
            .iter()
            .map(|(e, line)| {
                let section = match e.desc.as_str() {
                    "BLOB" | "BLOB METADATA" => TocSection::PreData,
                    "STATISTICS DATA" => TocSection::PostData,
                    _ => e.section(),
                };
                if section != TocSection::None {
                    current = section;
                }
                (e, current, self.lines[*line].as_str())
            })
            .collect()
    }

    /// Whether the dump creates the table `schema.table` (with or without its rows).
    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.entries()
            .any(|e| e.desc == "TABLE" && e.schema == schema && e.tag == table)
    }

    /// The `TABLE DATA` entry of `schema.table`, if the dump has one.
    pub fn table_data(&self, schema: &str, table: &str) -> Option<&TocEntry> {
        self.entries()
            .find(|e| e.desc == "TABLE DATA" && e.schema == schema && e.tag == table)
    }

    /// Writes a `--use-list` file: every line as listed, with the entries whose id is in
    /// `skip` commented out (`pg_restore` ignores lines that start with `;`).
    pub fn write_list(&self, path: &Path, skip: &HashSet<u32>) -> Result<(), TocError> {
        let skipped: HashSet<usize> = self
            .entries
            .iter()
            .filter(|(e, _)| skip.contains(&e.id))
            .map(|(_, i)| *i)
            .collect();
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if skipped.contains(&i) {
                out.push_str(";excluded by replicator: ");
            }
            out.push_str(line);
            out.push('\n');
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, out)
        };
        write().map_err(|source| TocError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn parse_line(line: &str) -> Option<TocEntry> {
    if line.starts_with(';') {
        return None;
    }
    // `3530; 0 16430 TABLE DATA public answers postgres`
    let (id, rest) = line.split_once("; ")?;
    let id: u32 = id.trim().parse().ok()?;
    let mut words = rest.splitn(3, ' ');
    let (_tableoid, _oid, rest) = (words.next()?, words.next()?, words.next()?);
    let desc = MULTI_WORD_DESCS
        .iter()
        .find(|d| {
            rest.strip_prefix(**d)
                .is_some_and(|r| r.is_empty() || r.starts_with(' '))
        })
        .copied()
        .unwrap_or_else(|| rest.split(' ').next().unwrap_or(""));
    let rest = rest[desc.len()..].strip_prefix(' ').unwrap_or("");
    let (schema, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    // The owner is the last word, possibly empty (`EXTENSION - plpgsql ` ends with a space).
    let (tag, owner) = rest.rsplit_once(' ').unwrap_or((rest, ""));
    Some(TocEntry {
        id,
        desc: desc.to_string(),
        schema: schema.to_string(),
        tag: tag.to_string(),
        name: tag.to_string(),
        table: None,
        owner: owner.to_string(),
    })
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `pg_restore ARGS DUMP` and returns what it prints on stdout. `what` names the
/// arguments in the error (`--list`).
pub async fn pg_restore_stdout(
    dump: &Path,
    args: &[OsString],
    what: &'static str,
) -> Result<String, TocError> {
    // No secret and no PG* variable: pg_restore only reads the dump.
    let out = crate::secret::child_command("pg_restore")
        .args(args)
        .arg(dump)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(TocError::Spawn)?;
    if !out.status.success() {
        return Err(TocError::Unreadable {
            what,
            path: dump.to_path_buf(),
            status: out.status.to_string(),
            stderr: last_lines(&String::from_utf8_lossy(&out.stderr), 5),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One foreign key of the dump, as its post-data SQL declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    /// Its `FK CONSTRAINT` dump id (`None` if the SQL had no `-- TOC entry` header).
    pub id: Option<u32>,
    /// The referencing table.
    pub schema: String,
    pub table: String,
    /// The referenced table.
    pub ref_schema: String,
    pub ref_table: String,
}

/// Every foreign key of the dump, in the dump's order, read from the SQL `pg_restore
/// --verbose` prints for the post-data section (the list itself does not say what a foreign
/// key references; the SQL costs no data read).
pub async fn foreign_keys(dump: &Path) -> Result<Vec<ForeignKey>, TocError> {
    let args: Vec<OsString> = [
        "--verbose",
        "--section=post-data",
        "--no-owner",
        "--no-privileges",
        "--file=-",
    ]
    .map(OsString::from)
    .to_vec();
    let sql = pg_restore_stdout(dump, &args, "--section=post-data --file=-").await?;
    Ok(parse_foreign_keys(&sql))
}

/// The table each foreign key references: `FK CONSTRAINT` dump id to `(schema, table)`.
pub async fn foreign_key_targets(dump: &Path) -> Result<HashMap<u32, (String, String)>, TocError> {
    Ok(foreign_keys(dump)
        .await?
        .into_iter()
        .filter_map(|fk| Some((fk.id?, (fk.ref_schema, fk.ref_table))))
        .collect())
}

/// Reads pg_dump's form of a foreign key, under its `-- TOC entry N (...)` header:
/// `ALTER TABLE [ONLY] public."T"\n    ADD CONSTRAINT "c" FOREIGN KEY (a) REFERENCES public."U"(id);`
fn parse_foreign_keys(sql: &str) -> Vec<ForeignKey> {
    let mut found = Vec::new();
    let mut id: Option<u32> = None;
    let mut table: Option<(String, String)> = None;
    for line in sql.lines() {
        if let Some(rest) = line.strip_prefix("-- TOC entry ") {
            id = rest.split(' ').next().and_then(|n| n.parse().ok());
            continue;
        }
        if let Some(rest) = line.strip_prefix("ALTER TABLE ") {
            table = parse_qualified(rest.strip_prefix("ONLY ").unwrap_or(rest));
            continue;
        }
        // The constraint is on the line right after its `ALTER TABLE`.
        let Some((schema, name)) = table.take() else {
            continue;
        };
        if !line.trim_start().starts_with("ADD CONSTRAINT ") || !line.contains(" FOREIGN KEY (") {
            continue;
        }
        // The last one: a quoted column name could itself hold `) REFERENCES `.
        let Some(pos) = line.rfind(") REFERENCES ") else {
            continue;
        };
        if let Some((ref_schema, ref_table)) = parse_qualified(&line[pos + ") REFERENCES ".len()..])
        {
            found.push(ForeignKey {
                id: id.take(),
                schema,
                table: name,
                ref_schema,
                ref_table,
            });
        }
    }
    found
}

/// `schema.name`, each an SQL identifier, quoted or not.
fn parse_qualified(s: &str) -> Option<(String, String)> {
    let (schema, rest) = parse_ident(s)?;
    let (name, _) = parse_ident(rest.strip_prefix('.')?)?;
    Some((schema, name))
}

/// One SQL identifier at the start of `s`: `"quoted ""x"""` (kept as written) or an
/// unquoted one (as pg_dump prints them: already lower case).
pub fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(mut rest) = s.strip_prefix('"') {
        let mut out = String::new();
        loop {
            let end = rest.find('"')?;
            out.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(r) => {
                    out.push('"');
                    rest = r;
                }
                None => return Some((out, rest)),
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_string(), &s[end..]))
}

/// Parses `EXCLUDE_TABLE_DATA`: comma-separated table names, exact (case kept, no folding),
/// each bare (`knowledge-elements`, `Answers`) or double-quoted (`"a,b"`, `"we""ird"`), with
/// an optional `public.` prefix. Returns the names, or what is wrong.
pub fn parse_table_list(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = value.trim_start();
    while !rest.is_empty() {
        let (name, after) = if rest.starts_with('"') {
            let (first, after) =
                parse_ident(rest).ok_or_else(|| format!("unterminated quoted name at `{rest}`"))?;
            // `"public"."t"` or `"public".t`
            match after.strip_prefix('.') {
                Some(a) if first == "public" => {
                    parse_name_part(a).ok_or_else(|| format!("no table name after `{first}.`"))?
                }
                _ => (first, after),
            }
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let bare = rest[..end].trim();
            let bare = bare.strip_prefix("public.").unwrap_or(bare);
            (bare.to_string(), &rest[end..])
        };
        let after = after.trim_start();
        let after = match after.strip_prefix(',') {
            Some(a) => a,
            None if after.is_empty() => after,
            None => return Err(format!("expected a comma after `{name}`, found `{after}`")),
        };
        if name.is_empty() {
            return Err("an empty name (two commas in a row, or a trailing comma)".into());
        }
        if !names.contains(&name) {
            names.push(name);
        }
        rest = after.trim_start();
    }
    Ok(names)
}

fn parse_name_part(s: &str) -> Option<(String, &str)> {
    if s.starts_with('"') {
        return parse_ident(s);
    }
    let end = s.find(',').unwrap_or(s.len());
    let name = s[..end].trim();
    (!name.is_empty()).then(|| (name.to_string(), &s[end..]))
}

/// What leaving out the rows of some tables means for one dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusion {
    /// Dump ids to comment out of the list.
    pub skip: HashSet<u32>,
    /// Names that matched a `TABLE DATA` entry of schema public, or a table of schema public
    /// whose rows the dump does not hold (`pg_dump --exclude-table-data`, as a live source's
    /// dump is taken).
    pub excluded: Vec<String>,
    /// Names that matched nothing (a typo, or a table dropped in production).
    pub unmatched: Vec<String>,
    /// Foreign keys left out because they reference an excluded table, whose rows are
    /// missing: `(table, constraint, referenced table)`.
    pub dropped_foreign_keys: Vec<(String, String, String)>,
}

/// Which entries to leave out so that `names` keep their schema but not their rows.
///
/// A foreign key of another table that references an excluded one cannot be restored (its
/// rows point at rows that are not there, and `pg_restore --exit-on-error` would fail the
/// run): it is left out too, and reported.
pub fn plan_exclusion(
    toc: &Toc,
    names: &[String],
    fk_targets: &HashMap<u32, (String, String)>,
) -> Exclusion {
    let mut plan = Exclusion::default();
    for name in names {
        match toc.table_data("public", name) {
            Some(e) => {
                plan.skip.insert(e.id);
                plan.excluded.push(name.clone());
            }
            None if toc.has_table("public", name) => plan.excluded.push(name.clone()),
            None => plan.unmatched.push(name.clone()),
        }
    }
    for e in toc.entries() {
        if e.desc != "FK CONSTRAINT" || e.schema != "public" {
            continue;
        }
        let Some((schema, referenced)) = fk_targets.get(&e.id) else {
            continue;
        };
        // A table's own foreign keys stay: it is empty, so they hold.
        if schema == "public"
            && plan.excluded.contains(referenced)
            && e.table.as_deref() != Some(referenced.as_str())
        {
            plan.skip.insert(e.id);
            plan.dropped_foreign_keys.push((
                e.table.clone().unwrap_or_default(),
                e.name.clone(),
                referenced.clone(),
            ));
        }
    }
    plan
}

#[cfg(test)]
mod tests;
