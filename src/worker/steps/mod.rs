//! One executor per state: the upstream calls of that step and what to persist, one file per
//! step (`precheck`, `signup`, `otp`, `register`, `templates`, `channel`, `api_key`); this module holds
//! what they share: the result type, intents, and reading the number.
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
//! An intent may also be *armed* by the transition into the step, when the worker goes on with
//! the migration at once (see [`crate::domain::memo`]): committed before the call like a
//! recorded one, with no statement of its own. The worker forgets an armed intent whose step
//! ended without calling, and turns it into a recorded one when the step called.
//!
//! The lease is checked before every intent write and again right before every irreversible
//! call ([`StepLease::may_start`], [`StepLease::irreversible`]): a step whose lease is lost stops
//! without calling upstream, and once the worker is stopping no new intent is written (the step
//! hands the migration over untouched). The call itself runs inside an
//! [`IrreversibleCall`](super::lease::IrreversibleCall) guard, which keeps a stopping worker
//! from releasing the lease while the call is in flight.

mod api_key;
mod channel;
pub(super) mod otp;
mod precheck;
mod register;
mod signup;
mod templates;

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::warn;
use uuid::Uuid;

use super::Deps;
use super::errors::StepError;
use super::lease::StepLease;
use crate::clients::{self, PartnerCredentials};
use crate::crypto::aad;
use crate::db::{self, migrations as store};
use crate::domain::memo::{Intent, MemoEdits, MemoKey};
use crate::domain::{ErrorCode, Flow, MigrationError, MigrationState, StepOutcome};

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
    pub fn new(outcome: StepOutcome) -> Self {
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

    /// Sets one memo key with the result (other keys are left as they are).
    fn remember(mut self, key: MemoKey, value: Value) -> Self {
        self.patch.memo = std::mem::take(&mut self.patch.memo).set(key, value);
        self
    }

    /// Removes one memo key with the result (an intent whose call is settled).
    fn forget(mut self, key: MemoKey) -> Self {
        self.patch.memo = std::mem::take(&mut self.patch.memo).remove(key);
        self
    }

    /// Stores the channel a lookup found as the migration's (with its 360dialog client). When
    /// the migration did not name it, the memo says the service found it by the number.
    fn channel(self, row: &store::MigrationRow, channel: &clients::Channel) -> Self {
        let id = channel.id.clone();
        let client_id = channel.client_id.clone();
        let found = (!channel_named(row)).then(|| id.clone());
        let step = self.with(|p| {
            p.channel_id = Some(id);
            p.d360_client_id = client_id;
        });
        match found {
            Some(id) => step.remember(MemoKey::ChannelFound, json!(id)),
            None => step,
        }
    }

    /// Our own data is unusable: fail visibly with `internal_error`.
    pub fn corrupt(state: MigrationState, what: &str) -> Self {
        Self::new(StepOutcome::Failed(
            MigrationError::new(ErrorCode::InternalError, state)
                .with_message(format!("An internal error stopped this step: {what}.")),
        ))
    }

    /// A step that panicked: retried like a transient failure, then failed. The panic's text
    /// (which may quote anything) goes to the log only, not to the events partners read.
    pub fn internal_error(state: MigrationState) -> Self {
        let mut error = MigrationError::new(ErrorCode::UpstreamUnavailable, state)
            .with_message("An internal error interrupted this step.");
        error.actor = crate::domain::Actor::None;
        Self::new(StepOutcome::Transient {
            error,
            retry_after: None,
        })
        .data(json!({ "internal": "the step panicked (the service log has the details)" }))
    }
}

type Result<T> = std::result::Result<T, StepError>;

/// Writes `patch` (and `event`) while this step still holds its lease; a lost lease abandons
/// the step. Returns the row as written.
async fn save_under_lease(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
    patch: &store::Patch,
    event: Option<db::events::NewEvent>,
) -> Result<store::MigrationRow> {
    let mut conn = deps.pool.acquire().await.map_err(db::Error::from)?;
    let guard = store::Guard {
        lease_token: Some(lease.token()),
        ..Default::default()
    };
    crate::core::transition::apply(&mut conn, row, &guard, patch, store::Lease::Keep, event)
        .await?
        .ok_or(StepError::Abandon)
}

/// Makes sure an intent is committed in `step_memo` before a non-idempotent call, and that the
/// lease is still held and the worker not stopping. An intent this claim armed (the claim
/// itself, or its transition into the step) is that already; otherwise (the step runs again
/// under the same lease after settling it) it is recorded now, guarded by the lease (only this
/// key is written).
async fn record_intent(
    deps: &Deps,
    row: &store::MigrationRow,
    lease: &StepLease,
    key: MemoKey,
) -> Result<()> {
    debug_assert!(key.is_intent(), "{key:?} is not an intent");
    lease.may_start()?;
    if key.intent(&row.step_memo, lease.token()) == Intent::Armed {
        return Ok(());
    }
    let patch = store::Patch {
        memo: MemoEdits::default().set(key, MemoKey::recorded(Utc::now())),
        ..Default::default()
    };
    save_under_lease(deps, row, lease, &patch, None).await?;
    Ok(())
}

/// Whether an earlier claim's call of this step may have been sent: its intent is recorded, or
/// armed by another claim.
fn earlier_call_may_be_sent(row: &store::MigrationRow, lease: &StepLease, key: MemoKey) -> bool {
    key.intent(&row.step_memo, lease.token()) == Intent::Recorded
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
    // Tests: a bug that panics, with a text that must not reach the migration's events.
    if deps.fail_points.hit("panic_in_step") {
        panic!("injected panic quoting an upstream body: EAAG-secret-token");
    }
    match state {
        Queued => Ok(StepResult::done()),
        Prechecking => precheck::prechecking(deps, row).await,
        AwaitingSignup => signup::awaiting_signup(deps, row).await,
        Initiating => precheck::initiating(deps, row).await,
        RequestingOtp => otp::requesting_otp(deps, row, lease).await,
        AwaitingOtp => Ok(otp::awaiting_otp(deps, row)),
        VerifyingOtp => otp::verifying_otp(deps, row, lease).await,
        Registering => register::registering(deps, row, lease).await,
        CopyingTemplates => templates::copying_templates(deps, row).await,
        AwaitingChannel => channel::awaiting_channel(deps, row).await,
        GeneratingApiKey => api_key::generating_api_key(deps, row, lease).await,
        Completed | Failed | Cancelled => Ok(StepResult::new(StepOutcome::NotYet {
            after: Duration::from_secs(3600),
            waiting_for: None,
        })),
    }
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

/// `summary` with `key` set to `value` (other keys kept).
fn summary_with(row: &store::MigrationRow, key: &str, value: Value) -> Value {
    let mut s = row.summary.clone().unwrap_or_else(|| json!({}));
    if !s.is_object() {
        s = json!({});
    }
    s[key] = value;
    s
}

/// Whether the channel 360dialog shows is the migration's ([`clients::Channel::foreign_waba`]).
fn foreign_waba<'c>(row: &store::MigrationRow, channel: &'c clients::Channel) -> Option<&'c str> {
    channel.foreign_waba(row.flow(), &row.source_waba_id, &row.destination_waba_id)
}

/// The WABA an Embedded Signup migration takes as its destination: the one its client's signup
/// put the number in, shown on `channel`, when that is not `destination_waba_id` (360dialog's
/// guide has the client create a new WABA in the signup).
fn signup_waba(row: &store::MigrationRow, channel: &clients::Channel) -> Option<String> {
    let waba = channel.waba()?;
    let signup = row.flow() == Flow::EmbeddedSignup;
    (signup && waba != row.destination_waba_id.trim() && foreign_waba(row, channel).is_none())
        .then(|| waba.to_owned())
}

/// Logs the destination an Embedded Signup migration takes (`new_waba`, from [`signup_waba`])
/// and records it, with the one it replaces, in the event data.
fn adopt(row: &store::MigrationRow, new_waba: Option<&str>, data: &mut Value) {
    let Some(waba) = new_waba else {
        return;
    };
    tracing::info!(
        destination_waba_id = %waba,
        previous = %row.destination_waba_id,
        "the client's Embedded Signup put the number in another WABA: it is the destination now"
    );
    data["destination_waba_id"] = json!(waba);
    data["previous_destination_waba_id"] = json!(row.destination_waba_id);
}

/// Whether the partner named the migration's channel (`channel_id` at create or with `PATCH`),
/// as opposed to the service storing one it found by the number ([`MemoKey::ChannelFound`]).
/// Only an Embedded Signup migration can name one.
fn channel_named(row: &store::MigrationRow) -> bool {
    let Some(cid) = &row.channel_id else {
        return false;
    };
    row.flow() == Flow::EmbeddedSignup
        && MemoKey::ChannelFound
            .read(&row.step_memo)
            .and_then(Value::as_str)
            != Some(cid.as_str())
}

/// Why the channel 360dialog shows, on the WABA `waba`, is not the migration's. A channel the
/// partner named is `channel_waba_mismatch`; otherwise the wait goes on with `code` (the right
/// channel may not be listed yet).
fn foreign_channel(
    row: &store::MigrationRow,
    channel: &clients::Channel,
    waba: &str,
    state: MigrationState,
    code: ErrorCode,
) -> MigrationError {
    let dest = &row.destination_waba_id;
    let cid = &channel.id;
    let on = if waba == row.source_waba_id.trim() {
        format!("the source WhatsApp Business Account {waba}, which the number is leaving")
    } else {
        format!("the WhatsApp Business Account {waba}")
    };
    let signup = row.flow() == Flow::EmbeddedSignup;
    if channel_named(row) {
        MigrationError::new(ErrorCode::ChannelWabaMismatch, state).with_message(format!(
            "The 360dialog channel {cid} is this number's channel on {on}, not the one the client's Embedded Signup made."
        ))
    } else if signup {
        MigrationError::new(code, state).with_message(format!(
            "360dialog lists only this number's channel {cid}, on {on}: the client has not finished Embedded Signup yet."
        ))
    } else {
        MigrationError::new(code, state).with_message(format!(
            "360dialog lists this number's channel {cid} on {on}, and none on the destination {dest} yet."
        ))
    }
}

/// The number's 360dialog channel on the partner's account: the one the migration names, or
/// the number's (`awaiting_signup`, `awaiting_channel`). A channel id the service stored from a
/// lookup by the number is looked for again by the number when that channel shows a WABA that
/// makes it not the migration's.
async fn channel_of(
    deps: &Deps,
    creds: &PartnerCredentials,
    row: &store::MigrationRow,
) -> std::result::Result<Option<clients::Channel>, clients::Error> {
    let by_number = || {
        deps.d360.find_channel_by_number(
            creds,
            &row.phone_number,
            &row.destination_waba_id,
            &row.source_waba_id,
        )
    };
    let Some(cid) = &row.channel_id else {
        return by_number().await;
    };
    let listed = deps
        .d360
        .get_channel(creds, cid, Some(&row.phone_number))
        .await?;
    if !channel_named(row)
        && listed
            .as_ref()
            .is_some_and(|c| foreign_waba(row, c).is_some())
    {
        return by_number().await;
    }
    Ok(listed)
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
