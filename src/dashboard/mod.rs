//! `/dashboard`: server-rendered support pages (overview, list, detail, actions).
//!
//! HTML only, so it is not in the OpenAPI document. Templates are `maud` macros compiled into
//! the binary and the stylesheet is embedded: the pages need nothing but this service (no
//! script at all; the throughput chart is inline SVG). Every page carries a strict
//! Content-Security-Policy, `X-Frame-Options: DENY` and `Referrer-Policy: same-origin`.
//!
//! Sign-in takes an API key (admin: every partner; partner: its own), verified exactly as the
//! API's `Caller` does, and sets an HttpOnly, SameSite=Strict cookie with a random session id;
//! the session lives server-side (`dashboard_sessions`), tied to the key's hash, so revoking
//! the key ends it at the next request. Every POST carries the session's synchronizer CSRF
//! token (compared in constant time) and is refused when its `Origin` or `Sec-Fetch-Site`
//! says it came from another site. Actions call the API's own transition code
//! (`core::migrations::{retry, cancel, resend}`, `core::batches::{create, cancel,
//! retry_failed}`), so events, webhooks and metrics match. A batch upload is read by the
//! API's own CSV reader (`AppState::batch_csv`): the same checks, the same row/column errors.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::problem::ApiError;
use crate::core::AppState;

mod batches;
mod pages;
mod session;
mod sign_in;
mod views;

pub use session::{CSRF_FIELD, SESSION_COOKIE};

/// The Content-Security-Policy of every dashboard response: nothing but this origin, no
/// script, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../../assets/dashboard/dashboard.css");

/// The dashboard's routes (served by `http::router` beside the API, outside the OpenAPI
/// document).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(pages::overview))
        .route("/dashboard/", get(|| async { Redirect::to("/dashboard") }))
        .route(
            "/dashboard/login",
            get(sign_in::login_page).post(sign_in::login),
        )
        .route("/dashboard/logout", post(sign_in::logout))
        .route("/dashboard/migrations", get(pages::list))
        .route("/dashboard/migrations/{id}", get(pages::detail))
        .route("/dashboard/migrations/{id}/retry", post(pages::retry))
        .route("/dashboard/migrations/{id}/cancel", post(pages::cancel))
        .route("/dashboard/migrations/{id}/resend", post(pages::resend))
        .route(
            "/dashboard/migrations/{id}/client_page/rotate",
            post(pages::rotate_link),
        )
        .route(
            "/dashboard/batches",
            get(batches::list)
                .post(batches::upload)
                .layer(axum::extract::DefaultBodyLimit::max(batches::UPLOAD_LIMIT)),
        )
        .route("/dashboard/batches/{id}", get(batches::page))
        .route("/dashboard/batches/{id}/report.csv", get(batches::report))
        .route("/dashboard/batches/{id}/cancel", post(batches::cancel))
        .route(
            "/dashboard/batches/{id}/retry_failed",
            post(batches::retry_failed),
        )
        .route("/dashboard/assets/dashboard.css", get(stylesheet))
        .layer(middleware::from_fn(guard))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Refuses cross-site POSTs before any handler runs, and adds the security headers.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD && !same_origin(req.headers()) {
        return DashError::Forbidden(
            "This request came from another site and was refused (cross-site request forgery protection).",
        )
        .into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// False when the browser says the request comes from another origin: an `Origin` header
/// that is not this host, or `Sec-Fetch-Site` other than `same-origin`/`none`. Requests
/// without either header (old browsers, curl) still need the CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.to_str(), Ok("same-origin" | "none"))
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// What a dashboard handler can fail with; rendered as an HTML page (never problem+json).
#[derive(Debug)]
pub enum DashError {
    /// No valid session: go to the sign-in page.
    SignIn,
    NotFound,
    Forbidden(&'static str),
    BadRequest(String),
    Internal(ApiError),
}

impl From<ApiError> for DashError {
    fn from(e: ApiError) -> Self {
        match e.status {
            StatusCode::NOT_FOUND => DashError::NotFound,
            StatusCode::UNAUTHORIZED => DashError::SignIn,
            _ => DashError::Internal(e),
        }
    }
}

impl From<crate::db::Error> for DashError {
    fn from(e: crate::db::Error) -> Self {
        match e {
            crate::db::Error::NotFound => DashError::NotFound,
            e => DashError::Internal(e.into()),
        }
    }
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            DashError::SignIn => return Redirect::to("/dashboard/login").into_response(),
            DashError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "No such page or migration for the key you signed in with.".to_owned(),
            ),
            DashError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", m.to_owned()),
            DashError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            DashError::Internal(e) => {
                let status = e.status;
                // Logs the cause once and keeps 5xx opaque, as the API does.
                let detail = if status.is_server_error() {
                    drop(e.into_response());
                    "Something went wrong on our side; try again, and tell the operators if it persists.".to_owned()
                } else {
                    e.detail.clone()
                };
                (status, "Error", detail)
            }
        };
        (status, views::error_page(status, title, &detail)).into_response()
    }
}
