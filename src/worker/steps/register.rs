//! `registering`: `POST /{phone-number-id}/register`, with the number read before every call.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    Result, StepResult, crash_point, earlier_call_may_be_sent, is_connected, phone_number_id,
    phone_status, save_under_lease, summary_with,
};
use crate::clients;
use crate::crypto::aad;
use crate::db::migrations as store;
use crate::domain::memo::{Intent, MemoEdits, MemoKey};
use crate::domain::upstream::{
    REGISTER_CALLS_PER_72H, register_calls_in_window, register_window_frees_at,
};
use crate::domain::{ErrorCode, MigrationError, MigrationState, StepOutcome};
use crate::precheck;
use crate::worker::Deps;
use crate::worker::errors::{StepError, outcome};
use crate::worker::lease::StepLease;

/// Compares what the source showed at precheck with the registered number: the migration
/// must keep the display name, quality rating, messaging limit and OBA status.
fn preserved(row: &store::MigrationRow, after: &clients::PhoneNumber) -> Value {
    let before: precheck::SourceSnapshot = row
        .precheck
        .as_ref()
        .and_then(|p| p.get("source").cloned())
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let item = |b: Value, a: Value| {
        let kept = b.is_null() || a.is_null() || b == a;
        json!({ "before": b, "after": a, "preserved": kept })
    };
    json!({
        "display_name": item(json!(before.display_name), json!(after.verified_name)),
        "quality_rating": item(json!(before.quality_rating), json!(after.quality_rating)),
        "messaging_limit_tier": item(json!(before.messaging_limit_tier), json!(after.messaging_limit_tier)),
        "official_business_account": item(
            json!(before.is_official_business_account),
            json!(after.is_official_business_account)
        ),
    })
}

/// After registration: what was preserved (best effort; a failed read does not fail the step).
async fn registered(deps: &Deps, row: &store::MigrationRow, pnid: &str) -> StepResult {
    let done = StepResult::done();
    match phone_status(deps, pnid).await {
        Ok(n) => {
            let summary = summary_with(row, "preserved", preserved(row, &n));
            done.with(|p| p.summary = Some(summary))
        }
        Err(e) => {
            warn!(error = %e, "could not read the registered number for the summary");
            done
        }
    }
}

pub(super) async fn registering(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::Registering;
    let pnid = match phone_number_id(row, state) {
        Ok(id) => id,
        Err(failed) => return Ok(*failed),
    };
    // Read before calling, intent or not: an earlier register of ours may have been applied,
    // and a number already `CONNECTED` must not be registered again either (10 registrations
    // per 72 h, then a 72 h block; a PIN mismatch would fail a number that works).
    match phone_status(deps, &pnid).await {
        Ok(n) if is_connected(&n) => {
            info!("number already registered: not calling register again");
            let summary = summary_with(row, "preserved", preserved(row, &n));
            return Ok(StepResult::done()
                .with(|p| p.summary = Some(summary))
                .data(json!({ "register": "already_registered" })));
        }
        Ok(_) => {}
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    }
    // Meta blocks a number for 72 h after 10 register calls in 72 h: retries (of the worker,
    // of the partner, of new migrations of the number) stop well before, whatever the errors
    // said. This migration's calls, with one an earlier claim made and never recorded (it died
    // after calling: its intent, armed or recorded before the call, is later than every call
    // recorded)...
    let now = Utc::now();
    // (An intent this claim armed stands for no call yet.)
    let own = if earlier_call_may_be_sent(row, lease, MemoKey::Register) {
        calls_with_unrecorded(&row.step_memo)
    } else {
        recorded_calls(&row.step_memo)
    };
    let own = register_calls_in_window(own, now);
    // ...and those of the number's other migrations (with a call one of them made and never
    // recorded, by the same rule): Meta counts per number.
    let others: Vec<DateTime<Utc>> =
        store::register_calls_of_number(&deps.pool, &row.phone_number, row.id)
            .await?
            .iter()
            .flat_map(calls_with_unrecorded)
            .collect();
    let all = register_calls_in_window(own.iter().copied().chain(others), now);
    if all.len() >= REGISTER_CALLS_PER_72H {
        return Ok(StepResult::new(StepOutcome::Failed(too_many_calls(
            &all, state,
        ))));
    }
    let pin = deps
        .cipher
        .open(&row.pin_enc, &aad::pin(row.id))
        .map_err(|_| StepError::Corrupt("the stored PIN cannot be decrypted"))?;
    lease.may_start()?;
    let called_at = Utc::now();
    let with_call: Vec<_> = own.iter().copied().chain([called_at]).collect();
    // The intent (and the call's time) committed before the call. A claim that armed the intent
    // needs no statement for it: if it dies after the call, the next claim counts the call from
    // the intent's time, later than every call recorded. Otherwise one write records both.
    let saved = if MemoKey::Register.intent(&row.step_memo, lease.token()) == Intent::Armed {
        None
    } else {
        let patch = store::Patch {
            memo: MemoEdits::default()
                .set(MemoKey::Register, MemoKey::recorded(called_at))
                .set(MemoKey::RegisterCalls, json!(with_call)),
            ..Default::default()
        };
        Some(save_under_lease(deps, row, lease, &patch, None).await?)
    };
    let call = lease.irreversible("register")?;
    let result = deps.meta.register(&pnid, &pin).await;
    call.finish(&result);
    crash_point(deps, "after_register")?;
    // A request that never left (a connect error) is no call.
    let never_sent = matches!(
        &result,
        Err(clients::Error::Transport {
            maybe_applied: false,
            ..
        })
    );
    let step = match result {
        Ok(()) => registered(deps, row, &pnid).await,
        // (133015's and 133009's least waits are `outcome`'s.)
        Err(e) => StepResult::new(outcome(&e, state)),
    };
    // The intent's time is the call's, so a later claim does not count the call twice.
    let mut step = if never_sent {
        step.remember(MemoKey::RegisterCalls, json!(own))
            .forget(MemoKey::Register)
    } else {
        step.remember(MemoKey::RegisterCalls, json!(with_call))
            .remember(MemoKey::Register, MemoKey::recorded(called_at))
    };
    step.row = saved.map(Box::new);
    Ok(step)
}

/// The times of the `register` calls a migration recorded (its step memo).
fn recorded_calls(memo: &Value) -> Vec<DateTime<Utc>> {
    MemoKey::RegisterCalls
        .read(memo)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// A migration's calls from its memo: those recorded, and one its `register` intent shows it
/// may have made after them (its worker died, or it was cancelled, before recording it).
fn calls_with_unrecorded(memo: &Value) -> Vec<DateTime<Utc>> {
    let mut calls = recorded_calls(memo);
    if let Some(at) = MemoKey::Register.intent_at(memo)
        && calls.iter().all(|c| *c < at)
    {
        calls.push(at);
    }
    calls
}

/// The failure of a migration whose `register` calls of the last 72 h reached our share of
/// Meta's cap.
fn too_many_calls(calls: &[DateTime<Utc>], state: MigrationState) -> MigrationError {
    // Below the limit again once all but the last `REGISTER_CALLS_PER_72H - 1` left the window.
    let leaving = calls.len().saturating_sub(REGISTER_CALLS_PER_72H);
    let free = register_window_frees_at(&calls[leaving..]).map_or_else(String::new, |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let mut error = MigrationError::new(ErrorCode::RegisterLimitReached, state).with_message(
        format!(
            "register was called {} times for this number in the last 72 hours (by this migration and any other of the number) without it being registered. Meta allows 10 register and deregister calls per number in 72 hours, the old provider's included, and blocks the number for 72 hours past that: no more calls before {free}.",
            calls.len()
        ),
    );
    error.remediation = format!(
        "Find out from the migration's events why registration failed and fix it, then retry after {free}."
    );
    error
}
