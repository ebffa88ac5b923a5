//! Where the backup comes from: Scalingo's API, the download and the extraction.

pub mod fetch;
pub mod scalingo;
