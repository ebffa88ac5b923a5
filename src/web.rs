//! The Procfile's `web` process: a health check and a status page.
//!
//! Scalingo will not deploy an app without a `web` process, and a health check is useful
//! while it runs, but three fixed GET routes do not justify an HTTP stack in the release
//! binary, so this is a deliberately small HTTP/1.1 server on plain tokio. Every response
//! closes its connection, which removes keep-alive and pipelining from the problem.
//!
//! Routes: `GET /health` → `{"ok":true}`; `GET /` and `GET /status` (to the bearer of
//! `WEB_TOKEN` only) → the status closure's
//! JSON. `HEAD` is answered like `GET` without a body.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Builds the body of `GET /status`. Called once per request on a runtime thread, so it
/// must be cheap and must not block (read a snapshot, do not query anything).
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// How long a client may take to send its request head, and then to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read before answering 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long to keep reading (and discarding) after the response, see [`handle`].
const LINGER: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
struct Limits {
    io_timeout: Duration,
    max_head: usize,
}

const LIMITS: Limits = Limits {
    io_timeout: IO_TIMEOUT,
    max_head: MAX_HEAD_BYTES,
};

/// Answers HTTP on `listener` until `shutdown` completes, then stops accepting and returns.
///
/// Each connection runs in its own task under a timeout and a size cap, so a slow or huge
/// client delays nobody; connections already accepted finish on their own (within the
/// timeouts) after `serve_guarded` returns. Failed accepts that only concern one client are
/// skipped, and running out of file descriptors or memory is waited out; any other accept
/// error means the listener itself is unusable and is returned.
///
/// The status (which names the production app's backups, the target and
/// the state directory) only for `Authorization: Bearer <token>` (401 otherwise), and not at
/// all (404) when `token` is `None`. `/health` stays open.
pub async fn serve_guarded(
    listener: TcpListener,
    status: StatusFn,
    token: Option<crate::secret::Secret>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(
        listener,
        status,
        Arc::new(Gate::Bearer(token)),
        shutdown,
        LIMITS,
    )
    .await
}

/// Who may read the status.
enum Gate {
    #[cfg(test)]
    Open,
    Bearer(Option<crate::secret::Secret>),
}

async fn serve_with(
    listener: TcpListener,
    status: StatusFn,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // Checked first so that a flood of connections cannot starve shutdown.
            biased;
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let status = Arc::clone(&status);
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &status, &gate, limits).await {
                        tracing::debug!(%peer, error = %e, "web: connection ended with an error");
                    }
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

async fn handle(
    mut stream: TcpStream,
    status: &StatusFn,
    gate: &Gate,
    limits: Limits,
) -> io::Result<()> {
    let response = match read_head(&mut stream, limits).await? {
        Head::Complete(head) => route(&head, status, gate),
        Head::TooLarge => Response::error(431, "request head larger than 16 KiB"),
        Head::TimedOut => Response::error(408, "request head not received in time"),
        // Nothing to answer: a port scan, a TCP health probe, or a client that gave up.
        Head::Abandoned => return Ok(()),
    };
    let bytes = response.into_bytes();
    tokio::time::timeout(limits.io_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client did not take the response"))??;
    // Closing with unread bytes in the socket (a body we ignored) sends an RST, which can
    // make the client drop the response it has not read yet; so linger briefly after the
    // FIN. Whatever happens here, the response is already out.
    let _ = tokio::time::timeout(limits.io_timeout.min(LINGER), drain(&mut stream)).await;
    Ok(())
}

/// Reads and discards what the client still sends, until it closes or a cap is reached.
async fn drain(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n);
    }
    Ok(())
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    TimedOut,
    Abandoned,
}

/// Reads up to the blank line that ends the request head. The deadline covers the whole
/// head, not each read, so a client trickling a byte at a time is still cut off.
async fn read_head(stream: &mut TcpStream, limits: Limits) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Head::Abandoned);
            }
            let searched_from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find_head_end(&buf[searched_from..]) {
                let end = searched_from + end;
                if end > limits.max_head {
                    return Ok(Head::TooLarge);
                }
                buf.truncate(end);
                return Ok(Head::Complete(std::mem::take(&mut buf)));
            }
            if buf.len() > limits.max_head {
                return Ok(Head::TooLarge);
            }
        }
    };
    match tokio::time::timeout(limits.io_timeout, read).await {
        Ok(head) => head,
        Err(_) if buf.is_empty() => Ok(Head::Abandoned),
        Err(_) => Ok(Head::TimedOut),
    }
}

/// Where the head ends (just past its blank line). Bare `\n` line ends are accepted, as
/// RFC 9112 §2.2 allows.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if buf[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

impl Gate {
    /// The answer to a request for the status that this gate does not let through.
    fn refuses(&self, head: &[u8]) -> Option<Response> {
        match self {
            #[cfg(test)]
            Gate::Open => None,
            Gate::Bearer(None) => Some(Response::error(
                404,
                "the status is not served: set WEB_TOKEN to serve it to `Authorization: Bearer $WEB_TOKEN`",
            )),
            Gate::Bearer(Some(token)) => {
                if bearer(head).is_some_and(|b| same_secret(b, token.expose())) {
                    None
                } else {
                    Some(
                        Response::error(401, "the status needs `Authorization: Bearer $WEB_TOKEN`")
                            .with_header("WWW-Authenticate: Bearer"),
                    )
                }
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` in `head`, if any.
fn bearer(head: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(head).ok()?;
    text.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = value.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// Compares in a time that does not depend on where the bytes first differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(head: &[u8], status: &StatusFn, gate: &Gate) -> Response {
    let Some((method, path)) = parse_request_line(head) else {
        return Response::error(
            400,
            "malformed request line, expected `GET /health HTTP/1.1`",
        );
    };
    let body = match path {
        "/health" => serde_json::json!({ "ok": true }),
        // A bug in the status code must not take the connection down unanswered.
        "/" | "/status" if gate.refuses(head).is_some() => {
            return gate.refuses(head).expect("checked");
        }
        "/" | "/status" => match std::panic::catch_unwind(AssertUnwindSafe(|| status())) {
            Ok(body) => body,
            Err(_) => return Response::error(500, "building the status failed, see the logs"),
        },
        _ => return Response::error(404, "no such path; try /health or /status"),
    };
    match method {
        "GET" => Response::json(200, &body),
        "HEAD" => Response::json(200, &body).without_body(),
        _ => Response::error(405, "only GET and HEAD are served").with_header("Allow: GET, HEAD"),
    }
}

/// `METHOD SP target SP HTTP/1.x`, returning the method and the path without its query.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    // Absolute form (`GET http://host/health`) is what a proxy may send.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

struct Response {
    status: u16,
    extra_header: Option<&'static str>,
    body: Vec<u8>,
    send_body: bool,
}

impl Response {
    fn json(status: u16, body: &serde_json::Value) -> Self {
        Response {
            status,
            extra_header: None,
            body: body.to_string().into_bytes(),
            send_body: true,
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    fn without_body(mut self) -> Self {
        self.send_body = false;
        self
    }

    fn with_header(mut self, header: &'static str) -> Self {
        self.extra_header = Some(header);
        self
    }

    fn into_bytes(self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            401 => "Unauthorized",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            _ => "",
        };
        // HEAD keeps the Content-Length GET would have sent (RFC 9110 §8.6).
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.body.len(),
        )
        .into_bytes();
        if let Some(header) = self.extra_header {
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if self.send_body {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status: StatusFn = Arc::new(|| serde_json::json!({ "state": "idle", "runs": 3 }));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(
            listener,
            status,
            Arc::new(Gate::Open),
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Sends `raw` and returns everything the server writes before closing.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("server closes the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn split(response: &str) -> (&str, &str, &str) {
        let (head, body) = response
            .split_once("\r\n\r\n")
            .expect("a complete response");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status_line, headers, body)
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let server = start(LIMITS).await;
        let res = exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (status, headers, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, r#"{"ok":true}"#);
        assert!(
            headers.contains("Content-Type: application/json"),
            "{headers}"
        );
        assert!(headers.contains("Content-Length: 11"), "{headers}");
        assert!(headers.contains("Connection: close"), "{headers}");
    }

    #[tokio::test]
    async fn root_and_status_answer_the_closure_json() {
        let server = start(LIMITS).await;
        for path in ["/", "/status", "/status?verbose=1"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let res = exchange(server.addr, req.as_bytes()).await;
            let (status, headers, body) = split(&res);
            assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json, serde_json::json!({ "state": "idle", "runs": 3 }));
            assert!(headers.contains(&format!("Content-Length: {}", body.len())));
        }
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        let server = start(LIMITS).await;
        let res = exchange(server.addr, b"HEAD /health HTTP/1.0\r\n\r\n").await;
        let (status, headers, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("Content-Length: 11"));
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_other_methods_405() {
        let server = start(LIMITS).await;
        let res = exchange(server.addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        let (status, _, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert!(body.contains("/health"), "{body}");

        let req = b"POST /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let res = exchange(server.addr, req).await;
        let (status, headers, _) = split(&res);
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(headers.contains("Allow: GET, HEAD"));
    }

    #[tokio::test]
    async fn unparsable_request_line_is_400() {
        let server = start(LIMITS).await;
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"GET /health\r\n\r\n",
            b"GET /health HTTP/2.0\r\n\r\n",
            b"GET health HTTP/1.1\r\n\r\n",
            b"GET  /health HTTP/1.1\r\n\r\n",
            b"G\xffT /health HTTP/1.1\r\n\r\n",
        ] {
            let res = exchange(server.addr, raw).await;
            assert_eq!(split(&res).0, "HTTP/1.1 400 Bad Request", "{raw:?}");
        }
    }

    #[tokio::test]
    async fn bare_newlines_and_absolute_targets_are_accepted() {
        let server = start(LIMITS).await;
        let res = exchange(server.addr, b"GET /health HTTP/1.1\nHost: x\n\n").await;
        assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
        let res = exchange(server.addr, b"GET http://x:80/health HTTP/1.1\r\n\r\n").await;
        assert_eq!(split(&res).2, r#"{"ok":true}"#);
    }

    #[tokio::test]
    async fn oversized_head_is_refused_with_431() {
        let server = start(LIMITS).await;
        let mut raw = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
        raw.extend_from_slice(b"\r\n\r\n");
        let res = exchange(server.addr, &raw).await;
        assert_eq!(
            split(&res).0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );

        // A head of exactly the cap is still read.
        let mut raw = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES - raw.len() - 4));
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), MAX_HEAD_BYTES);
        let res = exchange(server.addr, &raw).await;
        assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn slow_client_times_out_without_blocking_others() {
        let server = start(Limits {
            io_timeout: Duration::from_millis(300),
            max_head: MAX_HEAD_BYTES,
        })
        .await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /hea").await.unwrap();

        // Served while the slow one is still pending.
        let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(split(&res).0, "HTTP/1.1 200 OK");

        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut out))
            .await
            .expect("the slow client is cut off")
            .unwrap();
        assert_eq!(split(&out).0, "HTTP/1.1 408 Request Timeout");

        // A connection that never sends anything is closed without a word.
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
            .await
            .expect("the silent client is cut off")
            .unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_status_closure_gives_500() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status: StatusFn = Arc::new(|| panic!("status snapshot poisoned"));
        tokio::spawn(serve_with(
            listener,
            status,
            Arc::new(Gate::Open),
            std::future::pending(),
            LIMITS,
        ));
        let res = exchange(addr, b"GET /status HTTP/1.1\r\n\r\n").await;
        assert_eq!(split(&res).0, "HTTP/1.1 500 Internal Server Error");
        let res = exchange(addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn shutdown_ends_serve_and_closes_the_listener() {
        let mut server = start(LIMITS).await;
        let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(split(&res).0, "HTTP/1.1 200 OK");

        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut server.task)
            .await
            .expect("serve returns once shutdown completes")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
