//! The kept fingerprint key (`fingerprint_keys`, one row): sealed bytes in, sealed bytes out.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::Error;

/// The id of the one row.
pub const KEPT: Uuid = Uuid::from_u128(1);

/// The sealed key, if one is kept.
pub async fn get(ex: impl PgExecutor<'_>) -> Result<Option<Vec<u8>>, Error> {
    Ok(
        sqlx::query_scalar("SELECT key_enc FROM fingerprint_keys WHERE id = $1")
            .bind(KEPT)
            .fetch_optional(ex)
            .await?,
    )
}

/// Keeps `sealed` in place of the kept key, if any.
pub async fn replace(ex: impl PgExecutor<'_>, sealed: &[u8]) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO fingerprint_keys (id, key_enc) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET key_enc = EXCLUDED.key_enc, created_at = now()",
    )
    .bind(KEPT)
    .bind(sealed)
    .execute(ex)
    .await?;
    Ok(())
}

/// Keeps `sealed` unless a key is kept already (another replica starting at the same time).
pub async fn insert_if_absent(ex: impl PgExecutor<'_>, sealed: &[u8]) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO fingerprint_keys (id, key_enc) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(KEPT)
    .bind(sealed)
    .execute(ex)
    .await?;
    Ok(())
}
