//! What a dump holds: its table of contents, read once per run.

pub mod toc;
