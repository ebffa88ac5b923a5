//! Scalingo's API, as the replicator uses it: find the newest `done` backup of the app's
//! PostgreSQL addon and get a fresh download URL for it. See `../shared/docs/scalingo-api.md`
//! (copied into `docs/scalingo-api.md`).

use std::time::Duration;

use crate::error::StepError;
use crate::machine::Backup;
use crate::secret::Secret;

/// Where the three Scalingo hosts are (origins only, no `/v1` or `/api`).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub auth: String,
    pub api: String,
    pub db: String,
}

impl Endpoints {
    /// The public hosts of `region` (`osc-fr1`, `osc-secnum-fr1`, ...), each replaced by its
    /// override when one is given (`SCALINGO_AUTH_URL`, `SCALINGO_API_URL`, `SCALINGO_DB_URL`).
    pub fn for_region(
        region: &str,
        auth: Option<String>,
        api: Option<String>,
        db: Option<String>,
    ) -> Endpoints {
        let trim = |s: String| s.trim_end_matches('/').to_string();
        Endpoints {
            auth: auth.map(trim).unwrap_or_else(|| "https://auth.scalingo.com".into()),
            api: api
                .map(trim)
                .unwrap_or_else(|| format!("https://api.{region}.scalingo.com")),
            db: db
                .map(trim)
                .unwrap_or_else(|| format!("https://db-api.{region}.scalingo.com")),
        }
    }
}

/// TODO(helper): implement. Errors: a `thiserror` enum `ScalingoError` whose messages say
/// what failed, on what, and what to do; `impl From<ScalingoError> for StepError` sorts them
/// into transient and permanent (see the API doc's last section).
pub struct ScalingoClient {
    _private: (),
}

/// A download URL. It carries its own token: never log it whole, never persist it.
pub struct DownloadUrl(pub Secret);

impl ScalingoClient {
    pub fn new(_endpoints: Endpoints, _app: String, _api_token: Secret) -> Self {
        todo!()
    }

    /// Token exchange, the app's PostgreSQL addon, a database-API token, the backup list:
    /// the `done` backup with the greatest `created_at`.
    pub async fn newest_done_backup(&self) -> Result<Backup, StepError> {
        todo!()
    }

    /// A fresh download URL for `backup_id` (asked for anew before every download attempt).
    pub async fn download_url(&self, _backup_id: &str) -> Result<DownloadUrl, StepError> {
        todo!()
    }
}

/// The HTTP client the downloads share (rustls, read timeout, no total timeout).
pub fn http_client(_read_timeout: Duration) -> reqwest::Client {
    todo!()
}
