//! The types of a migration's audit events (`GET /v1/migrations/{id}/events`), which are also
//! the types of its webhooks: one list, used by every writer of events, by the webhook outbox
//! and by the API schema, so they cannot drift apart.
//!
//! A transition (a change of state) has **one** type everywhere: [`EventType::for_transition`]
//! of the state it enters. Its audit event and its webhook carry that same type.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use super::MigrationState;

/// The type of an audit event (the `type` column of `migration_events`, stored as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `migration.created`
    Created,
    /// `migration.state_changed`
    StateChanged,
    /// `migration.awaiting_otp`
    AwaitingOtp,
    /// `migration.completed`
    Completed,
    /// `migration.failed`
    Failed,
    /// `migration.cancelled`
    Cancelled,
    /// `migration.step_retry_scheduled`
    StepRetryScheduled,
    /// `migration.api_key_generated`
    ApiKeyGenerated,
    /// `migration.api_key_retrieved`
    ApiKeyRetrieved,
    /// `migration.api_key_superseded`
    ApiKeySuperseded,
    /// `migration.waiting_for_changed`
    WaitingForChanged,
    /// `migration.client_page_opened`
    ClientPageOpened,
    /// `migration.client_page_rotated`
    ClientPageRotated,
    /// `migration.channel_id_set`
    ChannelIdSet,
}

impl EventType {
    /// Every type the service writes.
    pub const ALL: [EventType; 14] = [
        Self::Created,
        Self::StateChanged,
        Self::AwaitingOtp,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::StepRetryScheduled,
        Self::ApiKeyGenerated,
        Self::ApiKeyRetrieved,
        Self::ApiKeySuperseded,
        Self::WaitingForChanged,
        Self::ClientPageOpened,
        Self::ClientPageRotated,
        Self::ChannelIdSet,
    ];

    /// The type of the transition into `to`, for its audit event and its webhook alike: the
    /// states partners act on have a type of their own, every other state
    /// `migration.state_changed`.
    pub fn for_transition(to: MigrationState) -> EventType {
        match to {
            MigrationState::AwaitingOtp => Self::AwaitingOtp,
            MigrationState::Completed => Self::Completed,
            MigrationState::Failed => Self::Failed,
            MigrationState::Cancelled => Self::Cancelled,
            MigrationState::Queued
            | MigrationState::Prechecking
            | MigrationState::AwaitingSignup
            | MigrationState::Initiating
            | MigrationState::RequestingOtp
            | MigrationState::VerifyingOtp
            | MigrationState::Registering
            | MigrationState::CopyingTemplates
            | MigrationState::AwaitingChannel
            | MigrationState::GeneratingApiKey => Self::StateChanged,
        }
    }

    /// Whether events of this type are transitions (`from_state` → another `to_state`), each
    /// also delivered as a webhook of the same type.
    pub fn is_transition(self) -> bool {
        matches!(
            self,
            Self::StateChanged
                | Self::AwaitingOtp
                | Self::Completed
                | Self::Failed
                | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "migration.created",
            Self::StateChanged => "migration.state_changed",
            Self::AwaitingOtp => "migration.awaiting_otp",
            Self::Completed => "migration.completed",
            Self::Failed => "migration.failed",
            Self::Cancelled => "migration.cancelled",
            Self::StepRetryScheduled => "migration.step_retry_scheduled",
            Self::ApiKeyGenerated => "migration.api_key_generated",
            Self::ApiKeyRetrieved => "migration.api_key_retrieved",
            Self::ApiKeySuperseded => "migration.api_key_superseded",
            Self::WaitingForChanged => "migration.waiting_for_changed",
            Self::ClientPageOpened => "migration.client_page_opened",
            Self::ClientPageRotated => "migration.client_page_rotated",
            Self::ChannelIdSet => "migration.channel_id_set",
        }
    }

    /// What an event of this type records (the API reference lists these).
    pub fn description(self) -> &'static str {
        match self {
            Self::Created => {
                "the migration was created (`POST /v1/migrations`); `to_state` is `queued`. \
                 No webhook."
            }
            Self::StateChanged => {
                "a transition into any state without a type of its own (`prechecking`, \
                 `awaiting_signup`, `initiating`, `requesting_otp`, `verifying_otp`, `registering`, \
                 `copying_templates`, `awaiting_channel`, `generating_api_key`, or back to one \
                 of them by `retry` or a code resend, or from `completed` back to \
                 `generating_api_key` by a key rotation); `data` says why when an action caused \
                 it (`otp`, `retry_of`, `api_key`: `rotation_requested`)."
            }
            Self::AwaitingOtp => {
                "a transition into `awaiting_otp`: a code was requested, or a submitted code \
                 was refused (`data.error`) and another can be submitted."
            }
            Self::Completed => "a transition into `completed`: the migration finished.",
            Self::Failed => "a transition into `failed`; `data.error` is the migration's `error`.",
            Self::Cancelled => {
                "a transition into `cancelled`; `data.cancelled_by` is `partner` or `admin`."
            }
            Self::StepRetryScheduled => {
                "a step failed transiently and runs again later (`data.error`, `data.attempt`, \
                 `data.retry_in_seconds`); the state does not change. No webhook."
            }
            Self::ApiKeyGenerated => {
                "the channel's 360dialog API key was generated and stored \
                 (`data.api_key_id`), in `generating_api_key`; after a rotation \
                 `data.replaces_api_key_id` names the key it supersedes. The state does not \
                 change. No webhook."
            }
            Self::ApiKeyRetrieved => {
                "the API key was handed out for the first time by \
                 `GET /v1/migrations/{id}/api_key` (`data.by`: `partner` or `admin`); later \
                 fetches of the same key record nothing. No state. No webhook."
            }
            Self::ApiKeySuperseded => {
                "360dialog no longer accepts the key this completed migration holds \
                 (`data.api_key_id`; `data.reason` `rejected_by_360dialog`): a newer key was \
                 generated for the channel elsewhere, or the number left 360dialog. Found when \
                 another migration of the number checked the key before migrating it again; \
                 `api_key.status` is now `superseded`. No state. No webhook."
            }
            Self::WaitingForChanged => {
                "what a migration waiting in `awaiting_signup` or `awaiting_channel` waits for changed to another \
                 code (`data.waiting_for` is the new `waiting_for`, `data.previous` the code \
                 before, `null` when none was set); the state does not change. Sent as a \
                 webhook of this type."
            }
            Self::ClientPageOpened => {
                "the end client opened the migration's client page link for the first time \
                 (each link once: a rotated link is opened anew); `data.generation` counts the \
                 link's rotations. The state does not change. Sent as a webhook of this type."
            }
            Self::ClientPageRotated => {
                "the client page link was replaced (`POST /v1/migrations/{id}/client_page/rotate`, \
                 `data.by`: `partner` or `admin`); the previous link stopped working. No state. \
                 No webhook."
            }
            Self::ChannelIdSet => {
                "the partner (`data.by`: `partner` or `admin`) set the 360dialog channel id of an \
                 Embedded Signup migration with `PATCH /v1/migrations/{id}` (`data.channel_id`, \
                 `data.previous` the id before, `null` when none was set); the state does not \
                 change, a migration in `awaiting_signup` looks the channel up at once. No \
                 webhook: the partner made the change and has the answer."
            }
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown event type `{0}`")]
pub struct UnknownEventType(pub String);

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// A string enum of [`EventType::ALL`], each documented from [`EventType::description`]: the
/// schema is built from the list the writers use.
impl utoipa::PartialSchema for EventType {
    fn schema() -> RefOr<Schema> {
        let mut description = String::from(
            "The type of an audit event. Every type the service writes is listed. A transition \
             (`from_state` → a different `to_state`) has the type of the webhook sent for the \
             same change (`type` in `WebhookEvent`).\n",
        );
        for t in Self::ALL {
            description.push_str(&format!("\n- `{t}`: {}", t.description()));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .enum_values(Some(Self::ALL.map(EventType::as_str)))
            .into()
    }
}

impl utoipa::ToSchema for EventType {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EventType")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert!(t.as_str().starts_with("migration."), "{t}");
            assert!(seen.insert(t.as_str()), "{t} twice");
            assert!(!t.description().is_empty());
        }
        assert!("migration.nope".parse::<EventType>().is_err());
    }

    #[test]
    fn every_state_entered_has_a_transition_type() {
        for s in MigrationState::ALL {
            let t = EventType::for_transition(s);
            assert!(t.is_transition(), "{s} → {t}");
            assert!(EventType::ALL.contains(&t));
        }
        assert_eq!(
            EventType::for_transition(MigrationState::Completed).as_str(),
            "migration.completed"
        );
        assert_eq!(
            EventType::for_transition(MigrationState::Registering).as_str(),
            "migration.state_changed"
        );
        // Every transition type is the type of some state's transition.
        for t in EventType::ALL.into_iter().filter(|t| t.is_transition()) {
            assert!(
                MigrationState::ALL
                    .into_iter()
                    .any(|s| EventType::for_transition(s) == t),
                "{t}"
            );
        }
    }
}
