//! Scenario numbers (like card numbers in a payments test mode) and phone-number helpers.
//!
//! A number whose last four digits are `00xx` (`xx` = 01..=24) triggers one failure; WABA-level
//! scenarios also apply to WABA ids ending in the same four digits.

/// `(last four digits, our error code, description)` of every scenario number.
pub const SCENARIOS: &[(&str, &str, &str)] = &[
    (
        "0001",
        "two_factor_enabled",
        "POST /{dest-waba}/phone_numbers fails with 2388103 \"Two-step authentication must be disabled for this phone number\".",
    ),
    (
        "0002",
        "add_directly_not_migration",
        "POST /{dest-waba}/phone_numbers fails with 2388103 \"This phone number is eligible to be added directly and does not need to be migrated\".",
    ),
    (
        "0003",
        "display_name_not_approved",
        "The number's name_status is PENDING_REVIEW; POST /{dest-waba}/phone_numbers fails with 2388103 \"Display name not approved\".",
    ),
    (
        "0004",
        "already_in_destination",
        "The number is already registered (CONNECTED, VERIFIED) in the destination WABA: listed there when added with a destination_waba_id, and POST /{dest-waba}/phone_numbers answers 2388012; its 360dialog channel is running.",
    ),
    (
        "0005",
        "business_mismatch",
        "The source WABA reports owner_business_info.id 999000111 (also: any WABA id ending in 0005); POST /{dest-waba}/phone_numbers fails with 2388103 \"This phone number belongs to a different Business Manager account\".",
    ),
    (
        "0006",
        "business_not_verified",
        "The source WABA reports business_verification_status not_verified (also: any WABA id ending in 0006).",
    ),
    (
        "0007",
        "source_waba_not_approved",
        "The source WABA reports account_review_status PENDING (also: any WABA id ending in 0007).",
    ),
    (
        "0008",
        "destination_waba_not_approved",
        "The destination WABA reports account_review_status REJECTED (use a destination WABA id ending in 0008; the number alone marks the destination only once it is known).",
    ),
    (
        "0009",
        "destination_no_payment_method",
        "The destination WABA has no primary_funding_id (use a destination WABA id ending in 0009).",
    ),
    (
        "0010",
        "destination_no_subscribed_app",
        "The destination WABA's subscribed_apps is empty (use a destination WABA id ending in 0010); POST /{dest-waba}/phone_numbers fails with 2388103 \"Cannot migrate phone number: no app subscribed to webhooks on the destination\".",
    ),
    (
        "0011",
        "number_not_found_on_source",
        "Adding the number to a source WABA does not list it there.",
    ),
    (
        "0012",
        "brazil_ninth_digit_mismatch",
        "For a +55 mobile number the source WABA lists the other form: without the mobile 9 when given with it, with it when given without.",
    ),
    (
        "0013",
        "whatsapp_issued_number",
        "The number's account_mode is SANDBOX (a WhatsApp-issued test number).",
    ),
    (
        "0014",
        "number_on_business_app",
        "The number's is_on_biz_app is true (it is on the WhatsApp Business app).",
    ),
    (
        "0015",
        "otp_invalid",
        "The valid verification code is 654321, so 123456 fails verify_code with 136025.",
    ),
    (
        "0016",
        "otp_rate_limited",
        "request_code fails with 2494158 \"You have requested your code too many times\".",
    ),
    (
        "0017",
        "register_limit_reached",
        "register fails with 133016 (more than 10 register calls in 72 h).",
    ),
    (
        "0018",
        "template_limit_reached",
        "This number's destination (or a destination WABA id ending in 0018) is full: it lists as many templates as its limit allows, so the precheck warns, and migrate_message_templates into it fails with 100/2388019 \"Message Template Limit Exceeded\".",
    ),
    (
        "0019",
        "channel_timeout",
        "The 360dialog channel never appears in the partner's channel list.",
    ),
    (
        "0020",
        "api_key_permission_missing",
        "The channel is running but shared_client_numbers does not list it, and api_keys answers 403 \"Permission denied for partner <pid>\".",
    ),
    (
        "0021",
        "upstream_auth",
        "Every Graph call about this number (or a WABA id ending in 0021) fails with HTTP 401, code 190 \"Error validating access token\".",
    ),
    (
        "0022",
        "upstream_unavailable",
        "POST /{dest-waba}/phone_numbers always fails with 2388103 \"There was an error migrating this phone number\" (no is_transient), so the service retries, then fails.",
    ),
    (
        "0023",
        "pin_mismatch",
        "register fails with 133005 (two-step verification PIN mismatch).",
    ),
    (
        "0024",
        "display_name_not_approved",
        "The number's new_name_status is PENDING_REVIEW (a display-name change is pending).",
    ),
];

/// The failure a number (or WABA id) triggers; the discriminant is its last four digits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) enum Scenario {
    TwoFactorEnabled = 1,
    AddDirectly = 2,
    DisplayNameNotApproved = 3,
    AlreadyInDestination = 4,
    BusinessMismatch = 5,
    BusinessNotVerified = 6,
    SourceWabaNotApproved = 7,
    DestinationWabaNotApproved = 8,
    DestinationNoPaymentMethod = 9,
    DestinationNoSubscribedApp = 10,
    NumberNotFoundOnSource = 11,
    BrazilNinthDigit = 12,
    WhatsappIssued = 13,
    OnBizApp = 14,
    OtpInvalid = 15,
    OtpRateLimited = 16,
    RegisterLimit = 17,
    TemplateLimit = 18,
    ChannelTimeout = 19,
    ApiKeyPermissionMissing = 20,
    UpstreamAuth = 21,
    UpstreamUnavailable = 22,
    PinMismatch = 23,
    PendingNameChange = 24,
}

const ALL: [Scenario; 24] = [
    Scenario::TwoFactorEnabled,
    Scenario::AddDirectly,
    Scenario::DisplayNameNotApproved,
    Scenario::AlreadyInDestination,
    Scenario::BusinessMismatch,
    Scenario::BusinessNotVerified,
    Scenario::SourceWabaNotApproved,
    Scenario::DestinationWabaNotApproved,
    Scenario::DestinationNoPaymentMethod,
    Scenario::DestinationNoSubscribedApp,
    Scenario::NumberNotFoundOnSource,
    Scenario::BrazilNinthDigit,
    Scenario::WhatsappIssued,
    Scenario::OnBizApp,
    Scenario::OtpInvalid,
    Scenario::OtpRateLimited,
    Scenario::RegisterLimit,
    Scenario::TemplateLimit,
    Scenario::ChannelTimeout,
    Scenario::ApiKeyPermissionMissing,
    Scenario::UpstreamAuth,
    Scenario::UpstreamUnavailable,
    Scenario::PinMismatch,
    Scenario::PendingNameChange,
];

impl Scenario {
    /// The scenario of a string whose last four characters are digits `00xx`.
    pub(crate) fn of(id_or_number: &str) -> Option<Scenario> {
        let bytes = id_or_number.as_bytes();
        let tail = bytes.get(bytes.len().checked_sub(4)?..)?;
        if !tail.iter().all(u8::is_ascii_digit) || tail[0] != b'0' || tail[1] != b'0' {
            return None;
        }
        let n = usize::from(tail[2] - b'0') * 10 + usize::from(tail[3] - b'0');
        ALL.get(n.checked_sub(1)?).copied()
    }

    /// Our error code this scenario leads to (see [`SCENARIOS`]).
    pub(crate) fn code(self) -> &'static str {
        SCENARIOS[self as usize - 1].1
    }

    /// Whether this scenario, carried by a number, marks the number's *source* WABA.
    pub(crate) fn marks_source_waba(self) -> bool {
        matches!(
            self,
            Scenario::BusinessMismatch
                | Scenario::BusinessNotVerified
                | Scenario::SourceWabaNotApproved
                | Scenario::UpstreamAuth
        )
    }

    /// Whether this scenario, carried by a number, marks the number's *destination* WABA.
    pub(crate) fn marks_destination_waba(self) -> bool {
        matches!(
            self,
            Scenario::DestinationWabaNotApproved
                | Scenario::DestinationNoPaymentMethod
                | Scenario::DestinationNoSubscribedApp
                | Scenario::TemplateLimit
                | Scenario::UpstreamAuth
        )
    }
}

/// `+<digits>` for a number written with or without `+`, spaces, dashes, dots or parentheses,
/// if it has 7..=15 digits and a known country calling code. The national part is not checked
/// against numbering plans (fictional `+1 555` numbers are fine).
pub(crate) fn normalize_e164(input: &str) -> Option<String> {
    let trimmed = input.trim();
    let trimmed = trimmed.strip_prefix('+').unwrap_or(trimmed);
    let mut digits = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    if !(7..=15).contains(&digits.len()) || digits.starts_with('0') {
        return None;
    }
    let e164 = format!("+{digits}");
    phonenumber::parse(None, &e164).ok()?;
    Some(e164)
}

/// Digits of an E.164 number, without `+`.
pub(crate) fn digits(e164: &str) -> &str {
    e164.strip_prefix('+').unwrap_or(e164)
}

/// Meta's `display_phone_number` style, e.g. `+1 555-123-4567`
/// ([`crate::domain::values::display_phone_number`]).
pub(crate) fn display(e164: &str) -> String {
    crate::domain::values::display_phone_number(e164)
}

/// The other form of a Brazilian mobile number (with/without the mobile `9` after the area code),
/// if `e164` is a `+55` mobile number.
pub(crate) fn brazil_other_form(e164: &str) -> Option<String> {
    let rest = digits(e164).strip_prefix("55")?;
    if rest.len() < 3 {
        return None;
    }
    let (area, subscriber) = rest.split_at(2);
    match subscriber.len() {
        9 if subscriber.starts_with('9') => Some(format!("+55{area}{}", &subscriber[1..])),
        8 if matches!(subscriber.as_bytes()[0], b'6'..=b'9') => {
            Some(format!("+55{area}9{subscriber}"))
        }
        _ => None,
    }
}

/// Country calling code and national number of an E.164 number.
pub(crate) fn split_cc(e164: &str) -> Option<(String, String)> {
    let number = phonenumber::parse(None, e164).ok()?;
    let cc = number.code().value().to_string();
    let national = digits(e164).strip_prefix(cc.as_str())?.to_owned();
    Some((cc, national))
}
