//! A fake Scalingo on loopback: auth, API and database API on one origin, following
//! `docs/scalingo-api.md` to the field, with switches for the faults the replicator must
//! survive and records of what it was asked.
//!
//! It runs on its own runtime thread, so sync tests and `#[tokio::test]` use it alike.
//! Point the replicator at it with `SCALINGO_AUTH_URL`, `SCALINGO_API_URL` and
//! `SCALINGO_DB_URL` all set to [`FakeScalingo::url`] (or use [`FakeScalingo::endpoints`]).

// Shared by every integration test and the benchmark: each uses a different part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};

use replicator::secret::Secret;
use replicator::source::scalingo::{Endpoints, ScalingoClient};

pub const API_TOKEN: &str = "tk-us-fake-0123456789abcdef";
pub const APP: &str = "my-app";
pub const POSTGRES_ADDON_ID: &str = "ad-0b6c7a1e-3f52-4d8e-9a41-7c2f5e8d9b10";
pub const REDIS_ADDON_ID: &str = "ad-5a7e2c91-8d4b-4f0e-b3a6-1e9c4d2f7a83";
/// The backup a correct client restores: the newest `done` one.
pub const DONE_BACKUP_ID: &str = "6761a1f0c2d4e5f6a7b8c9d0";
pub const OLDER_DONE_BACKUP_ID: &str = "675f5070c2d4e5f6a7b8c9d1";
pub const RUNNING_BACKUP_ID: &str = "6762f370c2d4e5f6a7b8c9d2";
pub const ERROR_BACKUP_ID: &str = "675dfef0c2d4e5f6a7b8c9d3";
const APP_ID: &str = "5e3c1f9a8b7d6e5f4a3b2c1d";
const RESOURCE_ID: &str = "my_app_4553";

/// The routes of the fake, for the records and for aiming faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Exchange,
    Addons,
    AddonToken,
    Backups,
    Archive,
    Download,
}

/// How long a fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    Always,
    /// The next N requests it applies to.
    Next(u32),
}

/// Whether a fault in `slot` applies to this request; counts it down.
fn fire(slot: &mut Option<Times>) -> bool {
    match slot {
        None => false,
        Some(Times::Always) => true,
        Some(Times::Next(n)) => {
            let on = *n > 0;
            *n = n.saturating_sub(1);
            if *n == 0 {
                *slot = None;
            }
            on
        }
    }
}

fn fire_with(slot: &mut Option<(u64, Times)>) -> Option<u64> {
    let (k, times) = (*slot)?;
    let mut t = Some(times);
    let on = fire(&mut t);
    *slot = t.map(|t| (k, t));
    on.then_some(k)
}

/// An error status on a route (or all of them).
#[derive(Clone, Debug)]
pub struct ErrorFault {
    /// `None`: every route.
    pub route: Option<Route>,
    /// 401, 404, 429 (plain-text body), 500, 502, 503...
    pub status: u16,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
    pub times: Times,
}

/// Fault switches; all off by default (the fake then behaves like Scalingo on a good day).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub error: Option<ErrorFault>,
    /// 401 on the token exchange, whatever the token.
    pub bad_api_token: Option<Times>,
    /// 401 on the next API call made with a bearer, which is then forgotten (expired).
    pub expire_bearer: Option<Times>,
    /// The app has only its Redis addon.
    pub no_postgres_addon: bool,
    /// The backup list holds only the running and error backups.
    pub only_unfinished_backups: bool,
    /// The download URL answers 403 (expired).
    pub download_forbidden: Option<Times>,
    /// Close the connection (error in the body) after K bytes of a download response.
    pub cut_after: Option<(u64, Times)>,
    /// Announce the full Content-Length but end the body cleanly after K bytes.
    pub short_body: Option<(u64, Times)>,
    /// Send K bytes then nothing more, keeping the connection open.
    pub stall_after: Option<(u64, Times)>,
    /// Answer every download with 200 and the whole body (no Range support).
    pub ignore_range: bool,
    /// Throttle downloads to this many bytes a second.
    pub bytes_per_second: Option<u64>,
    /// Answer a download with a 302 to the same URL plus `&hop=1` (as a storage redirect).
    pub redirect_download: bool,
    /// Answer a download with a 302 to the same path and query on this origin instead.
    pub redirect_download_to: Option<String>,
    /// Download URLs name this origin (e.g. a closed port: an unreachable download host).
    pub download_origin: Option<String>,
    /// The PostgreSQL addon's `resource_id` (its database's name) instead of the default.
    pub postgres_resource_id: Option<String>,
}

/// What the fake was asked; read it with [`FakeScalingo::records`].
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub requests: HashMap<Route, u32>,
    /// Every request's `Authorization` header, in order.
    pub authorizations: Vec<(Route, Option<String>)>,
    /// The `Range` header of every download request, in order.
    pub ranges: Vec<Option<String>>,
    /// Body bytes handed to the connection by download responses.
    pub bytes_served: u64,
}

impl Records {
    pub fn count(&self, route: Route) -> u32 {
        self.requests.get(&route).copied().unwrap_or(0)
    }
}

/// Where the archive's bytes come from: memory for tests, a file for the benchmark.
#[derive(Clone, Debug)]
pub enum ArchiveSource {
    Bytes(Bytes),
    File(PathBuf),
}

impl ArchiveSource {
    fn len(&self) -> u64 {
        match self {
            ArchiveSource::Bytes(b) => b.len() as u64,
            ArchiveSource::File(p) => std::fs::metadata(p).expect("archive file").len(),
        }
    }
}

impl From<Vec<u8>> for ArchiveSource {
    fn from(v: Vec<u8>) -> Self {
        ArchiveSource::Bytes(Bytes::from(v))
    }
}

impl From<PathBuf> for ArchiveSource {
    fn from(p: PathBuf) -> Self {
        ArchiveSource::File(p)
    }
}

/// One backup in the list, as the database API shows it.
#[derive(Clone, Debug)]
pub struct FakeBackup {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub status: String,
    /// `None` is sent as `null`.
    pub size: Option<u64>,
    pub method: String,
}

impl FakeBackup {
    pub fn new(id: &str, status: &str, created_at: &str, size: Option<u64>) -> FakeBackup {
        let stamp: String = created_at
            .chars()
            .filter(char::is_ascii_digit)
            .take(14)
            .collect();
        FakeBackup {
            id: id.into(),
            name: format!("{stamp}_{RESOURCE_ID}"),
            created_at: created_at.into(),
            started_at: (status != "scheduled").then(|| created_at.into()),
            status: status.into(),
            size,
            method: "periodic".into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "name": self.name,
            "size": self.size,
            "status": self.status,
            "database_id": "5f1e2d3c4b5a69788796a5b4",
            "method": self.method,
            "type": "postgresql",
        })
    }
}

/// What the fake serves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub api_token: String,
    pub app: String,
    pub archive: ArchiveSource,
    /// Newest first, as Scalingo lists them. `None`: the realistic default list.
    pub backups: Option<Vec<FakeBackup>>,
}

impl FakeConfig {
    pub fn new(archive: impl Into<ArchiveSource>) -> FakeConfig {
        FakeConfig {
            api_token: API_TOKEN.into(),
            app: APP.into(),
            archive: archive.into(),
            backups: None,
        }
    }
}

impl Default for FakeConfig {
    /// A small archive holding a fake custom-format dump.
    fn default() -> Self {
        let name = format!("20261123041000_{RESOURCE_ID}");
        FakeConfig::new(archive_bytes(
            &format!("{name}.pgsql"),
            &fake_dump(64 * 1024),
        ))
    }
}

/// A newer running backup above the done one to restore, an older done one and an error one.
pub fn default_backups(archive_len: u64) -> Vec<FakeBackup> {
    vec![
        FakeBackup::new(
            RUNNING_BACKUP_ID,
            "running",
            "2026-11-24T05:10:00.000+01:00",
            Some(0),
        ),
        FakeBackup::new(
            DONE_BACKUP_ID,
            "done",
            "2026-11-23T05:10:00.000+01:00",
            Some(archive_len),
        ),
        FakeBackup::new(
            OLDER_DONE_BACKUP_ID,
            "done",
            "2026-11-22T05:10:00.000+01:00",
            Some(archive_len),
        ),
        FakeBackup::new(
            ERROR_BACKUP_ID,
            "error",
            "2026-11-21T05:10:00.000+01:00",
            None,
        ),
    ]
}

struct Inner {
    backups: Vec<FakeBackup>,
    archive: ArchiveSource,
    faults: Faults,
    records: Records,
    bearers: HashSet<String>,
    db_tokens: HashSet<String>,
    download_tokens: HashSet<String>,
    counter: u64,
}

struct Shared {
    origin: String,
    api_token: String,
    app: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake. Stops when dropped.
pub struct FakeScalingo {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeScalingo {
    pub fn start(cfg: FakeConfig) -> FakeScalingo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let backups = cfg
            .backups
            .clone()
            .unwrap_or_else(|| default_backups(cfg.archive.len()));
        let shared = Arc::new(Shared {
            origin,
            api_token: cfg.api_token,
            app: cfg.app,
            inner: Mutex::new(Inner {
                backups,
                archive: cfg.archive,
                faults: Faults::default(),
                records: Records::default(),
                bearers: HashSet::new(),
                db_tokens: HashSet::new(),
                download_tokens: HashSet::new(),
                counter: 0,
            }),
        });
        let (tx, rx) = oneshot::channel();
        let app = router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("fake-scalingo".into())
            .spawn(move || serve(listener, app, rx))
            .expect("spawn the fake's thread");
        FakeScalingo {
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the origin of all three hosts.
    pub fn url(&self) -> String {
        self.shared.origin.clone()
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            auth: self.url(),
            api: self.url(),
            db: self.url(),
        }
    }

    /// A client for the configured app and token.
    pub fn client(&self) -> ScalingoClient {
        self.client_for(&self.shared.app, &self.shared.api_token)
    }

    pub fn client_for(&self, app: &str, api_token: &str) -> ScalingoClient {
        ScalingoClient::new(self.endpoints(), app.into(), Secret::new(api_token))
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Changes some switches, keeping the others.
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.shared.lock().faults);
    }

    pub fn add_backup(&self, backup: FakeBackup) {
        self.shared.lock().backups.push(backup);
    }

    pub fn set_backups(&self, backups: Vec<FakeBackup>) {
        self.shared.lock().backups = backups;
    }

    pub fn set_archive(&self, archive: impl Into<ArchiveSource>) {
        self.shared.lock().archive = archive.into();
    }

    pub fn archive_len(&self) -> u64 {
        self.shared.lock().archive.len()
    }

    pub fn records(&self) -> Records {
        self.shared.lock().records.clone()
    }

    pub fn reset_records(&self) {
        self.shared.lock().records = Records::default();
    }

    /// A download URL for `backup_id` as the archive route would give it (with a valid token).
    pub fn issue_download_url(&self, backup_id: &str) -> String {
        issue_download_url(&self.shared, backup_id)
    }
}

impl Drop for FakeScalingo {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: std::net::TcpListener, app: Router, stop: oneshot::Receiver<()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the fake's runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        tokio::select! {
            r = axum::serve(listener, app) => r.expect("the fake's server"),
            _ = stop => {}
        }
    });
    // Stalled downloads would keep a graceful shutdown waiting forever.
    rt.shutdown_background();
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/tokens/exchange", post(exchange))
        .route("/v1/apps/{app}/addons", get(addons))
        .route("/v1/apps/{app}/addons/{addon_id}/token", post(addon_token))
        .route("/api/databases/{addon_id}/backups", get(backups))
        .route(
            "/api/databases/{addon_id}/backups/{backup_id}/archive",
            get(archive),
        )
        .route(
            "/api/databases/{addon_id}/backups/{backup_id}/download",
            get(download),
        )
        .with_state(shared)
}

// ---- handlers ----

type S = State<Arc<Shared>>;

/// Records the request and applies the route-wide error fault.
fn enter(inner: &mut Inner, route: Route, headers: &HeaderMap) -> Option<Response> {
    let auth = header_str(headers, header::AUTHORIZATION);
    *inner.records.requests.entry(route).or_default() += 1;
    inner.records.authorizations.push((route, auth));
    if route == Route::Download {
        inner
            .records
            .ranges
            .push(header_str(headers, header::RANGE));
    }
    let fault = inner.faults.error.as_mut()?;
    if fault.route.is_some_and(|r| r != route) {
        return None;
    }
    let mut times = Some(fault.times);
    if !fire(&mut times) {
        return None;
    }
    let (status, retry_after) = (fault.status, fault.retry_after);
    match times {
        Some(t) => fault.times = t,
        None => inner.faults.error = None,
    }
    Some(error_response(status, retry_after))
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).expect("a valid status");
    let mut resp = match status {
        401 => (code, json_body(json!({"error": "invalid token"}))).into_response(),
        404 => (
            code,
            json_body(json!({"resource": "app", "error": "not found"})),
        )
            .into_response(),
        429 => (code, "Retry later").into_response(),
        500 => (
            code,
            json_body(json!({"error": "Internal error occured, we're on it!"})),
        )
            .into_response(),
        502..=504 => (code, "<html><body>Service unavailable</body></html>").into_response(),
        _ => (code, json_body(json!({"error": "fault", "code": status}))).into_response(),
    };
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn json_body(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn not_found(resource: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        json_body(json!({"resource": resource, "error": "not found"})),
    )
        .into_response()
}

fn unauthorized(msg: &str) -> Response {
    (StatusCode::UNAUTHORIZED, json_body(json!({"error": msg}))).into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn bearer_of(headers: &HeaderMap) -> Option<String> {
    header_str(headers, header::AUTHORIZATION)?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

async fn exchange(State(s): S, headers: HeaderMap, body: Bytes) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::Exchange, &headers) {
        return r;
    }
    let expected = format!("Basic {}", base64(format!(":{}", s.api_token).as_bytes()));
    if fire(&mut inner.faults.bad_api_token)
        || header_str(&headers, header::AUTHORIZATION).as_deref() != Some(&expected)
    {
        return unauthorized("invalid credentials");
    }
    if serde_json::from_slice::<Value>(&body).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            json_body(json!({"error": "invalid JSON body"})),
        )
            .into_response();
    }
    inner.counter += 1;
    let token = format!(
        "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJmYWtlIjp{}fQ.c2lnbmF0dXJl",
        inner.counter
    );
    inner.bearers.insert(token.clone());
    json_body(json!({ "token": token }))
}

/// Checks the bearer of an API call; `Some` is the refusal to send.
fn check_bearer(inner: &mut Inner, headers: &HeaderMap) -> Option<Response> {
    let Some(bearer) = bearer_of(headers) else {
        return Some(unauthorized("no token"));
    };
    if !inner.bearers.contains(&bearer) {
        return Some(unauthorized("invalid token"));
    }
    if fire(&mut inner.faults.expire_bearer) {
        inner.bearers.clear();
        return Some(unauthorized("token expired"));
    }
    None
}

fn addon_json(id: &str, provider: &str, provider_name: &str, plan: &str) -> Value {
    json!({
        "id": id,
        "app_id": APP_ID,
        "resource_id": format!("{RESOURCE_ID}_{provider}"),
        "status": "running",
        "provisioned_at": "2024-02-01T10:00:00.000Z",
        "plan": {"id": "5c3f1c4b9e1d2a0011e3f001", "name": plan, "display_name": plan,
                 "price": 0.0, "sku": format!("{provider}:{plan}")},
        "addon_provider": {"id": provider, "name": provider_name,
                           "logo_url": format!("https://cdn.scalingo.com/{provider}.png")},
    })
}

fn app_addons(no_postgres: bool, resource_id: Option<&str>) -> Vec<Value> {
    let mut list = vec![addon_json(
        REDIS_ADDON_ID,
        "redis",
        "Redis",
        "redis-starter-256",
    )];
    if !no_postgres {
        let mut addon = addon_json(
            POSTGRES_ADDON_ID,
            "postgresql",
            "PostgreSQL",
            "postgresql-business-1024",
        );
        if let Some(id) = resource_id {
            addon["resource_id"] = json!(id);
        }
        list.push(addon);
    }
    list
}

async fn addons(State(s): S, UrlPath(app): UrlPath<String>, headers: HeaderMap) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::Addons, &headers) {
        return r;
    }
    if let Some(r) = check_bearer(&mut inner, &headers) {
        return r;
    }
    if app != s.app {
        return not_found("app");
    }
    json_body(json!({ "addons": app_addons(
        inner.faults.no_postgres_addon,
        inner.faults.postgres_resource_id.as_deref(),
    ) }))
}

async fn addon_token(
    State(s): S,
    UrlPath((app, addon_id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::AddonToken, &headers) {
        return r;
    }
    if let Some(r) = check_bearer(&mut inner, &headers) {
        return r;
    }
    if app != s.app {
        return not_found("app");
    }
    let Some(mut addon) = app_addons(
        inner.faults.no_postgres_addon,
        inner.faults.postgres_resource_id.as_deref(),
    )
    .into_iter()
    .find(|a| a["id"] == addon_id.as_str()) else {
        return not_found("addon");
    };
    inner.counter += 1;
    let token = format!(
        "db-token-{}-{:08x}",
        inner.counter,
        inner.counter * 2654435761
    );
    inner.db_tokens.insert(token.clone());
    addon["token"] = json!(token);
    json_body(json!({ "addon": addon }))
}

/// Checks the database token; `Some` is the refusal to send.
fn check_db_token(inner: &Inner, headers: &HeaderMap, addon_id: &str) -> Option<Response> {
    match bearer_of(headers) {
        Some(t) if inner.db_tokens.contains(&t) => {}
        _ => return Some(unauthorized("invalid database token")),
    }
    if addon_id != POSTGRES_ADDON_ID || inner.faults.no_postgres_addon {
        return Some(not_found("database"));
    }
    None
}

async fn backups(State(s): S, UrlPath(addon_id): UrlPath<String>, headers: HeaderMap) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::Backups, &headers) {
        return r;
    }
    if let Some(r) = check_db_token(&inner, &headers, &addon_id) {
        return r;
    }
    let only_unfinished = inner.faults.only_unfinished_backups;
    let list: Vec<Value> = inner
        .backups
        .iter()
        .filter(|b| !(only_unfinished && b.status == "done"))
        .map(FakeBackup::to_json)
        .collect();
    json_body(json!({ "database_backups": list }))
}

async fn archive(
    State(s): S,
    UrlPath((addon_id, backup_id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::Archive, &headers) {
        return r;
    }
    if let Some(r) = check_db_token(&inner, &headers, &addon_id) {
        return r;
    }
    match inner.backups.iter().find(|b| b.id == backup_id) {
        None => return not_found("backup"),
        Some(b) if b.status != "done" => {
            return (
                StatusCode::BAD_REQUEST,
                json_body(json!({"error": "backup is not done", "code": "backup_not_done"})),
            )
                .into_response();
        }
        Some(_) => {}
    }
    drop(inner);
    json_body(json!({ "download_url": issue_download_url(&s, &backup_id) }))
}

fn issue_download_url(s: &Shared, backup_id: &str) -> String {
    let mut inner = s.lock();
    inner.counter += 1;
    let token = format!(
        "dl{:016x}",
        inner.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    );
    inner.download_tokens.insert(token.clone());
    let origin = inner
        .faults
        .download_origin
        .clone()
        .unwrap_or_else(|| s.origin.clone());
    format!("{origin}/api/databases/{POSTGRES_ADDON_ID}/backups/{backup_id}/download?token={token}")
}

/// How the body of one download response misbehaves.
#[derive(Clone, Copy, Debug, Default)]
struct BodyPlan {
    cut_after: Option<u64>,
    short_after: Option<u64>,
    stall_after: Option<u64>,
    bytes_per_second: Option<u64>,
}

async fn download(
    State(s): S,
    UrlPath((_addon_id, backup_id)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut inner = s.lock();
    if let Some(r) = enter(&mut inner, Route::Download, &headers) {
        return r;
    }
    // Like a pre-signed object-store URL: a second authentication mechanism is refused.
    if headers.contains_key(header::AUTHORIZATION) {
        return (
            StatusCode::BAD_REQUEST,
            "Only one auth mechanism allowed: the URL carries its token",
        )
            .into_response();
    }
    if let Some(origin) = inner.faults.redirect_download_to.clone() {
        let token = query.get("token").cloned().unwrap_or_default();
        let location = format!(
            "{origin}/api/databases/{POSTGRES_ADDON_ID}/backups/{backup_id}/download?token={token}"
        );
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    if inner.faults.redirect_download && !query.contains_key("hop") {
        let token = query.get("token").cloned().unwrap_or_default();
        let location = format!(
            "{}/api/databases/{POSTGRES_ADDON_ID}/backups/{backup_id}/download?token={token}&hop=1",
            s.origin
        );
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    let token_ok = query
        .get("token")
        .is_some_and(|t| inner.download_tokens.contains(t));
    if !token_ok || fire(&mut inner.faults.download_forbidden) {
        return (StatusCode::FORBIDDEN, "Request has expired").into_response();
    }
    if !inner
        .backups
        .iter()
        .any(|b| b.id == backup_id && b.status == "done")
    {
        return not_found("backup");
    }
    let source = inner.archive.clone();
    let len = source.len();
    let range = (!inner.faults.ignore_range)
        .then(|| header_str(&headers, header::RANGE))
        .flatten()
        .and_then(|r| parse_range(&r));
    let plan = BodyPlan {
        cut_after: fire_with(&mut inner.faults.cut_after),
        short_after: fire_with(&mut inner.faults.short_body),
        stall_after: fire_with(&mut inner.faults.stall_after),
        bytes_per_second: inner.faults.bytes_per_second,
    };
    drop(inner);
    let (status, start) = match range {
        Some(start) if start >= len => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
        Some(start) => (StatusCode::PARTIAL_CONTENT, start),
        None => (StatusCode::OK, 0),
    };
    let body = body_stream(s.clone(), source, start, len, plan);
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len - start));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-gzip"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", len - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    resp
}

/// `bytes=N-` or `bytes=N-M` → N (the fake always sends to the end).
fn parse_range(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn body_stream(
    s: Arc<Shared>,
    source: ArchiveSource,
    start: u64,
    len: u64,
    plan: BodyPlan,
) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(produce(s, source, start, len, plan, tx));
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn open_source(
    source: &ArchiveSource,
    start: u64,
) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
    Ok(match source {
        ArchiveSource::Bytes(b) => {
            let mut c = std::io::Cursor::new(b.clone());
            c.set_position(start);
            Box::new(c)
        }
        ArchiveSource::File(p) => {
            let mut f = tokio::fs::File::open(p).await?;
            f.seek(io::SeekFrom::Start(start)).await?;
            Box::new(f)
        }
    })
}

/// Feeds the response body, applying the plan's faults; counts the bytes served.
async fn produce(
    s: Arc<Shared>,
    source: ArchiveSource,
    start: u64,
    len: u64,
    plan: BodyPlan,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut reader = match open_source(&source, start).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let limit = [plan.cut_after, plan.short_after, plan.stall_after]
        .into_iter()
        .flatten()
        .min()
        .map_or(len - start, |k| k.min(len - start));
    let tick = Duration::from_millis(50);
    // A throttle sends a twentieth of its rate per 50 ms tick: capping that chunk (as this did
    // at 64 KiB) would cap every rate at 1.3 MB/s.
    let chunk_max = plan
        .bytes_per_second
        .map_or(64 * 1024, |bps| (bps / 20).clamp(1, 16 << 20));
    let mut sent = 0u64;
    let mut buf = vec![0u8; chunk_max as usize];
    while sent < limit {
        let want = chunk_max.min(limit - sent) as usize;
        let n = match reader.read(&mut buf[..want]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if tx
            .send(Ok(Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            return;
        }
        sent += n as u64;
        s.lock().records.bytes_served += n as u64;
        if plan.bytes_per_second.is_some() {
            tokio::time::sleep(tick).await;
        }
    }
    if plan.stall_after.is_some_and(|k| sent >= k.min(len - start)) && sent < len - start {
        // Keep the connection open and silent until the client gives up.
        tx.closed().await;
    } else if plan.cut_after.is_some_and(|k| sent >= k) && sent < len - start {
        let _ = tx
            .send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fake: connection cut",
            )))
            .await;
    }
    // A short body just ends: hyper closes the connection short of its Content-Length.
}

// ---- archives and dumps ----

/// Bytes that pass for a `pg_dump -Fc` file: the `PGDMP` magic, then deterministic noise
/// (noise does not compress, so archive sizes stay close to the dump's).
pub fn fake_dump(len: usize) -> Vec<u8> {
    let mut out = b"PGDMP\x01\x0e\x00\x04\x08\x08\x01".to_vec();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len.max(5));
    out
}

/// A `.tar.gz` holding one regular file `member` (e.g. `NAME.pgsql` or `./NAME.pgsql`),
/// as Scalingo builds its backups.
pub fn archive_bytes(member: &str, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_archive_to(&mut out, member, &mut &contents[..], contents.len() as u64)
        .expect("in-memory archive");
    out
}

/// The archive Scalingo would make of the dump at `dump`: one `NAME.pgsql` entry.
pub fn make_archive(dump: &Path, name: &str) -> Vec<u8> {
    archive_bytes(
        &format!("{name}.pgsql"),
        &std::fs::read(dump).expect("read dump"),
    )
}

/// Like [`make_archive`], streamed to `dest` (for dumps too large for memory).
pub fn write_archive(dump: &Path, member: &str, dest: &Path) -> io::Result<u64> {
    let mut input = std::fs::File::open(dump)?;
    let len = input.metadata()?.len();
    let out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    write_archive_to(out, member, &mut input, len)?;
    Ok(std::fs::metadata(dest)?.len())
}

fn write_archive_to(
    out: impl Write,
    member: &str,
    contents: &mut impl io::Read,
    len: u64,
) -> io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(1_795_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    // `append_data` would strip a leading `./`; Scalingo's archives may carry one.
    let name = member.as_bytes();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    tar.append(&header, contents)?;
    tar.into_inner()?.finish()?.flush()
}

/// Standard base64 with padding (the fake checks `Authorization: Basic` byte for byte).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_known_values() {
    assert_eq!(base64(b":tk"), "OnRr");
    assert_eq!(base64(b":t"), "OnQ=");
    assert_eq!(base64(b":"), "Og==");
}
