//! Our extractors: JSON bodies, queries and paths whose rejections are problem+json, and the
//! authenticated caller.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use uuid::Uuid;

use super::problem::{ApiError, FieldError};
use crate::app::AppState;
use crate::crypto;
use crate::db;

/// `Json` with problem+json rejections: 415 wrong content type, 400 malformed JSON, 413 too
/// large, 422 wrong fields (unknown fields are rejected by `deny_unknown_fields` on inputs).
/// The body must be a JSON object: serde would otherwise also read a struct from an array of
/// its field values (`[null, null]`).
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::validation(vec![FieldError {
                pointer: "/".into(),
                message: "the body must be a JSON object".into(),
            }]));
        }
        serde_path_to_error::deserialize::<_, T>(value)
            .map(AppJson)
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                // Unknown and missing fields are reported at their parent; the name is quoted.
                let pointer = if path == "." {
                    message
                        .split('`')
                        .nth(1)
                        .map(|f| format!("/{f}"))
                        .unwrap_or_else(|| "/".into())
                } else {
                    format!("/{}", path.replace('.', "/"))
                };
                ApiError::validation(vec![FieldError { pointer, message }])
            })
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with `Content-Type: application/json`.",
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("The body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                // serde's message names the field: "unknown field `x`", "missing field `y`".
                let pointer = text
                    .split('`')
                    .nth(1)
                    .map(|f| format!("/{f}"))
                    .unwrap_or_else(|| "/".into());
                let message = text.split(": ").skip(1).collect::<Vec<_>>().join(": ");
                ApiError::validation(vec![FieldError {
                    pointer,
                    message: if message.is_empty() { text } else { message },
                }])
            }
            JsonRejection::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "The request body is too large.",
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
                }
            }
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::validation(vec![FieldError {
            pointer: "/query".into(),
            message: r.body_text(),
        }])
    }
}

/// A UUID path segment; anything else is a 404 (it cannot name a resource).
pub struct IdPath<T>(pub T);

impl<S: Send + Sync> FromRequestParts<S> for IdPath<Uuid> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| ApiError::not_found("resource"))?;
        Ok(IdPath(id))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdPath<(Uuid, Uuid)> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(ids) = Path::<(Uuid, Uuid)>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| ApiError::not_found("resource"))?;
        Ok(IdPath(ids))
    }
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `ADMIN_API_KEY`: sees and manages everything.
    Admin,
    /// A partner key: sees only its own migrations.
    Partner(Uuid),
}

impl Caller {
    /// Tenant scope for queries: `None` for the admin.
    pub fn scope(self) -> Option<Uuid> {
        match self {
            Caller::Admin => None,
            Caller::Partner(p) => Some(p),
        }
    }

    pub fn require_admin(self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Partner(_) => Err(ApiError::forbidden(
                "This route needs the admin key (ADMIN_API_KEY).",
            )),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let hash = crypto::hash_api_key(token);
        let caller = if let Some(admin) = &state.admin_key_hash
            && crypto::constant_time_eq(admin, &hash)
        {
            Caller::Admin
        } else {
            match db::partners::partner_for_key_hash(&state.pool, &hash).await? {
                Some(p) => Caller::Partner(p),
                None => return Err(ApiError::unauthorized()),
            }
        };
        // Only valid keys are counted: a stranger cannot exhaust a partner's budget.
        if let Some(limiter) = &state.rate_limiter
            && let Err(wait) = limiter.check(&hash)
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests with this API key; retry after the time in Retry-After.",
            )
            .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
        }
        Ok(caller)
    }
}
