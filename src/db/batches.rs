//! Batches (`POST /v1/batches`): a named set of migrations created in one transaction. A
//! batch's state and counts are computed from its migrations (`migrations_batch` index); see
//! the `20261206000012_batches` migration for why nothing on the worker's path writes here.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::migrations::{COLUMNS, MigrationRow, NewMigration};
use super::{Error, JOBS_CHANNEL};
use crate::domain::EventType;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub name: String,
    pub max_in_flight: i32,
    pub callback_url: Option<String>,
    pub total: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const BATCH_COLUMNS: &str = "id, partner_id, name, max_in_flight, callback_url, total, \
    created_at, started_at, cancelled_at, finished_at";

pub struct NewBatch {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub name: String,
    pub max_in_flight: i32,
    pub callback_url: Option<String>,
    pub total: i32,
}

pub async fn insert(conn: &mut PgConnection, b: &NewBatch) -> Result<BatchRow, Error> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "INSERT INTO batches (id, partner_id, name, max_in_flight, callback_url, total)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {BATCH_COLUMNS}"
    ))
    .bind(b.id)
    .bind(b.partner_id)
    .bind(&b.name)
    .bind(b.max_in_flight)
    .bind(&b.callback_url)
    .bind(b.total)
    .fetch_one(&mut *conn)
    .await?)
}

/// The active (non-terminal) migrations of any of `numbers`: `(phone_number, id, partner_id)`.
pub async fn active_for_numbers(
    ex: impl PgExecutor<'_>,
    numbers: &[String],
) -> Result<Vec<(String, Uuid, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "SELECT phone_number, id, partner_id FROM migrations WHERE phone_number = ANY($1)
         AND state NOT IN ('completed', 'failed', 'cancelled')",
    )
    .bind(numbers)
    .fetch_all(ex)
    .await?)
}

/// Which of `numbers` have a completed migration holding a key not known to be superseded
/// (see `migrations::live_key_holders`, the single-number form).
pub async fn numbers_with_key_holders(
    ex: impl PgExecutor<'_>,
    numbers: &[String],
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT phone_number FROM migrations WHERE phone_number = ANY($1)
            AND state = 'completed' AND api_key_enc IS NOT NULL
            AND api_key_superseded_at IS NULL",
    )
    .bind(numbers)
    .fetch_all(ex)
    .await?)
}

/// Inserts `queued` migrations of the batch `batch_id`, each with its `created` event, in one
/// statement (the single-create form is `migrations::insert`), and wakes the workers. A number
/// that has an active migration meanwhile (the one-active-per-number index) is skipped: the
/// rows returned are those inserted.
pub async fn insert_migrations(
    conn: &mut PgConnection,
    batch_id: Uuid,
    rows: &[(NewMigration, Option<String>)],
) -> Result<Vec<MigrationRow>, Error> {
    let mut out = Vec::with_capacity(rows.len());
    // Chunks keep each statement's arrays (and its RETURNING) moderate.
    for chunk in rows.chunks(1000) {
        let col = |f: &dyn Fn(&NewMigration) -> String| -> Vec<String> {
            chunk.iter().map(|(m, _)| f(m)).collect()
        };
        let ids: Vec<Uuid> = chunk.iter().map(|(m, _)| m.id).collect();
        let partners: Vec<Uuid> = chunk.iter().map(|(m, _)| m.partner_id).collect();
        let channels: Vec<Option<String>> =
            chunk.iter().map(|(m, _)| m.channel_id.clone()).collect();
        let attempts: Vec<i32> = chunk.iter().map(|(m, _)| m.otp_attempts_left).collect();
        let pins: Vec<Vec<u8>> = chunk.iter().map(|(m, _)| m.pin_enc.clone()).collect();
        let metadata: Vec<Value> = chunk.iter().map(|(m, _)| m.metadata.clone()).collect();
        let callbacks: Vec<Option<String>> =
            chunk.iter().map(|(m, _)| m.callback_url.clone()).collect();
        let references: Vec<Option<String>> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let inserted = sqlx::query_as::<_, MigrationRow>(&format!(
            "WITH m AS (
                 INSERT INTO migrations (id, partner_id, state, flow, phone_number,
                     source_waba_id, destination_waba_id, meta_business_id, channel_id,
                     otp_method, otp_language, otp_attempts_left, pin_enc, metadata,
                     callback_url, version, batch_id, batch_reference)
                 SELECT u.id, u.partner_id, 'queued', u.flow, u.phone_number, u.source,
                     u.destination, u.business, u.channel_id, u.otp_method, u.otp_language,
                     u.attempts, u.pin_enc, u.metadata, u.callback_url, 1, $16, u.reference
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                        $11::int[], $12::bytea[], $13::jsonb[], $14::text[], $15::text[])
                     AS u(id, partner_id, flow, phone_number, source, destination, business,
                        channel_id, otp_method, otp_language, attempts, pin_enc, metadata,
                        callback_url, reference)
                 ORDER BY u.id
                 ON CONFLICT DO NOTHING
                 RETURNING {COLUMNS}),
             e AS (
                 INSERT INTO migration_events (migration_id, seq, type, from_state, to_state, data)
                 SELECT id, 1, $17, NULL, 'queued', '{{}}' FROM m)
             SELECT m.*, (SELECT pg_notify($18, '')) IS NULL AS notified FROM m ORDER BY m.id"
        ))
        .bind(&ids)
        .bind(&partners)
        .bind(col(&|m| m.flow.clone()))
        .bind(col(&|m| m.phone_number.clone()))
        .bind(col(&|m| m.source_waba_id.clone()))
        .bind(col(&|m| m.destination_waba_id.clone()))
        .bind(col(&|m| m.meta_business_id.clone()))
        .bind(&channels)
        .bind(col(&|m| m.otp_method.clone()))
        .bind(col(&|m| m.otp_language.clone()))
        .bind(&attempts)
        .bind(&pins)
        .bind(&metadata)
        .bind(&callbacks)
        .bind(&references)
        .bind(batch_id)
        .bind(EventType::Created.as_str())
        .bind(JOBS_CHANNEL)
        .fetch_all(&mut *conn)
        .await?;
        out.extend(inserted);
    }
    Ok(out)
}

/// One batch, optionally scoped to a tenant (another tenant's id is "not found").
pub async fn get(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> Result<BatchRow, Error> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND ($2::uuid IS NULL OR partner_id = $2)"
    ))
    .bind(id)
    .bind(partner)
    .fetch_one(ex)
    .await?)
}

/// Newest first; `limit + 1` rows so the caller knows whether a next page exists.
pub async fn list(
    ex: impl PgExecutor<'_>,
    partner: Option<Uuid>,
    before_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<BatchRow>, Error> {
    Ok(sqlx::query_as::<_, BatchRow>(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches
          WHERE ($1::uuid IS NULL OR partner_id = $1) AND ($2::uuid IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3"
    ))
    .bind(partner)
    .bind(before_id)
    .bind(limit + 1)
    .fetch_all(ex)
    .await?)
}

/// A batch's migrations counted by state and error code, with the newest change among the
/// finished ones.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// `(state, count)`.
    pub by_state: Vec<(String, i64)>,
    /// `(error code, count)` of the failed migrations.
    pub by_error: Vec<(String, i64)>,
    /// The latest `updated_at` of a terminal migration of the batch.
    pub last_finished_at: Option<DateTime<Utc>>,
}

pub async fn counts(ex: &mut PgConnection, batch_id: Uuid) -> Result<Counts, Error> {
    let by_state: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM migrations WHERE batch_id = $1 GROUP BY state ORDER BY state",
    )
    .bind(batch_id)
    .fetch_all(&mut *ex)
    .await?;
    let by_error: Vec<(String, i64)> = sqlx::query_as(
        "SELECT error->>'code', count(*) FROM migrations
          WHERE batch_id = $1 AND state = 'failed' AND error->>'code' IS NOT NULL
          GROUP BY 1 ORDER BY 1",
    )
    .bind(batch_id)
    .fetch_all(&mut *ex)
    .await?;
    let last_finished_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(updated_at) FROM migrations
          WHERE batch_id = $1 AND state IN ('completed', 'failed', 'cancelled')",
    )
    .bind(batch_id)
    .fetch_one(&mut *ex)
    .await?;
    Ok(Counts {
        by_state,
        by_error,
        last_finished_at,
    })
}

/// Records when the batch finished (once: a later call keeps the first time).
pub async fn set_finished(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE batches SET finished_at = COALESCE(finished_at, $2) WHERE id = $1
         RETURNING finished_at",
    )
    .bind(id)
    .bind(at)
    .fetch_optional(ex)
    .await?
    .flatten())
}

/// Records the batch's cancellation (once).
pub async fn set_cancelled(ex: impl PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query("UPDATE batches SET cancelled_at = COALESCE(cancelled_at, now()) WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Filters of a batch's migrations.
#[derive(Debug, Default, Clone)]
pub struct MigrationFilter {
    pub state: Option<String>,
    pub error_code: Option<String>,
    /// Keyset cursor: only ids above this one (oldest first, the batch's order).
    pub after_id: Option<Uuid>,
    /// `None`: all of them.
    pub limit: Option<i64>,
}

/// A batch's migrations in creation order (`limit + 1` when limited).
pub async fn migrations(
    ex: impl PgExecutor<'_>,
    batch_id: Uuid,
    f: &MigrationFilter,
) -> Result<Vec<MigrationRow>, Error> {
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM migrations WHERE batch_id = "
    ));
    q.push_bind(batch_id);
    if let Some(s) = &f.state {
        q.push(" AND state = ").push_bind(s.clone());
    }
    if let Some(c) = &f.error_code {
        q.push(" AND error->>'code' = ").push_bind(c.clone());
    }
    if let Some(id) = f.after_id {
        q.push(" AND id > ").push_bind(id);
    }
    q.push(" ORDER BY id");
    if let Some(l) = f.limit {
        q.push(" LIMIT ").push_bind(l + 1);
    }
    Ok(q.build_query_as::<MigrationRow>().fetch_all(ex).await?)
}

/// The number of migrations the batch holds (after a create skipped some).
pub async fn set_total(ex: impl PgExecutor<'_>, id: Uuid, total: i32) -> Result<(), Error> {
    sqlx::query("UPDATE batches SET total = $2 WHERE id = $1")
        .bind(id)
        .bind(total)
        .execute(ex)
        .await?;
    Ok(())
}

/// A retry made some of the batch's migrations run again: it has not finished. If its
/// `batch.completed` was already recorded, the batch enters its next generation, which will end
/// with a `batch.completed` of its own; otherwise (still open) nothing else changes, so several
/// retries of one generation re-open it once.
pub async fn reopen(ex: impl PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE batches SET finished_at = NULL,
                generation = generation
                    + CASE WHEN completed_generation >= generation THEN 1 ELSE 0 END
          WHERE id = $1",
    )
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// An open batch (its current generation's completion not recorded yet), locked for the
/// ticker's transaction, with its webhook bookkeeping.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenBatch {
    #[sqlx(flatten)]
    pub row: BatchRow,
    pub generation: i32,
    pub webhook_sequence: i32,
    /// The counts the last `batch.progress` showed.
    pub progress_counts: Option<Value>,
    /// Whether the progress interval has passed since the last `batch.progress`.
    pub progress_due: bool,
    /// Where its webhooks go: its own `callback_url`, else its partner's; `None`: nowhere.
    pub url: Option<String>,
    /// The transaction's time (the database's): stamps what this tick records.
    pub now: DateTime<Utc>,
}

/// Locks the next open batch after `after` (by id), skipping those another replica's ticker
/// holds. `None`: no more.
pub async fn lock_next_open(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    interval: std::time::Duration,
) -> Result<Option<OpenBatch>, Error> {
    let columns = BATCH_COLUMNS
        .split(", ")
        .map(|c| format!("b.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(sqlx::query_as::<_, OpenBatch>(&format!(
        "SELECT {columns}, b.generation, b.webhook_sequence, b.progress_counts,
                (b.progress_sent_at IS NULL
                 OR b.progress_sent_at <= now() - make_interval(secs => $2)) AS progress_due,
                COALESCE(b.callback_url, p.callback_url) AS url, now() AS now
           FROM batches b JOIN partners p ON p.id = b.partner_id
          WHERE b.completed_generation < b.generation AND ($1::uuid IS NULL OR b.id > $1)
          ORDER BY b.id LIMIT 1
          FOR UPDATE OF b SKIP LOCKED"
    ))
    .bind(after)
    .bind(interval.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?)
}

/// A batch event for the outbox.
pub struct BatchEvent<'a> {
    pub kind: &'a str,
    /// The exact request body.
    pub payload: &'a str,
    pub url: &'a str,
}

/// Writes a batch event's delivery (its `sequence` is the batch's next) and wakes the
/// dispatchers. The caller holds the batch's row lock ([`lock_next_open`]).
pub async fn enqueue_event(
    conn: &mut PgConnection,
    b: &OpenBatch,
    sequence: i32,
    ev: &BatchEvent<'_>,
) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "WITH w AS (
             INSERT INTO webhook_deliveries (id, partner_id, batch_id, batch_generation, sequence,
                 event_type, payload, url, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9)
             RETURNING id)
         SELECT pg_notify($10, '') FROM w",
    )
    .bind(id)
    .bind(b.row.partner_id)
    .bind(b.row.id)
    .bind(b.generation)
    .bind(sequence)
    .bind(ev.kind)
    .bind(ev.payload)
    .bind(ev.url)
    .bind(b.now)
    .bind(super::webhooks::WEBHOOKS_CHANNEL)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// Records a `batch.progress` (sent or, without a URL, not): its time, its counts and the last
/// sequence used.
pub async fn record_progress(
    conn: &mut PgConnection,
    b: &OpenBatch,
    counts: &Value,
    sequence: i32,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE batches SET progress_sent_at = $2, progress_counts = $3, webhook_sequence = $4
          WHERE id = $1",
    )
    .bind(b.row.id)
    .bind(b.now)
    .bind(counts)
    .bind(sequence)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the completion of the batch's current generation (and when it finished, unless a
/// read recorded that first). Guarded by the generation, so a generation completes once.
pub async fn record_completed(
    conn: &mut PgConnection,
    b: &OpenBatch,
    finished_at: DateTime<Utc>,
    sequence: i32,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE batches SET completed_generation = generation, webhook_sequence = $3,
                finished_at = COALESCE(finished_at, $4)
          WHERE id = $1 AND generation = $2 AND completed_generation < generation",
    )
    .bind(b.row.id)
    .bind(b.generation)
    .bind(sequence)
    .bind(finished_at)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
