//! The HTTP API: routes, middleware and the OpenAPI document.

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::AppState;

pub mod batches;
mod common_responses;
pub mod docs;
pub mod extract;
mod framework_errors;
pub mod health;
pub mod migrations;
pub mod partners;
pub mod server;
pub use crate::api::problem;
mod spec;
mod strict_json;
pub mod webhooks;

use problem::{ApiError, REQUEST_ID};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a request may take before it is answered 408 `request_timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "waba-migrator",
        description = "Migrates a client's WhatsApp Business phone number from another provider into 360dialog: prechecks, the verification code, registration, template copy and the 360dialog API key, as one durable job per number.\n\nErrors are RFC 9457 `application/problem+json` with a stable `code`, including the ones no operation lists: an unknown route is 404 `route_not_found`, a method the route does not accept is 405 `method_not_allowed` (with `Allow`). A 422 `validation_failed` lists every invalid, missing or unknown input at once in `errors[]`, each at its JSON pointer: `/phone_number` for a body field, `/query/limit` for a query parameter.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(webhooks::WebhookEvent, crate::api::batch::BatchWebhookEvent)),
    tags(
        (name = "migrations", description = "Migration jobs"),
        (name = "batches", description = "Portfolio moves: up to 5,000 migrations created at once (JSON or CSV), their progress and a report. Each migration of a batch is an ordinary migration (its own API, webhooks and `batch_id`)."),
        (name = "partners", description = "Tenants and their keys (admin)"),
        (name = "webhooks", description = "Every state change of a migration is POSTed to its `callback_url` (or the partner's default) as a `WebhookEvent` `{type, timestamp, sequence, data: <Migration>}`; `type` is `migration.awaiting_otp`, `migration.completed`, `migration.failed` or `migration.cancelled` for a transition into that state and `migration.state_changed` for any other, the same `type` as the audit event of the same transition (`GET /v1/migrations/{id}/events`, whose `seq` is the webhook's `sequence`), `migration.waiting_for_changed` when what a parked migration waits for (`waiting_for`) changes to another code, and `migration.client_page_opened` the first time the end client opens its client page link (webhooks never carry `client_page`: the link is a capability); `sequence` increases with each event of a migration, and one migration's events are delivered in order. Signed per Standard Webhooks: headers `webhook-id` (stable across retries: deduplicate on it), `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>` with the partner's `whsec_` secret; after a rotation, one signature per valid secret, space-separated). Any 2xx acknowledges; anything else is retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h. Only public https URLs are called. A batch sends its own events to its `callback_url` (or the partner's default) as a `BatchWebhookEvent` `{type, timestamp, sequence, generation, data: <Batch>}`: `batch.progress` at most once per `BATCH_PROGRESS_INTERVAL_SECONDS` (default 60) while its counts change, and `batch.completed` once every migration of it is terminal (once per `generation`; a retry after it opens the next generation), signed, retried and listed (`GET /v1/batches/{id}/webhook_deliveries`) the same way."),
        (name = "ops", description = "Health and documents"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A partner API key, or the admin key (ADMIN_API_KEY)."))
                    .build(),
            ),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(migrations::router())
        .merge(batches::router())
        .merge(partners::router())
        .merge(webhooks::router())
        .merge(health::router())
        .routes(routes!(openapi_yaml_handler))
        .routes(routes!(openapi_json_handler))
        .routes(routes!(docs::page))
}

/// The OpenAPI document generated from the routes, with what annotations cannot say (see
/// `spec`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().split_for_parts().1;
    common_responses::add(&mut doc);
    spec::finish(&mut doc);
    doc
}

/// `openapi.yaml` as committed.
pub fn openapi_yaml() -> String {
    openapi().to_yaml().expect("OpenAPI document serializes")
}

static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a caller's `x-request-id` is kept: 1 to 64 of `A-Z a-z 0-9 . _ : -` (a UUID, a
/// trace id, `req-42`). Anything else (quotes, spaces, `%`, markup, a long value) could
/// mislead a log reader or a support tool, so it is replaced.
fn acceptable_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Accepts a safe `x-request-id` ([`acceptable_request_id`]) or makes one (a UUIDv7), puts it
/// on the request (the access log's span reads it there), exposes it to handlers (problem
/// bodies) and returns it on the response.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
    }
    let mut res = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
    }
    res
}

/// Counts and times every request by route template (never the concrete path: ids would
/// make a series per migration).
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::http_request(
        method.as_str(),
        &route,
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "No such route. See /openapi.yaml.",
    )
}

/// This OpenAPI document, YAML.
#[utoipa::path(get, path = "/openapi.yaml", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/yaml")))]
async fn openapi_yaml_handler() -> Response {
    ([("content-type", "application/yaml")], openapi_yaml()).into_response()
}

/// This OpenAPI document, JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
async fn openapi_json_handler() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

/// A handler that panics answers a problem+json 500 (`internal_error`, with the request id)
/// instead of dropping the connection; the panic is logged.
fn catch_panics() -> tower_http::catch_panic::CatchPanicLayer<
    fn(Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response,
> {
    fn answer(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        axum::response::IntoResponse::into_response(ApiError::internal(anyhow::anyhow!(
            "request handler panicked: {what}"
        )))
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer as fn(_) -> _)
}

/// The full router with middleware; `pages` (the dashboard's HTML for support staff, outside
/// the OpenAPI document) are served beside the API behind the same middleware.
pub fn router(state: AppState, pages: Router<AppState>) -> Router {
    let (router, _) = api_router().split_for_parts();
    let router = router.layer(middleware::map_response(no_store));
    with_middleware(router.merge(docs::routes()).merge(pages), state)
}

/// The API's answers are for one caller and some carry secrets shown once (a partner's key
/// and webhook secret, a client-page link, a 360dialog key): no cache keeps them, unless a
/// handler says otherwise.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `/healthz`, `/readyz` and `/metrics` alone, with the same handlers and middleware as in
/// [`router`]: what a `worker` serves.
pub fn operations_router(state: AppState) -> Router {
    let (router, _) = health::router().split_for_parts();
    with_middleware(router, state)
}

/// `routes` with the fallback (404 `route_not_found`) and every layer the API has: panics
/// answered, requests counted and timed, the body limit, the request timeout, the access log,
/// framework errors as problems and the request id.
fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let app = routes
        .fallback(not_found)
        .with_state(state)
        .layer(catch_panics())
        .layer(middleware::from_fn(track))
        // Enforced by the body extractors, so an oversized body is a problem+json 413.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(
            TraceLayer::new_for_http()
                // One access-log line per request, in the request's span (request_id, route).
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                )
                .make_span_with(|req: &Request| {
                    let path = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str)
                        .unwrap_or("unmatched");
                    let request_id = req
                        .headers()
                        .get(&REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "http",
                        method = %req.method(),
                        path,
                        request_id,
                    )
                }),
        );
    // Around the whole router (a `Router::layer` wraps each route, inside what axum adds after
    // it, such as a 405's `Allow`), and inside `request_id` so these problems carry it too.
    Router::new()
        .fallback_service(app)
        .layer(middleware::from_fn(framework_errors::framework_errors))
        .layer(middleware::from_fn(request_id))
}

#[cfg(test)]
mod panic_tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_a_problem() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .layer(super::catch_panics());
        let res = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal_error");
        assert!(
            !body.to_string().contains("boom"),
            "the panic text stays in the log"
        );
    }
}

#[cfg(test)]
mod request_id_tests {
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower::ServiceExt;

    use super::*;

    /// What the layers inside `request_id` (the access log's span, handlers) see as the id, and
    /// what the response carries.
    async fn seen_and_returned(sent: &str) -> (String, String) {
        async fn echo(headers: HeaderMap) -> String {
            headers["x-request-id"].to_str().unwrap().to_owned()
        }
        let app = Router::new()
            .route("/", axum::routing::get(echo))
            .layer(middleware::from_fn(request_id));
        let res = app
            .oneshot(
                Request::get("/")
                    .header("x-request-id", sent)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let returned = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        (String::from_utf8(body.to_vec()).unwrap(), returned)
    }

    #[test]
    fn only_short_plain_ids_are_acceptable() {
        for ok in ["a", "req-1", "A.b_c:d-9", &"x".repeat(64)] {
            assert!(acceptable_request_id(ok), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "a b",
            "a\"b",
            "<x>",
            "a/b",
            "a%20",
            "é",
        ] {
            assert!(!acceptable_request_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_log_and_the_response_use_the_accepted_or_generated_id() {
        let (seen, returned) = seen_and_returned("trace-42").await;
        assert_eq!((seen.as_str(), returned.as_str()), ("trace-42", "trace-42"));
        let (seen, returned) = seen_and_returned(r#"x", "level":"ERROR"#).await;
        assert_eq!(seen, returned);
        assert!(uuid::Uuid::parse_str(&seen).is_ok(), "{seen}");
    }
}
