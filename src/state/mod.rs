//! Where runs are kept: the local store, the records in the target, the run's liveness lock.

pub(crate) mod liveness;
pub(crate) mod remote;
pub mod store;
