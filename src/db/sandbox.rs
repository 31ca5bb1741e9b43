//! The built-in sandbox's world in sandbox mode: one row, rewritten after every change, so a
//! restart of `serve` is invisible to the migrations in flight. Created on first use (not part
//! of the schema migrations: production databases never hold it).

use sqlx::PgPool;

/// Creates the table if it is missing.
pub async fn ensure_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS sandbox_world (
             id boolean PRIMARY KEY DEFAULT true CHECK (id),
             snapshot jsonb NOT NULL,
             saved_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The stored snapshot (JSON), if any.
pub async fn load(pool: &PgPool) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT snapshot::text FROM sandbox_world WHERE id")
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(text,)| text.into_bytes()))
}

/// Replaces the stored snapshot (JSON bytes).
pub async fn save(pool: &PgPool, snapshot: &[u8]) -> Result<(), sqlx::Error> {
    let text = std::str::from_utf8(snapshot).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO sandbox_world (id, snapshot) VALUES (true, $1::jsonb)
         ON CONFLICT (id) DO UPDATE SET snapshot = EXCLUDED.snapshot, saved_at = now()",
    )
    .bind(text)
    .execute(pool)
    .await?;
    Ok(())
}
