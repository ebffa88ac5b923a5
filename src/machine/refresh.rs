//! How a run's copy replaces yesterday's, as the run record keeps it: the refresh mode (swap or
//! wipe, and why not swap when the run chose wipe itself), the readers whose privileges it
//! carries over, and when readers started seeing tonight's copy (the switch's commit) or an
//! empty database (the wipe). `status`, the page and the metrics show it.
//!
//! Set through the machine's events: `Checked` (mode, schemas, readers: the plan's, decided
//! before the target is touched), `Succeeded` out of `Dropping` in wipe mode (the wipe), and
//! `Switched` out of `Switching` (the switch's commit, as the target recorded it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How tonight's copy replaces yesterday's (`REFRESH_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    /// `DROP OWNED BY CURRENT_USER CASCADE`, then the restore: readers see an empty, then a
    /// partial database while it runs.
    #[default]
    Wipe,
    /// Built beside yesterday's under shadow schema names, switched in one transaction.
    Swap,
}

impl RefreshMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshMode::Wipe => "wipe",
            RefreshMode::Swap => "swap",
        }
    }
}

/// One role whose privileges the run carries over to tonight's copy, and what it gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderKept {
    pub role: String,
    /// `SELECT on 42 tables, USAGE on 1 schema, default privileges`.
    pub gets: String,
}

/// The refresh of one run. Absent from records written before it existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRefresh {
    pub mode: RefreshMode,
    /// Swap mode: the live schemas switched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Why the run wipes when `REFRESH_MODE` was not set and a swap was not possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not_swap: Option<String>,
    /// The roles whose grants and default privileges the run gives again after the restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<ReaderKept>,
    /// Readers' views over the replica's tables that went with yesterday's
    /// (`view reports.top (owned by analyst) reads public.actor: re-created`, or `: kept in
    /// replicator.kept_definitions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
    /// Swap mode: when the switch committed (readers see tonight's copy from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<DateTime<Utc>>,
    /// Wipe mode: when the wipe was done (readers saw an empty, then a partial database from
    /// then until the run ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiped_at: Option<DateTime<Utc>>,
}

impl RunRefresh {
    pub fn new(mode: RefreshMode) -> RunRefresh {
        RunRefresh {
            mode,
            schemas: Vec::new(),
            why_not_swap: None,
            readers: Vec::new(),
            views: Vec::new(),
            switched_at: None,
            wiped_at: None,
        }
    }

    /// When readers started seeing this run's copy (swap) or an empty database (wipe).
    pub fn at(&self) -> Option<DateTime<Utc>> {
        match self.mode {
            RefreshMode::Swap => self.switched_at,
            RefreshMode::Wipe => self.wiped_at,
        }
    }

    /// `swap of public, app: switched 2026-11-24 05:41:07 UTC`; `wipe (not swap: ...): wiped
    /// ...`; `finished` says whether the run ended (a swap that never switched left
    /// yesterday's copy as it was).
    pub fn describe(&self, finished: bool) -> String {
        let mut s = self.mode.as_str().to_string();
        if !self.schemas.is_empty() {
            s.push_str(&format!(" of {}", self.schemas.join(", ")));
        }
        if let Some(why) = &self.why_not_swap {
            s.push_str(&format!(" (not swap: {why})"));
        }
        let clock = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        let when = match (self.mode, self.at(), finished) {
            (RefreshMode::Swap, Some(t), _) => format!("switched {}", clock(t)),
            (RefreshMode::Swap, None, false) => "not switched yet".to_string(),
            (RefreshMode::Swap, None, true) => {
                "never switched: yesterday's copy stayed as it was".to_string()
            }
            (RefreshMode::Wipe, Some(t), _) => format!("wiped {}", clock(t)),
            (RefreshMode::Wipe, None, false) => "not wiped yet".to_string(),
            (RefreshMode::Wipe, None, true) => "the target was not wiped".to_string(),
        };
        format!("{s}: {when}")
    }

    /// `metabase (SELECT on 42 tables, default privileges); ...`, or `none` (no role was
    /// granted anything by the target's role).
    pub fn readers_line(&self) -> String {
        if self.readers.is_empty() {
            return "none (the target's role granted nothing to other roles)".to_string();
        }
        self.readers
            .iter()
            .map(|r| format!("{} ({})", r.role, r.gets))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
