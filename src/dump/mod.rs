//! What a dump holds: its table of contents (read once per run), and whether its data is whole;
//! and a dump read once as a stream (`feed.rs`), between what produces it and the restore.

pub mod archive;
pub mod feed;
pub mod plan;
pub mod rewrite;
pub mod rows;
pub mod selection;
pub mod toc;
pub mod verify;
