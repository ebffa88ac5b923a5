//! Scalingo's API, as the replicator uses it: find the newest `done` backup of the app's
//! PostgreSQL addon and get a fresh download URL for it. See `../shared/docs/scalingo-api.md`
//! (copied into `docs/scalingo-api.md`).
//!
//! Every error says what failed, on what (app, addon, endpoint path, HTTP status) and which
//! setting to look at; none carries a token, a bearer or a download URL.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Classify, FailureKind, StepError};
use crate::machine::Backup;
use crate::secret::Secret;
use crate::source::http::{DownloadUrl, describe_reqwest_error, parse_retry_after};

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
            auth: auth
                .map(trim)
                .unwrap_or_else(|| "https://auth.scalingo.com".into()),
            api: api
                .map(trim)
                .unwrap_or_else(|| format!("https://api.{region}.scalingo.com")),
            db: db
                .map(trim)
                .unwrap_or_else(|| format!("https://db-api.{region}.scalingo.com")),
        }
    }
}

/// Scalingo says a bearer lives about an hour; renewing earlier keeps a long run from
/// meeting a 401 in the middle of its calls.
const BEARER_MAX_AGE: Duration = Duration::from_secs(50 * 60);

/// API answers are small JSON documents: a total timeout is right here (unlike downloads).
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// Error bodies are echoed into messages for diagnosis, but kept short.
const MAX_DETAIL: usize = 200;

/// What went wrong while talking to Scalingo's API.
#[derive(Debug, thiserror::Error)]
pub enum ScalingoError {
    #[error(
        "Scalingo refused the API token ({endpoint} answered HTTP {status}): check \
         SCALINGO_API_TOKEN (it may be revoked or mistyped; create one in the dashboard under \
         User settings > API tokens)"
    )]
    BadApiToken { endpoint: String, status: u16 },
    #[error(
        "{what} for app {app}: {endpoint} answered HTTP 401 even with a freshly exchanged token: \
         check that SCALINGO_API_TOKEN belongs to a collaborator of SCALINGO_APP={app}"
    )]
    Unauthorized {
        what: String,
        app: String,
        endpoint: String,
    },
    #[error(
        "app {app} not found ({endpoint} answered HTTP 404{detail}): check SCALINGO_APP, and \
         SCALINGO_REGION (the app may live in another region)"
    )]
    AppNotFound {
        app: String,
        endpoint: String,
        detail: String,
    },
    #[error(
        "{what} for app {app}: {endpoint} answered HTTP 404{detail}: check SCALINGO_APP and \
         SCALINGO_REGION (the addon or backup may have been deleted)"
    )]
    NotFound {
        what: String,
        app: String,
        endpoint: String,
        detail: String,
    },
    #[error(
        "app {app} has no PostgreSQL addon (addons found: {found}): check SCALINGO_APP names the \
         app that holds the production database"
    )]
    NoPostgresAddon { app: String, found: String },
    #[error(
        "no finished backup of app {app} (addon {addon_id}): {seen}; wait for the nightly backup, \
         or start one from the dashboard, then try again"
    )]
    NoDoneBackup {
        app: String,
        addon_id: String,
        seen: String,
    },
    #[error(
        "{what} for app {app}: {endpoint} answered HTTP 429 (rate limit){after}; will retry later"
    )]
    RateLimited {
        what: String,
        app: String,
        endpoint: String,
        after: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "{what} for app {app}: {endpoint} answered HTTP {status}{detail}; Scalingo-side trouble, \
         will retry later"
    )]
    Server {
        what: String,
        app: String,
        endpoint: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{what} for app {app}: {endpoint} answered HTTP {status}{detail}: {advice}")]
    Refused {
        what: String,
        app: String,
        endpoint: String,
        status: u16,
        detail: String,
        advice: &'static str,
    },
    #[error(
        "{what} for app {app}: could not reach {endpoint}: {detail}; will retry (if it lasts, \
         check the network, SCALINGO_REGION and any SCALINGO_*_URL override)"
    )]
    Network {
        what: String,
        app: String,
        endpoint: String,
        detail: String,
    },
    #[error(
        "{what} for app {app}: {endpoint} answered HTTP {status} with an unexpected body \
         ({detail}): check SCALINGO_REGION and any SCALINGO_AUTH_URL/SCALINGO_API_URL/\
         SCALINGO_DB_URL override point at Scalingo"
    )]
    Malformed {
        what: String,
        app: String,
        endpoint: String,
        status: u16,
        detail: String,
    },
}

impl ScalingoError {
    pub fn is_transient(&self) -> bool {
        use ScalingoError::*;
        match self {
            RateLimited { .. } | Server { .. } | Network { .. } => true,
            // A 5xx with a body we cannot read is still a 5xx.
            Malformed { status, .. } => *status >= 500,
            BadApiToken { .. }
            | Unauthorized { .. }
            | AppNotFound { .. }
            | NotFound { .. }
            | NoPostgresAddon { .. }
            | NoDoneBackup { .. }
            | Refused { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ScalingoError::RateLimited { retry_after, .. }
            | ScalingoError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn status(&self) -> Option<u16> {
        use ScalingoError::*;
        match self {
            BadApiToken { status, .. }
            | Server { status, .. }
            | Refused { status, .. }
            | Malformed { status, .. } => Some(*status),
            Unauthorized { .. } => Some(401),
            AppNotFound { .. } | NotFound { .. } => Some(404),
            RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

impl Classify for ScalingoError {
    fn kind(&self) -> FailureKind {
        if self.is_transient() {
            FailureKind::Transient
        } else {
            FailureKind::Permanent
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        ScalingoError::retry_after(self)
    }
}

struct CachedBearer {
    token: Secret,
    obtained: Instant,
}

/// Talks to Scalingo's auth, API and database API on behalf of one app.
pub struct ScalingoClient {
    http: reqwest::Client,
    endpoints: Endpoints,
    app: String,
    api_token: Secret,
    bearer: Mutex<Option<CachedBearer>>,
    /// The addon id is not a secret and does not change: found once per client.
    addon_id: Mutex<Option<String>>,
    /// The addon's `resource_id`: the name of the production database.
    resource_id: Mutex<Option<String>>,
}

enum Auth<'a> {
    Basic(&'a Secret),
    Bearer(&'a Secret),
}

/// One call's description, for the request and for the messages.
struct Call<'a> {
    method: Method,
    origin: &'a str,
    path: String,
    what: String,
}

impl Call<'_> {
    fn endpoint(&self) -> String {
        format!("{} {}{}", self.method, self.origin, self.path)
    }
}

impl ScalingoClient {
    pub fn new(endpoints: Endpoints, app: String, api_token: Secret) -> Self {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("replicator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(API_TIMEOUT)
            .redirect(crate::source::http::secure_redirects())
            .build()
            .expect("a rustls reqwest client always builds");
        ScalingoClient {
            http,
            endpoints,
            app,
            api_token,
            bearer: Mutex::new(None),
            addon_id: Mutex::new(None),
            resource_id: Mutex::new(None),
        }
    }

    /// Token exchange, the app's PostgreSQL addon, a database-API token, the backup list:
    /// the `done` backup with the greatest `created_at`.
    pub async fn newest_done_backup(&self) -> Result<Backup, StepError> {
        Ok(self.find_newest_done_backup().await?)
    }

    /// Exchanges the API token for a bearer: proves the token is good (`replicator check`).
    pub async fn check_token(&self) -> Result<(), StepError> {
        self.bearer().await?;
        Ok(())
    }

    /// The name of the source's database: the PostgreSQL addon's `resource_id` (Scalingo
    /// names an addon's database and role after it; its host and port are not in the API).
    pub async fn source_database(&self) -> Result<Option<String>, StepError> {
        self.postgres_addon_id().await?;
        Ok(self.resource_id.lock().unwrap().clone())
    }

    /// The id of the app's PostgreSQL addon (`replicator check`).
    pub async fn postgres_addon(&self) -> Result<String, StepError> {
        Ok(self.postgres_addon_id().await?)
    }

    /// A fresh download URL for `backup_id` (asked for anew before every download attempt).
    pub async fn download_url(&self, backup_id: &str) -> Result<DownloadUrl, StepError> {
        Ok(self.fetch_download_url(backup_id).await?)
    }

    async fn find_newest_done_backup(&self) -> Result<Backup, ScalingoError> {
        let addon_id = self.postgres_addon_id().await?;
        let db_token = self.db_token(&addon_id).await?;
        let call = Call {
            method: Method::GET,
            origin: &self.endpoints.db,
            path: format!("/api/databases/{addon_id}/backups"),
            what: format!("listing the backups of addon {addon_id}"),
        };
        let list: BackupList = self.send(&call, Auth::Bearer(&db_token)).await?;
        let total = list.database_backups.len();
        match choose_newest_done(&list.database_backups) {
            Some(backup) => {
                tracing::info!(
                    app = %self.app, addon_id = %addon_id, backup_id = %backup.id,
                    name = %backup.name, size = ?backup.size, backups = total,
                    "chose the newest done backup"
                );
                Ok(backup)
            }
            None => Err(ScalingoError::NoDoneBackup {
                app: self.app.clone(),
                addon_id,
                seen: describe_statuses(&list.database_backups),
            }),
        }
    }

    async fn fetch_download_url(&self, backup_id: &str) -> Result<DownloadUrl, ScalingoError> {
        let addon_id = self.postgres_addon_id().await?;
        let db_token = self.db_token(&addon_id).await?;
        let call = Call {
            method: Method::GET,
            origin: &self.endpoints.db,
            path: format!("/api/databases/{addon_id}/backups/{backup_id}/archive"),
            what: format!("getting the download URL of backup {backup_id} (addon {addon_id})"),
        };
        let archive: Archive = self.send(&call, Auth::Bearer(&db_token)).await?;
        let url = DownloadUrl(Secret::new(archive.download_url));
        tracing::debug!(backup_id, url = %url.redacted(), "got a download URL");
        Ok(url)
    }

    /// The id of the app's PostgreSQL addon, looked up once per client.
    async fn postgres_addon_id(&self) -> Result<String, ScalingoError> {
        if let Some(id) = self.addon_id.lock().unwrap().clone() {
            return Ok(id);
        }
        let call = Call {
            method: Method::GET,
            origin: &self.endpoints.api,
            path: format!("/v1/apps/{}/addons", self.app),
            what: "listing the addons".into(),
        };
        let list: AddonList = match self.send_with_bearer(&call).await {
            Err(ScalingoError::NotFound {
                endpoint, detail, ..
            }) => {
                return Err(ScalingoError::AppNotFound {
                    app: self.app.clone(),
                    endpoint,
                    detail,
                });
            }
            other => other?,
        };
        let addon =
            pick_postgres_addon(&list.addons).ok_or_else(|| ScalingoError::NoPostgresAddon {
                app: self.app.clone(),
                found: describe_addons(&list.addons),
            })?;
        tracing::debug!(app = %self.app, addon_id = %addon.id, "found the PostgreSQL addon");
        *self.resource_id.lock().unwrap() = addon.resource_id.clone();
        *self.addon_id.lock().unwrap() = Some(addon.id.clone());
        Ok(addon.id.clone())
    }

    /// A database-API token for `addon_id`; short-lived, so asked for on every attempt.
    async fn db_token(&self, addon_id: &str) -> Result<Secret, ScalingoError> {
        let call = Call {
            method: Method::POST,
            origin: &self.endpoints.api,
            path: format!("/v1/apps/{}/addons/{addon_id}/token", self.app),
            what: format!("getting a database token for addon {addon_id}"),
        };
        let answer: AddonToken = self.send_with_bearer(&call).await?;
        Ok(Secret::new(answer.addon.token))
    }

    /// Sends `call` with the bearer. A 401 with a cached bearer means it expired early: one
    /// new exchange and one retry; a 401 with a fresh bearer cannot be fixed by retrying.
    async fn send_with_bearer<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
    ) -> Result<T, ScalingoError> {
        let (bearer, fresh) = self.bearer().await?;
        match self.send(call, Auth::Bearer(&bearer)).await {
            Err(e) if e.status() == Some(401) && !fresh => {
                tracing::debug!(endpoint = %call.endpoint(), "bearer refused, exchanging again");
                *self.bearer.lock().unwrap() = None;
                let (bearer, _) = self.bearer().await?;
                self.send(call, Auth::Bearer(&bearer)).await
            }
            other => other,
        }
    }

    /// The cached bearer if young enough, else a new one; `true` when it was just exchanged.
    async fn bearer(&self) -> Result<(Secret, bool), ScalingoError> {
        if let Some(cached) = self.bearer.lock().unwrap().as_ref()
            && cached.obtained.elapsed() < BEARER_MAX_AGE
        {
            return Ok((cached.token.clone(), false));
        }
        let token = self.exchange().await?;
        *self.bearer.lock().unwrap() = Some(CachedBearer {
            token: token.clone(),
            obtained: Instant::now(),
        });
        Ok((token, true))
    }

    async fn exchange(&self) -> Result<Secret, ScalingoError> {
        let call = Call {
            method: Method::POST,
            origin: &self.endpoints.auth,
            path: "/v1/tokens/exchange".into(),
            what: "exchanging the API token".into(),
        };
        let answer: Result<TokenExchange, _> = self.send(&call, Auth::Basic(&self.api_token)).await;
        match answer {
            Ok(t) => Ok(Secret::new(t.token)),
            Err(e) if matches!(e.status(), Some(401 | 403)) => Err(ScalingoError::BadApiToken {
                endpoint: call.endpoint(),
                status: e.status().unwrap_or(401),
            }),
            Err(e) => Err(e),
        }
    }

    /// One HTTP call; the status and body are turned into a typed answer or a typed error.
    async fn send<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        auth: Auth<'_>,
    ) -> Result<T, ScalingoError> {
        let url = format!("{}{}", call.origin, call.path);
        let mut req = self
            .http
            .request(call.method.clone(), &url)
            .header(header::ACCEPT, "application/json");
        req = match auth {
            Auth::Basic(token) => req.basic_auth("", Some(token.expose())),
            Auth::Bearer(token) => req.bearer_auth(token.expose()),
        };
        if call.method == Method::POST {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body("{}");
        }
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| self.network(call, e))?;
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers(), Utc::now());
        let body = resp.bytes().await.map_err(|e| self.network(call, e))?;
        tracing::debug!(
            endpoint = %call.endpoint(), status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64, "Scalingo API call"
        );
        if !status.is_success() {
            return Err(self.status_error(call, status, &body, retry_after));
        }
        serde_json::from_slice(&body).map_err(|e| ScalingoError::Malformed {
            what: call.what.clone(),
            app: self.app.clone(),
            endpoint: call.endpoint(),
            status: status.as_u16(),
            detail: e.to_string(),
        })
    }

    fn network(&self, call: &Call<'_>, e: reqwest::Error) -> ScalingoError {
        ScalingoError::Network {
            what: call.what.clone(),
            app: self.app.clone(),
            endpoint: call.endpoint(),
            detail: describe_reqwest_error(e),
        }
    }

    fn status_error(
        &self,
        call: &Call<'_>,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> ScalingoError {
        let (what, app, endpoint) = (call.what.clone(), self.app.clone(), call.endpoint());
        let detail = body_detail(body);
        let code = status.as_u16();
        match code {
            401 => ScalingoError::Unauthorized {
                what,
                app,
                endpoint,
            },
            404 => ScalingoError::NotFound {
                what,
                app,
                endpoint,
                detail,
            },
            429 => ScalingoError::RateLimited {
                what,
                app,
                endpoint,
                after: retry_after
                    .map(|d| format!(", asked to wait {}s", d.as_secs()))
                    .unwrap_or_default(),
                retry_after,
            },
            500..=599 => ScalingoError::Server {
                what,
                app,
                endpoint,
                status: code,
                detail,
                retry_after,
            },
            _ => ScalingoError::Refused {
                what,
                app,
                endpoint,
                status: code,
                detail,
                advice: refusal_advice(code),
            },
        }
    }
}

/// What a user can do about a 4xx other than 401, 404 and 429.
fn refusal_advice(status: u16) -> &'static str {
    match status {
        402 => "the Scalingo account has a billing problem: see the dashboard",
        403 => "check that the owner of SCALINGO_API_TOKEN may access SCALINGO_APP's database",
        400 | 422 => {
            "Scalingo refused the request (a backup that is not finished cannot be \
             downloaded); if it lasts, check SCALINGO_APP and the backups in the dashboard"
        }
        _ => "check SCALINGO_APP, SCALINGO_API_TOKEN and the account's access to the app",
    }
}

/// A short, single-line account of an error body: the JSON `error` field when there is one,
/// else the start of the text (429 bodies are plain text).
fn body_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: Option<serde_json::Value>,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: Some(serde_json::Value::String(s)),
        }) => s,
        Ok(ErrorBody { error: Some(v) }) => v.to_string(),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_DETAIL)
        .collect();
    if one_line.is_empty() {
        String::new()
    } else {
        format!(": {one_line}")
    }
}

#[derive(Deserialize)]
struct TokenExchange {
    token: String,
}

#[derive(Deserialize)]
struct AddonList {
    addons: Vec<ApiAddon>,
}

#[derive(Deserialize, Debug, Clone)]
struct ApiAddon {
    id: String,
    /// The addon's database name on its server (also its role's name).
    #[serde(default)]
    resource_id: Option<String>,
    #[serde(default)]
    addon_provider: Option<AddonProvider>,
}

#[derive(Deserialize, Debug, Clone)]
struct AddonProvider {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct AddonToken {
    addon: AddonWithToken,
}

#[derive(Deserialize)]
struct AddonWithToken {
    token: String,
}

#[derive(Deserialize)]
struct BackupList {
    database_backups: Vec<ApiBackup>,
}

#[derive(Deserialize, Debug, Clone)]
struct ApiBackup {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct Archive {
    download_url: String,
}

/// By provider id first; the provider name is the fallback for older documents.
fn pick_postgres_addon(addons: &[ApiAddon]) -> Option<&ApiAddon> {
    let provider = |a: &&ApiAddon| a.addon_provider.clone();
    addons
        .iter()
        .find(|a| provider(a).and_then(|p| p.id).as_deref() == Some("postgresql"))
        .or_else(|| {
            addons.iter().find(|a| {
                provider(a)
                    .and_then(|p| p.name)
                    .is_some_and(|n| n.eq_ignore_ascii_case("postgresql"))
            })
        })
}

fn describe_addons(addons: &[ApiAddon]) -> String {
    if addons.is_empty() {
        return "none".into();
    }
    addons
        .iter()
        .map(|a| {
            let p = a.addon_provider.clone();
            let kind = p
                .and_then(|p| p.id.or(p.name))
                .unwrap_or_else(|| "?".into());
            format!("{} ({kind})", a.id)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `2026-11-23T05:10:00.000+01:00` (any RFC 3339 form) as UTC.
fn parse_created_at(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The `done` backup with the greatest `created_at`, whatever the list's order; newer
/// backups that are running or failed are skipped.
fn choose_newest_done(backups: &[ApiBackup]) -> Option<Backup> {
    backups
        .iter()
        .filter(|b| b.status.as_deref().map(str::trim) == Some("done"))
        .filter_map(|b| {
            let created = b.created_at.as_deref().and_then(parse_created_at);
            if created.is_none() {
                tracing::warn!(backup_id = %b.id, "skipping a done backup without a readable created_at");
            }
            created.map(|c| (c, b))
        })
        .max_by_key(|(created, _)| *created)
        .map(|(created, b)| Backup {
            id: b.id.clone(),
            name: b.name.clone().unwrap_or_else(|| b.id.clone()),
            created_at: Some(created),
            size: b.size.filter(|s| *s > 0),
        })
}

fn describe_statuses(backups: &[ApiBackup]) -> String {
    if backups.is_empty() {
        return "the addon has no backup at all".into();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for b in backups {
        let s = b.status.clone().unwrap_or_else(|| "unknown".into());
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let list: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} backups, none done ({})", backups.len(), list.join(", "))
}

#[cfg(test)]
mod tests;
