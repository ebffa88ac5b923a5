//! `replicator`: keeps a PostgreSQL database fed from a production database's Scalingo
//! backups. See `README.md` and `docs/architecture.md`.
//!
//! # Layout
//!
//! Each module belongs to one layer and imports only from the layers below it (the table, a
//! walk from `main` to `pg_restore`, and the rules `tests/layers.rs` checks, are in
//! `docs/architecture.md`):
//!
//! | # | layer | modules | job |
//! |---|---|---|---|
//! | 1 | commands | `cli/` | arguments, one file per command, exit codes |
//! | 2 | wiring | `app` | a validated configuration becomes a driver; which run starts; the locks |
//! | 3 | engine | `engine/` | the drive loop, the real steps, progress, the work dir |
//! | 4 | configuration | `config/` | the environment and flags, validated once, every problem at once |
//! | 5 | views | `status/` | `status` as text and as typed JSON |
//! | 6 | state | `state/` | the local store, the records in the target, the run's liveness lock |
//! | 7 | effects | `notify`, `source/`, `replica/` | webhooks; Scalingo and the download; the target database |
//! | 8 | the rows' rules | `masking/` | `REPLICA_RULES` and the row transform |
//! | 9 | the dump | `dump/` | its table of contents, its data, what a replica holds, the dump as a stream |
//! | 10 | core | `machine/` | the phases, the pure transition and the pure rules around a run |
//! | 11 | services | `logging`, `schedule`, `web` | logs, the schedule, the `web` process |
//! | 12 | leaves | `error`, `secret` | no import from the crate |
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
