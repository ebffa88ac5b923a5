//! The demo `scripts/run` runs when nothing is configured: a whole replication on this
//! machine, from a sample backup served by the fake Scalingo into a throwaway PostgreSQL, then
//! `replicator status`; everything it starts is stopped and removed at the end.
//!
//! ```sh
//! cargo build --release --bin replicator --example demo
//! target/release/examples/demo target/release/replicator
//! ```
//!
//! As root, the cluster runs as the `postgres` user (PostgreSQL refuses root).

#[path = "../tests/it/common/demo.rs"]
mod demo;
#[path = "../tests/it/common/fake_scalingo.rs"]
mod fake_scalingo;
#[path = "../tests/it/common/pg.rs"]
mod pg;

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(bin) = std::env::args_os().nth(1) else {
        eprintln!("usage: demo PATH/TO/replicator (scripts/run gives it)");
        return ExitCode::from(2);
    };
    match demo::run(std::path::Path::new(&bin), false) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}; everything it started is stopped and removed");
            ExitCode::FAILURE
        }
    }
}
