//! The disk under the working files: which of its errors a retry may fix. The download and
//! the extraction both write there, and sort their disk errors by this one rule.

use std::io;

/// A missing directory or a permission problem does not fix itself; a full disk may.
pub(super) fn io_error_is_permanent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::IsADirectory
    )
}
