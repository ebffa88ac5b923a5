//! The web process over real sockets: what a client sends, byte for byte, and what it gets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

fn render_fixed() -> Render {
    Arc::new(|view| match view {
        View::StatusJson => serde_json::json!({ "state": "idle", "runs": 3 }).to_string(),
        View::Metrics => "# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n".to_string(),
        View::Page => "<!doctype html><title>replicator</title>".to_string(),
    })
}

async fn start_with(render: Render, gate: Gate, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve::serve(
        listener,
        routes(render, gate),
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

async fn start(limits: Limits) -> Server {
    start_with(render_fixed(), Gate::Open, limits).await
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

/// Status line, headers (lower-cased names, as hyper writes them) and body.
fn split(response: &str) -> (&str, String, &str) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not a complete response: {response:?}"));
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status_line, headers.to_ascii_lowercase(), body)
}

#[tokio::test]
async fn health_answers_ok_and_closes() {
    let server = start(Limits::default()).await;
    let res = exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, headers, body) = split(&res);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"ok":true}"#);
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    assert!(headers.contains("content-length: 11"), "{headers}");
    assert!(headers.contains("connection: close"), "{headers}");
    assert!(headers.contains("cache-control: no-store"), "{headers}");
}

#[tokio::test]
async fn status_metrics_and_page_answer_their_view() {
    let server = start(Limits::default()).await;
    for (path, content_type, want) in [
        ("/status", "application/json", r#""runs":3"#),
        ("/status?verbose=1", "application/json", r#""runs":3"#),
        ("/metrics", "text/plain; version=0.0.4", "x_up 1"),
        ("/", "text/html; charset=utf-8", "<title>replicator</title>"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let res = exchange(server.addr, req.as_bytes()).await;
        let (status, headers, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert!(body.contains(want), "{path}: {body}");
        assert!(
            headers.contains(&format!("content-type: {content_type}")),
            "{path}: {headers}"
        );
        assert!(
            headers.contains(&format!("content-length: {}", body.len())),
            "{path}: {headers}"
        );
    }
}

#[tokio::test]
async fn head_has_headers_but_no_body() {
    let server = start(Limits::default()).await;
    let res = exchange(server.addr, b"HEAD /health HTTP/1.0\r\n\r\n").await;
    let (status, headers, body) = split(&res);
    assert!(status.ends_with(" 200 OK"), "{status}");
    assert!(headers.contains("content-length: 11"), "{headers}");
    assert_eq!(body, "");
}

#[tokio::test]
async fn unknown_path_is_404_and_other_methods_405() {
    let server = start(Limits::default()).await;
    let res = exchange(server.addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
    let (status, _, body) = split(&res);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(
        body.contains("/health") && body.contains("/metrics"),
        "{body}"
    );

    let req = b"POST /health HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    let res = exchange(server.addr, req).await;
    let (status, headers, _) = split(&res);
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("allow: get, head"), "{headers}");
}

#[tokio::test]
async fn unparsable_request_line_is_400() {
    let server = start(Limits::default()).await;
    for raw in [
        &b"garbage\r\n\r\n"[..],
        b"GET /health\r\n\r\n",
        b"GET /health HTTP/2.0\r\n\r\n",
        b"GET  /health HTTP/1.1\r\n\r\n",
        b"G\xffT /health HTTP/1.1\r\n\r\n",
    ] {
        let res = exchange(server.addr, raw).await;
        assert_eq!(split(&res).0, "HTTP/1.1 400 Bad Request", "{raw:?}");
    }
    // A target that is no path never reaches a route.
    let res = exchange(server.addr, b"GET health HTTP/1.1\r\n\r\n").await;
    assert!(!res.contains(" 200 "), "{res}");
}

#[tokio::test]
async fn bare_newlines_and_absolute_targets_are_accepted() {
    let server = start(Limits::default()).await;
    let res = exchange(server.addr, b"GET /health HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
    let res = exchange(server.addr, b"GET http://x:80/health HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&res).2, r#"{"ok":true}"#);
}

#[tokio::test]
async fn oversized_head_is_refused_with_431_and_a_body_past_the_cap_with_413() {
    let limits = Limits::default();
    let server = start(limits).await;
    let mut raw = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', limits.max_head + 1));
    raw.extend_from_slice(b"\r\n\r\n");
    let res = exchange(server.addr, &raw).await;
    assert_eq!(
        split(&res).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    // A head well within the cap is read.
    let mut raw = b"GET /health HTTP/1.1\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', limits.max_head - 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    let res = exchange(server.addr, &raw).await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");

    let req = format!(
        "GET /health HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        limits.max_body + 1
    );
    let res = exchange(server.addr, req.as_bytes()).await;
    assert_eq!(split(&res).0, "HTTP/1.1 413 Payload Too Large");
}

#[tokio::test]
async fn slow_client_is_cut_off_without_blocking_others() {
    let server = start(Limits {
        head_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /hea").await.unwrap();

    // Served while the slow one is still pending.
    let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");

    // Told why before the close: 408, with the reason as JSON.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
        .await
        .expect("the slow client is cut off")
        .unwrap();
    let res = String::from_utf8(out).unwrap();
    let (status, headers, body) = split(&res);
    assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{res}");
    assert!(headers.contains("connection: close"), "{headers}");
    assert!(
        headers.contains(&format!("content-length: {}", body.len())),
        "{headers}"
    );
    assert!(body.contains("did not arrive within 0.3 s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A connection that never sends anything is closed without a word.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out))
        .await
        .expect("the silent client is cut off")
        .ok();
    assert!(out.is_empty());
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_at_the_deadline() {
    let server = start(Limits {
        connection_deadline: Duration::from_millis(500),
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    // Holds the only connection slot: sends a request, never reads, never closes.
    let mut hog = TcpStream::connect(server.addr).await.unwrap();
    hog.write_all(b"GET /hea").await.unwrap();
    let started = std::time::Instant::now();
    let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the slot was free"
    );
    drop(hog);
}

#[tokio::test]
async fn a_panicking_render_gives_500_and_the_server_goes_on() {
    let render: Render = Arc::new(|_| panic!("status snapshot poisoned"));
    let server = start_with(render, Gate::Open, Limits::default()).await;
    for path in ["/status", "/metrics", "/"] {
        let req = format!("GET {path} HTTP/1.1\r\n\r\n");
        let res = exchange(server.addr, req.as_bytes()).await;
        assert_eq!(
            split(&res).0,
            "HTTP/1.1 500 Internal Server Error",
            "{path}"
        );
    }
    let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn sixty_four_concurrent_health_clients_are_each_answered() {
    let server = start(Limits::default()).await;
    // All connected and sending before any is read, so that they are in the server together.
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(s);
    }
    let answers = futures_util::future::join_all(clients.into_iter().map(|mut s| async move {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .unwrap();
        String::from_utf8(out).unwrap()
    }))
    .await;
    let ok = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 200 OK") && a.ends_with(r#"{"ok":true}"#))
        .count();
    assert_eq!(ok, 64);
}

#[tokio::test]
async fn the_token_gates_everything_but_health() {
    let token = "wt-unit-Q9token";
    let gate = Gate::Token(Some(crate::secret::Secret::new(token.to_string())));
    let server = start_with(render_fixed(), gate, Limits::default()).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{token}"));
    let wrong = base64::engine::general_purpose::STANDARD.encode("anyone:nope");
    for path in ["/status", "/metrics", "/"] {
        let res = exchange(
            server.addr,
            format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        let (status, headers, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{path}");
        assert!(headers.contains("www-authenticate: "), "{headers}");
        assert!(!body.contains(token));
        for auth in ["Bearer nope", &format!("Basic {wrong}"), token] {
            let req = format!("GET {path} HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n");
            let res = exchange(server.addr, req.as_bytes()).await;
            assert_eq!(split(&res).0, "HTTP/1.1 401 Unauthorized", "{path} {auth}");
        }
        for auth in [format!("Bearer {token}"), format!("basic {basic}")] {
            let req = format!("GET {path} HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n");
            let res = exchange(server.addr, req.as_bytes()).await;
            assert_eq!(split(&res).0, "HTTP/1.1 200 OK", "{path} {auth}");
        }
    }
    // A browser is asked for the token on the page; a program on the JSON and the metrics.
    let res = exchange(server.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(split(&res).1.contains("www-authenticate: basic realm="));
    let res = exchange(server.addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(split(&res).1.contains("www-authenticate: bearer"));
    let res = exchange(server.addr, b"GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(split(&res).0, "HTTP/1.1 200 OK");

    let server = start_with(render_fixed(), Gate::Token(None), Limits::default()).await;
    for path in ["/status", "/metrics", "/"] {
        let req = format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n");
        let res = exchange(server.addr, req.as_bytes()).await;
        let (status, _, body) = split(&res);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}");
        assert!(body.contains("WEB_TOKEN"), "{body}");
    }
}

#[tokio::test]
async fn shutdown_ends_serve_and_closes_the_listener() {
    let mut server = start(Limits::default()).await;
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
