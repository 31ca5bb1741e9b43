//! The webhook outbox: one delivery row per event, written in the transaction of the state
//! change it reports, and the log of every attempt to deliver it.
//!
//! The dispatcher claims due deliveries with the same lease pattern as migrations
//! (`FOR UPDATE SKIP LOCKED`, a fresh `lease_token`, every later write guarded by it), and
//! only ever the oldest pending delivery of a migration, so one migration's events reach the
//! consumer in order. Times come from the dispatcher's clock (`$now`), not the database's, so
//! tests can move time forward.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::Error;

/// Channel notified when a delivery is enqueued or made due now.
pub const WEBHOOKS_CHANNEL: &str = "waba_migrator_webhooks";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub partner_id: Uuid,
    /// The migration the event is about; `None` for a batch's event.
    pub migration_id: Option<Uuid>,
    /// The batch the event is about (`batch.progress`, `batch.completed`); `None` for a
    /// migration's event.
    pub batch_id: Option<Uuid>,
    /// Per migration (its version) or per batch (its event counter).
    pub sequence: i32,
    pub event_type: String,
    pub payload: String,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    pub schedule_step: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_token: Option<Uuid>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const DELIVERY_COLUMNS: &str = "id, partner_id, migration_id, batch_id, sequence, event_type, payload, \
    url, status, attempts, schedule_step, next_attempt_at, lease_token, last_status_code, \
    last_error, created_at, updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub outcome: String,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Where a delivery `d` goes now: its migration's or batch's own `callback_url`, else its
/// partner's (`NULL`: nowhere). An SQL expression over the alias `d`.
const TARGET_NOW: &str = "COALESCE(
        (SELECT m.callback_url FROM migrations m WHERE m.id = d.migration_id),
        (SELECT b.callback_url FROM batches b WHERE b.id = d.batch_id),
        (SELECT p.callback_url FROM partners p WHERE p.id = d.partner_id))";

/// Claims up to `limit` due deliveries, each the oldest pending one of its migration (or
/// batch), each to where its webhooks go now (`TARGET_NOW`: a partner's new default applies
/// to what was not delivered yet, and no URL written before a change of it lingers). When one
/// has nowhere to go now (its URL was removed), every pending delivery of its migration (or
/// batch) ends `failed` instead (they all go where it goes), and the claim looks again.
pub async fn claim(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<DeliveryRow>, Error> {
    loop {
        let rows = claim_once(pool, now, lease, limit).await?;
        // Only failed ones (a `failed` row leased by nobody) were picked: look again.
        if rows.iter().any(|r| r.status == "pending") || rows.is_empty() {
            return Ok(rows.into_iter().filter(|r| r.status == "pending").collect());
        }
    }
}

async fn claim_once(
    ex: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<DeliveryRow>, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "WITH picked AS (
             SELECT d.id, {TARGET_NOW} AS url FROM webhook_deliveries d
              WHERE d.status = 'pending'
                AND d.next_attempt_at <= $1
                AND (d.lease_token IS NULL OR d.lease_expires_at < $1)
                AND NOT EXISTS (
                    SELECT 1 FROM webhook_deliveries e
                     WHERE e.migration_id = d.migration_id
                       AND e.status = 'pending'
                       AND e.sequence < d.sequence)
                AND (d.batch_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM webhook_deliveries e
                     WHERE e.batch_id = d.batch_id
                       AND e.status = 'pending'
                       AND e.sequence < d.sequence))
              ORDER BY d.next_attempt_at, d.id
              LIMIT $3
              FOR UPDATE OF d SKIP LOCKED),
         -- The pending deliveries of a picked one's migration (or batch) that has nowhere to
         -- go: locked as the pick is (one another claim or a PATCH holds is left for later).
         gone_rows AS (
             SELECT w.id FROM picked
               JOIN webhook_deliveries p ON p.id = picked.id
               JOIN webhook_deliveries w
                 ON w.migration_id = p.migration_id OR w.batch_id = p.batch_id
              WHERE picked.url IS NULL AND w.status = 'pending'
              FOR UPDATE OF w SKIP LOCKED),
         gone AS (
             UPDATE webhook_deliveries w
                SET status = 'failed', next_attempt_at = NULL,
                    lease_token = NULL, lease_expires_at = NULL,
                    last_error = 'not sent: no callback URL any more (removed since it was written)'
               FROM gone_rows
              WHERE w.id = gone_rows.id
             RETURNING {gone}),
         leased AS (
             UPDATE webhook_deliveries w
                SET lease_token = gen_random_uuid(),
                    lease_expires_at = $1 + make_interval(secs => $2),
                    attempts = w.attempts + 1,
                    url = picked.url
               FROM picked
              WHERE w.id = picked.id AND picked.url IS NOT NULL
             RETURNING {leased})
         SELECT * FROM leased
         UNION ALL
         -- One failed row, so that the caller knows to look again.
         (SELECT * FROM gone LIMIT 1)",
        gone = super::qualified(DELIVERY_COLUMNS, "w"),
        leased = super::qualified(DELIVERY_COLUMNS, "w"),
    ))
    .bind(now)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The result of one attempt.
pub struct AttemptResult<'a> {
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub succeeded: bool,
    pub error: Option<&'a str>,
    /// When to try again; `None` with `succeeded == false` gives the delivery up.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Logs the attempt and moves the delivery on, if the caller still holds its lease. The
/// attempt row and the delivery update commit together.
pub async fn record_attempt(
    conn: &mut PgConnection,
    d: &DeliveryRow,
    token: Uuid,
    r: &AttemptResult<'_>,
) -> Result<bool, Error> {
    let status = match (r.succeeded, r.next_attempt_at) {
        (true, _) => "succeeded",
        (false, Some(_)) => "pending",
        (false, None) => "failed",
    };
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let updated = sqlx::query(
        "UPDATE webhook_deliveries
            SET status = $3, next_attempt_at = $4, schedule_step = schedule_step + 1,
                last_status_code = $5, last_error = $6,
                lease_token = NULL, lease_expires_at = NULL
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(d.id)
    .bind(token)
    .bind(status)
    .bind(r.next_attempt_at.filter(|_| !r.succeeded))
    .bind(r.status_code)
    .bind(r.error)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    // The deliveries queued behind this one (its migration's or batch's later events) are not
    // sent before it. While it waits for a retry, they wait as long: otherwise, due since they
    // were written, they stay at the front of the due index, and every claim of every replica
    // steps over all of them (thousands while a partner's endpoint is down). Once it is done,
    // they are due again (a redelivery may have sent it before its planned retry). Rows another
    // transaction holds are left as they are. A delivery done at its first attempt never made
    // any wait: nothing to do (the common case costs no statement).
    let (when, behind) = match status {
        "pending" => (r.next_attempt_at, "next_attempt_at < $4"),
        _ if d.attempts <= 1 => (None, ""),
        _ => (Some(r.started_at), "next_attempt_at > $4"),
    };
    if when.is_some() {
        sqlx::query(&format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $4
          WHERE id IN (SELECT id FROM webhook_deliveries
                        WHERE (migration_id = $1 OR batch_id = $2)
                          AND status = 'pending' AND sequence > $3 AND {behind}
                        FOR NO KEY UPDATE SKIP LOCKED)"
        ))
        .bind(d.migration_id)
        .bind(d.batch_id)
        .bind(d.sequence)
        .bind(when)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO webhook_delivery_attempts
             (delivery_id, attempt, url, started_at, status_code, latency_ms, outcome, error,
              next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(d.id)
    .bind(d.attempts)
    .bind(&d.url)
    .bind(r.started_at)
    .bind(r.status_code)
    .bind(r.latency_ms)
    .bind(if r.succeeded { "succeeded" } else { "failed" })
    .bind(r.error)
    .bind(r.next_attempt_at.filter(|_| !r.succeeded))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives a lease back without counting the attempt (graceful shutdown before sending).
pub async fn release(ex: impl PgExecutor<'_>, id: Uuid, token: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE webhook_deliveries
            SET lease_token = NULL, lease_expires_at = NULL, attempts = GREATEST(attempts - 1, 0)
          WHERE id = $1 AND lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .execute(ex)
    .await?;
    Ok(())
}

/// A migration's deliveries, in event order, optionally scoped to a tenant.
pub async fn list_for_migration(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
) -> Result<Vec<DeliveryRow>, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
          WHERE migration_id = $1 ORDER BY sequence"
    ))
    .bind(migration_id)
    .fetch_all(ex)
    .await?)
}

/// Every attempt of a migration's deliveries, oldest first.
pub async fn attempts_for_migration(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
) -> Result<Vec<AttemptRow>, Error> {
    Ok(sqlx::query_as::<_, AttemptRow>(
        "SELECT a.delivery_id, a.attempt, a.url, a.started_at, a.status_code, a.latency_ms,
                a.outcome, a.error, a.next_attempt_at
           FROM webhook_delivery_attempts a
           JOIN webhook_deliveries d ON d.id = a.delivery_id
          WHERE d.migration_id = $1
          ORDER BY d.sequence, a.attempt",
    )
    .bind(migration_id)
    .fetch_all(ex)
    .await?)
}

/// A page of a migration's deliveries, in event order: those after the sequence `after` (a
/// page's cursor), at most `limit + 1` so the caller knows whether a next page exists. Reads the
/// `(migration_id, sequence)` unique index.
pub async fn page_for_migration(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
          WHERE migration_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
    ))
    .bind(migration_id)
    .bind(after.unwrap_or(i32::MIN))
    .bind(limit + 1)
    .fetch_all(ex)
    .await?)
}

/// A page of a batch's deliveries, in event order (as [`page_for_migration`]). Reads the
/// `(batch_id, sequence)` unique index.
pub async fn page_for_batch(
    ex: impl PgExecutor<'_>,
    batch_id: Uuid,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
          WHERE batch_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
    ))
    .bind(batch_id)
    .bind(after.unwrap_or(i32::MIN))
    .bind(limit + 1)
    .fetch_all(ex)
    .await?)
}

/// Every attempt of the deliveries `ids`, each delivery's oldest first.
pub async fn attempts_for_deliveries(
    ex: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<AttemptRow>, Error> {
    Ok(sqlx::query_as::<_, AttemptRow>(
        "SELECT delivery_id, attempt, url, started_at, status_code, latency_ms, outcome, error,
                next_attempt_at
           FROM webhook_delivery_attempts
          WHERE delivery_id = ANY($1)
          ORDER BY delivery_id, attempt",
    )
    .bind(ids)
    .fetch_all(ex)
    .await?)
}

/// One delivery, optionally scoped to a tenant (another tenant's id is "not found").
pub async fn get(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> Result<DeliveryRow, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
          WHERE id = $1 AND ($2::uuid IS NULL OR partner_id = $2)"
    ))
    .bind(id)
    .bind(partner)
    .fetch_one(ex)
    .await?)
}

/// Where the delivery `id` (of `partner`, if given) goes now: its migration's or batch's own
/// `callback_url`, else its partner's. `None`: no such delivery; `Some(None)`: nowhere.
pub async fn current_url(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> Result<Option<Option<String>>, Error> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT {TARGET_NOW} FROM webhook_deliveries d
          WHERE d.id = $1 AND ($2::uuid IS NULL OR d.partner_id = $2)"
    ))
    .bind(id)
    .bind(partner)
    .fetch_optional(ex)
    .await?)
}

/// Queues a delivery again, now, to `url` (where it goes now, [`current_url`]), with a fresh
/// retry schedule (it keeps its id, so consumers that already processed it can recognise it).
pub async fn redeliver(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
    url: &str,
    now: DateTime<Utc>,
) -> Result<DeliveryRow, Error> {
    Ok(sqlx::query_as::<_, DeliveryRow>(&format!(
        "WITH r AS (
             UPDATE webhook_deliveries
                SET status = 'pending', schedule_step = 0, next_attempt_at = $3, url = $5
              WHERE id = $1 AND ($2::uuid IS NULL OR partner_id = $2)
             RETURNING {DELIVERY_COLUMNS}),
         n AS (SELECT pg_notify($4, '') FROM r)
         SELECT r.* FROM r LEFT JOIN n ON true"
    ))
    .bind(id)
    .bind(partner)
    .bind(now)
    .bind(WEBHOOKS_CHANNEL)
    .bind(url)
    .fetch_one(ex)
    .await?)
}

/// The partner's default callback URL changed (or was removed): its undelivered webhooks that
/// go to the default (of migrations and batches without a `callback_url` of their own) are due
/// now, on a fresh retry schedule, so that a consumer that moved is not waited for on the
/// schedule of the old one (the claim sends them where webhooks go now, or, with no URL left,
/// ends them `failed`). With a `new_url`, an attempt in flight to the old one loses its lease:
/// its outcome is not recorded nor counted, and the delivery is sent again to the new one (same
/// `webhook-id`). Wakes the dispatchers. Returns how many.
pub async fn follow_partner_default(
    ex: impl PgExecutor<'_>,
    partner: Uuid,
    now: DateTime<Utc>,
    new_url: bool,
) -> Result<u64, Error> {
    let (moved, _notified): (i64, i64) = sqlx::query_as(
        "WITH u AS (
             UPDATE webhook_deliveries d
                SET next_attempt_at = LEAST(d.next_attempt_at, $2), schedule_step = 0,
                    -- Taken from an attempt in flight to the old URL (not when the URL was
                    -- removed: that attempt may still succeed), which is then not counted.
                    attempts = CASE WHEN $4 AND d.lease_token IS NOT NULL
                                    THEN GREATEST(d.attempts - 1, 0) ELSE d.attempts END,
                    lease_token = CASE WHEN $4 THEN NULL ELSE d.lease_token END,
                    lease_expires_at = CASE WHEN $4 THEN NULL ELSE d.lease_expires_at END
              WHERE d.partner_id = $1 AND d.status = 'pending'
                AND CASE WHEN d.migration_id IS NOT NULL
                         THEN (SELECT m.callback_url IS NULL FROM migrations m
                                WHERE m.id = d.migration_id)
                         ELSE (SELECT b.callback_url IS NULL FROM batches b
                                WHERE b.id = d.batch_id)
                    END
             RETURNING 1),
         n AS (SELECT pg_notify($3, '') FROM (SELECT 1 FROM u LIMIT 1) one)
         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
    )
    .bind(partner)
    .bind(now)
    .bind(WEBHOOKS_CHANNEL)
    .bind(new_url)
    .fetch_one(ex)
    .await?;
    Ok(u64::try_from(moved).unwrap_or(0))
}

/// The partner's signing secrets: the current one and, during a rotation's overlap, the
/// previous one with its expiry.
#[derive(Debug, sqlx::FromRow)]
pub struct SecretsRow {
    pub webhook_secret_enc: Vec<u8>,
    pub webhook_secret_previous_enc: Option<Vec<u8>>,
    pub webhook_secret_previous_expires_at: Option<DateTime<Utc>>,
    pub webhook_secret_older_enc: Option<Vec<u8>>,
    pub webhook_secret_older_expires_at: Option<DateTime<Utc>>,
}

pub async fn secrets(ex: impl PgExecutor<'_>, partner_id: Uuid) -> Result<SecretsRow, Error> {
    Ok(sqlx::query_as::<_, SecretsRow>(
        "SELECT webhook_secret_enc, webhook_secret_previous_enc,
                webhook_secret_previous_expires_at, webhook_secret_older_enc,
                webhook_secret_older_expires_at
           FROM partners WHERE id = $1",
    )
    .bind(partner_id)
    .fetch_one(ex)
    .await?)
}

/// Replaces the signing secret; the old one keeps signing until `previous_expires_at`. A
/// previous secret still in its overlap at `now` keeps signing until that overlap's end (the
/// one before it, if any, stops: at most three secrets sign).
pub async fn rotate_secret(
    ex: impl PgExecutor<'_>,
    partner_id: Uuid,
    new_secret_enc: &[u8],
    now: DateTime<Utc>,
    previous_expires_at: DateTime<Utc>,
) -> Result<(), Error> {
    let r = sqlx::query(
        "UPDATE partners
            SET webhook_secret_older_enc = CASE WHEN webhook_secret_previous_expires_at > $4
                                                THEN webhook_secret_previous_enc END,
                webhook_secret_older_expires_at = CASE WHEN webhook_secret_previous_expires_at > $4
                                                       THEN webhook_secret_previous_expires_at END,
                webhook_secret_previous_enc = webhook_secret_enc,
                webhook_secret_previous_expires_at = $3,
                webhook_secret_enc = $2
          WHERE id = $1",
    )
    .bind(partner_id)
    .bind(new_secret_enc)
    .bind(previous_expires_at)
    .bind(now)
    .execute(ex)
    .await?;
    if r.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}
