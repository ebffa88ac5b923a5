use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::dump::toc::Toc;

const LIST: &str = "7; 2615 16477 SCHEMA - analytics postgres\n\
    2; 3079 16391 EXTENSION - pgstattuple \n\
    3429; 0 0 COMMENT - EXTENSION pgstattuple \n\
    216; 1259 16384 TABLE public t postgres\n\
    3417; 0 16384 TABLE DATA public t postgres\n\
    3300; 2606 16390 CONSTRAINT public t t_pkey postgres\n\
    3301; 2606 16391 FK CONSTRAINT public t t_fk postgres\n";

/// The plan's JSON as this version writes it: a plan persisted by a run must load in the
/// next version (change [`FORMAT`] and this text together, never one alone).
const FROZEN: &str = r#"{
  "format": 1,
  "entries": [
    {"id": 7, "kind": "SCHEMA", "name": "analytics", "fate": "restored", "section": "pre_data"},
    {"id": 2, "kind": "EXTENSION", "name": "pgstattuple", "fate": "left_out", "why": "a server tool"},
    {"id": 3417, "kind": "TABLE DATA", "name": "public.t", "fate": "restored", "section": "data"},
    {"id": 3301, "kind": "FK CONSTRAINT", "name": "public.t t_fk", "fate": "deferred", "why": "FK_MODE=trust"}
  ],
  "extensions": [{"name": "pgstattuple", "action": "left_out", "why": "a server tool"},
                 {"name": "pg_trgm", "action": "present"}],
  "jobs": 4,
  "rehearsed": {"wipe": true, "pre_data": 12, "tables": 1, "rows": 10, "post_data": 2,
                "not_rehearsed": [], "millis": 40}
}"#;

#[test]
fn a_persisted_plan_of_this_format_loads() {
    let plan: RestorePlan = serde_json::from_str(FROZEN).expect("the frozen format loads");
    assert_eq!(plan.format, FORMAT);
    assert_eq!(
        plan.entries[1].fate,
        Fate::LeftOut {
            why: "a server tool".into()
        }
    );
    assert_eq!(
        plan.entries[2].fate,
        Fate::Restored {
            section: RestoreSection::Data
        }
    );
    assert_eq!(plan.extensions[1].action, ExtensionAction::Present);
    assert_eq!(plan.rehearsed.as_ref().map(|r| r.rows), Some(10));
    assert_eq!(plan.skip(), HashSet::from([2, 3301]));
    // And what this version writes loads back the same.
    let again: RestorePlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(again, plan);
}

#[test]
fn the_summary_names_every_entry_left_out_and_each_extension() {
    let toc = Toc::parse(LIST);
    let left = BTreeMap::from([
        (2, "only a superuser may create it".to_string()),
        (3429, "set by CREATE EXTENSION".to_string()),
    ]);
    let deferred = BTreeMap::from([(3301, "FK_MODE=trust".to_string())]);
    let ext = vec![PlannedExtension {
        name: "pgstattuple".into(),
        action: ExtensionAction::LeftOut {
            why: "only a superuser may create it".into(),
        },
    }];
    let plan = RestorePlan::decide(&toc, &left, &deferred, ext, 4);
    assert!(plan.fits(&toc));
    let text = plan.summary();
    assert!(
        text.starts_with("4 of the dump's 7 entries restored"),
        "{text}"
    );
    assert!(text.contains("pgstattuple left out"), "{text}");
    assert!(text.contains("1 COMMENT (EXTENSION pgstattuple)"), "{text}");
    assert!(text.contains("1 foreign key(s) added NOT VALID"), "{text}");
    assert_eq!(
        plan.restored_in(RestoreSection::PostData),
        HashSet::from([3300])
    );
}

/// A table of contents of `n` entries of random kinds, in pg_dump's list format.
fn arb_list() -> impl Strategy<Value = String> {
    let kinds = prop::sample::select(vec![
        "SCHEMA - s",
        "EXTENSION - e",
        "COMMENT - EXTENSION e",
        "TABLE public t",
        "TABLE DATA public t",
        "SEQUENCE SET public q",
        "INDEX public i",
        "CONSTRAINT public t k",
        "FK CONSTRAINT public t f",
        "ACL - SCHEMA s",
        "COMMENT public TABLE t",
        "BLOBS - BLOBS",
        "MATERIALIZED VIEW DATA public m",
        "TRIGGER public t g",
    ]);
    prop::collection::vec(kinds, 1..40).prop_map(|ks| {
        ks.iter()
            .enumerate()
            .map(|(i, k)| format!("{}; 0 {} {k} postgres\n", i + 1, 1000 + i))
            .collect()
    })
}

proptest! {
    /// What the restore sends in its sections is exactly the plan's restored set, each entry
    /// in the section the plan says: no entry left out or deferred is ever sent.
    #[test]
    fn the_restore_sends_exactly_what_the_plan_restores(
        list in arb_list(),
        out in prop::collection::vec(any::<bool>(), 40),
        defer in prop::collection::vec(any::<bool>(), 40),
    ) {
        let toc = Toc::parse(&list);
        let mut left = BTreeMap::new();
        let mut deferred = BTreeMap::new();
        for (i, e) in toc.entries().enumerate() {
            if out[i] {
                left.insert(e.id, "x".to_string());
            } else if defer[i] {
                deferred.insert(e.id, "y".to_string());
            }
        }
        let plan = RestorePlan::decide(&toc, &left, &deferred, Vec::new(), 1);
        let mut sent = HashSet::new();
        for section in [RestoreSection::PreData, RestoreSection::Data, RestoreSection::PostData] {
            for (e, _) in plan.sent_in(&toc, section) {
                prop_assert_eq!(plan.restored_in(section).contains(&e.id), true);
                prop_assert!(sent.insert(e.id), "entry {} sent twice", e.id);
            }
        }
        let restored: HashSet<u32> = plan
            .entries
            .iter()
            .filter(|e| matches!(e.fate, Fate::Restored { .. }))
            .map(|e| e.id)
            .collect();
        prop_assert_eq!(sent, restored);
    }
}
