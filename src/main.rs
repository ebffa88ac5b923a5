//! The `replicator` binary: everything is in the library (`src/lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    replicator::main()
}
