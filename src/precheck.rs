//! The precheck report (DESIGN.md §2): read-only checks run before anything changes upstream,
//! by the `prechecking` step and by the synchronous `POST /v1/prechecks` dry run.
//!
//! [`gather`] reads what the checks need from the Graph API (in parallel); [`evaluate`] is pure
//! and unit-tested.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::clients::{self, MetaApi, PhoneNumber, SubscribedApp, Template, Waba};
use crate::domain::values::{E164, brazil_alternate_form, digits_only};
use crate::domain::{Actor, ErrorCode, Flow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

/// One check of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// Stable id, e.g. `destination_payment_method`.
    pub id: String,
    pub status: CheckStatus,
    pub message: String,
    /// What to do about it, in words a non-engineer can act on.
    pub remediation: String,
    /// Who must act.
    pub actor: Actor,
    /// Our error code when the check fails or warns about a known condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

/// What the source looked like before the migration, kept to show what was preserved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourceSnapshot {
    pub display_name: Option<String>,
    pub quality_rating: Option<String>,
    pub messaging_limit_tier: Option<String>,
    pub is_official_business_account: Option<bool>,
}

/// `precheck` of a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PrecheckReport {
    /// `fail` if any check failed, else `warn` if any warned, else `pass`.
    pub status: CheckStatus,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSnapshot>,
    /// The number's node in the destination WABA when it is already there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_phone_number_id: Option<String>,
    /// True when the destination already shows the number verified and connected.
    #[serde(default)]
    pub destination_registered: bool,
    #[serde(default)]
    pub destination_verified: bool,
}

/// The checks about the destination WABA: its review, its business, its payment method, its
/// subscribed apps, the number in it and the room for templates. What they say changes when an
/// Embedded Signup puts the number in a WABA of its own; the other checks are about the source
/// and the number as it was there.
pub const DESTINATION_CHECKS: [&str; 6] = [
    "destination_waba_approved",
    "same_business",
    "destination_payment_method",
    "destination_subscribed_app",
    "not_in_destination",
    "templates_eligible",
];

impl PrecheckReport {
    /// The first failing check's code.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.status == CheckStatus::Fail)
    }

    /// A report with no checks, for [`PrecheckReport::with_destination`] to build on when the
    /// first report is missing: only the fresh report's destination checks are taken then.
    pub fn empty() -> Self {
        Self {
            status: CheckStatus::Pass,
            checks: Vec::new(),
            source: None,
            destination_phone_number_id: None,
            destination_registered: false,
            destination_verified: false,
        }
    }

    /// This report with its [`DESTINATION_CHECKS`] and what it says about the number in the
    /// destination taken from `fresh`, a report made later against the WABA the number is in
    /// now. The checks about the source and the number as it was there, and the source
    /// snapshot, stay as this report has them: after the move, Graph may no longer show the
    /// number on the source, and its node in the new WABA is not what was checked.
    pub fn with_destination(mut self, fresh: PrecheckReport) -> PrecheckReport {
        let is_destination = |c: &Check| DESTINATION_CHECKS.contains(&c.id.as_str());
        let mut taken: Vec<Check> = fresh.checks.into_iter().filter(is_destination).collect();
        let mut checks = Vec::with_capacity(self.checks.len() + taken.len());
        for check in self.checks {
            if !is_destination(&check) {
                checks.push(check);
            } else if let Some(at) = taken.iter().position(|c| c.id == check.id) {
                checks.push(taken.remove(at));
            }
        }
        checks.extend(taken);
        self.status = status_of(&checks);
        self.checks = checks;
        self.destination_phone_number_id = fresh.destination_phone_number_id;
        self.destination_registered = fresh.destination_registered;
        self.destination_verified = fresh.destination_verified;
        self
    }
}

/// `fail` if any check failed, else `warn` if any warned, else `pass`.
fn status_of(checks: &[Check]) -> CheckStatus {
    if checks.iter().any(|c| c.status == CheckStatus::Fail) {
        CheckStatus::Fail
    } else if checks.iter().any(|c| c.status == CheckStatus::Warn) {
        CheckStatus::Warn
    } else {
        CheckStatus::Pass
    }
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct PrecheckInput {
    pub source: Waba,
    pub destination: Waba,
    pub source_numbers: Vec<PhoneNumber>,
    pub destination_numbers: Vec<PhoneNumber>,
    pub destination_apps: Vec<SubscribedApp>,
    pub source_templates: Vec<Template>,
    /// What already counts against the destination's template limit.
    pub destination_templates: Vec<Template>,
    /// `node.field` names Graph does not have in the configured version
    /// ([`MetaApi::unavailable_fields`]): the checks that read one report that they could not
    /// be made, instead of taking the absent field for a fact.
    pub unavailable_fields: Vec<String>,
}

impl PrecheckInput {
    /// The name of `field` (`node.field`) when Graph does not have it in the configured version.
    fn unread(&self, field: &'static str) -> Option<&'static str> {
        self.unavailable_fields
            .iter()
            .any(|u| u == field)
            .then(|| field.split_once('.').map_or(field, |(_, name)| name))
    }
}

/// Reads the inputs: seven Graph GETs in parallel (the two WABAs, the number looked up on each,
/// the destination's subscribed apps and both WABAs' templates), whatever the WABAs' size
/// (the template lists have one page per 100 templates).
///
/// The number is looked up directly ([`MetaApi::find_phone_numbers`]: Graph's `filtering` on
/// `display_phone_number`), not found by paging through every number of both WABAs. Meta
/// documents `filtering` on this edge only for `account_mode` (beta), so an answer is believed
/// only when it can be checked:
/// * every row is the number asked for (a Graph that ignores the filter answers others);
/// * "none" means absent only when the same filter found the number on the other WABA (or its
///   Brazilian other form on the source): that shows Graph matches the form we send.
///
/// Otherwise (Graph refuses the filter, ignores it, or finds the number on neither WABA) that
/// WABA's numbers are listed in full, page by page.
pub async fn gather(
    meta: &dyn MetaApi,
    phone: &E164,
    source_waba_id: &str,
    destination_waba_id: &str,
) -> Result<PrecheckInput, clients::Error> {
    let (
        source,
        destination,
        on_source,
        in_destination,
        destination_apps,
        templates,
        destination_templates,
    ) = tokio::try_join!(
        meta.get_waba(source_waba_id),
        meta.get_waba(destination_waba_id),
        lookup(meta, source_waba_id, phone.as_str()),
        lookup(meta, destination_waba_id, phone.as_str()),
        meta.list_subscribed_apps(destination_waba_id),
        meta.list_templates(source_waba_id),
        meta.list_templates(destination_waba_id),
    )?;
    let mut on_source = on_source;
    // Only the other form of a Brazilian mobile may be registered: the check names it.
    if let Some(alternate) = brazil_alternate_form(phone.as_str())
        && on_source.as_ref().is_some_and(Vec::is_empty)
    {
        on_source = lookup(meta, source_waba_id, &alternate).await?;
    }
    let found = |rows: &Option<Vec<PhoneNumber>>| rows.as_ref().is_some_and(|r| !r.is_empty());
    let proven = found(&on_source) || found(&in_destination);
    let believed = |rows: Option<Vec<PhoneNumber>>| rows.filter(|r| proven || !r.is_empty());
    let (source_numbers, destination_numbers) = tokio::try_join!(
        or_listed(meta, source_waba_id, believed(on_source)),
        or_listed(meta, destination_waba_id, believed(in_destination)),
    )?;
    Ok(PrecheckInput {
        source,
        destination,
        source_numbers,
        destination_numbers,
        destination_apps,
        source_templates: templates,
        destination_templates,
        unavailable_fields: meta.unavailable_fields(),
    })
}

/// The number `e164` on `waba_id`, looked up directly when Graph's answer can be believed
/// (see [`gather`]), else found in the full listing.
pub async fn find_number(
    meta: &dyn MetaApi,
    waba_id: &str,
    e164: &str,
) -> Result<Option<PhoneNumber>, clients::Error> {
    let rows = lookup(meta, waba_id, e164)
        .await?
        .filter(|rows| !rows.is_empty());
    let numbers = or_listed(meta, waba_id, rows).await?;
    Ok(find(&numbers, e164).cloned())
}

/// What the display-number filter answers for `e164` on `waba_id`, or `None` when Graph refused
/// it or answered another number (it ignored the filter).
async fn lookup(
    meta: &dyn MetaApi,
    waba_id: &str,
    e164: &str,
) -> Result<Option<Vec<PhoneNumber>>, clients::Error> {
    let Some(rows) = meta.find_phone_numbers(waba_id, e164).await? else {
        return Ok(None);
    };
    let only_this = rows.len() == rows.iter().filter(|n| is(n, e164)).count();
    Ok(only_this.then_some(rows))
}

async fn or_listed(
    meta: &dyn MetaApi,
    waba_id: &str,
    rows: Option<Vec<PhoneNumber>>,
) -> Result<Vec<PhoneNumber>, clients::Error> {
    match rows {
        Some(rows) => Ok(rows),
        None => meta.list_phone_numbers(waba_id).await,
    }
}

/// Whether a template is copied by Meta's template migration.
pub fn template_eligible(t: &Template) -> bool {
    t.status.eq_ignore_ascii_case("APPROVED")
        && t.quality_score
            .as_deref()
            .is_none_or(|q| q.eq_ignore_ascii_case("GREEN") || q.eq_ignore_ascii_case("UNKNOWN"))
}

fn find<'a>(numbers: &'a [PhoneNumber], e164: &str) -> Option<&'a PhoneNumber> {
    numbers.iter().find(|n| is(n, e164))
}

/// Whether `n` is the number `e164` (Graph shows it formatted: `+1 631-555-5555`).
fn is(n: &PhoneNumber, e164: &str) -> bool {
    let want = digits_only(e164);
    n.display_phone_number
        .as_deref()
        .is_some_and(|d| digits_only(d) == want)
}

struct Builder(Vec<Check>);

impl Builder {
    fn push(
        &mut self,
        id: &str,
        status: CheckStatus,
        message: impl Into<String>,
        remediation: impl Into<String>,
        actor: Actor,
        code: Option<ErrorCode>,
    ) {
        self.0.push(Check {
            id: id.into(),
            status,
            message: message.into(),
            remediation: remediation.into(),
            actor,
            code,
        });
    }
    fn pass(&mut self, id: &str, message: impl Into<String>) {
        self.push(id, CheckStatus::Pass, message, "", Actor::None, None);
    }
    fn code(&mut self, id: &str, status: CheckStatus, code: ErrorCode, message: impl Into<String>) {
        let (_, remediation, actor, _) = code.describe();
        self.push(id, status, message, remediation, actor, Some(code));
    }
    /// A check that needs `field`, which Graph does not return in the configured version.
    fn unreadable(&mut self, id: &str, field: &str) {
        self.push(
            id,
            CheckStatus::Warn,
            format!(
                "The Meta Graph API does not return `{field}` in the configured version, so this could not be checked."
            ),
            "Check it in WhatsApp Manager before the migration starts.",
            Actor::Partner,
            None,
        );
    }
}

/// `templates_eligible`: how many source templates are eligible (APPROVED with GREEN or
/// UNKNOWN quality), how many of those the destination lacks, and how many of these fit under
/// its template limit. Ineligible templates never block a migration; templates that do not
/// fit are a warning (copying stops at the limit, and the report lists the rest).
fn templates_check(b: &mut Builder, input: &PrecheckInput) {
    let key = |t: &Template| (t.name.clone(), t.language.clone());
    let present: std::collections::HashSet<(String, String)> =
        input.destination_templates.iter().map(key).collect();
    let total = input.source_templates.len();
    let eligible: Vec<&Template> = input
        .source_templates
        .iter()
        .filter(|t| template_eligible(t))
        .collect();
    let to_copy = eligible
        .iter()
        .filter(|t| !present.contains(&key(t)))
        .count();
    let already = eligible.len() - to_copy;
    let verified = is_verified(&input.destination);
    let limit = crate::domain::upstream::template_limit(verified);
    let used = input.destination_templates.len();
    let fits = to_copy.min(limit.saturating_sub(used));
    let mut message = format!(
        "{} of {total} source templates are eligible (APPROVED with GREEN or UNKNOWN quality)",
        eligible.len()
    );
    if already > 0 {
        message.push_str(&format!("; {already} already in the destination"));
    }
    if to_copy > 0 {
        message.push_str(&format!(
            "; {fits} of the {to_copy} to copy fit the destination's template limit ({used} of {limit} used)"
        ));
    }
    message.push('.');
    if fits < to_copy {
        let raise = if verified {
            ""
        } else if input.unread("waba.business_verification_status").is_some() {
            " The limit is 6,000 for a verified business, but the Meta Graph API does not return business_verification_status in the configured version, so 250 was assumed."
        } else {
            " Completing business verification raises the limit to 6,000."
        };
        b.push(
            "templates_eligible",
            CheckStatus::Warn,
            message,
            format!(
                "Delete templates the destination WABA no longer needs before the migration, or re-create the {} that do not fit after it.{raise}",
                to_copy - fits
            ),
            ErrorCode::TemplateLimitReached.describe().2,
            Some(ErrorCode::TemplateLimitReached),
        );
    } else {
        b.push(
            "templates_eligible",
            CheckStatus::Pass,
            message,
            if eligible.len() == total {
                ""
            } else {
                "Re-create ineligible templates in the destination WABA after the migration if they are still needed."
            },
            Actor::None,
            None,
        );
    }
}

/// Whether a WABA's business is verified (Graph answers lower case; Meta's OpenAPI description
/// has upper case).
fn is_verified(w: &Waba) -> bool {
    w.business_verification_status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("verified"))
}

/// The business a WABA represents: the client an On-Behalf-Of WABA is for (its owner is then
/// the partner), else its owner. Meta requires source and destination to represent the same
/// business.
fn represented_business(w: &Waba) -> Option<&str> {
    w.on_behalf_of_business_info
        .as_ref()
        .or(w.owner_business_info.as_ref())
        .map(|b| b.id.as_str())
}

/// `same_business`: the destination (and, while the number is still to move, the source)
/// represents the business the request names.
fn same_business_check(
    b: &mut Builder,
    input: &PrecheckInput,
    meta_business_id: &str,
    source_ahead: bool,
) {
    const ID: &str = "same_business";
    if let Some(f) = input.unread("waba.owner_business_info") {
        return b.unreadable(ID, f);
    }
    let dst = represented_business(&input.destination);
    let src = represented_business(&input.source);
    let sides: &[Option<&str>] = if source_ahead { &[src, dst] } else { &[dst] };
    let differs = sides
        .iter()
        .any(|side| side.is_some_and(|b| b != meta_business_id));
    let named = |side: Option<&str>| side.unwrap_or("unknown").to_owned();
    if differs {
        let message = if source_ahead {
            format!(
                "The source WABA represents business {}, the destination {}, and the request names {meta_business_id}; all three must be the same.",
                named(src),
                named(dst)
            )
        } else {
            format!(
                "The destination WABA represents business {}, not {meta_business_id}.",
                named(dst)
            )
        };
        return b.code(ID, CheckStatus::Fail, ErrorCode::BusinessMismatch, message);
    }
    if sides.iter().any(Option::is_none) {
        return b.push(
            ID,
            CheckStatus::Warn,
            "The Meta Graph API did not return which business owns the source or destination WABA, so whether they represent the same business could not be checked.",
            "Check that the system user of META_ACCESS_TOKEN can read both WABAs, and that both belong to (or message on behalf of) the given Meta business.",
            Actor::Partner,
            None,
        );
    }
    if source_ahead {
        b.pass(
            ID,
            "Source and destination WABAs represent the same business as given.",
        );
    } else {
        b.pass(
            ID,
            "The destination WABA represents the given Meta business.",
        );
    }
}

/// Whether an Embedded Signup is known to be done when the checks are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    /// Not known to be done (the OTP flow, or a first precheck).
    NotKnownDone,
    /// Done: 360dialog lists the channel (`awaiting_signup`'s second look). The source is not
    /// judged again, even while Graph does not list the number in its new WABA yet.
    Done,
}

/// Evaluates every check. Pure.
pub fn evaluate(
    flow: Flow,
    phone: &E164,
    meta_business_id: &str,
    input: &PrecheckInput,
    signup: Signup,
) -> PrecheckReport {
    use CheckStatus::*;
    let mut b = Builder(Vec::new());
    let src = &input.source;
    let dst = &input.destination;
    let in_dst = find(&input.destination_numbers, phone.as_str());
    let on_src = find(&input.source_numbers, phone.as_str());
    // Embedded Signup moves the number itself; until it has (the number is not in the
    // destination yet), what it requires of the source is checked as for the OTP flow
    // (MIG-ES: the existing WABA approved, the same business, two-step verification off).
    let source_ahead = flow == Flow::Otp || (in_dst.is_none() && signup == Signup::NotKnownDone);

    match src.business_verification_status.as_deref() {
        _ if let Some(f) = input.unread("waba.business_verification_status") => {
            b.unreadable("business_verified", f);
        }
        _ if is_verified(src) => b.pass(
            "business_verified",
            "The client's business portfolio is verified.",
        ),
        other => b.code(
            "business_verified",
            Fail,
            ErrorCode::BusinessNotVerified,
            format!(
                "Business verification status is `{}`; it must be `verified`.",
                other.unwrap_or("unknown")
            ),
        ),
    }

    let approved = |w: &Waba| {
        w.account_review_status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("APPROVED"))
    };
    let review_unread = input.unread("waba.account_review_status");
    if source_ahead {
        if let Some(f) = review_unread {
            b.unreadable("source_waba_approved", f);
        } else if approved(src) {
            b.pass("source_waba_approved", "The source WABA is approved.");
        } else {
            b.code(
                "source_waba_approved",
                Fail,
                ErrorCode::SourceWabaNotApproved,
                format!(
                    "The source WABA review status is `{}`.",
                    src.account_review_status.as_deref().unwrap_or("unknown")
                ),
            );
        }
    }
    if let Some(f) = review_unread {
        b.unreadable("destination_waba_approved", f);
    } else if approved(dst) {
        b.pass(
            "destination_waba_approved",
            "The destination WABA is approved.",
        );
    } else {
        b.code(
            "destination_waba_approved",
            Fail,
            ErrorCode::DestinationWabaNotApproved,
            format!(
                "The destination WABA review status is `{}`.",
                dst.account_review_status.as_deref().unwrap_or("unknown")
            ),
        );
    }

    same_business_check(&mut b, input, meta_business_id, source_ahead);

    if let Some(f) = input.unread("waba.primary_funding_id") {
        b.unreadable("destination_payment_method", f);
    } else if dst
        .primary_funding_id
        .as_deref()
        .is_some_and(|f| !f.is_empty())
    {
        b.pass(
            "destination_payment_method",
            "The destination WABA has a payment method.",
        );
    } else {
        b.code(
            "destination_payment_method",
            Fail,
            ErrorCode::DestinationNoPaymentMethod,
            "The destination WABA has no payment method (no primary_funding_id).",
        );
    }

    if input.destination_apps.is_empty() {
        b.code(
            "destination_subscribed_app",
            Fail,
            ErrorCode::DestinationNoSubscribedApp,
            "No app is subscribed to the destination WABA's webhooks.",
        );
    } else {
        b.pass(
            "destination_subscribed_app",
            "An app is subscribed to the destination WABA.",
        );
    }

    let node = on_src.or(in_dst);

    match (on_src, in_dst, flow) {
        (Some(_), _, _) => b.pass(
            "number_on_source",
            format!("{phone} is registered on the source WABA."),
        ),
        (None, Some(_), _) => b.pass(
            "number_on_source",
            format!("{phone} is already on the destination WABA."),
        ),
        (None, None, flow) => {
            let alternate = brazil_alternate_form(phone.as_str())
                .filter(|alt| find(&input.source_numbers, alt).is_some());
            match alternate {
                Some(alt) => b.code(
                    "number_on_source",
                    Fail,
                    ErrorCode::BrazilNinthDigitMismatch,
                    format!(
                        "{phone} is not on the source WABA, but {alt} is: the number is registered {} the mobile 9. Create the migration with {alt}.",
                        if alt.len() > phone.as_str().len() { "with" } else { "without" }
                    ),
                ),
                None if flow == Flow::EmbeddedSignup => b.push(
                    "number_on_source",
                    Warn,
                    format!("{phone} is not listed on either WABA yet."),
                    "If Embedded Signup just finished, wait a few minutes; otherwise check the number.",
                    Actor::Partner,
                    None,
                ),
                None => b.code(
                    "number_on_source",
                    Fail,
                    ErrorCode::NumberNotFoundOnSource,
                    format!("{phone} is not registered on source WABA {}.", src.id),
                ),
            }
        }
    }

    if let Some(n) = node {
        let name_ok = n
            .name_status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("APPROVED"));
        let change_pending = n.new_name_status.as_deref().is_some_and(|s| {
            s.eq_ignore_ascii_case("PENDING_REVIEW") || s.eq_ignore_ascii_case("PENDING")
        });
        if let Some(f) = input.unread("phone_number.name_status") {
            b.unreadable("display_name_approved", f);
        } else if n.name_status.is_none() {
            b.push(
                "display_name_approved",
                Warn,
                "The Meta Graph API did not return the display name's status (`name_status`) for this number, so its approval could not be checked.",
                "Check in WhatsApp Manager that the display name is approved and no name change is pending; otherwise the migration fails with display_name_not_approved.",
                Actor::Partner,
                None,
            );
        } else if !name_ok {
            b.code(
                "display_name_approved",
                Fail,
                ErrorCode::DisplayNameNotApproved,
                format!(
                    "The display name status is `{}`; it must be APPROVED.",
                    n.name_status.as_deref().unwrap_or("unknown")
                ),
            );
        } else if let Some(f) = input.unread("phone_number.new_name_status") {
            b.unreadable("display_name_approved", f);
        } else if change_pending {
            b.code(
                "display_name_approved",
                Fail,
                ErrorCode::DisplayNameNotApproved,
                "A display-name change is pending review; migration is blocked until it is decided.",
            );
        } else {
            b.pass(
                "display_name_approved",
                format!(
                    "Display name {} is approved.",
                    n.verified_name.as_deref().unwrap_or("(unnamed)")
                ),
            );
        }
        if let Some(f) = input.unread("phone_number.account_mode") {
            b.unreadable("not_whatsapp_issued", f);
        } else if n
            .account_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("SANDBOX"))
        {
            b.code(
                "not_whatsapp_issued",
                Fail,
                ErrorCode::WhatsappIssuedNumber,
                "This is a test number issued by WhatsApp.",
            );
        } else {
            b.pass("not_whatsapp_issued", "Not a WhatsApp-issued test number.");
        }
        if let Some(f) = input.unread("phone_number.is_on_biz_app") {
            b.unreadable("not_on_business_app", f);
        } else if n.is_on_biz_app == Some(true) {
            b.code(
                "not_on_business_app",
                Fail,
                ErrorCode::NumberOnBusinessApp,
                "The number is in use on the WhatsApp Business app.",
            );
        } else {
            b.pass(
                "not_on_business_app",
                "The number is not on the WhatsApp Business app.",
            );
        }
    }

    let mut destination_registered = false;
    let mut destination_verified = false;
    match in_dst {
        Some(n) => {
            destination_verified = n
                .code_verification_status
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("VERIFIED"));
            destination_registered = destination_verified
                && n.status
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("CONNECTED"));
            if flow == Flow::EmbeddedSignup {
                b.pass(
                    "not_in_destination",
                    "The number is in the destination WABA, as Embedded Signup leaves it.",
                );
            } else {
                b.code(
                    "not_in_destination",
                    Warn,
                    ErrorCode::AlreadyInDestination,
                    "The number is already in the destination WABA: steps already done are skipped.",
                );
            }
        }
        None => b.pass(
            "not_in_destination",
            "The number is not yet in the destination WABA.",
        ),
    }

    if source_ahead {
        b.push(
            "two_factor_disabled",
            Warn,
            "Two-step verification cannot be read through the API.",
            "Make sure the client (or the current provider) has turned off two-step verification in WhatsApp Manager before the migration starts; otherwise it fails with two_factor_enabled.",
            Actor::Client,
            None,
        );
    }

    templates_check(&mut b, input);

    PrecheckReport {
        status: status_of(&b.0),
        checks: b.0,
        source: on_src.map(|n| SourceSnapshot {
            display_name: n.verified_name.clone(),
            quality_rating: n.quality_rating.clone(),
            messaging_limit_tier: n.messaging_limit_tier.clone(),
            is_official_business_account: n.is_official_business_account,
        }),
        destination_phone_number_id: in_dst.map(|n| n.id.clone()),
        destination_registered,
        destination_verified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::BusinessInfo;

    fn waba(id: &str, owner: &str) -> Waba {
        Waba {
            id: id.into(),
            account_review_status: Some("APPROVED".into()),
            business_verification_status: Some("verified".into()),
            owner_business_info: Some(BusinessInfo {
                id: owner.into(),
                name: None,
            }),
            primary_funding_id: Some("77".into()),
            ..Default::default()
        }
    }

    fn number(id: &str, display: &str) -> PhoneNumber {
        PhoneNumber {
            id: id.into(),
            display_phone_number: Some(display.into()),
            verified_name: Some("Acme".into()),
            name_status: Some("APPROVED".into()),
            quality_rating: Some("GREEN".into()),
            ..Default::default()
        }
    }

    fn input() -> PrecheckInput {
        PrecheckInput {
            source: waba("1", "900"),
            destination: waba("2", "900"),
            source_numbers: vec![number("11", "+55 11 98765-4321")],
            destination_numbers: vec![],
            destination_apps: vec![SubscribedApp::default()],
            source_templates: vec![
                Template {
                    id: "t1".into(),
                    name: "a".into(),
                    language: "en_US".into(),
                    status: "APPROVED".into(),
                    quality_score: Some("GREEN".into()),
                    ..Default::default()
                },
                Template {
                    id: "t2".into(),
                    name: "b".into(),
                    language: "en_US".into(),
                    status: "REJECTED".into(),
                    ..Default::default()
                },
            ],
            destination_templates: vec![],
            unavailable_fields: vec![],
        }
    }

    fn phone() -> E164 {
        E164::parse("+5511987654321").unwrap()
    }

    fn check<'a>(r: &'a PrecheckReport, id: &str) -> &'a Check {
        r.checks.iter().find(|c| c.id == id).unwrap()
    }

    #[test]
    fn a_field_graph_does_not_have_makes_its_check_a_warning_not_a_verdict() {
        let mut i = input();
        // Absent because Graph no longer has them, not because the WABA lacks a payment method
        // or the number is on the app.
        i.destination.primary_funding_id = None;
        i.source_numbers[0].is_on_biz_app = Some(true);
        i.unavailable_fields = vec![
            "waba.primary_funding_id".into(),
            "phone_number.is_on_biz_app".into(),
            "phone_number.new_name_status".into(),
        ];
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert!(r.failure().is_none(), "{r:#?}");
        for (id, field) in [
            ("destination_payment_method", "primary_funding_id"),
            ("not_on_business_app", "is_on_biz_app"),
            ("display_name_approved", "new_name_status"),
        ] {
            let c = check(&r, id);
            assert_eq!(c.status, CheckStatus::Warn, "{c:#?}");
            assert!(c.message.contains(&format!("`{field}`")), "{c:#?}");
            assert_eq!(c.code, None);
        }
        // The checks whose fields Graph has are made as before: a declined name still fails
        // when only the pending-change field is missing.
        assert_eq!(check(&r, "business_verified").status, CheckStatus::Pass);
        let mut declined = i.clone();
        declined.source_numbers[0].name_status = Some("DECLINED".into());
        let r = evaluate(Flow::Otp, &phone(), "900", &declined, Signup::NotKnownDone);
        assert_eq!(
            check(&r, "display_name_approved").code,
            Some(ErrorCode::DisplayNameNotApproved)
        );
        i.unavailable_fields.clear();
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert_eq!(
            check(&r, "destination_payment_method").code,
            Some(ErrorCode::DestinationNoPaymentMethod)
        );
    }

    #[test]
    fn happy_input_passes_with_warnings_only() {
        let r = evaluate(Flow::Otp, &phone(), "900", &input(), Signup::NotKnownDone);
        assert_eq!(r.status, CheckStatus::Warn, "{r:#?}");
        assert!(r.failure().is_none());
        assert_eq!(check(&r, "two_factor_disabled").status, CheckStatus::Warn);
        assert_eq!(check(&r, "templates_eligible").status, CheckStatus::Pass);
        // Only two-step verification warns for a good number.
        let warned: Vec<_> = r
            .checks
            .iter()
            .filter(|c| c.status != CheckStatus::Pass)
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(warned, ["two_factor_disabled"]);
        assert!(
            check(&r, "templates_eligible")
                .message
                .starts_with("1 of 2")
        );
        assert_eq!(
            r.source.as_ref().unwrap().display_name.as_deref(),
            Some("Acme")
        );
    }

    #[test]
    fn templates_that_do_not_fit_the_destinations_limit_warn() {
        let template = |name: &str, language: &str| Template {
            id: format!("{name}-{language}"),
            name: name.into(),
            language: language.into(),
            status: "APPROVED".into(),
            quality_score: Some("GREEN".into()),
            ..Default::default()
        };
        let mut i = input();
        // Three eligible on the source; `a`/en_US is already in the destination.
        i.source_templates
            .extend([template("c", "en_US"), template("c", "de_DE")]);
        let filler = |n: usize| (0..n).map(|k| template(&format!("x{k}"), "en_US"));
        i.destination_templates = std::iter::once(template("a", "en_US"))
            .chain(filler(6000 - 2))
            .collect();
        let eligible_check = |i: &PrecheckInput| {
            check(
                &evaluate(Flow::Otp, &phone(), "900", i, Signup::NotKnownDone),
                "templates_eligible",
            )
            .clone()
        };
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        let c = check(&r, "templates_eligible");
        assert_eq!(c.status, CheckStatus::Warn, "{c:#?}");
        assert_eq!(
            c.message,
            "3 of 4 source templates are eligible (APPROVED with GREEN or UNKNOWN quality); 1 already in the destination; 1 of the 2 to copy fit the destination's template limit (5999 of 6000 used)."
        );
        assert_eq!(c.code, Some(ErrorCode::TemplateLimitReached));
        assert_eq!(c.actor, Actor::Partner);
        assert!(c.remediation.contains("re-create the 1 that do not fit"));
        assert_eq!(r.status, CheckStatus::Warn);
        assert!(r.failure().is_none());

        // An unverified portfolio's limit is 250.
        i.destination.business_verification_status = Some("not_verified".into());
        i.destination_templates.truncate(249);
        let c = eligible_check(&i);
        assert!(
            c.message.ends_with(
                "1 of the 2 to copy fit the destination's template limit (249 of 250 used)."
            ),
            "{}",
            c.message
        );
        assert!(c.remediation.contains("raises the limit to 6,000"));

        // Nothing left to copy: no word about room.
        let mut all_there = i.clone();
        all_there.destination_templates = all_there.source_templates.clone();
        let c = eligible_check(&all_there);
        assert_eq!(c.status, CheckStatus::Pass);
        assert_eq!(
            c.message,
            "3 of 4 source templates are eligible (APPROVED with GREEN or UNKNOWN quality); 3 already in the destination."
        );

        // Room for both: a pass.
        i.destination_templates.truncate(10);
        let c = eligible_check(&i);
        assert_eq!(c.status, CheckStatus::Pass);
        assert!(
            c.message.ends_with(
                "2 of the 2 to copy fit the destination's template limit (10 of 250 used)."
            ),
            "{}",
            c.message
        );
    }

    #[test]
    fn business_mismatch_fails() {
        let mut i = input();
        i.source.owner_business_info = Some(BusinessInfo {
            id: "901".into(),
            name: None,
        });
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert_eq!(r.failure().unwrap().code, Some(ErrorCode::BusinessMismatch));
        // Also when the request names another business.
        let r = evaluate(Flow::Otp, &phone(), "555", &input(), Signup::NotKnownDone);
        assert_eq!(r.failure().unwrap().code, Some(ErrorCode::BusinessMismatch));
    }

    #[test]
    fn embedded_signup_checks_the_source_until_the_number_has_moved() {
        let mut i = input();
        i.source.account_review_status = Some("PENDING".into());
        i.source.owner_business_info = Some(BusinessInfo {
            id: "901".into(),
            name: None,
        });
        let r = evaluate(
            Flow::EmbeddedSignup,
            &phone(),
            "900",
            &i,
            Signup::NotKnownDone,
        );
        let failed: Vec<_> = r
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.code.unwrap())
            .collect();
        assert_eq!(
            failed,
            [
                ErrorCode::SourceWabaNotApproved,
                ErrorCode::BusinessMismatch
            ]
        );
        assert_eq!(check(&r, "two_factor_disabled").status, CheckStatus::Warn);

        // Only the other Brazilian form is on the source: the signup would never show a
        // channel for the number as given.
        let mut i = input();
        i.source_numbers = vec![number("11", "+55 11 8765-4321")];
        let r = evaluate(
            Flow::EmbeddedSignup,
            &phone(),
            "900",
            &i,
            Signup::NotKnownDone,
        );
        let f = r.failure().unwrap();
        assert_eq!(f.code, Some(ErrorCode::BrazilNinthDigitMismatch));
        assert!(f.message.contains("+551187654321"), "{}", f.message);

        // Once the number is in the destination, the signup is done: the source is not
        // judged again, and two-step verification no longer matters.
        let mut i = input();
        i.source.account_review_status = Some("PENDING".into());
        i.source.owner_business_info = Some(BusinessInfo {
            id: "901".into(),
            name: None,
        });
        i.destination_numbers = vec![number("22", "+5511987654321")];
        let r = evaluate(
            Flow::EmbeddedSignup,
            &phone(),
            "900",
            &i,
            Signup::NotKnownDone,
        );
        assert!(r.failure().is_none(), "{r:#?}");
        assert!(r.checks.iter().all(|c| c.id != "source_waba_approved"));
        assert!(r.checks.iter().all(|c| c.id != "two_factor_disabled"));
        assert_eq!(check(&r, "same_business").status, CheckStatus::Pass);

        // Once 360dialog lists the signup's channel, the source is not judged again, even
        // while Graph does not list the number in its new WABA yet.
        let mut i = input();
        i.source.owner_business_info = Some(BusinessInfo {
            id: "901".into(),
            name: None,
        });
        let r = evaluate(Flow::EmbeddedSignup, &phone(), "900", &i, Signup::Done);
        assert_eq!(
            check(&r, "same_business").status,
            CheckStatus::Pass,
            "{r:#?}"
        );
        assert!(r.checks.iter().all(|c| c.id != "source_waba_approved"));
    }

    #[test]
    fn an_on_behalf_of_waba_represents_its_client() {
        // The partner (business 360) owns the destination on behalf of the client (900); the
        // old provider (500) owns the source the same way.
        let mut i = input();
        i.destination = waba("2", "360");
        i.destination.on_behalf_of_business_info = Some(BusinessInfo {
            id: "900".into(),
            name: None,
        });
        i.source = waba("1", "500");
        i.source.on_behalf_of_business_info = Some(BusinessInfo {
            id: "900".into(),
            name: None,
        });
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert_eq!(check(&r, "same_business").status, CheckStatus::Pass);
        // On behalf of another client: a mismatch naming the represented businesses.
        i.destination.on_behalf_of_business_info = Some(BusinessInfo {
            id: "901".into(),
            name: None,
        });
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        let c = check(&r, "same_business");
        assert_eq!(c.code, Some(ErrorCode::BusinessMismatch));
        assert!(c.message.contains("901"), "{}", c.message);
    }

    #[test]
    fn fields_graph_left_out_warn_instead_of_deciding() {
        let mut i = input();
        i.source_numbers[0].name_status = None;
        i.source.owner_business_info = None;
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert!(r.failure().is_none(), "{r:#?}");
        for id in ["display_name_approved", "same_business"] {
            assert_eq!(check(&r, id).status, CheckStatus::Warn, "{id}");
            assert_eq!(check(&r, id).code, None, "{id}");
        }
        // One side unknown, the other known to be another business: a mismatch still.
        let mut i = input();
        i.source.owner_business_info = None;
        i.destination = waba("2", "999");
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        let c = check(&r, "same_business");
        assert_eq!(c.code, Some(ErrorCode::BusinessMismatch), "{c:#?}");
        assert!(
            c.message.contains("unknown") && c.message.contains("999"),
            "{}",
            c.message
        );
        // Meta's OpenAPI description spells the verification status in upper case.
        let mut i = input();
        i.source.business_verification_status = Some("VERIFIED".into());
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert_eq!(check(&r, "business_verified").status, CheckStatus::Pass);
    }

    #[test]
    fn brazil_ninth_digit_names_the_registered_form() {
        let mut i = input();
        i.source_numbers = vec![number("11", "+55 11 8765-4321")];
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        let f = r.failure().unwrap();
        assert_eq!(f.code, Some(ErrorCode::BrazilNinthDigitMismatch));
        assert!(f.message.contains("+551187654321"), "{}", f.message);
        assert!(f.message.contains("without"));
    }

    #[test]
    fn missing_number_payment_and_apps_fail() {
        let mut i = input();
        i.source_numbers.clear();
        i.destination.primary_funding_id = None;
        i.destination_apps.clear();
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        let failed: Vec<_> = r
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.code.unwrap())
            .collect();
        assert_eq!(
            failed,
            [
                ErrorCode::DestinationNoPaymentMethod,
                ErrorCode::DestinationNoSubscribedApp,
                ErrorCode::NumberNotFoundOnSource
            ]
        );
    }

    #[test]
    fn already_in_destination_is_a_warning_with_its_state() {
        let mut i = input();
        let mut n = number("22", "+5511987654321");
        n.code_verification_status = Some("VERIFIED".into());
        n.status = Some("CONNECTED".into());
        i.destination_numbers = vec![n];
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        assert!(r.failure().is_none());
        assert_eq!(
            check(&r, "not_in_destination").code,
            Some(ErrorCode::AlreadyInDestination)
        );
        assert_eq!(r.destination_phone_number_id.as_deref(), Some("22"));
        assert!(r.destination_registered);
    }

    #[test]
    fn a_later_destination_report_replaces_only_the_destination_checks() {
        // The first report: before the signup, the number on the source only.
        let before = evaluate(
            Flow::EmbeddedSignup,
            &phone(),
            "900",
            &input(),
            Signup::NotKnownDone,
        );
        assert_eq!(before.status, CheckStatus::Warn, "{before:#?}");
        assert_eq!(before.failure(), None);
        // After it: the number moved to a new WABA of another business, without a payment
        // method; the source no longer lists it, and its node there has a name under review.
        let mut i = input();
        i.destination = waba("3", "901");
        i.destination.primary_funding_id = None;
        let mut moved = number("33", "+5511987654321");
        moved.name_status = Some("PENDING_REVIEW".into());
        i.destination_numbers = vec![moved];
        i.source_numbers = vec![];
        let fresh = evaluate(
            Flow::EmbeddedSignup,
            &phone(),
            "900",
            &i,
            Signup::NotKnownDone,
        );
        assert_eq!(
            check(&fresh, "display_name_approved").status,
            CheckStatus::Fail
        );

        let merged = before.clone().with_destination(fresh);
        assert_eq!(merged.status, CheckStatus::Fail);
        let ids = |r: &PrecheckReport| r.checks.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&merged), ids(&before), "same checks, same order");
        for c in &merged.checks {
            let was = check(&before, &c.id);
            if DESTINATION_CHECKS.contains(&c.id.as_str()) {
                continue;
            }
            assert_eq!(c, was, "{} is about the source: kept", c.id);
        }
        assert_eq!(check(&merged, "same_business").status, CheckStatus::Fail);
        assert_eq!(
            check(&merged, "destination_payment_method").code,
            Some(ErrorCode::DestinationNoPaymentMethod)
        );
        assert_eq!(merged.source, before.source);
        assert!(merged.source.is_some());
        assert_eq!(merged.destination_phone_number_id.as_deref(), Some("33"));
    }

    #[test]
    fn display_name_test_number_and_app_numbers_fail() {
        let mut i = input();
        i.source_numbers[0].name_status = Some("PENDING_REVIEW".into());
        i.source_numbers[0].account_mode = Some("SANDBOX".into());
        i.source_numbers[0].is_on_biz_app = Some(true);
        let r = evaluate(Flow::Otp, &phone(), "900", &i, Signup::NotKnownDone);
        for (id, code) in [
            ("display_name_approved", ErrorCode::DisplayNameNotApproved),
            ("not_whatsapp_issued", ErrorCode::WhatsappIssuedNumber),
            ("not_on_business_app", ErrorCode::NumberOnBusinessApp),
        ] {
            assert_eq!(check(&r, id).status, CheckStatus::Fail);
            assert_eq!(check(&r, id).code, Some(code));
        }
    }

    #[test]
    fn eligibility_rule() {
        let t = |status: &str, q: Option<&str>| Template {
            status: status.into(),
            quality_score: q.map(Into::into),
            ..Default::default()
        };
        assert!(template_eligible(&t("APPROVED", Some("GREEN"))));
        assert!(template_eligible(&t("APPROVED", Some("UNKNOWN"))));
        assert!(!template_eligible(&t("APPROVED", Some("RED"))));
        assert!(!template_eligible(&t("PENDING", Some("GREEN"))));
    }
}

/// [`gather`] against a Graph stand-in over HTTP, counting the phone-number reads.
#[cfg(test)]
mod gather_tests {
    use std::collections::HashMap;

    use secrecy::SecretString;
    use serde_json::{Value, json};
    use url::Url;
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    use super::*;
    use crate::clients::MetaClient;
    use crate::domain::values::display_phone_number;

    const SOURCE: &str = "1001";
    const DEST: &str = "2002";
    const BUSINESS: &str = "777";
    const PHONE: &str = "+14155550123";

    /// What the stand-in does with `filtering` on `/{waba}/phone_numbers`.
    #[derive(Clone, Copy)]
    enum Filter {
        Honoured,
        /// Graph error 100, as for an unknown parameter.
        Refused,
        /// Answered as if it were not there.
        Ignored,
    }

    struct Graph {
        filter: Filter,
        /// WABA → display numbers, in listing order.
        numbers: HashMap<&'static str, Vec<String>>,
    }

    impl Respond for Graph {
        fn respond(&self, req: &Request) -> ResponseTemplate {
            let path: Vec<&str> = req.url.path().split('/').skip(2).collect();
            let query: HashMap<String, String> = req.url.query_pairs().into_owned().collect();
            let ok = |v: Value| ResponseTemplate::new(200).set_body_json(v);
            match path.as_slice() {
                [waba] => ok(json!({
                    "id": waba, "account_review_status": "APPROVED",
                    "business_verification_status": "verified",
                    "owner_business_info": {"id": BUSINESS, "name": "Acme"},
                    "primary_funding_id": "555",
                })),
                [_, "subscribed_apps"] => ok(json!({"data": [
                    {"whatsapp_business_api_data": {"id": "1", "name": "App"}}
                ]})),
                [_, "message_templates"] => ok(json!({"data": []})),
                [waba, "phone_numbers"] => {
                    let all = &self.numbers[waba];
                    let mut rows: Vec<Value> = all
                        .iter()
                        .enumerate()
                        .map(|(i, d)| json!({"id": format!("{waba}{i:05}"), "display_phone_number": d}))
                        .collect();
                    if let Some(filtering) = query.get("filtering") {
                        match self.filter {
                            Filter::Refused => {
                                return ResponseTemplate::new(400).set_body_json(json!({
                                    "error": {"message": "Invalid parameter", "type": "OAuthException",
                                              "code": 100, "fbtrace_id": "T"}
                                }));
                            }
                            Filter::Ignored => {}
                            Filter::Honoured => {
                                let f: Value = serde_json::from_str(filtering).unwrap();
                                assert_eq!(f[0]["field"], "display_phone_number");
                                assert_eq!(f[0]["operator"], "EQUAL");
                                rows.retain(|r| r["display_phone_number"] == f[0]["value"]);
                            }
                        }
                    }
                    let start: usize = query
                        .get("after")
                        .map_or(0, |a| a.parse::<usize>().unwrap() + 1);
                    let page: Vec<Value> = rows.iter().skip(start).take(100).cloned().collect();
                    let last = start + page.len();
                    let mut body = json!({"data": page});
                    if last < rows.len() {
                        body["paging"] = json!({"cursors": {"after": (last - 1).to_string()},
                                                "next": "https://graph.invalid/next"});
                    }
                    ok(body)
                }
                other => panic!("unexpected request {other:?}"),
            }
        }
    }

    /// `count` numbers shown like Meta shows them, none of them `PHONE`.
    fn fillers(exchange: u32, count: u32) -> Vec<String> {
        (0..count)
            .map(|i| display_phone_number(&format!("+1415{exchange}{:04}", 1000 + i)))
            .collect()
    }

    /// Runs `gather` for `PHONE`; returns the report and the phone-number reads as
    /// (filtered, listed page).
    async fn run(
        filter: Filter,
        source: Vec<String>,
        dest: Vec<String>,
    ) -> (PrecheckReport, usize, usize) {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(Graph {
                filter,
                numbers: HashMap::from([(SOURCE, source), (DEST, dest)]),
            })
            .mount(&server)
            .await;
        let meta = MetaClient::new(
            Url::parse(&server.uri()).unwrap(),
            "v23.0".into(),
            SecretString::from("token"),
            reqwest::Client::new(),
        );
        let phone = E164::parse(PHONE).unwrap();
        let input = gather(&meta, &phone, SOURCE, DEST).await.unwrap();
        let report = evaluate(Flow::Otp, &phone, BUSINESS, &input, Signup::NotKnownDone);
        let reads: Vec<Request> = server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.url.path().ends_with("/phone_numbers"))
            .collect();
        let filtered = reads
            .iter()
            .filter(|r| r.url.query_pairs().any(|(k, _)| k == "filtering"))
            .count();
        (report, filtered, reads.len() - filtered)
    }

    fn status_of(report: &PrecheckReport, id: &str) -> CheckStatus {
        report.checks.iter().find(|c| c.id == id).unwrap().status
    }

    fn with_phone(mut numbers: Vec<String>) -> Vec<String> {
        numbers.push(display_phone_number(PHONE));
        numbers
    }

    #[tokio::test]
    async fn thousands_of_numbers_cost_one_read_per_waba() {
        let (report, filtered, listed) = run(
            Filter::Honoured,
            with_phone(fillers(201, 3000)),
            fillers(202, 3000),
        )
        .await;
        assert_eq!((filtered, listed), (2, 0));
        assert_eq!(status_of(&report, "number_on_source"), CheckStatus::Pass);
        assert_eq!(status_of(&report, "not_in_destination"), CheckStatus::Pass);
        assert_eq!(report.destination_phone_number_id, None);
    }

    #[tokio::test]
    async fn a_refused_or_ignored_filter_falls_back_to_listing_every_page() {
        for filter in [Filter::Refused, Filter::Ignored] {
            let (report, filtered, listed) = run(
                filter,
                with_phone(fillers(201, 250)),
                with_phone(fillers(202, 150)),
            )
            .await;
            // 251 numbers are 3 pages, 151 are 2.
            assert_eq!((filtered, listed), (2, 5));
            assert_eq!(status_of(&report, "number_on_source"), CheckStatus::Pass);
            assert_eq!(status_of(&report, "not_in_destination"), CheckStatus::Warn);
            assert!(report.destination_phone_number_id.is_some());
        }
    }

    #[tokio::test]
    async fn finding_the_number_nowhere_is_confirmed_by_listing() {
        // The filter may not match the form we send: an empty answer on both WABAs proves
        // nothing, so both are listed before the number is reported missing.
        let (report, filtered, listed) =
            run(Filter::Honoured, fillers(201, 150), fillers(202, 50)).await;
        assert_eq!((filtered, listed), (2, 3));
        assert_eq!(status_of(&report, "number_on_source"), CheckStatus::Fail);
        // Found only by listing (the filter missed it): still found.
        let mut source = fillers(201, 150);
        source.push("+1 (415) 555 0123".into());
        let (report, _, listed) = run(Filter::Honoured, source, fillers(202, 50)).await;
        assert_eq!(listed, 3);
        assert_eq!(status_of(&report, "number_on_source"), CheckStatus::Pass);
    }
}
