//! Before the wipe: the role can restore into the target, and this `pg_restore` reads the dump.

use std::path::Path;

use super::sqlstate::PostgresError;
use super::url::{CONTROL_APPLICATION_NAME, PgEndpoint};
use crate::dump::toc::{Toc, TocError, TocSection};
use crate::error::StepError;
use crate::machine::Section;

/// What [`check_target`] learnt about the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// `server_version_num`, e.g. `150018`.
    pub server_version_num: i32,
    pub current_user: String,
    pub database: String,
    /// Whether the role owns the database (it should: Scalingo's app role does).
    pub owns_database: bool,
    /// What the database holds that the wipe would remove (relations this role owns), for
    /// the rule of the first wipe.
    pub contents: crate::machine::TargetContents,
}

/// The target server's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub text: String,
    /// `server_version_num`, e.g. `150018`.
    pub num: i32,
}

/// The version of `target`'s server (what `check` compares the dump's with).
pub async fn server_version(target: &PgEndpoint) -> Result<ServerVersion, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    version_on(&client, target).await
}

/// The one query of a server's version.
async fn version_on(
    client: &tokio_postgres::Client,
    target: &PgEndpoint,
) -> Result<ServerVersion, StepError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(|e| target.query_error("reading the server's version", e))?;
    Ok(ServerVersion {
        text: row.get(0),
        num: row.get(1),
    })
}

/// What the role may create in the target, by the one query of its privileges: `run`'s
/// pre-wipe check ([`super::preflight`]) and `check`'s role line ask it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    pub role: String,
    /// `CREATE` on the database: new schemas.
    pub create_schemas: bool,
    /// Of the schemas asked about, whether the role may create in each (`None`: no such
    /// schema), in the order asked.
    pub create_in: Vec<(String, Option<bool>)>,
}

/// [`Privileges`] of the role on `client`'s database, for the schemas `schemas`.
pub async fn privileges(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> Result<Privileges, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    has_database_privilege(current_database(), 'CREATE'),
                    ARRAY(SELECT (SELECT has_schema_privilege(n.oid, 'CREATE')
                                    FROM pg_namespace n WHERE n.nspname = w.name)
                            FROM unnest($1::text[]) WITH ORDINALITY AS w(name, i)
                           ORDER BY w.i)",
            &[&schemas],
        )
        .await?;
    let create_in: Vec<Option<bool>> = row.get(2);
    Ok(Privileges {
        role: row.get(0),
        create_schemas: row.get(1),
        create_in: schemas.iter().cloned().zip(create_in).collect(),
    })
}

/// Connects and checks that the target can be wiped and restored by this role.
pub async fn check_target(target: &PgEndpoint) -> Result<TargetInfo, StepError> {
    let client = target.connect_as(CONTROL_APPLICATION_NAME).await?;
    let version = version_on(&client, target).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, r.rolsuper,
                    d.datdba = r.oid
               FROM pg_roles r, pg_database d
              WHERE r.rolname = current_user AND d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| target.query_error("checking the role", e))?;
    if row.get::<_, bool>(2) {
        return Err(PostgresError::SuperuserTarget {
            target: target.describe(),
        }
        .into());
    }
    let contents = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relowner = current_user::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                        AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'replicator')
                        AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%')::int8,
                    to_regclass('replicator.runs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| target.query_error("looking at what the target holds", e))?;
    let database: String = row.get(1);
    let mut replicator_ran = contents.get::<_, bool>(1);
    if replicator_ran {
        replicator_ran = client
            .query_one("SELECT EXISTS (SELECT FROM replicator.runs)", &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
    }
    let info = TargetInfo {
        server_version: version.text,
        server_version_num: version.num,
        current_user: row.get(0),
        database: database.clone(),
        owns_database: row.get(3),
        contents: crate::machine::TargetContents {
            database,
            objects: contents.get::<_, i64>(0).max(0) as u64,
            replicator_ran,
        },
    };
    if !info.owns_database {
        tracing::warn!(target = %target.describe(), "the role does not own the target database; the restore may lack privileges");
    }
    Ok(info)
}

/// Counts of a dump's table of contents, from `pg_restore --list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpInfo {
    /// `Dumped from database version` (the production server).
    pub dumped_from: Option<String>,
    /// `Dumped by pg_dump version`.
    pub dumped_by: Option<String>,
    /// Every TOC entry listed.
    pub entries: u64,
    /// Entries that a restore of schema `public` runs, by section (comments and privileges
    /// excluded, as the restore skips them).
    pub pre_data: u64,
    pub data: u64,
    pub post_data: u64,
    /// `TABLE` entries (schema public).
    pub tables: u64,
    /// `TABLE DATA` entries (schema public).
    pub table_data: u64,
    pub indexes: u64,
    /// `CONSTRAINT` entries (primary keys, unique, exclusion, separately dumped checks).
    pub constraints: u64,
    pub fk_constraints: u64,
}

impl DumpInfo {
    /// Counts `toc`: a dump's table of contents, or a `--use-list` file (whose commented-out
    /// entries are not counted).
    pub fn from_toc(toc: &Toc) -> DumpInfo {
        let mut info = DumpInfo {
            dumped_from: toc.dumped_from().map(str::to_string),
            dumped_by: toc.dumped_by().map(str::to_string),
            entries: toc.entries().count() as u64,
            ..DumpInfo::default()
        };
        // `--schema public` restores only entries whose schema is public; the schema column is
        // `-` for objects outside any schema.
        for e in toc.entries().filter(|e| e.schema == "public") {
            match e.section() {
                TocSection::None => {}
                TocSection::PreData => info.pre_data += 1,
                TocSection::Data => info.data += 1,
                TocSection::PostData => info.post_data += 1,
            }
            match e.desc.as_str() {
                "TABLE" => info.tables += 1,
                "TABLE DATA" => info.table_data += 1,
                "INDEX" => info.indexes += 1,
                "CONSTRAINT" | "CHECK CONSTRAINT" => info.constraints += 1,
                "FK CONSTRAINT" => info.fk_constraints += 1,
                _ => {}
            }
        }
        info
    }

    /// The number of items [`restore_section`] runs for `section`: its progress total.
    pub fn items(&self, section: Section) -> u64 {
        match section {
            Section::PreData => self.pre_data,
            Section::DataAndPostData => self.data + self.post_data,
        }
    }
}

impl std::fmt::Display for DumpInfo {
    /// One readable line: where the dump comes from and what it holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dumped from PostgreSQL {} by pg_dump {}; {} entries, of schema public: {} tables, {} with rows, {} indexes, {} constraints, {} foreign keys (restore items: {} pre-data, {} data, {} post-data)",
            self.dumped_from.as_deref().unwrap_or("?"),
            self.dumped_by.as_deref().unwrap_or("?"),
            self.entries,
            self.tables,
            self.table_data,
            self.indexes,
            self.constraints,
            self.fk_constraints,
            self.pre_data,
            self.data,
            self.post_data
        )
    }
}

/// `pg_restore --version`, e.g. `pg_restore (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub async fn pg_restore_version() -> Result<String, StepError> {
    tool_version("pg_restore").await
}

/// `pg_dump --version` (`pg_dump (PostgreSQL) 17.2`), for a live source: pg_dump refuses a
/// server of a newer major version than its own.
pub async fn pg_dump_version() -> Result<String, StepError> {
    tool_version("pg_dump").await
}

async fn tool_version(program: &str) -> Result<String, StepError> {
    let out = crate::secret::child_command(program)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PostgresError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(StepError::permanent(format!(
            "{program} --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads the dump's table of contents with `pg_restore --list`: proves the file is an archive
/// this `pg_restore` can read before anything on the target is dropped.
///
/// A file cut after its table of contents still lists; the download's length check and the
/// restore itself (a permanent "could not read from input file") catch that case.
pub async fn check_dump(dump: &Path) -> Result<DumpInfo, StepError> {
    Ok(check_dump_toc(dump, None).await?.1)
}

/// [`check_dump`], keeping the table of contents: read from `saved` when a step of this run
/// already read it, else from the dump (then saved there, see [`Toc::load_or_read`]).
pub async fn check_dump_toc(
    dump: &Path,
    saved: Option<&Path>,
) -> Result<(Toc, DumpInfo), StepError> {
    let read = match saved {
        Some(saved) => Toc::load_or_read(dump, saved).await,
        None => Toc::read(dump).await,
    };
    let toc = match read {
        Ok(toc) => toc,
        Err(e) => {
            // "pg_restore: error: unsupported version (1.16) in file header"
            if let TocError::Unreadable { stderr, .. } = &e
                && let Some(v) = stderr
                    .split("unsupported version (")
                    .nth(1)
                    .and_then(|r| r.split(')').next())
            {
                let local = pg_restore_version()
                    .await
                    .unwrap_or_else(|_| "unknown version".into());
                return Err(PostgresError::DumpTooNew {
                    path: dump.to_path_buf(),
                    archive_version: v.to_string(),
                    local,
                }
                .into());
            }
            return Err(dump_error(e));
        }
    };
    let info = DumpInfo::from_toc(&toc);
    if info.entries == 0 {
        return Err(PostgresError::DumpUnreadable {
            path: dump.to_path_buf(),
            status: "exit status: 0".into(),
            stderr: "its table of contents is empty".into(),
        }
        .into());
    }
    tracing::info!(dump = %dump.display(), "dump checked: {info}");
    Ok((toc, info))
}

/// A dump `pg_restore` cannot run on or read, in the words [`check_dump`] has always used.
pub(super) fn dump_error(e: TocError) -> StepError {
    match e {
        TocError::Spawn(source) => PostgresError::Spawn {
            program: "pg_restore".into(),
            source,
        }
        .into(),
        TocError::Unreadable {
            path,
            status,
            stderr,
            ..
        } => PostgresError::DumpUnreadable {
            path,
            status,
            stderr,
        }
        .into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_toc_list() {
        let list = ";\n;     Dumped from database version: 12.4\n;     Dumped by pg_dump version: 12.4\n;\n\
            213; 1259 16430 TABLE public answers postgres\n\
            212; 1259 16428 SEQUENCE public answers_id_seq postgres\n\
            3606; 0 0 SEQUENCE OWNED BY public answers_id_seq postgres\n\
            3095; 2604 16433 DEFAULT public answers id postgres\n\
            3530; 0 16430 TABLE DATA public answers postgres\n\
            3645; 0 0 SEQUENCE SET public answers_id_seq postgres\n\
            3213; 1259 17018 INDEX public answers_assessmentid_index postgres\n\
            3215; 2606 16438 CONSTRAINT public answers answers_pkey postgres\n\
            3347; 2606 17130 FK CONSTRAINT public answers answers_assessmentid_foreign postgres\n\
            3600; 0 0 COMMENT public TABLE answers postgres\n\
            2; 3079 16385 EXTENSION - pgcrypto \n\
            5; 0 0 COMMENT - EXTENSION pgcrypto \n";
        let i = DumpInfo::from_toc(&Toc::parse(list));
        assert_eq!(i.dumped_from.as_deref(), Some("12.4"));
        assert_eq!(i.entries, 12);
        assert_eq!((i.pre_data, i.data, i.post_data), (4, 2, 3));
        assert_eq!(
            (
                i.tables,
                i.table_data,
                i.indexes,
                i.constraints,
                i.fk_constraints
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(i.items(Section::DataAndPostData), 5);
    }
}
