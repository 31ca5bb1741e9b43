//! One executor per state: the upstream calls of that step and what to persist.
//!
//! Non-idempotent calls (`request_code`, `register`, `api_keys`) follow one rule: record the
//! intent (guarded by the lease) before calling; when an intent is found on a later attempt, the
//! earlier call's outcome is unknown, so read upstream state before calling again:
//! * `request_code`: an intent means the code may have been sent; it is treated as sent (the
//!   partner can resend), so the client is never texted twice by a retry.
//! * `verify_code` / `register`: read the phone number before every call (with or without an
//!   intent); `VERIFIED` / `CONNECTED` means done.
//! * `api_keys`: a key is persisted the moment it arrives, before anything else; an intent with
//!   no stored key means the response was lost and nobody holds that key, so a new call only
//!   revokes a key nobody has. A stored key is replaced only by an explicit rotation
//!   (`POST …/api_key/rotate`, which marks it superseded first), and never a key another
//!   completed migration of the number still holds and 360dialog still accepts: that is
//!   checked before every call (`core::migrations::live_key_holder`).
//!
//! The lease is checked before every intent write and again right before every irreversible
//! call ([`StepLease::may_start`], [`StepLease::irreversible`]): a step whose lease is lost stops
//! without calling upstream, and once the worker is stopping no new intent is written (the step
//! hands the migration over untouched). The call itself runs inside an
//! [`IrreversibleCall`](super::lease::IrreversibleCall) guard, which keeps a stopping worker
//! from releasing the lease while the call is in flight.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use super::Deps;
use super::errors::outcome;
use super::lease::StepLease;
use crate::clients::{self, CodeMethod, PartnerCredentials, Template};
use crate::core::migrations::{LiveKey, live_key_holder};
use crate::crypto::aad;
use crate::db::{self, migrations as store};
use crate::domain::values::{E164, digits_only};
use crate::domain::{
    ErrorCode, EventType, Flow, MigratedTemplate, MigrationError, MigrationState, OtpMethod,
    SkippedTemplate, StepOutcome, TemplatesReport,
};
use crate::precheck;

/// Why a step stopped without an outcome.
#[derive(Debug)]
pub enum StepError {
    /// Lease lost or a fail point fired: write nothing more.
    Abandon,
    /// The worker is stopping and the step reached an irreversible call it has not started:
    /// nothing was sent; the migration is handed over as it is (lease released at once).
    Stopping,
    Db(db::Error),
    /// Our own data is unusable (a secret that does not decrypt): retrying cannot help, so the
    /// migration fails with `internal_error` instead of being retried forever.
    Corrupt(&'static str),
}

impl From<db::Error> for StepError {
    fn from(e: db::Error) -> Self {
        StepError::Db(e)
    }
}

/// A step's outcome and the columns to write with it.
pub struct StepResult {
    pub outcome: StepOutcome,
    pub patch: store::Patch,
    /// Extra data for the event (never secrets).
    pub event_data: Value,
    /// The row as the step's own writes left it (it saved something, bumping the version):
    /// the result is recorded on top of this one.
    pub row: Option<Box<store::MigrationRow>>,
}

impl StepResult {
    fn new(outcome: StepOutcome) -> Self {
        Self {
            outcome,
            patch: store::Patch::default(),
            event_data: json!({}),
            row: None,
        }
    }

    fn done() -> Self {
        Self::new(StepOutcome::Done { skip_to: None })
    }

    fn with(mut self, f: impl FnOnce(&mut store::Patch)) -> Self {
        f(&mut self.patch);
        self
    }

    fn data(mut self, data: Value) -> Self {
        self.event_data = data;
        self
    }

    /// Our own data is unusable: fail visibly with `internal_error`.
    pub fn corrupt(state: MigrationState, what: &str) -> Self {
        Self::new(StepOutcome::Failed(
            MigrationError::new(ErrorCode::InternalError, state)
                .with_message(format!("An internal error stopped this step: {what}.")),
        ))
    }

    /// A step that panicked: retried like a transient failure, then failed.
    pub fn internal_error(state: MigrationState, msg: &str) -> Self {
        let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, state)
            .with_message("An internal error interrupted this step.");
        error.actor = crate::domain::Actor::None;
        Self::new(StepOutcome::Transient {
            error,
            retry_after: None,
        })
        .data(json!({ "internal": msg.chars().take(200).collect::<String>() }))
    }
}

type Result<T> = std::result::Result<T, StepError>;

fn memo(row: &store::MigrationRow, key: &str) -> Option<Value> {
    row.step_memo.get(key).cloned()
}

/// Records an intent in `step_memo` before a non-idempotent call, guarded by the lease; first
/// checks that the lease is still held and the worker not stopping.
async fn record_intent(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
    key: &str,
) -> Result<Value> {
    lease.may_start()?;
    let mut memo = row.step_memo.clone();
    if !memo.is_object() {
        memo = json!({});
    }
    memo[key] = json!(Utc::now());
    let mut conn = deps.pool.acquire().await.map_err(db::Error::from)?;
    let updated = crate::core::transition::apply(
        &mut conn,
        row,
        &store::Guard {
            lease_token: Some(lease.token()),
            ..Default::default()
        },
        &store::Patch {
            step_memo: Some(memo.clone()),
            ..Default::default()
        },
        store::Lease::Keep,
        None,
    )
    .await?;
    if updated.is_none() {
        return Err(StepError::Abandon);
    }
    Ok(memo)
}

fn without(memo: &Value, key: &str) -> Value {
    let mut m = memo.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove(key);
    }
    m
}

fn crash_point(deps: &Deps, name: &str) -> Result<()> {
    if deps.fail_points.hit(name) {
        warn!(fail_point = name, "fail point hit: simulating a crash");
        return Err(StepError::Abandon);
    }
    Ok(())
}

/// Runs the step of `row.state`.
pub async fn execute(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    use MigrationState::*;
    let state = row.state();
    match state {
        Queued => Ok(StepResult::done()),
        Prechecking => prechecking(deps, row).await,
        Initiating => initiating(deps, row).await,
        RequestingOtp => requesting_otp(deps, row, lease).await,
        AwaitingOtp => Ok(awaiting_otp(deps, row)),
        VerifyingOtp => verifying_otp(deps, row, lease).await,
        Registering => registering(deps, row, lease).await,
        CopyingTemplates => copying_templates(deps, row).await,
        AwaitingChannel => awaiting_channel(deps, row).await,
        GeneratingApiKey => generating_api_key(deps, row, lease).await,
        Completed | Failed | Cancelled => Ok(StepResult::new(StepOutcome::NotYet {
            after: Duration::from_secs(3600),
            waiting_for: None,
        })),
    }
}

async fn prechecking(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::Prechecking;
    let flow = Flow::parse(&row.flow).unwrap_or_default();
    let phone = match E164::parse(&row.phone_number) {
        Ok(p) => p,
        Err(e) => {
            return Ok(StepResult::new(StepOutcome::Failed(
                MigrationError::new(ErrorCode::NumberNotFoundOnSource, state)
                    .with_message(format!("Stored phone number is invalid: {e}")),
            )));
        }
    };
    if let Some(seeder) = &deps.sandbox_seeder {
        seeder
            .seed(
                &row.phone_number,
                &row.source_waba_id,
                &row.destination_waba_id,
                &row.meta_business_id,
            )
            .await;
    }
    let input = match precheck::gather(
        deps.meta.as_ref(),
        &row.source_waba_id,
        &row.destination_waba_id,
    )
    .await
    {
        Ok(i) => i,
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let report = precheck::evaluate(flow, &phone, &row.meta_business_id, &input);
    let report_json = json!(report);
    let summary = json!({ "precheck_status": report.status });
    if let Some(check) = report.failure() {
        let code = check.code.unwrap_or(ErrorCode::PrecheckFailed);
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.status == precheck::CheckStatus::Fail)
            .map(|c| c.id.as_str())
            .collect();
        let mut error = MigrationError::new(code, state).with_message(check.message.clone());
        if failed.len() > 1 {
            error.message = format!(
                "{} (failed checks: {}; see precheck.checks)",
                check.message,
                failed.join(", ")
            );
        }
        return Ok(StepResult::new(StepOutcome::Failed(error))
            .with(|p| p.precheck = Some(report_json))
            .data(summary));
    }
    let skip_to = match (flow, report.destination_phone_number_id.is_some()) {
        (Flow::Otp, true) if report.destination_registered => {
            Some(MigrationState::CopyingTemplates)
        }
        (Flow::Otp, true) if report.destination_verified => Some(MigrationState::Registering),
        (Flow::Otp, true) => Some(MigrationState::RequestingOtp),
        _ => None,
    };
    let pnid = report.destination_phone_number_id.clone();
    Ok(StepResult::new(StepOutcome::Done { skip_to })
        .with(|p| {
            p.precheck = Some(report_json);
            if pnid.is_some() {
                p.phone_number_id = pnid;
            }
        })
        .data(summary))
}

async fn initiating(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::Initiating;
    if row.phone_number_id.is_some() {
        return Ok(StepResult::done());
    }
    let phone = E164::parse(&row.phone_number)
        .map_err(|_| StepError::Corrupt("the stored phone number is not valid E.164"))?;
    let cc = phone.country_code().to_string();
    match deps
        .meta
        .start_migration(&row.destination_waba_id, &cc, phone.national())
        .await
    {
        Ok(id) => Ok(StepResult::done().with(|p| p.phone_number_id = Some(id))),
        // Already in the destination (e.g. our earlier call was applied but its response
        // lost): look the number up instead of failing.
        Err(e) if e.upstream().is_some_and(|u| u.has_code(2388012)) => {
            match find_in_waba(deps, &row.destination_waba_id, &row.phone_number).await {
                Ok(Some(id)) => Ok(StepResult::done()
                    .with(|p| p.phone_number_id = Some(id))
                    .data(json!({ "already_in_destination": true }))),
                Ok(None) => Ok(StepResult::new(outcome(&e, state))),
                Err(e) => Ok(StepResult::new(outcome(&e, state))),
            }
        }
        Err(e) => Ok(StepResult::new(outcome(&e, state))),
    }
}

async fn find_in_waba(
    deps: &Deps,
    waba_id: &str,
    e164: &str,
) -> std::result::Result<Option<String>, clients::Error> {
    let want = digits_only(e164);
    let numbers = deps.meta.list_phone_numbers(waba_id).await?;
    Ok(numbers
        .into_iter()
        .find(|n| {
            n.display_phone_number
                .as_deref()
                .is_some_and(|d| digits_only(d) == want)
        })
        .map(|n| n.id))
}

fn otp_timestamps(deps: &Deps, patch: &mut store::Patch) {
    let now = Utc::now();
    let otp = &deps.config.otp;
    patch.otp_requested_at = Some(now);
    patch.otp_resend_available_at =
        Some(now + chrono::Duration::from_std(otp.resend_cooldown).unwrap_or_default());
    patch.otp_expires_at = Some(Some(
        now + chrono::Duration::from_std(otp.ttl).unwrap_or_default(),
    ));
}

async fn requesting_otp(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::RequestingOtp;
    let pnid = match phone_number_id(row, state) {
        Ok(id) => id,
        Err(failed) => return Ok(*failed),
    };
    if memo(row, "request_code").is_some() {
        // An earlier attempt may have sent the code: treat it as sent.
        info!("request_code intent found: treating the code as sent");
        return Ok(StepResult::done()
            .with(|p| otp_timestamps(deps, p))
            .data(json!({ "otp": "assumed_sent_after_interruption" })));
    }
    // Skip the SMS when the number is already verified (avoids Meta's 136024).
    match deps.meta.get_phone_number(&pnid).await {
        Ok(n) if is_verified(&n) => {
            return Ok(StepResult::new(StepOutcome::Done {
                skip_to: Some(MigrationState::Registering),
            })
            .data(json!({ "otp": "already_verified" })));
        }
        Ok(_) => {}
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    }
    let memo_after = record_intent(deps, row, lease, "request_code").await?;
    let method = match OtpMethod::parse(&row.otp_method).unwrap_or_default() {
        OtpMethod::Sms => CodeMethod::Sms,
        OtpMethod::Voice => CodeMethod::Voice,
    };
    let call = lease.irreversible("request_code")?;
    let result = deps
        .meta
        .request_code(&pnid, method, &row.otp_language)
        .await;
    call.finish(&result);
    crash_point(deps, "after_request_code")?;
    match result {
        Ok(()) => Ok(StepResult::done()
            .with(|p| otp_timestamps(deps, p))
            .data(json!({ "otp": "sent", "method": row.otp_method }))),
        Err(e) if e.upstream().is_some_and(|u| u.has_code(136024)) => {
            Ok(StepResult::new(StepOutcome::Done {
                skip_to: Some(MigrationState::Registering),
            })
            .data(json!({ "otp": "already_verified" })))
        }
        Err(e) if e.maybe_applied() => {
            // Ambiguous: it may have been sent (a timeout or reset after sending, or a 2xx
            // whose body is not Graph's `{"success": true}`). Never text the client twice by a
            // retry: treat it as sent; the partner can resend.
            Ok(StepResult::done()
                .with(|p| otp_timestamps(deps, p))
                .data(json!({ "otp": "assumed_sent_after_ambiguous_error" })))
        }
        Err(e) => {
            // Refused or never sent: forget the intent so a retry asks again.
            let cleared = without(&memo_after, "request_code");
            Ok(StepResult::new(outcome(&e, state)).with(|p| p.step_memo = Some(cleared)))
        }
    }
}

/// When an SMS code still unanswered should be followed by a voice call, if configured and
/// not done yet.
pub fn voice_fallback_at(
    otp: &crate::core::OtpPolicy,
    method: &str,
    requested_at: Option<chrono::DateTime<Utc>>,
    memo: &Value,
) -> Option<chrono::DateTime<Utc>> {
    let delay = otp.voice_fallback?;
    if method != OtpMethod::Sms.as_str() || memo.get("voice_fallback").is_some() {
        return None;
    }
    Some(requested_at? + chrono::Duration::from_std(delay).ok()?)
}

/// When a parked `awaiting_otp` row should be looked at: its deadline, or the automatic switch
/// to a voice call if that comes first.
pub fn awaiting_otp_due(
    otp: &crate::core::OtpPolicy,
    method: &str,
    requested_at: Option<chrono::DateTime<Utc>>,
    expires_at: chrono::DateTime<Utc>,
    memo: &Value,
) -> chrono::DateTime<Utc> {
    match voice_fallback_at(otp, method, requested_at, memo) {
        Some(t) if t < expires_at => t,
        _ => expires_at,
    }
}

fn awaiting_otp(deps: &Deps, row: &store::MigrationRow) -> StepResult {
    let now = Utc::now();
    let Some(expires) = row.otp_expires_at.filter(|t| *t > now) else {
        return StepResult::new(StepOutcome::Failed(MigrationError::new(
            ErrorCode::OtpExpired,
            MigrationState::AwaitingOtp,
        )))
        .with(|p| p.otp_code_enc = Some(None));
    };
    let fallback = voice_fallback_at(
        &deps.config.otp,
        &row.otp_method,
        row.otp_requested_at,
        &row.step_memo,
    );
    if fallback.is_some_and(|t| t <= now) {
        // No code arrived by SMS in time: call the client instead (once).
        let mut memo = without(&row.step_memo, "request_code");
        memo["voice_fallback"] = json!(now);
        return StepResult::new(StepOutcome::Done {
            skip_to: Some(MigrationState::RequestingOtp),
        })
        .with(|p| {
            p.otp_method = Some(OtpMethod::Voice.as_str().into());
            p.step_memo = Some(memo);
        })
        .data(json!({ "otp": "switching_to_voice" }));
    }
    let due = fallback.filter(|t| *t < expires).unwrap_or(expires);
    StepResult::new(StepOutcome::NotYet {
        after: (due - now).to_std().unwrap_or_default(),
        waiting_for: None,
    })
}

async fn phone_status(
    deps: &Deps,
    pnid: &str,
) -> std::result::Result<clients::PhoneNumber, clients::Error> {
    deps.meta.get_phone_number(pnid).await
}

/// The phone number id that `initiating` (or the precheck) stored, or the failure to report.
fn phone_number_id(
    row: &store::MigrationRow,
    state: MigrationState,
) -> std::result::Result<String, Box<StepResult>> {
    row.phone_number_id.clone().ok_or_else(|| {
        Box::new(StepResult::new(StepOutcome::Failed(
            MigrationError::new(ErrorCode::UpstreamRejected, state)
                .with_message("No phone number id: the migration was not initiated."),
        )))
    })
}

fn is_verified(n: &clients::PhoneNumber) -> bool {
    n.code_verification_status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("VERIFIED"))
}

fn is_connected(n: &clients::PhoneNumber) -> bool {
    n.status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("CONNECTED"))
}

async fn verifying_otp(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::VerifyingOtp;
    let pnid = match phone_number_id(row, state) {
        Ok(id) => id,
        Err(failed) => return Ok(*failed),
    };
    // Read before calling, intent or not: an earlier call of ours may have been applied (the
    // intent says so), and a number already `VERIFIED` must not be verified again either.
    match phone_status(deps, &pnid).await {
        Ok(n) if is_verified(&n) => {
            return Ok(StepResult::done().with(|p| {
                p.otp_code_enc = Some(None);
                p.step_memo = Some(without(&row.step_memo, "verify_code"));
            }));
        }
        Ok(_) => {}
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    }
    let code = match &row.otp_code_enc {
        Some(enc) => match deps.cipher.open(enc, &aad::otp_code(row.id)) {
            Ok(c) => c,
            Err(_) => {
                return Ok(StepResult::new(StepOutcome::OtpRejected(
                    MigrationError::new(ErrorCode::OtpInvalid, state)
                        .with_message("The stored code could not be read; submit it again."),
                ))
                .with(|p| p.otp_code_enc = Some(None)));
            }
        },
        None => {
            return Ok(StepResult::new(StepOutcome::OtpRejected(
                MigrationError::new(ErrorCode::OtpInvalid, state)
                    .with_message("No code to verify; submit the code again."),
            )));
        }
    };
    let memo_after = record_intent(deps, row, lease, "verify_code").await?;
    let call = lease.irreversible("verify_code")?;
    let result = deps.meta.verify_code(&pnid, &code).await;
    call.finish(&result);
    let cleared = without(&memo_after, "verify_code");
    match result {
        Ok(()) => Ok(StepResult::done().with(|p| {
            p.otp_code_enc = Some(None);
            p.step_memo = Some(cleared);
        })),
        Err(e) if e.upstream().is_some_and(|u| u.has_code(136025)) => {
            let upstream = e.upstream().cloned();
            Ok(StepResult::new(StepOutcome::OtpRejected(
                MigrationError::new(ErrorCode::OtpInvalid, state).with_upstream(upstream),
            ))
            .with(|p| {
                p.otp_code_enc = Some(None);
                p.step_memo = Some(cleared);
            }))
        }
        Err(e) => {
            let o = outcome(&e, state);
            let failed = matches!(o, StepOutcome::Failed(_));
            Ok(StepResult::new(o).with(|p| {
                if failed {
                    p.otp_code_enc = Some(None);
                }
            }))
        }
    }
}

/// `summary` with `key` set to `value` (other keys kept).
fn summary_with(row: &store::MigrationRow, key: &str, value: Value) -> Value {
    let mut s = row.summary.clone().unwrap_or_else(|| json!({}));
    if !s.is_object() {
        s = json!({});
    }
    s[key] = value;
    s
}

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

async fn registering(
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
    record_intent(deps, row, lease, "register").await?;
    let call = lease.irreversible("register")?;
    let result = deps.meta.register(&pnid, &pin).await;
    call.finish(&result);
    crash_point(deps, "after_register")?;
    match result {
        Ok(()) => Ok(registered(deps, row, &pnid).await),
        Err(e) => Ok(StepResult::new(outcome(&e, state))),
    }
}

fn key(t: &Template) -> (String, String) {
    (t.name.clone(), t.language.clone())
}

const TEMPLATE_PAGE: usize = 500;

async fn copying_templates(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::CopyingTemplates;
    let (source, dest) = match tokio::try_join!(
        deps.meta.list_templates(&row.source_waba_id),
        deps.meta.list_templates(&row.destination_waba_id)
    ) {
        Ok(v) => v,
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let eligible: Vec<&Template> = source
        .iter()
        .filter(|t| precheck::template_eligible(t))
        .collect();
    let present: HashSet<(String, String)> = dest.iter().map(key).collect();
    let missing: Vec<String> = eligible
        .iter()
        .filter(|t| !present.contains(&key(t)))
        .map(|t| t.id.clone())
        .collect();

    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut refusal: Option<MigrationError> = None;
    // Meta refused with 2388019: what is still missing did not fit the destination.
    let mut limit_reached = false;
    let mut dest_after = dest;
    if !missing.is_empty() {
        // First attempt copies page by page; later attempts retry only the missing ids.
        let first = row.step_memo.get("templates_copied").is_none();
        let calls: Vec<(u32, Option<Vec<String>>)> = if first {
            let pages = source.len().div_ceil(TEMPLATE_PAGE).max(1);
            (0..pages as u32).map(|p| (p, None)).collect()
        } else {
            missing
                .chunks(TEMPLATE_PAGE)
                .map(|c| (0, Some(c.to_vec())))
                .collect()
        };
        let mut queue: std::collections::VecDeque<(u32, Option<Vec<String>>)> = calls.into();
        // Once the pages are done, eligible templates that are neither in the destination nor
        // refused with a reason are retried by id, once.
        let mut retried_missing = !first;
        loop {
            let mut stop = false;
            while let Some((page, ids)) = queue.pop_front() {
                match deps
                    .meta
                    .migrate_templates(
                        &row.destination_waba_id,
                        &row.source_waba_id,
                        page,
                        ids.as_deref(),
                    )
                    .await
                {
                    Ok(r) => failed.extend(r.failed_templates),
                    Err(e) if e.upstream().is_some_and(|u| u.has_code(2388019)) => {
                        refusal = Some(
                            MigrationError::new(ErrorCode::TemplateLimitReached, state)
                                .with_upstream(e.upstream().cloned()),
                        );
                        limit_reached = true;
                        stop = true;
                        break;
                    }
                    Err(e) if e.is_retryable() => {
                        let memo = {
                            let mut m = row.step_memo.clone();
                            m["templates_copied"] = json!(true);
                            m
                        };
                        return Ok(
                            StepResult::new(outcome(&e, state)).with(|p| p.step_memo = Some(memo))
                        );
                    }
                    Err(e) => {
                        if let StepOutcome::Failed(err) = outcome(&e, state) {
                            refusal = Some(err);
                        }
                        let reason = e
                            .upstream()
                            .map(|u| u.message.clone())
                            .unwrap_or_else(|| e.to_string());
                        for id in &missing {
                            failed.entry(id.clone()).or_insert_with(|| reason.clone());
                        }
                        stop = true;
                        break;
                    }
                }
            }
            dest_after = match deps.meta.list_templates(&row.destination_waba_id).await {
                Ok(d) => d,
                Err(e) => return Ok(StepResult::new(outcome(&e, state))),
            };
            if stop || refusal.is_some() || retried_missing {
                break;
            }
            retried_missing = true;
            let present_now: HashSet<(String, String)> = dest_after.iter().map(key).collect();
            let still: Vec<String> = eligible
                .iter()
                .filter(|t| !present_now.contains(&key(t)) && !failed.contains_key(&t.id))
                .map(|t| t.id.clone())
                .collect();
            if still.is_empty() {
                break;
            }
            queue.extend(still.chunks(TEMPLATE_PAGE).map(|c| (0, Some(c.to_vec()))));
        }
    }

    let by_key: BTreeMap<(String, String), &Template> =
        dest_after.iter().map(|t| (key(t), t)).collect();
    let mut report = TemplatesReport {
        eligible: eligible.len(),
        error: refusal,
        ..Default::default()
    };
    for t in &eligible {
        match by_key.get(&key(t)) {
            Some(d) => report.migrated.push(MigratedTemplate {
                name: t.name.clone(),
                language: t.language.clone(),
                id: d.id.clone(),
            }),
            None if limit_reached && !failed.contains_key(&t.id) => {
                report.skipped.push(SkippedTemplate {
                    name: t.name.clone(),
                    language: t.language.clone(),
                    reason: "destination template limit reached".into(),
                })
            }
            None => {
                let reason = failed
                    .get(&t.id)
                    .cloned()
                    .unwrap_or_else(|| "Not present in the destination after migration".into());
                report.failed.insert(t.id.clone(), reason);
            }
        }
    }
    for t in source.iter().filter(|t| !precheck::template_eligible(t)) {
        let reason = if !t.status.eq_ignore_ascii_case("APPROVED") {
            format!("status {}", t.status)
        } else {
            format!(
                "quality {}",
                t.quality_score.as_deref().unwrap_or("unknown")
            )
        };
        report.skipped.push(SkippedTemplate {
            name: t.name.clone(),
            language: t.language.clone(),
            reason,
        });
    }
    report.status = if report.failed.is_empty() && !limit_reached {
        "completed".into()
    } else {
        "partial".into()
    };
    let data = json!({
        "templates_migrated": report.migrated.len(),
        "templates_failed": report.failed.len(),
    });
    let memo = without(&row.step_memo, "templates_copied");
    Ok(StepResult::done()
        .with(|p| {
            p.templates = Some(json!(report));
            p.step_memo = Some(memo);
        })
        .data(data))
}

async fn partner_credentials(deps: &Deps, partner_id: Uuid) -> Result<PartnerCredentials> {
    let partner = db::partners::get(&deps.pool, partner_id).await?;
    let api_key = deps
        .cipher
        .open(&partner.d360_api_key_enc, &aad::partner_key(partner_id))
        .map_err(|_| StepError::Corrupt("the partner's 360dialog key cannot be decrypted"))?;
    Ok(PartnerCredentials {
        partner_id: partner.d360_partner_id,
        api_key,
    })
}

async fn awaiting_channel(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::AwaitingChannel;
    let creds = partner_credentials(deps, row.partner_id).await?;
    let polls = row
        .step_memo
        .get("channel_polls")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let next_memo = {
        let mut m = row.step_memo.clone();
        m["channel_polls"] = json!(polls + 1);
        m
    };
    let after = deps
        .config
        .channel_poll
        .saturating_mul(1u32 << polls.min(5))
        .min(Duration::from_secs(60));
    let found = match &row.channel_id {
        Some(cid) => {
            deps.d360
                .get_channel(&creds, cid, Some(&row.phone_number))
                .await
        }
        None => {
            deps.d360
                .find_channel_by_number(&creds, &row.phone_number)
                .await
        }
    };
    let channel = match found {
        Ok(c) => c,
        Err(e) => {
            return Ok(StepResult::new(outcome(&e, state)));
        }
    };
    let not_yet = |why: MigrationError| {
        StepResult::new(StepOutcome::NotYet {
            after,
            waiting_for: Some(why),
        })
    };
    let Some(channel) = channel else {
        return Ok(not_yet(
            MigrationError::new(ErrorCode::ChannelTimeout, state)
                .with_message("360dialog does not list a channel for this number yet."),
        )
        .with(|p| p.step_memo = Some(next_memo)));
    };
    let status = channel.status.clone().unwrap_or_default();
    let channel_id = channel.id.clone();
    let client_id = channel.client_id.clone();
    if !status.eq_ignore_ascii_case("running") {
        return Ok(not_yet(
            MigrationError::new(ErrorCode::ChannelNotRunning, state).with_message(format!(
                "The 360dialog channel {channel_id} is `{status}`, not `running`."
            )),
        )
        .with(|p| {
            p.step_memo = Some(next_memo);
            p.channel_id = Some(channel_id.clone());
            p.d360_client_id = client_id.clone();
        }));
    }
    if let Some(client) = &client_id {
        match deps
            .d360
            .has_api_key_permission(&creds, client, &channel_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Ok(not_yet(MigrationError::new(
                    ErrorCode::ApiKeyPermissionMissing,
                    state,
                ))
                .with(|p| {
                    p.step_memo = Some(next_memo);
                    p.channel_id = Some(channel_id.clone());
                    p.d360_client_id = client_id.clone();
                }));
            }
            Err(e) => return Ok(StepResult::new(outcome(&e, state))),
        }
    }
    let memo = without(&row.step_memo, "channel_polls");
    Ok(StepResult::done()
        .with(|p| {
            p.channel_id = Some(channel_id.clone());
            p.d360_client_id = client_id.clone();
            p.step_memo = Some(memo);
        })
        .data(json!({ "channel_id": channel_id })))
}

async fn generating_api_key(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::GeneratingApiKey;
    let Some(channel_id) = row.channel_id.clone() else {
        return Ok(StepResult::new(StepOutcome::Failed(
            MigrationError::new(ErrorCode::ChannelTimeout, state)
                .with_message("No 360dialog channel is known for this number."),
        )));
    };
    let mut saved_row = None;
    // A rotation marked the key held superseded: a new one is generated in its place.
    let replaces = row
        .api_key_superseded_at
        .and(row.api_key_id.clone())
        .filter(|_| row.api_key_enc.is_some());
    let key: SecretString = match &row.api_key_enc {
        Some(enc) if row.api_key_superseded_at.is_none() => deps
            .cipher
            .open(enc, &aad::api_key(row.id))
            .map_err(|_| StepError::Corrupt("the stored API key cannot be decrypted"))?,
        _ => {
            // One live key per number: never revoke a key another completed migration of this
            // number holds while 360dialog still accepts it.
            match live_key_holder(
                &deps.pool,
                &deps.cipher,
                deps.d360.as_ref(),
                &row.phone_number,
                Some(&channel_id),
                Some(row.id),
                None,
            )
            .await?
            {
                LiveKey::None => {}
                LiveKey::Live(holder) => {
                    let whose = if holder.partner_id == row.partner_id {
                        format!("migration {}", holder.id)
                    } else {
                        "a migration of another partner".to_owned()
                    };
                    return Ok(StepResult::new(StepOutcome::Failed(
                        MigrationError::new(ErrorCode::NumberAlreadyMigrated, state).with_message(
                            format!(
                                "The number was already migrated: {whose} completed and 360dialog still accepts its API key for channel {channel_id}. No key was generated, so that key keeps working."
                            ),
                        ),
                    )));
                }
                LiveKey::Unknown(_) => {
                    let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, state)
                        .with_message(
                            "Could not confirm with 360dialog that the API key of an earlier migration of this number no longer works; no key was generated.",
                        );
                    error.actor = crate::domain::Actor::None;
                    return Ok(StepResult::new(StepOutcome::Transient {
                        error,
                        retry_after: None,
                    }));
                }
            }
            let creds = partner_credentials(deps, row.partner_id).await?;
            if memo(row, "api_keys").is_some() {
                info!(
                    "api_keys intent without a stored key: the earlier response was lost; generating again"
                );
            }
            let memo_after = record_intent(deps, row, lease, "api_keys").await?;
            let call = lease.irreversible("api_keys")?;
            let result = deps.d360.generate_api_key(&creds, &channel_id).await;
            call.finish(&result);
            let generated = match result {
                Ok(k) => k,
                Err(e) => {
                    let o = outcome(&e, state);
                    // Refused for sure (4xx): no key exists, forget the intent.
                    let memo = if e.maybe_applied() {
                        memo_after
                    } else {
                        without(&memo_after, "api_keys")
                    };
                    return Ok(StepResult::new(o).with(|p| p.step_memo = Some(memo)));
                }
            };
            crash_point(deps, "after_api_keys")?;
            // Persist the key before anything else can go wrong.
            let sealed = deps
                .cipher
                .seal(generated.api_key.expose_secret(), &aad::api_key(row.id));
            let mut conn = deps.pool.acquire().await.map_err(db::Error::from)?;
            let saved = crate::core::transition::apply(
                &mut conn,
                row,
                &store::Guard {
                    lease_token: Some(lease.token()),
                    ..Default::default()
                },
                &store::Patch {
                    api_key_enc: Some(sealed),
                    api_key_id: Some(generated.id.clone()),
                    api_key_address: Some(generated.address.clone()),
                    api_key_generated_at: Some(Utc::now()),
                    api_key_verified_at: Some(None),
                    api_key_superseded_at: Some(None),
                    step_memo: Some(without(&memo_after, "api_keys")),
                    ..Default::default()
                },
                store::Lease::Keep,
                Some(db::events::NewEvent {
                    kind: EventType::ApiKeyGenerated,
                    from_state: Some(state.as_str().into()),
                    to_state: Some(state.as_str().into()),
                    data: match &replaces {
                        Some(old) => {
                            json!({ "api_key_id": generated.id, "replaces_api_key_id": old })
                        }
                        None => json!({ "api_key_id": generated.id }),
                    },
                }),
            )
            .await?;
            let Some(saved) = saved else {
                return Err(StepError::Abandon);
            };
            saved_row = Some(Box::new(saved));
            generated.api_key
        }
    };
    let mut result = match deps.d360.health_status(&key).await {
        Ok(h) => {
            let summary = summary_with(row, "can_send_message", json!(h.can_send_message));
            StepResult::done()
                .with(|p| {
                    p.api_key_verified_at = Some(Some(Utc::now()));
                    p.summary = Some(summary);
                })
                .data(json!({ "can_send_message": h.can_send_message }))
        }
        Err(e) => StepResult::new(outcome(&e, state)),
    };
    result.row = saved_row;
    Ok(result)
}
