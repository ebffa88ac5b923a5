//! `replicator`: keeps a PostgreSQL database fed from a production database's Scalingo
//! backups. See `README.md` and `docs/architecture.md`.
//!
//! # Layout
//!
//! Each folder is one layer; a module imports only from the layers below it (the order, and a
//! walk from `main` to `pg_restore`, are in `docs/architecture.md`):
//!
//! | layer | modules | job |
//! |---|---|---|
//! | commands | `cli/` | arguments, one file per command, exit codes |
//! | wiring | `app` | a validated configuration becomes a driver; the run's locks |
//! | engine | `engine/` | the drive loop, the real steps, progress, the work dir |
//! | configuration | `config` | the environment and flags, validated into each module's values |
//! | views | `status/` | `status` as text and as typed JSON |
//! | state | `state/` | the local store, the records in the target, the run's liveness lock |
//! | effects | `notify`, `source/`, `target/`, `dump/` | webhooks; Scalingo and the download; the target database; the dump's table of contents |
//! | core | `machine/` | the phases, the pure transition and the pure rules around a run |
//! | leaves | `error`, `secret`, `logging`, `schedule`, `web` | no import from the crate above them |
//!
//! The modules that the integration tests drive directly are `pub`; the others are
//! `pub(crate)`.

pub(crate) mod app;
pub(crate) mod cli;
pub mod config;
pub mod dump;
pub mod engine;
pub mod error;
pub(crate) mod logging;
pub mod machine;
pub mod masking;
pub(crate) mod notify;
pub mod replica;
pub(crate) mod schedule;
pub mod secret;
pub mod source;
pub mod state;
pub(crate) mod status;
pub(crate) mod web;

/// The binary's `main` (`src/main.rs` is only this call).
pub fn main() -> std::process::ExitCode {
    cli::entry()
}
