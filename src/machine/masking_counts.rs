//! What `REPLICA_RULES` did in a run, kept in the run's record (`status`, `status --json`, the
//! summary line): counts only, never a value.

use serde::{Deserialize, Serialize};

/// What the rules of `REPLICA_RULES` did in a run: values rewritten per rule (`hash`,
/// `first_name`, ...), rows dropped per filtered table, of which those the filter could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskingCounts {
    #[serde(default)]
    pub rewritten: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Foreign keys whose referenced rows a filter dropped: `table.constraint` -> rows
    /// referencing a missing row.
    #[serde(default)]
    pub orphans: std::collections::BTreeMap<String, u64>,
    /// Rows a filter dropped because it could not read their value (a filter fails closed):
    /// table -> rows, also counted in `dropped`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub unreadable: std::collections::BTreeMap<String, u64>,
}

impl MaskingCounts {
    pub fn is_empty(&self) -> bool {
        self.rewritten.is_empty() && self.dropped.is_empty() && self.orphans.is_empty()
    }

    /// `values rewritten: hash 120, first_name 40; rows dropped: events 12`.
    pub fn describe(&self) -> String {
        let list = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "values rewritten: {}",
            if self.rewritten.is_empty() {
                "none".to_string()
            } else {
                list(&self.rewritten)
            }
        );
        if !self.dropped.is_empty() {
            s.push_str(&format!("; rows dropped: {}", list(&self.dropped)));
        }
        if !self.unreadable.is_empty() {
            s.push_str(&format!(
                " (of which the filter could not read their value, so did not keep them: {})",
                list(&self.unreadable)
            ));
        }
        if !self.orphans.is_empty() {
            s.push_str(&format!(
                "; rows whose foreign key references a filtered-out row: {}",
                list(&self.orphans)
            ));
        }
        s
    }
}
