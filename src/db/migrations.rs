//! Migration rows: the domain record and, through its `run_at`/`attempt`/`lease_*` columns,
//! the job that advances it.
//!
//! Claiming follows the lease pattern (`job-engines.md` §5): one autocommit statement picks a
//! due row with `FOR UPDATE SKIP LOCKED` and stamps a fresh `lease_token`; the worker then calls
//! upstreams holding no transaction or connection, and every later write is guarded by
//! `lease_token = $token`, so a worker whose lease expired (and was re-claimed) can no longer
//! change anything. An expired lease is simply claimable again: rescue is the claim itself, with
//! the state conditions inside the same UPDATE.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::events::{self, NewEvent};
use super::{Error, JOBS_CHANNEL};
use crate::domain::MigrationState;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MigrationRow {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub state: String,
    pub flow: String,
    pub phone_number: String,
    pub source_waba_id: String,
    pub destination_waba_id: String,
    pub meta_business_id: String,
    pub phone_number_id: Option<String>,
    pub channel_id: Option<String>,
    pub d360_client_id: Option<String>,
    pub otp_method: String,
    pub otp_language: String,
    pub otp_requested_at: Option<DateTime<Utc>>,
    pub otp_resend_available_at: Option<DateTime<Utc>>,
    pub otp_attempts_left: i32,
    pub otp_expires_at: Option<DateTime<Utc>>,
    pub otp_code_enc: Option<Vec<u8>>,
    pub pin_enc: Vec<u8>,
    pub precheck: Option<Value>,
    pub templates: Option<Value>,
    pub api_key_enc: Option<Vec<u8>>,
    pub api_key_id: Option<String>,
    pub api_key_address: Option<String>,
    pub api_key_generated_at: Option<DateTime<Utc>>,
    pub api_key_verified_at: Option<DateTime<Utc>>,
    pub step_memo: Value,
    pub summary: Option<Value>,
    pub error: Option<Value>,
    pub failed_step: Option<String>,
    pub metadata: Value,
    pub callback_url: Option<String>,
    pub run_at: DateTime<Utc>,
    pub attempt: i32,
    pub lease_token: Option<Uuid>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub state_entered_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl MigrationRow {
    pub fn state(&self) -> MigrationState {
        self.state.parse().unwrap_or(MigrationState::Failed)
    }
}

pub(crate) const COLUMNS: &str = "id, partner_id, state, flow, phone_number, source_waba_id, \
    destination_waba_id, meta_business_id, phone_number_id, channel_id, d360_client_id, \
    otp_method, otp_language, otp_requested_at, otp_resend_available_at, otp_attempts_left, \
    otp_expires_at, otp_code_enc, pin_enc, precheck, templates, api_key_enc, api_key_id, \
    api_key_address, api_key_generated_at, api_key_verified_at, step_memo, summary, error, \
    failed_step, \
    metadata, callback_url, run_at, attempt, lease_token, lease_owner, lease_expires_at, \
    state_entered_at, version, created_at, updated_at, completed_at";

/// Name of the partial unique index allowing one active migration per number.
pub const ONE_ACTIVE_PER_NUMBER: &str = "migrations_one_active_per_number";

pub struct NewMigration {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub flow: String,
    pub phone_number: String,
    pub source_waba_id: String,
    pub destination_waba_id: String,
    pub meta_business_id: String,
    pub channel_id: Option<String>,
    pub otp_method: String,
    pub otp_language: String,
    pub otp_attempts_left: i32,
    pub pin_enc: Vec<u8>,
    pub metadata: Value,
    pub callback_url: Option<String>,
}

/// Inserts a `queued` migration with its `created` event and wakes the workers.
#[tracing::instrument(skip_all, fields(migration.id = %m.id))]
pub async fn insert(conn: &mut PgConnection, m: &NewMigration) -> Result<MigrationRow, Error> {
    let row = sqlx::query_as::<_, MigrationRow>(&format!(
        "INSERT INTO migrations (id, partner_id, state, flow, phone_number, source_waba_id,
            destination_waba_id, meta_business_id, channel_id, otp_method, otp_language,
            otp_attempts_left, pin_enc, metadata, callback_url, version)
         VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1)
         RETURNING {COLUMNS}"
    ))
    .bind(m.id)
    .bind(m.partner_id)
    .bind(&m.flow)
    .bind(&m.phone_number)
    .bind(&m.source_waba_id)
    .bind(&m.destination_waba_id)
    .bind(&m.meta_business_id)
    .bind(&m.channel_id)
    .bind(&m.otp_method)
    .bind(&m.otp_language)
    .bind(m.otp_attempts_left)
    .bind(&m.pin_enc)
    .bind(&m.metadata)
    .bind(&m.callback_url)
    .fetch_one(&mut *conn)
    .await?;
    events::insert(
        &mut *conn,
        row.id,
        1,
        &NewEvent {
            kind: "migration.created",
            from_state: None,
            to_state: Some("queued".into()),
            data: serde_json::json!({}),
        },
    )
    .await?;
    notify(&mut *conn).await?;
    crate::metrics::migration_created();
    Ok(row)
}

/// Wakes idle workers once the current transaction commits.
pub async fn notify(ex: impl PgExecutor<'_>) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(ex)
        .await?;
    Ok(())
}

/// One migration, optionally scoped to a tenant (another tenant's id is "not found").
#[tracing::instrument(skip_all, fields(migration.id = %id))]
pub async fn get(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    partner: Option<Uuid>,
) -> Result<MigrationRow, Error> {
    Ok(sqlx::query_as::<_, MigrationRow>(&format!(
        "SELECT {COLUMNS} FROM migrations WHERE id = $1 AND ($2::uuid IS NULL OR partner_id = $2)"
    ))
    .bind(id)
    .bind(partner)
    .fetch_one(ex)
    .await?)
}

/// The active (non-terminal) migration of a number, if any.
pub async fn active_for_number(
    ex: impl PgExecutor<'_>,
    phone_number: &str,
) -> Result<Option<(Uuid, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, partner_id FROM migrations WHERE phone_number = $1
         AND state NOT IN ('completed', 'failed', 'cancelled')",
    )
    .bind(phone_number)
    .fetch_optional(ex)
    .await?)
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub partner_id: Option<Uuid>,
    pub state: Option<String>,
    pub phone_number: Option<String>,
    /// Digits (and `+`) the number contains (the dashboard's search).
    pub phone_contains: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    /// Inclusive lower bound (the dashboard's whole days); `created_after` is exclusive.
    pub created_from: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Keyset cursor: only ids below this one (ids are UUIDv7, so older).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// Newest first. Fetches `limit + 1` rows so the caller knows whether a next page exists.
#[tracing::instrument(skip_all)]
pub async fn list(ex: impl PgExecutor<'_>, f: &ListFilter) -> Result<Vec<MigrationRow>, Error> {
    let mut q: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM migrations WHERE true"));
    if let Some(p) = f.partner_id {
        q.push(" AND partner_id = ").push_bind(p);
    }
    if let Some(s) = &f.state {
        q.push(" AND state = ").push_bind(s.clone());
    }
    if let Some(n) = &f.phone_number {
        q.push(" AND phone_number = ").push_bind(n.clone());
    }
    if let Some(n) = &f.phone_contains {
        // Only digits and '+' reach here: no LIKE metacharacters to escape.
        q.push(" AND phone_number LIKE ")
            .push_bind(format!("%{n}%"));
    }
    if let Some(t) = f.created_after {
        q.push(" AND created_at > ").push_bind(t);
    }
    if let Some(t) = f.created_from {
        q.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = f.created_before {
        q.push(" AND created_at < ").push_bind(t);
    }
    if let Some(id) = f.before_id {
        q.push(" AND id < ").push_bind(id);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit + 1);
    Ok(q.build_query_as::<MigrationRow>().fetch_all(ex).await?)
}

/// Claims up to `limit` migrations for `owner`, each with a fresh lease token.
///
/// Rescues come first: rows whose worker died (lease expired) are taken before ordinary due
/// rows, oldest expiry first, so a crashed replica's migrations resume right after their lease
/// even when a backlog is waiting. Then due, unleased rows by `run_at`.
#[tracing::instrument(skip_all, fields(worker = %owner))]
pub async fn claim(
    ex: impl PgExecutor<'_>,
    owner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<MigrationRow>, Error> {
    // CTEs are an optimisation fence (Oban's lesson): the planner cannot turn the LIMIT
    // subqueries into a join that locks or updates more rows than asked for. CTEs run only as
    // far as the outer query pulls, so `due` is read (and locks rows) only when the rescues do
    // not fill the limit.
    Ok(sqlx::query_as::<_, MigrationRow>(&format!(
        "WITH rescue AS (
             SELECT id FROM migrations
              WHERE lease_token IS NOT NULL
                AND lease_expires_at < now()
                AND state NOT IN ('completed', 'failed', 'cancelled')
              ORDER BY lease_expires_at
              LIMIT $3
              FOR UPDATE SKIP LOCKED),
         due AS (
             SELECT id FROM migrations
              WHERE lease_token IS NULL
                AND run_at <= now()
                AND state NOT IN ('completed', 'failed', 'cancelled')
              ORDER BY run_at, id
              LIMIT $3
              FOR UPDATE SKIP LOCKED),
         picked AS (
             SELECT id FROM rescue UNION ALL SELECT id FROM due LIMIT $3)
         UPDATE migrations m
            SET lease_token = gen_random_uuid(),
                lease_owner = $1,
                lease_expires_at = now() + make_interval(secs => $2),
                attempt = m.attempt + 1
           FROM picked
          WHERE m.id = picked.id
            AND m.state NOT IN ('completed', 'failed', 'cancelled')
            AND (m.lease_token IS NULL OR m.lease_expires_at < now())
         RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("m.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Extends a held lease. `Ok(false)`: the lease is lost (expired and re-claimed, cancelled...).
pub async fn heartbeat(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    lease: Duration,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE migrations SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_token = $2",
    )
    .bind(id)
    .bind(token)
    .bind(lease.as_secs_f64())
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// When the row may run next.
#[derive(Debug, Clone, Copy)]
pub enum RunAt {
    Now,
    After(Duration),
    At(DateTime<Utc>),
}

/// What happens to the lease with this write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Leave lease columns untouched.
    Keep,
    /// Keep holding it and push its expiry out (the worker continues with the next step).
    Extend(Duration),
    /// Give it up.
    Release,
}

/// A write to a migration row. Every `Some` field is set; `Option<Option<_>>` fields can clear.
#[derive(Debug, Default, Clone)]
pub struct Patch {
    pub state: Option<MigrationState>,
    pub phone_number_id: Option<String>,
    pub channel_id: Option<String>,
    pub d360_client_id: Option<String>,
    pub precheck: Option<Value>,
    pub templates: Option<Value>,
    pub otp_method: Option<String>,
    pub otp_requested_at: Option<DateTime<Utc>>,
    pub otp_resend_available_at: Option<DateTime<Utc>>,
    pub otp_expires_at: Option<Option<DateTime<Utc>>>,
    pub otp_attempts_left: Option<i32>,
    pub otp_code_enc: Option<Option<Vec<u8>>>,
    pub api_key_enc: Option<Vec<u8>>,
    pub api_key_id: Option<Option<String>>,
    pub api_key_address: Option<Option<String>>,
    pub api_key_generated_at: Option<DateTime<Utc>>,
    pub api_key_verified_at: Option<DateTime<Utc>>,
    pub step_memo: Option<Value>,
    pub summary: Option<Value>,
    pub error: Option<Option<Value>>,
    pub failed_step: Option<Option<String>>,
    pub run_at: Option<RunAt>,
    /// Set the step attempt counter (0 after a transition; 1 when the same worker continues).
    pub attempt: Option<i32>,
    /// Undo the claim's increment (polls that should not count as attempts).
    pub uncount_attempt: bool,
    pub completed_now: bool,
}

/// Conditions a write needs; all must hold or nothing is written.
#[derive(Debug, Default, Clone)]
pub struct Guard {
    /// Tenant scope.
    pub partner_id: Option<Uuid>,
    /// The caller's lease token must still be the row's.
    pub lease_token: Option<Uuid>,
    /// The row must be in one of these states.
    pub states: Option<Vec<MigrationState>>,
    /// The OTP must not have expired.
    pub otp_unexpired: bool,
}

/// Applies `patch` to migration `id` if `guard` holds, in one statement; appends `event` (with
/// the bumped version as its sequence) and notifies workers when the row becomes runnable now.
/// Returns the updated row, or `None` if the guard failed. Use inside a transaction so the
/// event, the webhook delivery it causes and the state change commit together.
#[tracing::instrument(skip_all, fields(migration.id = %id, to = ?patch.state))]
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    guard: &Guard,
    patch: &Patch,
    lease: Lease,
    event: Option<NewEvent>,
) -> Result<Option<MigrationRow>, Error> {
    let mut q: QueryBuilder<'_, Postgres> = QueryBuilder::new("UPDATE migrations SET ");
    let mut set = q.separated(", ");
    set.push("version = version + ")
        .push_bind_unseparated(i32::from(event.is_some()));
    if let Some(s) = patch.state {
        set.push("state = ").push_bind_unseparated(s.as_str());
        set.push("state_entered_at = now()");
    }
    macro_rules! set_opt {
        ($field:ident) => {
            if let Some(v) = &patch.$field {
                set.push(concat!(stringify!($field), " = "))
                    .push_bind_unseparated(v.clone());
            }
        };
    }
    set_opt!(phone_number_id);
    set_opt!(channel_id);
    set_opt!(d360_client_id);
    set_opt!(precheck);
    set_opt!(templates);
    set_opt!(otp_method);
    set_opt!(otp_requested_at);
    set_opt!(otp_resend_available_at);
    set_opt!(otp_expires_at);
    set_opt!(otp_attempts_left);
    set_opt!(otp_code_enc);
    set_opt!(api_key_enc);
    set_opt!(api_key_id);
    set_opt!(api_key_address);
    set_opt!(api_key_generated_at);
    set_opt!(api_key_verified_at);
    set_opt!(step_memo);
    set_opt!(summary);
    set_opt!(error);
    set_opt!(failed_step);
    set_opt!(attempt);
    if patch.uncount_attempt {
        set.push("attempt = GREATEST(attempt - 1, 0)");
    }
    if patch.completed_now {
        set.push("completed_at = now()");
    }
    match patch.run_at {
        Some(RunAt::Now) => {
            set.push("run_at = now()");
        }
        Some(RunAt::After(d)) => {
            set.push("run_at = now() + make_interval(secs => ")
                .push_bind_unseparated(d.as_secs_f64())
                .push_unseparated(")");
        }
        Some(RunAt::At(t)) => {
            set.push("run_at = ").push_bind_unseparated(t);
        }
        None => {}
    }
    match lease {
        Lease::Keep => {}
        Lease::Extend(d) => {
            set.push("lease_expires_at = now() + make_interval(secs => ")
                .push_bind_unseparated(d.as_secs_f64())
                .push_unseparated(")");
        }
        Lease::Release => {
            set.push("lease_token = NULL");
            set.push("lease_owner = NULL");
            set.push("lease_expires_at = NULL");
        }
    }
    q.push(" WHERE id = ").push_bind(id);
    if let Some(p) = guard.partner_id {
        q.push(" AND partner_id = ").push_bind(p);
    }
    if let Some(t) = guard.lease_token {
        q.push(" AND lease_token = ").push_bind(t);
    }
    if let Some(states) = &guard.states {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        q.push(" AND state = ANY(").push_bind(names).push(")");
    }
    if guard.otp_unexpired {
        q.push(" AND otp_expires_at > now()");
    }
    q.push(format!(" RETURNING {COLUMNS}"));
    let row = q
        .build_query_as::<MigrationRow>()
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if let Some(ev) = event {
        events::insert(&mut *conn, id, row.version, &ev).await?;
        // The outbox: the webhook for a state change commits (or not) with the change itself.
        crate::webhooks::enqueue_transition(&mut *conn, &row, &ev).await?;
        if let (Some(from), Some(to)) = (&ev.from_state, &ev.to_state)
            && from != to
        {
            crate::metrics::transition(from, &row);
        }
    }
    let runnable_now = !row.state().is_terminal()
        && row.lease_token.is_none()
        && row.run_at <= Utc::now() + chrono::Duration::milliseconds(50);
    if runnable_now {
        notify(&mut *conn).await?;
    }
    Ok(Some(row))
}

/// Gives a lease back and makes the row due now (graceful shutdown).
pub async fn release(ex: impl PgExecutor<'_>, id: Uuid, token: Uuid) -> Result<bool, Error> {
    let r = sqlx::query(
        "WITH r AS (
             UPDATE migrations SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    run_at = LEAST(run_at, now())
             WHERE id = $1 AND lease_token = $2 RETURNING id)
         SELECT pg_notify($3, '') FROM r",
    )
    .bind(id)
    .bind(token)
    .bind(JOBS_CHANNEL)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Counts of migrations per state (for tests, metrics and the dashboard).
pub async fn count_by_state(ex: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, Error> {
    Ok(
        sqlx::query_as("SELECT state, count(*) FROM migrations GROUP BY state ORDER BY state")
            .fetch_all(ex)
            .await?,
    )
}
