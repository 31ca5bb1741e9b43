//! Queries behind the support dashboard (`/dashboard`): its sessions, the overview's
//! aggregates and the list's filters. Every read takes the caller's tenant scope (`None`: the
//! admin sees every partner).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::Error;
use super::migrations::{COLUMNS, MigrationRow};

/// A live session: who signed in, with which key, and its CSRF token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub partner_id: Option<Uuid>,
    pub key_hash: Vec<u8>,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// Stores a new session (the id's hash, never the id). Also sweeps expired sessions.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create_session(
    ex: impl PgExecutor<'_> + Copy,
    id_hash: &[u8],
    partner_id: Option<Uuid>,
    key_hash: &[u8],
    csrf_token: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at < now()")
        .execute(ex)
        .await?;
    sqlx::query(
        "INSERT INTO dashboard_sessions (id_hash, partner_id, key_hash, csrf_token, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id_hash)
    .bind(partner_id)
    .bind(key_hash)
    .bind(csrf_token)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The unexpired session with this id hash whose partner key is still active. (Admin
/// sessions are checked against `ADMIN_API_KEY` by the caller.)
#[tracing::instrument(level = "debug", skip_all)]
pub async fn session(ex: impl PgExecutor<'_>, id_hash: &[u8]) -> Result<Option<SessionRow>, Error> {
    Ok(sqlx::query_as::<_, SessionRow>(
        "SELECT s.partner_id, s.key_hash, s.csrf_token, s.expires_at
           FROM dashboard_sessions s
          WHERE s.id_hash = $1 AND s.expires_at > now()
            AND (s.partner_id IS NULL OR EXISTS (
                 SELECT 1 FROM partner_api_keys k
                  WHERE k.key_hash = s.key_hash AND k.partner_id = s.partner_id
                    AND k.revoked_at IS NULL))",
    )
    .bind(id_hash)
    .fetch_optional(ex)
    .await?)
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn delete_session(ex: impl PgExecutor<'_>, id_hash: &[u8]) -> Result<(), Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(ex)
        .await?;
    Ok(())
}

/// Migrations per state.
pub async fn counts_by_state(
    ex: impl PgExecutor<'_>,
    partner: Option<Uuid>,
) -> Result<Vec<(String, i64)>, Error> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) FROM migrations
          WHERE ($1::uuid IS NULL OR partner_id = $1) GROUP BY state",
    )
    .bind(partner)
    .fetch_all(ex)
    .await?)
}

/// Non-terminal migrations that have not changed state for longer than `minutes`, longest
/// waiting first.
pub async fn stuck(
    ex: impl PgExecutor<'_>,
    partner: Option<Uuid>,
    minutes: f64,
    limit: i64,
) -> Result<Vec<MigrationRow>, Error> {
    Ok(sqlx::query_as::<_, MigrationRow>(&format!(
        "SELECT {COLUMNS} FROM migrations
          WHERE ($1::uuid IS NULL OR partner_id = $1)
            AND state NOT IN ('completed', 'failed', 'cancelled')
            AND state_entered_at < now() - make_interval(secs => $2 * 60)
          ORDER BY state_entered_at LIMIT $3"
    ))
    .bind(partner)
    .bind(minutes)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Migrations that failed in the last 24 hours and are still failed (not retried since), by
/// `error.code`, most frequent first.
pub async fn recent_failures(
    ex: impl PgExecutor<'_>,
    partner: Option<Uuid>,
) -> Result<Vec<(Option<String>, i64)>, Error> {
    Ok(sqlx::query_as(
        "SELECT error->>'code' AS code, count(*) AS n FROM migrations
          WHERE ($1::uuid IS NULL OR partner_id = $1)
            AND state = 'failed' AND state_entered_at > now() - interval '24 hours'
          GROUP BY 1 ORDER BY n DESC, code",
    )
    .bind(partner)
    .fetch_all(ex)
    .await?)
}

/// Throughput over the last hour in twelve 5-minute buckets (0 = the oldest):
/// `(bucket, created, completed, failed)`.
pub async fn throughput_last_hour(
    ex: impl PgExecutor<'_>,
    partner: Option<Uuid>,
) -> Result<Vec<(i32, i64, i64, i64)>, Error> {
    Ok(sqlx::query_as(
        "WITH t AS (SELECT now() AS now),
         ev AS (
             SELECT created_at AS at, 'created' AS kind FROM migrations, t
              WHERE ($1::uuid IS NULL OR partner_id = $1) AND created_at > t.now - interval '1 hour'
             UNION ALL
             SELECT completed_at, 'completed' FROM migrations, t
              WHERE ($1::uuid IS NULL OR partner_id = $1) AND state = 'completed'
                AND completed_at > t.now - interval '1 hour'
             UNION ALL
             SELECT state_entered_at, 'failed' FROM migrations, t
              WHERE ($1::uuid IS NULL OR partner_id = $1) AND state = 'failed'
                AND state_entered_at > t.now - interval '1 hour')
         SELECT LEAST(11, GREATEST(0, 11 - floor(extract(epoch FROM (t.now - ev.at)) / 300)))::int AS bucket,
                count(*) FILTER (WHERE kind = 'created'),
                count(*) FILTER (WHERE kind = 'completed'),
                count(*) FILTER (WHERE kind = 'failed')
           FROM ev, t GROUP BY 1 ORDER BY 1",
    )
    .bind(partner)
    .fetch_all(ex)
    .await?)
}

/// Partner names by id (for the admin's list and filter).
pub async fn partner_names(ex: impl PgExecutor<'_>) -> Result<Vec<(Uuid, String)>, Error> {
    Ok(
        sqlx::query_as("SELECT id, name FROM partners ORDER BY name, id LIMIT 1000")
            .fetch_all(ex)
            .await?,
    )
}
