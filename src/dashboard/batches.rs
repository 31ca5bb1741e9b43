//! Batch pages: the list with the CSV upload, a batch's progress, its report, and the cancel
//! and retry-failed actions. Everything goes through the core's batch commands
//! (`core::batches`), the ones `/v1/batches…` runs, with the session's caller: another
//! partner's batch is a 404 here as there.

use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::FormRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, body::Bytes};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use uuid::Uuid;

use super::DashError;
use super::session::{CsrfForm, Session};
use super::views::{self, BatchList, BatchPage, UploadForm};
use crate::api::Migration;
use crate::api::batch::{BatchCreated, BatchItem, ItemStatus};
use crate::api::problem::{ApiError, FieldError};
use crate::core::batches::{self as commands, Created};
use crate::core::migrations::{Idempotency, Source};
use crate::core::{AppState, Caller};
use crate::db::{self, batches as store};
use crate::domain::MigrationState;

/// Batches per list page.
const PAGE_SIZE: i64 = 25;
/// Migrations per page of a batch.
const MIGRATIONS_PAGE: i64 = 50;
/// The upload's body limit: the API's 8 MiB for the CSV, and room for the other fields.
pub const UPLOAD_LIMIT: usize = 8 * 1024 * 1024 + 64 * 1024;
/// The CSV file itself, as `POST /v1/batches` limits its body.
const CSV_LIMIT: usize = 8 * 1024 * 1024;

fn cursor_of(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn parse_cursor(c: &str) -> Result<Option<Uuid>, DashError> {
    if c.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .map(Some)
        .ok_or_else(|| DashError::BadRequest("not a page cursor".into()))
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub cursor: String,
}

/// The list page, with the upload form (and what was wrong with the last upload).
async fn render_list(
    state: &AppState,
    session: &Session,
    cursor: &str,
    form: UploadForm,
    alert: Option<String>,
    problems: Vec<FieldError>,
    status: StatusCode,
) -> Result<Response, DashError> {
    let before = parse_cursor(cursor)?;
    let mut rows = store::list(&state.pool, session.caller.scope(), before, PAGE_SIZE).await?;
    let next_cursor = if rows.len() as i64 > PAGE_SIZE {
        rows.truncate(PAGE_SIZE as usize);
        rows.last().map(|r| cursor_of(r.id))
    } else {
        None
    };
    let mut batches = Vec::with_capacity(rows.len());
    for row in rows {
        batches.push(commands::view(state, row).await?);
    }
    let names = super::pages::partner_names(state, session).await?;
    let form = UploadForm {
        upload_id: Uuid::new_v4().simple().to_string(),
        ..form
    };
    let data = BatchList {
        batches,
        next_cursor,
        paged: before.is_some(),
        names,
        form,
        alert,
        problems,
    };
    Ok((status, views::batch_list(session, &data)).into_response())
}

/// `GET /dashboard/batches`.
pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListParams>,
) -> Result<Response, DashError> {
    render_list(
        &state,
        &session,
        &q.cursor,
        UploadForm::default(),
        None,
        Vec::new(),
        StatusCode::OK,
    )
    .await
}

/// The upload form's fields.
#[derive(Default)]
struct Upload {
    csrf: String,
    form: UploadForm,
    csv: Option<Bytes>,
}

async fn read_upload(mut m: Multipart) -> Result<Upload, DashError> {
    let mut u = Upload::default();
    let refused = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            DashError::Internal(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The file is larger than 8 MiB (the limit of a batch upload, as for POST /v1/batches).",
            ))
        } else {
            DashError::BadRequest(format!("The upload could not be read: {}", e.body_text()))
        }
    };
    while let Some(field) = m.next_field().await.map_err(refused)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            u.form.file_name = field.file_name().unwrap_or_default().to_owned();
            u.csv = Some(field.bytes().await.map_err(refused)?);
            continue;
        }
        let text = field.text().await.map_err(refused)?;
        let slot = match name.as_str() {
            "csrf" => &mut u.csrf,
            "partner_id" => &mut u.form.partner_id,
            "name" => &mut u.form.name,
            "max_in_flight" => &mut u.form.max_in_flight,
            "callback_url" => &mut u.form.callback_url,
            "upload_id" => &mut u.form.upload_id,
            _ => continue,
        };
        *slot = text;
    }
    Ok(u)
}

/// The list page again, saying why the upload was refused; nothing was created.
async fn refuse(
    state: &AppState,
    session: &Session,
    form: UploadForm,
    alert: String,
    problems: Vec<FieldError>,
    status: StatusCode,
) -> Result<Response, DashError> {
    render_list(state, session, "", form, Some(alert), problems, status).await
}

/// The numbers of a `batch_all_rejected` answer, one problem per row: why each is busy.
fn busy_rows(e: &ApiError) -> Vec<FieldError> {
    let items = e
        .extra
        .as_ref()
        .and_then(|x| serde_json::from_value::<Vec<BatchItem>>(x["items"].clone()).ok())
        .unwrap_or_default();
    items
        .into_iter()
        .map(|i| {
            let row = i.spreadsheet_row();
            let why = i.error.unwrap_or_default();
            FieldError {
                pointer: format!("/rows/{row}/phone_number"),
                message: format!(
                    "{}: {} ({})",
                    i.phone_number,
                    why["detail"].as_str().unwrap_or("busy"),
                    why["code"].as_str().unwrap_or("")
                ),
                row: Some(row),
                column: Some("phone_number".into()),
            }
        })
        .collect()
}

/// `POST /dashboard/batches` (multipart): checks the CSV exactly as `POST /v1/batches` does
/// (the API's reader) and creates the batch through the same command. Any problem re-renders
/// the list with one line per problem (row, column, message) and creates nothing; success
/// redirects to the batch's page.
pub async fn upload(
    State(state): State<AppState>,
    session: Session,
    m: Result<Multipart, MultipartRejection>,
) -> Result<Response, DashError> {
    let m = m.map_err(|e| DashError::BadRequest(e.body_text()))?;
    let u = read_upload(m).await?;
    session.check_csrf(&u.csrf)?;
    let form = u.form;
    // Batches belong to a partner: the admin names it, a partner session is its own.
    let partner = match session.caller {
        Caller::Partner(p) => p,
        Caller::Admin => {
            let asked = Uuid::parse_str(form.partner_id.trim()).ok();
            let found = match asked {
                Some(p) => match db::partners::get(&state.pool, p).await {
                    Ok(row) => Some(row.id),
                    Err(db::Error::NotFound) => None,
                    Err(e) => return Err(e.into()),
                },
                None => None,
            };
            match found {
                Some(p) => p,
                None => {
                    return refuse(
                        &state,
                        &session,
                        form,
                        "choose the partner the batch belongs to.".into(),
                        Vec::new(),
                        StatusCode::UNPROCESSABLE_ENTITY,
                    )
                    .await;
                }
            }
        }
    };
    let Some(csv) = u.csv.filter(|b| !b.is_empty()) else {
        return refuse(
            &state,
            &session,
            form,
            "choose a CSV file (it was missing or empty).".into(),
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    };
    if csv.len() > CSV_LIMIT {
        return refuse(
            &state,
            &session,
            form,
            "the file is larger than 8 MiB (the limit of a batch upload).".into(),
            Vec::new(),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    }
    let Ok(text) = std::str::from_utf8(&csv) else {
        return refuse(
            &state,
            &session,
            form,
            "the file must be UTF-8 text (CSV).".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    };
    // The form's fields are the API's query parameters; an empty one is left out.
    let query = {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("name", &form.name),
            ("max_in_flight", &form.max_in_flight),
            ("callback_url", &form.callback_url),
        ] {
            if !v.trim().is_empty() {
                q.append_pair(k, v.trim());
            }
        }
        q.finish()
    };
    let input = match (state.batch_csv)(&query, text, state.webhooks.allow_private) {
        Ok(input) => input,
        Err(e) if e.status.is_client_error() => {
            let status = e.status;
            let alert = if e.errors.is_empty() {
                e.detail.clone()
            } else {
                format!("{} problems in the file or the form.", e.errors.len())
            };
            let problems = e.errors.clone();
            return refuse(&state, &session, form, alert, problems, status).await;
        }
        Err(e) => return Err(e.into()),
    };
    // The form's rendering names the upload: sent twice (a double click, a reload), it is
    // the same request, replayed, not a second batch whose every number is busy.
    let upload_id = form.upload_id.trim();
    let key = format!("dashboard-upload-{upload_id}");
    let sent = serde_json::json!({ "csv": text, "query": query });
    let idempotency = (upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Idempotency {
            key: &key,
            body: &sent,
        });
    let caller = Caller::Partner(partner);
    let created = match commands::create(&state, caller, idempotency, input).await {
        Ok(c) => c,
        // The form was sent before with another file (a form kept by the browser's Back).
        Err(e) if e.code == "idempotency_key_reused" => {
            return refuse(
                &state,
                &session,
                form,
                "this form was already used to upload another file; it is shown again: choose the file and send it once more.".into(),
                Vec::new(),
                StatusCode::CONFLICT,
            )
            .await;
        }
        Err(e) if e.status.is_client_error() => {
            let status = e.status;
            let (alert, problems) = if e.code == "batch_all_rejected" {
                let rows = busy_rows(&e);
                let alert = format!(
                    "{} busy or already migrated (below).",
                    if rows.len() == 1 {
                        "its one number is".to_owned()
                    } else {
                        format!("all {} numbers in it are", rows.len())
                    }
                );
                (alert, rows)
            } else {
                (e.detail.clone(), e.errors.clone())
            };
            return refuse(&state, &session, form, alert, problems, status).await;
        }
        Err(e) => return Err(e.into()),
    };
    // Sent before (only created batches are stored for a key): its batch, as then.
    let (out, again) = match created {
        Created::New(out) => (*out, false),
        Created::Replay { body, .. } => match serde_json::from_value::<BatchCreated>(body) {
            Ok(out) => (out, true),
            Err(e) => {
                return Err(DashError::Internal(ApiError::internal(anyhow::anyhow!(
                    "a stored batch upload does not read back: {e}"
                ))));
            }
        },
    };
    let id = out.batch.id;
    tracing::info!(batch.id = %id, by = %session.who, replayed = again, "dashboard batch upload");
    let rejected: Vec<BatchItem> = out
        .items
        .into_iter()
        .filter(|i| i.status == ItemStatus::Rejected)
        .collect();
    if rejected.is_empty() {
        let done = if again { "created_before" } else { "created" };
        return Ok(Redirect::to(&format!("/dashboard/batches/{id}?done={done}")).into_response());
    }
    // Shown here, with the upload's answer: the batch stores only what it created (a repeat of
    // the form shows its stored answer again).
    let notice = format!(
        "{}Batch created with {}; {} not added (below).",
        if again {
            "This upload was sent twice (a double click or a reload); it was made once. "
        } else {
            ""
        },
        views::count(
            usize::try_from(out.batch.total).unwrap_or_default(),
            "migration",
            "migrations"
        ),
        views::count(rejected.len(), "row was", "rows were")
    );
    render_batch(
        &state,
        &session,
        id,
        &PageParams::default(),
        Some(notice),
        None,
        rejected,
        StatusCode::CREATED,
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub cursor: String,
    /// Set by the redirect after an action.
    #[serde(default)]
    pub done: String,
    #[serde(default)]
    pub retried: String,
    #[serde(default)]
    pub skipped: String,
}

#[allow(clippy::too_many_arguments)]
async fn render_batch(
    state: &AppState,
    session: &Session,
    id: Uuid,
    q: &PageParams,
    notice: Option<String>,
    alert: Option<String>,
    rejected: Vec<BatchItem>,
    status: StatusCode,
) -> Result<Response, DashError> {
    let state_filter = match q.state.as_str() {
        "" => None,
        s => Some(
            s.parse::<MigrationState>()
                .map_err(|_| DashError::BadRequest(format!("unknown state `{s}`")))?
                .as_str()
                .to_owned(),
        ),
    };
    let error_filter = match q.error_code.as_str() {
        "" => None,
        c if c.len() <= 64
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            Some(c.to_owned())
        }
        _ => return Err(DashError::BadRequest("not an error code".into())),
    };
    let after = parse_cursor(&q.cursor)?;
    let row = commands::fetch(state, session.caller, id).await?;
    let partner = match session.caller {
        Caller::Admin => db::partners::get(&state.pool, row.partner_id).await?.name,
        Caller::Partner(_) => session.who.clone(),
    };
    let mut rows = store::migrations(
        &state.pool,
        row.id,
        &store::MigrationFilter {
            state: state_filter.clone(),
            error_code: error_filter.clone(),
            after_id: after,
            limit: Some(MIGRATIONS_PAGE),
        },
    )
    .await?;
    let next_cursor = if rows.len() as i64 > MIGRATIONS_PAGE {
        rows.truncate(MIGRATIONS_PAGE as usize);
        rows.last().map(|r| cursor_of(r.id))
    } else {
        None
    };
    let b = commands::view(state, row).await?;
    let data = BatchPage {
        b,
        partner,
        migrations: rows
            .iter()
            .map(|r| (r.batch_reference.clone(), Migration::from(r)))
            .collect(),
        state_filter: state_filter.unwrap_or_default(),
        error_filter: error_filter.unwrap_or_default(),
        cursor: if after.is_some() {
            q.cursor.clone()
        } else {
            String::new()
        },
        next_cursor,
        notice,
        alert,
        rejected,
    };
    Ok((status, views::batch_page(session, &data)).into_response())
}

/// `GET /dashboard/batches/{id}`: progress, counts by state and by error code, its migrations
/// (paged, filtered by state or error code).
pub async fn page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<PageParams>,
) -> Result<Response, DashError> {
    let id = Uuid::parse_str(&id).map_err(|_| DashError::NotFound)?;
    let notice = match q.done.as_str() {
        "created" => Some("Batch created: every row was valid and every number added.".to_owned()),
        "created_before" => Some(
            "This upload was sent twice (a double click or a reload): the batch was created once, here."
                .to_owned(),
        ),
        "cancel" => {
            Some("Cancelled: every migration that had not finished was cancelled.".to_owned())
        }
        "retry" => Some(format!(
            "Retried {} failed migrations; {} stay failed (their error is not retryable, or the number is busy).",
            q.retried.parse::<u64>().unwrap_or(0),
            q.skipped.parse::<u64>().unwrap_or(0)
        )),
        _ => None,
    };
    render_batch(
        &state,
        &session,
        id,
        &q,
        notice,
        None,
        Vec::new(),
        StatusCode::OK,
    )
    .await
}

/// `GET /dashboard/batches/{id}/report.csv`: the API's report, same bytes.
pub async fn report(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, DashError> {
    let id = Uuid::parse_str(&id).map_err(|_| DashError::NotFound)?;
    let (batch, body) = commands::report(&state, session.caller, id).await?;
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"batch-{}.csv\"", batch.id))
            .expect("a file name of a uuid"),
    );
    Ok(res)
}

fn csrf(f: Result<Form<CsrfForm>, FormRejection>) -> Result<String, DashError> {
    f.map(|Form(f)| f.csrf)
        .map_err(|e| DashError::BadRequest(e.body_text()))
}

/// A refused action (client error other than 404) re-renders the page with the reason.
async fn refused(
    state: &AppState,
    session: &Session,
    id: Uuid,
    e: ApiError,
) -> Result<Response, DashError> {
    if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND {
        let status = e.status;
        render_batch(
            state,
            session,
            id,
            &PageParams::default(),
            None,
            Some(e.detail.clone()),
            Vec::new(),
            status,
        )
        .await
    } else {
        Err(e.into())
    }
}

/// `POST /dashboard/batches/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    session.check_csrf(&csrf(f)?)?;
    let id = Uuid::parse_str(&id).map_err(|_| DashError::NotFound)?;
    match commands::cancel(&state, session.caller, id, Source::Dashboard).await {
        Ok(_) => {
            tracing::info!(batch.id = %id, action = "cancel", by = %session.who, "dashboard action");
            Ok(Redirect::to(&format!("/dashboard/batches/{id}?done=cancel")).into_response())
        }
        Err(e) => refused(&state, &session, id, e).await,
    }
}

/// `POST /dashboard/batches/{id}/retry_failed`.
pub async fn retry_failed(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    session.check_csrf(&csrf(f)?)?;
    let id = Uuid::parse_str(&id).map_err(|_| DashError::NotFound)?;
    match commands::retry_failed(&state, session.caller, id, Source::Dashboard).await {
        Ok(r) => {
            tracing::info!(batch.id = %id, action = "retry_failed", retried = r.retried, by = %session.who, "dashboard action");
            Ok(Redirect::to(&format!(
                "/dashboard/batches/{id}?done=retry&retried={}&skipped={}",
                r.retried, r.skipped
            ))
            .into_response())
        }
        Err(e) => refused(&state, &session, id, e).await,
    }
}
