//! Webhook delivery log and redelivery: `GET /v1/migrations/{id}/webhook_deliveries`,
//! `GET /v1/batches/{id}/webhook_deliveries`, `POST /v1/webhook_deliveries/{id}/redeliver`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{AppQuery, Caller, IdPath, SequencePage};
use super::problem::{ApiError, Problem};
pub use crate::api::WebhookEvent;
use crate::core::AppState;
use crate::db::{self, webhooks as store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_deliveries))
        .routes(routes!(list_batch_deliveries))
        .routes(routes!(redeliver))
}

/// One attempt to deliver a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// 1 for the first attempt.
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// The consumer's HTTP status; null when it did not answer (timeout, refused...).
    pub response_status: Option<i32>,
    pub latency_ms: i32,
    /// `succeeded` (2xx) or `failed`.
    pub outcome: String,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    /// When the next attempt is due after this one; null when none follows.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A webhook (one event) and its delivery attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// Sent as `webhook-id`; the same on every attempt, so consumers can deduplicate.
    pub id: Uuid,
    /// The migration the event is about; null for a batch's event.
    pub migration_id: Option<Uuid>,
    /// The batch the event is about (`batch.progress`, `batch.completed`); null for a
    /// migration's event.
    pub batch_id: Option<Uuid>,
    /// Increases with each event of the migration (or of the batch); also in the body as
    /// `sequence`.
    pub sequence: i32,
    /// The body's `type`: `migration.awaiting_otp`, `migration.completed`, `migration.failed`,
    /// `migration.cancelled` or `migration.state_changed`, as the audit event of the same
    /// transition, `migration.waiting_for_changed`, `migration.client_page_opened`; for a batch
    /// `batch.progress` or `batch.completed`.
    pub event_type: String,
    pub url: String,
    /// `pending` (more attempts will be made), `succeeded` or `failed` (attempts exhausted, or
    /// no callback URL left to send it to: see `last_error`).
    pub status: String,
    pub attempt_count: i32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_response_status: Option<i32>,
    pub last_error: Option<String>,
    /// The exact body sent.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub attempts: Vec<DeliveryAttempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryList {
    pub data: Vec<WebhookDelivery>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn delivery(row: store::DeliveryRow, attempts: Vec<DeliveryAttempt>) -> WebhookDelivery {
    WebhookDelivery {
        id: row.id,
        migration_id: row.migration_id,
        batch_id: row.batch_id,
        sequence: row.sequence,
        event_type: row.event_type,
        url: row.url,
        status: row.status.clone(),
        attempt_count: row.attempts,
        next_attempt_at: row.next_attempt_at.filter(|_| row.status == "pending"),
        last_response_status: row.last_status_code,
        last_error: row.last_error,
        payload: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
        attempts,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

fn attempt(a: store::AttemptRow) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt: a.attempt,
        started_at: a.started_at,
        response_status: a.status_code,
        latency_ms: a.latency_ms,
        outcome: a.outcome,
        error: a.error,
        next_attempt_at: a.next_attempt_at,
    }
}

/// A migration's webhooks, in event order, each with every delivery attempt.
///
/// A page at a time: `limit` deliveries (default 50, at most 100), then the next page from the
/// `cursor` the previous one returned as `next_cursor` (null on the last page).
#[utoipa::path(
    get, path = "/v1/migrations/{id}/webhook_deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Migration id"), SequencePage),
    responses(
        (status = 200, description = "A page of deliveries with their attempts", body = WebhookDeliveryList),
        (status = 404, description = "No such migration for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppQuery(page): AppQuery<SequencePage>,
) -> Result<axum::Json<WebhookDeliveryList>, ApiError> {
    crate::core::migrations::fetch(&state, caller, id).await?;
    let mut rows = store::page_for_migration(&state.pool, id, page.cursor, page.limit()).await?;
    let next_cursor = page.finish(&mut rows, |r| r.sequence);
    Ok(axum::Json(WebhookDeliveryList {
        data: with_attempts(&state, rows).await?,
        next_cursor,
    }))
}

/// A batch's own webhooks (`batch.progress`, `batch.completed`), in event order, each with
/// every delivery attempt. Its migrations' webhooks are listed per migration.
///
/// A page at a time: `limit` deliveries (default 50, at most 100), then the next page from the
/// `cursor` the previous one returned as `next_cursor` (null on the last page).
#[utoipa::path(
    get, path = "/v1/batches/{id}/webhook_deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Batch id"), SequencePage),
    responses(
        (status = 200, description = "A page of deliveries with their attempts", body = WebhookDeliveryList),
        (status = 404, description = "No such batch for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_batch_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppQuery(page): AppQuery<SequencePage>,
) -> Result<axum::Json<WebhookDeliveryList>, ApiError> {
    crate::core::batches::fetch(&state, caller, id).await?;
    let mut rows = store::page_for_batch(&state.pool, id, page.cursor, page.limit()).await?;
    let next_cursor = page.finish(&mut rows, |r| r.sequence);
    Ok(axum::Json(WebhookDeliveryList {
        data: with_attempts(&state, rows).await?,
        next_cursor,
    }))
}

/// The deliveries `rows`, each with its attempts.
async fn with_attempts(
    state: &AppState,
    rows: Vec<store::DeliveryRow>,
) -> Result<Vec<WebhookDelivery>, ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut attempts = store::attempts_for_deliveries(&state.pool, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (mine, rest): (Vec<_>, Vec<_>) =
                attempts.drain(..).partition(|a| a.delivery_id == row.id);
            attempts = rest;
            delivery(row, mine.into_iter().map(attempt).collect())
        })
        .collect())
}

/// Send a webhook again now, with a fresh retry schedule and the same `webhook-id`, to where
/// its webhooks go now (its migration's or batch's `callback_url`, else its partner's).
#[utoipa::path(
    post, path = "/v1/webhook_deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Delivery id (the `webhook-id`)")),
    responses(
        (status = 202, description = "Queued for delivery", body = WebhookDelivery),
        (status = 404, description = "No such delivery for this key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Nowhere to send it (`no_callback_url`): neither its migration or batch nor its partner has a callback URL now", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<(StatusCode, axum::Json<WebhookDelivery>), ApiError> {
    let url = match store::current_url(&state.pool, id, caller.scope()).await? {
        None => return Err(ApiError::not_found("webhook delivery")),
        Some(None) => {
            return Err(ApiError::conflict(
                "no_callback_url",
                "Nowhere to send it: neither its migration (or batch) nor its partner has a callback_url now. Set the partner's with PATCH /v1/partners/{id}, then redeliver.",
            ));
        }
        Some(Some(url)) => url,
    };
    let now = state.clock.now();
    let row = match store::redeliver(&state.pool, id, caller.scope(), &url, now).await {
        Ok(r) => r,
        Err(db::Error::NotFound) => return Err(ApiError::not_found("webhook delivery")),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        delivery.id = %id,
        migration.id = ?row.migration_id,
        batch.id = ?row.batch_id,
        "webhook redelivery requested"
    );
    // With its attempts so far, as the delivery lists show it.
    let shown = with_attempts(&state, vec![row])
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("a redelivered delivery went missing"))
        })?;
    Ok((StatusCode::ACCEPTED, axum::Json(shown)))
}
