//! Liveness and readiness.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::server::Draining;
use crate::core::AppState;
use crate::db;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Prometheus metrics of this process (and migrations by state, from the database).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format",
        body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state.pool).await,
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` / `schema_outdated` / `draining` (shutting down).
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database answers, its schema is current and the process is not stopping.
///
/// From SIGTERM on, for `SHUTDOWN_DRAIN_SECONDS`, it answers 503 `draining` while every other
/// request is still served.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready", body = Health),
    ))]
async fn readyz(
    State(state): State<AppState>,
    draining: Option<Extension<Draining>>,
) -> (StatusCode, axum::Json<Health>) {
    if draining.is_some_and(|Extension(d)| d.is_draining()) {
        let status = "draining".into();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health { status }),
        );
    }
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        db::schema_current(&state.pool),
    )
    .await;
    let (code, status) = match check {
        Ok(Ok(true)) => (StatusCode::OK, "ok"),
        Ok(Ok(false)) => (StatusCode::SERVICE_UNAVAILABLE, "schema_outdated"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    (
        code,
        axum::Json(Health {
            status: status.into(),
        }),
    )
}
