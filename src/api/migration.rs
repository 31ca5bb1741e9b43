//! The migration object as the API, the webhooks and the dashboard show it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::migrations::MigrationRow;
use crate::domain::pacing::BatchSlot;
use crate::domain::{Flow, MigrationError, MigrationState, OtpMethod, TemplatesReport, WaitingFor};
use crate::precheck::PrecheckReport;

/// The OTP sub-object.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OtpOut {
    pub method: OtpMethod,
    pub language: String,
    pub requested_at: Option<DateTime<Utc>>,
    /// A resend is refused (429) before this time.
    pub resend_available_at: Option<DateTime<Utc>>,
    /// Wrong codes still accepted before the migration fails with `otp_invalid`.
    pub attempts_left: i32,
    /// The migration fails with `otp_expired` if no valid code arrives by then.
    pub expires_at: Option<DateTime<Utc>>,
}

/// API key status (never the key itself; fetch it from `/api_key`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyStatus {
    /// `pending` (none yet), `generated` (stored, not yet verified), `verified` (360dialog's
    /// Messaging API accepted it), or `superseded`: the key held is no longer the channel's
    /// (a rotation is replacing it, or 360dialog rejected it); never `verified` again.
    #[schema(example = "verified")]
    pub status: String,
    pub generated_at: Option<DateTime<Utc>>,
}

/// One property the migration must keep.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Preserved {
    pub before: Value,
    pub after: Value,
    pub preserved: bool,
}

/// What the source number had at precheck versus the registered number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PreservedReport {
    pub display_name: Preserved,
    pub quality_rating: Preserved,
    pub messaging_limit_tier: Preserved,
    pub official_business_account: Preserved,
}

/// The outcome in one place: what was preserved and whether the number can send.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MigrationSummary {
    #[serde(default)]
    pub preserved: Option<PreservedReport>,
    /// The Messaging API's `health_status.can_send_message` with the new key:
    /// `AVAILABLE`, `LIMITED` or `BLOCKED`.
    #[serde(default)]
    pub can_send_message: Option<String>,
}

/// Whether a new migration gets an end client page (`client_page` in the create body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientPageMode {
    /// A page at `client_page.url` walks the client through its part.
    #[default]
    Hosted,
    /// No page: the partner runs its own screens.
    Disabled,
}

/// The client page link of a migration, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClientPage {
    /// The link (`…/c/{token}`). Whoever holds it can act for the client on this migration
    /// (see its state, submit the verification code, ask for another): send it to the client
    /// only. `POST /v1/migrations/{id}/client_page/rotate` replaces it.
    pub url: String,
    /// When the link stops working, at the latest. It also stops working when the migration
    /// is cancelled, and 15 minutes (`CLIENT_PAGE_LINGER_SECONDS`) after it completes or
    /// fails; from then on it answers 404 "link no longer valid".
    pub expires_at: DateTime<Utc>,
    /// When the client first opened this link in a browser (link previews do not count);
    /// `null`: not yet.
    pub opened_at: Option<DateTime<Utc>>,
    /// Codes and resend requests sent through this link.
    pub submissions: i32,
}

/// A migration.
// `Deserialize` reads a stored create response back (an `Idempotency-Key` replay), so that it
// is written in this field order again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Migration {
    pub id: Uuid,
    pub partner_id: Uuid,
    /// The batch it was created in (`POST /v1/batches`); `null` for a single create.
    #[serde(default)]
    pub batch_id: Option<Uuid>,
    pub state: MigrationState,
    pub flow: Flow,
    pub phone_number: String,
    pub source_waba_id: String,
    /// As created; an Embedded Signup migration that waited for the signup takes the WABA the
    /// client's signup put the number in (360dialog's guide has the client create a new one).
    pub destination_waba_id: String,
    pub meta_business_id: String,
    pub phone_number_id: Option<String>,
    pub channel_id: Option<String>,
    pub otp: OtpOut,
    pub precheck: Option<PrecheckReport>,
    pub templates: Option<TemplatesReport>,
    pub api_key: ApiKeyStatus,
    /// Filled in as the migration registers the number and proves the key.
    pub summary: Option<MigrationSummary>,
    /// Why the migration failed (or, in `awaiting_otp`, why the last code was refused).
    pub error: Option<MigrationError>,
    /// While the migration waits on someone (`awaiting_signup`, `awaiting_otp`,
    /// `awaiting_channel`): on whom, for
    /// what, since when, and the deadline at which it fails; `null` otherwise.
    pub waiting_for: Option<WaitingFor>,
    /// A batch's migration in `queued`, `prechecking`, `initiating` or `requesting_otp`:
    /// `taken` while it holds one of its batch's `max_in_flight` slots, `waiting` while it
    /// waits for one (it starts, or resumes after a retry or a code resend, once a slot is free
    /// and the batch is not paused). `null` otherwise, and for a single migration.
    #[serde(default)]
    pub batch_slot: Option<BatchSlot>,
    /// The end client's page: a link to send the client, which walks it through its part of
    /// the migration (README "Send this link to your client"); `null` when the migration was
    /// created with `"client_page": "disabled"`. Only in answers to the owner partner and the
    /// admin: webhooks and stored answers never carry it (it is a capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ClientPage>)]
    pub client_page: Option<Option<ClientPage>>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub callback_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<&MigrationRow> for Migration {
    fn from(r: &MigrationRow) -> Self {
        Migration {
            id: r.id,
            partner_id: r.partner_id,
            batch_id: r.batch_id,
            state: r.state(),
            flow: Flow::parse(&r.flow).unwrap_or_default(),
            phone_number: r.phone_number.clone(),
            source_waba_id: r.source_waba_id.clone(),
            destination_waba_id: r.destination_waba_id.clone(),
            meta_business_id: r.meta_business_id.clone(),
            phone_number_id: r.phone_number_id.clone(),
            channel_id: r.channel_id.clone(),
            otp: OtpOut {
                method: OtpMethod::parse(&r.otp_method).unwrap_or_default(),
                language: r.otp_language.clone(),
                requested_at: r.otp_requested_at,
                resend_available_at: r.otp_resend_available_at,
                attempts_left: r.otp_attempts_left,
                expires_at: r.otp_expires_at,
            },
            precheck: r
                .precheck
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            templates: r
                .templates
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            api_key: ApiKeyStatus {
                status: if r.api_key_superseded_at.is_some() {
                    "superseded"
                } else if r.api_key_verified_at.is_some() {
                    "verified"
                } else if r.api_key_enc.is_some() {
                    "generated"
                } else {
                    "pending"
                }
                .into(),
                generated_at: r.api_key_generated_at,
            },
            summary: r
                .summary
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            error: r.error.clone().and_then(|v| serde_json::from_value(v).ok()),
            waiting_for: r
                .waiting_for
                .clone()
                .and_then(|v| serde_json::from_value(v).ok()),
            batch_slot: BatchSlot::of(r.batch_id.is_some(), r.state(), r.is_held()),
            client_page: None,
            metadata: r.metadata.clone(),
            callback_url: r.callback_url.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            completed_at: r.completed_at,
        }
    }
}
