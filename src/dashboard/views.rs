//! The pages, as `maud` templates (compiled into the binary; every value is HTML-escaped).
//!
//! Accessibility: landmarks, a skip link, labelled inputs, table headers with scope, states
//! always written out (a symbol and the state's name, never colour alone), visible focus.
//! Secrets never reach a template: the view types carry no PIN, OTP code or API key.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::CSRF_FIELD;
use super::session::Session;
use crate::api::Migration;
use crate::core::Caller;
use crate::db::events::EventRow;
use crate::db::webhooks::{AttemptRow, DeliveryRow};
use crate::domain::{Actor, ErrorCode, MigrationState};

mod batches;
pub use batches::{BatchList, BatchPage, UploadForm, batch_list, batch_page};

/// Seconds between two refreshes of a page that moves by itself (a running batch).
pub const REFRESH_SECS: u32 = 15;

/// Query of the list page; every field optional, empty strings ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub partner_id: String,
    #[serde(default)]
    pub phone: String,
    /// `YYYY-MM-DD`: created on or after this day (UTC).
    #[serde(default)]
    pub from: String,
    /// `YYYY-MM-DD`: created on or before this day (UTC).
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub cursor: String,
}

/// The serde name of an enum value (`snake_case` strings everywhere in this API).
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn when(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// "3 min", "2 h 5 min", "4 d 3 h".
pub fn duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// "1 migration", "3 migrations".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn since(t: DateTime<Utc>) -> String {
    duration(Utc::now() - t)
}

/// The state as text with a symbol; the colour (class) only repeats it.
fn state_badge(s: MigrationState) -> Markup {
    let (class, symbol) = match s {
        MigrationState::Completed => ("ok", "✓"),
        MigrationState::Failed => ("bad", "✗"),
        MigrationState::Cancelled => ("off", "⊘"),
        MigrationState::AwaitingOtp
        | MigrationState::AwaitingSignup
        | MigrationState::AwaitingChannel => ("wait", "…"),
        _ => ("run", "▶"),
    };
    html! { span class={ "state " (class) } { span aria-hidden="true" { (symbol) " " } (s.as_str()) } }
}

fn actor_text(a: Actor) -> &'static str {
    match a {
        Actor::Client => "the client (owner of the number)",
        Actor::SourceBsp => "the current provider (source BSP)",
        Actor::Partner => "the partner",
        Actor::Meta => "Meta or 360dialog support",
        Actor::None => "nobody",
    }
}

/// What a migration in this state is waiting for, in words.
fn waiting_for(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Queued => "a free worker",
        MigrationState::Prechecking => "the read-only checks against Meta",
        MigrationState::AwaitingSignup => {
            "the client to finish 360dialog's Embedded Signup (a channel for the number on the partner's account)"
        }
        MigrationState::Initiating => "Meta to add the number to the destination WABA",
        MigrationState::RequestingOtp => "Meta to send the verification code",
        MigrationState::AwaitingOtp => "the partner to submit the code the client received",
        MigrationState::VerifyingOtp => "Meta to check the code",
        MigrationState::Registering => "Meta to register the number on Cloud API",
        MigrationState::CopyingTemplates => "the template copy",
        MigrationState::AwaitingChannel => {
            "360dialog to show a running channel with API-key permission"
        }
        MigrationState::GeneratingApiKey => "360dialog to generate the API key",
        MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled => {
            "nothing (finished)"
        }
    }
}

fn layout(session: Option<&Session>, title: &str, current: &str, body: Markup) -> Html<String> {
    layout_refreshing(session, title, current, None, body)
}

/// [`layout`] for a page that moves by itself: `refresh` is where the browser goes every
/// [`REFRESH_SECS`] seconds (a `<meta http-equiv="refresh">`: no script, which the CSP forbids).
fn layout_refreshing(
    session: Option<&Session>,
    title: &str,
    current: &str,
    refresh: Option<&str>,
    body: Markup,
) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · waba-migrator dashboard" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                @if let Some(url) = refresh {
                    meta http-equiv="refresh" content=(format!("{REFRESH_SECS}; url={url}"));
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "waba-migrator" }
                    @if let Some(s) = session {
                        nav aria-label="Dashboard" {
                            ul {
                                li { a href="/dashboard" aria-current=[(current == "overview").then_some("page")] { "Overview" } }
                                li { a href="/dashboard/migrations" aria-current=[(current == "list").then_some("page")] { "Migrations" } }
                                li { a href="/dashboard/batches" aria-current=[(current == "batches").then_some("page")] { "Batches" } }
                            }
                        }
                        div.who {
                            span { "Signed in as " strong { (s.who) } }
                            form.inline method="post" action="/dashboard/logout" {
                                input type="hidden" name=(CSRF_FIELD) value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    Html(page.into_string())
}

pub fn error_page(status: StatusCode, title: &str, detail: &str) -> Html<String> {
    layout(
        None,
        title,
        "",
        html! {
            h1 { (title) " (" (status.as_u16()) ")" }
            p.alert role="alert" { (detail) }
            p { a href="/dashboard" { "Back to the dashboard" } }
        },
    )
}

pub fn login(token: &str, error: Option<&str>) -> Html<String> {
    layout(
        None,
        "Sign in",
        "",
        html! {
            h1 { "Sign in" }
            p { "Use the admin key to see every partner, or a partner API key to see that partner's migrations. The key is checked once; the browser keeps only a session cookie." }
            @if let Some(e) = error { p.alert role="alert" { (e) } }
            form.signin method="post" action="/dashboard/login" {
                input type="hidden" name="csrf" value=(token);
                label for="key" { "API key"
                    input #key type="password" name="key" required autocomplete="off" spellcheck="false";
                }
                div { button.primary type="submit" { "Sign in" } }
            }
        },
    )
}

pub struct Overview {
    pub counts: HashMap<String, i64>,
    pub stuck: Vec<(Migration, DateTime<Utc>)>,
    pub stuck_minutes: u64,
    pub failures: Vec<(Option<String>, i64)>,
    pub throughput: Vec<(i32, i64, i64, i64)>,
    pub names: HashMap<Uuid, String>,
}

fn partner_name(names: &HashMap<Uuid, String>, id: Uuid) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

pub fn overview(session: &Session, d: &Overview) -> Html<String> {
    let admin = session.caller == Caller::Admin;
    let body = html! {
        h1 { "Overview" }
        section aria-labelledby="h-counts" {
            h2 #h-counts { "Migrations by state" }
            ul.counts {
                @for s in MigrationState::ALL {
                    li { a href={ "/dashboard/migrations?state=" (s.as_str()) } {
                        span.n { (d.counts.get(s.as_str()).copied().unwrap_or(0)) }
                        (state_badge(s))
                    } }
                }
            }
        }
        section aria-labelledby="h-stuck" {
            h2 #h-stuck { "Stuck: not advanced for more than " (d.stuck_minutes) " min (" (d.stuck.len()) ")" }
            @if d.stuck.is_empty() {
                p.muted { "None: every unfinished migration moved recently." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Number" }
                        @if admin { th scope="col" { "Partner" } }
                        th scope="col" { "Step" }
                        th scope="col" { "In this step for" }
                        th scope="col" { "Waiting for" }
                    } }
                    tbody {
                        @for (m, entered) in &d.stuck {
                            tr {
                                td { a href={ "/dashboard/migrations/" (m.id) } { (m.phone_number) } }
                                @if admin { td { (partner_name(&d.names, m.partner_id)) } }
                                td { (state_badge(m.state)) }
                                td { (since(*entered)) }
                                td { (waiting_for(m.state)) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-fail" {
            h2 #h-fail { "Failed in the last 24 h, not retried since" }
            @if d.failures.is_empty() {
                p.muted { "No migration that failed in the last 24 hours is still failed." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Error code" }
                        th.num scope="col" { "Migrations" }
                        th scope="col" { "Who acts" }
                        th scope="col" { "Retry helps" }
                        th scope="col" { "What to do" }
                    } }
                    tbody {
                        @for (code, n) in &d.failures {
                            @let parsed = code.as_deref().and_then(|c| serde_json::from_value::<ErrorCode>(serde_json::Value::String(c.to_owned())).ok());
                            tr {
                                td { code { (code.as_deref().unwrap_or("(none)")) } }
                                td.num { a href="/dashboard/migrations?state=failed" { (n) } }
                                @if let Some(c) = parsed {
                                    @let (_, remediation, actor, retryable) = c.describe();
                                    td { (actor_text(actor)) }
                                    td { @if retryable { "yes" } @else { "no" } }
                                    td { (remediation) }
                                } @else {
                                    td { "—" } td { "—" } td { "—" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-tp" {
            h2 #h-tp { "Throughput, last hour (5-minute buckets)" }
            (chart(&d.throughput))
        }
    };
    layout(Some(session), "Overview", "overview", body)
}

/// Twelve groups of three bars (created, completed, failed), inline SVG: no script, works
/// offline. The same numbers follow as a table, and failed bars are hatched.
fn chart(rows: &[(i32, i64, i64, i64)]) -> Markup {
    let mut buckets = [(0i64, 0i64, 0i64); 12];
    for &(b, c, done, f) in rows {
        if let Some(slot) = buckets.get_mut(b.clamp(0, 11) as usize) {
            *slot = (c, done, f);
        }
    }
    let max = buckets
        .iter()
        .map(|&(a, b, c)| a.max(b).max(c))
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, left, bottom, top) = (720.0, 200.0, 36.0, 24.0, 10.0);
    let plot_h = h - bottom - top;
    let group = (w - left - 8.0) / 12.0;
    let bar = group / 4.0;
    let y = |v: i64| top + plot_h - plot_h * (v as f64) / (max as f64);
    let label = |i: usize| -> String {
        let mins = 60 - 5 * i as i64;
        format!("−{mins}m")
    };
    let totals = buckets
        .iter()
        .fold((0, 0, 0), |t, b| (t.0 + b.0, t.1 + b.1, t.2 + b.2));
    html! {
        p { "Created " strong { (totals.0) } ", completed " strong { (totals.1) } ", failed " strong { (totals.2) } " in the last hour." }
        ul.legend {
            li { span.swatch.created aria-hidden="true" {} "created" }
            li { span.swatch.completed aria-hidden="true" {} "completed" }
            li { span.swatch.failed aria-hidden="true" {} "failed (hatched)" }
        }
        svg.chart viewBox={ "0 0 " (w) " " (h) } role="img" aria-labelledby="chart-title" {
            title #chart-title { "Migrations created, completed and failed per 5 minutes over the last hour" }
            defs {
                pattern #hatch width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                    rect width="6" height="6" fill="#ffffff" {}
                    rect width="3" height="6" fill="#cf222e" {}
                }
            }
            line.axis x1=(left) y1=(top + plot_h) x2=(w - 4.0) y2=(top + plot_h) {}
            line.axis x1=(left) y1=(top) x2=(left) y2=(top + plot_h) {}
            text x=(left - 4.0) y=(top + 8.0) text-anchor="end" { (max) }
            text x=(left - 4.0) y=(top + plot_h) text-anchor="end" { "0" }
            @for (i, &(c, done, f)) in buckets.iter().enumerate() {
                @let x0 = left + 4.0 + group * i as f64;
                @for (k, (v, class, what)) in [(c, "bar-created", "created"), (done, "bar-completed", "completed"), (f, "bar-failed", "failed")].into_iter().enumerate() {
                    rect class=(class) x=(x0 + bar * k as f64) y=(y(v)) width=(bar - 1.0) height=(top + plot_h - y(v)) {
                        title { (v) " " (what) ", " (label(i)) " to " (label(i + 1).replace("−0m", "now")) }
                    }
                }
                @if i % 2 == 0 {
                    text x=(x0) y=(h - 6.0) { (label(i)) }
                }
            }
            text x=(w - 30.0) y=(h - 6.0) { "now" }
        }
        details {
            summary { "The chart as a table" }
            table {
                thead { tr {
                    th scope="col" { "Interval" }
                    th.num scope="col" { "Created" }
                    th.num scope="col" { "Completed" }
                    th.num scope="col" { "Failed" }
                } }
                tbody {
                    @for (i, &(c, done, f)) in buckets.iter().enumerate() {
                        tr {
                            th scope="row" { (label(i)) " to " (label(i + 1).replace("−0m", "now")) }
                            td.num { (c) } td.num { (done) } td.num { (f) }
                        }
                    }
                }
            }
        }
    }
}

pub struct List {
    pub rows: Vec<(Migration, DateTime<Utc>)>,
    pub next_cursor: Option<String>,
    pub names: HashMap<Uuid, String>,
}

fn list_query(q: &ListParams, cursor: Option<&str>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("state", &q.state),
        ("partner_id", &q.partner_id),
        ("phone", &q.phone),
        ("from", &q.from),
        ("to", &q.to),
    ] {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    if let Some(c) = cursor {
        s.append_pair("cursor", c);
    }
    s.finish()
}

pub fn list(session: &Session, q: &ListParams, d: &List) -> Html<String> {
    let admin = session.caller == Caller::Admin;
    let mut partners: Vec<(&Uuid, &String)> = d.names.iter().collect();
    partners.sort_by(|a, b| a.1.cmp(b.1));
    let body = html! {
        h1 { "Migrations" }
        form.filters method="get" action="/dashboard/migrations" role="search" aria-label="Filter migrations" {
            label for="f-state" { "State"
                select #f-state name="state" {
                    option value="" selected[q.state.is_empty()] { "any" }
                    @for s in MigrationState::ALL {
                        option value=(s.as_str()) selected[q.state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            @if admin {
                label for="f-partner" { "Partner"
                    select #f-partner name="partner_id" {
                        option value="" selected[q.partner_id.is_empty()] { "any" }
                        @for (id, n) in &partners {
                            option value=(id) selected[q.partner_id == id.to_string()] { (n) }
                        }
                    }
                }
            }
            label for="f-phone" { "Phone number contains"
                input #f-phone type="search" name="phone" value=(q.phone) inputmode="tel" placeholder="+5511…" autocomplete="off";
            }
            label for="f-from" { "Created from"
                input #f-from type="date" name="from" value=(q.from);
            }
            label for="f-to" { "Created to"
                input #f-to type="date" name="to" value=(q.to);
            }
            button.primary type="submit" { "Filter" }
            a href="/dashboard/migrations" { "Clear" }
        }
        @if d.rows.is_empty() {
            p { "No migration matches these filters." }
        } @else {
            table #migrations {
                caption { (d.rows.len()) " migrations, newest first" }
                thead { tr {
                    th scope="col" { "Number" }
                    @if admin { th scope="col" { "Partner" } }
                    th scope="col" { "Step" }
                    th scope="col" { "In this step for" }
                    th scope="col" { "Error" }
                    th scope="col" { "Created" }
                } }
                tbody {
                    @for (m, entered) in &d.rows {
                        tr {
                            td { a href={ "/dashboard/migrations/" (m.id) } { (m.phone_number) } }
                            @if admin { td { (partner_name(&d.names, m.partner_id)) } }
                            td { (state_badge(m.state)) }
                            td { (since(*entered)) }
                            td { @if let Some(e) = &m.error { code { (e.code.as_str()) } } @else { span.muted { "—" } } }
                            td { (when(m.created_at)) }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !q.cursor.is_empty() {
                a href={ "/dashboard/migrations?" (list_query(q, None)) } { "← First page" }
            }
            @if let Some(c) = &d.next_cursor {
                a href={ "/dashboard/migrations?" (list_query(q, Some(c))) } rel="next" { "Next page →" }
            }
        }
    };
    layout(Some(session), "Migrations", "list", body)
}

pub struct Detail {
    pub m: Migration,
    /// Whether its client page link may be replaced now ([`crate::core::client_page::replaceable`]).
    pub can_rotate_link: bool,
    pub in_state_since: DateTime<Utc>,
    pub partner: String,
    pub events: Vec<EventRow>,
    pub deliveries: Vec<DeliveryRow>,
    pub attempts: Vec<AttemptRow>,
    pub notice: Option<String>,
    pub alert: Option<String>,
}

/// A callback URL without query or fragment (they may carry a consumer's token).
fn safe_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            let had_query = url.query().is_some();
            url.set_query(None);
            url.set_fragment(None);
            let _ = url.set_password(None);
            let _ = url.set_username("");
            if had_query {
                format!("{url}?…")
            } else {
                url.to_string()
            }
        }
        Err(_) => "(invalid URL)".into(),
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> Markup {
    html! { @if let Some(v) = v { (v) } @else { span.muted { "—" } } }
}

/// The end client's page link: its state (never the link itself) and a rotate button.
fn client_page_section(
    session: &Session,
    m: &Migration,
    can_rotate: bool,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        section aria-labelledby="h-client-page" {
            h2 #h-client-page { "Client page" }
            @match &m.client_page {
                Some(Some(p)) => {
                    dl.facts #client-page-state {
                        dt { "Opened" } dd {
                            @if let Some(t) = p.opened_at { (when(t)) " (" (since(t)) " ago)" }
                            @else { span.muted { "not yet" } }
                        }
                        dt { "Submissions" } dd { (p.submissions) " (codes and resend requests through the page)" }
                        dt { "Link valid until" } dd {
                            (when(p.expires_at))
                            @if p.expires_at > now { " (in " (duration(p.expires_at - now)) ")" }
                            @else { " — " strong { "no longer valid" } }
                        }
                    }
                    @if can_rotate {
                        form method="post" action={ "/dashboard/migrations/" (m.id) "/client_page/rotate" } {
                            input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                            button type="submit" #rotate-client-page { "Replace the link" }
                        }
                        p.muted { "The current link stops working at once; the partner reads the new one from "
                            code { "GET /v1/migrations/" (m.id) } " (" code { "client_page.url" } ")." }
                    }
                }
                _ => { p.muted { "Disabled: the migration was created with " code { "\"client_page\": \"disabled\"" } "." } }
            }
        }
    }
}

pub fn detail(session: &Session, d: &Detail) -> Html<String> {
    let m = &d.m;
    let now = Utc::now();
    let body = html! {
        p { a href="/dashboard/migrations" { "← All migrations" } }
        h1 { "Migration of " (m.phone_number) " " (state_badge(m.state)) }
        @if let Some(n) = &d.notice { p.notice role="status" { (n) } }
        @if let Some(a) = &d.alert { p.alert role="alert" { "Not done: " (a) } }
        @if m.state.is_terminal() {
            p { "Finished: " strong { (m.state.as_str()) } " " (since(d.in_state_since)) " ago." }
        } @else {
            p { "Step " strong { (m.state.as_str()) } " for " strong { (since(d.in_state_since)) } "; waiting for " (waiting_for(m.state)) "." }
        }

        @if let Some(w) = &m.waiting_for {
            section.waiting-box aria-labelledby="h-waiting" {
                h2 #h-waiting { "Waiting for: " code { (w.code.as_str()) } }
                p { (w.message) }
                p.remediation { "What to do: " (w.remediation) }
                dl.facts {
                    dt { "Who must act" } dd { (actor_text(w.actor)) }
                    dt { "Waiting since" } dd { (when(w.since)) " (" (since(w.since)) ")" }
                    dt { "Deadline" } dd {
                        (when(w.deadline))
                        @if w.deadline > now { " (in " (duration(w.deadline - now)) ")" }
                        @if m.state == MigrationState::AwaitingOtp {
                            "; then it fails with " code { "otp_expired" }
                        } @else {
                            "; then it fails with " code { (w.code.as_str()) }
                        }
                    }
                }
            }
        }

        @if let Some(e) = &m.error {
            section.error-box aria-labelledby="h-error" {
                h2 #h-error { "Error: " code { (e.code.as_str()) } }
                p { (e.message) }
                p.remediation { "What to do: " (e.remediation) }
                dl.facts {
                    dt { "Who must act" } dd { (actor_text(e.actor)) }
                    dt { "Failed step" } dd { (opt(&e.step.map(|s| s.as_str()))) }
                    dt { "Retry can help" } dd { @if e.retryable { "yes, once the remediation is done" } @else { "no" } }
                    @if let Some(u) = &e.upstream {
                        dt { "Upstream" } dd { (name(&u.service)) }
                        dt { "Upstream HTTP status" } dd { (opt(&u.http_status)) }
                        dt { "Upstream code / subcode" } dd { (opt(&u.code)) " / " (opt(&u.subcode)) }
                        dt { "Trace id (fbtrace_id)" } dd { code { (opt(&u.fbtrace_id)) } }
                        dt { "Upstream message" } dd { (u.message) }
                    }
                }
            }
        }

        section aria-labelledby="h-actions" {
            h2 #h-actions { "Actions" }
            div.actions {
                @if m.state == MigrationState::Failed {
                    form method="post" action={ "/dashboard/migrations/" (m.id) "/retry" } {
                        input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                        button.primary type="submit" #retry { "Retry from the failed step" }
                    }
                }
                @if m.state.accepts_otp_resend() {
                    form method="post" action={ "/dashboard/migrations/" (m.id) "/resend" } {
                        input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                        label for="resend-method" { "Send by "
                            select #resend-method name="method" {
                                option value="sms" selected[m.otp.method.as_str() == "sms"] { "SMS" }
                                option value="voice" selected[m.otp.method.as_str() == "voice"] { "voice call" }
                            }
                        }
                        button type="submit" #resend { "Resend code" }
                    }
                }
                // A migration that completed once and is back in `generating_api_key` is
                // rotating its key: that cannot be cancelled.
                @if !m.state.is_terminal() && m.completed_at.is_some() {
                    p.muted { "Rotating the API key: the migration completes again with the new key." }
                }
                @if !m.state.is_terminal() && m.completed_at.is_none() {
                    details {
                        summary { "Cancel this migration…" }
                        p { "Upstream changes already made (e.g. a registered number) are not undone." }
                        form method="post" action={ "/dashboard/migrations/" (m.id) "/cancel" } {
                            input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                            button.danger type="submit" #cancel { "Cancel migration" }
                        }
                    }
                }
                @if m.state.is_terminal() && m.state != MigrationState::Failed {
                    p.muted { "No action: the migration is " (m.state.as_str()) "." }
                }
            }
        }

        (client_page_section(session, m, d.can_rotate_link, now))

        div.grid {
            section aria-labelledby="h-facts" {
                h2 #h-facts { "Migration" }
                dl.facts {
                    dt { "Id" } dd { code { (m.id) } }
                    dt { "Partner" } dd { (d.partner) }
                    @if let Some(b) = m.batch_id {
                        dt { "Batch" } dd { a #batch-link href={ "/dashboard/batches/" (b) } { code { (b) } } }
                    }
                    dt { "Flow" } dd { (name(&m.flow)) }
                    dt { "Source WABA" } dd { code { (m.source_waba_id) } }
                    dt { "Destination WABA" } dd { code { (m.destination_waba_id) } }
                    dt { "Meta business" } dd { code { (m.meta_business_id) } }
                    dt { "Phone number id" } dd { (opt(&m.phone_number_id)) }
                    dt { "360dialog channel" } dd { (opt(&m.channel_id)) }
                    dt { "Callback URL" } dd { (opt(&m.callback_url.as_deref().map(safe_url))) }
                    dt { "Created" } dd { (when(m.created_at)) }
                    dt { "Updated" } dd { (when(m.updated_at)) }
                    dt { "Completed" } dd { @if let Some(t) = m.completed_at { (when(t)) } @else { span.muted { "—" } } }
                }
            }
            section aria-labelledby="h-otp" {
                h2 #h-otp { "Verification code (OTP)" }
                dl.facts {
                    dt { "Method" } dd { (m.otp.method.as_str()) " (" (m.otp.language) ")" }
                    dt { "Attempts left" } dd { (m.otp.attempts_left) }
                    dt { "Requested" } dd { @if let Some(t) = m.otp.requested_at { (when(t)) } @else { span.muted { "not yet" } } }
                    // Only where `POST …/otp/resend` would be accepted.
                    @if m.state.accepts_otp_resend() {
                        dt { "Resend available" } dd {
                            @match m.otp.resend_available_at {
                                Some(t) if t > now => { (when(t)) " (in " (duration(t - now)) ")" }
                                Some(_) => { "now" }
                                None => { span.muted { "—" } }
                            }
                        }
                    }
                    dt { "Expires" } dd { @if let Some(t) = m.otp.expires_at { (when(t)) } @else { span.muted { "—" } } }
                }
                h2 #h-key { "360dialog API key" }
                dl.facts {
                    dt { "Status" } dd { (m.api_key.status) }
                    dt { "Generated" } dd { @if let Some(t) = m.api_key.generated_at { (when(t)) } @else { span.muted { "—" } } }
                }
                p.muted { "The key itself is never shown here; the partner fetches it once from the API." }
            }
        }

        section aria-labelledby="h-precheck" {
            h2 #h-precheck { "Prechecks" }
            @if let Some(p) = &m.precheck {
                p { "Overall: " strong class={ "check-" (name(&p.status)) } { (name(&p.status)) } }
                table {
                    thead { tr {
                        th scope="col" { "Check" }
                        th scope="col" { "Result" }
                        th scope="col" { "Finding" }
                        th scope="col" { "Who acts" }
                        th scope="col" { "What to do" }
                    } }
                    tbody {
                        @for c in &p.checks {
                            @let st = name(&c.status);
                            tr {
                                td { code { (c.id) } }
                                td class={ "check-" (st) } { @match st.as_str() { "pass" => "✓ ", "warn" => "! ", _ => "✗ " } (st) }
                                td { (c.message) }
                                td { (actor_text(c.actor)) }
                                td { (c.remediation) }
                            }
                        }
                    }
                }
            } @else {
                p.muted { "Not run yet." }
            }
        }

        section aria-labelledby="h-templates" {
            h2 #h-templates { "Templates" }
            @if let Some(t) = &m.templates {
                p { "Status " strong { (t.status) } ": " (t.eligible) " eligible, " (t.migrated.len()) " migrated, " (t.failed.len()) " failed, " (t.skipped.len()) " skipped." }
                @if let Some(e) = &t.error { p.alert { code { (e.code.as_str()) } ": " (e.remediation) } }
                @if !t.failed.is_empty() {
                    table {
                        caption { "Failed templates" }
                        thead { tr { th scope="col" { "Source template id" } th scope="col" { "Meta's reason" } } }
                        tbody { @for (id, why) in &t.failed { tr { td { code { (id) } } td { (why) } } } }
                    }
                }
                @if !t.skipped.is_empty() {
                    details {
                        summary { "Skipped templates (" (t.skipped.len()) ")" }
                        table {
                            thead { tr { th scope="col" { "Name" } th scope="col" { "Language" } th scope="col" { "Why" } } }
                            tbody { @for s in &t.skipped { tr { td { (s.name) } td { (s.language) } td { (s.reason) } } } }
                        }
                    }
                }
                @if !t.migrated.is_empty() {
                    details {
                        summary { "Migrated templates (" (t.migrated.len()) ")" }
                        table {
                            thead { tr { th scope="col" { "Name" } th scope="col" { "Language" } th scope="col" { "New id" } } }
                            tbody { @for s in &t.migrated { tr { td { (s.name) } td { (s.language) } td { code { (s.id) } } } } }
                        }
                    }
                }
            } @else {
                p.muted { "No template report yet." }
            }
        }

        section aria-labelledby="h-timeline" {
            h2 #h-timeline { "Timeline (" (d.events.len()) " events)" }
            ol.timeline {
                @for e in &d.events {
                    li {
                        (when(e.created_at)) " — "
                        strong { (e.kind.trim_start_matches("migration.")) }
                        @if let (Some(f), Some(t)) = (&e.from_state, &e.to_state) { " " (f) " → " (t) }
                        @else if let Some(t) = &e.to_state { " → " (t) }
                        @if e.data.as_object().is_some_and(|o| !o.is_empty()) {
                            span.data.mono { (e.data.to_string()) }
                        }
                    }
                }
            }
        }

        section aria-labelledby="h-webhooks" {
            h2 #h-webhooks { "Webhook deliveries (" (d.deliveries.len()) ")" }
            @if d.deliveries.is_empty() {
                p.muted { "None: no callback URL for this migration or its partner." }
            } @else {
                table {
                    thead { tr {
                        th.num scope="col" { "Seq" }
                        th scope="col" { "Event" }
                        th scope="col" { "Status" }
                        th.num scope="col" { "Attempts" }
                        th scope="col" { "Last response" }
                        th scope="col" { "Next attempt" }
                        th scope="col" { "URL" }
                    } }
                    tbody {
                        @for w in &d.deliveries {
                            tr {
                                td.num { (w.sequence) }
                                td { code { (w.event_type) } }
                                td { (w.status) }
                                td.num { (w.attempts) }
                                td {
                                    @if let Some(c) = w.last_status_code { "HTTP " (c) } @else { span.muted { "—" } }
                                    @if let Some(e) = &w.last_error { br; span.muted { (e) } }
                                }
                                td { @if let Some(t) = w.next_attempt_at { (when(t)) } @else { span.muted { "—" } } }
                                td { span.mono { (safe_url(&w.url)) } }
                            }
                        }
                    }
                }
                @if !d.attempts.is_empty() {
                    details {
                        summary { "Every attempt (" (d.attempts.len()) ")" }
                        table {
                            thead { tr {
                                th scope="col" { "Delivery" } th.num scope="col" { "Attempt" } th scope="col" { "Started" }
                                th scope="col" { "Outcome" } th scope="col" { "Response" } th.num scope="col" { "Latency" } th scope="col" { "Error" }
                            } }
                            tbody {
                                @for a in &d.attempts {
                                    tr {
                                        td { code { (a.delivery_id.to_string().get(..8).unwrap_or("")) "…" } }
                                        td.num { (a.attempt) }
                                        td { (when(a.started_at)) }
                                        td { (a.outcome) }
                                        td { (opt(&a.status_code)) }
                                        td.num { (a.latency_ms) " ms" }
                                        td { (opt(&a.error)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(
        Some(session),
        &format!("Migration {}", m.phone_number),
        "list",
        body,
    )
}
