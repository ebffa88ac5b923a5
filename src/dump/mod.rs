//! What a dump holds: its table of contents (read once per run), and whether its data is whole.

pub mod toc;
pub(crate) mod verify;
