//! The client page as `maud` templates (every value HTML-escaped) from a [`PageModel`].
//!
//! Mobile-first and accessible: `<html lang>`, one `<h1>`, labelled inputs, progress as an
//! ordered list with `aria-current="step"`, notices in a `role="status"`/`role="alert"` region,
//! states written out (a symbol and a word, never colour alone). It works without JavaScript:
//! plain forms, and a `<noscript>` refresh on the phases that move by themselves. There is no
//! inline script, no inline style and no event-handler attribute (the CSP forbids them).
//!
//! Nothing secret reaches a template: the model has the number masked to its last 4 digits and
//! no code, PIN, key or upstream detail (trace ids, Meta codes).

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::i18n::{Arg, Lang};
use crate::db::migrations::MigrationRow;
use crate::domain::{Actor, Flow, MigrationState, OtpMethod};
use crate::precheck::{CheckStatus, PrecheckReport};

/// Where the stylesheet ([`super::PAGE_CSS`]) is served.
pub const CSS_PATH: &str = "/c/assets/page.css";
/// Where the script ([`super::PAGE_JS`]) is served.
pub const JS_PATH: &str = "/c/assets/page.js";

/// Seconds between two `<noscript>` refreshes of a page that moves by itself.
const NOSCRIPT_REFRESH_SECS: u32 = 10;

/// A wait up to this long is shown as a countdown ("available in 0:45"), a longer one as a time.
const COUNTDOWN_MAX_SECS: i64 = 15 * 60;

/// Everything the page shows; built by [`model_from_row`].
#[derive(Debug, Clone)]
pub struct PageModel {
    pub lang: Lang,
    /// What every path of the page starts with
    /// ([`crate::core::client_page::ClientPageConfig::root`]; [`model_from_row`] leaves it
    /// empty, for the caller to set).
    pub root: String,
    /// The capability token, for the form actions (`POST /c/{token}/otp`, `…/resend`).
    pub token: String,
    /// The hidden input `csrf` of every form.
    pub csrf: String,
    pub partner_name: String,
    /// The number's verified display name, when known.
    pub business_name: Option<String>,
    /// `•••• 4321` ([`mask_number`]).
    pub number_masked: String,
    pub flow: Flow,
    pub phase: Phase,
    /// The client's part of the precheck.
    pub checklist: Vec<ChecklistItem>,
    /// The OTP flow's code: how and when it was sent, resend cooldown, attempts, expiry.
    pub otp: Option<OtpModel>,
    /// The partner's 360dialog signup link (Embedded Signup flow).
    pub signup_url: Option<String>,
    pub progress: Vec<(Step, StepStatus)>,
    /// Why it failed (phase `Failed`).
    pub error: Option<ErrorModel>,
    /// What the migration waits for while the client must act (e.g. the API-key permission in
    /// `awaiting_channel`); `None` when it waits on nobody or someone else.
    pub waiting_for: Option<ErrorModel>,
    /// The result of the POST that rendered this page.
    pub notice: Option<Notice>,
    /// Some approved templates were not copied (`templates.status` `partial`): the Done page
    /// does not say they all came along.
    pub templates_partial: bool,
    pub now: DateTime<Utc>,
    /// Opaque; changes whenever what the page shows changes (`data-version` on `<body>`, and
    /// what the status endpoint answers, see [`page_version`]).
    pub version: String,
}

/// What the client must do now, from the migration's state ([`phase_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `queued`, `prechecking`, `initiating`, `requesting_otp`: the checklist.
    Preparing,
    /// `awaiting_otp`: type the code.
    EnterCode,
    /// `verifying_otp`.
    CheckingCode,
    /// `awaiting_signup`: finish 360dialog's Embedded Signup.
    Signup,
    /// `registering` … `generating_api_key`: progress.
    Finishing,
    /// `completed`.
    Done,
    /// `failed` (and `cancelled`, whose link the handlers refuse anyway).
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Preparing,
        Phase::EnterCode,
        Phase::CheckingCode,
        Phase::Signup,
        Phase::Finishing,
        Phase::Done,
        Phase::Failed,
    ];

    /// Whether the page changes without the client doing anything (so it refreshes itself
    /// when JavaScript is off). Not `EnterCode`: a refresh would wipe the code being typed.
    pub fn moves_by_itself(self) -> bool {
        matches!(
            self,
            Phase::Preparing | Phase::CheckingCode | Phase::Signup | Phase::Finishing
        )
    }
}

/// The answer to the client's last POST, shown above what to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    CodeRejected {
        attempts_left: i32,
    },
    CodeReceived,
    ResendSent {
        method: OtpMethod,
    },
    ResendTooSoon {
        available_at: DateTime<Utc>,
    },
    Throttled {
        retry_after_secs: u64,
    },
    /// The page moved on since the form was shown; the page shows what to do now.
    NotNow,
    /// The form was too old (or not this site's): nothing was done; the page shows a fresh one.
    FormExpired,
    /// Not 6 digits.
    InvalidCode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtpModel {
    pub method: OtpMethod,
    pub requested_at: Option<DateTime<Utc>>,
    pub resend_available_at: Option<DateTime<Utc>>,
    pub attempts_left: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One thing the client must have done before the move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChecklistItem {
    pub kind: ChecklistKind,
    pub state: CheckState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecklistKind {
    /// Precheck `two_factor_disabled` (always: the API cannot read it).
    TwoStepOff,
    /// Precheck `display_name_approved`.
    DisplayNameApproved,
    /// Precheck `not_on_business_app`.
    NotOnBusinessApp,
    /// Precheck `business_verified`.
    BusinessVerified,
    /// OTP flow: the code reaches the number by SMS or call.
    CanReceiveCode,
}

impl ChecklistKind {
    /// The precheck's check id, if this item is one.
    pub fn check_id(self) -> Option<&'static str> {
        match self {
            Self::TwoStepOff => Some("two_factor_disabled"),
            Self::DisplayNameApproved => Some("display_name_approved"),
            Self::NotOnBusinessApp => Some("not_on_business_app"),
            Self::BusinessVerified => Some("business_verified"),
            Self::CanReceiveCode => None,
        }
    }

    fn messages(self) -> (&'static str, &'static str) {
        match self {
            Self::TwoStepOff => ("check-two-step-title", "check-two-step-how"),
            Self::DisplayNameApproved => ("check-display-name-title", "check-display-name-how"),
            Self::NotOnBusinessApp => ("check-business-app-title", "check-business-app-how"),
            Self::BusinessVerified => (
                "check-business-verified-title",
                "check-business-verified-how",
            ),
            Self::CanReceiveCode => ("check-phone-title", "check-phone-how"),
        }
    }
}

/// Whether a checklist item is done: the precheck passed it, failed it, or cannot tell (not
/// run yet, or not readable: two-step verification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    Done,
    ToDo,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Registration,
    Templates,
    Channel,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepStatus {
    Done,
    Current,
    Pending,
}

/// Why a migration stopped (or what it waits for): the stable code (`error.code`, a string so
/// that codes newer than this build still render, generically) and who must act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorModel {
    pub code: String,
    pub actor: Actor,
}

impl ErrorModel {
    /// `{code, actor, …}` as the row stores `error` and `waiting_for`.
    fn from_json(v: &Value) -> Option<Self> {
        let code = v.get("code")?.as_str()?.to_owned();
        let actor = v
            .get("actor")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or(Actor::None);
        Some(Self { code, actor })
    }
}

/// `•••• 4321`: the last 4 digits of the number, nothing else.
pub fn mask_number(e164: &str) -> String {
    let digits: Vec<char> = e164.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return "••••".to_owned();
    }
    let last: String = digits[digits.len() - 4..].iter().collect();
    format!("•••• {last}")
}

/// What the client must do in `state`.
pub fn phase_of(state: MigrationState) -> Phase {
    use MigrationState::*;
    match state {
        Queued | Prechecking | Initiating | RequestingOtp => Phase::Preparing,
        AwaitingOtp => Phase::EnterCode,
        VerifyingOtp => Phase::CheckingCode,
        AwaitingSignup => Phase::Signup,
        Registering | CopyingTemplates | AwaitingChannel | GeneratingApiKey => Phase::Finishing,
        Completed => Phase::Done,
        Failed | Cancelled => Phase::Failed,
    }
}

/// Whether a migration in `awaiting_signup` waits for the WABA the finished signup made to be
/// set up ([`crate::domain::ErrorCode::settles_after_signup`]), not for the signup.
fn waits_after_signup(row: &MigrationRow) -> bool {
    row.stored_waiting_for()
        .is_some_and(|w| w.code.settles_after_signup())
}

/// The steps after the client's part, and where the migration is among them. The OTP flow
/// registers the number; in the Embedded Signup flow the signup did that.
pub fn progress_of(state: MigrationState, flow: Flow) -> Vec<(Step, StepStatus)> {
    use MigrationState::*;
    let steps: &[Step] = match flow {
        Flow::Otp => &[
            Step::Registration,
            Step::Templates,
            Step::Channel,
            Step::Done,
        ],
        Flow::EmbeddedSignup => &[Step::Templates, Step::Channel, Step::Done],
    };
    let current = match state {
        Registering => Some(Step::Registration),
        CopyingTemplates => Some(Step::Templates),
        AwaitingChannel | GeneratingApiKey => Some(Step::Channel),
        _ => None,
    };
    steps
        .iter()
        .map(|&step| {
            let status = match current {
                _ if state == Completed => StepStatus::Done,
                Some(c) if step < c => StepStatus::Done,
                Some(c) if step == c => StepStatus::Current,
                _ => StepStatus::Pending,
            };
            (step, status)
        })
        .collect()
}

/// The client's checklist from the precheck (when it ran): two-step verification off (always;
/// the API cannot read it), the display name, the WhatsApp Business app, business
/// verification, and in the OTP flow a phone that receives the code.
pub fn checklist_of(flow: Flow, precheck: Option<&PrecheckReport>) -> Vec<ChecklistItem> {
    let mut kinds = vec![
        ChecklistKind::TwoStepOff,
        ChecklistKind::DisplayNameApproved,
        ChecklistKind::NotOnBusinessApp,
        ChecklistKind::BusinessVerified,
    ];
    if flow == Flow::Otp {
        kinds.push(ChecklistKind::CanReceiveCode);
    }
    kinds
        .into_iter()
        .map(|kind| {
            let check = kind
                .check_id()
                .and_then(|id| precheck?.checks.iter().find(|c| c.id == id));
            let state = match check.map(|c| c.status) {
                Some(CheckStatus::Pass) => CheckState::Done,
                Some(CheckStatus::Fail) => CheckState::ToDo,
                Some(CheckStatus::Warn) | None => CheckState::Unknown,
            };
            ChecklistItem { kind, state }
        })
        .collect()
}

/// The version of what the page shows for `row`: what `data-version` carries and the status
/// endpoint answers, so that the page reloads when (and only when) it would show something
/// else.
pub fn page_version(row: &MigrationRow, signup_url: Option<&str>) -> String {
    let model = model_from_row(row, "", signup_url, Lang::En, "", "", None, row.updated_at);
    model.version
}

fn version_of(m: &PageModel) -> String {
    // Everything shown but the per-request parts (language, token, CSRF, notice, clock).
    let shown = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        m.phase,
        m.flow,
        m.business_name,
        m.checklist,
        m.otp,
        m.signup_url,
        m.progress,
        m.error,
        m.waiting_for,
        m.number_masked,
    );
    hex::encode(&Sha256::digest(shown.as_bytes())[..12])
}

/// The page's model for a migration row.
#[allow(clippy::too_many_arguments)]
pub fn model_from_row(
    row: &MigrationRow,
    partner_name: &str,
    signup_url: Option<&str>,
    lang: Lang,
    token: &str,
    csrf: &str,
    notice: Option<Notice>,
    now: DateTime<Utc>,
) -> PageModel {
    let state = crate::core::client_page::state_for_client(row);
    let flow = row.flow();
    let phase = match phase_of(state) {
        // The signup is done, and the WABA it made is being set up: nothing is left for the
        // client to sign up for.
        Phase::Signup if waits_after_signup(row) => Phase::Finishing,
        phase => phase,
    };
    let precheck: Option<PrecheckReport> = row
        .precheck
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let business_name = precheck
        .as_ref()
        .and_then(|p| p.source.as_ref())
        .and_then(|s| s.display_name.clone())
        .filter(|n| !n.trim().is_empty());
    let otp = (flow == Flow::Otp).then(|| OtpModel {
        method: OtpMethod::parse(&row.otp_method).unwrap_or_default(),
        requested_at: row.otp_requested_at,
        resend_available_at: row.otp_resend_available_at,
        attempts_left: row.otp_attempts_left,
        expires_at: row.otp_expires_at,
    });
    let error = (phase == Phase::Failed)
        .then(|| row.error.as_ref().and_then(ErrorModel::from_json))
        .flatten();
    let waiting_for = row
        .waiting_for
        .as_ref()
        .and_then(ErrorModel::from_json)
        .filter(|w| w.actor == Actor::Client && phase == Phase::Finishing);
    let mut model = PageModel {
        lang,
        root: String::new(),
        token: token.to_owned(),
        csrf: csrf.to_owned(),
        partner_name: partner_name.to_owned(),
        business_name,
        number_masked: mask_number(&row.phone_number),
        flow,
        phase,
        checklist: checklist_of(flow, precheck.as_ref()),
        otp,
        signup_url: signup_url.map(str::to_owned),
        progress: progress_of(state, flow),
        error,
        waiting_for,
        notice,
        templates_partial: row
            .templates
            .as_ref()
            .and_then(|v| v.get("status"))
            .is_some_and(|s| s == "partial"),
        now,
        version: String::new(),
    };
    model.version = version_of(&model);
    model
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Stands for a piece of markup inside a translated sentence (see [`t_slot`]).
const SLOT: &str = "\u{E000}";

/// The message `id` with `slot` standing where the argument `slot_name` goes, so that markup
/// (a `<time>`, a countdown) can sit inside a sentence whose word order the language decides.
fn t_slot(lang: Lang, id: &str, args: &[(&str, Arg<'_>)], slot_name: &str, slot: Markup) -> Markup {
    let mut all = args.to_vec();
    all.push((slot_name, Arg::Str(SLOT)));
    let text = lang.t_args(id, &all);
    match text.split_once(SLOT) {
        Some((before, after)) => html! { (before) (slot) (after) },
        None => html! { (text) },
    }
}

/// "14:02 UTC" today, "2025-06-04 14:02 UTC" another day.
fn time_text(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M UTC").to_string()
    }
}

fn time_el(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (time_text(t, now)) } }
}

/// `m:ss` (or `h:mm:ss`), as the script counts down too.
fn countdown_text(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// "Available now", "Available in 0:45" (counted down by the script) or "Available at 14:02 UTC".
fn availability(lang: Lang, at: Option<DateTime<Utc>>, now: DateTime<Utc>, id: &str) -> Markup {
    let ready = lang.t("available-now");
    match at {
        Some(at) if at > now && (at - now).num_seconds() < COUNTDOWN_MAX_SECS => {
            // Rounded up: "0:00" only once it is available.
            let secs = ((at - now).num_milliseconds() + 999) / 1000;
            html! {
                p.when id=(id) data-available-at=(at.to_rfc3339()) data-ready=(ready) {
                    (t_slot(lang, "available-in", &[], "countdown", html! {
                        span.countdown { (countdown_text(secs)) }
                    }))
                }
            }
        }
        Some(at) if at > now => html! {
            p.when id=(id) { (t_slot(lang, "available-at", &[], "time", time_el(at, now))) }
        },
        _ => html! { p.when id=(id) { (ready) } },
    }
}

/// `<head>`; `refresh_to`: where a browser without JavaScript goes every few seconds.
fn head(root: &str, title: &str, refresh_to: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            meta name="robots" content="noindex, nofollow";
            meta name="color-scheme" content="light dark";
            title { (title) }
            link rel="stylesheet" href=(format!("{root}{CSS_PATH}"));
            @if let Some(url) = refresh_to {
                noscript {
                    meta http-equiv="refresh" content=(format!("{NOSCRIPT_REFRESH_SECS}; url={url}"));
                }
            }
            script src=(format!("{root}{JS_PATH}")) defer {}
        }
    }
}

/// The footer's language switcher: three links to `base?lang=…`.
fn language_switcher(lang: Lang, base: &str) -> Markup {
    html! {
        nav.languages aria-label=(lang.t("language-label")) {
            ul {
                @for l in Lang::ALL {
                    li {
                        a href=(format!("{base}?lang={}", l.code())) hreflang=(l.code()) lang=(l.code())
                            aria-current=[(l == lang).then_some("true")] {
                            (l.native_name())
                        }
                    }
                }
            }
        }
    }
}

/// The client's page.
pub fn page(m: &PageModel) -> Markup {
    let lang = m.lang;
    let base = format!("{}/c/{}", m.root, m.token);
    let page_url = format!("{base}?lang={}", lang.code());
    let title = lang.t("page-title");
    let refresh = m.phase.moves_by_itself().then_some(page_url.as_str());
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(&m.root, &title, refresh))
            // Done is the end for the client: no polling, which would find the link gone
            // once `CLIENT_PAGE_LINGER_SECONDS` passed and load "this link is no longer valid".
            body data-version=(m.version)
                data-status-url=[(m.phase != Phase::Done).then(|| format!("{base}/status"))]
                data-page-url=(page_url) {
                header.top {
                    p.partner { (m.partner_name) }
                    h1 { (title) }
                    p.migrating {
                        (lang.t_args("header-migrating", &[
                            ("number", (&m.number_masked).into()),
                            ("partner", (&m.partner_name).into()),
                        ]))
                    }
                    @if let Some(b) = &m.business_name {
                        p.business { (lang.t_args("header-business", &[("business", b.into())])) }
                    }
                }
                main {
                    @if let Some(n) = &m.notice { (notice(lang, n, m.now)) }
                    section.now aria-labelledby="now-title" {
                        (phase_body(m))
                    }
                }
                footer {
                    p { (lang.t_args("footer-private", &[("partner", (&m.partner_name).into())])) }
                    (language_switcher(lang, &base))
                }
            }
        }
    }
}

/// The neutral page of an unknown, used, rotated or expired link: nothing about any
/// migration, partner or number. `root` as [`PageModel::root`]; `home`: where its language
/// links go (the link's page, also when this answers a form sent to it; empty: this URL).
pub fn link_invalid(lang: Lang, root: &str, home: &str) -> Markup {
    let title = lang.t("invalid-title");
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                meta name="robots" content="noindex, nofollow";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="stylesheet" href=(format!("{root}{CSS_PATH}"));
            }
            body {
                main.invalid {
                    h1 { (title) }
                    p { (lang.t("invalid-body")) }
                }
                footer { (language_switcher(lang, home)) }
            }
        }
    }
}

fn notice(lang: Lang, n: &Notice, now: DateTime<Utc>) -> Markup {
    let (alert, text) = match n {
        Notice::CodeRejected { attempts_left } => (
            true,
            html! { (lang.t_args("notice-code-rejected", &[("count", i64::from(*attempts_left).into())])) },
        ),
        Notice::CodeReceived => (false, html! { (lang.t("notice-code-received")) }),
        Notice::ResendSent { method } => (
            false,
            html! { (lang.t_args("notice-resend-sent", &[("method", method.as_str().into())])) },
        ),
        Notice::ResendTooSoon { available_at } => (
            true,
            t_slot(
                lang,
                "notice-resend-too-soon",
                &[],
                "time",
                time_el(*available_at, now),
            ),
        ),
        Notice::Throttled { retry_after_secs } => {
            let secs = i64::try_from(*retry_after_secs).unwrap_or(i64::MAX).max(1);
            let wait = if secs < 60 {
                lang.t_args("wait-seconds", &[("count", secs.into())])
            } else {
                lang.t_args("wait-minutes", &[("count", ((secs + 59) / 60).into())])
            };
            (
                true,
                html! { (lang.t_args("notice-throttled", &[("wait", (&wait).into())])) },
            )
        }
        Notice::NotNow => (false, html! { (lang.t("notice-not-now")) }),
        Notice::FormExpired => (true, html! { (lang.t("notice-form-expired")) }),
        Notice::InvalidCode => (true, html! { (lang.t("notice-invalid-code")) }),
    };
    html! {
        @if alert {
            div.notice.alert role="alert" { p { (text) } }
        } @else {
            div.notice.info role="status" { p { (text) } }
        }
    }
}

fn phase_body(m: &PageModel) -> Markup {
    let lang = m.lang;
    let live = html! { p.live { span.spinner aria-hidden="true" {} (lang.t("live-updates")) } };
    match m.phase {
        // Asked for a code before (a resend, a call instead, a retry): a new one is on its way,
        // not the checks of the start.
        Phase::Preparing if m.otp.as_ref().is_some_and(|o| o.requested_at.is_some()) => html! {
            h2 #now-title { (lang.t("sending-title")) }
            p { (lang.t("sending-lead")) }
            (live)
        },
        Phase::Preparing => html! {
            h2 #now-title { (lang.t("preparing-title")) }
            p { (lang.t("preparing-lead")) }
            (live)
            (checklist(m))
        },
        Phase::EnterCode => enter_code(m),
        Phase::CheckingCode => html! {
            h2 #now-title { (lang.t("checking-title")) }
            p { (lang.t("checking-lead")) }
            (live)
        },
        Phase::Signup => html! {
            h2 #now-title { (lang.t("signup-title")) }
            p { (lang.t("signup-lead")) }
            @if let Some(url) = &m.signup_url {
                p { a.button href=(url) target="_blank" rel="noopener noreferrer" { (lang.t("signup-button")) } }
            } @else {
                p.callout { (lang.t_args("signup-no-link", &[("partner", (&m.partner_name).into())])) }
            }
            h3 { (lang.t("signup-steps-heading")) }
            ol.steps {
                li { (lang.t("signup-step-login")) }
                li { (lang.t("signup-step-connected")) }
                li { (lang.t("signup-step-new-waba")) }
                li { (lang.t_args("signup-step-number", &[("number", (&m.number_masked).into())])) }
                li { (lang.t("signup-step-finish")) }
            }
            (live)
            (checklist(m))
        },
        Phase::Finishing => html! {
            h2 #now-title { (lang.t("finishing-title")) }
            @if let Some(w) = &m.waiting_for {
                div.callout {
                    h3 { (lang.t("waiting-on-you")) }
                    p { (fix_text(m, w)) }
                }
            } @else {
                p { (lang.t("finishing-lead")) }
            }
            (progress(m))
            (live)
        },
        Phase::Done => html! {
            h2 #now-title { span.ok aria-hidden="true" { "✓ " } (lang.t("done-title")) }
            p { (lang.t_args(if m.templates_partial { "done-lead-partial" } else { "done-lead" }, &[
                ("number", (&m.number_masked).into()),
                ("partner", (&m.partner_name).into()),
            ])) }
            (progress(m))
        },
        Phase::Failed => {
            let partner = [("partner", Arg::from(&m.partner_name))];
            // The error names the first thing that failed; a precheck may have found more
            // for the client to fix (the error being the partner's, say).
            let said = m.error.as_ref().and_then(|e| checklist_kind_of(&e.code));
            let also: Vec<&ChecklistItem> = m
                .checklist
                .iter()
                .filter(|i| i.state == CheckState::ToDo && Some(i.kind) != said)
                .collect();
            let fix = m
                .error
                .as_ref()
                .map(fix_id)
                .filter(|id| *id != NOTHING_FOR_YOU);
            html! {
                h2 #now-title { (lang.t("failed-title")) }
                h3 { (lang.t("failed-you-heading")) }
                @match fix {
                    Some(id) => { p { (lang.t_args(id, &partner)) } }
                    None if also.is_empty() => { p { (lang.t(NOTHING_FOR_YOU)) } }
                    None => {}
                }
                @if !also.is_empty() {
                    ul.checklist { @for item in also { (checklist_item(m, item)) } }
                }
                h3 { (lang.t("failed-next-heading")) }
                p { (lang.t_args("failed-partner-will", &partner)) }
            }
        }
    }
}

/// The message that the client has nothing to do about an error.
const NOTHING_FOR_YOU: &str = "failed-nothing-for-you";

/// What the client must do about `e`, in plain words: a specific instruction for the codes
/// the client can act on, else a generic one by actor.
fn fix_text(m: &PageModel, e: &ErrorModel) -> String {
    m.lang
        .t_args(fix_id(e), &[("partner", Arg::from(&m.partner_name))])
}

/// The message id of [`fix_text`].
fn fix_id(e: &ErrorModel) -> &'static str {
    match e.code.as_str() {
        "two_factor_enabled" => "fix-two-factor",
        "pin_mismatch" => "fix-pin",
        "display_name_not_approved" => "fix-display-name",
        "business_not_verified" => "fix-business-verified",
        "number_on_business_app" => "fix-business-app",
        "otp_expired" | "otp_not_submitted" => "fix-otp-expired",
        "otp_invalid" => "fix-otp-invalid",
        "otp_rate_limited" => "fix-otp-rate-limited",
        "register_limit_reached" => "fix-register-limit",
        "api_key_permission_missing" => "fix-api-key-permission",
        "signup_not_completed" => "fix-signup-not-completed",
        _ if e.actor == Actor::Client => "failed-generic-client",
        _ => NOTHING_FOR_YOU,
    }
}

/// The checklist item an error code is about, if any (its fix text says the same).
fn checklist_kind_of(code: &str) -> Option<ChecklistKind> {
    match code {
        "two_factor_enabled" | "pin_mismatch" => Some(ChecklistKind::TwoStepOff),
        "display_name_not_approved" => Some(ChecklistKind::DisplayNameApproved),
        "number_on_business_app" => Some(ChecklistKind::NotOnBusinessApp),
        "business_not_verified" => Some(ChecklistKind::BusinessVerified),
        _ => None,
    }
}

fn checklist(m: &PageModel) -> Markup {
    let lang = m.lang;
    html! {
        h3 { (lang.t("checklist-heading")) }
        ul.checklist {
            @for item in &m.checklist { (checklist_item(m, item)) }
        }
    }
}

fn checklist_item(m: &PageModel, item: &ChecklistItem) -> Markup {
    let lang = m.lang;
    let (title, how) = item.kind.messages();
    let (class, symbol, word) = match item.state {
        CheckState::Done => ("done", "✓", "check-done"),
        CheckState::ToDo => ("todo", "✗", "check-todo"),
        CheckState::Unknown => ("unknown", "?", "check-unknown"),
    };
    html! {
        li class=(class) {
            p.item {
                span.badge { span aria-hidden="true" { (symbol) " " } (lang.t(word)) }
                " "
                strong { (lang.t(title)) }
            }
            @if item.state != CheckState::Done {
                p.how { (lang.t_args(how, &[("partner", (&m.partner_name).into())])) }
            }
        }
    }
}

fn progress(m: &PageModel) -> Markup {
    let lang = m.lang;
    // On a finished migration the last step ("done") is the current one.
    let any_current = m.progress.iter().any(|(_, s)| *s == StepStatus::Current);
    let last = m.progress.len().saturating_sub(1);
    html! {
        h3 { (lang.t("progress-heading")) }
        ol.progress {
            @for (i, (step, status)) in m.progress.iter().enumerate() {
                @let label = match step {
                    Step::Registration => "step-registration",
                    Step::Templates => "step-templates",
                    Step::Channel => "step-channel",
                    Step::Done => "step-done",
                };
                @let (class, symbol, word) = match status {
                    StepStatus::Done => ("done", "✓", "step-status-done"),
                    StepStatus::Current => ("current", "●", "step-status-current"),
                    StepStatus::Pending => ("pending", "○", "step-status-pending"),
                };
                @let current = *status == StepStatus::Current || (!any_current && i == last && *status == StepStatus::Done);
                li class=(class) aria-current=[current.then_some("step")] {
                    span.marker aria-hidden="true" { (symbol) }
                    " "
                    span.label { (lang.t(label)) }
                    span.visually-hidden { " (" (lang.t(word)) ")" }
                }
            }
        }
    }
}

fn enter_code(m: &PageModel) -> Markup {
    let lang = m.lang;
    let base = format!("{}/c/{}", m.root, m.token);
    let q = format!("?lang={}", lang.code());
    let otp = m.otp.clone().unwrap_or(OtpModel {
        method: OtpMethod::Sms,
        requested_at: None,
        resend_available_at: None,
        attempts_left: 0,
        expires_at: None,
    });
    let method = otp.method.as_str();
    let other = match otp.method {
        OtpMethod::Sms => OtpMethod::Voice,
        OtpMethod::Voice => OtpMethod::Sms,
    };
    html! {
        h2 #now-title { (lang.t("code-title")) }
        p {
            (lang.t_args("code-sent", &[("method", method.into()), ("number", (&m.number_masked).into())]))
            @if let Some(at) = otp.requested_at {
                " " (t_slot(lang, "code-sent-at", &[], "time", time_el(at, m.now)))
            }
        }
        form.code method="post" action=(format!("{base}/otp{q}")) {
            input type="hidden" name="csrf" value=(m.csrf);
            label for="code" { (lang.t("code-label")) }
            p.hint #code-hint { (lang.t("code-hint")) }
            input #code name="code" type="text" inputmode="numeric" autocomplete="one-time-code"
                pattern="\\s*[0-9]{3}(-| )?[0-9]{3}\\s*" maxlength="16" required
                aria-describedby="code-hint code-attempts";
            p #code-attempts {
                (lang.t_args("attempts-left", &[("count", i64::from(otp.attempts_left).into())]))
                @if let Some(at) = otp.expires_at {
                    " " (t_slot(lang, "code-expires", &[], "time", time_el(at, m.now)))
                }
            }
            button type="submit" { (lang.t("code-submit")) }
        }
        h3 { (lang.t("resend-heading")) }
        div.resend {
            @for (i, method) in [other, otp.method].into_iter().enumerate() {
                @let id = format!("resend-when-{i}");
                @let label = if i == 0 { "resend-switch" } else { "resend-again" };
                form method="post" action=(format!("{base}/resend{q}")) {
                    input type="hidden" name="csrf" value=(m.csrf);
                    input type="hidden" name="method" value=(method.as_str());
                    button.secondary type="submit" aria-describedby=(id) {
                        (lang.t_args(label, &[("method", method.as_str().into())]))
                    }
                    (availability(lang, otp.resend_available_at, m.now, &id))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_page::i18n::tests::{catalogue_ids, used_ids};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn model(lang: Lang, phase: Phase) -> PageModel {
        let flow = if phase == Phase::Signup {
            Flow::EmbeddedSignup
        } else {
            Flow::Otp
        };
        let state = match phase {
            Phase::Preparing => MigrationState::Prechecking,
            Phase::EnterCode => MigrationState::AwaitingOtp,
            Phase::CheckingCode => MigrationState::VerifyingOtp,
            Phase::Signup => MigrationState::AwaitingSignup,
            Phase::Finishing => MigrationState::CopyingTemplates,
            Phase::Done => MigrationState::Completed,
            Phase::Failed => MigrationState::Failed,
        };
        let mut m = PageModel {
            lang,
            root: String::new(),
            token: "tok_ZZZ".into(),
            csrf: "csrf_YYY".into(),
            partner_name: "Zebra Partners".into(),
            business_name: Some("Café Aurora".into()),
            number_masked: mask_number("+5511987654321"),
            flow,
            phase,
            checklist: vec![
                ChecklistItem {
                    kind: ChecklistKind::TwoStepOff,
                    state: CheckState::Unknown,
                },
                ChecklistItem {
                    kind: ChecklistKind::DisplayNameApproved,
                    state: CheckState::ToDo,
                },
                ChecklistItem {
                    kind: ChecklistKind::NotOnBusinessApp,
                    state: CheckState::Done,
                },
                ChecklistItem {
                    kind: ChecklistKind::BusinessVerified,
                    state: CheckState::Unknown,
                },
                ChecklistItem {
                    kind: ChecklistKind::CanReceiveCode,
                    state: CheckState::Unknown,
                },
            ],
            otp: Some(OtpModel {
                method: OtpMethod::Sms,
                requested_at: Some(t(-60)),
                resend_available_at: Some(t(45)),
                attempts_left: 2,
                expires_at: Some(t(86_400)),
            }),
            signup_url: Some("https://hub.360dialog.com/lp/whatsapp/abc".into()),
            progress: progress_of(state, flow),
            error: (phase == Phase::Failed).then(|| ErrorModel {
                code: "two_factor_enabled".into(),
                actor: Actor::Client,
            }),
            waiting_for: None,
            notice: None,
            templates_partial: false,
            now: t(0),
            version: "v1".into(),
        };
        if flow == Flow::EmbeddedSignup {
            m.checklist
                .retain(|c| c.kind != ChecklistKind::CanReceiveCode);
        }
        if phase == Phase::Preparing {
            // No code asked for yet, as before `awaiting_otp`.
            if let Some(otp) = m.otp.as_mut() {
                otp.requested_at = None;
                otp.resend_available_at = None;
            }
        }
        m.version = version_of(&m);
        m
    }

    fn all_notices() -> Vec<Notice> {
        vec![
            Notice::CodeRejected { attempts_left: 1 },
            Notice::CodeRejected { attempts_left: 2 },
            Notice::CodeReceived,
            Notice::ResendSent {
                method: OtpMethod::Sms,
            },
            Notice::ResendSent {
                method: OtpMethod::Voice,
            },
            Notice::ResendTooSoon {
                available_at: t(30),
            },
            Notice::Throttled {
                retry_after_secs: 1,
            },
            Notice::Throttled {
                retry_after_secs: 125,
            },
            Notice::NotNow,
            Notice::FormExpired,
            Notice::InvalidCode,
        ]
    }

    /// Every page variant the views can render: each phase × language, each notice, each
    /// error code, the waiting client, the voice method, no signup link, no times.
    fn every_variant(lang: Lang) -> Vec<String> {
        let mut out = Vec::new();
        for phase in Phase::ALL {
            out.push(page(&model(lang, phase)).into_string());
        }
        for n in all_notices() {
            let mut m = model(lang, Phase::EnterCode);
            m.notice = Some(n);
            out.push(page(&m).into_string());
        }
        let codes = [
            "two_factor_enabled",
            "pin_mismatch",
            "display_name_not_approved",
            "business_not_verified",
            "number_on_business_app",
            "otp_expired",
            "otp_not_submitted",
            "otp_invalid",
            "otp_rate_limited",
            "register_limit_reached",
            "api_key_permission_missing",
            "signup_not_completed",
            "upstream_unavailable",
            "some_future_code",
        ];
        for code in codes {
            for actor in [Actor::Client, Actor::Partner] {
                let mut m = model(lang, Phase::Failed);
                m.error = Some(ErrorModel {
                    code: code.into(),
                    actor,
                });
                out.push(page(&m).into_string());
            }
        }
        let mut m = model(lang, Phase::Failed);
        m.error = None;
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::Finishing);
        m.waiting_for = Some(ErrorModel {
            code: "api_key_permission_missing".into(),
            actor: Actor::Client,
        });
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::EnterCode);
        m.otp = Some(OtpModel {
            method: OtpMethod::Voice,
            requested_at: None,
            resend_available_at: Some(t(7200)),
            attempts_left: 1,
            expires_at: None,
        });
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::EnterCode);
        m.otp.as_mut().unwrap().resend_available_at = Some(t(-5));
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::Signup);
        m.signup_url = None;
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::Preparing);
        for item in &mut m.checklist {
            item.state = CheckState::ToDo;
        }
        out.push(page(&m).into_string());
        // A new code on its way (a code was asked for before).
        m.otp.as_mut().unwrap().requested_at = Some(t(-5));
        out.push(page(&m).into_string());
        let mut m = model(lang, Phase::Done);
        m.templates_partial = true;
        out.push(page(&m).into_string());
        // Failed with nothing for the client to do.
        let mut m = model(lang, Phase::Failed);
        m.error = Some(ErrorModel {
            code: "upstream_unavailable".into(),
            actor: Actor::Meta,
        });
        m.checklist.clear();
        out.push(page(&m).into_string());
        out.push(link_invalid(lang, "", "").into_string());
        out
    }

    #[test]
    fn every_phase_renders_in_every_language_without_fallbacks() {
        // `Lang::t_args` panics in tests on a missing message or a formatting error; the
        // output must also hold no raw message id, Fluent error marker or unfilled slot.
        let ids = catalogue_ids(Lang::En);
        for lang in Lang::ALL {
            for html in every_variant(lang) {
                assert!(html.contains(&format!("<html lang=\"{}\"", lang.code())));
                for bad in [
                    "Unknown localization",
                    "{$",
                    "{ $",
                    SLOT,
                    "\u{2068}",
                    "\u{2069}",
                ] {
                    assert!(!html.contains(bad), "{bad:?} in {}: {html}", lang.code());
                }
                let text = visible_text(&html);
                for id in &ids {
                    assert!(
                        !text.split_whitespace().any(|w| w == id),
                        "raw id {id} in {}: {text}",
                        lang.code()
                    );
                }
            }
        }
    }

    #[test]
    fn every_message_the_views_use_is_in_every_catalogue() {
        for lang in Lang::ALL {
            every_variant(lang);
        }
        let used = used_ids();
        assert!(used.len() > 60, "{used:?}");
        for lang in Lang::ALL {
            let have = catalogue_ids(lang);
            let missing: Vec<_> = used.difference(&have).collect();
            assert!(missing.is_empty(), "{}: {missing:?}", lang.code());
        }
        // And nothing in the catalogues is dead.
        let unused: Vec<_> = catalogue_ids(Lang::En)
            .into_iter()
            .filter(|id| !used.contains(id))
            .collect();
        assert!(unused.is_empty(), "never used: {unused:?}");
    }

    /// The text of an HTML document, tags dropped (good enough for our own output).
    fn visible_text(html: &str) -> String {
        let re = regex::Regex::new(r"<[^>]*>").unwrap();
        re.replace_all(html, " ").into_owned()
    }

    #[test]
    fn no_inline_script_style_or_handlers() {
        let script_without_src = regex::Regex::new(r"<script(\s[^>]*)?>").unwrap();
        let handler = regex::Regex::new(r#"(?i)\son[a-z]+\s*="#).unwrap();
        for lang in Lang::ALL {
            for html in every_variant(lang) {
                for tag in script_without_src.find_iter(&html) {
                    assert!(tag.as_str().contains(" src="), "inline script: {tag:?}");
                }
                // Every script element is empty.
                assert_eq!(
                    html.matches("<script").count(),
                    html.matches("></script>").count(),
                    "{html}"
                );
                assert!(!html.contains(" style="), "{html}");
                assert!(!html.contains("<style"), "{html}");
                assert!(!handler.is_match(&html), "{html}");
                assert!(!html.contains("javascript:"), "{html}");
            }
        }
    }

    #[test]
    fn mask_number_shows_only_the_last_four_digits() {
        assert_eq!(mask_number("+5511987654321"), "•••• 4321");
        assert_eq!(mask_number("+1 631-555-0042"), "•••• 0042");
        assert_eq!(mask_number("+123"), "••••");
        let masked = mask_number("+5511987654321");
        assert_eq!(masked.chars().filter(char::is_ascii_digit).count(), 4);
        // The page never shows the rest of the number.
        let html = page(&model(Lang::En, Phase::EnterCode)).into_string();
        assert!(html.contains("•••• 4321"));
        assert!(!html.contains("98765"), "{html}");
    }

    #[test]
    fn link_invalid_leaks_nothing() {
        for lang in Lang::ALL {
            let html = link_invalid(lang, "", "").into_string();
            let m = model(lang, Phase::EnterCode);
            for secret in [
                m.token.as_str(),
                m.csrf.as_str(),
                m.partner_name.as_str(),
                "Café Aurora",
                "4321",
                "•",
                "/c/tok",
                "data-version",
                "awaiting",
                "360dialog",
            ] {
                assert!(!html.contains(secret), "{secret:?} in {html}");
            }
            assert_eq!(html.matches("<h1").count(), 1);
            assert!(html.contains("href=\"?lang=es\""));
        }
        assert!(
            link_invalid(Lang::PtBr, "", "")
                .into_string()
                .contains("não é mais válido")
        );
    }

    /// Not every approved template was copied: the Done page does not say they all came along.
    #[test]
    fn done_says_when_templates_were_left_behind() {
        let mut m = model(Lang::En, Phase::Done);
        let all = page(&m).into_string();
        assert!(
            all.contains("approved message templates came along"),
            "{all}"
        );
        m.templates_partial = true;
        let some = page(&m).into_string();
        assert!(!some.contains("templates came along"), "{some}");
        assert!(some.contains("will take care of"), "{some}");
    }

    /// Back in `requesting_otp` after a code was sent (the client asked for another): the page
    /// says a new code is on its way, not that the number is being checked.
    #[test]
    fn a_new_code_on_its_way_is_not_the_start_again() {
        for lang in Lang::ALL {
            let mut m = model(lang, Phase::Preparing);
            let first = page(&m).into_string();
            assert!(first.contains(&lang.t("preparing-title")), "{first}");
            m.otp = Some(OtpModel {
                method: OtpMethod::Voice,
                requested_at: Some(t(-30)),
                resend_available_at: Some(t(30)),
                attempts_left: 3,
                expires_at: None,
            });
            let again = page(&m).into_string();
            assert!(again.contains(&lang.t("sending-title")), "{again}");
            assert!(!again.contains(&lang.t("preparing-title")), "{again}");
            assert!(!again.contains(&lang.t("checklist-heading")), "{again}");
        }
    }

    /// A precheck that failed on the partner's side first (the error) and on the client's too:
    /// the client's part is on the page, not "nothing to do".
    #[test]
    fn a_failed_precheck_lists_what_the_client_must_fix_too() {
        let mut m = model(Lang::En, Phase::Failed);
        m.error = Some(ErrorModel {
            code: "destination_no_payment_method".into(),
            actor: Actor::Partner,
        });
        let html = page(&m).into_string();
        assert!(!html.contains("You do not need to do anything"), "{html}");
        let (title, _) = ChecklistKind::DisplayNameApproved.messages();
        assert!(html.contains(&Lang::En.t(title)), "{html}");
        // The error says it already: not twice.
        m.error = Some(ErrorModel {
            code: "display_name_not_approved".into(),
            actor: Actor::Client,
        });
        let html = page(&m).into_string();
        assert!(!html.contains(&Lang::En.t(title)), "{html}");
        assert!(
            html.contains("Your display name is not approved yet"),
            "{html}"
        );
        // Nothing left to fix: as before.
        m.checklist
            .iter_mut()
            .for_each(|i| i.state = CheckState::Done);
        m.error = Some(ErrorModel {
            code: "destination_no_payment_method".into(),
            actor: Actor::Partner,
        });
        assert!(
            page(&m)
                .into_string()
                .contains("You do not need to do anything")
        );
    }

    /// Behind a proxy that serves the service under a path (`PUBLIC_BASE_URL`
    /// `https://example.com/migrate`), every path of the page starts with it.
    #[test]
    fn every_path_starts_with_the_public_root() {
        let mut pages = Vec::new();
        for phase in Phase::ALL {
            let mut m = model(Lang::En, phase);
            m.root = "/migrate".into();
            pages.push(page(&m).into_string());
        }
        pages.push(link_invalid(Lang::En, "/migrate", "/migrate/c/tok_ZZZ").into_string());
        let attr =
            regex::Regex::new(r#"(?:href|src|action|data-[a-z-]+-url|url)=["']?([^"' >;]+)"#)
                .unwrap();
        for html in &pages {
            let paths: Vec<&str> = attr
                .captures_iter(html)
                .map(|c| c.get(1).unwrap().as_str())
                .filter(|p| p.starts_with('/'))
                .collect();
            assert!(paths.len() >= 2, "{html}");
            for p in paths {
                assert!(p.starts_with("/migrate/c/"), "{p} in {html}");
            }
        }
        assert!(
            pages
                .last()
                .unwrap()
                .contains("href=\"/migrate/c/tok_ZZZ?lang=es\"")
        );
    }

    #[test]
    fn accessibility_basics() {
        for lang in Lang::ALL {
            for phase in Phase::ALL {
                let html = page(&model(lang, phase)).into_string();
                assert_eq!(html.matches("<h1").count(), 1, "{phase:?}: {html}");
                assert!(html.contains("name=\"viewport\""));
                // A refresh without JavaScript exactly where the page moves by itself.
                assert_eq!(
                    html.contains("http-equiv=\"refresh\""),
                    phase.moves_by_itself(),
                    "{phase:?}"
                );
            }
        }
        let html = page(&model(Lang::En, Phase::EnterCode)).into_string();
        for attr in [
            "inputmode=\"numeric\"",
            "autocomplete=\"one-time-code\"",
            "pattern=\"\\s*[0-9]{3}(-| )?[0-9]{3}\\s*\"",
            "maxlength=\"16\"",
            "<label for=\"code\">",
            "action=\"/c/tok_ZZZ/otp?lang=en\"",
            "action=\"/c/tok_ZZZ/resend?lang=en\"",
            "name=\"method\" value=\"voice\"",
            "name=\"method\" value=\"sms\"",
            "Call me instead",
            "Send the SMS again",
            "2 attempts left.",
            "data-available-at=",
            "Available in <span class=\"countdown\">0:45</span>",
        ] {
            assert!(html.contains(attr), "{attr}: {html}");
        }
        // Every form carries the CSRF token.
        assert_eq!(
            html.matches("<form").count(),
            html.matches("name=\"csrf\" value=\"csrf_YYY\"").count()
        );
        let far = {
            let mut m = model(Lang::En, Phase::EnterCode);
            m.otp.as_mut().unwrap().resend_available_at = Some(t(7200));
            page(&m).into_string()
        };
        assert!(far.contains("Available at <time"), "{far}");
        assert!(far.contains(">10:00 UTC</time>"), "{far}");
    }

    #[test]
    fn progress_marks_the_current_step() {
        use MigrationState::*;
        let status = |state, flow| -> Vec<StepStatus> {
            progress_of(state, flow)
                .into_iter()
                .map(|(_, s)| s)
                .collect()
        };
        use StepStatus::{Current as C, Done as D, Pending as P};
        assert_eq!(status(Registering, Flow::Otp), [C, P, P, P]);
        assert_eq!(status(CopyingTemplates, Flow::Otp), [D, C, P, P]);
        assert_eq!(status(GeneratingApiKey, Flow::Otp), [D, D, C, P]);
        assert_eq!(status(Completed, Flow::Otp), [D, D, D, D]);
        assert_eq!(status(AwaitingChannel, Flow::EmbeddedSignup), [D, C, P]);
        assert_eq!(status(Prechecking, Flow::EmbeddedSignup), [P, P, P]);
        let steps: Vec<Step> = progress_of(Completed, Flow::EmbeddedSignup)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [Step::Templates, Step::Channel, Step::Done]);

        let html = page(&model(Lang::En, Phase::Finishing)).into_string();
        assert_eq!(html.matches("aria-current=\"step\"").count(), 1);
        assert!(
            html.contains("<li class=\"current\" aria-current=\"step\""),
            "{html}"
        );
        let done = page(&model(Lang::En, Phase::Done)).into_string();
        assert_eq!(done.matches("aria-current=\"step\"").count(), 1, "{done}");
        assert!(
            !done.contains("data-status-url"),
            "nothing left to poll: {done}"
        );
        assert!(
            html.contains("data-status-url=\"/c/tok_ZZZ/status\""),
            "{html}"
        );
    }

    #[test]
    fn phases_of_states() {
        use MigrationState::*;
        for (state, phase) in [
            (Queued, Phase::Preparing),
            (Prechecking, Phase::Preparing),
            (Initiating, Phase::Preparing),
            (RequestingOtp, Phase::Preparing),
            (AwaitingOtp, Phase::EnterCode),
            (VerifyingOtp, Phase::CheckingCode),
            (Registering, Phase::Finishing),
            (CopyingTemplates, Phase::Finishing),
            (AwaitingChannel, Phase::Finishing),
            (GeneratingApiKey, Phase::Finishing),
            (Completed, Phase::Done),
            (Failed, Phase::Failed),
            (Cancelled, Phase::Failed),
        ] {
            assert_eq!(phase_of(state), phase, "{state}");
        }
    }

    #[test]
    fn notices_speak_plainly() {
        let render = |lang, n| {
            let mut m = model(lang, Phase::EnterCode);
            m.notice = Some(n);
            page(&m).into_string()
        };
        let html = render(Lang::En, Notice::CodeRejected { attempts_left: 1 });
        assert!(html.contains("role=\"alert\""));
        assert!(html.contains("You have 1 attempt left."), "{html}");
        let html = render(
            Lang::Es,
            Notice::Throttled {
                retry_after_secs: 42,
            },
        );
        assert!(html.contains("Espere 42 segundos"), "{html}");
        let html = render(
            Lang::PtBr,
            Notice::Throttled {
                retry_after_secs: 61,
            },
        );
        assert!(html.contains("Aguarde 2 minutos"), "{html}");
        let html = render(
            Lang::En,
            Notice::ResendTooSoon {
                available_at: t(120),
            },
        );
        assert!(html.contains("at <time datetime="), "{html}");
        assert!(html.contains(">08:02 UTC</time>"), "{html}");
        let html = render(Lang::En, Notice::CodeReceived);
        assert!(html.contains("role=\"status\""));
    }

    #[test]
    fn signup_phase_offers_the_link_and_the_choices() {
        let html = page(&model(Lang::En, Phase::Signup)).into_string();
        assert!(html.contains(
            "<a class=\"button\" href=\"https://hub.360dialog.com/lp/whatsapp/abc\" target=\"_blank\" rel=\"noopener noreferrer\">"
        ), "{html}");
        assert!(html.contains("Yes, this number is connected to WhatsApp Business API"));
        assert!(html.contains("Create a new WhatsApp Business Account"));
        // The Embedded Signup flow does not ask the phone to receive our code.
        assert!(!html.contains("You can receive an SMS"));
        let mut m = model(Lang::Es, Phase::Signup);
        m.signup_url = None;
        let html = page(&m).into_string();
        assert!(!html.contains("class=\"button\""));
        assert!(
            html.contains("Zebra Partners le enviará el enlace"),
            "{html}"
        );
    }

    #[test]
    fn failed_page_says_what_each_side_does_and_no_internals() {
        let mut m = model(Lang::En, Phase::Failed);
        let html = page(&m).into_string();
        assert!(html.contains("Turn off two-step verification"), "{html}");
        assert!(html.contains("Zebra Partners has been told"), "{html}");
        m.error = Some(ErrorModel {
            code: "upstream_unavailable".into(),
            actor: Actor::Meta,
        });
        // (Nothing left on the client's checklist either.)
        for item in &mut m.checklist {
            if item.state == CheckState::ToDo {
                item.state = CheckState::Unknown;
            }
        }
        let html = page(&m).into_string();
        assert!(html.contains("You do not need to do anything for now."));
        assert!(!html.contains("upstream"));
    }

    fn row(state: MigrationState, flow: Flow) -> MigrationRow {
        let now = t(0);
        MigrationRow {
            id: uuid::Uuid::nil(),
            partner_id: uuid::Uuid::nil(),
            state: state.as_str().into(),
            flow: flow.as_str().into(),
            phone_number: "+5511987654321".into(),
            source_waba_id: "1".into(),
            destination_waba_id: "2".into(),
            meta_business_id: "900".into(),
            phone_number_id: None,
            channel_id: None,
            d360_client_id: None,
            otp_method: "voice".into(),
            otp_language: "pt_BR".into(),
            otp_requested_at: Some(t(-30)),
            otp_resend_available_at: Some(t(30)),
            otp_attempts_left: 3,
            otp_expires_at: Some(t(3600)),
            otp_code_enc: None,
            pin_enc: vec![1, 2, 3],
            precheck: Some(serde_json::json!({
                "status": "fail",
                "checks": [
                    {"id": "business_verified", "status": "pass", "message": "", "remediation": "", "actor": "none"},
                    {"id": "display_name_approved", "status": "fail", "message": "", "remediation": "", "actor": "source_bsp", "code": "display_name_not_approved"},
                    {"id": "two_factor_disabled", "status": "warn", "message": "", "remediation": "", "actor": "client"}
                ],
                "source": {"display_name": "Café Aurora"}
            })),
            templates: None,
            api_key_enc: None,
            api_key_id: None,
            api_key_address: None,
            api_key_generated_at: None,
            api_key_verified_at: None,
            api_key_superseded_at: None,
            step_memo: serde_json::json!({}),
            summary: None,
            error: Some(serde_json::json!({
                "code": "two_factor_enabled", "message": "m", "remediation": "r",
                "actor": "client", "step": "initiating", "retryable": true,
                "upstream": {"service": "meta", "fbtrace_id": "TRACE123"}
            })),
            waiting_for: None,
            failed_step: None,
            metadata: serde_json::json!({}),
            callback_url: None,
            run_at: now,
            attempt: 0,
            rescues: 0,
            lease_token: None,
            lease_owner: None,
            lease_expires_at: None,
            state_entered_at: now,
            version: 4,
            created_at: now,
            updated_at: now,
            completed_at: None,
            batch_id: None,
            batch_reference: None,
            partner_callback_url: None,
            partner_url_known: false,
        }
    }

    #[test]
    fn model_from_a_row() {
        let r = row(MigrationState::AwaitingOtp, Flow::Otp);
        let m = model_from_row(&r, "Zebra", None, Lang::PtBr, "tok", "c", None, t(0));
        assert_eq!(m.phase, Phase::EnterCode);
        assert_eq!(m.number_masked, "•••• 4321");
        assert_eq!(m.business_name.as_deref(), Some("Café Aurora"));
        let otp = m.otp.as_ref().unwrap();
        assert_eq!(otp.method, OtpMethod::Voice);
        assert_eq!(otp.attempts_left, 3);
        // Not failed: the error of a refused code is not the page's error.
        assert_eq!(m.error, None);
        let states: Vec<_> = m.checklist.iter().map(|c| (c.kind, c.state)).collect();
        assert_eq!(
            states,
            [
                (ChecklistKind::TwoStepOff, CheckState::Unknown),
                (ChecklistKind::DisplayNameApproved, CheckState::ToDo),
                (ChecklistKind::NotOnBusinessApp, CheckState::Unknown),
                (ChecklistKind::BusinessVerified, CheckState::Done),
                (ChecklistKind::CanReceiveCode, CheckState::Unknown),
            ]
        );
        let html = page(&m).into_string();
        assert!(html.contains("Prefiro receber um SMS"), "{html}");

        let failed = row(MigrationState::Failed, Flow::Otp);
        let m = model_from_row(&failed, "Zebra", None, Lang::En, "tok", "c", None, t(0));
        assert_eq!(
            m.error,
            Some(ErrorModel {
                code: "two_factor_enabled".into(),
                actor: Actor::Client
            })
        );
        let html = page(&m).into_string();
        assert!(!html.contains("TRACE123"), "{html}");

        // The version follows what is shown, not the request.
        let a = model_from_row(&r, "Zebra", None, Lang::En, "tok", "c", None, t(0));
        let b = model_from_row(
            &r,
            "Zebra",
            None,
            Lang::Es,
            "tok",
            "d",
            Some(Notice::NotNow),
            t(50),
        );
        assert_eq!(a.version, b.version);
        assert_eq!(a.version, page_version(&r, None));
        let mut fewer = r.clone();
        fewer.otp_attempts_left = 2;
        assert_ne!(page_version(&fewer, None), a.version);

        let es = row(MigrationState::CopyingTemplates, Flow::EmbeddedSignup);
        let m = model_from_row(&es, "Zebra", None, Lang::En, "tok", "c", None, t(0));
        assert!(m.otp.is_none());
        assert!(
            m.checklist
                .iter()
                .all(|c| c.kind != ChecklistKind::CanReceiveCode)
        );
        assert_eq!(m.progress.len(), 3);
    }

    #[test]
    fn a_finished_signup_whose_waba_is_being_set_up_is_not_asked_for_again() {
        let mut r = row(MigrationState::AwaitingSignup, Flow::EmbeddedSignup);
        // As the worker stores it: a whole `WaitingFor`.
        let wait = |code: crate::domain::ErrorCode| {
            let reason = crate::domain::MigrationError::new(code, MigrationState::AwaitingSignup);
            serde_json::json!(crate::domain::WaitingFor::new(&reason, t(0), t(60)))
        };
        r.waiting_for = Some(wait(crate::domain::ErrorCode::SignupNotCompleted));
        let m = model_from_row(&r, "Zebra", None, Lang::En, "tok", "c", None, t(0));
        assert_eq!(m.phase, Phase::Signup);
        let url = "https://hub.360dialog.com/signup/zebra";
        let link = Some(url);
        let asks = |m: &PageModel| page(m).into_string().contains(url);
        assert!(asks(&model_from_row(
            &r,
            "Zebra",
            link,
            Lang::En,
            "tok",
            "c",
            None,
            t(0)
        )));
        r.waiting_for = Some(wait(crate::domain::ErrorCode::DestinationNoPaymentMethod));
        let m = model_from_row(&r, "Zebra", link, Lang::En, "tok", "c", None, t(0));
        assert_eq!(m.phase, Phase::Finishing);
        // Not the client's to act on: the page says nothing is needed from them.
        assert_eq!(m.waiting_for, None);
        assert!(!asks(&m));
    }
}
