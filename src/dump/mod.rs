//! What a dump holds: its table of contents (read once per run), and whether its data is whole.

pub mod plan;
pub mod rewrite;
pub mod selection;
pub mod toc;
pub mod verify;
