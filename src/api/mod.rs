//! The public JSON: what the API answers, what the webhooks carry and what the dashboard shows,
//! rendered from the store's rows. Below `http`, `webhooks`, `dashboard` and the application
//! core, so each of them speaks the same types without importing another.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::migrations::MigrationRow;
use crate::domain::EventType;

pub mod batch;
pub mod migration;
pub mod problem;

pub use migration::Migration;

/// The body of every webhook POST (see the `webhooks` tag for headers and signatures).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEvent {
    /// `migration.awaiting_otp`, `migration.completed`, `migration.failed` or
    /// `migration.cancelled` for a transition into that state, `migration.state_changed` for
    /// any other: the `type` of the audit event of the same transition
    /// (`GET /v1/migrations/{id}/events`). `migration.waiting_for_changed` when what a
    /// migration waiting in `awaiting_signup` or `awaiting_channel` waits for changed to
    /// another code (`data.waiting_for`). `migration.client_page_opened` the first time the end
    /// client opens a client page link (`data` never carries the link itself).
    #[serde(rename = "type")]
    #[schema(example = "migration.awaiting_otp")]
    pub kind: String,
    /// When the change happened.
    pub timestamp: DateTime<Utc>,
    /// Increases with every event of one migration; a consumer can order or deduplicate by it.
    pub sequence: i32,
    /// The migration after the change, as `GET /v1/migrations/{id}` showed it then.
    pub data: Migration,
}

/// The request body of the webhook of type `kind` for the change that left the migration as
/// `row` (written to the outbox by `db::migrations::update`, in the statement of the change).
pub fn webhook_body(row: &MigrationRow, kind: EventType) -> String {
    serde_json::to_string(&WebhookEvent {
        kind: kind.as_str().to_owned(),
        timestamp: row.updated_at,
        sequence: row.version,
        data: Migration::from(row),
    })
    .expect("a migration always serialises")
}
