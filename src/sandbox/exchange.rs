//! The request pipeline every simulated endpoint goes through:
//! latency → resolve numbers → count `received` → fault → refusal (auth) → apply → count `applied`.
//!
//! It runs to its end even when the client hangs up (see [`detached`]).

use std::convert::Infallible;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::faults::{ConnHandle, FaultKind, drop_connection};
use super::state::{World, random_token};
use super::{Sandbox, SandboxConfig};

/// Which upstream an endpoint simulates (decides the shape of fault bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Graph,
    Hub,
    Messaging,
}

/// Request facts every handler needs.
pub(crate) struct Ctx {
    pub headers: HeaderMap,
    pub uri: Uri,
    pub conn: Option<ConnHandle>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Ctx {
            headers: parts.headers.clone(),
            uri: parts.uri.clone(),
            conn: parts
                .extensions
                .get::<ConnectInfo<ConnHandle>>()
                .map(|ConnectInfo(handle)| handle.clone()),
        })
    }
}

impl Ctx {
    /// A header as text, if present and non-empty.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// A JSON response.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Self {
        Self::with_status(StatusCode::OK, body)
    }

    pub(crate) fn with_status(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after: None,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Who a request is about, resolved before faults are drawn.
#[derive(Default)]
pub(crate) struct Target {
    /// E.164 numbers the request is counted under.
    pub numbers: Vec<String>,
    /// Refuse without applying (missing credentials, scenario 0021, unparsable parameters).
    pub refusal: Option<Reply>,
}

impl Sandbox {
    /// Runs one simulated request through the pipeline. `op` is applied under the state lock;
    /// `Ok` means its effect was applied, `Err` is a refusal with nothing applied.
    pub(crate) async fn exchange<R, O>(
        &self,
        api: Api,
        endpoint: &'static str,
        conn: Option<&ConnHandle>,
        resolve: R,
        op: O,
    ) -> Response
    where
        R: FnOnce(&World) -> Target,
        O: FnOnce(&mut World, &SandboxConfig) -> Result<Reply, Reply>,
    {
        let latency = self.config().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (target, fault) = {
            let mut inner = self.lock();
            let target = resolve(&inner.world);
            inner.counters.received(&target.numbers, endpoint);
            let fault = inner.faults.pick(endpoint, &target.numbers);
            (target, fault)
        };
        tracing::debug!(endpoint, numbers = ?target.numbers, fault = ?fault, "sandbox request");

        match fault {
            Some(FaultKind::ServerError) => return fault_reply(api, FaultKind::ServerError),
            Some(FaultKind::RateLimited) => return fault_reply(api, FaultKind::RateLimited),
            Some(FaultKind::Timeout) => {
                let mut cut = self.shared.hang_cut.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(self.config().hang_for) => {}
                    _ = cut.changed() => {}
                }
                return fault_reply(api, FaultKind::Timeout);
            }
            Some(FaultKind::ConnectionReset) => return drop_connection(conn),
            Some(FaultKind::Slow) => {
                // Then applied and answered as usual, whether or not the client still waits.
                let mut cut = self.shared.hang_cut.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(self.config().hang_for) => {}
                    _ = cut.changed() => {}
                }
            }
            Some(FaultKind::LostResponse | FaultKind::GarbledSuccess | FaultKind::SuccessFalse)
            | None => {}
        }

        let result = match target.refusal {
            Some(refusal) => Err(refusal),
            None => {
                let result = {
                    let mut inner = self.lock();
                    let result = op(&mut inner.world, self.config());
                    if result.is_ok() {
                        inner.counters.applied(&target.numbers, endpoint);
                    }
                    result
                };
                // Durable before the answer (or the lost answer) leaves, like a real upstream.
                self.flush().await;
                result
            }
        };
        match fault {
            Some(FaultKind::LostResponse) => return drop_connection(conn),
            Some(FaultKind::GarbledSuccess) => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    "<html><head><title>200 OK</title></head><body><h1>Request accepted</h1><p>sandbox gateway</p></body></html>",
                )
                    .into_response();
            }
            Some(FaultKind::SuccessFalse) => {
                return Reply::ok(json!({ "success": false })).into_response();
            }
            _ => {}
        }
        match result {
            Ok(reply) | Err(reply) => reply.into_response(),
        }
    }
}

/// Runs every sandbox request in a task of its own, so that a client hanging up (its timeout,
/// its process stopped) does not cancel the request half-way: as on a real upstream, what was
/// received is processed to the end (latency, a `timeout` hang, a `slow` fault's late
/// application included).
pub(crate) async fn detached(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "sandbox: request handler failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Response of a `server_error`, `rate_limited` or `timeout` fault. A throttled Graph call is
/// HTTP 400 with code 80008 and the business-use-case header, as Graph sends it; 360dialog's
/// APIs answer 429 with `Retry-After`.
fn fault_reply(api: Api, kind: FaultKind) -> Response {
    let (status, retry_after, graph_code, message) = match kind {
        FaultKind::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            Some(1),
            80008,
            "There have been too many calls to this WhatsApp Business account. Wait a bit and try again.",
        ),
        FaultKind::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            None,
            2,
            "Service temporarily unavailable (gateway timeout)",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            2,
            "Service temporarily unavailable",
        ),
    };
    let body = match api {
        Api::Graph => graph_error_body(graph_code, None, message, message, Some(true)),
        Api::Hub => meta_error_body(status, message),
        Api::Messaging => {
            let mut body = meta_error_body(status, message);
            body["error"] = json!(message);
            body
        }
    };
    if api == Api::Graph && kind == FaultKind::RateLimited {
        // Graph answers its throttles with HTTP 400 and no `Retry-After`: the wait is in the
        // business-use-case header, in minutes (0 here, so a test's retry comes soon).
        let mut response = Reply::with_status(StatusCode::BAD_REQUEST, body).into_response();
        response.headers_mut().insert(
            "x-business-use-case-usage",
            HeaderValue::from_static(BUC_THROTTLED),
        );
        return response;
    }
    Reply {
        status,
        body,
        retry_after,
    }
    .into_response()
}

/// `X-Business-Use-Case-Usage` of a throttled Graph call: the WABA's WhatsApp Business
/// Management usage at its limit.
const BUC_THROTTLED: &str = r#"{"100000000000000":[{"type":"whatsapp_business_management","call_count":100,"total_cputime":12,"total_time":14,"estimated_time_to_regain_access":0}]}"#;

/// The Graph error object. `message` reads `(#<n>) <title>` with `n` the WhatsApp-specific
/// subcode when there is one (2388xxx, …), else the code.
pub(crate) fn graph_error_body(
    code: i64,
    subcode: Option<i64>,
    title: &str,
    user_msg: &str,
    is_transient: Option<bool>,
) -> Value {
    let shown = subcode.filter(|s| *s >= 1_000_000).unwrap_or(code);
    let mut error = json!({
        "message": format!("(#{shown}) {title}"),
        "type": "OAuthException",
        "code": code,
        "error_user_title": title,
        "error_user_msg": user_msg,
        "fbtrace_id": random_token(11),
        "error_data": {"messaging_product": "whatsapp", "details": user_msg},
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    if let Some(transient) = is_transient {
        error["is_transient"] = json!(transient);
    }
    json!({ "error": error })
}

/// 360dialog's `meta` error envelope.
pub(crate) fn meta_error_body(status: StatusCode, message: &str) -> Value {
    json!({
        "meta": {
            "success": false,
            "http_code": status.as_u16(),
            "developer_message": message,
            "details": [],
        }
    })
}
