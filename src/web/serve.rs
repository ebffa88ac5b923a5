//! The accept loop of `replicator web`: hyper's HTTP/1.1 connections under the caps a server
//! reachable by anyone needs, and tower's layers around the routes.
//!
//! - the request head must arrive within [`Limits::head_timeout`] (hyper's header read
//!   timeout). A client that sent part of a head by then gets `408 Request Timeout`, written
//!   here on the socket hyper hands back (hyper itself only closes the connection); one that
//!   sent nothing is closed silently, as an idle connection. The head must fit
//!   [`Limits::max_head`] (hyper answers 431 beyond);
//! - a body is refused past [`Limits::max_body`] (413; no route takes one);
//! - a route answers within [`Limits::request_timeout`] (408), at most
//!   [`Limits::max_in_flight`] at a time (the others wait their turn), and a panic in one
//!   becomes a 500, never a dropped connection;
//! - one request per connection (no keep-alive), and no connection lives longer than
//!   [`Limits::connection_deadline`], so a client that never reads its response holds nothing
//!   for long; at most [`Limits::max_connections`] are open (further clients wait in the
//!   listen backlog).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower::util::BoxCloneService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// The caps of the server. The defaults are the web process's.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send its request head.
    pub head_timeout: Duration,
    /// The largest request head (request line and headers); hyper's read buffer, which it
    /// requires to be at least 8 KiB.
    pub max_head: usize,
    /// The largest request body.
    pub max_body: usize,
    /// How long a route may take to answer.
    pub request_timeout: Duration,
    /// Routes answering at the same time.
    pub max_in_flight: usize,
    /// Connections open at the same time.
    pub max_connections: usize,
    /// The longest a connection lives, from accept to close (head, answer, the client taking it).
    pub connection_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: Duration::from_secs(10),
            max_head: 16 * 1024,
            max_body: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            max_in_flight: 32,
            max_connections: 256,
            connection_deadline: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; connections already accepted
/// finish on their own (within the deadline). Failed accepts that concern one client are
/// skipped, running out of file descriptors or memory is waited out; any other accept error
/// means the listener is unusable and is returned.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> io::Result<()> {
    let service = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panicked))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(RequestBodyLimitLayer::new(limits.max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(ConcurrencyLimitLayer::new(limits.max_in_flight))
        .service(router);
    // Boxed, the service and its futures are `Unpin`: what hyper needs to hand the socket back
    // after a head timeout (`poll_without_shutdown`, `into_parts`).
    let service = TowerToHyperService::new(BoxCloneService::new(service));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(false);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // Checked first so that a flood of connections cannot starve shutdown.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            permit = Arc::clone(&open).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let mut connection = http.serve_connection(TokioIo::new(stream), service.clone());
                let deadline = limits.connection_deadline;
                let head_timeout = limits.head_timeout;
                tokio::spawn(async move {
                    let served = async {
                        let result =
                            std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await;
                        let parts = connection.into_parts();
                        let mut stream = parts.io.into_inner();
                        match result {
                            Ok(()) => {}
                            Err(e) if e.is_timeout() && !parts.read_buf.is_empty() => {
                                tracing::debug!(%peer, "web: request head incomplete after {head_timeout:?}: 408");
                                request_timeout(&mut stream, head_timeout).await;
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "web: connection ended with an error");
                            }
                        }
                        // The end of what was written (a response, hyper's 400 or 431, the
                        // 408), as hyper closes: a close with unread bytes alone would reset
                        // the connection before the client read it.
                        let _ = stream.shutdown().await;
                    };
                    if tokio::time::timeout(deadline, served).await.is_err() {
                        tracing::debug!(%peer, "web: connection cut after {deadline:?}");
                    }
                    drop(permit);
                });
            }
            Err(e) if is_client_error(&e) => {}
            Err(e) if is_resource_exhaustion(&e) => {
                // Accepting again at once would fail the same way in a busy loop.
                tracing::warn!(error = %e, "web: cannot accept connections, retrying in 1 s");
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("web: the listening socket failed to accept a connection: {e}"),
                ));
            }
        }
    }
}

/// The answer to a client whose request head did not arrive in time: `408`, then the
/// connection closed. What the client sends meanwhile is read and dropped for a moment before
/// the close, so that the close does not reset the connection before the client read the 408.
async fn request_timeout(stream: &mut TcpStream, head_timeout: Duration) {
    let body = serde_json::json!({
        "error": format!(
            "the request head did not arrive within {} s; send the request line and headers at once",
            head_timeout.as_secs_f64()
        )
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Half-closed: the client has its 408 and its end of file.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A route panicked: the client gets a 500, the process goes on.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("web: a route panicked while answering; see the line above");
    super::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "building the response failed, see the logs",
    )
}

/// The peer went away between the handshake and `accept`: nothing is wrong with us.
fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
