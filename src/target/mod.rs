//! The target database: connection, lock, checks, wipe, `pg_restore`, foreign keys and
//! post-restore SQL.

pub mod fk;
pub mod post_restore;
mod postgres;
pub mod preflight;

pub use postgres::*;
