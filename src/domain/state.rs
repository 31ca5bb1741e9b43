//! Migration states (DESIGN.md §2) and the per-migration choices that shape the path.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a migration is. Stored as text; the names are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Queued,
    Prechecking,
    AwaitingSignup,
    Initiating,
    RequestingOtp,
    AwaitingOtp,
    VerifyingOtp,
    Registering,
    CopyingTemplates,
    AwaitingChannel,
    GeneratingApiKey,
    Completed,
    Failed,
    Cancelled,
}

impl MigrationState {
    pub const ALL: [MigrationState; 14] = [
        Self::Queued,
        Self::Prechecking,
        Self::AwaitingSignup,
        Self::Initiating,
        Self::RequestingOtp,
        Self::AwaitingOtp,
        Self::VerifyingOtp,
        Self::Registering,
        Self::CopyingTemplates,
        Self::AwaitingChannel,
        Self::GeneratingApiKey,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Every state a migration can still leave by itself or by a command: all but the
    /// terminal ones.
    pub const ACTIVE: [MigrationState; 11] = {
        let mut out = [Self::Queued; 11];
        let mut i = 0;
        while i < 11 {
            out[i] = Self::ALL[i];
            i += 1;
        }
        out
    };

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Prechecking => "prechecking",
            Self::AwaitingSignup => "awaiting_signup",
            Self::Initiating => "initiating",
            Self::RequestingOtp => "requesting_otp",
            Self::AwaitingOtp => "awaiting_otp",
            Self::VerifyingOtp => "verifying_otp",
            Self::Registering => "registering",
            Self::CopyingTemplates => "copying_templates",
            Self::AwaitingChannel => "awaiting_channel",
            Self::GeneratingApiKey => "generating_api_key",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// `completed`, `failed` and `cancelled`: no worker will touch the row again
    /// (until a `retry` of a failed one).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Waiting for the partner (the OTP): no worker runs it until its deadline.
    pub fn is_parked(self) -> bool {
        matches!(self, Self::AwaitingOtp)
    }

    /// Whether a new verification code can be requested (`POST …/otp/resend`): only while a
    /// code is awaited. The dashboard offers the resend (and says when it is available) only
    /// then.
    pub fn accepts_otp_resend(self) -> bool {
        matches!(self, Self::AwaitingOtp)
    }
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown migration state `{0}`")]
pub struct UnknownState(pub String);

impl std::str::FromStr for MigrationState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// How the number reaches the destination WABA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// The service drives Meta's programmatic migration: initiate, OTP, register.
    #[default]
    Otp,
    /// The client goes through 360dialog's Embedded Signup (which does the OTP and creates the
    /// channel): created with the `channel_id` of a finished signup, or without one, waiting in
    /// `awaiting_signup` until 360dialog shows the channel; then the job checks templates,
    /// waits for the channel to run and generates the key.
    EmbeddedSignup,
}

impl Flow {
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Otp => "otp",
            Flow::EmbeddedSignup => "embedded_signup",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "otp" => Some(Flow::Otp),
            "embedded_signup" => Some(Flow::EmbeddedSignup),
            _ => None,
        }
    }
}

/// How Meta delivers the verification code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtpMethod {
    #[default]
    Sms,
    Voice,
}

impl OtpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            OtpMethod::Sms => "sms",
            OtpMethod::Voice => "voice",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sms" => Some(OtpMethod::Sms),
            "voice" => Some(OtpMethod::Voice),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in MigrationState::ALL {
            assert_eq!(s.as_str().parse::<MigrationState>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert!("nope".parse::<MigrationState>().is_err());
    }

    #[test]
    fn terminal_and_parked() {
        let terminal: Vec<_> = MigrationState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                MigrationState::Completed,
                MigrationState::Failed,
                MigrationState::Cancelled
            ]
        );
        assert!(MigrationState::AwaitingOtp.is_parked());
        assert!(!MigrationState::AwaitingChannel.is_parked());
        // Polled with backoff like `awaiting_channel`, not parked until a deadline.
        assert!(!MigrationState::AwaitingSignup.is_parked());
        assert!(MigrationState::ACTIVE.contains(&MigrationState::AwaitingSignup));
        assert_eq!(
            MigrationState::ALL[..3],
            [
                MigrationState::Queued,
                MigrationState::Prechecking,
                MigrationState::AwaitingSignup
            ]
        );
        let resendable: Vec<_> = MigrationState::ALL
            .into_iter()
            .filter(|s| s.accepts_otp_resend())
            .collect();
        assert_eq!(resendable, [MigrationState::AwaitingOtp]);
    }
}
