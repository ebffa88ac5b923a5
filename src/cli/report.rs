//! One line of `replicator check`'s report ([`Check`]): the type the files of `check` share
//! (`check.rs`, `check_dump.rs`, `check_live.rs`), apart from them so that none imports
//! another's in a circle.

use serde_json::Value;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    /// Not run: an earlier check it depends on failed.
    Skip,
}

impl Verdict {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found, or the problem and its fix.
    pub detail: String,
    /// Extra fields for `--json` (the backup a run would take).
    pub data: Option<Value>,
}

impl Check {
    pub(super) fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            data: None,
        }
    }
    pub(super) fn fail(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            data: None,
        }
    }
    pub(super) fn skip(name: &'static str, why: &str) -> Check {
        Check {
            name,
            verdict: Verdict::Skip,
            detail: format!("not checked: {why}"),
            data: None,
        }
    }
}
