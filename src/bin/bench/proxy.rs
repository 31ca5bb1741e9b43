//! A recording reverse proxy in front of the sandbox, used only by the pickup and solo probes:
//! it stamps each upstream request with this process's monotonic clock, the same clock that
//! stamps the API responses, so "POST /v1/migrations returned → first upstream call" needs no
//! clock shared between processes. `/_sandbox/*` control calls are forwarded, not recorded.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tokio::sync::Notify;

/// One upstream request: when it arrived, when its answer went back, what it was.
#[derive(Debug, Clone)]
pub struct Seen {
    pub start: Instant,
    pub end: Instant,
    pub method: String,
    pub path: String,
}

pub struct Recorder {
    upstream: String,
    http: reqwest::Client,
    pub seen: Mutex<Vec<Seen>>,
    /// Set when a request *arrives* (before it is forwarded).
    pub first_arrival: Mutex<Option<Instant>>,
    pub arrived: Notify,
}

impl Recorder {
    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
        *self.first_arrival.lock().expect("lock") = None;
    }
}

/// Starts the proxy on a loopback port; returns its base URL and the recorder.
pub async fn start(upstream: &str) -> anyhow::Result<(String, Arc<Recorder>)> {
    let rec = Arc::new(Recorder {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
        seen: Mutex::default(),
        first_arrival: Mutex::default(),
        arrived: Notify::new(),
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, rec))
}

async fn forward(State(rec): State<Arc<Recorder>>, req: Request) -> Response {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let control = path.starts_with("/_sandbox");
    if !control {
        let mut first = rec.first_arrival.lock().expect("lock");
        if first.is_none() {
            *first = Some(start);
            rec.arrived.notify_waiters();
        }
    }
    let Ok(bytes) = axum::body::to_bytes(body, 32 << 20).await else {
        return bad_gateway();
    };
    let mut out = rec
        .http
        .request(parts.method.clone(), format!("{}{path}", rec.upstream))
        .body(bytes);
    for (k, v) in &parts.headers {
        if k != header::HOST && k != header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    let Ok(res) = out.send().await else {
        return bad_gateway();
    };
    let status = res.status();
    let headers = res.headers().clone();
    let Ok(body) = res.bytes().await else {
        return bad_gateway();
    };
    let mut response = Response::builder().status(status);
    for (k, v) in &headers {
        if k != header::TRANSFER_ENCODING && k != header::CONTENT_LENGTH {
            response = response.header(k, v);
        }
    }
    if !control {
        rec.seen.lock().expect("lock").push(Seen {
            start,
            end: Instant::now(),
            method: parts.method.to_string(),
            path,
        });
    }
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| bad_gateway())
}

fn bad_gateway() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// Upstream calls that had to wait for the previous ones: a call starts a new "wave" when no
/// earlier call is still in flight. Concurrent calls (e.g. both WABAs' templates) share one.
pub fn waves(seen: &[Seen]) -> usize {
    let mut calls: Vec<&Seen> = seen.iter().collect();
    calls.sort_by_key(|s| s.start);
    let mut waves = 0;
    let mut busy_until: Option<Instant> = None;
    for c in calls {
        if busy_until.is_none_or(|b| c.start >= b) {
            waves += 1;
        }
        busy_until = Some(busy_until.map_or(c.end, |b| b.max(c.end)));
    }
    waves
}
