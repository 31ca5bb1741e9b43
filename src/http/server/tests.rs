//! The server over real loopback sockets: timeouts, the cap, the peer address and shutdown.
//! Timing assertions have wide margins: a timer never fires early, so lower bounds are exact;
//! upper bounds allow seconds of scheduling delay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::*;

/// A slack that a loaded 2-core machine stays within.
const MARGIN: Duration = Duration::from_secs(10);

fn config(header: f64, idle: f64, max: usize) -> ServeConfig {
    ServeConfig {
        header_read_timeout: Duration::from_secs_f64(header),
        idle_timeout: Duration::from_secs_f64(idle),
        max_connections: max,
        drain: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(30),
    }
}

fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|Extension(d): Extension<Draining>| async move {
                if d.is_draining() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    (StatusCode::OK, "ready")
                }
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "done"
            }),
        )
        .route("/big", get(|| async { vec![b'x'; BIG] }))
}

const BIG: usize = 64 << 20;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<Duration>>,
    served: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(config: ServeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<Duration>();
        let served = tokio::spawn(serve(listener, router(), config, async move {
            rx.await.unwrap_or_default()
        }));
        Self {
            addr,
            stop: Some(tx),
            served,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    fn shut_down(&mut self, drain: Duration) {
        let _ = self.stop.take().unwrap().send(drain);
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Sends one request and reads its response (`Content-Length` bodies).
async fn call(s: &mut TcpStream, path: &str) -> Reply {
    s.write_all(get_request(path).as_bytes()).await.unwrap();
    read_answer(s).await
}

async fn read_answer(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(MARGIN, s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let len: usize = headers["content-length"].parse().unwrap();
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
    }
}

/// How long until the server closed `s` (EOF or reset); panics after `within`.
async fn closed_after(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, s.read(&mut chunk)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `s` is still open (nothing to read, no EOF) after `wait`.
async fn still_open(s: &mut TcpStream, wait: Duration) -> bool {
    let mut chunk = [0u8; 1];
    tokio::time::timeout(wait, s.read(&mut chunk))
        .await
        .is_err()
}

#[tokio::test]
async fn header_timeout_closes_unfinished_heads_but_not_idle_connections() {
    let server = Running::start(config(1.0, 60.0, 8)).await;

    // The probe: a head that never ends.
    let mut slow = server.connect().await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A connection that sends nothing at all.
    let mut silent = server.connect().await;

    // A kept-alive connection idle for longer than the header timeout stays usable.
    let mut idle = server.connect().await;
    assert_eq!(call(&mut idle, "/healthz").await.status, 200);
    assert!(still_open(&mut idle, Duration::from_millis(2500)).await);
    assert_eq!(call(&mut idle, "/healthz").await.body, "ok");

    // The header timeout starts again with the first byte of the next request.
    idle.write_all(b"GET /hea").await.unwrap();
    let took = closed_after(&mut idle, MARGIN).await;
    assert!(took >= Duration::from_millis(990), "{took:?}");

    for s in [&mut slow, &mut silent] {
        closed_after(s, MARGIN).await;
    }
}

#[tokio::test]
async fn idle_timeout_closes_kept_alive_connections() {
    let server = Running::start(config(60.0, 1.0, 8)).await;
    let mut idle = server.connect().await;
    assert_eq!(call(&mut idle, "/healthz").await.status, 200);
    let took = closed_after(&mut idle, MARGIN).await;
    // Not the 60 s header timeout: the 1 s idle one.
    assert!(took >= Duration::from_millis(990), "{took:?}");
}

#[tokio::test]
async fn a_response_the_client_does_not_read_is_abandoned() {
    let server = Running::start(config(60.0, 1.0, 8)).await;
    let mut s = server.connect().await;
    s.write_all(get_request("/big").as_bytes()).await.unwrap();
    // Socket buffers hold a few MB of the 64 MB; the server waits for the rest, then gives up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(MARGIN, s.read(&mut chunk)).await {
            Err(_) => panic!("neither the whole body nor a close ({got} bytes)"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    assert!(got < BIG, "the whole body arrived: {got} bytes");
}

#[tokio::test]
async fn handlers_see_the_peer_address() {
    let server = Running::start(config(10.0, 10.0, 8)).await;
    let mut s = server.connect().await;
    let local = s.local_addr().unwrap();
    assert_eq!(call(&mut s, "/peer").await.body, local.to_string());
}

#[tokio::test]
async fn beyond_the_cap_health_checks_are_answered_and_always_get_in() {
    let server = Running::start(config(60.0, 60.0, 2)).await;
    let mut regular = Vec::new();
    for _ in 0..2 {
        let mut s = server.connect().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        regular.push(s);
    }

    for path in ["/healthz", "/readyz"] {
        let mut s = server.connect().await;
        let res = call(&mut s, path).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.headers["connection"], "close", "{path}");
        closed_after(&mut s, MARGIN).await;
    }
    let mut s = server.connect().await;
    let res = call(&mut s, "/peer").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.headers["content-type"], "application/problem+json");
    assert_eq!(res.headers["retry-after"], "1");
    assert_eq!(res.headers["connection"], "close");
    assert!(res.headers.contains_key("x-request-id"));
    let body: serde_json::Value = serde_json::from_str(&res.body).unwrap();
    assert_eq!(body["code"], "too_many_connections");
    assert_eq!(body["request_id"], res.headers["x-request-id"].as_str());

    // More unfinished heads than the over-limit room: the oldest make way, and a health check
    // still gets in.
    let mut flood = Vec::new();
    for _ in 0..OVER_LIMIT_CONNECTIONS + 8 {
        let mut s = server.connect().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        flood.push(s);
    }
    let mut s = server.connect().await;
    assert_eq!(call(&mut s, "/healthz").await.status, 200);
    // The over-limit ones close within their short header timeout (or were evicted sooner)...
    for s in &mut flood {
        closed_after(s, OVER_LIMIT_HEADER_TIMEOUT + MARGIN).await;
    }
    // ...while the regular ones keep their 60 s.
    for s in &mut regular {
        assert!(still_open(s, Duration::from_millis(100)).await);
    }
}

#[tokio::test]
async fn shutdown_drains_then_finishes_in_flight_requests_within_the_bound() {
    let mut cfg = config(60.0, 60.0, 16);
    cfg.shutdown_timeout = Duration::from_secs(2);
    let drain = Duration::from_millis(1500);
    let mut server = Running::start(cfg).await;

    let mut kept = server.connect().await;
    assert_eq!(call(&mut kept, "/readyz").await.status, 200);
    let mut idle = server.connect().await;
    assert_eq!(call(&mut idle, "/healthz").await.status, 200);
    let mut slow = server.connect().await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut in_flight = server.connect().await;
    in_flight
        .write_all(get_request("/slow").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    server.shut_down(drain);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Draining: not ready, still serving, and each answer closes its connection.
    let res = call(&mut kept, "/readyz").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.body, "draining");
    assert_eq!(res.headers["connection"], "close");
    closed_after(&mut kept, MARGIN).await;
    let mut fresh = server.connect().await;
    let res = call(&mut fresh, "/healthz").await;
    assert_eq!(
        (res.status, res.headers["connection"].as_str()),
        (200, "close")
    );

    // At the drain's end the idle connection is closed without a request...
    closed_after(&mut idle, MARGIN).await;
    let after = signalled.elapsed();
    assert!(after >= drain, "closed {after:?} after the signal");

    // ...the request in flight at the signal is answered...
    let res = read_answer(&mut in_flight).await;
    assert_eq!((res.status, res.body.as_str()), (200, "done"));
    assert_eq!(res.headers["connection"], "close");

    // ...and no new connection is accepted.
    assert!(TcpStream::connect(server.addr).await.is_err());

    // The unfinished head (header timeout 60 s) is cut at drain + shutdown timeout.
    tokio::time::timeout(MARGIN + Duration::from_secs(4), &mut server.served)
        .await
        .expect("serve returns within drain + shutdown timeout")
        .unwrap();
    let took = signalled.elapsed();
    assert!(took >= drain + Duration::from_secs(2), "{took:?}");
    closed_after(&mut slow, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn without_a_drain_the_listener_closes_at_once() {
    let mut server = Running::start(config(60.0, 60.0, 16)).await;
    let mut idle = server.connect().await;
    assert_eq!(call(&mut idle, "/healthz").await.status, 200);
    server.shut_down(Duration::ZERO);
    tokio::time::timeout(MARGIN, &mut server.served)
        .await
        .expect("no connection holds it")
        .unwrap();
    closed_after(&mut idle, Duration::from_secs(1)).await;
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[test]
fn the_default_cap_fits_the_open_file_limit() {
    assert_eq!(default_max_connections(Some(1024)), 384);
    assert_eq!(default_max_connections(Some(256)), 16);
    assert_eq!(default_max_connections(Some(1 << 20)), 1024);
    assert_eq!(default_max_connections(None), 1024);
    for limit in [512, 1024, 4096, 1 << 20] {
        let max = default_max_connections(Some(limit));
        assert_eq!(files_warning(max, Some(limit)), None, "{limit}");
    }
    let warning = files_warning(2000, Some(1024)).unwrap();
    assert!(
        warning.starts_with("HTTP_MAX_CONNECTIONS (2000)"),
        "{warning}"
    );
}
