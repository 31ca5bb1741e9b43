//! RFC 9457 problem details with a stable machine `code` (and `errors[]` for field validation).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::db;

/// Base of our problem `type` URIs.
pub const TYPE_BASE: &str = "https://waba-migrator.dev/problems/";

/// `WWW-Authenticate` of a 401 without credentials (RFC 6750 §3).
pub const BEARER_CHALLENGE: &str = r#"Bearer realm="waba-migrator""#;
/// `WWW-Authenticate` of a 401 for a token that is not a valid key (RFC 6750 §3.1).
pub const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer realm="waba-migrator", error="invalid_token", error_description="The API key is unknown or revoked""#;

/// One invalid field.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the input: a body field (`/phone_number`) or a query
    /// parameter (`/query/created_after`).
    pub pointer: String,
    pub message: String,
    /// A CSV upload (`POST /v1/batches` as `text/csv`): the row as a spreadsheet numbers it
    /// (the header is row 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    /// A CSV upload: the column's name in the header row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
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
    /// The `WWW-Authenticate` challenge of a 401.
    pub www_authenticate: Option<&'static str>,
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
            www_authenticate: None,
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

    /// 401 for a request without a bearer token.
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Send `Authorization: Bearer <api key>` with a valid, unrevoked key.",
        );
        e.www_authenticate = Some(BEARER_CHALLENGE);
        e
    }

    /// 401 for a bearer token that is not a valid key (unknown or revoked).
    pub fn invalid_token() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The API key is unknown or revoked. Send `Authorization: Bearer <api key>` with a valid, unrevoked key.",
        );
        e.www_authenticate = Some(INVALID_TOKEN_CHALLENGE);
        e
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
            ..Default::default()
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
        if let Some(challenge) = this.www_authenticate {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        res
    }
}
