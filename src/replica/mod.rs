//! Everything the replicator does to the target database: the session and its TLS, the
//! advisory lock, the checks, the wipe, unlogged tables, the restore in sections, foreign keys
//! and post-restore SQL; and the sessions to a live source (`SOURCE_DATABASE_URL`: the same
//! URL rules and TLS), with the check that it is not the target (`identity.rs`).
//!
//! The steps here know neither the store nor the machine: they take a [`PgEndpoint`] (and a dump
//! path) and return a result whose error is already sorted into transient or permanent
//! ([`StepError`](crate::error::StepError)), so that the driver's retry loop never burns
//! attempts on a wrong password.
//!
//! The password lives in a [`Secret`](crate::secret::Secret) from the moment `DATABASE_URL` is
//! parsed. It reaches the server through `tokio-postgres`'s config only: `pg_restore` never
//! connects (it translates the archive into SQL that [`apply`] sends), so no child process
//! gets it.

pub mod apply;
mod checks;
pub mod dependents;
pub(crate) mod durable;
pub mod fk;
pub mod identity;
mod lock;
pub mod locks;
pub mod masking;
pub(crate) mod post_restore;
pub(crate) mod preflight;
pub mod readers;
pub mod records;
mod restore;
pub mod sessions;
pub(crate) mod sqlstate;
pub mod statistics;
pub mod swap;
mod tls;
pub mod unlogged;
mod url;
mod wipe;

pub use checks::{
    DumpInfo, Privileges, ServerVersion, TargetInfo, check_dump, check_dump_toc, check_target,
    pg_dump_version, pg_restore_version, privileges, server_version,
};
pub use identity::{IdentityError, ServerIdentity, identify, refuse_same_database};
pub use lock::{
    LOCK_APPLICATION_NAME, LOCK_KEY, LockHandle, LockOutcome, LockWatch, TargetLock, lock_target,
};
pub use restore::{
    LoadSetup, RESTORE_APPLICATION_NAME, TablesLoaded, restore_entries, restore_section,
    restore_section_with_list,
};
pub use sqlstate::{PostgresError, Side, is_transient_sqlstate};
pub use unlogged::{foreign_keys_in_dump, set_unlogged_with_dump};
pub use url::{CONTROL_APPLICATION_NAME, PgEndpoint};
pub use wipe::{DropOutcome, count_tables, drop_owned, terminate_leftover_restores};

/// A `DROP OWNED` or `ALTER TABLE` that waits this long on a lock held by someone else (a
/// Metabase query on the old copy) fails as transient rather than hanging the night away.
const LOCK_TIMEOUT: &str = "5min";
