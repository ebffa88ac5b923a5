//! `FK_MODE`: how the dump's foreign keys reach the target.
//!
//! Validating foreign keys was the largest single cost of Pix's nightly restore (about 8 h of
//! the 8 h 51, summed over 4 jobs): `ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY` scans the
//! whole referencing table and probes the referenced one for every row. The source database
//! already enforced those keys on every row it holds, and the dump is a consistent snapshot of
//! it, so the scan can only confirm what is known.
//!
//! - `trust` (the default): the foreign keys are left out of `pg_restore` (commented out of its
//!   `--use-list`) and added after it, `NOT VALID`: enforced for every row written from then
//!   on, no scan now. `pg_constraint.convalidated` is false for them. A foreign key on a
//!   partitioned table cannot be `NOT VALID` before PostgreSQL 18; it is added validated.
//! - `validate`: `pg_restore` creates them as the source has them (validated, a full scan).
//! - `skip`: not created at all (what Pix's `RESTORE_FK_CONSTRAINTS=false` did): no scan, no
//!   enforcement; for a replica nobody writes to.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::str::FromStr;

use crate::dump::toc::{Toc, TocError, pg_restore_stdout};
use crate::error::StepError;
use crate::replica::PgEndpoint;

/// `FK_MODE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FkMode {
    #[default]
    Trust,
    Validate,
    Skip,
}

impl FkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FkMode::Trust => "trust",
            FkMode::Validate => "validate",
            FkMode::Skip => "skip",
        }
    }
}

impl FromStr for FkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FkMode, String> {
        match s.trim() {
            "trust" => Ok(FkMode::Trust),
            "validate" => Ok(FkMode::Validate),
            "skip" => Ok(FkMode::Skip),
            _ => Err(
                "expected trust (add foreign keys NOT VALID: enforced for new rows, no scan), \
                 validate (as pg_restore does: a full scan) or skip (no foreign keys)"
                    .into(),
            ),
        }
    }
}

/// What went wrong adding the foreign keys.
#[derive(Debug, thiserror::Error)]
pub enum FkError {
    #[error(transparent)]
    Toc(#[from] TocError),
    #[error(
        "adding the foreign keys NOT VALID on {target} failed: {detail}; the run goes back to Dropping and retries (set FK_MODE=validate to let pg_restore create them instead)"
    )]
    Add {
        target: String,
        detail: String,
        transient: bool,
    },
}

impl crate::error::Classify for FkError {
    fn kind(&self) -> crate::error::FailureKind {
        match self {
            // A lost connection or a lock timeout is worth a new attempt (from Dropping); an
            // error in the keys themselves would come back at every attempt.
            FkError::Add {
                transient: true, ..
            } => crate::error::FailureKind::Transient,
            _ => crate::error::FailureKind::Permanent,
        }
    }
}

/// The foreign keys of schema public in `toc`.
pub fn foreign_key_ids(toc: &Toc) -> HashSet<u32> {
    toc.entries()
        .filter(|e| e.desc == "FK CONSTRAINT")
        .map(|e| e.id)
        .collect()
}

/// The foreign keys `pg_restore` must leave out under `mode` (those already in `skip` stay
/// out and are not added later either). Under `trust`, writes `fk_list`: a `--use-list`
/// holding only the deferred keys, for [`add_not_valid`]; under the other modes removes it.
pub fn defer(
    toc: &Toc,
    mode: FkMode,
    skip: &HashSet<u32>,
    fk_list: &Path,
) -> Result<HashSet<u32>, FkError> {
    let deferred: HashSet<u32> = match mode {
        FkMode::Validate => HashSet::new(),
        FkMode::Trust | FkMode::Skip => foreign_key_ids(toc)
            .into_iter()
            .filter(|id| !skip.contains(id))
            .collect(),
    };
    if mode == FkMode::Trust {
        let others: HashSet<u32> = toc
            .entries()
            .map(|e| e.id)
            .filter(|id| !deferred.contains(id))
            .collect();
        toc.write_list(fk_list, &others)?;
    } else {
        let _ = std::fs::remove_file(fk_list);
    }
    Ok(deferred)
}

/// After the restore, under `trust`: adds the keys of `fk_list` (written by [`defer`]) with
/// `NOT VALID`. Returns (added NOT VALID, added validated because their table is
/// partitioned).
pub async fn add_not_valid(
    target: &PgEndpoint,
    dump: &Path,
    fk_list: &Path,
    record: Option<&str>,
    rewriter: Option<std::sync::Arc<crate::dump::rewrite::Rewriter>>,
) -> Result<(usize, usize), StepError> {
    if !fk_list.exists() {
        return Ok((0, 0));
    }
    let sql = foreign_key_sql(dump, fk_list).await?;
    let (mut sql, not_valid, validated) = make_not_valid(&sql);
    // The record that the keys are in commits with them: a resumed run adds them once.
    if let Some(record) = record {
        sql.push_str(record);
        sql.push_str(";\n");
    }
    if not_valid + validated == 0 {
        return Ok((0, 0));
    }
    // The statements pg_restore prints, header included (search_path = '', so every name is
    // qualified as in the dump), in one transaction: all keys or none.
    let applier = crate::replica::apply::Applier::new(target, dump, 1)
        .await?
        .with_rewriter(rewriter);
    applier
        .run_sql("the foreign keys to add NOT VALID", &sql)
        .await
        .map_err(|e| FkError::Add {
            target: target.describe(),
            transient: e.is_transient(),
            detail: e.to_string(),
        })?;
    tracing::info!(
        target = %target.describe(),
        not_valid,
        validated,
        "foreign keys added NOT VALID (FK_MODE=trust)"
    );
    Ok((not_valid, validated))
}

/// The SQL `pg_restore` would run for the entries of `list`.
async fn foreign_key_sql(dump: &Path, list: &Path) -> Result<String, FkError> {
    let mut use_list = OsString::from("--use-list=");
    use_list.push(list);
    let mut args: Vec<OsString> = std::iter::once("--section=post-data")
        .chain(crate::replica::apply::stream::TRANSLATE)
        .map(OsString::from)
        .collect();
    args.push(use_list);
    Ok(pg_restore_stdout(
        dump,
        &args,
        "--section=post-data --use-list (the foreign keys to add NOT VALID)",
    )
    .await?)
}

/// Adds `NOT VALID` to each foreign key of pg_dump's form
/// `ALTER TABLE ONLY public.t\n    ADD CONSTRAINT c FOREIGN KEY (a) REFERENCES public.u(id);`.
/// pg_dump writes `ALTER TABLE` without `ONLY` for a partitioned table, whose keys PostgreSQL
/// before 18 refuses to add `NOT VALID`: those stay as they are (validated). Returns the SQL
/// and the counts (made NOT VALID, left validated).
fn make_not_valid(sql: &str) -> (String, usize, usize) {
    let mut out = String::with_capacity(sql.len() + 64);
    let (mut not_valid, mut validated) = (0, 0);
    let mut previous = "";
    for line in sql.lines() {
        // psql meta-commands (`\restrict KEY` of recent pg_restore) are not SQL.
        if line.starts_with('\\') {
            continue;
        }
        let is_fk = line.starts_with("    ADD CONSTRAINT ")
            && line.contains(" FOREIGN KEY (")
            && line.ends_with(';');
        if is_fk && previous.starts_with("ALTER TABLE ONLY ") {
            out.push_str(&line[..line.len() - 1]);
            out.push_str(" NOT VALID;");
            not_valid += 1;
        } else {
            if is_fk {
                validated += 1;
            }
            out.push_str(line);
        }
        out.push('\n');
        previous = line;
    }
    (out, not_valid, validated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13 (Low 10): a deterministic SQL error re-adding the foreign keys is permanent
    /// (it would come back at every wipe-and-restore attempt); a lost session is transient.
    #[test]
    fn adding_the_keys_is_transient_only_when_the_sqlstate_says_so() {
        let add = |transient| FkError::Add {
            target: "u@h:5432/d".into(),
            detail: "ERROR 42P01: relation \"t\" does not exist".into(),
            transient,
        };
        assert_eq!(
            StepError::from(add(false)).kind(),
            crate::error::FailureKind::Permanent
        );
        assert_eq!(
            StepError::from(add(true)).kind(),
            crate::error::FailureKind::Transient
        );
    }

    #[test]
    fn parses_the_modes() {
        assert_eq!("trust".parse::<FkMode>(), Ok(FkMode::Trust));
        assert_eq!(" skip".parse::<FkMode>(), Ok(FkMode::Skip));
        assert_eq!("validate".parse::<FkMode>(), Ok(FkMode::Validate));
        assert!("false".parse::<FkMode>().unwrap_err().contains("trust"));
        assert_eq!(FkMode::default(), FkMode::Trust);
    }

    #[test]
    fn only_plain_tables_get_not_valid() {
        let sql = "SET search_path = '';\n\n\
            ALTER TABLE ONLY public.answers\n    ADD CONSTRAINT answers_a_fkey FOREIGN KEY (a) REFERENCES public.\"A; b\"(id) ON DELETE CASCADE DEFERRABLE;\n\n\
            ALTER TABLE public.\"Events\"\n    ADD CONSTRAINT \"Events_u_fkey\" FOREIGN KEY (u) REFERENCES public.users(id);\n\
            \\unrestrict abc\n";
        let (out, nv, v) = make_not_valid(sql);
        assert_eq!((nv, v), (1, 1));
        assert!(
            out.contains(
                "REFERENCES public.\"A; b\"(id) ON DELETE CASCADE DEFERRABLE NOT VALID;\n"
            )
        );
        assert!(out.contains("REFERENCES public.users(id);\n"));
        assert!(out.starts_with("SET search_path = '';\n"));
        assert!(!out.contains("unrestrict"));
    }

    #[test]
    fn defers_the_foreign_keys_not_already_skipped() {
        let toc = Toc::parse(
            "215; 1259 16386 TABLE public answers postgres\n\
             3377; 0 16386 TABLE DATA public answers postgres\n\
             3226; 2606 16393 CONSTRAINT public answers answers_pkey postgres\n\
             3232; 2606 16401 FK CONSTRAINT public answers answers_a_fkey postgres\n\
             3233; 2606 16421 FK CONSTRAINT public answers answers_b_fkey postgres\n\
             3234; 2606 16422 FK CONSTRAINT other x x_fkey postgres\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("fk.list");
        let skip = HashSet::from([3233]);
        assert!(
            defer(&toc, FkMode::Validate, &skip, &list)
                .unwrap()
                .is_empty()
        );
        assert!(!list.exists());
        // Every schema's foreign keys: other schemas are restored too.
        assert_eq!(
            defer(&toc, FkMode::Skip, &skip, &list).unwrap(),
            HashSet::from([3232, 3234])
        );
        assert!(!list.exists());
        assert_eq!(
            defer(&toc, FkMode::Trust, &skip, &list).unwrap(),
            HashSet::from([3232, 3234])
        );
        let text = std::fs::read_to_string(&list).unwrap();
        let active: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
        assert_eq!(
            active,
            vec![
                "3232; 2606 16401 FK CONSTRAINT public answers answers_a_fkey postgres",
                "3234; 2606 16422 FK CONSTRAINT other x x_fkey postgres"
            ]
        );
    }
}
