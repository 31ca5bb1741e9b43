//! Batches (`POST /v1/batches`): a named set of migrations created in one transaction. A
//! batch's state and counts are computed from its migrations (`migrations_batch` index); see
//! the `20261206000012_batches` migration for why nothing on the worker's path writes here.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::migrations::{COLUMNS, HELD, MigrationRow, NewMigration};
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
    /// Nothing is admitted before this (Meta throttled one of its migrations).
    pub paused_until: Option<DateTime<Utc>>,
    /// How many times Meta throttled one of its migrations.
    pub throttles: i32,
}

const BATCH_COLUMNS: &str = "id, partner_id, name, max_in_flight, callback_url, total, \
    created_at, started_at, cancelled_at, finished_at, paused_until, throttles";

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
        // Through `migrations_phone_number` behind a fence, as `live_key_holders` does.
        "SELECT DISTINCT phone_number FROM (
                SELECT phone_number, state, api_key_enc IS NOT NULL AS has_key, api_key_superseded_at
                  FROM migrations WHERE phone_number = ANY($1) OFFSET 0) n
          WHERE state = 'completed' AND has_key AND api_key_superseded_at IS NULL",
    )
    .bind(numbers)
    .fetch_all(ex)
    .await?)
}

/// Inserts `queued` migrations of the batch `batch_id`, each with its `created` event, in one
/// statement (the single-create form is `migrations::insert`), all held for a slot ([`admit`]
/// starts them). A number
/// that has an active migration meanwhile (the one-active-per-number index) is skipped: the
/// rows returned are those inserted.
pub async fn insert_migrations(
    conn: &mut PgConnection,
    batch_id: Uuid,
    rows: &[(NewMigration, Option<String>)],
) -> Result<Vec<MigrationRow>, Error> {
    let mut out = Vec::with_capacity(rows.len());
    // In the order of the numbers, whatever the items' order: two batches listing the same
    // numbers in different orders then wait on each other's first common number in the
    // one-active-migration index, instead of each holding one the other needs (a deadlock).
    let mut sorted: Vec<&(NewMigration, Option<String>)> = rows.iter().collect();
    sorted.sort_by(|a, b| a.0.phone_number.cmp(&b.0.phone_number));
    // Chunks keep each statement's arrays (and its RETURNING) moderate.
    for chunk in sorted.chunks(1000) {
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
                     callback_url, version, batch_id, batch_reference, run_at)
                 SELECT u.id, u.partner_id, 'queued', u.flow, u.phone_number, u.source,
                     u.destination, u.business, u.channel_id, u.otp_method, u.otp_language,
                     u.attempts, u.pin_enc, u.metadata, u.callback_url, 1, $16, u.reference,
                     {HELD}
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                        $11::int[], $12::bytea[], $13::jsonb[], $14::text[], $15::text[])
                     AS u(id, partner_id, flow, phone_number, source, destination, business,
                        channel_id, otp_method, otp_language, attempts, pin_enc, metadata,
                        callback_url, reference)
                 ORDER BY u.phone_number
                 ON CONFLICT DO NOTHING
                 RETURNING {COLUMNS}),
             e AS (
                 INSERT INTO migration_events (migration_id, seq, type, from_state, to_state, data)
                 SELECT id, 1, $17, NULL, 'queued', '{{}}' FROM m)
             SELECT m.* FROM m ORDER BY m.id"
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
        .fetch_all(&mut *conn)
        .await?;
        out.extend(inserted);
    }
    out.sort_by_key(|row| row.id);
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
    // A migration waiting for a slot (held) counts as `queued`, whatever step it resumes at
    // (README, "Pacing").
    let by_state: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT CASE WHEN state IN {PACED_SQL} AND run_at = {HELD} THEN 'queued' ELSE state END,
                count(*)
           FROM migrations WHERE batch_id = $1 GROUP BY 1 ORDER BY 1"
    ))
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

/// Records when the batch finished (once: a later call keeps the first time), if every
/// migration of it is still terminal: a retry that re-opened it since the caller counted
/// (`reopen`) is not undone. The batch row is locked first, so the check's snapshot is taken
/// after any such retry committed. `None`: not finished (any more).
pub async fn set_finished(
    conn: &mut PgConnection,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT 1 FROM batches WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let finished = sqlx::query_scalar(
        "UPDATE batches SET finished_at = COALESCE(finished_at, $2) WHERE id = $1
            AND NOT EXISTS (SELECT 1 FROM migrations WHERE batch_id = $1
                             AND state NOT IN ('completed', 'failed', 'cancelled'))
         RETURNING finished_at",
    )
    .bind(id)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    tx.commit().await?;
    Ok(finished)
}

/// Records the batch's cancellation (once).
pub async fn set_cancelled(ex: impl PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query("UPDATE batches SET cancelled_at = COALESCE(cancelled_at, now()) WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// The migrations a batch cancel left (`crate::core::batches::finish_cancels`), as
/// `(partner_id, migration_id)`, at most `limit`: of a cancelled, unfinished batch, not
/// terminal, never completed (not rotating a key), and not retried on its own since the batch
/// was cancelled (no `retry_of` event after its `cancelled_at` but those of the batch's own
/// `retry_failed`, which the cancel overtook).
pub async fn unfinished_of_cancelled(
    ex: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "SELECT m.partner_id, m.id FROM batches b JOIN migrations m ON m.batch_id = b.id
          WHERE b.cancelled_at IS NOT NULL AND b.finished_at IS NULL
            AND m.state NOT IN ('completed', 'failed', 'cancelled') AND m.completed_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM migration_events e
                             WHERE e.migration_id = m.id AND e.created_at >= b.cancelled_at
                               AND e.data ? 'retry_of' AND NOT e.data ? 'batch_retry')
          ORDER BY m.id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(ex)
    .await?)
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
        // As `counts` counts them: a migration waiting for a slot is `queued`.
        q.push(format!(
            " AND CASE WHEN state IN {PACED_SQL} AND run_at = {HELD} THEN 'queued' ELSE state END = "
        ))
        .push_bind(s.clone());
    }
    if let Some(c) = &f.error_code {
        // Failed ones only, as `counts_by_error_code` counts them (a migration back in
        // `awaiting_otp` after a wrong code keeps `otp_invalid` in `error`).
        q.push(" AND state = 'failed' AND error->>'code' = ")
            .push_bind(c.clone());
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
    let columns = super::qualified(BATCH_COLUMNS, "b");
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

/// The paced states (`domain::pacing::PACED`) as an SQL list, exactly as the predicate of the
/// `migrations_batch_paced` index writes them (so the planner can use it).
const PACED_SQL: &str = "('queued', 'prechecking', 'initiating', 'requesting_otp')";

/// Most batches one admission looks at.
const ADMIT_BATCHES: i64 = 200;

/// **Admission**: gives free slots of batches to their held migrations, oldest first, and wakes
/// the workers when it released any. `only`: that batch alone (its create); else every batch
/// with held migrations and a free slot that is not paused (at most [`ADMIT_BATCHES`] a round).
/// Returns how many migrations it released.
///
/// Must run in a transaction (`conn`), which the caller commits. Two statements, in this
/// order, are what makes it exact with any number of replicas: the first locks the batch rows
/// (`FOR UPDATE SKIP LOCKED`: a batch another replica is admitting is skipped, not waited for),
/// and only then does the second count, with a snapshot taken after the lock, every slot
/// taken (committed by earlier admissions) and release the rest. Nothing else makes a batch's
/// migration take a slot: a migration entering a paced state from outside is held
/// (`domain::pacing::held_on_entry`). A held migration of a cancelled batch that is still
/// `queued` is not released (the cancel is about to cancel it); a retried one is.
pub async fn admit(conn: &mut PgConnection, only: Option<Uuid>) -> Result<u64, Error> {
    let batches: Vec<Uuid> = match only {
        Some(id) => {
            sqlx::query_scalar("SELECT id FROM batches WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
        }
        None => {
            // The batches with held migrations: one index probe per batch (a loose scan of
            // `migrations_batch_paced`), however many migrations each holds.
            sqlx::query_scalar(&format!(
                "WITH RECURSIVE held(batch_id) AS (
                     (SELECT batch_id FROM migrations
                       WHERE batch_id IS NOT NULL AND state IN {PACED_SQL} AND run_at = {HELD}
                       ORDER BY batch_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT m.batch_id FROM migrations m
                              WHERE m.batch_id > held.batch_id AND m.batch_id IS NOT NULL
                                AND m.state IN {PACED_SQL}
                                AND m.run_at = {HELD}
                              ORDER BY m.batch_id LIMIT 1)
                       FROM held WHERE held.batch_id IS NOT NULL)
                 SELECT b.id FROM batches b JOIN held ON held.batch_id = b.id
                  WHERE (b.paused_until IS NULL OR b.paused_until <= now())
                    -- A full batch is passed over before the limit, so that however many
                    -- batches are full, the others are reached (the count is repeated
                    -- under the lock below).
                    AND (SELECT count(*) FROM migrations c
                          WHERE c.batch_id = b.id AND c.state IN {PACED_SQL}
                            AND c.run_at < {HELD}) < b.max_in_flight
                  LIMIT $1
                  FOR UPDATE OF b SKIP LOCKED"
            ))
            .bind(ADMIT_BATCHES)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    if batches.is_empty() {
        return Ok(0);
    }
    let (released, _notified): (i64, i64) = sqlx::query_as(&format!(
        "WITH picked AS (
             SELECT h.id FROM batches b CROSS JOIN LATERAL (
                 SELECT m.id FROM migrations m
                  WHERE m.batch_id = b.id AND m.state IN {PACED_SQL} AND m.run_at = {HELD}
                    AND (b.cancelled_at IS NULL OR m.state <> 'queued')
                  ORDER BY m.run_at, m.id
                  LIMIT GREATEST(b.max_in_flight - (
                      SELECT count(*) FROM migrations c
                       WHERE c.batch_id = b.id AND c.state IN {PACED_SQL}
                         AND c.run_at < {HELD}), 0)) h
              WHERE b.id = ANY($1)),
         u AS (
             UPDATE migrations m SET run_at = now()
               FROM picked
              WHERE m.id = picked.id AND m.run_at = {HELD} AND m.state IN {PACED_SQL}
             RETURNING m.id),
         n AS (SELECT pg_notify($2, '') FROM (SELECT 1 FROM u LIMIT 1) one)
         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)"
    ))
    .bind(&batches)
    .bind(JOBS_CHANNEL)
    .fetch_one(&mut *conn)
    .await?;
    Ok(released as u64)
}

/// Meta throttled a migration of the batch: admit nothing more for `pause` (a later pause
/// never shortens an earlier one), and count it.
pub async fn pause(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    pause: std::time::Duration,
) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE batches
            SET paused_until = GREATEST(paused_until, now() + make_interval(secs => $2)),
                throttles = throttles + 1
          WHERE id = $1 RETURNING paused_until",
    )
    .bind(id)
    .bind(pause.as_secs_f64())
    .fetch_optional(ex)
    .await?
    .flatten())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_paced_list_is_the_domains() {
        let names: Vec<String> = crate::domain::pacing::PACED
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(super::PACED_SQL, format!("({})", names.join(", ")));
    }
}
