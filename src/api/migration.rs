//! The migration object as the API, the webhooks and the dashboard show it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::migrations::MigrationRow;
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

/// A migration.
// `Deserialize` reads a stored create response back (an `Idempotency-Key` replay), so that it
// is written in this field order again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Migration {
    pub id: Uuid,
    pub partner_id: Uuid,
    pub state: MigrationState,
    pub flow: Flow,
    pub phone_number: String,
    pub source_waba_id: String,
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
            metadata: r.metadata.clone(),
            callback_url: r.callback_url.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            completed_at: r.completed_at,
        }
    }
}
