//! The batch object (`POST /v1/batches`) as the API shows it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::migration::ClientPage;

/// Where a batch is: `active` while some of its migrations have not finished, `finished` once
/// every one is `completed`, `failed` or `cancelled`, `cancelled` after
/// `POST /v1/batches/{id}/cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Active,
    Finished,
    Cancelled,
}

/// A batch: a set of migrations created together, with its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub name: String,
    pub state: BatchState,
    /// How many of its migrations may be in `queued` (started), `prechecking`, `initiating` or
    /// `requesting_otp` at once; the others wait for a slot (`batch_slot` `waiting` on the
    /// migration). Parked migrations (`awaiting_otp`, `awaiting_signup`, `awaiting_channel`)
    /// and later steps hold no slot.
    pub max_in_flight: i32,
    /// Webhook URL for the batch's own events (`batch.progress`, `batch.completed`); the
    /// partner's callback URL when null. Each migration keeps its own `callback_url`.
    pub callback_url: Option<String>,
    /// Migrations created in this batch (items rejected at creation are not counted).
    pub total: i64,
    /// Migrations in a terminal state (`completed`, `failed` or `cancelled`).
    pub finished: i64,
    /// `finished / total` (1 for an empty batch).
    pub progress: f64,
    /// Migrations by state (only the states that occur).
    #[schema(value_type = Object)]
    pub counts_by_state: BTreeMap<String, i64>,
    /// Failed migrations by `error.code`.
    #[schema(value_type = Object)]
    pub counts_by_error_code: BTreeMap<String, i64>,
    /// Seconds until every migration has finished at the completion rate so far; `null` until
    /// one has finished (and once the batch is cancelled), 0 when all have.
    pub estimated_seconds_left: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// When its last migration finished.
    pub finished_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Meta throttled one of its migrations (Graph 80008 or another rate-limit code, HTTP
    /// 429): no migration of this batch starts before this time (the throttled one retries on
    /// its own schedule; other batches are not affected). `null` when not paused.
    #[serde(default)]
    pub paused_until: Option<DateTime<Utc>>,
    /// How many times Meta throttled one of its migrations.
    #[serde(default)]
    pub throttles: i32,
}

/// What happened to one item of `POST /v1/batches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// A migration was created (`migration_id`).
    Created,
    /// Not created (`error`): the number has an active migration
    /// (`migration_already_active`) or a completed one holding a live key
    /// (`number_already_migrated`).
    Rejected,
}

/// One item of the batch create answer, in the order sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// The item's position in `migrations` (0-based; CSV: among the rows with a number).
    pub index: usize,
    /// A CSV upload: the spreadsheet row the number is on (the header is row 1; empty lines
    /// count as rows, as a spreadsheet shows them). Absent for JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2)]
    pub row: Option<u64>,
    pub reference: Option<String>,
    pub phone_number: String,
    pub status: ItemStatus,
    pub migration_id: Option<Uuid>,
    /// Why the item was rejected: `code` (as the single create's 409 would say), `detail`,
    /// and `migration_id` of the active migration when the caller may see it.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// The created migration's client page link (send it to that client); `null` when created
    /// with `"client_page": "disabled"`. Never stored with an `Idempotency-Key`: a replay
    /// shows the link as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ClientPage>)]
    pub client_page: Option<Option<ClientPage>>,
}

impl BatchItem {
    /// The spreadsheet row the item is on: `row`, or, in an answer stored before items said
    /// it, the index after the header (row 1).
    pub fn spreadsheet_row(&self) -> u64 {
        self.row.unwrap_or(self.index as u64 + 2)
    }
}

/// The answer of `POST /v1/batches`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchCreated {
    pub batch: Batch,
    pub items: Vec<BatchItem>,
}

/// The `type` of a batch webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum BatchEventType {
    /// The batch moved (its counts changed) since the last `batch.progress`; at most one per
    /// `BATCH_PROGRESS_INTERVAL_SECONDS` (default 60).
    #[serde(rename = "batch.progress")]
    Progress,
    /// Every migration of the batch is `completed`, `failed` or `cancelled` (also after
    /// `POST /v1/batches/{id}/cancel`: `data.state` is then `cancelled`). Once per `generation`.
    #[serde(rename = "batch.completed")]
    Completed,
}

impl BatchEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progress => "batch.progress",
            Self::Completed => "batch.completed",
        }
    }
}

/// The body of a batch webhook POST, signed and retried like a migration's `WebhookEvent`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchWebhookEvent {
    #[serde(rename = "type")]
    pub kind: BatchEventType,
    /// When the event was recorded.
    pub timestamp: DateTime<Utc>,
    /// Increases with each event of the batch; one batch's events are delivered in order.
    pub sequence: i32,
    /// 1, then one more for each time a retry (`POST /v1/batches/{id}/retry_failed`, or
    /// `POST /v1/migrations/{id}/retry` of one of its migrations) re-opened the batch after its
    /// `batch.completed`: each generation ends with a `batch.completed` of its own.
    pub generation: i32,
    /// The batch as `GET /v1/batches/{id}` showed it then.
    pub data: Batch,
}
