//! Getting the dump onto disk: the download (with HTTP Range resume) and the extraction of
//! the `*.pgsql` member from Scalingo's `.tar.gz`.

use std::path::Path;

use crate::error::StepError;
use crate::scalingo::DownloadUrl;

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Length of the complete archive on disk.
    pub bytes: u64,
    /// Bytes that were already on disk and kept (0 when it started from scratch).
    pub resumed_from: u64,
}

/// TODO(helper): download `url` into `dest`, continuing from `dest`'s current length.
pub async fn download(
    _http: &reqwest::Client,
    _url: &DownloadUrl,
    _dest: &Path,
    _expected_size: Option<u64>,
    _progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Downloaded, StepError> {
    todo!()
}

/// TODO(helper): stream the `*.pgsql` member of `archive` into `dump`. Blocking.
pub fn extract_dump(_archive: &Path, _dump: &Path) -> Result<u64, StepError> {
    todo!()
}
