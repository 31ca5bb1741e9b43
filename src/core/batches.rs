//! The commands on a batch (`/v1/batches…`): create many migrations in one transaction, read
//! a batch's progress, cancel what has not finished, retry the retryable failures. Each
//! migration of a batch is an ordinary migration: cancel and retry go through the same
//! commands (and guards, events and webhooks) as `POST /v1/migrations/{id}/cancel|retry`.
//! [`tick`] writes the batch's own webhooks, `batch.progress` and `batch.completed`.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::http::StatusCode;
use chrono::Utc;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use super::migrations::{
    self as single, Idempotency, KeyHolder, LiveKey, NewMigrationInput, partner_of,
};
use super::{AppState, Caller};
use crate::api::Migration;
use crate::api::batch::{
    Batch, BatchCreated, BatchEventType, BatchItem, BatchState, BatchWebhookEvent, ItemStatus,
};
use crate::api::problem::ApiError;
use crate::crypto::{self, aad};
use crate::db::{self, batches as store, idempotency, migrations as migrations_store};
use crate::domain::{MigrationError, MigrationState};

/// At most this many migrations in one batch.
pub const MAX_ITEMS: usize = 5000;
/// `max_in_flight` when the request does not say.
pub const DEFAULT_MAX_IN_FLIGHT: i32 = 20;

/// One checked item of a batch create.
pub struct NewItem {
    pub reference: Option<String>,
    /// A CSV upload: the spreadsheet row the number is on (the header is row 1).
    pub row: Option<u64>,
    pub input: NewMigrationInput,
}

/// A checked batch create request (every item already validated).
pub struct NewBatchInput {
    pub name: String,
    pub max_in_flight: i32,
    pub callback_url: Option<String>,
    pub items: Vec<NewItem>,
}

/// What a batch create answers.
pub enum Created {
    New(Box<BatchCreated>),
    /// The stored answer of an earlier request with the same `Idempotency-Key` and body (the
    /// created items' `client_page` as it is now, never stored).
    Replay {
        status: u16,
        body: Value,
    },
}

/// How long a create waits for 360dialog to say whether a completed migration's key still
/// works (per number that has one), how many it asks about at once, and how long all of them
/// may take together (a batch re-uploading thousands of migrated numbers).
const KEY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const KEY_CHECKS_AT_ONCE: usize = 8;
const KEY_CHECKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The problem of a rejected item, as JSON: its `code`, `detail` and extras.
fn item_error(e: &ApiError) -> Value {
    let mut v = json!({ "code": e.code, "detail": e.detail });
    if let (Some(Value::Object(extra)), Value::Object(out)) = (&e.extra, &mut v) {
        out.extend(extra.clone());
    }
    v
}

/// 409 `batch_all_rejected`: every number of the batch is busy or already migrated. `items`
/// lists them as a created batch's answer would (each with its `error`).
fn all_rejected(items: Vec<BatchItem>) -> ApiError {
    ApiError::conflict(
        "batch_all_rejected",
        format!(
            "{} busy or already migrated, so no batch was created; `items` says why for each.",
            if items.len() == 1 {
                "Its one number is".to_owned()
            } else {
                format!("All {} numbers are", items.len())
            }
        ),
    )
    .with_extra(json!({ "items": items }))
}

/// Creates a batch and its migrations in one transaction (`POST /v1/batches`). Items whose
/// number is busy (an active migration) or already migrated (a completed migration holding a
/// key 360dialog may still accept) are rejected one by one; the rest are created. When that
/// leaves none, nothing is created (409 `batch_all_rejected`).
pub async fn create(
    state: &AppState,
    caller: Caller,
    idempotency: Option<Idempotency<'_>>,
    v: NewBatchInput,
) -> Result<Created, ApiError> {
    let partner_id = partner_of(caller)?;
    let numbers: Vec<String> = v
        .items
        .iter()
        .map(|i| i.input.phone.as_str().to_owned())
        .collect();
    // Numbers whose holder 360dialog was asked about: whether it said the key works.
    let mut asked: Option<HashMap<String, (KeyHolder, bool)>> = None;
    // A batch's keys are apart from single creates' (one partner may use `acme-1` for both):
    // an `Idempotency-Key` holds visible ASCII only, so no single create's key has this form.
    let scoped_key = idempotency.as_ref().map(|i| format!("batches\n{}", i.key));
    let (mut tx, holders) = loop {
        let mut tx = state.pool.begin().await?;
        if let (Some(idem), Some(key)) = (&idempotency, &scoped_key) {
            let fingerprints = state
                .cipher
                .fingerprints(single::canonical(idem.body).to_string().as_bytes());
            match idempotency::begin(&mut tx, partner_id, key, &fingerprints).await? {
                idempotency::Begin::New => {}
                idempotency::Begin::Replay { status, body } => {
                    tx.rollback().await?;
                    let body = if status == 201 {
                        replayed(state, body).await?
                    } else {
                        body
                    };
                    return Ok(Created::Replay { status, body });
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
        let with_holder = store::numbers_with_key_holders(&mut *tx, &numbers).await?;
        match asked {
            Some(found) => {
                break (tx, (with_holder, found));
            }
            None if with_holder.is_empty() => break (tx, (with_holder, HashMap::new())),
            None => {
                // Ask 360dialog with no transaction held, then decide again: a few numbers
                // at once, all within KEY_CHECKS_TIMEOUT (past it, a number's check gets no
                // time: its key counts as unconfirmed, as when 360dialog does not answer).
                drop(tx);
                let deadline = tokio::time::Instant::now() + KEY_CHECKS_TIMEOUT;
                // In random order: numbers whose keys still work are checked on every
                // upload; the budget must not always run out before the same ones.
                let mut order = with_holder.clone();
                rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
                let checks: Vec<_> = order
                    .into_iter()
                    .map(|number| async move {
                        let left = deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            .min(KEY_CHECK_TIMEOUT);
                        let live = single::live_key_holder(
                            &state.pool,
                            &state.cipher,
                            state.d360.as_ref(),
                            &number,
                            None,
                            None,
                            Some(left),
                        )
                        .await;
                        live.map(|l| (number, l))
                    })
                    .collect();
                let checks: Vec<_> = futures::stream::iter(checks)
                    .buffer_unordered(KEY_CHECKS_AT_ONCE)
                    .collect()
                    .await;
                let mut found = HashMap::new();
                for checked in checks {
                    match checked? {
                        (_, LiveKey::None) => {}
                        (number, LiveKey::Live(h)) => {
                            found.insert(number, (h, true));
                        }
                        (number, LiveKey::Unknown(h)) => {
                            found.insert(number, (h, false));
                        }
                    }
                }
                asked = Some(found);
            }
        }
    };
    let (with_holder, confirmed) = holders;
    let with_holder: HashSet<String> = with_holder.into_iter().collect();
    let active: HashMap<String, (Uuid, Uuid)> = store::active_for_numbers(&mut *tx, &numbers)
        .await?
        .into_iter()
        .map(|(n, id, owner)| (n, (id, owner)))
        .collect();

    let batch_id = Uuid::now_v7();
    let mut items: Vec<BatchItem> = Vec::with_capacity(v.items.len());
    let mut to_insert = Vec::new();
    let mut hosted: HashSet<Uuid> = HashSet::new();
    for (index, item) in v.items.into_iter().enumerate() {
        let phone = item.input.phone.as_str().to_owned();
        let rejected = if let Some(existing) = active.get(&phone) {
            Some(single::active_conflict(Some(*existing), caller))
        } else if with_holder.contains(&phone) {
            let (holder, sure) = confirmed.get(&phone).cloned().unwrap_or_else(|| {
                // A holder that appeared after 360dialog was asked: kept, unconfirmed.
                (
                    KeyHolder {
                        id: Uuid::nil(),
                        partner_id: Uuid::nil(),
                    },
                    false,
                )
            });
            Some(single::already_migrated(&holder, caller, sure))
        } else {
            None
        };
        if let Some(e) = rejected {
            items.push(BatchItem {
                index,
                row: item.row,
                reference: item.reference,
                phone_number: phone,
                status: ItemStatus::Rejected,
                migration_id: None,
                error: Some(item_error(&e)),
                client_page: None,
            });
            continue;
        }
        let id = Uuid::now_v7();
        let input = item.input;
        let pin = input
            .pin
            .clone()
            .unwrap_or_else(|| crypto::generate_pin().expose_secret().to_owned());
        if input.client_page {
            hosted.insert(id);
        }
        to_insert.push((
            migrations_store::NewMigration {
                id,
                partner_id,
                flow: input.flow.as_str().into(),
                phone_number: phone.clone(),
                source_waba_id: input.source_waba_id,
                destination_waba_id: input.destination_waba_id,
                meta_business_id: input.meta_business_id,
                channel_id: input.channel_id,
                otp_method: input.otp_method.as_str().into(),
                otp_language: input.otp_language,
                otp_attempts_left: state.otp.max_attempts,
                pin_enc: state.cipher.seal(&pin, &aad::pin(id)),
                metadata: input.metadata,
                callback_url: input.callback_url,
            },
            item.reference.clone(),
        ));
        items.push(BatchItem {
            index,
            row: item.row,
            reference: item.reference,
            phone_number: phone,
            status: ItemStatus::Created,
            migration_id: Some(id),
            error: None,
            client_page: None,
        });
    }

    store::insert(
        &mut tx,
        &store::NewBatch {
            id: batch_id,
            partner_id,
            name: v.name,
            max_in_flight: v.max_in_flight,
            callback_url: v.callback_url,
            total: i32::try_from(to_insert.len()).unwrap_or(i32::MAX),
        },
    )
    .await?;
    let rows = super::transition::create_many(&mut tx, batch_id, &to_insert).await?;
    if rows.len() != to_insert.len() {
        // A number became active meanwhile (a single create that committed first).
        let inserted: HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        for item in items.iter_mut() {
            if let Some(id) = item.migration_id.filter(|id| !inserted.contains(id)) {
                hosted.remove(&id);
                let existing =
                    migrations_store::active_for_number(&mut *tx, &item.phone_number).await?;
                item.status = ItemStatus::Rejected;
                item.migration_id = None;
                item.error = Some(item_error(&single::active_conflict(existing, caller)));
            }
        }
        store::set_total(&mut *tx, batch_id, rows.len() as i32).await?;
    }
    if rows.is_empty() {
        // Nothing to move: no batch either (it would report `finished` at once and send
        // `batch.completed` for nothing). The transaction rolls back, the key with it.
        drop(tx);
        return Err(all_rejected(items));
    }
    // The first `max_in_flight` start now (in this transaction, so at commit); the rest wait
    // for a slot (the workers' admission).
    let admitted = store::admit(&mut tx, Some(batch_id)).await?;
    let hosted_ids: Vec<Uuid> = rows
        .iter()
        .map(|r| r.id)
        .filter(|id| hosted.contains(id))
        .collect();
    let pages = super::client_page::issue_many(&mut tx, state, &hosted_ids).await?;
    let batch = store::get(&mut *tx, batch_id, None).await?;
    let counts = store::counts(&mut tx, batch_id).await?;
    let mut out = BatchCreated {
        batch: present(&batch, &counts),
        items,
    };
    if let Some(key) = &scoped_key {
        // Without the links: a stored answer must not hold a capability.
        idempotency::finish(&mut tx, partner_id, key, 201, &json!(out)).await?;
    }
    tx.commit().await?;
    crate::metrics::batch_admitted(admitted);
    let by_id: HashMap<Uuid, &migrations_store::MigrationRow> =
        rows.iter().map(|r| (r.id, r)).collect();
    let pages: HashMap<Uuid, _> = pages.into_iter().map(|p| (p.migration_id, p)).collect();
    for item in &mut out.items {
        if let Some(row) = item.migration_id.and_then(|id| by_id.get(&id)) {
            item.client_page = Some(
                pages
                    .get(&row.id)
                    .map(|p| super::client_page::present(state, row, p)),
            );
        }
    }
    tracing::info!(
        batch.id = %batch_id,
        partner.id = %partner_id,
        created = rows.len(),
        rejected = out.items.len() - rows.len(),
        "batch created"
    );
    Ok(Created::New(Box::new(out)))
}

/// A replayed create answer with each created migration's `client_page` as it is now.
async fn replayed(state: &AppState, body: Value) -> Result<Value, ApiError> {
    let Ok(mut out) = serde_json::from_value::<BatchCreated>(body.clone()) else {
        return Ok(body);
    };
    let rows = store::migrations(
        &state.pool,
        out.batch.id,
        &store::MigrationFilter::default(),
    )
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let pages = db::client_pages::get_many(&state.pool, &ids).await?;
    for item in &mut out.items {
        if let Some(row) = rows.iter().find(|r| Some(r.id) == item.migration_id) {
            item.client_page = Some(
                pages
                    .iter()
                    .find(|p| p.migration_id == row.id)
                    .map(|p| super::client_page::present(state, row, p)),
            );
        }
    }
    Ok(json!(out))
}

/// The batch object from its row and its migrations' counts.
pub fn present(b: &store::BatchRow, c: &store::Counts) -> Batch {
    let counts_by_state: BTreeMap<String, i64> = c.by_state.iter().cloned().collect();
    let counts_by_error_code: BTreeMap<String, i64> = c.by_error.iter().cloned().collect();
    let total: i64 = counts_by_state.values().sum();
    let finished: i64 = counts_by_state
        .iter()
        .filter(|(s, _)| {
            s.parse::<MigrationState>()
                .is_ok_and(MigrationState::is_terminal)
        })
        .map(|(_, n)| n)
        .sum();
    let all_done = finished == total;
    let state = if b.cancelled_at.is_some() {
        BatchState::Cancelled
    } else if all_done {
        BatchState::Finished
    } else {
        BatchState::Active
    };
    let estimated_seconds_left = if all_done {
        Some(0)
    } else if finished == 0 || b.cancelled_at.is_some() {
        None
    } else {
        let elapsed = (Utc::now() - b.started_at).num_milliseconds().max(1) as f64 / 1000.0;
        let per_second = finished as f64 / elapsed;
        Some(((total - finished) as f64 / per_second).ceil() as i64)
    };
    Batch {
        id: b.id,
        partner_id: b.partner_id,
        name: b.name.clone(),
        state,
        max_in_flight: b.max_in_flight,
        callback_url: b.callback_url.clone(),
        total,
        finished,
        progress: if total == 0 {
            1.0
        } else {
            finished as f64 / total as f64
        },
        counts_by_state,
        counts_by_error_code,
        estimated_seconds_left,
        created_at: b.created_at,
        started_at: b.started_at,
        finished_at: if all_done {
            b.finished_at.or(c.last_finished_at).or(Some(b.created_at))
        } else {
            None
        },
        cancelled_at: b.cancelled_at,
        paused_until: b.paused_until.filter(|t| *t > Utc::now() && !all_done),
        throttles: b.throttles,
    }
}

/// The batch `id` as `caller` may see it, or 404.
pub async fn fetch(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<store::BatchRow, ApiError> {
    match store::get(&state.pool, id, caller.scope()).await {
        Ok(r) => Ok(r),
        Err(db::Error::NotFound) => Err(ApiError::not_found("batch")),
        Err(e) => Err(e.into()),
    }
}

/// A batch with its progress (`GET /v1/batches/{id}`). The first read that finds every
/// migration finished records `finished_at`.
pub async fn view(state: &AppState, row: store::BatchRow) -> Result<Batch, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let counts = store::counts(&mut conn, row.id).await?;
    let mut batch = present(&row, &counts);
    if row.finished_at.is_none()
        && let Some(at) = batch.finished_at
    {
        batch.finished_at = store::set_finished(&mut conn, row.id, at).await?;
    }
    Ok(batch)
}

/// `GET /v1/batches/{id}`.
pub async fn get(state: &AppState, caller: Caller, id: Uuid) -> Result<Batch, ApiError> {
    let row = fetch(state, caller, id).await?;
    view(state, row).await
}

/// Cancels every migration of the batch that has not finished, each through the single
/// cancel command (`POST /v1/batches/{id}/cancel`). A migration that finished meanwhile, or
/// is rotating its key, is left as it is. The batch's `cancelled_at` is written first, and
/// [`finish_cancels`] (the batch ticker) cancels within seconds what this request did not:
/// a migration whose worker is registering it or generating its key right now (409
/// `call_in_flight`: once that call is answered), and everything left if the request is cut
/// short.
pub async fn cancel(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: single::Source,
) -> Result<Batch, ApiError> {
    let row = fetch(state, caller, id).await?;
    store::set_cancelled(&state.pool, row.id).await?;
    let open = store::migrations(&state.pool, row.id, &store::MigrationFilter::default()).await?;
    for m in open.iter().filter(|m| !m.state().is_terminal()) {
        cancel_member(state, caller, m.id, source).await?;
    }
    let row = fetch(state, caller, id).await?;
    view(state, row).await
}

/// Cancels one migration of a cancelled batch unless it finished or is rotating its key; one
/// with a call in flight is left to [`finish_cancels`]. Whether it was cancelled.
async fn cancel_member(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: single::Source,
) -> Result<bool, ApiError> {
    // A worker may move the migration between the read and the guarded write (409): read it
    // again and cancel it in its new state, unless it finished.
    for _ in 0..5 {
        let e = match single::cancel(state, caller, id, source).await {
            Ok(_) => return Ok(true),
            Err(e) if e.status == StatusCode::CONFLICT => e,
            Err(e) => return Err(e),
        };
        let left_as_is = e.code == "call_in_flight" || {
            let fresh = single::fetch(state, caller, id).await?;
            fresh.state().is_terminal() || fresh.completed_at.is_some()
        };
        if left_as_is {
            tracing::info!(migration.id = %id, code = e.code, "batch cancel: migration not cancelled now");
            return Ok(false);
        }
    }
    Ok(false)
}

/// Carries out the cancels of cancelled batches: cancels their migrations that have not
/// finished, are not rotating a key and were not retried since the batch was cancelled (a
/// migration retried on its own then runs): those a batch cancel left because a call was in
/// flight, or did not reach because it was cut short (a restart, a database error, the client
/// gone). Each through the single cancel command as the batch's partner, `source: "batch"`.
/// Returns how many it cancelled.
pub async fn finish_cancels(state: &AppState) -> Result<usize, ApiError> {
    let left = store::unfinished_of_cancelled(&state.pool, 500).await?;
    let mut cancelled = 0;
    let mut first_error = None;
    for (partner_id, migration_id) in left {
        let partner = Caller::Partner(partner_id);
        match cancel_member(state, partner, migration_id, single::Source::Batch).await {
            Ok(true) => cancelled += 1,
            Ok(false) => {}
            // One migration's refusal does not hold the others up: it is tried next tick.
            Err(e) if e.status.is_client_error() => {
                tracing::warn!(migration.id = %migration_id, error = %e.detail, "batch cancel: could not cancel");
            }
            // Nor does one's server error; two in a row say the database is in trouble: the
            // round stops, and the next tick tries again.
            Err(e) => {
                if first_error.is_some() {
                    return Err(e);
                }
                tracing::warn!(migration.id = %migration_id, error = %e.detail, "batch cancel: could not cancel");
                first_error = Some(e);
            }
        }
    }
    if cancelled > 0 {
        tracing::info!(cancelled, "batch cancels finished");
    }
    match first_error {
        Some(e) if cancelled == 0 => Err(e),
        _ => Ok(cancelled),
    }
}

/// What `retry_failed` did.
pub struct Retried {
    pub retried: usize,
    /// Failed migrations not retried: their error is not retryable, or the retry was refused
    /// (e.g. another migration of the number is active).
    pub skipped: usize,
    pub batch: Batch,
}

/// Retries the failed migrations of the batch whose `error.retryable` is true, each through
/// the single retry command (`POST /v1/batches/{id}/retry_failed`).
pub async fn retry_failed(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    source: single::Source,
) -> Result<Retried, ApiError> {
    let row = fetch(state, caller, id).await?;
    if row.cancelled_at.is_some() {
        return Err(ApiError::conflict(
            "invalid_state",
            "This batch was cancelled: its failed migrations are not retried together. Retry one with `POST /v1/migrations/{id}/retry`, or create a new batch.",
        ));
    }
    let failed = store::migrations(
        &state.pool,
        row.id,
        &store::MigrationFilter {
            state: Some(MigrationState::Failed.as_str().to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let (mut retried, mut skipped) = (0, 0);
    for m in &failed {
        // A cancel of the batch meanwhile: retry no more (those retried already are cancelled
        // by the batch ticker, their events saying they were the batch's retries).
        if store::get(&state.pool, row.id, None)
            .await?
            .cancelled_at
            .is_some()
        {
            break;
        }
        let retryable = m
            .error
            .clone()
            .and_then(|e| serde_json::from_value::<MigrationError>(e).ok())
            .is_some_and(|e| e.retryable);
        if !retryable {
            skipped += 1;
            continue;
        }
        match single::retry_as(state, caller, m.id, source, true).await {
            Ok(_) => retried += 1,
            Err(e) if e.status == StatusCode::CONFLICT => {
                tracing::info!(migration.id = %m.id, code = e.code, "batch retry: migration not retried");
                skipped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    // Each retry re-opened the batch with it (`migrations::retry`).
    let row = fetch(state, caller, id).await?;
    Ok(Retried {
        retried,
        skipped,
        batch: view(state, row).await?,
    })
}

/// What one [`tick`] recorded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ticked {
    /// Batches whose `batch.progress` was recorded (and enqueued, when they have a URL).
    pub progress: usize,
    /// Batches whose `batch.completed` was recorded (and enqueued, when they have a URL).
    pub completed: usize,
    /// Migrations of cancelled batches cancelled in the background ([`finish_cancels`]).
    pub cancelled: usize,
}

/// One look at every open batch (one whose current generation has not completed), each in a
/// transaction of its own holding the batch's row lock (`FOR UPDATE SKIP LOCKED`: replicas
/// share the batches, and a batch is looked at by one ticker at a time):
///
/// * every migration terminal → `finished_at` and the generation's completion are recorded and
///   a `batch.completed` is enqueued (the unique `(batch_id, batch_generation)` index of
///   `batch.completed` deliveries makes a second one impossible);
/// * otherwise, if `interval` has passed since the last `batch.progress` and the counts by
///   state or error code differ from what it showed (at first: all `queued`), a
///   `batch.progress` is enqueued.
///
/// The body is the batch as `GET /v1/batches/{id}` shows it, rendered once, in the same
/// transaction as the bookkeeping. Without a URL (no `callback_url`, partner without one)
/// the bookkeeping is recorded and nothing is enqueued.
pub async fn tick(pool: &sqlx::PgPool, interval: std::time::Duration) -> Result<Ticked, db::Error> {
    let mut out = Ticked::default();
    let mut after = None;
    loop {
        let mut tx = pool.begin().await?;
        let Some(b) = store::lock_next_open(&mut tx, after, interval).await? else {
            tx.commit().await?;
            return Ok(out);
        };
        after = Some(b.row.id);
        match tick_one(&mut tx, &b).await {
            Ok(Some(kind)) => {
                tx.commit().await?;
                tracing::info!(
                    batch.id = %b.row.id,
                    event = kind.as_str(),
                    generation = b.generation,
                    sent = b.url.is_some(),
                    "batch event recorded"
                );
                match kind {
                    BatchEventType::Progress => out.progress += 1,
                    BatchEventType::Completed => out.completed += 1,
                }
            }
            Ok(None) => tx.commit().await?,
            // One batch's trouble does not hold the others up: it is looked at next tick.
            Err(e) => {
                tracing::warn!(batch.id = %b.row.id, error = %e, "batch tick failed");
                drop(tx);
            }
        }
    }
}

/// The tick of one locked batch: the event recorded, if any.
async fn tick_one(
    tx: &mut sqlx::PgConnection,
    b: &store::OpenBatch,
) -> Result<Option<BatchEventType>, db::Error> {
    let counts = store::counts(&mut *tx, b.row.id).await?;
    let mut batch = present(&b.row, &counts);
    let sequence = b.webhook_sequence + i32::from(b.url.is_some());
    let kind = if batch.finished == batch.total {
        let finished_at = batch.finished_at.unwrap_or(b.now);
        batch.finished_at = Some(finished_at);
        if !store::record_completed(&mut *tx, b, finished_at, sequence).await? {
            return Ok(None);
        }
        BatchEventType::Completed
    } else {
        let shown = json!({
            "counts_by_state": batch.counts_by_state,
            "counts_by_error_code": batch.counts_by_error_code,
        });
        let changed = match &b.progress_counts {
            Some(before) => *before != shown,
            // Before the first one: changed once anything left `queued`.
            None => batch.counts_by_state.keys().any(|s| s != "queued"),
        };
        if !b.progress_due || !changed {
            return Ok(None);
        }
        store::record_progress(&mut *tx, b, &shown, sequence).await?;
        BatchEventType::Progress
    };
    if let Some(url) = &b.url {
        let payload = serde_json::to_string(&BatchWebhookEvent {
            kind,
            timestamp: b.now,
            sequence,
            generation: b.generation,
            data: batch,
        })
        .expect("a batch always serialises");
        store::enqueue_event(
            &mut *tx,
            b,
            sequence,
            &store::BatchEvent {
                kind: kind.as_str(),
                payload: &payload,
                url,
            },
        )
        .await?;
    }
    Ok(Some(kind))
}

/// Reads a CSV upload of `POST /v1/batches` into a checked batch: `query` is the request's
/// query string (`name`, `max_in_flight`, `callback_url`), `csv` the `text/csv` body. Any
/// problem is the API's 422 `validation_failed` (CSV cells named by `row` and `column`).
///
/// The reader is the API's own (`http::batches::read_csv_upload`, which reads each row with
/// the single create's reader); the composition root (`app`) hands it to the core in
/// [`AppState::batch_csv`](super::AppState) so that the dashboard's upload checks exactly
/// what the API checks without importing another edge.
pub type CsvReader =
    fn(query: &str, csv: &str, allow_private: bool) -> Result<NewBatchInput, ApiError>;

/// The columns of `report.csv`, in order.
pub const REPORT_COLUMNS: &[&str] = &[
    "reference",
    "phone_number",
    "migration_id",
    "state",
    "error_code",
    "actor",
    "remediation",
    "templates_migrated",
    "templates_failed",
    "templates_skipped",
    "api_key_ready",
];

/// A partner's free text as a report cell that a spreadsheet shows and never runs: one that
/// starts like a formula (`=`, `+`, `-`, `@`, tab, carriage return) gets a leading `'`
/// (OWASP, "CSV Injection"). Support staff open these reports in Excel.
fn spreadsheet_safe(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// One report row of a migration.
fn report_row(row: &crate::db::migrations::MigrationRow) -> Vec<String> {
    let m = Migration::from(row);
    let error: Option<&MigrationError> = m
        .error
        .as_ref()
        .filter(|_| m.state == MigrationState::Failed);
    let text = |v: Value| v.as_str().map(str::to_owned).unwrap_or_default();
    let (actor, remediation) = match (&error, &m.waiting_for) {
        (Some(e), _) => (text(json!(e.actor)), e.remediation.clone()),
        (None, Some(w)) => (text(json!(w.actor)), w.remediation.clone()),
        (None, None) => (String::new(), String::new()),
    };
    let (migrated, failed, skipped) = m.templates.as_ref().map_or((0, 0, 0), |t| {
        (t.migrated.len(), t.failed.len(), t.skipped.len())
    });
    let key_ready = m.state == MigrationState::Completed
        && matches!(m.api_key.status.as_str(), "generated" | "verified");
    vec![
        spreadsheet_safe(row.batch_reference.as_deref().unwrap_or_default()),
        m.phone_number.clone(),
        m.id.to_string(),
        m.state.as_str().to_owned(),
        error.map(|e| text(json!(e.code))).unwrap_or_default(),
        actor,
        remediation,
        migrated.to_string(),
        failed.to_string(),
        skipped.to_string(),
        if key_ready { "yes" } else { "no" }.to_owned(),
    ]
}

/// A batch's report (`GET /v1/batches/{id}/report.csv`, and the dashboard's download): the
/// batch as `caller` may see it (else 404) and the CSV (UTF-8 with a byte order mark), a
/// header row of [`REPORT_COLUMNS`] and one row per migration in the order sent.
pub async fn report(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<(store::BatchRow, Vec<u8>), ApiError> {
    let batch = fetch(state, caller, id).await?;
    let rows = store::migrations(&state.pool, batch.id, &store::MigrationFilter::default()).await?;
    // A byte order mark first: Excel reads a CSV without one in the machine's legacy code page
    // (a reference "São Paulo" would show as "SÃ£o Paulo"); CSV readers skip it.
    let mut w = csv::Writer::from_writer("\u{feff}".as_bytes().to_vec());
    let write = |w: &mut csv::Writer<Vec<u8>>, r: &[String]| {
        w.write_record(r)
            .map_err(|e| ApiError::internal(anyhow::Error::from(e)))
    };
    write(
        &mut w,
        &REPORT_COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .collect::<Vec<_>>(),
    )?;
    for row in &rows {
        write(&mut w, &report_row(row))?;
    }
    let body = w
        .into_inner()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("writing the report: {e}")))?;
    Ok((batch, body))
}

#[cfg(test)]
mod tests {
    use super::spreadsheet_safe;

    #[test]
    fn references_that_look_like_formulas_are_shown_not_run() {
        for formula in [
            "=HYPERLINK(\"x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        for plain in ["row-7", "", "client 42", "'quoted"] {
            assert_eq!(spreadsheet_safe(plain), plain);
        }
    }
}
