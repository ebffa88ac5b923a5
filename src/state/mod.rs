//! Where runs are kept: the local store, the records in the target, the run's liveness lock.

pub mod liveness;
pub mod remote;
pub mod store;
