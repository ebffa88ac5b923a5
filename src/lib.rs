//! `replicator`: keeps a PostgreSQL database fed from a production database's Scalingo
//! backups. See `README.md` and `docs/architecture.md`.

pub(crate) mod app;
pub mod cli;
pub mod config;
pub mod dump;
pub mod engine;
pub mod error;
pub mod logging;
pub mod machine;
pub mod notify;
pub mod schedule;
pub mod secret;
pub mod source;
pub mod state;
pub mod status;
pub mod target;
pub mod web;
