//! Where the backup comes from: Scalingo's API, the download (with `Range` resume, extracting
//! while it lands) and the extraction; or `pg_dump` of a live database (`live.rs`).

mod disk;
pub mod download;
pub mod extract;
pub mod feed;
mod follow;
pub mod http;
pub mod live;
pub mod scalingo;
pub mod spool;
