//! The verification code: `requesting_otp` (irreversible: the client is texted or called),
//! `awaiting_otp` (expiry and the automatic switch to a voice call) and `verifying_otp`.

use chrono::Utc;
use serde_json::{Value, json};
use tracing::info;

use super::{
    Result, StepResult, crash_point, earlier_call_may_be_sent, is_verified, phone_number_id,
    phone_status, record_intent,
};
use crate::clients::CodeMethod;
use crate::crypto::aad;
use crate::db::migrations as store;
use crate::domain::commands::otp_window;
use crate::domain::memo::MemoKey;
use crate::domain::{ErrorCode, MigrationError, MigrationState, OtpMethod, StepOutcome};
use crate::worker::Deps;
use crate::worker::errors::outcome;
use crate::worker::lease::StepLease;

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

pub(super) async fn requesting_otp(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
) -> Result<StepResult> {
    let state = MigrationState::RequestingOtp;
    let pnid = match phone_number_id(row, state) {
        Ok(id) => id,
        Err(failed) => return Ok(*failed),
    };
    if earlier_call_may_be_sent(row, lease, MemoKey::RequestCode) {
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
    record_intent(deps, row, lease, MemoKey::RequestCode).await?;
    crash_point(deps, "before_request_code")?;
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
            // Meta's request_code error, for instance a number verified meanwhile: the read
            // above said it was not. Registering an unverified number would spend one of its
            // ten registrations in 72 h on a refusal, so it is read again first.
            let step = match phone_status(deps, &pnid).await {
                Ok(n) if is_verified(&n) => StepResult::new(StepOutcome::Done {
                    skip_to: Some(MigrationState::Registering),
                })
                .data(json!({ "otp": "already_verified" })),
                Ok(_) => StepResult::new(outcome(&e, state)),
                Err(read) => StepResult::new(outcome(&read, state)),
            };
            // Refused: no code was sent.
            Ok(step.forget(MemoKey::RequestCode))
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
            Ok(StepResult::new(outcome(&e, state)).forget(MemoKey::RequestCode))
        }
    }
}

/// When an SMS code still unanswered should be followed by a voice call, if configured and
/// not done yet.
pub(crate) fn voice_fallback_at(
    otp: &crate::core::OtpPolicy,
    method: &str,
    requested_at: Option<chrono::DateTime<Utc>>,
    memo: &Value,
) -> Option<chrono::DateTime<Utc>> {
    let delay = otp.voice_fallback?;
    if method != OtpMethod::Sms.as_str() || MemoKey::VoiceFallback.read(memo).is_some() {
        return None;
    }
    Some(requested_at? + chrono::Duration::from_std(delay).ok()?)
}

/// When a parked `awaiting_otp` row should be looked at: its deadline, or the automatic switch
/// to a voice call if that comes first.
pub(crate) fn awaiting_otp_due(
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

pub(super) fn awaiting_otp(deps: &Deps, row: &store::MigrationRow) -> StepResult {
    let now = Utc::now();
    let expires = match otp_window(now, row.otp_expires_at) {
        Ok(t) => t,
        Err(expired) => {
            return StepResult::new(StepOutcome::Failed(*expired))
                .with(|p| p.otp_code_enc = Some(None));
        }
    };
    let fallback = voice_fallback_at(
        &deps.config.otp,
        &row.otp_method,
        row.otp_requested_at,
        &row.step_memo,
    );
    if fallback.is_some_and(|t| t <= now) {
        // No code arrived by SMS in time: call the client instead (once).
        return StepResult::new(StepOutcome::Done {
            skip_to: Some(MigrationState::RequestingOtp),
        })
        .with(|p| p.otp_method = Some(OtpMethod::Voice.as_str().into()))
        .forget(MemoKey::RequestCode)
        .remember(MemoKey::VoiceFallback, json!(now))
        .data(json!({ "otp": "switching_to_voice" }));
    }
    let due = fallback.filter(|t| *t < expires).unwrap_or(expires);
    StepResult::new(StepOutcome::NotYet {
        after: (due - now).to_std().unwrap_or_default(),
        waiting_for: None,
    })
}

pub(super) async fn verifying_otp(
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
            return Ok(StepResult::done()
                .with(|p| p.otp_code_enc = Some(None))
                .forget(MemoKey::VerifyCode));
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
    record_intent(deps, row, lease, MemoKey::VerifyCode).await?;
    let call = lease.irreversible("verify_code")?;
    let result = deps.meta.verify_code(&pnid, &code).await;
    call.finish(&result);
    match result {
        Ok(()) => Ok(StepResult::done()
            .with(|p| p.otp_code_enc = Some(None))
            .forget(MemoKey::VerifyCode)),
        Err(e) if e.upstream().is_some_and(|u| u.has_code(136025)) => {
            let upstream = e.upstream().cloned();
            Ok(StepResult::new(StepOutcome::OtpRejected(
                MigrationError::new(ErrorCode::OtpInvalid, state).with_upstream(upstream),
            ))
            .with(|p| p.otp_code_enc = Some(None))
            .forget(MemoKey::VerifyCode))
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
