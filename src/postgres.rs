//! Everything the replicator does to the target database: the advisory lock, the checks, the
//! wipe, `pg_restore` in sections, unlogged tables.

use std::path::Path;

use crate::error::StepError;
use crate::machine::Section;
use crate::secret::Secret;

/// The target database, parsed from `DATABASE_URL`.
#[derive(Clone, Debug)]
pub struct Target {
    _private: (),
}

impl Target {
    pub fn parse(_database_url: &Secret) -> Result<Target, StepError> {
        todo!()
    }
}
