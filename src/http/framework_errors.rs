//! Problem+json for the framework's own error responses (405, 408, plain-text rejections).

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;

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

    use serde_json::Value;

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
