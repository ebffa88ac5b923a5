//! The restore plan: one value, decided before the target is touched, that says what becomes of
//! every entry of the dump and every extension it names. The checks before the wipe build it,
//! the rehearsal tries it on the target, `check` prints it, and the restore executes it and
//! nothing else: no step selects entries again.
//!
//! It is pure data (`serde`), kept in the run's work directory (`plan.json`), so that a
//! resumed run restores exactly what the checks approved. Its format is frozen by a test
//! ([`FORMAT`]): a plan written by this version must load in the next.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::dump::toc::{Toc, TocEntry, TocSection};

/// The plan's format version; a plan of another version is decided again.
pub const FORMAT: u32 = 1;

/// What becomes of one entry of the dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// Sent to the target in this section.
    Restored { section: RestoreSection },
    /// Never sent; `why` is said in `check`, the logs and the run's summary.
    LeftOut { why: String },
    /// Not sent by the restore: added after the rows by the replicator itself
    /// (`FK_MODE=trust`: foreign keys added `NOT VALID`).
    Deferred { why: String },
}

/// The section an entry is restored in (comments and privileges follow their object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreSection {
    PreData,
    Data,
    PostData,
}

impl From<TocSection> for RestoreSection {
    fn from(s: TocSection) -> RestoreSection {
        match s {
            TocSection::Data => RestoreSection::Data,
            TocSection::PostData => RestoreSection::PostData,
            TocSection::PreData | TocSection::None => RestoreSection::PreData,
        }
    }
}

/// One entry of the dump with its fate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEntry {
    pub id: u32,
    pub kind: String,
    /// Schema-qualified where it has a schema.
    pub name: String,
    #[serde(flatten)]
    pub fate: Fate,
}

/// What the restore does about one extension the dump names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ExtensionAction {
    /// The target has it and keeps it (another role owns it, or the run does not drop it).
    Present,
    /// The restore creates it (the role may).
    Created,
    /// The target cannot have it and nothing restored uses it: never sent.
    LeftOut { why: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedExtension {
    pub name: String,
    #[serde(flatten)]
    pub action: ExtensionAction,
}

/// What the rehearsal on the target tried (see `replica::rehearsal`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rehearsed {
    /// The wipe (`DROP OWNED BY CURRENT_USER CASCADE`) was part of it.
    pub wipe: bool,
    /// Pre-data statements sent.
    pub pre_data: u64,
    /// Tables that got sample rows, and how many rows in all.
    pub tables: u64,
    pub rows: u64,
    /// Post-data statements sent.
    pub post_data: u64,
    /// What was not rehearsed, and why (empty: everything above was).
    pub not_rehearsed: Vec<String>,
    pub millis: u64,
}

/// How tonight's copy replaces yesterday's (`REFRESH_MODE`): the run record keeps it too.
pub use crate::machine::RefreshMode;

/// One schema a swap switches: its live name, the shadow tonight's copy is built in, and the
/// name yesterday's copy takes at the switch (dropped after it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchedSchema {
    pub live: String,
    pub shadow: String,
    pub old: String,
    /// Switched object by object instead of renamed: the live schema stays, because it holds
    /// what must stay (extensions whose members the role does not own, other roles' own
    /// objects) or is not the role's to rename; yesterday's objects of the role move out to
    /// `old` and tonight's move in from `shadow`, in the switch's one transaction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_objects: bool,
}

/// The refresh a run does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    pub mode: RefreshMode,
    /// The schemas switched (swap mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<SwitchedSchema>,
    /// Why a swap was not possible, when `REFRESH_MODE` was not set and the run wipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not_swap: Option<String>,
    /// Swap mode: the room it needs beside yesterday's copy, roughly: the dump's size on disk
    /// (its data compressed: the tables take more), and yesterday's `pg_database_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<(u64, u64)>,
}

/// A privilege the target's role granted to another role (or a default privilege of the role,
/// with `name` empty and `kind` the object type: `TABLES`, `SEQUENCES`...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `TABLE`, `SEQUENCE`, `SCHEMA`; for a default privilege, `TABLES`, `SEQUENCES`, ...
    pub kind: String,
    pub schema: Option<String>,
    pub name: String,
    pub grantee: String,
    /// `SELECT`, `INSERT, SELECT`...
    pub privileges: String,
    pub grantable: bool,
}

/// What readers were granted before the run: given again on tonight's objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readers {
    pub grants: Vec<Grant>,
    pub defaults: Vec<Grant>,
    /// Readers' views over the replica's tables, which go with yesterday's tables: kept here
    /// and in `replicator.kept_definitions`, and re-created on tonight's where the role may
    /// act as their owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<KeptView>,
}

/// A view (or materialized view) that depends on the replica's tables and is not the
/// restore's: an analyst's, or the role's own outside the restored schemas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptView {
    pub schema: String,
    pub name: String,
    /// `VIEW` or `MATERIALIZED VIEW`.
    pub kind: String,
    pub owner: String,
    /// Whether the replicator's role may act as the owner (a member of the owner's role): it
    /// re-creates the view then.
    pub recreated: bool,
    /// The table it reads, for the message (`public.actor`).
    pub reads: String,
    /// `CREATE VIEW schema.name AS ...`, names qualified.
    pub definition: String,
    /// `GRANT ...` and `COMMENT ON ...` statements that go with it.
    pub extras: Vec<String>,
    /// Views over views come after what they read.
    pub depth: i32,
}

impl KeptView {
    /// `view reports.top_actors (owned by analyst) reads public.actor`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}.{} (owned by {}) reads {}",
            self.kind.to_lowercase(),
            self.schema,
            self.name,
            self.owner,
            self.reads
        )
    }
}

impl Readers {
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.defaults.is_empty()
    }

    /// `metabase (SELECT on 42 tables, USAGE on 1 schema, default privileges)`, per role.
    pub fn describe(&self) -> String {
        self.per_role()
            .iter()
            .map(|r| format!("{} ({})", r.role, r.gets))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Each role and what it gets (`SELECT on 42 tables, default privileges`), by name.
    pub fn per_role(&self) -> Vec<crate::machine::ReaderKept> {
        let mut roles: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        for g in &self.grants {
            let what = format!("{} on {}", g.privileges, g.kind.to_lowercase());
            *roles
                .entry(&g.grantee)
                .or_default()
                .entry(what)
                .or_default() += 1;
        }
        let mut defaults: HashSet<&str> = HashSet::new();
        for d in &self.defaults {
            roles.entry(&d.grantee).or_default();
            defaults.insert(&d.grantee);
        }
        roles
            .iter()
            .map(|(role, what)| {
                let mut parts: Vec<String> = what
                    .iter()
                    .map(|(w, n)| {
                        let (privs, kind) = w.split_once(" on ").unwrap_or((w, ""));
                        format!("{privs} on {n} {kind}{}", if *n > 1 { "s" } else { "" })
                    })
                    .collect();
                if defaults.contains(role) {
                    parts.push("default privileges".into());
                }
                crate::machine::ReaderKept {
                    role: role.to_string(),
                    gets: parts.join(", "),
                }
            })
            .collect()
    }
}

/// The whole plan of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub format: u32,
    /// Every entry of the dump's table of contents, in its order.
    pub entries: Vec<PlannedEntry>,
    pub extensions: Vec<PlannedExtension>,
    /// The `PG_RESTORE_JOBS` the target's limits leave (at most the configured one).
    pub jobs: u32,
    /// What the rehearsal tried; `None` until it ran.
    #[serde(default)]
    pub rehearsed: Option<Rehearsed>,
    /// How tonight's copy replaces yesterday's.
    #[serde(default)]
    pub refresh: Refresh,
    /// What readers were granted, given again after the restore.
    #[serde(default)]
    pub readers: Readers,
}

impl RestorePlan {
    /// A plan that restores every entry of `toc` but those `left_out` names (with the reason)
    /// and those `deferred` names.
    pub fn decide(
        toc: &Toc,
        left_out: &BTreeMap<u32, String>,
        deferred: &BTreeMap<u32, String>,
        extensions: Vec<PlannedExtension>,
        jobs: u32,
    ) -> RestorePlan {
        let entries = toc
            .sectioned()
            .into_iter()
            .map(|(e, section, _)| PlannedEntry {
                id: e.id,
                kind: e.desc.clone(),
                name: qualified(&e.schema, &e.tag),
                fate: if let Some(why) = left_out.get(&e.id) {
                    Fate::LeftOut { why: why.clone() }
                } else if let Some(why) = deferred.get(&e.id) {
                    Fate::Deferred { why: why.clone() }
                } else {
                    Fate::Restored {
                        section: section.into(),
                    }
                },
            })
            .collect();
        RestorePlan {
            format: FORMAT,
            entries,
            extensions,
            jobs,
            rehearsed: None,
            refresh: Refresh::default(),
            readers: Readers::default(),
        }
    }

    /// The dump ids the restore never sends: every entry not restored.
    pub fn skip(&self) -> HashSet<u32> {
        self.entries
            .iter()
            .filter(|e| !matches!(e.fate, Fate::Restored { .. }))
            .map(|e| e.id)
            .collect()
    }

    /// The dump ids restored in `section`.
    pub fn restored_in(&self, section: RestoreSection) -> HashSet<u32> {
        self.entries
            .iter()
            .filter(|e| e.fate == Fate::Restored { section })
            .map(|e| e.id)
            .collect()
    }

    /// The entries of `toc` the restore sends in `section`, with their list lines, in the
    /// dump's order: the one selection of what is sent (the restore and the rehearsal read it).
    pub fn sent_in<'t>(
        &self,
        toc: &'t Toc,
        section: RestoreSection,
    ) -> Vec<(&'t TocEntry, &'t str)> {
        let restored = self.restored_in(section);
        toc.sectioned()
            .into_iter()
            .filter(|(e, s, _)| RestoreSection::from(*s) == section && restored.contains(&e.id))
            .map(|(e, _, line)| (e, line))
            .collect()
    }

    /// A plan that restores every entry of `toc` (a section restored on its own, by tests and
    /// tools).
    pub fn everything(toc: &Toc) -> RestorePlan {
        RestorePlan::decide(toc, &BTreeMap::new(), &BTreeMap::new(), Vec::new(), 1)
    }

    /// Whether the plan holds `toc`'s entries, one for one (a plan made for another dump is
    /// never obeyed).
    pub fn fits(&self, toc: &Toc) -> bool {
        self.format == FORMAT
            && self.entries.len() == toc.entries().count()
            && self
                .entries
                .iter()
                .zip(toc.entries())
                .all(|(p, e)| p.id == e.id && p.kind == e.desc)
    }

    /// The entries left out, grouped by (kind, why), with their names.
    pub fn left_out(&self) -> BTreeMap<(String, String), Vec<String>> {
        let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for e in &self.entries {
            if let Fate::LeftOut { why } = &e.fate {
                out.entry((e.kind.clone(), why.clone()))
                    .or_default()
                    .push(e.name.clone());
            }
        }
        out
    }

    /// One line for `check` and the logs: how many entries each section restores, the
    /// extensions' actions, what is left out (every kind named, comments included).
    pub fn summary(&self) -> String {
        let count = |s: RestoreSection| self.restored_in(s).len();
        let deferred = self
            .entries
            .iter()
            .filter(|e| matches!(e.fate, Fate::Deferred { .. }))
            .count();
        let mut text = format!(
            "{} of the dump's {} entries restored (schema {}, rows {}, indexes and constraints {}{})",
            count(RestoreSection::PreData)
                + count(RestoreSection::Data)
                + count(RestoreSection::PostData),
            self.entries.len(),
            count(RestoreSection::PreData),
            count(RestoreSection::Data),
            count(RestoreSection::PostData),
            if deferred > 0 {
                format!(", {deferred} foreign key(s) added NOT VALID after the rows")
            } else {
                String::new()
            }
        );
        text.push_str(&format!("; refresh: {}", self.refresh.mode.as_str()));
        if let Some((dump, db)) = self.refresh.room {
            text.push_str(&format!(
                " (room for two copies until the switch: the dump is {} MiB, yesterday's database {} MiB)",
                dump >> 20,
                db >> 20
            ));
        }
        let by_objects: Vec<&str> = self
            .refresh
            .schemas
            .iter()
            .filter(|s| s.by_objects)
            .map(|s| s.live.as_str())
            .collect();
        if !by_objects.is_empty() {
            text.push_str(&format!(
                " ({} switched object by object: the schema stays, with what is not the role's)",
                by_objects.join(", ")
            ));
        }
        if let Some(why) = &self.refresh.why_not_swap {
            text.push_str(&format!(" (not swap: {why})"));
        }
        let (again, kept): (Vec<&KeptView>, Vec<&KeptView>) =
            self.readers.views.iter().partition(|v| v.recreated);
        if !again.is_empty() {
            text.push_str(&format!(
                "; readers' views re-created on tonight's tables: {}",
                again
                    .iter()
                    .map(|v| v.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !kept.is_empty() {
            text.push_str(&format!(
                "; readers' views that go with yesterday's tables (the role may not act as their owner; their definitions are kept in replicator.kept_definitions): {}",
                kept.iter().map(|v| v.describe()).collect::<Vec<_>>().join(", ")
            ));
        }
        if !self.readers.grants.is_empty() || !self.readers.defaults.is_empty() {
            text.push_str(&format!("; reader roles kept: {}", self.readers.describe()));
        }
        if !self.extensions.is_empty() {
            let ext: Vec<String> = self
                .extensions
                .iter()
                .map(|x| match &x.action {
                    ExtensionAction::Present => format!("{} present", x.name),
                    ExtensionAction::Created => format!("{} created", x.name),
                    ExtensionAction::LeftOut { .. } => format!("{} left out", x.name),
                })
                .collect();
            text.push_str(&format!("; extensions: {}", ext.join(", ")));
        }
        let left = self.left_out();
        if !left.is_empty() {
            let parts: Vec<String> = left
                .iter()
                .map(|((kind, why), names)| {
                    let shown: Vec<&str> = names
                        .iter()
                        .take(crate::dump::selection::MAX_NAMES)
                        .map(String::as_str)
                        .collect();
                    let more = names.len().saturating_sub(shown.len());
                    format!(
                        "{} {kind} ({}{}){}",
                        names.len(),
                        shown.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        },
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    )
                })
                .collect();
            text.push_str(&format!("; left out: {}", parts.join("; ")));
        }
        text
    }

    /// What the run record keeps of the plan's refresh: the mode, the schemas a swap switches,
    /// why not swap, and the readers carried over.
    pub fn run_refresh(&self) -> crate::machine::RunRefresh {
        let mut r = crate::machine::RunRefresh::new(self.refresh.mode);
        r.schemas = self
            .refresh
            .schemas
            .iter()
            .map(|s| s.live.clone())
            .collect();
        r.why_not_swap = self.refresh.why_not_swap.clone();
        r.readers = self.readers.per_role();
        r.views = self
            .readers
            .views
            .iter()
            .map(|v| {
                format!(
                    "{}: {}",
                    v.describe(),
                    if v.recreated {
                        "re-created on tonight's tables"
                    } else {
                        "gone with yesterday's, definition kept in replicator.kept_definitions"
                    }
                )
            })
            .collect();
        r
    }

    /// Reads a plan written by [`RestorePlan::save`]; `None` when there is none, or it is of
    /// another format.
    pub fn load(path: &std::path::Path) -> Option<RestorePlan> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice::<RestorePlan>(&text)
            .ok()
            .filter(|p| p.format == FORMAT)
    }

    /// Writes the plan to `path` (atomically: a half-written plan is never read).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.partial");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }
}

fn qualified(schema: &str, tag: &str) -> String {
    if schema == "-" || schema.is_empty() {
        tag.to_string()
    } else {
        format!("{schema}.{tag}")
    }
}

#[cfg(test)]
mod tests;
