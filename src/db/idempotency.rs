//! `Idempotency-Key` records: the first request with a key stores its response; a repeat with
//! the same body replays it, a repeat with another body is refused.
//!
//! The key row is inserted at the start of the creating transaction, so a concurrent request with
//! the same key blocks on the primary key until the first commits (then replays) or rolls back
//! (then runs itself).

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

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %partner_id))]
pub async fn begin(
    conn: &mut PgConnection,
    partner_id: Uuid,
    key: &str,
    request_hashes: &[Vec<u8>],
) -> Result<Begin, Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (partner_id, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(partner_id)
    .bind(key)
    .bind(
        request_hashes
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    )
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
