//! `replicator`: keeps a PostgreSQL database fed from a production database's Scalingo
//! backups. See `README.md` and `docs/architecture.md`.

pub mod config;
pub mod error;
pub mod fetch;
pub mod machine;
pub mod postgres;
pub mod scalingo;
pub mod secret;
