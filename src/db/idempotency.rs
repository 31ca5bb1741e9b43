//! `Idempotency-Key` records: the first request with a key stores its response; a repeat with
//! the same body replays it, a repeat with another body is refused.
//!
//! The key row is inserted at the start of the creating transaction, so a concurrent request with
//! the same key blocks on the primary key until the first commits (then replays) or rolls back
//! (then runs itself).
//!
//! A key is kept [`KEEP_HOURS`]: a request with a key older than that is a new request (the
//! row is taken over), and [`prune`] deletes such rows.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Error;

pub enum Begin {
    /// First use: go ahead, then call [`finish`] in the same transaction.
    New,
    /// Seen before with the same request: replay this response.
    Replay { status: u16, body: Value },
    /// Seen before with a different request.
    Mismatch,
}

/// How long a key answers with its first response.
pub const KEEP_HOURS: i32 = 24;

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %partner_id))]
pub async fn begin(
    conn: &mut PgConnection,
    partner_id: Uuid,
    key: &str,
    request_hashes: &[Vec<u8>],
) -> Result<Begin, Error> {
    // New, or older than KEEP_HOURS: taken over as new.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (partner_id, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (partner_id, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, status_code = NULL, response = NULL,
                created_at = now()
          WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)",
    )
    .bind(partner_id)
    .bind(key)
    .bind(
        request_hashes
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    )
    .bind(KEEP_HOURS)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Begin::New);
    }
    let (hash, status, body): (Vec<u8>, Option<i32>, Option<Value>) = sqlx::query_as(
        "SELECT request_hash, status_code, response FROM idempotency_keys
         WHERE partner_id = $1 AND key = $2",
    )
    .bind(partner_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if !request_hashes.contains(&hash) {
        return Ok(Begin::Mismatch);
    }
    match (status, body) {
        (Some(s), Some(b)) => Ok(Begin::Replay {
            status: u16::try_from(s).unwrap_or(200),
            body: b,
        }),
        // Only reachable if a transaction committed the placeholder without a response,
        // which `finish` prevents; treat as a conflict.
        _ => Ok(Begin::Mismatch),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %partner_id))]
pub async fn finish(
    conn: &mut PgConnection,
    partner_id: Uuid,
    key: &str,
    status: u16,
    body: &Value,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = $3, response = $4
         WHERE partner_id = $1 AND key = $2",
    )
    .bind(partner_id)
    .bind(key)
    .bind(i32::from(status))
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes keys older than [`KEEP_HOURS`] (at most `limit` a call); how many.
pub async fn prune(ex: impl sqlx::PgExecutor<'_>, limit: i64) -> Result<u64, Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (
             SELECT ctid FROM idempotency_keys
              WHERE created_at < now() - make_interval(hours => $1) LIMIT $2)",
    )
    .bind(KEEP_HOURS)
    .bind(limit)
    .execute(ex)
    .await?
    .rows_affected())
}
