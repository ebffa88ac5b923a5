//! One session of the restore on the target: its settings, its statements (a `SET` the server
//! does not know is left out, said once), its `COPY`, each entry optionally committed with its
//! record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::Client;

use super::ApplyError;
use super::script::{EntryHeader, ScriptError};
use super::stream::{Item, ScriptStream};
use crate::dump::rewrite::Rewriter;
use crate::masking::transform::Rows;
use crate::replica::sqlstate::classify;
use crate::replica::swap::large_objects;
use crate::replica::unlogged::CreatedUnlogged;
use crate::replica::{PgEndpoint, RESTORE_APPLICATION_NAME};

/// What a session of the restore needs to open, owned (sessions open in spawned tasks too).
#[derive(Clone)]
pub struct SessionSpec {
    pub(super) target: PgEndpoint,
    pub(super) known: Arc<HashSet<String>>,
    pub(super) said: Arc<Mutex<HashSet<String>>>,
    /// Swap mode: every statement pointed at the shadow schemas.
    pub(super) rewriter: Option<Arc<Rewriter>>,
    /// `USE_UNLOGGED_TABLES`: the tables the schema creates `UNLOGGED` in the first place.
    pub(super) unlogged: Option<Arc<CreatedUnlogged>>,
}

/// The name of the setting `stmt` sets, if it is a plain `SET name = value` (or `TO`):
/// what pg_restore writes at the start of its script. Forms whose second word is not a
/// setting's name (`SET TIME ZONE`, `SET ROLE`, `SET SESSION AUTHORIZATION`, ...) give `None`.
fn set_name(stmt: &str) -> Option<String> {
    let s = stmt.trim_start();
    if !s.get(..4)?.eq_ignore_ascii_case("SET ") {
        return None;
    }
    let rest = s[4..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let name = rest[..end].to_ascii_lowercase();
    let after = rest[end..].trim_start();
    let assigns =
        after.starts_with('=') || after.len() >= 3 && after[..3].eq_ignore_ascii_case("TO ");
    const NOT_SETTINGS: &[&str] = &[
        "time",
        "role",
        "session",
        "local",
        "transaction",
        "constraints",
        "xml",
    ];
    (assigns && !name.is_empty() && !NOT_SETTINGS.contains(&name.as_str())).then_some(name)
}

/// The text of a server error without its `DETAIL`, which can quote row values (`Key
/// (email)=(...) already exists`): what the replicator prints, stores and notifies must not
/// carry production data.
pub(super) fn server_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

/// One session of the restore on the target, named [`RESTORE_APPLICATION_NAME`] so that
/// the sessions a killed run left behind can be found and ended before the next wipe.
pub(super) struct Session {
    client: Client,
    target: String,
    known: Arc<HashSet<String>>,
    said: Arc<Mutex<HashSet<String>>>,
    /// The session settings (the script's preamble) this session last ran.
    preamble: Vec<String>,
    rewriter: Option<Arc<Rewriter>>,
    unlogged: Option<Arc<CreatedUnlogged>>,
    /// Swap mode: the large object this session's script opened last (`0`: none), which the
    /// writes after it name only as descriptor 0.
    open_lo: AtomicU32,
}

impl Session {
    pub(super) async fn open(applier: &super::Applier) -> Result<Session, ApplyError> {
        Session::open_spec(&applier.spec()).await
    }

    pub(super) async fn open_spec(spec: &SessionSpec) -> Result<Session, ApplyError> {
        let client = spec.target.connect_as(RESTORE_APPLICATION_NAME).await?;
        // Its commits do not wait for their own disk flush; each step ends with one that does
        // (`replica/durable.rs`).
        client
            .batch_execute(crate::replica::durable::ASYNC_COMMIT_SQL)
            .await
            .map_err(|e| spec.target.query_error("setting synchronous_commit", e))?;
        Ok(Session {
            client,
            target: spec.target.describe(),
            known: spec.known.clone(),
            said: spec.said.clone(),
            preamble: Vec::new(),
            rewriter: spec.rewriter.clone(),
            unlogged: spec.unlogged.clone(),
            open_lo: AtomicU32::new(0),
        })
    }

    pub(super) fn error(&self, entry: &str, e: &tokio_postgres::Error) -> ApplyError {
        let (transient, hint) = classify(e);
        ApplyError::Sql {
            target: self.target.clone(),
            entry: entry.to_string(),
            detail: server_error_text(e),
            hint,
            transient,
        }
    }

    /// Runs the script's session settings, unless this session already has them.
    pub(super) async fn prepare(&mut self, preamble: &[String]) -> Result<(), ApplyError> {
        if self.preamble == preamble {
            return Ok(());
        }
        for stmt in preamble {
            self.execute("the session settings", stmt).await?;
        }
        self.preamble = preamble.to_vec();
        Ok(())
    }

    /// Points this session's statements at shadow schemas from now on (the rehearsal, once
    /// the extensions are in).
    pub(super) fn set_rewriter(&mut self, rewriter: Option<Arc<Rewriter>>) {
        self.rewriter = rewriter;
    }

    /// `(schema, name)` of the extensions' members in `schemas` (what a swap does not point at
    /// the shadows).
    pub(super) async fn extension_members(
        &self,
        schemas: &[String],
    ) -> Result<HashSet<(String, String)>, ApplyError> {
        let what = "the extensions' members";
        Ok(self
            .client
            .query(crate::replica::swap::EXTENSION_MEMBERS_SQL, &[&schemas])
            .await
            .map_err(|e| self.error(what, &e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// `stmt` as it is sent: a table created `UNLOGGED` where so decided, pointed at the
    /// shadow schemas in swap mode (the dump's names are what both read).
    fn sent<'a>(&self, stmt: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let unlogged = self.unlogged.as_ref().and_then(|u| u.create_unlogged(stmt));
        match (unlogged, &self.rewriter) {
            (None, Some(r)) => r.rewrite(stmt),
            (None, None) => Cow::Borrowed(stmt),
            (Some(s), Some(r)) => Cow::Owned(r.rewrite(&s).into_owned()),
            (Some(s), None) => Cow::Owned(s),
        }
    }

    /// Is `stmt` a `SET` of a setting the server does not know (said once, then left out)?
    fn left_out(&self, stmt: &str) -> bool {
        let Some(name) = set_name(stmt).filter(|n| !n.contains('.') && !self.known.contains(n))
        else {
            return false;
        };
        if self.said.lock().expect("said lock").insert(name.clone()) {
            tracing::info!(
                setting = %name,
                "left out `{}`: the target's server does not know the setting {name} (a newer pg_restore writes it)",
                stmt.trim()
            );
        }
        true
    }

    /// `stmts` as one script, as [`Session::execute`] would send each of them: pointed at the
    /// shadow schemas, `SET`s the server does not know left out, each ended by its `;`. `None`
    /// in swap mode when one of them is about a large object: those are kept for the switch
    /// one by one ([`Session::execute`]), never sent.
    pub(super) fn joined<'a>(
        &self,
        stmts: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<String> {
        if self.rewriter.is_some()
            && stmts
                .clone()
                .any(|s| large_objects::staged(s, Some(u32::MAX)).is_some())
        {
            return None;
        }
        let mut out = String::new();
        for stmt in stmts.filter(|s| !self.left_out(s)) {
            out.push_str(&self.sent(stmt));
            // A statement that does not end with `;` (or ends with a comment) is ended here.
            if !stmt.trim_end().ends_with(';') {
                out.push_str("\n;");
            }
            out.push('\n');
        }
        Some(out)
    }

    /// Sends `sql` as it is (already [`Session::joined`]), in one round trip.
    pub(super) async fn execute_all(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }

    /// Sends one statement, unless it sets a setting the server does not know.
    pub(super) async fn execute(&self, entry: &str, stmt: &str) -> Result<(), ApplyError> {
        if self.left_out(stmt) {
            return Ok(());
        }
        if self.rewriter.is_some() {
            // Swap mode: a large object's statement is kept for the switch, not run (see
            // `replica::swap::large_objects`).
            let open = Some(self.open_lo.load(Ordering::Relaxed)).filter(|o| *o != 0);
            if let Some(k) = large_objects::staged(stmt, open) {
                if k.opens {
                    self.open_lo.store(k.loid, Ordering::Relaxed);
                }
                return self
                    .client
                    .execute(large_objects::STAGE_SQL, &[&k.phase, &k.loid, &stmt])
                    .await
                    .map(|_| ())
                    .map_err(|e| self.error(entry, &e));
            }
        }
        self.client
            .batch_execute(&self.sent(stmt))
            .await
            .map_err(|e| self.error(entry, &e))
    }

    /// Sends one statement; an error of SQLSTATE `tolerated` is returned as `Ok(false)` (the
    /// rehearsal's foreign keys on sample rows), any other as the error.
    pub(super) async fn execute_tolerating(
        &self,
        entry: &str,
        stmt: &str,
        tolerated: &str,
    ) -> Result<bool, ApplyError> {
        match self.client.batch_execute(&self.sent(stmt)).await {
            Ok(()) => Ok(true),
            Err(e) if e.code().is_some_and(|c| c.code() == tolerated) => Ok(false),
            Err(e) => Err(self.error(entry, &e)),
        }
    }

    /// Runs a `COPY ... FROM stdin` with the rows of `chunk` (whole lines). Returns the rows.
    pub(super) async fn copy_rows(
        &self,
        entry: &str,
        stmt: &str,
        chunk: Bytes,
    ) -> Result<u64, ApplyError> {
        let sink = self
            .client
            .copy_in::<_, Bytes>(&*self.sent(stmt))
            .await
            .map_err(|e| self.error(entry, &e))?;
        let mut sink = Box::pin(sink);
        if !chunk.is_empty() {
            sink.send(chunk).await.map_err(|e| self.error(entry, &e))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| self.error(entry, &e))
    }

    /// Runs a `COPY ... FROM stdin` with the rows that follow it in `stream`, through
    /// `rows` (masking, filters) if given: the rows' real values never reach the target.
    /// Returns the rows and bytes sent.
    pub(super) async fn copy(
        &self,
        entry: &str,
        stmt: &str,
        stream: &mut ScriptStream,
        mut rows: Option<Rows<'_>>,
    ) -> Result<(u64, u64), ApplyError> {
        let sink = self
            .client
            .copy_in::<_, Bytes>(&*self.sent(stmt))
            .await
            .map_err(|e| self.error(entry, &e))?;
        let mut sink = Box::pin(sink);
        let mut bytes = 0u64;
        loop {
            match stream.next().await? {
                Some(Item::Rows(chunk)) => {
                    let chunk = through(&mut rows, chunk);
                    if chunk.is_empty() {
                        continue;
                    }
                    bytes += chunk.len() as u64;
                    sink.send(chunk).await.map_err(|e| self.error(entry, &e))?;
                }
                Some(Item::RowsEnd) => break,
                Some(Item::Piece(_)) | None => {
                    return Err(ScriptError::Unterminated { line: 0 }.into());
                }
            }
        }
        let n = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| self.error(entry, &e))?;
        if let Some(t) = rows {
            t.finish();
        }
        Ok((n, bytes))
    }

    /// The statements of one entry, in order; with `record`, in one transaction with the
    /// record that says the entry is done.
    pub(super) async fn run_entry_recorded(
        &self,
        header: &EntryHeader,
        stmts: &[String],
        record: Option<(&crate::replica::records::Recorder, u32)>,
    ) -> Result<(), ApplyError> {
        let what = header.describe();
        let Some((recorder, id)) = record.filter(|(_, id)| *id > 0) else {
            for stmt in stmts {
                self.execute(&what, stmt).await?;
            }
            return Ok(());
        };
        // The entry's statements and its record in one transaction and one round trip (an
        // index of a small table costs little more than its round trips): an error names
        // this entry all the same, and nothing of it commits.
        let record = recorder.insert_sql(id as i32, &header.kind, &qualified(header), 0, 0);
        let all = stmts.iter().map(String::as_str).chain([record.as_str()]);
        if let Some(body) = self.joined(all.clone()) {
            return self
                .client
                .batch_execute(&format!("BEGIN;\n{body}COMMIT"))
                .await
                .map_err(|e| self.error(&what, &e));
        }
        self.execute(&what, "BEGIN").await?;
        for stmt in all {
            self.execute(&what, stmt).await?;
        }
        self.execute(&what, "COMMIT").await
    }
}

/// `chunk` as it goes to the target: through `rows` (`REPLICA_RULES`) when given.
fn through(rows: &mut Option<Rows<'_>>, chunk: Bytes) -> Bytes {
    match rows.as_mut() {
        Some(t) => {
            let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 4);
            t.apply(&chunk, &mut out);
            Bytes::from(out)
        }
        None => chunk,
    }
}

/// `schema.name` of an entry (its name alone outside schemas).
pub(super) fn qualified(h: &EntryHeader) -> String {
    if h.schema == "-" || h.schema.is_empty() {
        h.name.clone()
    } else {
        format!("{}.{}", h.schema, h.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_which_statements_set_a_setting() {
        assert_eq!(
            set_name("SET transaction_timeout = 0;").as_deref(),
            Some("transaction_timeout")
        );
        assert_eq!(
            set_name("set Statement_Timeout TO 0;").as_deref(),
            Some("statement_timeout")
        );
        assert_eq!(
            set_name("SET default_table_access_method = heap;").as_deref(),
            Some("default_table_access_method")
        );
        assert_eq!(
            set_name("SET my.custom = 'x';").as_deref(),
            Some("my.custom")
        );
        assert_eq!(set_name("SET TIME ZONE 'UTC';"), None);
        assert_eq!(set_name("SET ROLE postgres;"), None);
        assert_eq!(set_name("SET SESSION AUTHORIZATION x;"), None);
        assert_eq!(
            set_name("SELECT pg_catalog.set_config('search_path', '', false);"),
            None
        );
        assert_eq!(set_name("SETOF"), None);
    }
}
