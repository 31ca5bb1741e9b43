//! `prechecking` and `initiating`: the read-only checks, and finding the number in the
//! destination WABA.

use serde_json::json;

use super::{
    Result, StepResult, adopt, channel_named, channel_of, foreign_channel, foreign_waba,
    partner_credentials, signup_waba,
};
use crate::clients;
use crate::db::migrations as store;
use crate::domain::values::E164;
use crate::domain::{ErrorCode, Flow, MigrationError, MigrationState, StepOutcome};
use crate::precheck::{self, Signup};
use crate::worker::Deps;
use crate::worker::errors::{StepError, code_for, outcome};

pub(super) async fn prechecking(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
    let state = MigrationState::Prechecking;
    let flow = row.flow();
    let phone = match E164::parse(&row.phone_number) {
        Ok(p) => p,
        Err(e) => {
            return Ok(StepResult::new(StepOutcome::Failed(
                MigrationError::new(ErrorCode::NumberNotFoundOnSource, state)
                    .with_message(format!("Stored phone number is invalid: {e}")),
            )));
        }
    };
    let seed = |destination: &str| {
        let destination = destination.to_owned();
        async move {
            if let Some(seeder) = &deps.sandbox_seeder {
                seeder
                    .seed(
                        &row.phone_number,
                        &row.source_waba_id,
                        &destination,
                        &row.meta_business_id,
                    )
                    .await;
            }
        }
    };
    seed(&row.destination_waba_id).await;
    // An Embedded Signup migration that names its channel: the number is where the client's
    // signup put it (360dialog's guide has the client create a new WABA there), so that WABA is
    // the destination the checks and the template copy are about. Not listed yet, the channel
    // is waited for in `awaiting_signup`, which takes its WABA when it appears.
    let mut new_waba = None;
    let mut named_listed = false;
    if flow == Flow::EmbeddedSignup && row.channel_id.is_some() {
        let creds = partner_credentials(deps, row.partner_id).await?;
        match channel_of(deps, &creds, row).await {
            Ok(Some(channel)) => {
                // The partner named the channel the number is leaving: fail before any
                // template is copied. (One the service found itself is looked for again by
                // `awaiting_channel`.)
                if let Some(waba) = foreign_waba(row, &channel)
                    && channel_named(row)
                {
                    let reason =
                        foreign_channel(row, &channel, waba, state, ErrorCode::ChannelTimeout);
                    return Ok(StepResult::new(StepOutcome::Failed(reason)));
                }
                new_waba = signup_waba(row, &channel);
                named_listed = true;
            }
            Ok(None) => {}
            Err(e) => return Ok(StepResult::new(outcome(&e, state))),
        }
    }
    if let Some(waba) = &new_waba {
        seed(waba).await;
    }
    let destination = new_waba.as_deref().unwrap_or(&row.destination_waba_id);
    let report = match checks(deps, row, &phone, destination, Signup::NotKnownDone).await {
        Ok(r) => r,
        Err(e) => return Ok(StepResult::new(outcome(&e, state))),
    };
    let report_json = json!(report);
    let mut summary = json!({ "precheck_status": report.status });
    adopt(row, new_waba.as_deref(), &mut summary);
    // A named channel's WABA that is still being set up (360dialog does that after the signup)
    // is waited for in `awaiting_signup`, like one found there.
    let settles_later = |c: &precheck::Check| named_listed && settles(c);
    if let Some(error) = failure(&report, state, |c| !settles_later(c)) {
        return Ok(StepResult::new(StepOutcome::Failed(error))
            .with(|p| {
                p.precheck = Some(report_json);
                p.destination_waba_id = new_waba;
            })
            .data(summary));
    }
    let skip_to = match (flow, report.destination_phone_number_id.is_some()) {
        (Flow::Otp, true) if report.destination_registered => {
            Some(MigrationState::CopyingTemplates)
        }
        (Flow::Otp, true) if report.destination_verified => Some(MigrationState::Registering),
        (Flow::Otp, true) => Some(MigrationState::RequestingOtp),
        // The channel it names is listed: no signup to wait for.
        (Flow::EmbeddedSignup, _) if named_listed && failure(&report, state, settles).is_none() => {
            Some(MigrationState::CopyingTemplates)
        }
        _ => None,
    };
    let pnid = report.destination_phone_number_id.clone();
    Ok(StepResult::new(StepOutcome::Done { skip_to })
        .with(|p| {
            p.precheck = Some(report_json);
            p.destination_waba_id = new_waba;
            if pnid.is_some() {
                p.phone_number_id = pnid;
            }
        })
        .data(summary))
}

/// The precheck of `row`'s number against `destination` (the Graph reads, then the pure
/// checks). `prechecking` makes it, and `awaiting_signup` makes it again once the signup is
/// done: the number is then in the WABA the checks are about, which may be a new one.
pub(super) async fn checks(
    deps: &Deps,
    row: &store::MigrationRow,
    phone: &E164,
    destination: &str,
    signup: precheck::Signup,
) -> std::result::Result<precheck::PrecheckReport, clients::Error> {
    let input =
        precheck::gather(deps.meta.as_ref(), phone, &row.source_waba_id, destination).await?;
    Ok(precheck::evaluate(
        row.flow(),
        phone,
        &row.meta_business_id,
        &input,
        signup,
    ))
}

/// The migration's error when a check of `report` that `counts` failed: the first such
/// check's code and message, naming the others when there are more.
pub(super) fn failure(
    report: &precheck::PrecheckReport,
    state: MigrationState,
    counts: impl Fn(&precheck::Check) -> bool,
) -> Option<MigrationError> {
    let failed: Vec<&precheck::Check> = report
        .checks
        .iter()
        .filter(|c| c.status == precheck::CheckStatus::Fail && counts(c))
        .collect();
    let check = failed.first()?;
    let code = check.code.unwrap_or(ErrorCode::PrecheckFailed);
    let mut error = MigrationError::new(code, state).with_message(check.message.clone());
    if failed.len() > 1 {
        let ids: Vec<&str> = failed.iter().map(|c| c.id.as_str()).collect();
        error.message = format!(
            "{} (failed checks: {}; see precheck.checks)",
            check.message,
            ids.join(", ")
        );
    }
    Some(error)
}

/// A failed check a WABA that Embedded Signup just made may pass minutes later
/// ([`ErrorCode::settles_after_signup`]).
pub(super) fn settles(check: &precheck::Check) -> bool {
    check.code.is_some_and(ErrorCode::settles_after_signup)
}

pub(super) async fn initiating(deps: &Deps, row: &store::MigrationRow) -> Result<StepResult> {
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
        Err(e)
            if e.upstream()
                .is_some_and(|u| code_for(u, state) == Some(ErrorCode::AlreadyInDestination)) =>
        {
            match find_in_waba(deps, &row.destination_waba_id, &row.phone_number).await {
                Ok(Some(id)) => Ok(StepResult::done()
                    .with(|p| p.phone_number_id = Some(id))
                    .data(json!({ "already_in_destination": true }))),
                // Meta says it is there but does not list it (yet): look again later, like
                // any transient failure, rather than fail with a code that means "continue".
                Ok(None) => Ok(StepResult::new(StepOutcome::Transient {
                    error: MigrationError::new(ErrorCode::UpstreamUnavailable, state)
                        .with_message(
                            "Meta answers that the number is already in the destination WABA, \
                             but does not list it there yet; looking again.",
                        )
                        .with_upstream(e.upstream().cloned()),
                    retry_after: None,
                })),
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
    let number = precheck::find_number(deps.meta.as_ref(), waba_id, e164).await?;
    Ok(number.map(|n| n.id))
}
