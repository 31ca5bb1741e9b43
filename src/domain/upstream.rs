//! Facts about the upstreams: what the Meta Graph API and 360dialog return (accounts, numbers,
//! templates, channels) and how a failed call is classified (retryable, maybe applied). Pure
//! data and rules; the clients in `crate::clients` produce these values from the wire.

use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};

/// Which upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Meta Graph API (`graph.facebook.com`).
    Meta,
    /// 360dialog Partner API (`hub.360dialog.io`).
    D360Partner,
    /// 360dialog Messaging API (`waba-v2.360dialog.io`).
    D360Messaging,
}

impl Service {
    /// The `service` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Service::Meta => "meta",
            Service::D360Partner => "d360_partner",
            Service::D360Messaging => "d360_messaging",
        }
    }
}

/// What an upstream said when it refused a request, kept verbatim for support
/// (the `upstream` object of our error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpstreamError {
    pub service: Service,
    /// HTTP status of the upstream response, if one arrived.
    pub http_status: Option<u16>,
    /// Graph `error.code`, or 360dialog `meta.error_data.code` when numeric.
    pub code: Option<i64>,
    /// Graph `error.error_subcode` (the 2388xxx migration errors usually arrive here).
    pub subcode: Option<i64>,
    /// Graph `error.fbtrace_id`, for Meta support tickets.
    pub fbtrace_id: Option<String>,
    /// Upstream's own message (`error.message`, `error_user_msg`, or 360dialog's
    /// `meta.developer_message`). Never contains our secrets: upstreams do not echo them.
    pub message: String,
    /// Graph `error.is_transient`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_transient: Option<bool>,
}

/// A failed upstream call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No complete response arrived: connect error, timeout, connection reset, or the body
    /// could not be read. `maybe_applied` is true when the request may have reached the upstream
    /// and been applied (anything after the request was sent): callers of non-idempotent
    /// endpoints must read upstream state before calling again.
    #[error("{service:?} transport error: {message}")]
    Transport {
        service: Service,
        message: String,
        maybe_applied: bool,
    },
    /// The upstream answered with an error status.
    #[error("{} error (HTTP {:?}, code {:?}/{:?}): {}", .upstream.service_name(), .upstream.http_status, .upstream.code, .upstream.subcode, .upstream.message)]
    Api {
        upstream: UpstreamError,
        /// From `Retry-After` (seconds or HTTP date) or, for Graph throttling,
        /// `X-Business-Use-Case-Usage.estimated_time_to_regain_access` (minutes).
        retry_after: Option<Duration>,
    },
    /// A 2xx response whose body we could not understand.
    #[error("{service:?} returned an unexpected body: {message}")]
    Decode { service: Service, message: String },
}

impl UpstreamError {
    fn service_name(&self) -> &'static str {
        match self.service {
            Service::Meta => "Meta Graph API",
            Service::D360Partner => "360dialog Partner API",
            Service::D360Messaging => "360dialog Messaging API",
        }
    }

    /// True when `code` or `subcode` equals `n` (Meta's migration numbers arrive in either).
    pub fn has_code(&self, n: i64) -> bool {
        self.code == Some(n) || self.subcode == Some(n)
    }

    /// The field a Graph read named that its node type does not have, and that node type, from
    /// `(#100) Tried accessing nonexisting field (x) on node type (T)`: what Graph answers, for
    /// the whole request, once Meta has removed or renamed a field in the version called (or
    /// when the id names another kind of node than the read expects).
    pub fn nonexisting_field(&self) -> Option<(&str, &str)> {
        if self.service != Service::Meta || !self.has_code(100) {
            return None;
        }
        let word = |mark: &str, from: usize| {
            let at = self.message[from..].find(mark)? + from + mark.len();
            let len = self.message[at..].find(')')?;
            let text = &self.message[at..at + len];
            let ok =
                !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            ok.then_some((text, at + len))
        };
        let (field, end) = word("nonexisting field (", 0)?;
        let (node_type, _) = word("on node type (", end)?;
        Some((field, node_type))
    }

    /// Whether Graph refused our token or its permissions (`meta-graph-api.md` §4.2: 0 and 190
    /// a bad or expired token, 102 a session, 10 and 200–299 a missing permission).
    pub fn refuses_our_token(&self) -> bool {
        self.service == Service::Meta
            && (self.has_code(190)
                || matches!(self.code, Some(0 | 10 | 102))
                || self.code.is_some_and(|c| (200..300).contains(&c)))
    }

    /// Graph's 100/33, "Object with ID … does not exist, cannot be loaded due to missing
    /// permissions, or does not support this operation": on a read of a WABA, an id that is
    /// wrong or not shared with the token's system user (on a number's own calls, 33 may mean
    /// the number was deleted).
    pub fn cannot_load_object(&self) -> bool {
        self.service == Service::Meta && self.code == Some(100) && self.subcode == Some(33)
    }

    /// Whether its Graph code is one Meta documents as transient ([`TRANSIENT_GRAPH_CODES`]),
    /// from Meta or passed through by 360dialog's Messaging API. Such an error is retried
    /// whatever its text says (133008's and 133009's titles mention "two step verification").
    pub fn has_transient_code(&self) -> bool {
        self.service != Service::D360Partner
            && TRANSIENT_GRAPH_CODES.iter().any(|c| self.has_code(*c))
    }

    /// Meta's "There was an error migrating this phone number. Please try again after some
    /// time." (2388103), or 360dialog's wording of it, "Something went wrong when trying to
    /// migrate your phone number. Please try again after some time.": try again later (unless
    /// its words also name a permanent variant: `worker::errors::code_for` decides).
    pub fn is_try_again_later(&self) -> bool {
        if !self.has_code(2388103) {
            return false;
        }
        let text = self.message.to_ascii_lowercase();
        text.contains("error migrating") || text.contains("try again after some time")
    }

    /// Whether the text says two-step verification (two-factor authentication, 2FA) is in the
    /// way: Meta writes "two-step", 360dialog "two-factor" or "2FA".
    pub fn mentions_two_factor(&self) -> bool {
        let text = self.message.to_ascii_lowercase();
        ["two-step", "two step", "two-factor", "two factor"]
            .iter()
            .any(|w| text.contains(w))
            || words(&text).any(|word| word == "2fa")
    }

    /// Whether the text says the number is already in the destination WABA: 360dialog's "The
    /// phone number you are trying to migrate has already been moved to your destination
    /// WhatsApp Account." (Meta's own answer is the code 2388012).
    pub fn says_already_in_destination(&self) -> bool {
        let text = self.message.to_ascii_lowercase();
        text.contains("already been moved") && text.contains("destination")
    }

    /// Meta's 133008 ("too many two-step verification PIN guesses"): how long it says to wait,
    /// from its details ("… try again in 12 hours", "wait 30m"), if it says. A duration after
    /// "in", "after", "wait" or "for" is the wait; else the longest one named (not "… in the
    /// last 24 hours"'s shorter neighbours). A zero wait says nothing.
    pub fn pin_guesses_wait(&self) -> Option<Duration> {
        if !self.has_code(133008) {
            return None;
        }
        let text = self.message.to_ascii_lowercase();
        let words: Vec<&str> = words(&text).collect();
        let mut durations = Vec::new();
        for (i, word) in words.iter().enumerate() {
            // "12 hours" or "12h".
            let digits = word.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = match (digits, word.len()) {
                (0, _) => continue,
                (d, len) if d == len => (*word, words.get(i + 1).copied().unwrap_or("")),
                (d, _) => word.split_at(d),
            };
            let Some(secs) = duration_unit(unit)
                .and_then(|unit| number.parse::<u64>().ok()?.checked_mul(unit))
                .filter(|secs| *secs > 0)
            else {
                continue;
            };
            let said_as_wait = i
                .checked_sub(1)
                .and_then(|j| words.get(j))
                .is_some_and(|w| matches!(*w, "in" | "after" | "wait" | "for"));
            durations.push((said_as_wait, Duration::from_secs(secs)));
        }
        durations
            .iter()
            .find(|(said_as_wait, _)| *said_as_wait)
            .or_else(|| durations.iter().max_by_key(|(_, d)| *d))
            .map(|(_, d)| *d)
    }

    /// Whether the upstream is rate limiting us: HTTP 429, one of Graph's rate-limit codes
    /// (from Meta, or passed through by 360dialog's Messaging API), or 360dialog's "exceeded
    /// the endpoint rate limit".
    pub fn is_throttling(&self) -> bool {
        self.http_status == Some(429)
            || (self.service != Service::D360Partner
                && GRAPH_THROTTLING.iter().any(|c| self.has_code(*c)))
            || self
                .message
                .to_ascii_lowercase()
                .contains(D360_RATE_LIMITED)
    }
}

/// Graph error codes of Meta's rate limiting (`meta-graph-api.md` §4): application (4),
/// user (17), page (32), API-specific (613), WABA (80007, 80008) and Cloud API (130429).
const GRAPH_THROTTLING: &[i64] = &[4, 17, 32, 613, 80007, 80008, 130429];

impl CallError {
    /// Whether retrying the same call later can succeed: the one classification every caller
    /// uses. Per `meta-graph-api.md` §4: `is_transient` when present, else the documented
    /// transient codes, HTTP 429 and 5xx; transport errors are retryable, and so is a 2xx whose
    /// body is not the upstream's JSON (a proxy's or gateway's page). Whether it is *safe* to
    /// retry a non-idempotent call is [`CallError::maybe_applied`]'s question.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport { .. } | CallError::Decode { .. } => true,
            CallError::Api { upstream, .. } => classify_retryable(upstream),
        }
    }

    /// Delay the upstream asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The upstream error object, if the upstream answered.
    pub fn upstream(&self) -> Option<&UpstreamError> {
        match self {
            CallError::Api { upstream, .. } => Some(upstream),
            _ => None,
        }
    }

    pub fn service(&self) -> Service {
        match self {
            CallError::Transport { service, .. } | CallError::Decode { service, .. } => *service,
            CallError::Api { upstream, .. } => upstream.service,
        }
    }

    /// True when the request may have been applied upstream although we saw no success: a
    /// timeout or reset after sending, a 5xx, or a 2xx whose body is not the documented
    /// success. A non-idempotent call must then not be repeated blind: read upstream state
    /// first (or, for `request_code`, treat the code as sent). False when it was refused (a
    /// 4xx) or never left (a connect error).
    pub fn maybe_applied(&self) -> bool {
        match self {
            CallError::Transport { maybe_applied, .. } => *maybe_applied,
            // A 5xx may have been applied before the upstream failed; 4xx were refused.
            CallError::Api { upstream, .. } => upstream.http_status.is_none_or(|s| s >= 500),
            CallError::Decode { .. } => true,
        }
    }
}

/// The words of a lower-cased text: its runs of ASCII letters and digits.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Seconds in a unit of time as people write it ("hours", "h", "min"…).
fn duration_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "second" | "seconds" | "sec" | "secs" | "s" => 1,
        "minute" | "minutes" | "min" | "mins" | "m" => 60,
        "hour" | "hours" | "hr" | "hrs" | "h" => 3600,
        "day" | "days" | "d" => 86_400,
        _ => return None,
    })
}

/// Graph error codes that are transient per Meta's documentation (`meta-graph-api.md` §4.3):
/// the rule-of-thumb list, and Embedded Signup's generic request/verify failures (2593037,
/// 2593039: "retry").
const TRANSIENT_GRAPH_CODES: &[i64] = &[
    1, 2, 4, 17, 32, 341, 613, 80007, 80008, 130429, 131000, 131016, 131056, 131057, 133004,
    133008, 133009, 133015, 2494100, 2593037, 2593039,
];

/// 360dialog's throttling answer (HTTP 400 on the Messaging API, `360dialog-api.md` §4):
/// back off and try again.
const D360_RATE_LIMITED: &str = "exceeded the endpoint rate limit";

fn classify_retryable(e: &UpstreamError) -> bool {
    if let Some(t) = e.is_transient {
        return t;
    }
    match e.service {
        Service::Meta => {
            if e.has_transient_code() {
                return true;
            }
            // 2388103 is permanent except for its "try again after some time" variant.
            if e.has_code(2388103) {
                return e.is_try_again_later();
            }
            if e.code.is_some() {
                // Any other Graph error code needs a human or a configuration fix
                // (token, permission, parameter, migration preconditions, ...).
                return false;
            }
            // No Graph error object (a proxy or load balancer answered).
            matches!(e.http_status, Some(408) | Some(429) | Some(500..=599))
        }
        Service::D360Partner | Service::D360Messaging => {
            // The Messaging API passes Meta's error objects through: their codes mean what
            // they mean on Graph. The Partner API's codes are its own.
            // Throttling (429, its "endpoint rate limit" 400) is retried like Meta's.
            e.is_throttling()
                || (e.service == Service::D360Messaging && e.has_transient_code())
                || matches!(e.http_status, Some(408) | Some(500..=599))
        }
    }
}

/// What 360dialog's `shared_client_numbers` says about generating a channel's API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPermission {
    /// The channel, or its number, is listed as shared.
    Granted,
    /// The answer lists what the client shared, and the channel is not among it (or is listed
    /// as denied): wait for the client.
    Denied,
    /// The answer cannot be read as such a list (a 404, or a shape not seen before; 360dialog
    /// documents neither): `POST …/api_keys` decides, whose 403 is `api_key_permission_missing`.
    Unknown,
}

/// Graph `code_method` of `request_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CodeMethod {
    Sms,
    Voice,
}

/// `GET /{waba-id}` fields we read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waba {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `PENDING`, `APPROVED`, `REJECTED` (`RESTRICTED` per OAS).
    #[serde(default)]
    pub account_review_status: Option<String>,
    /// Lower-case as returned live: `verified`, `not_verified`, `pending`, ...
    #[serde(default)]
    pub business_verification_status: Option<String>,
    #[serde(default)]
    pub owner_business_info: Option<BusinessInfo>,
    #[serde(default)]
    pub on_behalf_of_business_info: Option<BusinessInfo>,
    /// Payment method / credit line; absent when none is attached.
    #[serde(default)]
    pub primary_funding_id: Option<String>,
    #[serde(default)]
    pub message_template_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessInfo {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A phone number node (`GET /{phone-number-id}` or an item of `GET /{waba-id}/phone_numbers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneNumber {
    pub id: String,
    /// As Meta formats it, e.g. `+1 631-555-5555`; compare digits only.
    #[serde(default)]
    pub display_phone_number: Option<String>,
    #[serde(default)]
    pub verified_name: Option<String>,
    /// `GREEN`, `YELLOW`, `RED`, `NA`, `UNKNOWN`.
    #[serde(default)]
    pub quality_rating: Option<String>,
    /// `VERIFIED`, `NOT_VERIFIED`, `EXPIRED` (OTP ownership, not 2FA).
    #[serde(default)]
    pub code_verification_status: Option<String>,
    /// Display name review: must be `APPROVED` to migrate.
    #[serde(default)]
    pub name_status: Option<String>,
    /// Review status of a pending display-name change; a pending change blocks migration.
    #[serde(default)]
    pub new_name_status: Option<String>,
    /// `CONNECTED` once registered on Cloud API; `PENDING`, `DISCONNECTED`, `MIGRATED`, ...
    #[serde(default)]
    pub status: Option<String>,
    /// `CLOUD_API`, `ON_PREMISE`, `NOT_APPLICABLE`.
    #[serde(default)]
    pub platform_type: Option<String>,
    #[serde(default)]
    pub messaging_limit_tier: Option<String>,
    #[serde(default)]
    pub is_official_business_account: Option<bool>,
    /// True when the number is on the WhatsApp Business app (cannot use this flow).
    #[serde(default)]
    pub is_on_biz_app: Option<bool>,
    /// `LIVE` or `SANDBOX`; WhatsApp-issued test numbers are `SANDBOX`.
    #[serde(default)]
    pub account_mode: Option<String>,
}

/// An item of `GET /{waba-id}/subscribed_apps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedApp {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// An item of `GET /{waba-id}/message_templates`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub language: String,
    /// `APPROVED`, `PENDING`, `REJECTED`, `PAUSED`, `DISABLED`, ...
    pub status: String,
    #[serde(default)]
    pub category: Option<String>,
    /// `quality_score.score`: `GREEN`, `YELLOW`, `RED`, `UNKNOWN`.
    #[serde(default)]
    pub quality_score: Option<String>,
}

/// Meta caps `register` and `deregister` at 10 calls per number in a rolling 72 h, the old
/// provider's calls included, and blocks the number for 72 h past that (133016;
/// `meta-graph-api.md` §1.3). A migration makes at most this many `register` calls in any
/// 72 h: half the cap, the rest left to the old provider and to people.
pub const REGISTER_CALLS_PER_72H: usize = 5;

/// The window of Meta's register cap.
pub const REGISTER_WINDOW: Duration = Duration::from_secs(72 * 3600);

/// Meta's 133015 ("recently deleted number; deletion still pending"): try again after about
/// five minutes (`meta-graph-api.md` §4.3), not after the usual seconds of backoff, which would
/// spend register calls on an answer known in advance.
pub const DELETION_PENDING_WAIT: Duration = Duration::from_secs(300);

/// Meta's 133009 ("two-step verification PIN was entered too quickly"): slow down, a minute
/// at least, not the usual seconds of backoff (each `register` counts in Meta's cap).
pub const PIN_TOO_FAST_WAIT: Duration = Duration::from_secs(60);

/// Of the times `calls` of a number's `register` calls, those still inside Meta's window at
/// `now`, oldest first.
pub fn register_calls_in_window(
    calls: impl IntoIterator<Item = DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let window = chrono::Duration::from_std(REGISTER_WINDOW).expect("72 h fits");
    let mut recent: Vec<_> = calls.into_iter().filter(|t| *t > now - window).collect();
    recent.sort();
    recent
}

/// When the oldest of `recent` (see [`register_calls_in_window`]) leaves the window.
pub fn register_window_frees_at(recent: &[DateTime<Utc>]) -> Option<DateTime<Utc>> {
    let window = chrono::Duration::from_std(REGISTER_WINDOW).expect("72 h fits");
    recent.first().map(|t| *t + window)
}

/// Meta's template limit per WABA (`meta-graph-api.md` §2.3, TPL-LIM): 250 while the parent
/// portfolio is unverified, 6,000 once it is verified. Each language variant counts.
pub fn template_limit(portfolio_verified: bool) -> usize {
    if portfolio_verified { 6000 } else { 250 }
}

/// Response of `POST /{dest-waba-id}/migrate_message_templates`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMigration {
    /// Source template ids that were copied.
    pub migrated_templates: Vec<String>,
    /// Source template id → Meta's reason.
    pub failed_templates: std::collections::BTreeMap<String, String>,
}

/// A 360dialog channel (one phone number) as listed by `GET /partners/{pid}/channels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default)]
    pub client_id: Option<String>,
    /// `created`, `unverified`, `verified`, `ready`, `running`, ... (a key can be generated
    /// only once it is `running`). Unknown values are kept as-is.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub account_mode: Option<String>,
    /// `setup_info.phone_number`.
    #[serde(default)]
    pub phone_number: Option<String>,
    /// `waba_account.external_id` (the Meta WABA id), when present.
    #[serde(default)]
    pub waba_external_id: Option<String>,
}

impl Channel {
    /// The Meta WABA this channel is on (`waba_account.external_id`), when 360dialog shows it.
    pub fn waba(&self) -> Option<&str> {
        self.waba_external_id
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
    }

    /// The WABA that makes this channel not the migration's, if it is on one. A number can have
    /// several channels. One on the source WABA is the one the number is leaving (a change of
    /// WABA inside 360dialog): never the migration's. In the OTP flow the service moves the
    /// number into the destination itself, so only a channel there is (or one whose WABA is not
    /// shown). In the Embedded Signup flow the client's signup decides the WABA (360dialog's
    /// guide has the client create a new one), so any WABA but the source is taken.
    pub fn foreign_waba(
        &self,
        flow: super::Flow,
        source_waba: &str,
        dest_waba: &str,
    ) -> Option<&str> {
        let waba = self.waba()?;
        if waba == dest_waba.trim() {
            return None;
        }
        match flow {
            super::Flow::EmbeddedSignup => (waba == source_waba.trim()).then_some(waba),
            super::Flow::Otp => Some(waba),
        }
    }
}

/// `GET /health_status` of the Messaging API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Overall `health_status.can_send_message`: `AVAILABLE`, `LIMITED`, `BLOCKED`.
    pub can_send_message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_guesses(text: &str) -> Option<u64> {
        UpstreamError {
            service: Service::Meta,
            http_status: Some(400),
            code: Some(133008),
            subcode: None,
            fbtrace_id: None,
            message: text.into(),
            is_transient: None,
        }
        .pin_guesses_wait()
        .map(|d| d.as_secs())
    }

    #[test]
    fn the_wait_of_too_many_pin_guesses_is_read_from_its_words() {
        assert_eq!(pin_guesses("Please try again in 30 minutes."), Some(1800));
        assert_eq!(
            pin_guesses("Wait 12 hours before trying again"),
            Some(43_200)
        );
        assert_eq!(pin_guesses("try again after 2h"), Some(7200));
        // The duration said as the wait, not another one of the sentence.
        assert_eq!(
            pin_guesses("Too many guesses in the last 24 hours. Try again in 30 minutes"),
            Some(1800)
        );
        // None said as the wait: the longest named.
        assert_eq!(
            pin_guesses("5 guesses within 1 hour; 12 hours block"),
            Some(43_200)
        );
        // Nothing, or nothing usable.
        assert_eq!(
            pin_guesses("Too many PIN guesses for this phone number"),
            None
        );
        assert_eq!(pin_guesses("try again in 0 minutes"), None);
        assert_eq!(pin_guesses("try again in 99999999999999999999 hours"), None);
        assert_eq!(pin_guesses("PIN 123456 guessed 3 times"), None);
    }
}
