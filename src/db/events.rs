//! The append-only audit trail of a migration.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{EventType, MigrationState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub migration_id: Uuid,
    pub seq: i32,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// An event to append with the transition that caused it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventType,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub data: Value,
}

impl NewEvent {
    /// The event of the transition from `from` into `to`: its type is the one its webhook
    /// carries ([`EventType::for_transition`]).
    pub fn transition(from: impl Into<String>, to: MigrationState, data: Value) -> Self {
        Self {
            kind: EventType::for_transition(to),
            from_state: Some(from.into()),
            to_state: Some(to.as_str().to_owned()),
            data,
        }
    }

    /// Whether this event is delivered as a webhook: transitions (events that do not change
    /// the state, such as a scheduled retry or a retrieved key, are not) and a change of
    /// `waiting_for`. A webhook's type is its audit event's: [`EventType::for_transition`] of
    /// the state entered, or `migration.waiting_for_changed`.
    pub fn is_delivered(&self) -> bool {
        (self.to_state.is_some() && self.from_state != self.to_state)
            || matches!(
                self.kind,
                EventType::WaitingForChanged | EventType::ClientPageOpened
            )
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %migration_id, seq))]
pub async fn insert(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    seq: i32,
    event: &NewEvent,
) -> Result<(), super::Error> {
    sqlx::query(
        "INSERT INTO migration_events (migration_id, seq, type, from_state, to_state, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(migration_id)
    .bind(seq)
    .bind(event.kind.as_str())
    .bind(&event.from_state)
    .bind(&event.to_state)
    .bind(&event.data)
    .execute(ex)
    .await?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %migration_id))]
pub async fn list(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
) -> Result<Vec<EventRow>, super::Error> {
    Ok(sqlx::query_as::<_, EventRow>(
        "SELECT id, migration_id, seq, type, from_state, to_state, data, created_at
         FROM migration_events WHERE migration_id = $1 ORDER BY seq",
    )
    .bind(migration_id)
    .fetch_all(ex)
    .await?)
}

/// A page of a migration's events, oldest first: those after the sequence `after` (a page's
/// cursor), at most `limit + 1` so the caller knows whether a next page exists. Reads the
/// `(migration_id, seq)` unique index.
#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %migration_id))]
pub async fn page(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<EventRow>, super::Error> {
    Ok(sqlx::query_as::<_, EventRow>(
        "SELECT id, migration_id, seq, type, from_state, to_state, data, created_at
         FROM migration_events WHERE migration_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(migration_id)
    .bind(after.unwrap_or(i32::MIN))
    .bind(limit + 1)
    .fetch_all(ex)
    .await?)
}

/// Whether the migration's current API key was handed out already: a
/// `migration.api_key_retrieved` event after its latest `migration.api_key_generated` one.
#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %migration_id))]
pub async fn api_key_revealed(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
) -> Result<bool, super::Error> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM migration_events r
              WHERE r.migration_id = $1 AND r.type = $2
                AND NOT EXISTS (SELECT 1 FROM migration_events g
                                 WHERE g.migration_id = $1 AND g.type = $3 AND g.seq > r.seq))",
    )
    .bind(migration_id)
    .bind(EventType::ApiKeyRetrieved.as_str())
    .bind(EventType::ApiKeyGenerated.as_str())
    .fetch_one(ex)
    .await?)
}
