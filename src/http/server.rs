//! The HTTP server: an accept loop around hyper's HTTP/1.1 connection, because `axum::serve`
//! has no header-read timeout, no idle timeout, no connection cap and no bound on shutdown.
//!
//! - **Timeouts** ([`deadlines`]): a request head must be complete `header_read_timeout` after
//!   the connection opened (or after the first byte of a later request); a keep-alive connection
//!   may wait `idle_timeout` for its next request; a response the client does not read for
//!   `idle_timeout` is abandoned.
//! - **Cap**: `max_connections` are served at once. Beyond it up to [`OVER_LIMIT_CONNECTIONS`]
//!   more are accepted for one request each, with a header timeout of at most
//!   [`OVER_LIMIT_HEADER_TIMEOUT`]: `/healthz` and `/readyz` are answered, anything else gets 503
//!   `too_many_connections` with `Retry-After`, all with `Connection: close`. When those are
//!   full too, the oldest of them that has not sent a complete request is closed to make room
//!   (so a health check always gets in), or, if every one is being answered, the new one is.
//! - **Shutdown** ([`serve`]): for the drain period `/readyz` answers 503 `draining` while every
//!   request is still served, each answered with `Connection: close`; then the listener closes,
//!   idle connections are closed, in-flight requests finish (with `Connection: close`), and after
//!   `shutdown_timeout` whatever is still open is dropped.
//!
//! Every request carries `ConnectInfo<SocketAddr>` (the peer), as
//! `into_make_service_with_connect_info` would give it, and the server's [`Draining`] state.

mod deadlines;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use self::deadlines::{Deadlines, TimedIo};
use super::problem::{ApiError, REQUEST_ID};

/// Connections accepted beyond `max_connections`, for one request each (health checks).
pub const OVER_LIMIT_CONNECTIONS: usize = 32;

/// The header timeout of a connection beyond `max_connections`.
pub const OVER_LIMIT_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Open files kept for everything but API connections (database pool, upstream and webhook
/// clients, the in-process sandbox, logs) when `max_connections` is derived from the limit.
pub const FD_HEADROOM: u64 = 256;

/// The paths a connection beyond the cap is answered for.
const HEALTH_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How the server bounds its connections and its shutdown.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A request head must be complete this long after the connection opened or after the
    /// first byte of a later request on it arrived.
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request, and a response for the
    /// client to read it.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// After the shutdown signal: how long `/readyz` answers 503 while requests are still
    /// served (the `shutdown` future of [`serve`] says how long, per signal).
    pub drain: Duration,
    /// After the drain: how long in-flight requests get before what is still open is dropped.
    pub shutdown_timeout: Duration,
}

/// The open-file limit of this process (soft `RLIMIT_NOFILE`), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// `max_connections` when none is configured: half of the open files left after
/// [`FD_HEADROOM`], between 16 and 1024 (384 under `ulimit -n 1024`).
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let limit = open_files.unwrap_or(u64::MAX);
    let half = limit.saturating_sub(FD_HEADROOM) / 2;
    usize::try_from(half.clamp(16, 1024)).unwrap_or(1024)
}

/// Why `max_connections` risks running out of files (then `accept` fails with EMFILE and even
/// health checks go unanswered), if it does.
pub fn files_warning(max_connections: usize, open_files: Option<u64>) -> Option<String> {
    let limit = open_files?;
    let needed = (max_connections + OVER_LIMIT_CONNECTIONS) as u64 + FD_HEADROOM;
    (needed > limit).then(|| {
        format!(
            "HTTP_MAX_CONNECTIONS ({max_connections}) + {OVER_LIMIT_CONNECTIONS} over-limit connections + {FD_HEADROOM} other files exceed the open-file limit ({limit}): raise it (`ulimit -n`, LimitNOFILE, --ulimit nofile) or lower HTTP_MAX_CONNECTIONS"
        )
    })
}

/// Whether the server is draining: set when the shutdown signal arrives. In every request's
/// extensions; `/readyz` answers 503 while it is set.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown` resolves with the drain period to apply;
/// then drains, stops accepting, lets in-flight requests finish and returns at most
/// `drain + shutdown_timeout` later, whatever the clients do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = Duration>,
) {
    let mut server = Server::new(router, config);
    let mut shutdown = pin!(shutdown);
    let drain = loop {
        tokio::select! {
            drain = &mut shutdown => break drain,
            accepted = accept(&listener) => if let Some((stream, peer)) = accepted {
                server.accept(stream, peer);
            },
        }
    };
    server.draining.start();
    if !drain.is_zero() {
        info!(
            drain_seconds = drain.as_secs_f64(),
            "HTTP: draining: /readyz answers 503, requests are still served (with Connection: close)"
        );
        let mut until = pin!(tokio::time::sleep(drain));
        loop {
            tokio::select! {
                () = &mut until => break,
                accepted = accept(&listener) => if let Some((stream, peer)) = accepted {
                    server.accept(stream, peer);
                },
            }
        }
    }
    drop(listener);
    server.shut_down().await;
}

/// The next connection; `None` after an error (logged; a lack of files is waited out).
async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => {
            // EMFILE and the like: connections (and their files) will close; don't spin.
            error!(error = %e, "accept error");
            tokio::time::sleep(Duration::from_millis(250)).await;
            None
        }
    }
}

/// A connection beyond the cap.
struct OverLimit {
    deadlines: Arc<Deadlines>,
    /// Cancelled to close it (to make room for a newer one).
    evict: CancellationToken,
    done: AtomicBool,
}

/// What a connection holds while open.
enum Slot {
    /// Held, never read: dropping it frees the slot.
    Regular(#[allow(dead_code)] OwnedSemaphorePermit),
    OverLimit(Arc<OverLimit>),
}

impl Slot {
    fn name(&self) -> &'static str {
        match self {
            Slot::Regular(_) => "regular",
            Slot::OverLimit(_) => "over_limit",
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::OverLimit(c) = self {
            c.done.store(true, Ordering::SeqCst);
        }
    }
}

struct Server {
    router: Router,
    config: ServeConfig,
    regular: Arc<Semaphore>,
    over_limit: VecDeque<Arc<OverLimit>>,
    graceful: GracefulShutdown,
    tracker: TaskTracker,
    /// Cancelled at the hard bound: every connection still open is dropped.
    hard_stop: CancellationToken,
    draining: Draining,
    warned_full: Option<Instant>,
}

impl Server {
    fn new(router: Router, config: ServeConfig) -> Self {
        Self {
            router,
            regular: Arc::new(Semaphore::new(config.max_connections)),
            config,
            over_limit: VecDeque::new(),
            graceful: GracefulShutdown::new(),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            draining: Draining::default(),
            warned_full: None,
        }
    }

    fn accept(&mut self, stream: TcpStream, peer: SocketAddr) {
        if let Ok(permit) = self.regular.clone().try_acquire_owned() {
            let deadlines =
                Deadlines::new(self.config.header_read_timeout, self.config.idle_timeout);
            self.spawn(stream, peer, deadlines, Slot::Regular(permit));
            return;
        }
        if self
            .warned_full
            .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
        {
            self.warned_full = Some(Instant::now());
            warn!(
                max_connections = self.config.max_connections,
                "HTTP_MAX_CONNECTIONS reached: new connections are answered for /healthz and /readyz only (503 too_many_connections otherwise)"
            );
        }
        self.over_limit.retain(|c| !c.done.load(Ordering::SeqCst));
        if self.over_limit.len() >= OVER_LIMIT_CONNECTIONS {
            // Make room by closing the oldest that has not sent a complete request yet.
            match self.over_limit.iter().position(|c| !c.deadlines.answered()) {
                Some(i) => {
                    if let Some(old) = self.over_limit.remove(i) {
                        old.evict.cancel();
                    }
                    crate::metrics::http_connection_dropped("evicted");
                }
                None => {
                    crate::metrics::http_connection_dropped("over_limit_full");
                    return; // `stream` is dropped: closed at once.
                }
            }
        }
        let header = self
            .config
            .header_read_timeout
            .min(OVER_LIMIT_HEADER_TIMEOUT);
        let conn = Arc::new(OverLimit {
            deadlines: Deadlines::new(header, self.config.idle_timeout),
            evict: CancellationToken::new(),
            done: AtomicBool::new(false),
        });
        self.over_limit.push_back(conn.clone());
        self.spawn(stream, peer, conn.deadlines.clone(), Slot::OverLimit(conn));
    }

    fn spawn(&self, stream: TcpStream, peer: SocketAddr, deadlines: Arc<Deadlines>, slot: Slot) {
        let over_limit = matches!(slot, Slot::OverLimit(_));
        let evict = match &slot {
            Slot::OverLimit(c) => c.evict.clone(),
            Slot::Regular(_) => CancellationToken::new(),
        };
        let io = TokioIo::new(TimedIo::new(stream, deadlines.clone()));
        let answer = Arc::new(Answer {
            router: self.router.clone(),
            peer,
            deadlines,
            over_limit,
            draining: self.draining.clone(),
        });
        let service = hyper::service::service_fn(move |req| {
            answer.deadlines.busy();
            answer.clone().answer(req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The header timeout is kept by `TimedIo` (hyper's would also cut idle keep-alive).
        builder.header_read_timeout(None).keep_alive(!over_limit);
        let conn = self.graceful.watch(builder.serve_connection(io, service));
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            let kind = slot.name();
            crate::metrics::http_connection_opened(kind);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                },
                () = hard_stop.cancelled() => crate::metrics::http_connection_dropped("shutdown"),
                () = evict.cancelled() => {},
            }
            crate::metrics::http_connection_closed(kind);
            drop(slot);
        });
    }

    /// Stop: idle connections close, in-flight requests finish, and after `shutdown_timeout`
    /// whatever is still open is dropped.
    async fn shut_down(self) {
        let Server {
            graceful,
            tracker,
            hard_stop,
            config,
            ..
        } = self;
        info!(
            open_connections = tracker.len(),
            "HTTP: no longer accepting connections; finishing in-flight requests"
        );
        if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(
                open_connections = tracker.len(),
                timeout_seconds = config.shutdown_timeout.as_secs_f64(),
                "HTTP: closing the connections still open at HTTP_SHUTDOWN_TIMEOUT_SECONDS"
            );
            hard_stop.cancel();
        }
        tracker.close();
        tracker.wait().await;
        info!("HTTP: stopped");
    }
}

/// Answers the requests of one connection.
struct Answer {
    router: Router,
    peer: SocketAddr,
    deadlines: Arc<Deadlines>,
    over_limit: bool,
    draining: Draining,
}

/// Starts the connection's idle deadline when the response (its body) is done with.
struct IdleWhenDropped(Arc<Deadlines>);

impl Drop for IdleWhenDropped {
    fn drop(&mut self) {
        self.0.idle();
    }
}

impl Answer {
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Result<Response, Infallible> {
        let idle_when_sent = IdleWhenDropped(self.deadlines.clone());
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.draining.clone());
        let mut res = if self.over_limit && !HEALTH_PATHS.contains(&req.uri().path()) {
            too_many_connections()
        } else {
            let router = self.router.clone();
            router.oneshot(req).await.unwrap_or_else(|e| match e {})
        };
        if self.draining.is_draining() {
            // Clients reconnect (through the load balancer, to another replica) instead of
            // reusing a connection that is about to close.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(res.map(move |body| {
            Body::new(body.map_err(move |e| {
                let _sent_when_dropped = &idle_when_sent;
                e
            }))
        }))
    }
}

/// 503 `too_many_connections` (with its own request id, as the router would give it).
fn too_many_connections() -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    let mut res = REQUEST_ID.sync_scope(id.clone(), || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "This replica serves as many connections as it may; retry shortly (another replica may have room).",
        )
        .with_retry_after(1)
        .into_response()
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    res
}

#[cfg(test)]
mod tests;
