//! `waiting_for`: while a migration waits on someone (the client's code, 360dialog's channel,
//! the client's API-key permission), on whom, for what, since when, and the deadline at which
//! it fails. Written with the transition (or poll) that parks the migration, cleared by the
//! transition that leaves the state.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, ErrorCode, MigrationError, MigrationState};

/// On whom and for what a parked migration waits (`null` when it does not wait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitingFor {
    /// Why it waits, as a stable code from the error codes: in `awaiting_channel` the
    /// `error.code` it fails with at `deadline` (`channel_timeout`: no channel listed yet,
    /// `channel_not_running`, `api_key_permission_missing`); in `awaiting_signup`
    /// `signup_not_completed`, or `channel_waba_mismatch` when the channel set with `PATCH` is
    /// the number's channel on its source WABA, or, once the signup is done, the code of a
    /// destination check the WABA it put the number in does not pass yet
    /// (`destination_waba_not_approved`, `destination_no_payment_method`,
    /// `destination_no_subscribed_app`); in `awaiting_otp` `otp_not_submitted` (at
    /// `deadline` it fails with `otp_expired`).
    pub code: ErrorCode,
    /// What is missing, in words.
    pub message: String,
    /// Who must act for the migration to continue.
    pub actor: Actor,
    /// What to do; the migration continues by itself once it is done.
    pub remediation: String,
    /// When the migration began waiting in this state (kept when the reason changes).
    pub since: DateTime<Utc>,
    /// When the migration fails if it is still waiting: `otp.expires_at` in `awaiting_otp`,
    /// `since` + `CHANNEL_TIMEOUT_SECONDS` in `awaiting_channel`, `since` +
    /// `SIGNUP_TIMEOUT_SECONDS` in `awaiting_signup`.
    pub deadline: DateTime<Utc>,
}

impl WaitingFor {
    /// Waiting for `reason` (its code, message, actor and remediation) from `since` until
    /// `deadline`.
    pub fn new(reason: &MigrationError, since: DateTime<Utc>, deadline: DateTime<Utc>) -> Self {
        // As PostgreSQL keeps timestamps (a deadline equals the `otp.expires_at` it copies).
        Self {
            code: reason.code,
            message: reason.message.clone(),
            actor: reason.actor,
            remediation: reason.remediation.clone(),
            since: since.trunc_subsecs(6),
            deadline: deadline.trunc_subsecs(6),
        }
    }

    /// The reason of this wait as the error the migration fails with at its deadline: its
    /// code, message, actor and remediation, in `state`.
    pub fn reason(&self, state: MigrationState) -> MigrationError {
        let mut reason = MigrationError::new(self.code, state).with_message(self.message.clone());
        reason.actor = self.actor;
        reason.remediation = self.remediation.clone();
        reason
    }

    /// `awaiting_otp`: the client's verification code, until it expires.
    pub fn otp(since: DateTime<Utc>, expires_at: DateTime<Utc>) -> Self {
        Self::new(
            &MigrationError::new(ErrorCode::OtpNotSubmitted, MigrationState::AwaitingOtp),
            since,
            expires_at,
        )
    }

    /// `awaiting_channel` as it is entered, before the first look at 360dialog: the channel,
    /// until `timeout` from now. The first poll says precisely what is missing.
    pub fn channel(since: DateTime<Utc>, timeout: Duration) -> Self {
        let reason = MigrationError::new(ErrorCode::ChannelTimeout, MigrationState::AwaitingChannel)
            .with_message(
                "Waiting for 360dialog to list this number as a running channel with API-key permission.",
            );
        Self::new(&reason, since, after(since, timeout))
    }

    /// `awaiting_signup` as it is entered: the client's Embedded Signup (a channel for the
    /// number on the partner's 360dialog account), until `timeout` from now.
    pub fn signup(since: DateTime<Utc>, timeout: Duration) -> Self {
        let reason = MigrationError::new(
            ErrorCode::SignupNotCompleted,
            MigrationState::AwaitingSignup,
        );
        Self::new(&reason, since, after(since, timeout))
    }

    /// What a migration polling in `state` (`awaiting_signup`, `awaiting_channel`) waits for
    /// as it enters it, until `timeout` from `since`; `None` for the other states.
    pub fn polled(state: MigrationState, since: DateTime<Utc>, timeout: Duration) -> Option<Self> {
        match state {
            MigrationState::AwaitingSignup => Some(Self::signup(since, timeout)),
            MigrationState::AwaitingChannel => Some(Self::channel(since, timeout)),
            _ => None,
        }
    }

    /// After a poll of a parked migration found `reason`: the `waiting_for` to store if it
    /// differs from `stored` (`since` and `deadline` are kept from `stored`, else the ones
    /// given), and whether the code changed (worth an event and a webhook).
    pub fn after_poll(
        stored: Option<&WaitingFor>,
        reason: &MigrationError,
        since: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> (Option<WaitingFor>, bool) {
        let (since, deadline) = stored.map_or((since, deadline), |w| (w.since, w.deadline));
        let next = Self::new(reason, since, deadline);
        let code_changed = stored.map(|w| w.code) != Some(next.code);
        if stored == Some(&next) {
            (None, false)
        } else {
            (Some(next), code_changed)
        }
    }
}

/// `since` + `timeout`, or the end of time.
fn after(since: DateTime<Utc>, timeout: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|d| since.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn carries_the_reason_and_its_deadline() {
        let w = WaitingFor::otp(t(0), t(600));
        assert_eq!(w.code, ErrorCode::OtpNotSubmitted);
        assert_eq!(w.actor, Actor::Client);
        assert_eq!((w.since, w.deadline), (t(0), t(600)));
        let c = WaitingFor::channel(t(5), Duration::from_secs(3600));
        assert_eq!(c.code, ErrorCode::ChannelTimeout);
        assert_eq!(c.deadline, t(3605));
        let s = WaitingFor::signup(t(5), Duration::from_secs(7 * 86_400));
        assert_eq!(s.code, ErrorCode::SignupNotCompleted);
        assert_eq!(s.actor, Actor::Client);
        assert_eq!(s.deadline, t(5 + 7 * 86_400));
        assert_eq!(
            WaitingFor::polled(MigrationState::AwaitingSignup, t(5), Duration::from_secs(1)),
            Some(WaitingFor::signup(t(5), Duration::from_secs(1)))
        );
        assert_eq!(
            WaitingFor::polled(
                MigrationState::AwaitingChannel,
                t(5),
                Duration::from_secs(1)
            ),
            Some(WaitingFor::channel(t(5), Duration::from_secs(1)))
        );
        assert_eq!(
            WaitingFor::polled(MigrationState::Registering, t(5), Duration::from_secs(1)),
            None
        );
        let json = serde_json::to_string(&c).unwrap();
        let at = |k: &str| json.find(&format!("\"{k}\":")).unwrap();
        let order = [
            "code",
            "message",
            "actor",
            "remediation",
            "since",
            "deadline",
        ]
        .map(at);
        assert!(order.is_sorted(), "{json}");
    }

    #[test]
    fn a_poll_keeps_the_clock_and_reports_a_change_of_code() {
        let entered = WaitingFor::channel(t(0), Duration::from_secs(60));
        let permission = MigrationError::new(
            ErrorCode::ApiKeyPermissionMissing,
            MigrationState::AwaitingChannel,
        );
        let (next, changed) = WaitingFor::after_poll(Some(&entered), &permission, t(30), t(90));
        let next = next.expect("a new reason");
        assert!(changed);
        assert_eq!(next.code, ErrorCode::ApiKeyPermissionMissing);
        assert_eq!(next.actor, Actor::Client);
        assert_eq!((next.since, next.deadline), (t(0), t(60)));
        // The same reason again: nothing to write.
        assert_eq!(
            WaitingFor::after_poll(Some(&next), &permission, t(40), t(100)),
            (None, false)
        );
        // Same code, other words: written, but not a change of reason.
        let (reworded, changed) = WaitingFor::after_poll(
            Some(&next),
            &permission.clone().with_message("other words"),
            t(40),
            t(100),
        );
        assert_eq!(reworded.unwrap().message, "other words");
        assert!(!changed);
        // Nothing stored (e.g. resumed by `retry`): the clock given.
        let (fresh, changed) = WaitingFor::after_poll(None, &permission, t(40), t(100));
        assert_eq!(fresh.map(|w| (w.since, w.deadline)), Some((t(40), t(100))));
        assert!(changed);
    }
}
