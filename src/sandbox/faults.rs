//! Fault injection: deterministic rules and random faults, their HTTP effects, and the
//! connection-killing listener that lets a handler close its connection without any response.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{ENDPOINTS, SandboxConfig, scenarios};

/// What an injected fault does to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 500 (Graph code 2, `is_transient: true`; 360dialog `meta` body); not applied.
    ServerError,
    /// Graph: HTTP 400, code 80008, `is_transient: true` and `X-Business-Use-Case-Usage`;
    /// 360dialog: HTTP 429 with `Retry-After: 1`. Not applied.
    RateLimited,
    /// Sleeps [`SandboxConfig::hang_for`], then HTTP 504; not applied.
    Timeout,
    /// The connection is closed without any HTTP response; not applied.
    ConnectionReset,
    /// The request **is** applied (state changed, `applied` counted), then the connection is
    /// closed without any HTTP response.
    LostResponse,
    /// The request **is** applied, then answered `200 OK` with an HTML page instead of the
    /// upstream's JSON (a gateway or captive proxy on the way). Not in [`FaultKind::ALL`]: only
    /// drawn when named (a rule, or `SANDBOX_FAULT_KINDS`).
    GarbledSuccess,
    /// The request **is** applied, then answered `200 OK` `{"success": false}` (a body that is
    /// JSON but not the documented success shape). Only drawn when named, like `garbled_success`.
    SuccessFalse,
    /// The request is held for [`SandboxConfig::hang_for`], then **applied** and answered as
    /// usual, also when the client stopped waiting meanwhile (an upstream finishes what it
    /// received): a call slower than the caller's timeout or shutdown grace that still takes
    /// effect, late. Only drawn when named, like `garbled_success`.
    Slow,
}

impl FaultKind {
    /// The default pool of random faults: failures of the transport or the upstream.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::ServerError,
        FaultKind::RateLimited,
        FaultKind::Timeout,
        FaultKind::ConnectionReset,
        FaultKind::LostResponse,
    ];

    /// Every kind, those only drawn when named included.
    pub const EVERY: [FaultKind; 8] = [
        FaultKind::ServerError,
        FaultKind::RateLimited,
        FaultKind::Timeout,
        FaultKind::ConnectionReset,
        FaultKind::LostResponse,
        FaultKind::GarbledSuccess,
        FaultKind::SuccessFalse,
        FaultKind::Slow,
    ];

    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ServerError => "server_error",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::Timeout => "timeout",
            FaultKind::ConnectionReset => "connection_reset",
            FaultKind::LostResponse => "lost_response",
            FaultKind::GarbledSuccess => "garbled_success",
            FaultKind::SuccessFalse => "success_false",
            FaultKind::Slow => "slow",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown fault kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown fault kind {0:?} (expected server_error, rate_limited, timeout, connection_reset, lost_response, garbled_success, success_false or slow)"
)]
pub struct ParseFaultKindError(pub String);

impl FromStr for FaultKind {
    type Err = ParseFaultKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::EVERY
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| ParseFaultKindError(s.to_owned()))
    }
}

/// A deterministic fault: fires on the next `remaining` matching requests.
#[derive(Debug, Clone)]
pub(crate) struct FaultRule {
    endpoint: String,
    phone_number: Option<String>,
    fault: FaultKind,
    remaining: u32,
}

struct RandomFaults {
    rate: f64,
    kinds: Vec<FaultKind>,
    seed: Option<u64>,
    rng: StdRng,
}

impl RandomFaults {
    fn new(rate: f64, kinds: Vec<FaultKind>, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        Self {
            rate: rate.clamp(0.0, 1.0),
            kinds,
            seed,
            rng,
        }
    }
}

/// Current fault settings.
pub(crate) struct FaultState {
    rules: Vec<FaultRule>,
    random: RandomFaults,
}

/// Body of `POST /_sandbox/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultsRequest {
    #[serde(default)]
    rules: Vec<RuleRequest>,
    #[serde(default)]
    random: Option<RandomRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    endpoint: String,
    #[serde(default)]
    phone_number: Option<String>,
    fault: FaultKind,
    #[serde(default = "one")]
    times: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomRequest {
    rate: f64,
    /// Omitted: every kind.
    #[serde(default)]
    kinds: Option<Vec<FaultKind>>,
    #[serde(default)]
    seed: Option<u64>,
}

fn one() -> u32 {
    1
}

impl FaultState {
    pub(crate) fn from_config(config: &SandboxConfig) -> Self {
        Self {
            rules: Vec::new(),
            random: RandomFaults::new(config.fault_rate, config.fault_kinds.clone(), config.seed),
        }
    }

    /// Validates the whole request, then appends its rules and replaces the random settings.
    pub(crate) fn apply(&mut self, request: FaultsRequest) -> Result<(), String> {
        let mut rules = Vec::with_capacity(request.rules.len());
        for rule in request.rules {
            if !ENDPOINTS.contains(&rule.endpoint.as_str()) {
                return Err(format!(
                    "unknown endpoint {:?}; expected one of {}",
                    rule.endpoint,
                    ENDPOINTS.join(", ")
                ));
            }
            let phone_number = match rule.phone_number {
                Some(p) => Some(
                    scenarios::normalize_e164(&p)
                        .ok_or_else(|| format!("not an E.164 phone number: {p:?}"))?,
                ),
                None => None,
            };
            if rule.times == 0 {
                return Err("times must be at least 1".to_owned());
            }
            rules.push(FaultRule {
                endpoint: rule.endpoint,
                phone_number,
                fault: rule.fault,
                remaining: rule.times,
            });
        }
        let random = match request.random {
            Some(r) => {
                if !(0.0..=1.0).contains(&r.rate) {
                    return Err(format!("random.rate must be within 0..=1, got {}", r.rate));
                }
                let kinds = r.kinds.unwrap_or_else(|| FaultKind::ALL.to_vec());
                Some(RandomFaults::new(r.rate, kinds, r.seed))
            }
            None => None,
        };
        self.rules.extend(rules);
        if let Some(random) = random {
            self.random = random;
        }
        Ok(())
    }

    /// No rules, no random faults.
    pub(crate) fn clear(&mut self) {
        self.rules.clear();
        self.random = RandomFaults::new(0.0, FaultKind::ALL.to_vec(), None);
    }

    pub(crate) fn to_json(&self) -> Value {
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                json!({
                    "endpoint": r.endpoint,
                    "phone_number": r.phone_number,
                    "fault": r.fault,
                    "remaining": r.remaining,
                })
            })
            .collect();
        json!({
            "rules": rules,
            "random": {
                "rate": self.random.rate,
                "kinds": self.random.kinds,
                "seed": self.random.seed,
            },
        })
    }

    /// The fault for this request, if any: the first matching rule (consumed), else a random one.
    pub(crate) fn pick(&mut self, endpoint: &str, numbers: &[String]) -> Option<FaultKind> {
        let matching = self.rules.iter().position(|r| {
            r.endpoint == endpoint
                && r.phone_number
                    .as_ref()
                    .is_none_or(|p| numbers.iter().any(|n| n == p))
        });
        if let Some(index) = matching {
            let rule = &mut self.rules[index];
            let fault = rule.fault;
            rule.remaining -= 1;
            if rule.remaining == 0 {
                self.rules.remove(index);
            }
            return Some(fault);
        }
        let random = &mut self.random;
        if random.rate <= 0.0 || random.kinds.is_empty() {
            return None;
        }
        if random.rng.random::<f64>() < random.rate {
            let index = random.rng.random_range(0..random.kinds.len());
            return random.kinds.get(index).copied();
        }
        None
    }
}

/// Lets a handler poison its own connection (see [`KillableListener`]). Present in request
/// extensions as `ConnectInfo<ConnHandle>` when served through [`super::serve`].
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle(Arc<AtomicBool>);

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        ConnHandle(stream.io().killed.clone())
    }
}

/// A TCP listener whose connections can be poisoned by the request handler: once poisoned, every
/// read, write and flush fails, so hyper drops the connection before writing a single byte of
/// the response, and the client sees the connection close without an answer.
pub(crate) struct KillableListener {
    inner: TcpListener,
}

impl KillableListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Best effort; only affects latency.
                    let _ = stream.set_nodelay(true);
                    let io = KillableStream {
                        inner: stream,
                        killed: Arc::new(AtomicBool::new(false)),
                    };
                    return (io, addr);
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Like axum's own listener: e.g. EMFILE; wait for descriptors to free up.
                    tracing::error!(error = %e, "sandbox: accept error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accepted connection of a [`KillableListener`].
pub(crate) struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "sandbox fault: connection dropped",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check().is_err() {
            // Nothing to shut down gracefully; dropping the socket closes it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Closes the request's connection without an HTTP response.
///
/// With a [`ConnHandle`] the socket is poisoned before hyper writes anything. In every case the
/// returned body fails before its first frame: hyper buffers the response head and polls the body
/// before flushing, so the failure drops the connection with nothing sent (the fallback when the
/// router runs under another server).
pub(crate) fn drop_connection(conn: Option<&ConnHandle>) -> Response {
    if let Some(ConnHandle(killed)) = conn {
        killed.store(true, Ordering::Release);
    }
    let failing = futures::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "sandbox fault: connection dropped",
        ))
    });
    Response::new(Body::from_stream(failing))
}
