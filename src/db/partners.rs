//! Tenants and their API keys (hashes only).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::Error;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PartnerRow {
    pub id: Uuid,
    pub name: String,
    pub d360_partner_id: String,
    pub d360_api_key_enc: Vec<u8>,
    pub callback_url: Option<String>,
    pub webhook_secret_enc: Vec<u8>,
    /// The partner's 360dialog signup link, offered to its clients by the client page.
    pub signup_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const PARTNER_COLUMNS: &str = "id, name, d360_partner_id, d360_api_key_enc, callback_url, \
                               webhook_secret_enc, signup_url, created_at, updated_at";

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %p.id))]
pub async fn insert(ex: impl PgExecutor<'_>, p: &PartnerRow) -> Result<PartnerRow, Error> {
    Ok(sqlx::query_as::<_, PartnerRow>(&format!(
        "INSERT INTO partners (id, name, d360_partner_id, d360_api_key_enc, callback_url, webhook_secret_enc, signup_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {PARTNER_COLUMNS}"
    ))
    .bind(p.id)
    .bind(&p.name)
    .bind(&p.d360_partner_id)
    .bind(&p.d360_api_key_enc)
    .bind(&p.callback_url)
    .bind(&p.webhook_secret_enc)
    .bind(&p.signup_url)
    .fetch_one(ex)
    .await?)
}

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %id))]
pub async fn get(ex: impl PgExecutor<'_>, id: Uuid) -> Result<PartnerRow, Error> {
    Ok(sqlx::query_as::<_, PartnerRow>(&format!(
        "SELECT {PARTNER_COLUMNS} FROM partners WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(ex)
    .await?)
}

/// Newest first, keyset-paginated by id (UUIDv7).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    ex: impl PgExecutor<'_>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<PartnerRow>, Error> {
    Ok(sqlx::query_as::<_, PartnerRow>(&format!(
        "SELECT {PARTNER_COLUMNS} FROM partners
         WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The partner, its row locked against other updates until the end of the caller's
/// transaction (`FOR NO KEY UPDATE`: inserts of rows that reference the partner, which take
/// `FOR KEY SHARE`, are not held up).
pub async fn lock(ex: impl PgExecutor<'_>, id: Uuid) -> Result<PartnerRow, Error> {
    sqlx::query_as::<_, PartnerRow>(&format!(
        "SELECT {PARTNER_COLUMNS} FROM partners WHERE id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await?
    .ok_or(Error::NotFound)
}

/// Sets the name, the default callback URL and/or the signup link (`Some(None)` clears a URL).
#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %id))]
pub async fn update(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    name: Option<&str>,
    callback_url: Option<Option<&str>>,
    signup_url: Option<Option<&str>>,
) -> Result<PartnerRow, Error> {
    Ok(sqlx::query_as::<_, PartnerRow>(&format!(
        "UPDATE partners
            SET name = COALESCE($2, name),
                callback_url = CASE WHEN $3 THEN $4 ELSE callback_url END,
                signup_url = CASE WHEN $5 THEN $6 ELSE signup_url END
          WHERE id = $1
         RETURNING {PARTNER_COLUMNS}"
    ))
    .bind(id)
    .bind(name)
    .bind(callback_url.is_some())
    .bind(callback_url.flatten())
    .bind(signup_url.is_some())
    .bind(signup_url.flatten())
    .fetch_one(ex)
    .await?)
}

#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %partner_id, key.prefix = %prefix))]
pub async fn insert_api_key(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner_id: Uuid,
    prefix: &str,
    key_hash: &[u8],
) -> Result<ApiKeyRow, Error> {
    Ok(sqlx::query_as::<_, ApiKeyRow>(
        "INSERT INTO partner_api_keys (id, partner_id, prefix, key_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, partner_id, prefix, created_at, revoked_at",
    )
    .bind(id)
    .bind(partner_id)
    .bind(prefix)
    .bind(key_hash)
    .fetch_one(ex)
    .await?)
}

/// A partner's keys, newest first (prefixes only: the keys themselves are not stored).
pub async fn list_api_keys(
    ex: impl PgExecutor<'_>,
    partner_id: Uuid,
) -> Result<Vec<ApiKeyRow>, Error> {
    Ok(sqlx::query_as::<_, ApiKeyRow>(
        "SELECT id, partner_id, prefix, created_at, revoked_at FROM partner_api_keys
          WHERE partner_id = $1 ORDER BY id DESC",
    )
    .bind(partner_id)
    .fetch_all(ex)
    .await?)
}

/// Revokes a key; effective for the very next request (lookups exclude revoked keys).
#[tracing::instrument(level = "debug", skip_all, fields(partner.id = %partner_id, key.id = %key_id))]
pub async fn revoke_api_key(
    ex: impl PgExecutor<'_>,
    partner_id: Uuid,
    key_id: Uuid,
) -> Result<ApiKeyRow, Error> {
    Ok(sqlx::query_as::<_, ApiKeyRow>(
        "UPDATE partner_api_keys SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 AND partner_id = $2
         RETURNING id, partner_id, prefix, created_at, revoked_at",
    )
    .bind(key_id)
    .bind(partner_id)
    .fetch_one(ex)
    .await?)
}

/// The partner owning an active key with this hash.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn partner_for_key_hash(
    ex: impl PgExecutor<'_>,
    key_hash: &[u8],
) -> Result<Option<Uuid>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT partner_id FROM partner_api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(key_hash)
    .fetch_optional(ex)
    .await?)
}

/// The oldest partner with this exact name (used for the sandbox development partner).
pub async fn find_by_name(
    ex: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<PartnerRow>, Error> {
    Ok(sqlx::query_as::<_, PartnerRow>(&format!(
        "SELECT {PARTNER_COLUMNS} FROM partners WHERE name = $1 ORDER BY id LIMIT 1"
    ))
    .bind(name)
    .fetch_optional(ex)
    .await?)
}
