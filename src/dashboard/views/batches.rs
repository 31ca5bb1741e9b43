//! The batch pages: the list with the CSV upload form, and a batch's progress page.

use std::collections::HashMap;

use axum::response::Html;
use maud::{Markup, html};
use uuid::Uuid;

use super::{
    CSRF_FIELD, Session, actor_text, count, duration, layout, layout_refreshing, partner_name,
    state_badge, when,
};
use crate::api::Migration;
use crate::api::batch::{Batch, BatchItem, BatchState};
use crate::api::problem::FieldError;
use crate::core::Caller;
use crate::domain::{ErrorCode, MigrationState};

/// What the upload form was sent with (shown again when it is refused).
#[derive(Debug, Default, Clone)]
pub struct UploadForm {
    pub partner_id: String,
    pub name: String,
    pub max_in_flight: String,
    pub callback_url: String,
    /// The uploaded file's name, to say which file was refused.
    pub file_name: String,
    /// This rendering of the form (a fresh one each time): the upload's `Idempotency-Key`, so
    /// a double click or a reload of the POST creates the batch once.
    pub upload_id: String,
}

pub struct BatchList {
    pub batches: Vec<Batch>,
    pub next_cursor: Option<String>,
    /// Whether this is a later page (a cursor was given).
    pub paged: bool,
    pub names: HashMap<Uuid, String>,
    pub form: UploadForm,
    /// Why the upload was refused, when it was.
    pub alert: Option<String>,
    /// The upload's problems, one per cell (row and column) or field.
    pub problems: Vec<FieldError>,
}

fn batch_badge(s: BatchState) -> Markup {
    let (class, symbol, text) = match s {
        BatchState::Active => ("run", "▶", "active"),
        BatchState::Finished => ("ok", "✓", "finished"),
        BatchState::Cancelled => ("off", "⊘", "cancelled"),
    };
    html! { span class={ "state " (class) } { span aria-hidden="true" { (symbol) " " } (text) } }
}

fn percent(b: &Batch) -> String {
    format!("{:.0} %", b.progress * 100.0)
}

/// Where a problem of the upload is: "row 4, column phone_number", "field name", "the file".
fn place(e: &FieldError) -> (String, String) {
    let row = e.row.map(|r| r.to_string()).unwrap_or_default();
    let column = match (&e.column, e.pointer.strip_prefix("/query/")) {
        (Some(c), _) => c.clone(),
        (None, Some(field)) => format!("form field “{field}”"),
        (None, None) => String::new(),
    };
    (row, column)
}

pub fn batch_list(session: &Session, d: &BatchList) -> Html<String> {
    let admin = session.caller == Caller::Admin;
    let mut partners: Vec<(&Uuid, &String)> = d.names.iter().collect();
    partners.sort_by(|a, b| a.1.cmp(b.1));
    let f = &d.form;
    let body = html! {
        h1 { "Batches" }
        section aria-labelledby="h-upload" {
            h2 #h-upload { "Upload a CSV" }
            p { "A header row of the create body's field names ("
                code { "phone_number" } ", " code { "source_waba_id" } ", " code { "destination_waba_id" } ", "
                code { "meta_business_id" } ", and any of " code { "otp_method" } ", " code { "otp_language" } ", "
                code { "pin" } ", " code { "callback_url" } ", " code { "metadata" } ", " code { "flow" } ", "
                code { "channel_id" } ", " code { "client_page" } ", " code { "reference" }
                "), then one number per row, up to 5,000. Every row is checked first, as "
                code { "POST /v1/batches" } " checks it: any problem and nothing is created." }
            @if let Some(a) = &d.alert {
                p.alert role="alert" #upload-alert {
                    "Nothing was created"
                    @if !f.file_name.is_empty() { " from " strong { (f.file_name) } }
                    ": " (a)
                }
            }
            @if !d.problems.is_empty() {
                table #upload-errors {
                    caption { (d.problems.len()) " problems; nothing was created" }
                    thead { tr {
                        th.num scope="col" { "Row" }
                        th scope="col" { "Column" }
                        th scope="col" { "Problem" }
                    } }
                    tbody {
                        @for e in &d.problems {
                            @let (row, column) = place(e);
                            tr {
                                td.num { (row) }
                                td { @if column.is_empty() { span.muted { "—" } } @else { code { (column) } } }
                                td { (e.message) }
                            }
                        }
                    }
                }
            }
            form.upload #upload method="post" action="/dashboard/batches" enctype="multipart/form-data" {
                input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                input type="hidden" name="upload_id" value=(f.upload_id);
                @if admin {
                    label for="u-partner" { "Partner (the batch and its migrations belong to it)"
                        select #u-partner name="partner_id" required {
                            option value="" selected[f.partner_id.is_empty()] { "choose…" }
                            @for (id, n) in &partners {
                                option value=(id) selected[f.partner_id == id.to_string()] { (n) }
                            }
                        }
                    }
                }
                label for="u-file" { "CSV file"
                    input #u-file type="file" name="file" accept=".csv,text/csv" required;
                }
                label for="u-name" { "Name (default: “CSV upload” and the time)"
                    input #u-name type="text" name="name" value=(f.name) maxlength="200" autocomplete="off";
                }
                label for="u-max" { "Max in flight (1–1000, default 20)"
                    input #u-max type="number" name="max_in_flight" value=(f.max_in_flight) min="1" max="1000" inputmode="numeric";
                }
                label for="u-callback" { "Batch callback URL (optional)"
                    input #u-callback type="url" name="callback_url" value=(f.callback_url) autocomplete="off";
                }
                div { button.primary type="submit" #upload-submit { "Check and create the batch" } }
            }
        }
        section aria-labelledby="h-batches" {
            h2 #h-batches { "Batches, newest first" }
            @if d.batches.is_empty() {
                p.muted { "No batch yet." }
            } @else {
                table #batches {
                    thead { tr {
                        th scope="col" { "Name" }
                        @if admin { th scope="col" { "Partner" } }
                        th scope="col" { "State" }
                        th.num scope="col" { "Finished" }
                        th.num scope="col" { "Failed" }
                        th scope="col" { "Created" }
                    } }
                    tbody {
                        @for b in &d.batches {
                            tr {
                                td { a href={ "/dashboard/batches/" (b.id) } { (b.name) } }
                                @if admin { td { (partner_name(&d.names, b.partner_id)) } }
                                td { (batch_badge(b.state)) }
                                td.num { (b.finished) " / " (b.total) " (" (percent(b)) ")" }
                                td.num { (b.counts_by_state.get("failed").copied().unwrap_or(0)) }
                                td { (when(b.created_at)) }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if d.paged { a href="/dashboard/batches" { "← First page" } }
                @if let Some(c) = &d.next_cursor {
                    a href={ "/dashboard/batches?cursor=" (c) } rel="next" { "Next page →" }
                }
            }
        }
    };
    layout(Some(session), "Batches", "batches", body)
}

pub struct BatchPage {
    pub b: Batch,
    pub partner: String,
    /// This page of its migrations, each with its `reference`.
    pub migrations: Vec<(Option<String>, Migration)>,
    pub state_filter: String,
    pub error_filter: String,
    pub cursor: String,
    pub next_cursor: Option<String>,
    pub notice: Option<String>,
    pub alert: Option<String>,
    /// Items the create just rejected (shown once, right after the upload).
    pub rejected: Vec<BatchItem>,
}

/// The page's query: its filters and, optionally, a cursor.
pub fn page_query(state: &str, error_code: &str, cursor: Option<&str>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("state", state), ("error_code", error_code)] {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    if let Some(c) = cursor {
        s.append_pair("cursor", c);
    }
    s.finish()
}

fn page_url(id: Uuid, query: &str) -> String {
    if query.is_empty() {
        format!("/dashboard/batches/{id}")
    } else {
        format!("/dashboard/batches/{id}?{query}")
    }
}

pub fn batch_page(session: &Session, d: &BatchPage) -> Html<String> {
    let b = &d.b;
    let failed = b.counts_by_state.get("failed").copied().unwrap_or(0);
    let this_page = page_url(
        b.id,
        &page_query(
            &d.state_filter,
            &d.error_filter,
            (!d.cursor.is_empty()).then_some(d.cursor.as_str()),
        ),
    );
    let body = html! {
        p { a href="/dashboard/batches" { "← All batches" } }
        h1 { "Batch " (b.name) " " (batch_badge(b.state)) }
        @if let Some(n) = &d.notice { p.notice role="status" { (n) } }
        @if let Some(a) = &d.alert { p.alert role="alert" { "Not done: " (a) } }
        @if !d.rejected.is_empty() {
            section.error-box aria-labelledby="h-rejected" {
                h2 #h-rejected { (count(d.rejected.len(), "number", "numbers")) " not added" }
                p { "These rows were valid, but their number is busy: the batch was created without them." }
                table #rejected {
                    thead { tr {
                        th.num scope="col" { "Row" }
                        th scope="col" { "Reference" }
                        th scope="col" { "Number" }
                        th scope="col" { "Why" }
                    } }
                    tbody {
                        @for i in &d.rejected {
                            tr {
                                td.num { (i.spreadsheet_row()) }
                                td { (i.reference.as_deref().unwrap_or("")) }
                                td { (i.phone_number) }
                                td {
                                    @if let Some(e) = &i.error {
                                        code { (e["code"].as_str().unwrap_or("")) } ": " (e["detail"].as_str().unwrap_or(""))
                                        @if let Some(m) = e["migration_id"].as_str() {
                                            " " a href={ "/dashboard/migrations/" (m) } { "the active migration" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-progress" {
            h2 #h-progress { "Progress" }
            p #progress-text {
                progress #progress max=(b.total.max(1)) value=(b.finished) { (percent(b)) }
                " " strong { (b.finished) " of " (b.total) } " finished (" (percent(b)) ")"
                @if b.state == BatchState::Active {
                    @match b.estimated_seconds_left {
                        Some(s) => { "; about " strong { (duration(chrono::Duration::seconds(s))) } " left" }
                        None => { "; no estimate until one migration has finished" }
                    }
                }
                "."
            }
            @if b.state == BatchState::Active {
                @if d.rejected.is_empty() {
                    p.muted { "This page refreshes itself every " (super::REFRESH_SECS) " s while the batch runs." }
                } @else {
                    // Not refreshed: the rows not added are shown only here.
                    p.muted { "The rows not added are shown only on this page; " a href=(page_url(b.id, "")) { "open the batch" } " to follow its progress." }
                }
            }
            dl.facts {
                dt { "Id" } dd { code { (b.id) } }
                dt { "Partner" } dd { (d.partner) }
                dt { "Max in flight" } dd { (b.max_in_flight) }
                dt { "Created" } dd { (when(b.created_at)) }
                dt { "Started" } dd { (when(b.started_at)) }
                dt { "Finished" } dd { @if let Some(t) = b.finished_at { (when(t)) } @else { span.muted { "not yet" } } }
                @if let Some(t) = b.cancelled_at { dt { "Cancelled" } dd { (when(t)) } }
            }
        }
        section aria-labelledby="h-actions" {
            h2 #h-actions { "Report and actions" }
            div.actions {
                a #report href={ "/dashboard/batches/" (b.id) "/report.csv" } download {
                    "Download the report (CSV)"
                }
                @if failed > 0 {
                    details {
                        summary #retry-open { "Retry the failed migrations…" }
                        p { "Retries the " (failed) " failed migrations whose error is retryable, each from the step that failed (a new code may be sent to the client). The others stay failed." }
                        form method="post" action={ "/dashboard/batches/" (b.id) "/retry_failed" } {
                            input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                            button.primary type="submit" #retry-failed { "Retry failed migrations" }
                        }
                    }
                }
                @if b.state == BatchState::Active {
                    details {
                        summary #cancel-open { "Cancel this batch…" }
                        p { "Cancels every migration of the batch that has not finished. Upstream changes already made (e.g. a registered number) are not undone." }
                        form method="post" action={ "/dashboard/batches/" (b.id) "/cancel" } {
                            input type="hidden" name=(CSRF_FIELD) value=(session.csrf);
                            button.danger type="submit" #cancel-batch { "Cancel batch" }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-by-state" {
            h2 #h-by-state { "By state" }
            ul.counts #by-state {
                @for s in MigrationState::ALL {
                    @if let Some(n) = b.counts_by_state.get(s.as_str()) {
                        li { a href=(page_url(b.id, &page_query(s.as_str(), "", None))) {
                            span.n { (n) }
                            (state_badge(s))
                        } }
                    }
                }
            }
        }
        section aria-labelledby="h-by-error" {
            h2 #h-by-error { "Failures by error code" }
            @if b.counts_by_error_code.is_empty() {
                p.muted { "No failed migration." }
            } @else {
                table #by-error {
                    thead { tr {
                        th scope="col" { "Error code" }
                        th.num scope="col" { "Migrations" }
                        th scope="col" { "Who acts" }
                        th scope="col" { "Retry helps" }
                        th scope="col" { "What to do" }
                    } }
                    tbody {
                        @for (code, n) in &b.counts_by_error_code {
                            @let parsed = serde_json::from_value::<ErrorCode>(serde_json::Value::String(code.clone())).ok();
                            tr {
                                td { code { (code) } }
                                td.num { a href=(page_url(b.id, &page_query("failed", code, None))) { (n) } }
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
        section aria-labelledby="h-migrations" {
            h2 #h-migrations { "Migrations" }
            @if !d.state_filter.is_empty() || !d.error_filter.is_empty() {
                p {
                    "Only "
                    @if !d.state_filter.is_empty() { code { (d.state_filter) } " " }
                    @if !d.error_filter.is_empty() { "with error " code { (d.error_filter) } " " }
                    "— " a href=(page_url(b.id, "")) { "show all" }
                }
            }
            @if d.migrations.is_empty() {
                p.muted { "None." }
            } @else {
                table #batch-migrations {
                    caption { (d.migrations.len()) " migrations, in the order sent" }
                    thead { tr {
                        th scope="col" { "Reference" }
                        th scope="col" { "Number" }
                        th scope="col" { "Step" }
                        th scope="col" { "Error / waiting for" }
                        th scope="col" { "Who acts" }
                        th scope="col" { "Updated" }
                    } }
                    tbody {
                        @for (reference, m) in &d.migrations {
                            tr {
                                td { @if let Some(r) = reference { (r) } @else { span.muted { "—" } } }
                                td { a href={ "/dashboard/migrations/" (m.id) } { (m.phone_number) } }
                                td { (state_badge(m.state)) }
                                @if let Some(e) = m.error.as_ref().filter(|_| m.state == MigrationState::Failed) {
                                    td { code { (e.code.as_str()) } }
                                    td { (actor_text(e.actor)) }
                                } @else if let Some(w) = &m.waiting_for {
                                    td { code { (w.code.as_str()) } }
                                    td { (actor_text(w.actor)) }
                                } @else {
                                    td { span.muted { "—" } }
                                    td { span.muted { "—" } }
                                }
                                td { (when(m.updated_at)) }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if !d.cursor.is_empty() {
                    a href=(page_url(b.id, &page_query(&d.state_filter, &d.error_filter, None))) { "← First page" }
                }
                @if let Some(c) = &d.next_cursor {
                    a href=(page_url(b.id, &page_query(&d.state_filter, &d.error_filter, Some(c)))) rel="next" { "Next page →" }
                }
            }
        }
    };
    // A running batch moves by itself; not right after an upload (the rejected list would go).
    let refresh =
        (b.state == BatchState::Active && d.rejected.is_empty()).then_some(this_page.as_str());
    layout_refreshing(
        Some(session),
        &format!("Batch {}", b.name),
        "batches",
        refresh,
        body,
    )
}
