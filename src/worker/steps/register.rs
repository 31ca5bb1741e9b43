//! `registering`: `POST /{phone-number-id}/register`, with the number read before every call.

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    Result, StepResult, crash_point, is_connected, phone_number_id, phone_status, record_intent,
    summary_with,
};
use crate::clients;
use crate::crypto::aad;
use crate::db::migrations as store;
use crate::domain::MigrationState;
use crate::domain::memo::MemoKey;
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
    let pin = deps
        .cipher
        .open(&row.pin_enc, &aad::pin(row.id))
        .map_err(|_| StepError::Corrupt("the stored PIN cannot be decrypted"))?;
    record_intent(deps, row, lease, MemoKey::Register).await?;
    let call = lease.irreversible("register")?;
    let result = deps.meta.register(&pnid, &pin).await;
    call.finish(&result);
    crash_point(deps, "after_register")?;
    match result {
        Ok(()) => Ok(registered(deps, row, &pnid).await),
        Err(e) => Ok(StepResult::new(outcome(&e, state))),
    }
}
