//! The commands on a migration, shared by every edge: create, submit a code, resend, cancel,
//! retry, set the channel id, reveal the key, rotate the key and the dry-run precheck. Each checks what it may do
//! from the row it read and writes through [`super::transition`] under a guard, so a row that
//! moved meanwhile answers 409 with the state it is in now instead of being overwritten.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AppState, Caller, client_page};
use crate::api::Migration;
use crate::api::problem::ApiError;
use crate::clients::D360Api;
use crate::crypto::{self, Cipher, aad};
use crate::db::{self, events::NewEvent, idempotency, migrations as store};
use crate::domain::commands::{self, Command, CreateOver, Found, Plan, create_over};
use crate::domain::pacing;
use crate::domain::values::E164;
use crate::domain::{ErrorCode, EventType, Flow, MigrationState, OtpMethod};
use crate::precheck::{self, PrecheckReport};

/// Where a code or a resend request came from, recorded as `source` in its event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The HTTP API (`POST …/otp`, `POST …/otp/resend`).
    Api,
    /// The end client's page (`/c/{token}`).
    ClientPage,
    /// The support dashboard.
    Dashboard,
    /// A batch's cancel, finished in the background for the migrations it could not cancel
    /// at once ([`crate::core::batches::finish_cancels`]).
    Batch,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::ClientPage => "client_page",
            Source::Dashboard => "dashboard",
            Source::Batch => "batch",
        }
    }
}

/// A checked create request. (`Debug` by hand: the PIN never shows.)
pub struct NewMigrationInput {
    pub phone: E164,
    pub source_waba_id: String,
    pub destination_waba_id: String,
    pub meta_business_id: String,
    pub flow: Flow,
    pub channel_id: Option<String>,
    pub otp_method: OtpMethod,
    pub otp_language: String,
    /// The client's two-step verification PIN; one is generated when absent.
    pub pin: Option<String>,
    pub callback_url: Option<String>,
    pub metadata: Value,
    /// Give the migration a client page link (`"client_page": "hosted"`, the default).
    pub client_page: bool,
}

impl std::fmt::Debug for NewMigrationInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMigrationInput")
            .field("phone", &self.phone)
            .field("source_waba_id", &self.source_waba_id)
            .field("destination_waba_id", &self.destination_waba_id)
            .field("meta_business_id", &self.meta_business_id)
            .field("flow", &self.flow)
            .field("pin", &self.pin.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// An `Idempotency-Key` and the body it was sent with (as sent: its fingerprint).
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub body: &'a Value,
}

/// What a create answers.
pub enum Created {
    /// A new migration.
    New(Box<Migration>),
    /// The stored answer of an earlier request with the same `Idempotency-Key` and body:
    /// the migration it created (with its `client_page` as it is now, which is never stored),
    /// or the stored body of another answer.
    Replay {
        status: u16,
        body: Value,
        migration: Option<Box<Migration>>,
    },
}

/// Creates a migration (`POST /v1/migrations`): one `queued` row with its event, or the stored
/// answer of an earlier request with the same `Idempotency-Key`.
pub async fn create(
    state: &AppState,
    caller: Caller,
    idempotency: Option<Idempotency<'_>>,
    v: NewMigrationInput,
) -> Result<Created, ApiError> {
    let partner_id = partner_of(caller)?;
    // One live key per number: a completed migration of the number whose key 360dialog still
    // accepts refuses the create (see `live_key_holder`). The stored state decides inside the
    // transaction; only when it names a holder is 360dialog asked, with no transaction held,
    // and the decision taken again.
    let mut asked_upstream = false;
    let mut tx = loop {
        let mut tx = state.pool.begin().await?;
        if let Some(idem) = &idempotency {
            // Keyed: the body may hold the PIN.
            let fingerprints = state
                .cipher
                .fingerprints(canonical(idem.body).to_string().as_bytes());
            match idempotency::begin(&mut tx, partner_id, idem.key, &fingerprints).await? {
                idempotency::Begin::New => {}
                idempotency::Begin::Replay { status, body } => {
                    tx.rollback().await?;
                    let migration = match serde_json::from_value::<Migration>(body.clone()) {
                        Ok(m) if status == 201 => Some(Box::new(replayed(state, m).await?)),
                        _ => None,
                    };
                    return Ok(Created::Replay {
                        status,
                        body,
                        migration,
                    });
                }
                idempotency::Begin::Mismatch => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "This Idempotency-Key was used with a different request body.",
                    ));
                }
            }
        }
        let holders = store::live_key_holders(&mut *tx, v.phone.as_str(), None, None).await?;
        let found = match holders.first() {
            None => Found::Nothing,
            Some(_) => Found::KeyHolder {
                asked_before: asked_upstream,
            },
        };
        let holder = holders.first().map(KeyHolder::of);
        match (create_over(found), holder) {
            (CreateOver::Create, _) => break tx,
            (CreateOver::AlreadyMigrated { confirmed }, Some(holder)) => {
                return Err(already_migrated(&holder, caller, confirmed));
            }
            // `AskUpstream`, with no transaction held.
            _ => drop(tx),
        }
        asked_upstream = true;
        let (found, holder) = match live_key_holder(
            &state.pool,
            &state.cipher,
            state.d360.as_ref(),
            v.phone.as_str(),
            None,
            None,
            Some(CREATE_CHECK_TIMEOUT),
        )
        .await?
        {
            LiveKey::None => (Found::KeysRejected, None),
            LiveKey::Live(holder) => (Found::KeyAccepted, Some(holder)),
            LiveKey::Unknown(holder) => (Found::KeyUnchecked, Some(holder)),
        };
        match (create_over(found), holder) {
            (CreateOver::AlreadyMigrated { confirmed }, Some(holder)) => {
                return Err(already_migrated(&holder, caller, confirmed));
            }
            // `LookAgain`: the rejected keys are marked superseded now.
            _ => continue,
        }
    };

    let id = Uuid::now_v7();
    let pin = v
        .pin
        .clone()
        .unwrap_or_else(|| crypto::generate_pin().expose_secret().to_owned());
    let new = store::NewMigration {
        id,
        partner_id,
        flow: v.flow.as_str().into(),
        phone_number: v.phone.as_str().into(),
        source_waba_id: v.source_waba_id,
        destination_waba_id: v.destination_waba_id,
        meta_business_id: v.meta_business_id,
        channel_id: v.channel_id,
        otp_method: v.otp_method.as_str().into(),
        otp_language: v.otp_language,
        otp_attempts_left: state.otp.max_attempts,
        pin_enc: state.cipher.seal(&pin, &aad::pin(id)),
        metadata: v.metadata,
        callback_url: v.callback_url,
    };
    let row = match super::transition::create(&mut tx, &new).await {
        Ok(r) => r,
        Err(db::Error::Constraint(c)) if c == store::ONE_ACTIVE_PER_NUMBER => {
            drop(tx);
            let existing = store::active_for_number(&state.pool, new.phone_number.as_str()).await?;
            return Err(active_conflict(existing, caller));
        }
        Err(e) => return Err(e.into()),
    };
    let page = if v.client_page {
        Some(client_page::issue(&mut tx, state, id).await?)
    } else {
        None
    };
    let mut out = Migration::from(&row);
    if let Some(idem) = &idempotency {
        // Without the link: a stored answer must not hold a capability.
        idempotency::finish(&mut tx, partner_id, idem.key, 201, &json!(out)).await?;
    }
    tx.commit().await?;
    out.client_page = Some(page.as_ref().map(|p| client_page::present(state, &row, p)));
    tracing::info!(migration.id = %row.id, partner.id = %partner_id, "migration created");
    Ok(Created::New(Box::new(out)))
}

/// A replayed create answer with its migration's `client_page` as it is now.
async fn replayed(state: &AppState, mut m: Migration) -> Result<Migration, ApiError> {
    let row = store::get(&state.pool, m.id, None).await?;
    let page = db::client_pages::get(&state.pool, m.id).await?;
    m.client_page = Some(page.as_ref().map(|p| client_page::present(state, &row, p)));
    Ok(m)
}

/// Sorts object keys so equal JSON bodies hash equally whatever their key order.
pub(crate) fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<_, _> =
                m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            json!(sorted)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        v => v.clone(),
    }
}

/// Takes the client's code (`POST …/otp`): `awaiting_otp` → `verifying_otp`, the code sealed
/// until the worker submits it.
pub async fn submit_code(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    code: &str,
    source: Source,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    let plan = code_plan(&row)?;
    let mut patch = plan_patch(state, &plan);
    patch.otp_code_enc = Some(Some(state.cipher.seal(code, &aad::otp_code(id))));
    let mut guard = plan_guard(caller, &plan);
    guard.otp_unexpired = true;
    let data = json!({ "otp": "submitted", "source": source.as_str() });
    apply_plan(
        state,
        caller,
        &row,
        Command::SubmitCode,
        &plan,
        patch,
        guard,
        data,
    )
    .await
}

/// The plan of a code submission for `row`, or why it is refused: a wrong state, or the code
/// window closed.
fn code_plan(row: &store::MigrationRow) -> Result<Plan, ApiError> {
    let plan = plan_for(row, Command::SubmitCode)?;
    if row.otp_expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::conflict(
            "otp_expired",
            "The verification window has closed; the migration will fail with otp_expired. Retry it to request a new code.",
        ));
    }
    Ok(plan)
}

/// The plan of a resend for `row`, or why it is refused: a wrong state, or 429
/// `otp_resend_too_soon` inside the cooldown.
fn resend_plan(row: &store::MigrationRow, now: DateTime<Utc>) -> Result<Plan, ApiError> {
    let plan = plan_for(row, Command::Resend)?;
    if let Some(at) = row.otp_resend_available_at {
        let wait = (at - now).num_milliseconds();
        if wait > 0 {
            let secs = (wait as u64).div_ceil(1000);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "otp_resend_too_soon",
                format!("A code was sent recently; you can request another in {secs} s."),
            )
            .with_retry_after(secs)
            .with_extra(json!({ "resend_available_at": at })));
        }
    }
    Ok(plan)
}

/// The channel's 360dialog API key, opened for the caller.
pub struct RevealedKey {
    pub api_key: SecretString,
    /// Messaging API host for this key.
    pub address: String,
    pub channel_id: Option<String>,
}

/// Reveals the key of a completed migration (`GET …/api_key`).
pub async fn reveal_api_key(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<RevealedKey, ApiError> {
    let row = fetch(state, caller, id).await?;
    let (MigrationState::Completed, Some(enc)) = (row.state(), &row.api_key_enc) else {
        let detail = if row.api_key_superseded_at.is_some() && row.state() == MigrationState::Failed
        {
            format!(
                "The API key rotation failed (see `error`); POST /v1/migrations/{id}/retry generates the new key."
            )
        } else if row.api_key_superseded_at.is_some() {
            format!(
                "A new API key is being generated (the migration is `{}`); it is available once the migration is completed again.",
                row.state
            )
        } else {
            format!(
                "The API key is available once the migration is completed (now `{}`).",
                row.state
            )
        };
        return Err(ApiError::conflict("api_key_not_ready", detail));
    };
    if row.api_key_superseded_at.is_some() {
        return Err(ApiError::conflict(
            "api_key_superseded",
            format!(
                "360dialog no longer accepts this migration's API key: a newer key was generated for the channel, or the number left 360dialog. If the number still runs on channel {}, get a new key with POST /v1/migrations/{id}/api_key/rotate.",
                row.channel_id.as_deref().unwrap_or("(unknown)")
            ),
        ));
    }
    let key = state
        .cipher
        .open(enc, &aad::api_key(id))
        .map_err(ApiError::internal)?;
    let by = if caller == Caller::Admin {
        "admin"
    } else {
        "partner"
    };
    record_first_reveal(state, &row, by).await?;
    tracing::info!(migration.id = %id, by, "api key revealed");
    Ok(RevealedKey {
        api_key: key,
        address: row
            .api_key_address
            .clone()
            .unwrap_or_else(|| state.d360_waba_url.clone()),
        channel_id: row.channel_id.clone(),
    })
}

/// Records the first time the migration's stored key is handed out: one
/// `migration.api_key_retrieved` event (by `partner` or `admin`). Every later fetch is a pure
/// read: no event, no change to `updated_at` (each one is logged, without the key).
async fn record_first_reveal(
    state: &AppState,
    row: &store::MigrationRow,
    by: &str,
) -> Result<(), ApiError> {
    if db::events::api_key_revealed(&state.pool, row.id).await? {
        return Ok(());
    }
    let mut tx = state.pool.begin().await?;
    // Checked again under the row's lock: first fetches at the same time record one reveal.
    store::lock(&mut tx, row.id).await?;
    if !db::events::api_key_revealed(&mut *tx, row.id).await? {
        super::transition::apply(
            &mut tx,
            row,
            &store::Guard::default(),
            &store::Patch::default(),
            store::Lease::Keep,
            Some(NewEvent {
                kind: EventType::ApiKeyRetrieved,
                from_state: None,
                to_state: None,
                data: json!({ "by": by }),
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The accounts a precheck reads.
pub struct PrecheckInput<'a> {
    pub phone: &'a E164,
    pub source_waba_id: &'a str,
    pub destination_waba_id: &'a str,
    pub meta_business_id: &'a str,
    pub flow: Flow,
}

/// Runs the prechecks without creating a migration (`POST /v1/prechecks`).
pub async fn dry_run_precheck(
    state: &AppState,
    v: PrecheckInput<'_>,
) -> Result<PrecheckReport, ApiError> {
    if let Some(seeder) = &state.sandbox_seeder {
        seeder
            .seed(
                v.phone.as_str(),
                v.source_waba_id,
                v.destination_waba_id,
                v.meta_business_id,
            )
            .await;
    }
    let input = precheck::gather(
        state.meta.as_ref(),
        v.phone,
        v.source_waba_id,
        v.destination_waba_id,
    )
    .await
    .map_err(|e| {
        // The code a migration's precheck would fail (or wait) with.
        let code = match e.upstream() {
            Some(u) if u.refuses_our_token() || u.cannot_load_object() => ErrorCode::UpstreamAuth,
            _ if e.is_retryable() => ErrorCode::UpstreamUnavailable,
            _ => ErrorCode::UpstreamRejected,
        };
        let mut err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            code.as_str(),
            format!("Reading the WhatsApp accounts failed: {e}"),
        );
        if let Some(u) = e.upstream() {
            err = err.with_extra(json!({ "upstream": u }));
        }
        err
    })?;
    Ok(precheck::evaluate(
        v.flow,
        v.phone,
        v.meta_business_id,
        &input,
        precheck::Signup::NotKnownDone,
    ))
}

/// The partner a migration is created for: only a partner key creates migrations.
pub fn partner_of(caller: Caller) -> Result<Uuid, ApiError> {
    match caller {
        Caller::Partner(p) => Ok(p),
        Caller::Admin => Err(ApiError::forbidden(
            "Migrations belong to a partner: use a partner API key (POST /v1/partners/{id}/api_keys).",
        )),
    }
}

/// 409 `migration_already_active`, naming the active migration when the caller may see it.
///
/// Another partner learns only that the number is busy (no id, no owner): one active migration
/// per number is global (DESIGN.md §2; Meta migrates a number once at a time), so any refusal
/// tells that much, and saying so lets them act (wait) instead of guessing.
pub fn active_conflict(existing: Option<(Uuid, Uuid)>, caller: Caller) -> ApiError {
    match existing {
        Some((id, owner)) if caller.scope().is_none_or(|p| p == owner) => ApiError::conflict(
            "migration_already_active",
            "This phone number already has an active migration (migration_id); cancel it or wait for it to finish.",
        )
        .with_extra(json!({ "migration_id": id })),
        Some(_) => ApiError::conflict(
            "migration_already_active",
            "This phone number is being migrated by another partner; it can be migrated again once that migration ends.",
        ),
        None => ApiError::conflict(
            "migration_already_active",
            "This phone number had an active migration a moment ago; try again.",
        ),
    }
}

/// The migration `id` as `caller` may see it, or 404.
pub async fn fetch(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<store::MigrationRow, ApiError> {
    match store::get(&state.pool, id, caller.scope()).await {
        Ok(r) => Ok(r),
        Err(db::Error::NotFound) => Err(ApiError::not_found("migration")),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `Idempotency-Key`s older than [`idempotency::KEEP_HOURS`] (a request with one is a
/// new request anyway): the batch ticker's housekeeping. How many.
pub async fn forget_old_idempotency_keys(state: &AppState) -> Result<u64, ApiError> {
    // At most 50,000 a round (in statements of 5,000): a backlog goes over several rounds,
    // without holding up the batch ticker's other work.
    let mut deleted = 0;
    for _ in 0..10 {
        let n = idempotency::prune(&state.pool, 5_000).await?;
        deleted += n;
        if n < 5_000 {
            break;
        }
    }
    Ok(deleted)
}

/// The client's code, through its page: the page's limits, then [`submit_code`] as the
/// migration's partner. A submission the command would refuse anyway (the page is behind:
/// a wrong state, the window closed) is refused first and costs the link's budget nothing.
pub async fn submit_code_from_page(
    state: &AppState,
    o: &client_page::Opened,
    code: &str,
    client: Option<std::net::IpAddr>,
) -> Result<store::MigrationRow, client_page::NotTaken> {
    code_plan(&o.row)?;
    let caller = client_page::take_submission(state, o, client).await?;
    Ok(submit_code(state, caller, o.row.id, code, Source::ClientPage).await?)
}

/// "Send again" / "Call me instead", through the client's page. A tap inside the cooldown (or
/// in a wrong state) is refused first and costs the link's budget nothing.
pub async fn resend_from_page(
    state: &AppState,
    o: &client_page::Opened,
    method: OtpMethod,
    client: Option<std::net::IpAddr>,
) -> Result<store::MigrationRow, client_page::NotTaken> {
    resend_plan(&o.row, Utc::now())?;
    let caller = client_page::take_submission(state, o, client).await?;
    Ok(resend(state, caller, o.row.id, Some(method), Source::ClientPage).await?)
}

/// `POST /v1/migrations/{id}/client_page/rotate` (and the dashboard's "Replace the link"):
/// see [`client_page::rotate`].
pub async fn rotate_client_page(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<(store::MigrationRow, crate::api::migration::ClientPage), ApiError> {
    let row = fetch(state, caller, id).await?;
    client_page::rotate(state, caller, row).await
}

/// 409 `invalid_state`: `action` is allowed only in `allowed`.
pub fn wrong_state(row: &store::MigrationRow, action: &str, allowed: &str) -> ApiError {
    ApiError::conflict(
        "invalid_state",
        format!(
            "Cannot {action} a migration in state `{}`; allowed in: {allowed}.",
            row.state
        ),
    )
    .with_extra(json!({ "state": row.state }))
}

/// The plan of `command` for `row`, or 409 `invalid_state`.
fn plan_for(row: &store::MigrationRow, command: Command) -> Result<Plan, ApiError> {
    commands::plan(command, row.state()).map_err(|e| wrong_state(row, e.action, e.allowed))
}

/// The write a plan makes (commands add their own fields).
fn plan_patch(state: &AppState, plan: &Plan) -> store::Patch {
    let mut patch = store::Patch {
        // A command that changes no state leaves it, its clock and its `waiting_for` alone.
        state: plan.changes_state().then_some(plan.to),
        memo: plan.memo.clone(),
        ..Default::default()
    };
    if plan.run_now {
        patch.run_at = Some(store::RunAt::Now);
    }
    if plan.clear_error {
        patch.error = Some(None);
        patch.failed_step = Some(None);
        patch.attempt = Some(0);
    }
    if plan.reset_otp {
        patch.otp_attempts_left = Some(state.otp.max_attempts);
        patch.otp_expires_at = Some(None);
    }
    if plan.clear_code {
        patch.otp_code_enc = Some(None);
    }
    patch
}

fn plan_guard(caller: Caller, plan: &Plan) -> store::Guard {
    store::Guard {
        partner_id: caller.scope(),
        states: Some(plan.from.to_vec()),
        ..Default::default()
    }
}

/// Writes a command's plan: the guarded change, its event and its webhook in one statement,
/// releasing any lease. If the guard fails (the row moved meanwhile), answers 409 with the
/// state it is in now.
#[allow(clippy::too_many_arguments)]
async fn apply_plan(
    state: &AppState,
    caller: Caller,
    row: &store::MigrationRow,
    command: Command,
    plan: &Plan,
    mut patch: store::Patch,
    guard: store::Guard,
    data: Value,
) -> Result<store::MigrationRow, ApiError> {
    // A command that changes no state records an event without states (no webhook).
    let moves = plan.changes_state();
    // A batch's migration entering a paced state (a retry, a resend) waits for a slot in its
    // batch like the others: the guard (`plan.from`) keeps the state it leaves outside them.
    if moves && row.batch_id.is_some() && pacing::held_on_entry(row.state(), plan.to) {
        patch.run_at = Some(store::RunAt::Held);
    }
    let event = NewEvent {
        kind: plan.event,
        from_state: moves.then(|| row.state.clone()),
        to_state: moves.then(|| plan.to.as_str().to_owned()),
        data,
    };
    // A retry re-opens the migration's batch (a new generation if its `batch.completed` was
    // recorded) in the same transaction: a crash cannot leave an active migration in a batch
    // the batch ticker no longer looks at.
    let reopens = row
        .batch_id
        .filter(|_| matches!(command, Command::Retry { .. }));
    let applied = match reopens {
        Some(batch) => {
            let mut tx = state.pool.begin().await?;
            let applied = super::transition::apply(
                &mut tx,
                row,
                &guard,
                &patch,
                store::Lease::Release,
                Some(event),
            )
            .await;
            if let Ok(Some(_)) = applied {
                db::batches::reopen(&mut *tx, batch).await?;
                tx.commit().await?;
            }
            applied
        }
        None => {
            let mut conn = state.pool.acquire().await?;
            super::transition::apply(
                &mut conn,
                row,
                &guard,
                &patch,
                store::Lease::Release,
                Some(event),
            )
            .await
        }
    };
    let updated = match applied {
        Ok(u) => u,
        Err(db::Error::Constraint(c)) if c == store::ONE_ACTIVE_PER_NUMBER => {
            let existing = store::active_for_number(&state.pool, &row.phone_number).await?;
            return Err(active_conflict(existing, caller));
        }
        Err(e) => return Err(e.into()),
    };
    match updated {
        Some(r) => Ok(r),
        None => {
            let now = fetch(state, caller, row.id).await?;
            Err(wrong_state(&now, command.action(), command.allowed_text()))
        }
    }
}

/// Asks for a new code (`POST …/otp/resend`, the dashboard's "resend").
pub async fn resend(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    method: Option<OtpMethod>,
    source: Source,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    let now = Utc::now();
    let plan = resend_plan(&row, now)?;
    let method = method.unwrap_or_else(|| OtpMethod::parse(&row.otp_method).unwrap_or_default());
    let mut patch = plan_patch(state, &plan);
    patch.otp_method = Some(method.as_str().into());
    let mut guard = plan_guard(caller, &plan);
    // A code requested since the read (another resend) starts a new cooldown.
    guard.resend_due = Some(now);
    let data = json!({ "otp": "resend_requested", "method": method, "source": source.as_str() });
    let resent = apply_plan(
        state,
        caller,
        &row,
        Command::Resend,
        &plan,
        patch,
        guard,
        data,
    )
    .await;
    match resent {
        Err(e) if e.code == "invalid_state" => {
            let fresh = fetch(state, caller, id).await?;
            resend_plan(&fresh, now)?;
            Err(e)
        }
        other => other,
    }
}

/// Sets the 360dialog channel of an Embedded Signup migration (`PATCH /v1/migrations/{id}`
/// `{"channel_id"}`) before it found one itself: in `queued` or `prechecking` the migration
/// skips `awaiting_signup` when 360dialog lists that channel; in `awaiting_signup` it looks
/// that channel up at once. One guarded
/// write with a `migration.channel_id_set` event; the state does not change. Sending the id it
/// already has outside `awaiting_signup` writes nothing.
pub async fn set_channel_id(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    channel_id: &str,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    if row.flow() != Flow::EmbeddedSignup {
        return Err(ApiError::conflict(
            "flow_mismatch",
            format!(
                "Only an Embedded Signup migration takes a channel_id; this one has flow `{}`: the service registers the number itself and finds its channel.",
                row.flow
            ),
        )
        .with_extra(json!({ "flow": row.flow })));
    }
    let plan = plan_for(&row, Command::SetChannelId)?;
    if row.channel_id.as_deref() == Some(channel_id)
        && row.state() != MigrationState::AwaitingSignup
    {
        return Ok(row);
    }
    let mut patch = plan_patch(state, &plan);
    patch.channel_id = Some(channel_id.to_owned());
    let guard = plan_guard(caller, &plan);
    let data = json!({
        "channel_id": channel_id,
        "previous": row.channel_id,
        "by": if caller == Caller::Admin { "admin" } else { "partner" },
    });
    let updated = apply_plan(
        state,
        caller,
        &row,
        Command::SetChannelId,
        &plan,
        patch,
        guard,
        data,
    )
    .await?;
    tracing::info!(migration.id = %id, state = %updated.state, "channel id set");
    Ok(updated)
}

/// Cancels a migration that has not finished (`POST …/cancel`, the dashboard's "cancel").
pub async fn cancel(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: Source,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    let plan = cancel_plan(&row)?;
    let patch = plan_patch(state, &plan);
    let mut guard = plan_guard(caller, &plan);
    guard.no_call_in_flight = true;
    guard.never_completed = true;
    let data = json!({
        "cancelled_by": if caller == Caller::Admin { "admin" } else { "partner" },
        "source": source.as_str(),
    });
    let cancelled = apply_plan(
        state,
        caller,
        &row,
        Command::Cancel,
        &plan,
        patch,
        guard,
        data,
    )
    .await;
    match cancelled {
        // The migration moved between the read and the write: why it cannot be cancelled now.
        // If nothing says so, only the guard against a call in flight refused it (the
        // database's clock says the lease still runs).
        Err(e) if e.code == "invalid_state" => {
            let fresh = fetch(state, caller, id).await?;
            cancel_plan(&fresh)?;
            let left = fresh.call_in_flight(Utc::now());
            Err(call_in_flight(
                &fresh,
                left.unwrap_or(chrono::Duration::seconds(1)),
            ))
        }
        other => other,
    }
}

/// The plan of a cancel of `row`, or why it is refused: finished, a key rotation of a
/// completed migration, or a call in flight.
fn cancel_plan(row: &store::MigrationRow) -> Result<Plan, ApiError> {
    let plan = plan_for(row, Command::Cancel)?;
    if row.completed_at.is_some() {
        // Completed once: this is a key rotation (`generating_api_key` again), and the number
        // stays migrated whatever happens to the new key.
        return Err(ApiError::conflict(
            "invalid_state",
            "This migration completed and is rotating its API key; a rotation cannot be cancelled. It completes again with the new key.",
        )
        .with_extra(json!({ "state": row.state })));
    }
    if let Some(left) = row.call_in_flight(Utc::now()) {
        return Err(call_in_flight(row, left));
    }
    Ok(plan)
}

/// The longest `Retry-After` of a `call_in_flight`: the call itself is answered within
/// `UPSTREAM_TIMEOUT_SECONDS`, usually within a second; the lease may run far longer.
const CALL_IN_FLIGHT_RETRY_SECS: u64 = 5;

/// 409 `call_in_flight`: a worker is making a call a cancel must not cut off
/// ([`store::MigrationRow::call_in_flight`]); `Retry-After` is its lease's remaining time, at
/// most [`CALL_IN_FLIGHT_RETRY_SECS`].
fn call_in_flight(row: &store::MigrationRow, left: chrono::Duration) -> ApiError {
    let secs = u64::try_from(left.num_milliseconds())
        .unwrap_or(0)
        .div_ceil(1000)
        .clamp(1, CALL_IN_FLIGHT_RETRY_SECS);
    let call = match row.state() {
        MigrationState::Registering => "registering the number with Meta",
        _ => "generating the channel's 360dialog API key",
    };
    ApiError::conflict(
        "call_in_flight",
        format!(
            "A worker is {call} right now; that call cannot be taken back, and cancelling would lose its answer. Cancel again in {secs} s."
        ),
    )
    .with_retry_after(secs)
    .with_extra(json!({ "state": row.state }))
}

/// The stored `error.code` of a migration, if any.
fn error_code(row: &store::MigrationRow) -> Option<&str> {
    row.error.as_ref()?.get("code")?.as_str()
}

/// Resumes a failed migration from its failed step (`POST …/retry`, the dashboard's "retry").
pub async fn retry(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: Source,
) -> Result<store::MigrationRow, ApiError> {
    retry_as(state, caller, id, source, false).await
}

/// [`retry`]; `of_batch`: one of a batch's `retry_failed`, said in the event's data
/// (`"batch_retry": true`), so that a cancel of the batch that overtook it still cancels it
/// (`db::batches::unfinished_of_cancelled`).
pub async fn retry_as(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: Source,
    of_batch: bool,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    let failed_step = row
        .failed_step
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MigrationState::Prechecking);
    let read_code = error_code(&row).map(str::to_owned);
    let failed_code = read_code
        .as_deref()
        .and_then(|c| serde_json::from_value(json!(c)).ok());
    let command = Command::Retry {
        failed_step,
        failed_code,
    };
    let plan = plan_for(&row, command)?;
    let mut patch = plan_patch(state, &plan);
    if matches!(patch.run_at, Some(store::RunAt::Now)) {
        // Not before the `run_at` a failure after an unsettled irreversible call set.
        patch.run_at = Some(store::RunAt::NotBefore);
    }
    let mut guard = plan_guard(caller, &plan);
    // It resumes the step it read, as planned from the failure it read: a migration that
    // failed again elsewhere since (another step, or another reason) is not resumed by the
    // old plan.
    guard.failed_step = Some(row.failed_step.clone());
    guard.failed_code = Some(read_code.clone());
    let mut data = json!({ "retry_of": failed_step, "source": source.as_str() });
    if of_batch {
        data["batch_retry"] = json!(true);
    }
    match apply_plan(state, caller, &row, command, &plan, patch, guard, data).await {
        Err(e) if e.code == "invalid_state" => {
            let fresh = fetch(state, caller, id).await?;
            if fresh.state() == MigrationState::Failed
                && (fresh.failed_step != row.failed_step
                    || error_code(&fresh) != read_code.as_deref())
            {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!(
                        "The migration failed again, at `{}`, since it was read; retry it again to resume there.",
                        fresh.failed_step.as_deref().unwrap_or("prechecking")
                    ),
                )
                .with_extra(json!({ "state": fresh.state })));
            }
            Err(e)
        }
        other => other,
    }
}

/// How long `create` waits for 360dialog to say whether a completed migration's key still works
/// (no answer: the create is refused, the key is kept).
const CREATE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A completed migration holding a 360dialog key for a number (or its channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub id: Uuid,
    pub partner_id: Uuid,
}

impl KeyHolder {
    fn of(row: &store::MigrationRow) -> Self {
        Self {
            id: row.id,
            partner_id: row.partner_id,
        }
    }
}

/// What [`live_key_holder`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveKey {
    /// No completed migration holds a key 360dialog still accepts: a new key revokes nothing
    /// anyone holds.
    None,
    /// This migration's key still works (`GET /health_status` answered 200).
    Live(KeyHolder),
    /// Not established (360dialog did not answer, or the stored key cannot be opened): treated
    /// as live by the callers, so a key is never revoked on a guess.
    Unknown(KeyHolder),
}

/// **One live key per number.** Generating a channel key revokes every earlier key of that
/// channel, so before a number is migrated again (create) or a key is generated (the
/// `generating_api_key` step, a rotation), the completed migrations of the number or channel
/// (other than `except`) whose key is not known to be superseded are asked about: the key is
/// live if 360dialog's Messaging API accepts it (`GET /health_status` → 200). A key 360dialog
/// rejects (401: another key was generated since, or the number left 360dialog) is marked
/// `superseded` on its migration, with a `migration.api_key_superseded` event, and no longer
/// counts. No transaction is held during the calls; `timeout` bounds each one.
pub async fn live_key_holder(
    pool: &PgPool,
    cipher: &Cipher,
    d360: &dyn D360Api,
    phone_number: &str,
    channel_id: Option<&str>,
    except: Option<Uuid>,
    timeout: Option<Duration>,
) -> Result<LiveKey, db::Error> {
    for row in store::live_key_holders(pool, phone_number, channel_id, except).await? {
        let holder = KeyHolder::of(&row);
        let Some(key) = row
            .api_key_enc
            .as_ref()
            .and_then(|enc| cipher.open(enc, &aad::api_key(row.id)).ok())
        else {
            tracing::warn!(migration.id = %row.id, "a completed migration's key cannot be decrypted; treating it as live");
            return Ok(LiveKey::Unknown(holder));
        };
        let asked = d360.health_status(&key);
        let answer = match timeout {
            Some(t) => tokio::time::timeout(t, asked).await.ok(),
            None => Some(asked.await),
        };
        match answer {
            Some(Ok(_)) => return Ok(LiveKey::Live(holder)),
            Some(Err(e)) if e.upstream().is_some_and(|u| u.http_status == Some(401)) => {
                supersede_rejected_key(pool, &row).await?;
            }
            Some(Err(e)) => {
                tracing::warn!(migration.id = %row.id, error = %e, "could not check whether a completed migration's key still works");
                return Ok(LiveKey::Unknown(holder));
            }
            None => {
                tracing::warn!(migration.id = %row.id, "360dialog did not answer in time whether a completed migration's key still works");
                return Ok(LiveKey::Unknown(holder));
            }
        }
    }
    Ok(LiveKey::None)
}

/// Marks the key of the completed migration `row` superseded: 360dialog rejected it.
async fn supersede_rejected_key(pool: &PgPool, row: &store::MigrationRow) -> Result<(), db::Error> {
    let mut conn = pool.acquire().await?;
    let updated = super::transition::apply(
        &mut conn,
        row,
        &store::Guard {
            states: Some(vec![MigrationState::Completed]),
            api_key_id: row.api_key_id.clone(),
            api_key_live: true,
            ..Default::default()
        },
        &store::Patch {
            api_key_superseded_at: Some(Some(Utc::now())),
            ..Default::default()
        },
        store::Lease::Keep,
        Some(NewEvent {
            kind: EventType::ApiKeySuperseded,
            from_state: None,
            to_state: None,
            data: json!({ "api_key_id": row.api_key_id, "reason": "rejected_by_360dialog" }),
        }),
    )
    .await?;
    if updated.is_some() {
        tracing::info!(migration.id = %row.id, "360dialog rejects this completed migration's key: marked superseded");
    }
    Ok(())
}

/// 409 `number_already_migrated`, naming the migration that holds the live key when the caller
/// may see it. `confirmed`: 360dialog said the key works (else it could not be asked).
pub fn already_migrated(holder: &KeyHolder, caller: Caller, confirmed: bool) -> ApiError {
    let visible = caller.scope().is_none_or(|p| p == holder.partner_id);
    let id = holder.id;
    let which = if visible {
        format!("This phone number was already migrated (migration {id})")
    } else {
        "This phone number was already migrated".to_owned()
    };
    let status = if confirmed {
        "360dialog still accepts the API key that migration holds, and migrating the number again would revoke it"
    } else {
        "360dialog could not be asked whether the API key that migration holds still works, so it is kept; try again later if the number left 360dialog"
    };
    let next = if visible {
        format!(
            " Use its key (GET /v1/migrations/{id}/api_key) or replace it with POST /v1/migrations/{id}/api_key/rotate."
        )
    } else {
        String::new()
    };
    let mut e = ApiError::conflict(
        "number_already_migrated",
        format!("{which}: {status}.{next}"),
    );
    if visible {
        e = e.with_extra(json!({ "migration_id": id }));
    }
    e
}

/// Records a rotation: the migration goes back to `generating_api_key` with its key
/// superseded; the worker generates the new key through the guarded key step.
async fn request_rotation(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<store::MigrationRow, ApiError> {
    let row = fetch(state, caller, id).await?;
    let plan = plan_for(&row, Command::RotateApiKey)?;
    // Another completed migration of the number or channel whose key still works (this one's
    // was superseded): a new key would revoke it.
    match live_key_holder(
        &state.pool,
        &state.cipher,
        state.d360.as_ref(),
        &row.phone_number,
        row.channel_id.as_deref(),
        Some(row.id),
        Some(CREATE_CHECK_TIMEOUT),
    )
    .await?
    {
        LiveKey::None => {}
        LiveKey::Live(holder) => return Err(already_migrated(&holder, caller, true)),
        LiveKey::Unknown(holder) => return Err(already_migrated(&holder, caller, false)),
    }
    let mut patch = plan_patch(state, &plan);
    patch.api_key_superseded_at = Some(Some(Utc::now()));
    patch.api_key_verified_at = Some(None);
    let mut guard = plan_guard(caller, &plan);
    // The key this request supersedes is still the one held.
    guard.api_key_id = row.api_key_id.clone();
    let data = json!({
        "api_key": "rotation_requested",
        "by": if caller == Caller::Admin { "admin" } else { "partner" },
        "superseded_api_key_id": row.api_key_id,
    });
    let updated = apply_plan(
        state,
        caller,
        &row,
        Command::RotateApiKey,
        &plan,
        patch,
        guard,
        data,
    )
    .await?;
    tracing::info!(migration.id = %id, "API key rotation requested");
    Ok(updated)
}

/// How a rotation ended for its caller.
pub enum Rotation {
    /// The new key, generated and verified.
    Done(RevealedKey),
    /// Not finished within the wait: the migration as it is now (the key is fetched with
    /// `GET …/api_key` once it is completed again).
    Pending(Box<store::MigrationRow>),
}

/// Replaces the key of a completed migration (`POST …/api_key/rotate`) and waits for the
/// worker to generate and verify it, at most `wait` from the call (the checks of the number's
/// other key holders included, which 360dialog may take seconds to answer: the request must
/// end within its timeout). The new key is generated exactly once, by the worker's key step
/// (its intent recorded before the call), whoever waits for it.
pub async fn rotate_api_key(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    wait: std::time::Duration,
) -> Result<Rotation, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let requested = request_rotation(state, caller, id).await?;
    let mut row = requested;
    loop {
        match row.state() {
            MigrationState::Completed => {
                return Ok(Rotation::Done(reveal_api_key(state, caller, id).await?));
            }
            MigrationState::Failed | MigrationState::Cancelled => {
                let error: Option<crate::domain::MigrationError> = row
                    .error
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok());
                let (code, detail) = match &error {
                    Some(e) => (e.code.as_str(), e.message.clone()),
                    None => (
                        "invalid_state",
                        format!("The rotation ended in `{}`.", row.state),
                    ),
                };
                return Err(ApiError::conflict(code, detail)
                    .with_extra(json!({ "state": row.state, "error": error })));
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Ok(Rotation::Pending(Box::new(row)));
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        row = fetch(state, caller, id).await?;
    }
}
