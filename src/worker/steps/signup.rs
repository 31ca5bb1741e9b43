//! `awaiting_signup`: waits for the client to finish 360dialog's Embedded Signup, seen as a
//! 360dialog channel for the number on the partner's account (or the channel the partner named
//! with `PATCH /v1/migrations/{id}`). Polled with a doubling delay from `CHANNEL_POLL_MS` up to
//! `SIGNUP_POLL_MAX_SECONDS`, each poll a short claim; `decide` fails it at its deadline. Once
//! the channel is listed, the destination checks of the precheck are made again against the
//! WABA the number is in now: a check a new WABA may still fail (not approved, no payment
//! method, no subscribed app) is waited for, looked at every `SIGNUP_SETUP_POLL_SECONDS`; any
//! other failure fails the migration.

use serde_json::{Value, json};

use super::precheck::{checks, failure, settles};
use super::{
    Result, StepResult, adopt, channel_of, foreign_channel, foreign_waba, partner_credentials,
    signup_waba,
};
use crate::clients::UpstreamError;
use crate::db::migrations as store;
use crate::domain::memo::MemoKey;
use crate::domain::values::E164;
use crate::domain::{ErrorCode, MigrationError, MigrationState, StepOutcome};
use crate::precheck::{PrecheckReport, Signup};
use crate::worker::Deps;
use crate::worker::errors::{StepError, outcome};

pub(super) async fn awaiting_signup(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::AwaitingSignup;
    let creds = partner_credentials(deps, row.partner_id).await?;
    let polls = MemoKey::ChannelPolls
        .read(&row.step_memo)
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let after = deps
        .config
        .channel_poll
        .saturating_mul(1u32 << polls.min(20))
        .min(deps.config.signup_poll_max);
    let found = channel_of(deps, &creds, row).await;
    let channel = match found {
        Ok(c) => c,
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let Some(channel) = channel else {
        let mut reason = MigrationError::new(ErrorCode::SignupNotCompleted, state);
        if let Some(cid) = &row.channel_id {
            reason.message = format!(
                "360dialog does not list the channel {cid} for this number on the partner's account (yet): the client has not finished Embedded Signup, or the channel id is not this number's."
            );
        }
        return Ok(StepResult::new(StepOutcome::NotYet {
            after,
            waiting_for: Some(reason),
        })
        .remember(MemoKey::ChannelPolls, json!(polls + 1)));
    };
    if let Some(waba) = foreign_waba(row, &channel) {
        let reason = foreign_channel(row, &channel, waba, state, ErrorCode::SignupNotCompleted);
        return Ok(StepResult::new(StepOutcome::NotYet {
            after,
            waiting_for: Some(reason),
        })
        .remember(MemoKey::ChannelPolls, json!(polls + 1)));
    }
    // The signup is done; whether the channel runs and a key may be made for it is
    // `awaiting_channel`'s to find out, with its own polls. The number is where the signup put
    // it, and the templates go there: the destination checks of the precheck are made again
    // against that WABA (the precheck ran before the signup, possibly on the WABA the migration
    // was created with, and days may have passed).
    let new_waba = signup_waba(row, &channel);
    let destination = new_waba.as_deref().unwrap_or(&row.destination_waba_id);
    let phone = E164::parse(&row.phone_number)
        .map_err(|_| StepError::Corrupt("the stored phone number is not valid E.164"))?;
    let fresh = match checks(deps, row, &phone, destination, Signup::Done).await {
        Ok(r) => r,
        // A WABA the signup just made that Graph cannot read yet (100/33): 360dialog shares
        // it after the signup. Waited for like a WABA not set up yet, failing at the deadline.
        Err(e)
            if new_waba.is_some()
                && e.upstream().is_some_and(UpstreamError::cannot_load_object) =>
        {
            let mut reason = MigrationError::new(ErrorCode::UpstreamAuth, state)
                .with_upstream(e.upstream().cloned());
            reason.message = format!(
                "The Meta Graph API cannot read WhatsApp Business Account {destination}, which the client's Embedded Signup put the number in (channel {}), yet: 360dialog shares a WABA the signup made after the signup.",
                channel.id
            );
            reason.remediation = "Nothing while it waits; if it fails, check in 360dialog's hub that the channel's WABA is shared with the partner's app (or the system user of META_ACCESS_TOKEN), then retry.".into();
            return Ok(StepResult::new(StepOutcome::NotYet {
                after: setup_poll(deps.config.setup_poll),
                waiting_for: Some(reason),
            }));
        }
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let first = row
        .precheck
        .clone()
        .and_then(|v| serde_json::from_value::<PrecheckReport>(v).ok())
        .unwrap_or_else(PrecheckReport::empty);
    let report = first.with_destination(fresh);
    let on = format!(
        "WhatsApp Business Account {destination} that the client's Embedded Signup put the number in (channel {})",
        channel.id
    );
    // A check that fails for good (another business): fail before any template is copied.
    // Neither the channel nor its WABA is stored: the fix is another signup, into the business
    // the migration names, and a new migration.
    if let Some(mut error) = failure(&report, state, |c| !settles(c)) {
        error.message = format!("Checked again on the {on}: {}", error.message);
        return Ok(StepResult::new(StepOutcome::Failed(error))
            .with(|p| p.precheck = Some(json!(report)))
            .forget(MemoKey::ChannelPolls)
            .data(json!({
                "channel_id": channel.id,
                "signup_waba_id": destination,
                "precheck_status": report.status,
            })));
    }
    // A WABA the signup just made may not be set up yet: wait for it, looking every
    // `SIGNUP_SETUP_POLL_SECONDS` (each look is the precheck's Graph reads, which Meta's
    // per-WABA quota counts), up to the signup's deadline, and fail with the check's code
    // there. The report shows the check as it fails now.
    if let Some(mut reason) = failure(&report, state, settles) {
        reason.message = format!(
            "The {on} is not ready for the templates: {} 360dialog sets up a WABA the signup made after the signup.",
            reason.message
        );
        return Ok(StepResult::new(StepOutcome::NotYet {
            after: setup_poll(deps.config.setup_poll),
            waiting_for: Some(reason),
        })
        .with(|p| p.precheck = Some(json!(report))));
    }
    let mut data = json!({
        "channel_id": channel.id,
        "channel_status": channel.status,
        "precheck_status": report.status,
    });
    adopt(row, new_waba.as_deref(), &mut data);
    let pnid = report.destination_phone_number_id.clone();
    Ok(StepResult::done()
        .channel(row, &channel)
        .with(|p| {
            p.destination_waba_id = new_waba;
            p.precheck = Some(json!(report));
            if pnid.is_some() {
                p.phone_number_id = pnid;
            }
        })
        .forget(MemoKey::ChannelPolls)
        .data(data))
}

/// The delay before the next look at a WABA being set up: `base` ± 10 %, so the looks of
/// migrations that found their WABAs together (a batch, with one source WABA whose reads they
/// share) spread out.
fn setup_poll(base: std::time::Duration) -> std::time::Duration {
    base.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}
