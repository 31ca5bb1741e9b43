//! Our stable error codes (`error.code` of a migration) and the error object a failed
//! migration carries: which step, why, who must act and whether `retry` can help.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MigrationState;
use super::upstream::UpstreamError;

/// Who must act to get a migration moving again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The business that owns the number.
    Client,
    /// The provider the number is leaving.
    SourceBsp,
    /// The 360dialog partner calling this API.
    Partner,
    /// Meta (or 360dialog) support.
    Meta,
    /// Nobody: informational, or the service retries by itself.
    None,
}

/// Stable machine codes. New codes may be added; existing ones never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    TwoFactorEnabled,
    AddDirectlyNotMigration,
    DisplayNameNotApproved,
    AlreadyInDestination,
    BusinessMismatch,
    BusinessNotVerified,
    SourceWabaNotApproved,
    DestinationWabaNotApproved,
    DestinationNoPaymentMethod,
    DestinationNoSubscribedApp,
    NumberNotFoundOnSource,
    BrazilNinthDigitMismatch,
    WhatsappIssuedNumber,
    NumberOnBusinessApp,
    OtpInvalid,
    OtpExpired,
    OtpNotSubmitted,
    OtpRateLimited,
    OtpNotEligible,
    RegisterLimitReached,
    PinMismatch,
    TemplateLimitReached,
    SignupNotCompleted,
    ChannelTimeout,
    ChannelNotRunning,
    ChannelWabaMismatch,
    ApiKeyPermissionMissing,
    ApiKeyRejected,
    NumberAlreadyMigrated,
    UpstreamAuth,
    UpstreamRejected,
    UpstreamUnavailable,
    PrecheckFailed,
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 34] = [
        Self::TwoFactorEnabled,
        Self::AddDirectlyNotMigration,
        Self::DisplayNameNotApproved,
        Self::AlreadyInDestination,
        Self::BusinessMismatch,
        Self::BusinessNotVerified,
        Self::SourceWabaNotApproved,
        Self::DestinationWabaNotApproved,
        Self::DestinationNoPaymentMethod,
        Self::DestinationNoSubscribedApp,
        Self::NumberNotFoundOnSource,
        Self::BrazilNinthDigitMismatch,
        Self::WhatsappIssuedNumber,
        Self::NumberOnBusinessApp,
        Self::OtpInvalid,
        Self::OtpExpired,
        Self::OtpNotSubmitted,
        Self::OtpRateLimited,
        Self::OtpNotEligible,
        Self::RegisterLimitReached,
        Self::PinMismatch,
        Self::TemplateLimitReached,
        Self::SignupNotCompleted,
        Self::ChannelTimeout,
        Self::ChannelNotRunning,
        Self::ChannelWabaMismatch,
        Self::ApiKeyPermissionMissing,
        Self::ApiKeyRejected,
        Self::NumberAlreadyMigrated,
        Self::UpstreamAuth,
        Self::UpstreamRejected,
        Self::UpstreamUnavailable,
        Self::PrecheckFailed,
        Self::InternalError,
    ];

    /// A destination check a WABA that Embedded Signup just made may fail for a while:
    /// 360dialog shares its credit line and subscribes its app after the signup (Meta's
    /// Embedded Signup guide, steps 4 and 5), and Meta reviews a new WABA. `awaiting_signup`
    /// waits on these rather than failing.
    pub fn settles_after_signup(self) -> bool {
        matches!(
            self,
            Self::DestinationWabaNotApproved
                | Self::DestinationNoPaymentMethod
                | Self::DestinationNoSubscribedApp
        )
    }

    pub fn as_str(self) -> &'static str {
        // Keep in sync with serde's snake_case names (checked by a unit test).
        match self {
            Self::TwoFactorEnabled => "two_factor_enabled",
            Self::AddDirectlyNotMigration => "add_directly_not_migration",
            Self::DisplayNameNotApproved => "display_name_not_approved",
            Self::AlreadyInDestination => "already_in_destination",
            Self::BusinessMismatch => "business_mismatch",
            Self::BusinessNotVerified => "business_not_verified",
            Self::SourceWabaNotApproved => "source_waba_not_approved",
            Self::DestinationWabaNotApproved => "destination_waba_not_approved",
            Self::DestinationNoPaymentMethod => "destination_no_payment_method",
            Self::DestinationNoSubscribedApp => "destination_no_subscribed_app",
            Self::NumberNotFoundOnSource => "number_not_found_on_source",
            Self::BrazilNinthDigitMismatch => "brazil_ninth_digit_mismatch",
            Self::WhatsappIssuedNumber => "whatsapp_issued_number",
            Self::NumberOnBusinessApp => "number_on_business_app",
            Self::OtpInvalid => "otp_invalid",
            Self::OtpExpired => "otp_expired",
            Self::OtpNotSubmitted => "otp_not_submitted",
            Self::OtpRateLimited => "otp_rate_limited",
            Self::OtpNotEligible => "otp_not_eligible",
            Self::RegisterLimitReached => "register_limit_reached",
            Self::PinMismatch => "pin_mismatch",
            Self::TemplateLimitReached => "template_limit_reached",
            Self::SignupNotCompleted => "signup_not_completed",
            Self::ChannelTimeout => "channel_timeout",
            Self::ChannelNotRunning => "channel_not_running",
            Self::ChannelWabaMismatch => "channel_waba_mismatch",
            Self::ApiKeyPermissionMissing => "api_key_permission_missing",
            Self::ApiKeyRejected => "api_key_rejected",
            Self::NumberAlreadyMigrated => "number_already_migrated",
            Self::UpstreamAuth => "upstream_auth",
            Self::UpstreamRejected => "upstream_rejected",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::PrecheckFailed => "precheck_failed",
            Self::InternalError => "internal_error",
        }
    }

    /// Default human text: (message, remediation, actor, retryable).
    pub fn describe(self) -> (&'static str, &'static str, Actor, bool) {
        use Actor::*;
        match self {
            Self::TwoFactorEnabled => (
                "Two-factor authentication not yet disabled on this number.",
                "The client (or the current provider) must turn off two-step verification in WhatsApp Manager → Phone numbers → Settings, confirm the e-mail Meta sends, then retry.",
                Client,
                true,
            ),
            Self::AddDirectlyNotMigration => (
                "This phone number is eligible to be added directly and does not need to be migrated.",
                "Do not migrate this number: add it as a new number through 360dialog's Embedded Signup (Client Hub → add number).",
                Partner,
                false,
            ),
            Self::DisplayNameNotApproved => (
                "The display name (Register Name) must be present and approved, with no pending name change.",
                "Wait until Meta approves the display name at the current provider, then retry.",
                SourceBsp,
                true,
            ),
            Self::AlreadyInDestination => (
                "The phone number has already been moved to the destination WhatsApp Business Account.",
                "Nothing to do: the migration continues from the number's current state.",
                None,
                false,
            ),
            Self::BusinessMismatch => (
                "The source and destination WhatsApp Business Accounts need to represent the same business.",
                "Use the Meta Business ID that owns the number today (check Business Manager or the old provider's dashboard) and create the migration again.",
                Partner,
                false,
            ),
            Self::BusinessNotVerified => (
                "The client's Meta business portfolio is not verified.",
                "The client must complete Meta Business Verification in Business Settings → Security Center, then retry.",
                Client,
                true,
            ),
            Self::SourceWabaNotApproved => (
                "The source WhatsApp Business Account is not approved.",
                "The source WABA must be approved (and its messaging-on-behalf request accepted) at the current provider before migrating.",
                SourceBsp,
                true,
            ),
            Self::DestinationWabaNotApproved => (
                "The destination WhatsApp Business Account is not approved.",
                "Get the destination WABA approved by Meta, then retry.",
                Partner,
                true,
            ),
            Self::DestinationNoPaymentMethod => (
                "The destination WhatsApp Business Account has no payment method.",
                "Share a credit line or attach a payment method to the destination WABA, then retry.",
                Partner,
                true,
            ),
            Self::DestinationNoSubscribedApp => (
                "No app is subscribed to webhooks on the destination WhatsApp Business Account.",
                "Subscribe your app with POST /{destination-waba-id}/subscribed_apps, then retry.",
                Partner,
                true,
            ),
            Self::NumberNotFoundOnSource => (
                "The phone number is not registered on the source WhatsApp Business Account as given.",
                "Check the number and the source WABA id with the current provider and create the migration again.",
                Partner,
                false,
            ),
            Self::BrazilNinthDigitMismatch => (
                "This Brazilian number is registered in a different form (with or without the mobile 9).",
                "Create the migration again with the number exactly as registered today (see the precheck message for the form).",
                Partner,
                false,
            ),
            Self::WhatsappIssuedNumber => (
                "Phone numbers issued by WhatsApp (test numbers) cannot be migrated.",
                "Use a real business phone number.",
                Partner,
                false,
            ),
            Self::NumberOnBusinessApp => (
                "The number is in use on the WhatsApp Business app, which this migration cannot move.",
                "Onboard it through coexistence onboarding, or delete the app account first.",
                Client,
                false,
            ),
            Self::OtpInvalid => (
                "The verification code was not accepted.",
                "Ask the client for the latest 6-digit code and submit it again, or request a new code.",
                Client,
                true,
            ),
            Self::OtpExpired => (
                "No verification code was submitted in time.",
                "Retry the migration to request a new code, then submit it promptly.",
                Partner,
                true,
            ),
            Self::OtpNotSubmitted => (
                "Waiting for the verification code Meta sent to the number by SMS or voice call.",
                "The client reads the 6-digit code and the partner submits it with POST /v1/migrations/{id}/otp before otp.expires_at (then the migration fails with otp_expired); if no code arrived, request another with POST /v1/migrations/{id}/otp/resend.",
                Client,
                true,
            ),
            Self::OtpRateLimited => (
                "Meta refused to send another code: too many requests for this number.",
                "Wait (usually an hour or more) before requesting a new code.",
                Client,
                true,
            ),
            Self::OtpNotEligible => (
                "Meta says this number is not eligible to receive or verify a code because it is not being migrated.",
                "Check that the migration was initiated on the right destination WABA; register the number normally if it is not a migration.",
                Partner,
                true,
            ),
            Self::RegisterLimitReached => (
                "The number was registered or deregistered too often in 72 hours: Meta blocks it for 72 hours past 10 calls, and this service stops at 5 of its own.",
                "Wait until the time the message names (72 hours at most), then retry. Do not register the number elsewhere meanwhile.",
                Client,
                true,
            ),
            Self::PinMismatch => (
                "Meta rejected the two-step verification PIN.",
                "Two-step verification is still enabled: have it disabled in WhatsApp Manager, then retry.",
                Client,
                true,
            ),
            Self::TemplateLimitReached => (
                "The destination WhatsApp Business Account reached its message template limit.",
                "Delete unused templates in the destination WABA, then re-create the missing ones.",
                Partner,
                false,
            ),
            Self::SignupNotCompleted => (
                "The client has not finished 360dialog's Embedded Signup for this number: 360dialog shows no channel for it on the partner's account.",
                "The client opens the partner's 360dialog signup link (the button on the client page), logs in with Facebook, answers \"Yes, this number is connected to WhatsApp Business API\", creates a new WhatsApp Business Account and finishes. While the migration waits it continues by itself once 360dialog lists the channel, or at once when the partner sends its id with PATCH /v1/migrations/{id}; after it failed, retry it.",
                Client,
                true,
            ),
            Self::ChannelTimeout => (
                "360dialog did not show the number as a running channel in time.",
                "Check the channel in the 360dialog Partner Hub. While the migration waits it continues by itself once the channel runs; after it failed, retry it.",
                Partner,
                true,
            ),
            Self::ChannelNotRunning => (
                "360dialog lists the number's channel, but it is not running.",
                "Usually nothing: 360dialog finishes setting the channel up and the migration continues by itself. If it stays so, check the channel in the 360dialog Partner Hub or ask 360dialog support; after the migration failed, retry it.",
                Meta,
                true,
            ),
            Self::ChannelWabaMismatch => (
                "The 360dialog channel named for this migration is the number's channel on its source WhatsApp Business Account, which the number is leaving, not the one the client's Embedded Signup made.",
                "Find the channel the client's Embedded Signup made (the onboarding redirect or the 360dialog Partner Hub). While the migration waits for the signup, send its id with PATCH /v1/migrations/{id}; after it failed, create the migration again with it.",
                Partner,
                false,
            ),
            Self::ApiKeyPermissionMissing => (
                "The partner has no permission to generate an API key for this channel.",
                "The client must grant the permission (Integrated Onboarding permission screen or Client Hub → profile → Partner). While the migration waits it continues by itself once granted; after it failed, retry it.",
                Client,
                true,
            ),
            Self::ApiKeyRejected => (
                "The generated 360dialog API key is no longer accepted (another key was generated since).",
                "Generate a new key in the Partner Hub if it was not you; contact support if this persists.",
                Partner,
                false,
            ),
            Self::NumberAlreadyMigrated => (
                "The number was already migrated: another completed migration holds the channel's 360dialog API key, and 360dialog still accepts it.",
                "Nothing to migrate: use that migration's key (GET /v1/migrations/{id}/api_key) or replace it with POST /v1/migrations/{id}/api_key/rotate. If the number really left 360dialog, retry once its old key no longer works.",
                Partner,
                false,
            ),
            Self::UpstreamAuth => (
                "An upstream API rejected our credentials.",
                "Check META_ACCESS_TOKEN (its permissions and expiry) and the partner's 360dialog API key, then retry.",
                Partner,
                true,
            ),
            Self::UpstreamRejected => (
                "An upstream API rejected the request.",
                "Read `upstream.message`; fix what it names, then retry.",
                Partner,
                true,
            ),
            Self::UpstreamUnavailable => (
                "Something went wrong when trying to migrate your phone number; upstream kept failing.",
                "Retry after some time. If it does not work, contact support with the upstream trace id.",
                Meta,
                true,
            ),
            Self::PrecheckFailed => (
                "One or more prechecks failed.",
                "See precheck.checks for what failed and who must act, then retry.",
                Partner,
                true,
            ),
            Self::InternalError => (
                "An internal error stopped this migration (for example a stored secret that cannot be decrypted).",
                "Contact the operators of this service with the migration id; retry once they confirm the cause is fixed (e.g. the right ENCRYPTION_KEY).",
                None,
                true,
            ),
        }
    }
}

/// The `error` object of a migration (and of precheck failures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationError {
    pub code: ErrorCode,
    pub message: String,
    pub remediation: String,
    pub actor: Actor,
    /// The state whose step failed.
    pub step: Option<MigrationState>,
    /// Whether `POST /v1/migrations/{id}/retry` can help once the remediation is done.
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamError>,
}

impl MigrationError {
    pub fn new(code: ErrorCode, step: MigrationState) -> Self {
        let (message, remediation, actor, retryable) = code.describe();
        Self {
            code,
            message: message.to_owned(),
            remediation: remediation.to_owned(),
            actor,
            step: Some(step),
            retryable,
            upstream: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn with_upstream(mut self, upstream: Option<UpstreamError>) -> Self {
        self.upstream = upstream;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        let all = ErrorCode::ALL;
        for c in all {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            let (msg, rem, _, _) = c.describe();
            assert!(!msg.is_empty() && !rem.is_empty());
        }
    }
}
