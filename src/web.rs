//! The Procfile's `web` process: its routes and their responses.
//!
//! Routes: `GET /health` → `{"ok":true}`, open to anyone (Scalingo's health check). To the
//! bearer of `WEB_TOKEN` only (`Authorization: Bearer <token>`, or a browser's Basic prompt
//! with the token as password): `GET /` the status page (HTML made here, no script),
//! `GET /status` the status JSON, `GET /metrics` the Prometheus text exposition. Without
//! `WEB_TOKEN` those three are not served (404). `HEAD` is answered like `GET`, without a body.
//!
//! What each route shows is rendered by the views (`status/`) through a [`Render`] closure,
//! from one snapshot of the state; the HTTP plumbing (timeouts, caps, the accept loop) is
//! [`serve`]'s.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use base64::Engine;

mod serve;
#[cfg(test)]
mod tests;

pub use serve::Limits;

/// What a protected route shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// `/status`: the `status --json` object (`docs/status-json.md`), as JSON text.
    StatusJson,
    /// `/metrics`: Prometheus' text exposition format 0.0.4.
    Metrics,
    /// `/`: the status page, a whole HTML document.
    Page,
}

/// Renders a view from the current snapshot. Called once per request on a runtime thread, so
/// it must be cheap and must not block (read a snapshot, query nothing).
pub type Render = Arc<dyn Fn(View) -> String + Send + Sync>;

/// Answers HTTP on `listener` until `shutdown` completes, then stops accepting and returns.
/// The status, page and metrics (which name the production app's backups, the target and the
/// state directory) go only to the holder of `token`, and not at all (404) when `token` is
/// `None`; `/health` stays open.
pub async fn serve_guarded(
    listener: tokio::net::TcpListener,
    render: Render,
    token: Option<crate::secret::Secret>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve::serve(
        listener,
        routes(render, Gate::Token(token)),
        shutdown,
        Limits::default(),
    )
    .await
}

/// Who may read the protected routes.
enum Gate {
    #[cfg(test)]
    Open,
    Token(Option<crate::secret::Secret>),
}

struct App {
    render: Render,
    gate: Gate,
}

type RouteState = State<Arc<App>>;

fn routes(render: Render, gate: Gate) -> Router {
    let app = Arc::new(App { render, gate });
    Router::new()
        .route("/health", only_get(get(health)))
        .route("/", only_get(get(page)))
        .route("/status", only_get(get(status)))
        .route("/metrics", only_get(get(metrics)))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such path; try /health, / (the status page), /status or /metrics",
            )
        })
        .with_state(app)
}

/// GET (and with it HEAD) only; any other method gets 405 with `Allow`.
fn only_get(route: MethodRouter<Arc<App>>) -> MethodRouter<Arc<App>> {
    route.fallback(|| async {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    })
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health() -> Response {
    json(StatusCode::OK, r#"{"ok":true}"#.to_string())
}

async fn status(State(app): RouteState, headers: HeaderMap) -> Response {
    if let Some(refused) = app.gate.refuses(&headers, Challenge::Bearer) {
        return refused;
    }
    json(StatusCode::OK, (app.render)(View::StatusJson))
}

async fn metrics(State(app): RouteState, headers: HeaderMap) -> Response {
    if let Some(refused) = app.gate.refuses(&headers, Challenge::Bearer) {
        return refused;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (app.render)(View::Metrics),
    )
        .into_response()
}

async fn page(State(app): RouteState, headers: HeaderMap) -> Response {
    // A browser asked with `Basic` prompts for the token (as password); a program sends Bearer.
    if let Some(refused) = app.gate.refuses(&headers, Challenge::Basic) {
        return refused;
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing but the document's own styles and inline SVG: no script may run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        (app.render)(View::Page),
    )
        .into_response()
}

/// The `WWW-Authenticate` a refusal carries.
#[derive(Clone, Copy)]
enum Challenge {
    Bearer,
    Basic,
}

impl Gate {
    /// The answer to a request this gate does not let through.
    fn refuses(&self, headers: &HeaderMap, challenge: Challenge) -> Option<Response> {
        let token = match self {
            #[cfg(test)]
            Gate::Open => return None,
            Gate::Token(None) => {
                return Some(error(
                    StatusCode::NOT_FOUND,
                    "not served: set WEB_TOKEN to serve it to `Authorization: Bearer $WEB_TOKEN`",
                ));
            }
            Gate::Token(Some(token)) => token,
        };
        if presented(headers).is_some_and(|p| same_secret(&p, token.expose())) {
            return None;
        }
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this needs `Authorization: Bearer $WEB_TOKEN` (a browser: any user name, WEB_TOKEN as password)",
        );
        let value = match challenge {
            Challenge::Bearer => "Bearer",
            Challenge::Basic => r#"Basic realm="replicator", charset="UTF-8""#,
        };
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        Some(r)
    }
}

/// The token a request presents: `Bearer <token>`, or the password of `Basic
/// base64(user:password)`.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

/// Compares in a time that does not depend on where the bytes first differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
