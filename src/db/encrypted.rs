//! Generic access to encrypted columns, for re-sealing them under a new key
//! ([`crate::crypto_rotation`]). Table and column names come only from the static
//! [`crate::crypto_rotation::ENCRYPTED_COLUMNS`] list, never from input, so formatting them into
//! the SQL is safe.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::Error;

/// Up to `limit` rows of `table` with a non-null `column`, ids after `after`, in id order
/// (keyset pagination).
#[tracing::instrument(level = "debug", skip_all, fields(table, column))]
pub async fn batch(
    ex: impl PgExecutor<'_>,
    table: &'static str,
    column: &'static str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, Vec<u8>)>, Error> {
    Ok(sqlx::query_as(&format!(
        "SELECT id, {column} FROM {table}
         WHERE {column} IS NOT NULL AND ($1::uuid IS NULL OR id > $1)
         ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The row of `table` with the highest id and a non-null `column`, if any.
#[tracing::instrument(level = "debug", skip_all, fields(table, column))]
pub async fn newest(
    ex: impl PgExecutor<'_>,
    table: &'static str,
    column: &'static str,
) -> Result<Option<(Uuid, Vec<u8>)>, Error> {
    Ok(sqlx::query_as(&format!(
        "SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT 1"
    ))
    .fetch_optional(ex)
    .await?)
}

/// Replaces `column` of row `id` with `new` only if it still holds `old`, so a concurrent write
/// (a new code, a rotated webhook secret, a cleared value) wins. Returns whether it replaced.
#[tracing::instrument(level = "debug", skip_all, fields(table, column, id = %id))]
pub async fn replace_if_unchanged(
    ex: impl PgExecutor<'_>,
    table: &'static str,
    column: &'static str,
    id: Uuid,
    old: &[u8],
    new: &[u8],
) -> Result<bool, Error> {
    let r = sqlx::query(&format!(
        "UPDATE {table} SET {column} = $3 WHERE id = $1 AND {column} = $2"
    ))
    .bind(id)
    .bind(old)
    .bind(new)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}
