//! `replicator`: keeps a PostgreSQL database fed from a production database's Scalingo
//! backups. See `README.md` and `docs/architecture.md`.

pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod error;
pub mod fetch;
pub mod fk;
pub mod liveness;
pub mod logging;
pub mod machine;
pub mod notify;
pub mod post_restore;
pub mod postgres;
pub mod preflight;
pub mod remote_state;
pub mod report;
pub mod retry;
pub mod scalingo;
pub mod schedule;
pub mod secret;
pub mod store;
pub mod test_hooks;
pub mod toc;
pub mod web;
