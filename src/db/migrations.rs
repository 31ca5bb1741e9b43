//! Migration rows: the domain record and, through its `run_at`/`attempt`/`lease_*` columns,
//! the job that advances it.
//!
//! Claiming follows the lease pattern (`job-engines.md` §5): one autocommit statement picks a
//! due row with `FOR UPDATE SKIP LOCKED` and stamps a fresh `lease_token`; the worker then calls
//! upstreams holding no transaction or connection, and every later write is guarded by
//! `lease_token = $token`, so a worker whose lease expired (and was re-claimed) can no longer
//! change anything. An expired lease is simply claimable again: rescue is the claim itself, with
//! the state conditions inside the same UPDATE.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::events::NewEvent;
use super::{Error, JOBS_CHANNEL};
use crate::domain::memo::{ARMED_BY, MemoEdits, MemoKey};
use crate::domain::{EventType, Flow, MigrationState, WaitingFor};

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
    #[sqlx(default)]
    pub precheck: Option<Value>,
    #[sqlx(default)]
    pub templates: Option<Value>,
    pub api_key_enc: Option<Vec<u8>>,
    pub api_key_id: Option<String>,
    pub api_key_address: Option<String>,
    pub api_key_generated_at: Option<DateTime<Utc>>,
    pub api_key_verified_at: Option<DateTime<Utc>>,
    /// When the key held here stopped being the channel's key (a rotation, or 360dialog
    /// rejected it): `api_key.status` `superseded`.
    pub api_key_superseded_at: Option<DateTime<Utc>>,
    pub step_memo: Value,
    #[sqlx(default)]
    pub summary: Option<Value>,
    pub error: Option<Value>,
    /// `domain::WaitingFor` while the migration waits on someone (see [`Patch::waiting_for`]).
    #[sqlx(default)]
    pub waiting_for: Option<Value>,
    pub failed_step: Option<String>,
    pub metadata: Value,
    pub callback_url: Option<String>,
    pub run_at: DateTime<Utc>,
    pub attempt: i32,
    /// Claims in a row that took the migration over from an expired lease (0 when the last
    /// claim found it released): runs of its step that never recorded a result.
    pub rescues: i32,
    pub lease_token: Option<Uuid>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub state_entered_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The batch it was created in (`POST /v1/batches`); never changes.
    #[sqlx(default)]
    pub batch_id: Option<Uuid>,
    /// The item's `reference` in its batch.
    #[sqlx(default)]
    pub batch_reference: Option<String>,
    /// The partner's default callback URL, read with the row by [`claim`] and [`update`] (the
    /// worker's rows): lets a write skip rendering a webhook body nobody would receive.
    #[sqlx(default)]
    pub partner_callback_url: Option<String>,
    /// Whether `partner_callback_url` was read (false for rows from [`get`] and [`list`]).
    #[sqlx(default)]
    pub partner_url_known: bool,
}

impl MigrationRow {
    pub fn state(&self) -> MigrationState {
        self.state.parse().unwrap_or(MigrationState::Failed)
    }

    /// The stored `flow` (the default, `otp`, if it cannot be read: the column's domain
    /// allows only the two).
    pub fn flow(&self) -> Flow {
        Flow::parse(&self.flow).unwrap_or_default()
    }

    /// The stored `waiting_for`, read (`None` when the migration does not wait, or the
    /// document cannot be read).
    pub fn stored_waiting_for(&self) -> Option<WaitingFor> {
        self.waiting_for
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// How long the claim holding this row may still be making a call a cancel must not cut
    /// off ([`MemoKey::uncancellable_intent_of`]): its lease's remaining time, if the step's
    /// intent is in the memo. The same rule as [`Guard::no_call_in_flight`].
    pub fn call_in_flight(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        let key = MemoKey::uncancellable_intent_of(self.state())?;
        let expires = self
            .lease_expires_at
            .filter(|_| self.lease_token.is_some())?;
        (expires > now && key.read(&self.step_memo).is_some()).then(|| expires - now)
    }
}

/// Every column of [`MigrationRow`] but the large JSON documents (`precheck`, `templates`,
/// `summary`, together most of a row's 2–3 KB). See [`LEAN_COLUMNS`].
macro_rules! lean_columns {
    () => {
        "id, partner_id, state, flow, phone_number, source_waba_id, \
        destination_waba_id, meta_business_id, phone_number_id, channel_id, d360_client_id, \
        otp_method, otp_language, otp_requested_at, otp_resend_available_at, otp_attempts_left, \
        otp_expires_at, otp_code_enc, pin_enc, api_key_enc, api_key_id, \
        api_key_address, api_key_generated_at, api_key_verified_at, api_key_superseded_at, \
        step_memo, error, waiting_for, failed_step, metadata, callback_url, run_at, attempt, \
        rescues, lease_token, lease_owner, lease_expires_at, state_entered_at, version, created_at, \
        updated_at, completed_at, batch_id, batch_reference"
    };
}

pub(crate) const COLUMNS: &str = concat!(lean_columns!(), ", precheck, templates, summary");

/// [`COLUMNS`] without the large JSON documents: what [`update`] returns. It knows them
/// already, from the row it was given and the patch, and reading them back cost PostgreSQL a
/// detoast and a jsonb rendering and the service a JSON parse on every transition.
const LEAN_COLUMNS: &str = lean_columns!();

/// Extra output columns of the worker's statements (`m` is the migration row): the partner's
/// default callback URL, see [`MigrationRow::partner_callback_url`].
const PARTNER_URL: &str = "(SELECT p.callback_url FROM partners p WHERE p.id = m.partner_id) \
    AS partner_callback_url, true AS partner_url_known";

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

/// Inserts a `queued` migration with its `created` event and wakes the workers, in one
/// statement (so in the caller's transaction, or atomically on its own).
#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %m.id))]
pub async fn insert(conn: &mut PgConnection, m: &NewMigration) -> Result<MigrationRow, Error> {
    let row = sqlx::query_as::<_, MigrationRow>(&format!(
        "WITH m AS (
             INSERT INTO migrations (id, partner_id, state, flow, phone_number, source_waba_id,
                 destination_waba_id, meta_business_id, channel_id, otp_method, otp_language,
                 otp_attempts_left, pin_enc, metadata, callback_url, version)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1)
             RETURNING {COLUMNS}),
         e AS (
             INSERT INTO migration_events (migration_id, seq, type, from_state, to_state, data)
             SELECT id, 1, $16, NULL, 'queued', '{{}}' FROM m)
         SELECT m.*, (SELECT pg_notify($15, '')) IS NULL AS notified FROM m"
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
    .bind(JOBS_CHANNEL)
    .bind(EventType::Created.as_str())
    .fetch_one(&mut *conn)
    .await?;
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
#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %id))]
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

/// The completed migrations other than `except` that hold a key not known to be superseded, for
/// the number `phone_number` or (when given) the channel `channel_id`: the migrations whose live
/// key a new key for that channel would revoke. Newest first; normally none or one.
pub async fn live_key_holders(
    ex: impl PgExecutor<'_>,
    phone_number: &str,
    channel_id: Option<&str>,
    except: Option<Uuid>,
) -> Result<Vec<MigrationRow>, Error> {
    // Two index lookups (`migrations_phone_number`, `migrations_live_key_channel`), not an OR.
    // The number's rows are read through `migrations_phone_number` behind a fence (`OFFSET 0`):
    // left to itself the planner matched the branch to the live-key partial index and filtered
    // every completed migration holding a key by number (0.5 ms at 2,000 rows, linear in the
    // store), where a number has a handful of rows.
    Ok(sqlx::query_as::<_, MigrationRow>(&format!(
        "SELECT {COLUMNS} FROM migrations
          WHERE id IN (
                SELECT id FROM (
                       SELECT id, state, api_key_enc IS NOT NULL AS has_key, api_key_superseded_at
                         FROM migrations WHERE phone_number = $1 OFFSET 0) n
                 WHERE state = 'completed' AND has_key AND api_key_superseded_at IS NULL
                UNION
                SELECT id FROM migrations WHERE channel_id = $2
                   AND state = 'completed' AND api_key_enc IS NOT NULL
                   AND api_key_superseded_at IS NULL)
            AND ($3::uuid IS NULL OR id <> $3)
          ORDER BY id DESC"
    ))
    .bind(phone_number)
    .bind(channel_id)
    .bind(except)
    .fetch_all(ex)
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
#[tracing::instrument(level = "debug", skip_all)]
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

/// The claim statement, built once: it returns the claimed rows' columns qualified by `m.`.
///
/// A rescue waits for `run_at` too: a stopping worker whose call ended unanswered records its
/// retry and keeps the lease (Meta may still apply the call), and the retry's delay still holds
/// once the lease expired.
///
/// CTEs are an optimisation fence (Oban's lesson): the planner cannot turn the LIMIT
/// subqueries into a join that locks or updates more rows than asked for. CTEs run only as far
/// as the outer query pulls, so `due` is read (and locks rows) only when the rescues do not
/// fill the limit.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH rescue AS (
             SELECT id FROM migrations
              WHERE lease_token IS NOT NULL
                AND lease_expires_at < now()
                AND run_at <= now()
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
             SELECT id, gen_random_uuid() AS token
               FROM (SELECT id FROM rescue UNION ALL SELECT id FROM due LIMIT $3) p)
         UPDATE migrations m
            SET lease_token = picked.token,
                lease_owner = $1,
                lease_expires_at = now() + make_interval(secs => $2),
                attempt = m.attempt + 1,
                rescues = CASE WHEN m.lease_token IS NULL THEN 0 ELSE m.rescues + 1 END,
                step_memo = {}
           FROM picked
          WHERE m.id = picked.id
            AND m.state NOT IN ('completed', 'failed', 'cancelled')
            AND (m.lease_token IS NULL OR m.lease_expires_at < now())
         RETURNING {}, {PARTNER_URL}",
        *ARM_ON_CLAIM,
        super::qualified(COLUMNS, "m")
    )
});

/// The claim's new `step_memo`: the intent of the step the row is in, armed by the claim's
/// token when it is absent (`domain::memo`; the value has the shape of `MemoKey::armed`, which
/// the transitions write). The step then calls with the intent already
/// committed, as after a transition that armed it, and writes nothing first. An intent already
/// there (an earlier call may have been sent) is left as it is.
static ARM_ON_CLAIM: LazyLock<String> = LazyLock::new(|| {
    let arms: String = MigrationState::ALL
        .into_iter()
        .filter_map(|state| Some((state, MemoKey::intent_of(state)?)))
        .map(|(state, key)| {
            format!(
                "WHEN m.state = '{state}' AND NOT m.step_memo ? '{key}' THEN m.step_memo || \
                 jsonb_build_object('{key}', jsonb_build_object('at', to_char(now() AT TIME \
                 ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '{ARMED_BY}', picked.token)) ",
                state = state.as_str(),
                key = key.as_str(),
            )
        })
        .collect();
    format!("CASE {arms}ELSE m.step_memo END")
});

/// Claims up to `limit` migrations for `owner`, each with a fresh lease token.
///
/// Rescues come first: rows whose worker died (lease expired) are taken before ordinary due
/// rows, oldest expiry first, so a crashed replica's migrations resume right after their lease
/// even when a backlog is waiting. Then due, unleased rows by `run_at`.
#[tracing::instrument(level = "debug", skip_all, fields(worker = %owner))]
pub async fn claim(
    ex: impl PgExecutor<'_>,
    owner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<MigrationRow>, Error> {
    Ok(sqlx::query_as::<_, MigrationRow>(&CLAIM_SQL)
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
    /// Now, or the row's own `run_at` if later: a retry of a failed migration whose last
    /// irreversible call ended unsettled, which the worker failed with `run_at` one call time
    /// ahead (the upstream may still apply that call; the step reads the number first). Only
    /// the worker fails a migration, always writing `run_at`.
    NotBefore,
    After(Duration),
    At(DateTime<Utc>),
    /// Not until its batch admits it ([`HELD`]; see `batches::admit`).
    Held,
}

/// `run_at` of a batch's migration waiting for a slot in its batch (`domain::pacing`): a
/// far-future sentinel, so the claim never takes it and an admission sets `run_at = now()`.
/// (`'infinity'` does not decode into `DateTime<Utc>`.) SQL literal; the
/// `migrations_batch_paced` index is ordered by it.
pub const HELD: &str = "'9999-12-31 00:00:00+00'::timestamptz";

/// [`HELD`] as a value.
pub fn held_at() -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("a valid date"),
        Utc,
    )
}

impl MigrationRow {
    /// Whether the row waits for a slot in its batch ([`RunAt::Held`]).
    pub fn is_held(&self) -> bool {
        self.run_at >= held_at()
    }
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
    /// An Embedded Signup migration takes the WABA its client's signup made (`awaiting_signup`).
    pub destination_waba_id: Option<String>,
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
    pub api_key_verified_at: Option<Option<DateTime<Utc>>>,
    pub api_key_superseded_at: Option<Option<DateTime<Utc>>>,
    /// Step memo changes, key by key (jsonb key operations on what the row holds when the
    /// statement runs): no writer ever writes back a whole memo it read earlier.
    pub memo: MemoEdits,
    pub summary: Option<Value>,
    pub error: Option<Option<Value>>,
    /// What the migration waits for. A change of `state` clears it unless this sets it: the
    /// transition that parks writes it, the one that leaves the state ends it.
    pub waiting_for: Option<Option<Value>>,
    pub failed_step: Option<Option<String>>,
    pub run_at: Option<RunAt>,
    /// Set the step attempt counter (0 after a transition and after a poll that got its answer;
    /// 1 when the same worker continues).
    pub attempt: Option<i32>,
    pub completed_now: bool,
}

/// Calls `$m!(field, ...)` with every plain column field of [`Patch`] (same name in
/// [`MigrationRow`]), so the SQL `SET` list and [`Patch::apply`] cannot drift apart.
macro_rules! patch_fields {
    ($m:ident) => {
        $m!(
            destination_waba_id,
            phone_number_id,
            channel_id,
            d360_client_id,
            precheck,
            templates,
            otp_method,
            otp_requested_at,
            otp_resend_available_at,
            otp_expires_at,
            otp_attempts_left,
            otp_code_enc,
            api_key_enc,
            api_key_id,
            api_key_address,
            api_key_generated_at,
            api_key_verified_at,
            api_key_superseded_at,
            summary,
            error,
            waiting_for,
            failed_step,
            attempt,
        )
    };
}

impl Patch {
    /// `row` as [`update`] leaves it, for the columns the API shows (`now` is the write's
    /// timestamp; job columns such as `run_at` and the lease are not predicted, except whether
    /// the row is held for a slot in its batch).
    pub fn apply(
        &self,
        row: &MigrationRow,
        now: DateTime<Utc>,
        bumps_version: bool,
    ) -> MigrationRow {
        let mut next = row.clone();
        macro_rules! apply {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = &self.$field {
                    next.$field = v.clone().into();
                }
            )*};
        }
        patch_fields!(apply);
        if !self.memo.is_empty() {
            next.step_memo = self.memo.applied_to(&next.step_memo);
        }
        if let Some(s) = self.state {
            next.state = s.as_str().to_owned();
            next.state_entered_at = now;
            if self.waiting_for.is_none() {
                next.waiting_for = None;
            }
        }
        if self.completed_now {
            next.completed_at = Some(now);
        }
        // Only whether it is held shows (`batch_slot`); the exact time is not predicted.
        match self.run_at {
            Some(RunAt::Held) => next.run_at = held_at(),
            Some(_) if next.is_held() => next.run_at = now,
            _ => {}
        }
        next.updated_at = now;
        next.version += i32::from(bumps_version);
        next
    }
}

/// Renders a transition's webhook body from the row as the transition leaves it.
pub type WebhookBody<'a> = &'a (dyn Fn(&MigrationRow, EventType) -> String + Send + Sync);

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
    /// The row must still hold the 360dialog key with this id.
    pub api_key_id: Option<String>,
    /// The key the row holds must not be superseded.
    pub api_key_live: bool,
    /// No irreversible call may be in flight: no live lease on a row whose step's intent a
    /// cancel must not cut off ([`MemoKey::uncancellable_intent_of`]).
    pub no_call_in_flight: bool,
    /// The resend cooldown must be over at this time (`otp_resend_available_at` unset or not
    /// after it): the time the command checked it by, so that both checks agree.
    pub resend_due: Option<DateTime<Utc>>,
    /// The migration must never have completed (not a key rotation).
    pub never_completed: bool,
    /// The row's `failed_step` must be this (the step a retry read and resumes).
    pub failed_step: Option<Option<String>>,
    /// The row's `error.code` must be this (what a retry's plan was made from: e.g. an expired
    /// code resumes at `requesting_otp`, not at the step that failed).
    pub failed_code: Option<Option<String>>,
}

/// Applies `patch` to `row` if `guard` holds; appends `event` (with the bumped version as its
/// sequence), the webhook delivery it causes (the outbox) and wakes workers when the row
/// becomes runnable now: **one statement**, so it commits atomically on its own or with the
/// caller's transaction.
///
/// The webhook body shows the row as this write leaves it. It is rendered here, before the
/// statement, from `row` and `patch` ([`Patch::apply`]); every timestamp the body shows is
/// this call's `now`, which the statement writes too. So the statement also requires the row
/// to still be at `row.version`. A body is rendered only when someone can receive it (the
/// migration's or its partner's callback URL, as far as `row` knows).
///
/// If that first attempt does not apply, the row is locked and read again: when it moved on
/// (another version) or a callback URL appeared, the write is applied to the fresh row (an
/// event's `from_state` becomes the state it really leaves); otherwise the guard failed.
///
/// `webhook_body` renders the webhook's request body from the row as the write leaves it (the
/// public JSON lives above this layer).
///
/// Returns the updated row, or `None` if the guard failed.
#[tracing::instrument(level = "debug", skip_all, fields(migration.id = %row.id, to = ?patch.state))]
pub async fn update(
    conn: &mut PgConnection,
    row: &MigrationRow,
    guard: &Guard,
    patch: &Patch,
    lease: Lease,
    event: Option<NewEvent>,
    webhook_body: WebhookBody<'_>,
) -> Result<Option<MigrationRow>, Error> {
    let delivered = event.as_ref().is_some_and(NewEvent::is_delivered);
    let render = delivered
        && (row.callback_url.is_some()
            || row.partner_callback_url.is_some()
            || !row.partner_url_known);
    let mut updated = update_once(
        conn,
        row,
        guard,
        patch,
        lease,
        event.as_ref(),
        render.then_some(webhook_body),
    )
    .await?;
    let mut event = event;
    if updated.is_none() {
        // Why not? Lock the row so it cannot move again, and look (a savepoint when the
        // caller holds a transaction).
        let mut tx = conn.begin().await?;
        let fresh = sqlx::query_as::<_, MigrationRow>(&format!(
            "SELECT {COLUMNS}, {PARTNER_URL} FROM migrations m WHERE id = $1 FOR UPDATE"
        ))
        .bind(row.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(fresh) = fresh else {
            return Ok(None);
        };
        let url_appeared = delivered
            && !render
            && (fresh.callback_url.is_some() || fresh.partner_callback_url.is_some());
        if fresh.version == row.version && !url_appeared {
            // Same row: the guard itself failed.
            return Ok(None);
        }
        if let Some(ev) = &mut event
            && ev.from_state.as_deref() == Some(row.state.as_str())
        {
            ev.from_state = Some(fresh.state.clone());
        }
        let delivered = event.as_ref().is_some_and(NewEvent::is_delivered);
        updated = update_once(
            &mut tx,
            &fresh,
            guard,
            patch,
            lease,
            event.as_ref(),
            delivered.then_some(webhook_body),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(updated)
}

async fn update_once(
    conn: &mut PgConnection,
    row: &MigrationRow,
    guard: &Guard,
    patch: &Patch,
    lease: Lease,
    event: Option<&NewEvent>,
    render_webhook: Option<WebhookBody<'_>>,
) -> Result<Option<MigrationRow>, Error> {
    // PostgreSQL keeps microseconds: the body must show what the row will hold.
    let now = Utc::now().trunc_subsecs(6);
    let mut q: QueryBuilder<'_, Postgres> =
        QueryBuilder::new("WITH u AS (UPDATE migrations m SET ");
    let mut set = q.separated(", ");
    set.push("version = version + ")
        .push_bind_unseparated(i32::from(event.is_some()));
    set.push("updated_at = ").push_bind_unseparated(now);
    if let Some(s) = patch.state {
        set.push("state = ").push_bind_unseparated(s.as_str());
        set.push("state_entered_at = ").push_bind_unseparated(now);
        if patch.waiting_for.is_none() {
            set.push("waiting_for = NULL");
        }
    }
    macro_rules! set_opt {
        ($($field:ident),* $(,)?) => {$(
            if let Some(v) = &patch.$field {
                set.push(concat!(stringify!($field), " = "))
                    .push_bind_unseparated(v.clone());
            }
        )*};
    }
    patch_fields!(set_opt);
    if !patch.memo.is_empty() {
        // Key operations on what the row holds when the statement runs.
        set.push("step_memo = (step_memo - ")
            .push_bind_unseparated(
                patch
                    .memo
                    .removed()
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<String>>(),
            )
            .push_unseparated("::text[]) || ")
            .push_bind_unseparated(patch.memo.set_object())
            .push_unseparated("::jsonb");
    }
    if patch.completed_now {
        set.push("completed_at = ").push_bind_unseparated(now);
    }
    match patch.run_at {
        Some(RunAt::Now) => {
            set.push("run_at = now()");
        }
        Some(RunAt::NotBefore) => {
            set.push("run_at = GREATEST(run_at, now())");
        }
        Some(RunAt::After(d)) => {
            set.push("run_at = now() + make_interval(secs => ")
                .push_bind_unseparated(d.as_secs_f64())
                .push_unseparated(")");
        }
        Some(RunAt::At(t)) => {
            set.push("run_at = ").push_bind_unseparated(t);
        }
        Some(RunAt::Held) => {
            set.push(format!("run_at = {HELD}"));
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
    q.push(" WHERE id = ").push_bind(row.id);
    q.push(" AND version = ").push_bind(row.version);
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
    if let Some(key_id) = &guard.api_key_id {
        q.push(" AND api_key_id = ").push_bind(key_id.clone());
    }
    if guard.api_key_live {
        q.push(" AND api_key_superseded_at IS NULL");
    }
    if let Some(at) = guard.resend_due {
        q.push(" AND (otp_resend_available_at IS NULL OR otp_resend_available_at <= ")
            .push_bind(at)
            .push(")");
    }
    if guard.never_completed {
        q.push(" AND completed_at IS NULL");
    }
    if let Some(step) = &guard.failed_step {
        q.push(" AND failed_step IS NOT DISTINCT FROM ")
            .push_bind(step.clone());
    }
    if let Some(code) = &guard.failed_code {
        q.push(" AND error->>'code' IS NOT DISTINCT FROM ")
            .push_bind(code.clone());
    }
    if guard.no_call_in_flight {
        q.push(" AND NOT (lease_token IS NOT NULL AND lease_expires_at > now() AND CASE state");
        for state in MigrationState::ALL {
            if let Some(key) = MemoKey::uncancellable_intent_of(state) {
                q.push(" WHEN ")
                    .push_bind(state.as_str())
                    .push(" THEN step_memo ? ")
                    .push_bind(key.as_str());
            }
        }
        q.push(" ELSE false END)");
    }
    let delivered = event.is_some_and(NewEvent::is_delivered);
    if delivered && render_webhook.is_none() {
        // No body rendered: only correct while nobody can receive it.
        q.push(
            " AND m.callback_url IS NULL AND NOT EXISTS (SELECT 1 FROM partners p \
             WHERE p.id = m.partner_id AND p.callback_url IS NOT NULL)",
        );
    }
    q.push(format!(" RETURNING {LEAN_COLUMNS}, {PARTNER_URL})"));
    if let Some(ev) = event {
        q.push(
            ", e AS (INSERT INTO migration_events (migration_id, seq, type, from_state, \
             to_state, data) SELECT u.id, u.version, ",
        )
        .push_bind(ev.kind.as_str())
        .push(", ")
        .push_bind(ev.from_state.clone())
        .push(", ")
        .push_bind(ev.to_state.clone())
        .push(", ")
        .push_bind(ev.data.clone())
        .push(" FROM u)");
        if delivered && let Some(render) = render_webhook {
            let next = patch.apply(row, now, true);
            let kind = if ev.kind.is_transition() {
                EventType::for_transition(next.state())
            } else {
                ev.kind
            };
            let body = render(&next, kind);
            q.push(
                ", w AS (INSERT INTO webhook_deliveries (id, partner_id, migration_id, sequence, \
                 event_type, payload, url, next_attempt_at) SELECT ",
            )
            .push_bind(Uuid::now_v7())
            .push(", u.partner_id, u.id, u.version, ")
            .push_bind(kind.as_str())
            .push(", ")
            .push_bind(body)
            .push(
                ", COALESCE(u.callback_url, u.partner_callback_url), now() FROM u \
                 WHERE COALESCE(u.callback_url, u.partner_callback_url) IS NOT NULL RETURNING id), \
                 nw AS (SELECT pg_notify(",
            )
            .push_bind(super::webhooks::WEBHOOKS_CHANNEL)
            .push(", '') FROM w)");
        }
    }
    q.push(", n AS (SELECT pg_notify(")
        .push_bind(JOBS_CHANNEL)
        .push(
            ", '') FROM u WHERE u.state NOT IN ('completed', 'failed', 'cancelled') \
             AND u.lease_token IS NULL AND u.run_at <= now() + interval '50 milliseconds') \
             SELECT u.*, (SELECT count(*) FROM n)",
        );
    if delivered && render_webhook.is_some() {
        q.push(" + (SELECT count(*) FROM nw)");
    }
    q.push(" AS notified FROM u");
    let updated = q
        .build_query_as::<MigrationRow>()
        .fetch_optional(&mut *conn)
        .await?;
    Ok(updated.map(|mut u| {
        // Not returned (LEAN_COLUMNS): what the patch wrote, else what the row held.
        u.precheck = patch.precheck.clone().or_else(|| row.precheck.clone());
        u.templates = patch.templates.clone().or_else(|| row.templates.clone());
        u.summary = patch.summary.clone().or_else(|| row.summary.clone());
        u
    }))
}

/// Locks the migration's row until the caller's transaction ends, so that writers that check
/// something before writing (e.g. the first reveal of an API key) take turns.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<(), Error> {
    sqlx::query("SELECT 1 FROM migrations WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives a lease back and makes the row due now (graceful shutdown). `forget_armed`: the
/// step never called, so the intents this lease armed for it are removed (see
/// [`crate::domain::memo`]).
pub async fn release(
    ex: impl PgExecutor<'_>,
    id: Uuid,
    token: Uuid,
    forget_armed: bool,
) -> Result<bool, Error> {
    let r = sqlx::query(&format!(
        "WITH r AS (
             UPDATE migrations SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                    run_at = LEAST(run_at, now()),
                    step_memo = CASE WHEN $4 THEN step_memo - ARRAY(
                        SELECT e.key FROM jsonb_each(step_memo) e
                         WHERE e.value->>'{ARMED_BY}' = $2::text) ELSE step_memo END
             WHERE id = $1 AND lease_token = $2 RETURNING id)
         SELECT pg_notify($3, '') FROM r"
    ))
    .bind(id)
    .bind(token)
    .bind(JOBS_CHANNEL)
    .bind(forget_armed)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The step memos of the other migrations of `phone_number` changed in the last 72 h that
/// called `register` (Meta's register cap is per number, whichever migration called): their
/// `register_calls` and `register` intent, as `{"register_calls", "register"}`.
pub async fn register_calls_of_number(
    ex: impl PgExecutor<'_>,
    phone_number: &str,
    except: Uuid,
) -> Result<Vec<Value>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT jsonb_build_object('register_calls', step_memo->'register_calls',
                                   'register', step_memo->'register')
           FROM migrations
          WHERE phone_number = $1 AND id <> $2
            AND (step_memo ? 'register_calls' OR step_memo ? 'register')
            AND updated_at > now() - interval '72 hours'",
    )
    .bind(phone_number)
    .bind(except)
    .fetch_all(ex)
    .await?)
}

/// Counts of non-terminal migrations per state: read through the partial indexes, so its cost
/// follows the migrations in flight, not the size of the table.
pub async fn count_active_by_state(ex: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, Error> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) FROM migrations
          WHERE state NOT IN ('completed', 'failed', 'cancelled') GROUP BY state ORDER BY state",
    )
    .fetch_all(ex)
    .await?)
}

/// Counts of migrations per state (for tests, metrics and the dashboard): reads the whole table.
pub async fn count_by_state(ex: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, Error> {
    Ok(
        sqlx::query_as("SELECT state, count(*) FROM migrations GROUP BY state ORDER BY state")
            .fetch_all(ex)
            .await?,
    )
}
