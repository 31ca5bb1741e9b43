//! RFC 9457 problem details with a stable machine `code` (and `errors[]` for field validation).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::db;

/// Base of our problem `type` URIs.
pub const TYPE_BASE: &str = "https://waba-migrator.dev/problems/";

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the input: a body field (`/phone_number`) or a query
    /// parameter (`/query/created_after`).
    pub pointer: String,
    pub message: String,
}

/// An `application/problem+json` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "https://waba-migrator.dev/problems/validation_failed",
    "title": "Unprocessable Entity",
    "status": 422,
    "detail": "The request has invalid fields; see `errors`.",
    "code": "validation_failed",
    "errors": [
        {"pointer": "/phone_number", "message": "not a valid number for its country"},
        {"pointer": "/source_waba_id", "message": "required, but missing"},
        {"pointer": "/metadata", "message": "must be a JSON object"}
    ],
    "request_id": "019ac3a2-5b1e-7c4d-9a8e-2f1b3c4d5e6f"
}))]
pub struct Problem {
    /// `https://waba-migrator.dev/problems/<code>`
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request id (also in the `x-request-id` header), for support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Code-specific extras, e.g. `migration_id` of the active migration on a 409.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub extra: Option<Value>,
}

/// Every error a handler returns. 5xx bodies are opaque; the cause is logged once.
/// Boxed: handlers return it in `Result`, and it is large.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorInner>);

#[derive(Debug)]
pub struct ApiErrorInner {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub retry_after: Option<u64>,
    pub extra: Option<Value>,
    source: Option<anyhow::Error>,
}

impl std::ops::Deref for ApiError {
    type Target = ApiErrorInner;
    fn deref(&self) -> &ApiErrorInner {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorInner {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorInner {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            extra: None,
            source: None,
        }))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No {what} with this id is visible to your key."),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Send `Authorization: Bearer <api key>` with a valid, unrevoked key.",
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "The request has invalid fields; see `errors`.",
        );
        e.errors = errors;
        e
    }

    pub fn field(pointer: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }])
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Something went wrong on our side. Retry; if it persists, contact support with the request id.",
        );
        err.source = Some(e.into());
        err
    }

    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The database is unreachable right now. Retry in a few seconds.",
        );
        err.retry_after = Some(2);
        err.source = Some(e.into());
        err
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<db::Error> for ApiError {
    fn from(e: db::Error) -> Self {
        match e {
            db::Error::NotFound => ApiError::not_found("resource"),
            ref err if err.is_unavailable() => ApiError::unavailable(e),
            e => ApiError::internal(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(db::Error::from(e))
    }
}

// The request id of the current request, set by the request-id middleware.
tokio::task_local! {
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        if let Some(src) = &this.source
            && this.status.is_server_error()
        {
            tracing::error!(
                error.message = %src,
                error.cause_chain = ?src,
                code = this.code,
                "request failed"
            );
        }
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let title = this.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = Problem {
            kind: format!("{TYPE_BASE}{}", this.code),
            title,
            status: this.status.as_u16(),
            detail: this.detail,
            code: this.code.to_owned(),
            errors: this.errors,
            request_id,
            extra: this.extra,
        };
        let mut res = (this.status, axum::Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = this.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

/// The stable code of a status the framework answered by itself.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "route_not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    }
}

/// Answers the framework's own error responses as problem+json too: axum's 405 (an empty body
/// with `Allow`), the timeout layer's 408, and any plain-text rejection. Responses that already
/// have a typed body (problem+json, JSON, the dashboard's HTML) pass unchanged; headers such as
/// `Allow` and `Retry-After` are kept.
pub async fn framework_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let status = res.status();
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .replace(',', ", ");
            if allow.is_empty() {
                format!("{path} does not accept {method}.")
            } else {
                format!("{path} does not accept {method}; it accepts {allow} (the Allow header).")
            }
        }
        StatusCode::REQUEST_TIMEOUT => format!(
            "The request took longer than {} s and was abandoned; retry it.",
            super::REQUEST_TIMEOUT.as_secs()
        ),
        s if s.is_server_error() => {
            tracing::error!(status = s.as_u16(), body = %text, "framework error response");
            "Something went wrong on our side. Retry; if it persists, contact support with the request id.".to_owned()
        }
        _ if !text.is_empty() => text,
        s => s.canonical_reason().unwrap_or("Error").to_owned(),
    };
    let mut out = ApiError::new(status, code_for(status), detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_http::timeout::TimeoutLayer;

    use super::*;

    async fn call(app: &Router, path: &str) -> (StatusCode, Option<String>, Value) {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, content_type, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn bare_framework_errors_become_problems_and_typed_bodies_stay() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/plain",
                get(|| async { (StatusCode::BAD_REQUEST, "no good") }),
            )
            .route(
                "/json",
                get(|| async {
                    let body = axum::Json(serde_json::json!({ "status": "unavailable" }));
                    (StatusCode::SERVICE_UNAVAILABLE, body)
                }),
            )
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(10),
            ))
            .layer(axum::middleware::from_fn(framework_errors));
        let problem = Some("application/problem+json".to_owned());

        let (status, content_type, body) = call(&app, "/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(content_type, problem);
        assert_eq!(body["code"], "request_timeout");
        assert_eq!(body["status"], 408);

        let (status, content_type, body) = call(&app, "/plain").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, problem);
        assert_eq!(body["code"], "bad_request");
        assert_eq!(body["detail"], "no good");

        let (status, content_type, body) = call(&app, "/json").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(body, serde_json::json!({ "status": "unavailable" }));
    }
}
