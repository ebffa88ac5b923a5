//! `scripts/run` with nothing configured: the demo replicates its sample backup, shows
//! `status`, and leaves no cluster, server or file behind.

use crate::common::demo;
use crate::common::scenario::{BIN, stdout};

#[test]
fn the_demo_replicates_the_sample_masked_and_leaves_nothing_behind() {
    let d = demo::run(std::path::Path::new(BIN), true).unwrap_or_else(|e| panic!("{e}"));
    let run = stdout(d.run.as_ref().unwrap());
    let status = stdout(d.status.as_ref().unwrap());
    println!("--- replicator run:\n{run}\n--- replicator status:\n{status}");
    assert!(run.contains(" Done: backup 20261123"), "{run}");
    assert!(status.contains("Done, finished"), "{status}");
    assert!(status.contains("Masking"), "{status}");
    // Every row of the sample reached the replica.
    let total: u64 = d.rows.iter().map(|(_, source, _)| source).sum();
    assert!(total > 70_000, "{:?}", d.rows);
    for (table, source, replica) in &d.rows {
        assert_eq!(source, replica, "{table}");
    }
    // The customers' emails did not.
    assert!(d.email.0.ends_with("@mail.example"), "{:?}", d.email);
    assert!(d.email.1.ends_with("@example.invalid"), "{:?}", d.email);
    // Nothing left: the cluster's directory, its server, the fake's.
    assert!(!d.cluster_dir.exists(), "{} left", d.cluster_dir.display());
    assert!(!demo::listening(d.cluster_port), "PostgreSQL still listens");
    println!("demo took {:.1}s", d.seconds);
}
