//! Client page links (`client_pages`): one row per migration whose end client has a page.
//! Only the SHA-256 of a link's token is stored; see `core::client_page` for the token.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor, Row};
use uuid::Uuid;

use super::Error;
use super::migrations::MigrationRow;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientPageRow {
    pub migration_id: Uuid,
    pub generation: i32,
    pub token_hash: Vec<u8>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
    pub submissions: i32,
    pub last_submission_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "migration_id, generation, token_hash, issued_at, expires_at, opened_at, \
    submissions, last_submission_at";

/// The first link of a migration (in the create's transaction).
pub async fn insert(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<ClientPageRow, Error> {
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "INSERT INTO client_pages (migration_id, generation, token_hash, expires_at)
         VALUES ($1, 1, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(migration_id)
    .bind(token_hash)
    .bind(expires_at)
    .fetch_one(ex)
    .await?)
}

/// The link of one migration, if it has one.
pub async fn get(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
) -> Result<Option<ClientPageRow>, Error> {
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "SELECT {COLUMNS} FROM client_pages WHERE migration_id = $1"
    ))
    .bind(migration_id)
    .fetch_optional(ex)
    .await?)
}

/// The columns of a migration and of its link, for [`with_page_from_row`].
static WITH_PAGE_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}, cp.generation AS cp_generation, cp.token_hash AS cp_token_hash,
                cp.issued_at AS cp_issued_at, cp.expires_at AS cp_expires_at,
                cp.opened_at AS cp_opened_at, cp.submissions AS cp_submissions,
                cp.last_submission_at AS cp_last_submission_at",
        super::qualified(super::migrations::COLUMNS, "m")
    )
});

/// [`migration_with_page`]'s statement, built once.
static MIGRATION_WITH_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}
           FROM migrations m LEFT JOIN client_pages cp ON cp.migration_id = m.id
          WHERE m.id = $1 AND ($2::uuid IS NULL OR m.partner_id = $2)",
        *WITH_PAGE_COLUMNS
    )
});

/// [`migration_with_page_for_key`]'s statement, built once: the key's row, with the migration
/// only if it is the key's partner's.
static MIGRATION_WITH_PAGE_FOR_KEY_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT k.partner_id AS key_partner_id, {}
           FROM partner_api_keys k
           LEFT JOIN migrations m ON m.id = $1 AND m.partner_id = k.partner_id
           LEFT JOIN client_pages cp ON cp.migration_id = m.id
          WHERE k.key_hash = $2 AND k.revoked_at IS NULL",
        *WITH_PAGE_COLUMNS
    )
});

/// A migration with its link, if it has one.
pub type WithPage = (MigrationRow, Option<ClientPageRow>);

/// One migration (optionally scoped to a tenant, as [`super::migrations::get`]) with its link,
/// if it has one, in one statement: what `GET /v1/migrations/{id}` shows.
pub async fn migration_with_page(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> Result<WithPage, Error> {
    let row = sqlx::query(&MIGRATION_WITH_PAGE_SQL)
        .bind(id)
        .bind(partner)
        .fetch_one(ex)
        .await?;
    with_page_from_row(&row)
}

/// [`migration_with_page`] for whoever holds the partner API key with this hash, with the key
/// looked up in the same statement: `None` when no live key has this hash; else the key's
/// partner, and its migration `id` if that partner has one.
pub async fn migration_with_page_for_key(
    ex: impl PgExecutor<'_>,
    key_hash: &[u8],
    id: Uuid,
) -> Result<Option<(Uuid, Option<WithPage>)>, Error> {
    let Some(row) = sqlx::query(&MIGRATION_WITH_PAGE_FOR_KEY_SQL)
        .bind(id)
        .bind(key_hash)
        .fetch_optional(ex)
        .await?
    else {
        return Ok(None);
    };
    let partner: Uuid = row.try_get("key_partner_id")?;
    let found = match row.try_get::<Option<Uuid>, _>("id")? {
        Some(_) => Some(with_page_from_row(&row)?),
        None => None,
    };
    Ok(Some((partner, found)))
}

fn with_page_from_row(row: &PgRow) -> Result<WithPage, Error> {
    let migration = MigrationRow::from_row(row)?;
    let page = match row.try_get::<Option<i32>, _>("cp_generation")? {
        Some(generation) => Some(ClientPageRow {
            migration_id: migration.id,
            generation,
            token_hash: row.try_get("cp_token_hash")?,
            issued_at: row.try_get("cp_issued_at")?,
            expires_at: row.try_get("cp_expires_at")?,
            opened_at: row.try_get("cp_opened_at")?,
            submissions: row.try_get("cp_submissions")?,
            last_submission_at: row.try_get("cp_last_submission_at")?,
        }),
        None => None,
    };
    Ok((migration, page))
}

/// The links of several migrations (a list page), in no particular order.
pub async fn get_many(
    ex: impl PgExecutor<'_>,
    migration_ids: &[Uuid],
) -> Result<Vec<ClientPageRow>, Error> {
    if migration_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "SELECT {COLUMNS} FROM client_pages WHERE migration_id = ANY($1)"
    ))
    .bind(migration_ids)
    .fetch_all(ex)
    .await?)
}

/// The link whose token has this SHA-256.
pub async fn by_token_hash(
    ex: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<ClientPageRow>, Error> {
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "SELECT {COLUMNS} FROM client_pages WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(ex)
    .await?)
}

/// Replaces generation `from` of the link by `from + 1`, whose token has `token_hash`: a new
/// expiry, not opened, no submissions yet. `None` when the link is not at `from` (a rotation
/// raced this one) or the migration has none.
pub async fn rotate(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    from: i32,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<Option<ClientPageRow>, Error> {
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "UPDATE client_pages
            SET generation = generation + 1, token_hash = $3, issued_at = now(), expires_at = $4,
                opened_at = NULL, submissions = 0, last_submission_at = NULL
          WHERE migration_id = $1 AND generation = $2
          RETURNING {COLUMNS}"
    ))
    .bind(migration_id)
    .bind(from)
    .bind(token_hash)
    .bind(expires_at)
    .fetch_optional(ex)
    .await?)
}

/// Marks this generation of the link opened; true only for the first opening.
pub async fn mark_opened(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    generation: i32,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE client_pages SET opened_at = now()
          WHERE migration_id = $1 AND generation = $2 AND opened_at IS NULL",
    )
    .bind(migration_id)
    .bind(generation)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Counts one submission (a code or a resend request) through this generation of the link.
pub async fn count_submission(
    ex: impl PgExecutor<'_>,
    migration_id: Uuid,
    generation: i32,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE client_pages SET submissions = submissions + 1, last_submission_at = now()
          WHERE migration_id = $1 AND generation = $2",
    )
    .bind(migration_id)
    .bind(generation)
    .execute(ex)
    .await?;
    Ok(())
}

/// The first links of many new migrations (a batch create, in its transaction).
pub async fn insert_many(
    ex: impl PgExecutor<'_>,
    migration_ids: &[Uuid],
    token_hashes: &[Vec<u8>],
    expires_at: DateTime<Utc>,
) -> Result<Vec<ClientPageRow>, Error> {
    Ok(sqlx::query_as::<_, ClientPageRow>(&format!(
        "INSERT INTO client_pages (migration_id, generation, token_hash, expires_at)
         SELECT u.id, 1, u.hash, $3 FROM unnest($1::uuid[], $2::bytea[]) AS u(id, hash)
         RETURNING {COLUMNS}"
    ))
    .bind(migration_ids)
    .bind(token_hashes)
    .bind(expires_at)
    .fetch_all(ex)
    .await?)
}
