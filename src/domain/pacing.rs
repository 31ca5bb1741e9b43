//! Batch pacing (README "Moving a portfolio"): at most `max_in_flight` of a batch's migrations
//! are past `queued` and before `awaiting_otp` at once, and Meta's throttling of one of them
//! pauses that batch only. The rules here are pure; the admission step that applies them is
//! `db::batches::admit`.
//!
//! A migration of a batch that enters a paced state from outside ([`held_on_entry`]) is
//! *held*: it keeps its state but is not runnable until an admission gives it a slot.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::upstream::Service;
use super::{MigrationError, MigrationState};

/// The states a batch's migration can hold a slot in: `queued` once admitted, and the steps
/// before the code is awaited. Parked states (`awaiting_signup`, `awaiting_otp`,
/// `awaiting_channel`) and everything after `awaiting_otp` are not paced.
pub const PACED: [MigrationState; 4] = [
    MigrationState::Queued,
    MigrationState::Prechecking,
    MigrationState::Initiating,
    MigrationState::RequestingOtp,
];

/// Whether a migration in `state` is subject to its batch's pacing.
pub fn is_paced(state: MigrationState) -> bool {
    PACED.contains(&state)
}

/// Whether a batch's migration moving `from` → `to` must wait for a slot: it enters a paced
/// state from one that is not (a retry of a failed one, a resend of the code, the voice
/// fallback). A move within the paced states keeps the slot it has.
pub fn held_on_entry(from: MigrationState, to: MigrationState) -> bool {
    is_paced(to) && !is_paced(from)
}

/// Whether a batch's migration moving `from` → `to` gives its slot back.
pub fn frees_slot(from: MigrationState, to: MigrationState) -> bool {
    is_paced(from) && !is_paced(to)
}

/// Whether a step's error is Meta throttling (a Graph rate-limit code, or HTTP 429 from
/// Meta): the batch of the migration pauses its admissions.
pub fn is_throttling(error: &MigrationError) -> bool {
    error
        .upstream
        .as_ref()
        .is_some_and(|u| u.service == Service::Meta && u.is_throttling())
}

/// Where a batch's migration stands with its batch's pacing (`batch_slot`; `null` for a
/// single migration, and outside the paced states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchSlot {
    /// Held: it starts (or resumes) once fewer than `max_in_flight` of its batch's migrations
    /// hold a slot and the batch is not paused by Meta's throttling.
    Waiting,
    /// It holds one of its batch's `max_in_flight` slots.
    Taken,
}

impl BatchSlot {
    /// The slot of a migration in `state`, of a batch or not, held or not.
    pub fn of(in_batch: bool, state: MigrationState, held: bool) -> Option<Self> {
        (in_batch && is_paced(state)).then_some(if held {
            BatchSlot::Waiting
        } else {
            BatchSlot::Taken
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorCode;
    use crate::domain::upstream::UpstreamError;
    use MigrationState::*;

    #[test]
    fn only_entries_from_outside_are_held() {
        assert!(held_on_entry(Failed, Prechecking));
        assert!(held_on_entry(Failed, RequestingOtp));
        assert!(held_on_entry(AwaitingOtp, RequestingOtp));
        assert!(!held_on_entry(Queued, Prechecking));
        assert!(!held_on_entry(Prechecking, Initiating));
        assert!(!held_on_entry(Initiating, RequestingOtp));
        assert!(!held_on_entry(Failed, Registering));
        assert!(!held_on_entry(Completed, GeneratingApiKey));
    }

    #[test]
    fn parked_and_later_states_free_the_slot() {
        for to in [
            AwaitingOtp,
            AwaitingSignup,
            CopyingTemplates,
            Registering,
            Failed,
            Cancelled,
        ] {
            assert!(frees_slot(Prechecking, to), "{to}");
        }
        assert!(frees_slot(RequestingOtp, AwaitingOtp));
        assert!(!frees_slot(Queued, Prechecking));
        assert!(!frees_slot(AwaitingOtp, VerifyingOtp));
    }

    fn meta(http_status: u16, code: i64) -> MigrationError {
        MigrationError::new(ErrorCode::UpstreamUnavailable, Initiating).with_upstream(Some(
            UpstreamError {
                service: Service::Meta,
                http_status: Some(http_status),
                code: Some(code),
                subcode: None,
                fbtrace_id: None,
                message: "x".into(),
                is_transient: Some(true),
            },
        ))
    }

    #[test]
    fn throttling_is_meta_rate_limiting_only() {
        assert!(is_throttling(&meta(400, 80008)));
        assert!(is_throttling(&meta(429, 1)));
        assert!(is_throttling(&meta(400, 130429)));
        assert!(!is_throttling(&meta(500, 2)));
        let mut d360 = meta(429, 0);
        d360.upstream.as_mut().unwrap().service = Service::D360Partner;
        assert!(!is_throttling(&d360));
        assert!(!is_throttling(&MigrationError::new(
            ErrorCode::UpstreamUnavailable,
            Initiating
        )));
    }

    #[test]
    fn slot_is_shown_for_batch_migrations_in_paced_states() {
        assert_eq!(BatchSlot::of(true, Queued, true), Some(BatchSlot::Waiting));
        assert_eq!(
            BatchSlot::of(true, Initiating, false),
            Some(BatchSlot::Taken)
        );
        assert_eq!(BatchSlot::of(true, AwaitingOtp, false), None);
        assert_eq!(BatchSlot::of(false, Queued, false), None);
    }
}
